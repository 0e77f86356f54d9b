"""The gate's case list for one adapter: the regression corpus cases of its op that lie inside the
case space it declares, then its grid (generated inside that space), distinct, in order, as the
adapter runs them. Used by the pytest plugin (one test per case) and the
scripting API (``qkcheck.gate_cases``)."""
from __future__ import annotations

import zlib

from qkcheck.cases.case import Case


def supports(adapter, case: Case) -> bool:
    """Whether ``case`` lies inside the case space ``adapter`` declares (its layouts and params,
    its tunables and their values, its dimension rules, ``supports`` and ``constraint``)."""
    from qkcheck.cases.registry import case_space

    return case_space(adapter).contains(case)


def for_adapter(adapter, case: Case) -> Case:
    """The case as this adapter runs it: a kernel without tunables runs it with no config."""
    return case if adapter.tunables or not case.config else case.replace(config={})


def in_shard(case_id: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic split of the case space: crc32 of the case id, modulo n (shard i of n, 1-based)."""
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(case_id.encode()) % n == i - 1


def gate_cases(adapter, shard: tuple[int, int] | None = None) -> list[Case]:
    """The corpus cases of ``adapter.op`` then its grid, distinct, as the adapter runs them, the
    ones it supports, in ``shard``."""
    from qkcheck.cases.corpus import load_corpus
    from qkcheck.cases.registry import grid

    from qkcheck.cases.registry import case_space

    space = case_space(adapter)
    corpus = [c for c in load_corpus() if c.op == adapter.op]
    cases = dict.fromkeys(for_adapter(adapter, c) for c in corpus + list(grid(adapter)))
    return [c for c in cases if space.contains(c) and in_shard(c.id, shard)]


def compile_group(adapter, case: Case) -> str:
    """Cases that share a kernel, its params and its config share compiled kernel variants (the
    shape changes no constexpr but a few of Triton's integer specializations). The gate items
    carry it as their ``xdist_group``; the CLI schedules with ``--dist load`` (under pytest 9,
    pytest-xdist's ``loadgroup`` groups nothing and re-queues a dead worker's cases where no worker
    takes them), so today a variant may compile once per worker that meets it."""
    return f"{adapter.name}|{sorted(case.p.items())}|{sorted(case.cfg.items())}"
