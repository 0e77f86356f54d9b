"""The project's test tiers. The README test command (scripts/test.sh) runs the default tier,
``-m "not slow"``; CI runs ``-m slow`` as well, as a step of its own (.ci/run). A long parametrized
sweep keeps an evenly spread sample in the default tier and the rest in the slow tier, so every
kind of case is still met by the default run and the whole sweep by CI."""
from __future__ import annotations

import pytest
from _pytest.mark.structures import ParameterSet


def sampled(params, every: int) -> list:
    """``params`` (values, tuples of values or pytest.param) with all but every ``every``-th one
    (the first, the ``every+1``-th, ...) marked slow."""
    out = []
    for i, p in enumerate(params):
        if not isinstance(p, ParameterSet):
            p = pytest.param(*p) if isinstance(p, tuple) else pytest.param(p)
        if i % every:
            p = pytest.param(*p.values, marks=[*p.marks, pytest.mark.slow], id=p.id)
        out.append(p)
    return out
