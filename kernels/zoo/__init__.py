"""Faithful reproductions of known kernel bugs, each a copy of a bundled kernel (or loader,
adapter, dispatcher) with only the historical mistake put back. Listed as ``zoo:<name>``."""
from __future__ import annotations

import importlib

ENTRIES = ("scale_group_spanning",)


def adapters():
    return tuple(a for name in ENTRIES for a in importlib.import_module(f"kernels.zoo.{name}").adapters())
