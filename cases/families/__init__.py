"""Op families beyond W4A16: each module declares, for its ops, the case space (``SPECS``: a list
of ``cases.ops.OpSpec``), the input regimes (``MATERIALIZERS``: op -> case -> problem), the
deterministic gate grid (``GRIDS``: op -> adapter -> cases) and the fuzzing strategy
(``STRATEGIES``: op -> adapter -> hypothesis strategy). The registries in ``cases.ops``,
``cases.regimes``, ``cases.grid`` and ``cases.strategies`` take them in from here.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache


@cache
def modules() -> tuple:
    import qkcheck.cases.ops  # noqa: F401 — the op registry first: it takes every family's SPECS in when it loads

    return tuple(importlib.import_module(f"{__name__}.{m.name}")
                 for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if not m.name.startswith("_"))


def collect(attr: str) -> dict:
    """Every family's ``attr`` registry merged (an op defined twice is an error)."""
    merged: dict = {}
    for mod in modules():
        for key, value in getattr(mod, attr, {}).items():
            if key in merged:
                raise RuntimeError(f"{mod.__name__}.{attr} defines {key!r} again")
            merged[key] = value
    return merged


# A family module imported on its own (``import cases.families.moe``) runs this package first:
# load the op registry now, so it takes in every family (that one included) before the module's
# own body runs, instead of scanning a half-imported module.
import qkcheck.cases.ops  # noqa: E402,F401
