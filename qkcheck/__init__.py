"""qkcheck: a correctness oracle and regression harness for quantized GPU kernels.

Everything qkcheck installs lives under this one import name:

    qkcheck.oracle    pure-NumPy references, formats, bounds, compare -> Divergence, diagnosis
    qkcheck.kernels   bundled Triton kernels, torch ops, the adapter protocol, the zoo, engines
    qkcheck.cases     Case, families, grid, strategies, runner, fuzz engine, pytest plugin, CLI
    qkcheck.reports   results store and the HTML report

In a source checkout those four are the top-level folders ``oracle/``, ``kernels/``, ``cases/``
and ``reports/``; a wheel installs them as ``qkcheck/oracle`` and so on (pyproject.toml's
``package-dir``). Importing ``qkcheck`` is cheap: nothing below loads torch until a kernel is
needed. The scripting API (``qkcheck.run_cases``, ``qkcheck.gate_cases``, ``qkcheck.fuzz``) is
loaded on first use.
"""
from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.2.0"

_here = _Path(__file__).resolve().parent
if (_here.parent / "pyproject.toml").is_file() and (_here.parent / "oracle" / "formats.py").is_file():
    # a source checkout: the layers are the folders beside this one
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

_API = ("run_cases", "gate_cases", "fuzz", "Case", "KernelAdapter", "resolve_kernels")


def __getattr__(name: str):
    if name in _API:
        from qkcheck.cases import api

        return getattr(api, name)
    raise AttributeError(f"module 'qkcheck' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
