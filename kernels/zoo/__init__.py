"""Faithful reproductions of known kernel bugs, each a copy of a bundled kernel (or loader,
adapter, dispatcher) with only the historical mistake put back. Listed as ``zoo:<name>``; every
module of this package is one entry (its ``adapters()`` returns the entry's adapters)."""
from __future__ import annotations

import importlib
import pkgutil


def entries() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def adapters():
    return tuple(a for name in entries() for a in importlib.import_module(f"{__name__}.{name}").adapters())
