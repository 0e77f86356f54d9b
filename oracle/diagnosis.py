"""Diagnosis: which alternative oracle — a "bug hypothesis" — reproduces a kernel's output.

Each hypothesis rewrites the problem the way a known class of bug misreads it (the scale of the
first group used for a whole K-tile, scales read transposed, zero point off by one, nibble order
swapped, ...) and the op's own reference is evaluated on the rewritten problem. A hypothesis
*matches* when the kernel's output equals that alternative within the same kind of bound as
the real expectation. Adding a hypothesis is one small function plus one line in ``CATALOGUE``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from oracle.compare import compare
from oracle.references import expect

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@dataclass(frozen=True)
class Hypothesis:
    name: str
    ops: tuple[str, ...]
    # yields (rewritten problem, sentence) for each variant worth trying; nothing if not applicable
    rewrite: Callable[[Mapping, Mapping], Iterator[tuple[dict, str]]]


@dataclass(frozen=True)
class Finding:
    hypothesis: str
    sentence: str


def _group_rows(p: Mapping) -> tuple[int, int]:
    k = np.asarray(p["q"]).shape[0]
    g = p["group_size"]
    return k, (k if g == -1 else g)


def _per_k(p: Mapping, group_of_k: np.ndarray) -> dict:
    """Rewrite grouped scales/zeros as per-k rows (group_size 1) using ``group_of_k[k]``."""
    out = dict(p)
    out["scales"] = np.asarray(p["scales"], np.float64)[group_of_k]
    if p.get("zeros") is not None:
        out["zeros"] = np.asarray(p["zeros"])[group_of_k]
    out["group_size"] = 1
    return out


def first_group_scale_per_tile(p, ctx):
    k, g = _group_rows(p)
    bk = ctx.get("block_k")
    if not bk or bk <= g or k <= g:
        return
    ks = np.arange(k)
    yield _per_k(p, ((ks // bk) * bk) // g), (
        f"the first scale group of each BLOCK_K={bk} tile is applied to the whole tile "
        f"(group_size={g}): k-rows past the first group of every tile use the wrong scale"
    )


def scales_transposed(p, ctx):
    s = np.asarray(p["scales"])
    if s.ndim != 2 or s.shape[0] == 1 or s.shape[1] == 1:
        return
    out = dict(p)
    out["scales"] = s.T.copy().reshape(s.shape)
    yield out, (f"the {list(s.shape)} scales are read transposed (as if stored "
                f"{list(s.shape[::-1])}): each weight gets another channel's/group's scale")


def zero_point_off_by_one(p, ctx):
    k, g = _group_rows(p)
    shape = (k // g, np.asarray(p["q"]).shape[1])
    z = np.full(shape, 8) if p.get("zeros") is None else np.asarray(p["zeros"])
    for d, why in ((-1, "the stored 'z - 1' (GPTQ) convention is not undone"), (+1, "the zero point is incremented twice")):
        out = dict(p)
        out["zeros"] = z + d
        yield out, f"the zero point is off by {d:+d}: {why}"


def nibble_order_swapped(p, ctx):
    q = np.asarray(p["q"])
    k = q.shape[0]
    if k % 2:
        return
    ks = np.arange(k)
    out = dict(p)
    out["q"] = q[ks ^ 1]
    yield out, "the two nibbles of each byte are read in swapped order (high nibble taken as the lower k)"
    if k % 8 == 0:
        out = dict(p)
        out["q"] = q[(ks // 8) * 8 + 7 - ks % 8]
        yield out, "the eight nibbles of each int32 word are read in reverse order"


def awq_order_ignored(p, ctx):
    q = np.asarray(p["q"])
    n = q.shape[1]
    if n % 8:
        return
    cols = np.arange(n)
    order = np.array(AWQ_ORDER)
    inv = np.argsort(order)
    for perm, why in ((order, "AWQ's interleaved order [0,2,4,6,1,3,5,7] is ignored (fields read sequentially)"),
                      (inv, "AWQ's interleaved order is applied to weights packed sequentially")):
        out = dict(p)
        out["q"] = q[:, (cols // 8) * 8 + perm[cols % 8]]
        yield out, f"columns within each group of 8 are permuted: {why}"


def scale_misapplied(p, ctx):
    s = np.asarray(p["scales"], np.float64)
    for alt, why in ((s * s, "applied twice"), (np.ones_like(s), "not applied at all")):
        out = dict(p)
        out["scales"] = alt
        yield out, f"the weight scale is {why}"


def bias_dropped_or_spurious(p, ctx):
    n = np.asarray(p["q"]).shape[1]
    if p.get("bias") is not None:
        out = dict(p)
        out["bias"] = None
        yield out, "the bias is not added"
    prefill = ctx.get("out_prefill")
    if p.get("bias") is None and prefill is not None:
        out = dict(p)
        out["bias"] = np.asarray(prefill, np.float64).reshape(-1)[:n]
        yield out, "the output buffer's prior contents are added as a bias (an `out` argument bound to `bias`)"


CATALOGUE: tuple[Hypothesis, ...] = (
    Hypothesis("first_group_scale_per_tile", ("w4a16_gemm",), first_group_scale_per_tile),
    Hypothesis("scales_transposed", ("w4a16_gemm",), scales_transposed),
    Hypothesis("zero_point_off_by_one", ("w4a16_gemm",), zero_point_off_by_one),
    Hypothesis("nibble_order_swapped", ("w4a16_gemm",), nibble_order_swapped),
    Hypothesis("awq_order_ignored", ("w4a16_gemm",), awq_order_ignored),
    Hypothesis("scale_misapplied", ("w4a16_gemm",), scale_misapplied),
    Hypothesis("bias_dropped_or_spurious", ("w4a16_gemm",), bias_dropped_or_spurious),
)


def diagnose(op: str, problem: Mapping, actual, *, exact: bool, compute_dtype: str, out_dtype: str,
             context: Mapping | None = None) -> list[Finding]:
    """Every hypothesis variant whose alternative output the kernel's ``actual`` matches."""
    ctx = dict(context or {})
    found: list[Finding] = []
    for hyp in CATALOGUE:
        if op not in hyp.ops:
            continue
        for alt_problem, sentence in hyp.rewrite(problem, ctx):
            try:
                alt = expect(op, alt_problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
            except ValueError:
                continue  # the rewrite made an invalid problem (e.g. zero point out of range)
            if compare(actual, alt.expected, alt.bound) is None:
                found.append(Finding(hyp.name, sentence))
    return found
