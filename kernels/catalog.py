"""The catalogue: which kernels a ``--kernels`` spec names.

Kernel specs: ``bundled`` (every bundled kernel), ``bundled:<name>``, ``zoo`` / ``zoo:<name>``, an
engine (``vllm``, ``aiter``: adapters for the engine's public kernels, skipped with the reason
when it is not installed), a path to a Python file defining ``ADAPTERS``, or a module path
defining it.

The bundled kernels are collected from :func:`families`, an explicit tuple of the op families'
``kernels/<family>/adapter.py`` modules, each with an ``adapters()`` function; adding a family
is one entry there. Importing an adapter module loads torch but no Triton kernel (each imports
its kernel on first call), so listing the catalogue is safe before the device is selected.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from qkcheck.kernels.adapters import AdapterError, KernelAdapter, KernelsUnavailable


def families() -> tuple:
    """The bundled op families' adapter modules, in the order their adapters are listed (and gated)."""
    from qkcheck.kernels.moe import adapter as moe
    from qkcheck.kernels.mxfp4 import adapter as mxfp4
    from qkcheck.kernels.quant import adapter as quant
    from qkcheck.kernels.scaled_mm import adapter as scaled_mm
    from qkcheck.kernels.w4a16 import adapter as w4a16

    return (w4a16, moe, mxfp4, quant, scaled_mm)


def bundled() -> tuple[KernelAdapter, ...]:
    """Every bundled kernel's adapter, family by family (:func:`families`)."""
    return tuple(a for family in families() for a in family.adapters())


def _from_module_object(mod, where: str) -> list[KernelAdapter]:
    adapters = getattr(mod, "ADAPTERS", None)
    if adapters is None:
        raise AdapterError(f"{where}: defines no ADAPTERS (a list of kernels.adapters.KernelAdapter)")
    adapters = list(adapters)
    if not adapters and getattr(mod, "UNAVAILABLE", None):
        raise KernelsUnavailable(where, mod.UNAVAILABLE)
    for a in adapters:
        if not isinstance(a, KernelAdapter):
            raise AdapterError(f"{where}: ADAPTERS holds {type(a).__name__}, expected KernelAdapter records")
    return adapters


def _load_file(path: Path) -> list[KernelAdapter]:
    if not path.exists():
        raise AdapterError(f"--kernels {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"qkcheck_user_adapters_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:  # a user's file: report, don't traceback
        raise AdapterError(f"--kernels {path}: failed to import ({type(exc).__name__}: {exc})") from None
    return _from_module_object(mod, str(path))


def available() -> dict[str, KernelAdapter]:
    """Every kernel qkcheck ships: bundled and zoo, by name."""
    from qkcheck.kernels import zoo

    return {a.name: a for a in (*bundled(), *zoo.adapters())}


def resolve(spec: str) -> list[KernelAdapter]:
    """Adapters named by one ``--kernels`` value (see the module docstring). ``SPEC::NAME`` selects
    the adapter called NAME among those SPEC names (``my_adapters.py::mine:w4a16``)."""
    from qkcheck.kernels import engines, zoo

    if "::" in spec:
        base, _, name = spec.rpartition("::")
        found = resolve(base)
        chosen = [a for a in found if a.name == name]
        if not chosen:
            raise AdapterError(f"--kernels {spec}: {base} has no adapter named {name!r} "
                               f"(it has: {', '.join(a.name for a in found) or 'none'})")
        return chosen

    spec = engines.ENGINES.get(spec, spec)  # "vllm", "aiter": the engines' adapter modules
    if spec == "bundled":
        return list(bundled())
    if spec == "zoo":
        return list(zoo.adapters())
    if spec.startswith(("bundled:", "zoo:")):
        known = available()
        if spec not in known:
            raise AdapterError(f"--kernels {spec}: unknown kernel (allowed: bundled, zoo, {', '.join(sorted(known))}, "
                               "a .py file defining ADAPTERS, or a module path)")
        return [known[spec]]
    if spec.endswith(".py") or "/" in spec:
        return _load_file(Path(spec))
    try:
        mod = importlib.import_module(spec)
    except Exception as exc:
        raise AdapterError(f"--kernels {spec}: not a known kernel, file or importable module "
                           f"({type(exc).__name__}: {exc}); allowed: bundled, zoo, zoo:<name>, path.py, module") from None
    return _from_module_object(mod, spec)
