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

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Mapping
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
    if not isinstance(adapters, (list, tuple)):
        raise AdapterError(f"{where}: ADAPTERS is {type(adapters).__name__} {adapters!r:.60}; expected a list of "
                           "kernels.adapters.KernelAdapter records (ADAPTERS = [KernelAdapter(...), ...])")
    adapters = list(adapters)
    if not adapters and getattr(mod, "UNAVAILABLE", None):
        raise KernelsUnavailable(where, mod.UNAVAILABLE)
    for i, a in enumerate(adapters):
        if not isinstance(a, KernelAdapter):
            raise AdapterError(f"{where}: ADAPTERS[{i}] is {type(a).__name__}, expected KernelAdapter records")
        _check_fields(a, f"{where}: ADAPTERS[{i}]")
    return adapters


def _check_fields(a: KernelAdapter, where: str) -> None:
    """The fields every run needs have the types the harness calls them with (a user's record
    is checked here once, not found wrong in every case)."""
    for field in ("name", "op"):
        value = getattr(a, field)
        if not isinstance(value, str) or not value:
            raise AdapterError(f"{where}: {field}={value!r}; expected a non-empty string")
    for field, what in (("pack", "(problem, params, device) -> dict of tensors"),
                        ("call", "(tensors, params, config) -> output")):
        value = getattr(a, field)
        if not callable(value):
            raise AdapterError(f"{where} ({a.name}): {field}={value!r:.60} is not callable; expected a function {what}")
    if isinstance(a.layouts, (str, bytes)) or not isinstance(a.layouts, (tuple, list)) or not all(
            isinstance(x, str) for x in a.layouts):
        raise AdapterError(f"{where} ({a.name}): layouts={a.layouts!r:.60}; expected a tuple of layout names")
    if not isinstance(a.tunables, Mapping):
        raise AdapterError(f"{where} ({a.name}): tunables={a.tunables!r:.60}; expected a dict of name -> values")


class _ExitAtImport(BaseException):
    """Raised in place of ``os._exit`` while a user's adapter file is imported."""


@contextlib.contextmanager
def _no_exit_at_import():
    """``os._exit`` called by module-level code of a user's file raises instead of ending the
    process without a word (``sys.exit`` raises SystemExit already)."""
    def refuse(code=0):
        raise _ExitAtImport(code)

    real, os._exit = os._exit, refuse
    try:
        yield
    finally:
        os._exit = real


def _load_file(path: Path) -> list[KernelAdapter]:
    if not path.exists():
        raise AdapterError(f"--kernels {path}: no such file")
    if path.is_dir():
        raise AdapterError(f"--kernels {path}: is a directory; expected a .py file defining ADAPTERS "
                           f"(e.g. {path / 'adapters.py'}) or a module path")
    spec = importlib.util.spec_from_file_location(f"qkcheck_user_adapters_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise AdapterError(f"--kernels {path}: cannot be imported as Python (expected a .py file defining ADAPTERS)")
    mod = importlib.util.module_from_spec(spec)
    try:
        with _no_exit_at_import():
            spec.loader.exec_module(mod)
    except (SystemExit, _ExitAtImport) as exc:
        how = "sys.exit" if isinstance(exc, SystemExit) else "os._exit"
        raise AdapterError(f"--kernels {path}: exited while being imported ({how}({exc.args[0] if exc.args else ''})); "
                           "an adapter file must define ADAPTERS without exiting (move scripts under "
                           "if __name__ == '__main__':)") from None
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
    if spec.endswith(".py") or "/" in spec or (Path(spec).is_dir() and not (Path(spec) / "__init__.py").exists()):
        return _load_file(Path(spec))
    try:
        with _no_exit_at_import():
            mod = importlib.import_module(spec)
    except (SystemExit, _ExitAtImport) as exc:
        raise AdapterError(f"--kernels {spec}: the module exited while being imported "
                           f"({exc.args[0] if exc.args else ''}); it must define ADAPTERS without exiting") from None
    except Exception as exc:
        raise AdapterError(f"--kernels {spec}: not a known kernel, file or importable module "
                           f"({type(exc).__name__}: {exc}); allowed: bundled, zoo, zoo:<name>, path.py, module") from None
    return _from_module_object(mod, spec)
