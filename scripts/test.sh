#!/usr/bin/env bash
# The project's own tests (CPU, Triton interpreter). Extra arguments go to pytest.
#
# Defaults (each overridable):
# - `-m "not slow and not sweep"`: the default tier; `-m slow` runs the slow tier (CI runs both),
#   `-m sweep` the soundness sweeps (any -m of yours replaces the default: pytest keeps the last
#   -m it is given, and yours come after this one);
# - the product fuzz suite (tests/gate/test_fuzz.py) runs every bundled kernel for a short
#   smoke budget in one stream (QKCHECK_FUZZ_BUDGET, default 2s): the fuzzer's detection power
#   is tested in tests/harness against the zoo, not by this suite's budget;
# - the product gate suite (tests/gate/test_gate.py) runs one shard of the bundled gate's case
#   list (QKCHECK_GATE_SHARD, default 1/32): the whole gate is the main job (scripts/gate.sh),
#   which CI runs as its own step after this one (.ci/run);
# - --durations=30: the slowest tests are listed at the end, so time can be measured.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
exec "$venv/bin/python" -m pytest -n "${QKCHECK_WORKERS:-2}" -m "not slow and not sweep" --durations=30 \
  --qkcheck-budget "${QKCHECK_FUZZ_BUDGET:-2s}" --qkcheck-fuzz-streams "${QKCHECK_FUZZ_STREAMS:-1}" \
  --qkcheck-shard "${QKCHECK_GATE_SHARD:-1/32}" "$@"
