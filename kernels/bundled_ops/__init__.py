"""Adapters of the bundled kernels beyond W4A16, one module per op family; each module's
``adapters()`` returns its adapters (collected by ``kernels.bundled.adapters``)."""
from __future__ import annotations

import importlib
import pkgutil


def adapters() -> tuple:
    mods = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return tuple(a for name in mods for a in importlib.import_module(f"{__name__}.{name}").adapters())
