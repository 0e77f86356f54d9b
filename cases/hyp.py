"""``st``: hypothesis' strategies, imported on first use. Importing hypothesis takes over a second;
the gate, replay and report never draw a case, so the case families (whose fuzz strategies are
written against ``st``) load without it and only the fuzzer pays for it."""
from __future__ import annotations

import functools

__all__ = ["st", "assume"]


@functools.cache
def _strategies():
    from hypothesis import strategies

    return strategies


def _composite(fn):
    """``st.composite`` applied at the first call (a module-level ``@st.composite`` would import
    hypothesis with the module)."""
    built = []

    @functools.wraps(fn)
    def strategy(*args, **kwargs):
        if not built:
            built.append(_strategies().composite(fn))
        return built[0](*args, **kwargs)

    return strategy


class _Strategies:
    def __getattr__(self, name):
        if name == "composite":
            return _composite
        return getattr(_strategies(), name)


st = _Strategies()


def assume(condition) -> bool:
    from hypothesis import assume as _assume

    return _assume(condition)
