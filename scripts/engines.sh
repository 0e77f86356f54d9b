#!/usr/bin/env bash
# The serving engines' released kernels under the Triton interpreter (CPU): the pinned releases
# are downloaded once into a wheel cache, installed with --no-deps into folders of their own
# (never into the project's venv: an engine's own requirements would pull a CUDA torch), and
# qkcheck loads only the Triton kernel files it needs from them (kernels/engines/*.py say why).
#
# 1. tests/engines: each engine's adapters resolve, their signatures match the release, cases
#    pass, and every failure found on the release fails as its classification says
#    (docs/findings/);
# 2. one shard of each engine's gate (QKCHECK_ENGINE_SHARD overrides the per-engine default below:
#    the whole vLLM and gemlite gates take tens of minutes under the interpreter, torchao's has a
#    handful of cases; on a GPU or nightly, pass 1/1), results and report
#    in out/engines/ (exit 1 = failures, expected where docs/findings lists engine bugs; any other
#    exit status fails the script).
#
#   QKCHECK_ENGINE_CACHE  the wheel cache (default ~/.cache/qkcheck/engine-wheels)
#   QKCHECK_ENGINE_SITE   where the engines are installed (default .engines/ in the checkout)
#   QKCHECK_ENGINES       which engines (default: all five)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
cache="${QKCHECK_ENGINE_CACHE:-$HOME/.cache/qkcheck/engine-wheels}"
site="${QKCHECK_ENGINE_SITE:-$root/.engines}"
engines=(${QKCHECK_ENGINES:-vllm sglang gemlite aiter torchao})
declare -A pins=(
  [vllm]="vllm==0.33.0"
  [sglang]="sglang==0.5.23"
  [gemlite]="gemlite==0.6.0.post2 tqdm"
  [aiter]="amd-aiter==0.1.7.post2.dev18"
  [torchao]="torchao==0.18.0"
)
declare -A shards=([vllm]=1/8 [sglang]=1/2 [gemlite]=1/8 [aiter]=1/4 [torchao]=1/1)
pip_q=(-m pip --disable-pip-version-check)
mkdir -p "$cache" "$site" out/engines
path=""
for e in "${engines[@]}"; do
  if [ ! -f "$site/$e/.installed" ] || [ "$(cat "$site/$e/.installed")" != "${pins[$e]}" ]; then
    echo "engines: $e (${pins[$e]}) -> $site/$e"
    # shellcheck disable=SC2086
    "$venv/bin/python" "${pip_q[@]}" download -q --no-deps -d "$cache" ${pins[$e]}
    rm -rf "$site/$e"
    # shellcheck disable=SC2086
    # (--no-build-isolation: gemlite is a source distribution, built with the venv's setuptools)
    "$venv/bin/python" "${pip_q[@]}" install -q --no-deps --no-compile --no-build-isolation --no-index --find-links "$cache" \
      --target "$site/$e" ${pins[$e]}
    echo "${pins[$e]}" > "$site/$e/.installed"
  fi
  path="${path:+$path:}$site/$e"
done
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"

"$venv/bin/python" -m pytest tests/engines -n "${QKCHECK_WORKERS:-2}" -p no:cacheprovider --durations=10

status=0
for e in "${engines[@]}"; do
  set +e
  "$venv/bin/qkcheck" gate --device cpu --kernels "$e" -n "${QKCHECK_WORKERS:-2}" --shard "${QKCHECK_ENGINE_SHARD:-${shards[$e]}}" \
    --results "out/engines/$e.jsonl" --report "out/engines/$e.html" --failures-dir "out/engines/$e-failures" -- -q
  rc=$?
  set -e
  case $rc in
    0) echo "engines: $e gate passed" ;;
    1) echo "engines: $e gate has failures (classified in docs/findings/; report out/engines/$e.html)" ;;
    *) echo "engines: $e gate stopped with exit $rc"; status=$rc ;;
  esac
done
exit $status
