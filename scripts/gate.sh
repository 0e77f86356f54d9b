#!/usr/bin/env bash
# The main job: the CI gate over the bundled kernels, writing the HTML report.
# Extra arguments go to `qkcheck gate` (e.g. --device cuda, --kernels zoo:..., -n 4).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
mkdir -p out
exec "$venv/bin/qkcheck" gate --report out/report.html --results out/results.jsonl "$@"
