#!/usr/bin/env bash
# The project's own tests (CPU, Triton interpreter). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
exec "$venv/bin/python" -m pytest -n "${QKCHECK_WORKERS:-2}" --qkcheck-budget "${QKCHECK_FUZZ_BUDGET:-20s}" "$@"
