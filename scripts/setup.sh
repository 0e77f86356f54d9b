#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install what is missing.
# Sourced by scripts/gate.sh and scripts/test.sh; safe to run again (a stamp file skips
# the install when nothing changed).
#
# torch: a torch that the system python already has (a ROCm, XPU or CUDA build) is kept as it
# is: the venv then sees the system site-packages and nothing reinstalls torch or triton over it.
# Otherwise the CPU build is installed, pinned (QKCHECK_TORCH_SPEC overrides the pin), because
# an unpinned `torch` pulls gigabytes of CUDA wheels on a CPU-only box. triton: from the torch
# build where it ships one; from the package index (for TRITON_INTERPRET=1) where it does not.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${QKCHECK_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
torch_spec="${QKCHECK_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  if "$py" -c "import torch" >/dev/null 2>&1; then
    echo "setup: keeping the system's torch ($("$py" -c 'import torch; print(torch.__version__)')); venv sees system site-packages"
    "$py" -m venv --system-site-packages "$venv"
  else
    "$py" -m venv "$venv"
  fi
fi
vpy="$venv/bin/python"
stamp="$venv/.qkcheck-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | cksum)"
# (from / : the checkout's own folder on sys.path would hide a missing install)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && (cd / && "$vpy" -c "import torch, triton, qkcheck.cases.cli") >/dev/null 2>&1; then
  return 0 2>/dev/null || exit 0
fi
# --no-compile, then compileall on both cores: pip writes the bytecode of every installed file one
# at a time (torch alone has thousands). The bytecode must be written at install: with
# PYTHONDONTWRITEBYTECODE set (as on CI machines) imports never write it, and every process of the
# test run would compile torch again. The packages' own test folders are left out (nothing imports them).
pip_q=(-m pip install -q --disable-pip-version-check --no-compile)
if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $torch_spec (CPU build)"
  "$vpy" "${pip_q[@]}" "$torch_spec"
fi
if ! "$vpy" -c "import triton" >/dev/null 2>&1; then
  echo "setup: installing triton from the package index (CPU interpreter)"
  "$vpy" "${pip_q[@]}" triton
fi
echo "setup: installing qkcheck and its dependencies"
"$vpy" "${pip_q[@]}" -e "$root[test]"
"$vpy" -m compileall -q -j 0 -x '/tests?/' "$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
# and qkcheck's own layers (an editable install: imported from the checkout)
"$vpy" -m compileall -q -j 0 "$root/qkcheck" "$root/oracle" "$root/kernels" "$root/cases" "$root/reports" >/dev/null || true
echo "$want" > "$stamp"
