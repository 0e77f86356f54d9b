"""Diagnosis: which alternative oracle — a "bug hypothesis" — reproduces a kernel's output.

The engine (``diagnose``) tries the hypotheses an op's ``OpReference`` lists, in order; the
GEMM hypotheses every family shares are here, driven by the record's fields (``scale_keys``,
``nibble_keys``, ``weight_key``); a family's own hypotheses live in its ``oracle.ops`` module.
Two kinds of hypothesis:

- *problem rewrites* (``rewrite(ref, problem, context)`` yields ``(rewritten problem,
  sentence)``): the way a known class of bug misreads the inputs (the scale of the first group
  used for a whole K-tile, scales read transposed or along the wrong axis, a square weight read
  transposed, zero point off by one, nibble order swapped, fp8 codes decoded as the other
  fn/fnuz variant, a scale applied twice or not at all, a bias dropped or added, ...). The op's
  own reference and bound are evaluated on the rewritten problem.
- *output rewrites* (``outputs(ref, problem, context, actual, expectation, out_dtype)`` yields
  ``(alternative expected, alternative bound, sentence)``): what the output would be if the
  kernel computed correctly but wrote it wrongly (a trailing block of columns / rows never
  written, the bits of the other 16-bit dtype stored).

A hypothesis *matches* when the kernel's output equals the alternative within its bound.

Context keys (all optional): ``block_k`` / ``block_n`` / ``block_m`` (the kernel's tile sizes),
``out_prefill`` (what the output buffer held before the call, [M, N] or broadcastable),
``bias_buffer`` ([N]: the values of a bias tensor handed to the kernel when the case asks for
none).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from qkcheck.oracle.compare import compare
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.numerics import round_to, wide_float
from qkcheck.oracle.reference import Expectation, Finding, OpReference

E8M0_ONE, E4M3_ONE = 127, 0x38


@dataclass(frozen=True)
class Hypothesis:
    name: str
    # yields (rewritten problem, sentence) for each variant worth trying; nothing if not applicable
    rewrite: Callable[[OpReference, Mapping, Mapping], Iterator[tuple[dict, str]]] | None = None
    # yields (alternative expected, alternative bound, sentence) from the correct expectation
    outputs: Callable[..., Iterator[tuple[np.ndarray, np.ndarray, str]]] | None = None


def present(p: Mapping, key: str) -> bool:
    return p.get(key) is not None


# ------------------------------------------------------------------ problem rewrites (every GEMM)


def nibble_order_swapped(ref, p, ctx):
    """The 4-bit codes of ``ref.nibble_keys`` read with the two nibbles of a byte (or the eight
    of an int32 word) in the other order."""
    for key, axis in ref.nibble_keys:
        if not present(p, key):
            continue
        q = np.asarray(p[key])
        k = q.shape[axis]
        if k % 2:
            continue
        ks = np.arange(k)
        what = "weights" if axis == 0 else "activations"
        yield dict(p, **{key: np.take(q, ks ^ 1, axis=axis)}), (
            f"the two nibbles of each byte of the {what} ({key}) are read in swapped order "
            "(high nibble taken as the lower k)")
        if key == "q" and k % 8 == 0:
            yield dict(p, **{key: np.take(q, (ks // 8) * 8 + 7 - ks % 8, axis=axis)}), (
                "the eight nibbles of each int32 word are read in reverse order")


def scales_transposed(ref, p, ctx):
    """A [R, C] scale array of ``ref.scale_keys`` read with the other array's strides: as if
    stored [C, R]."""
    for key, kind in ref.scale_keys:
        if kind == "global" or not present(p, key):
            continue
        s = np.asarray(p[key])
        if s.ndim != 2 or s.shape[0] == 1 or s.shape[1] == 1:
            continue
        yield dict(p, **{key: s.T.copy().reshape(s.shape)}), (
            f"the {list(s.shape)} scales ({key}) are read transposed (as if stored "
            f"{list(s.shape[::-1])}): each element gets another channel's/group's scale")


def weight_scale_on_wrong_axis(ref, p, ctx):
    """An A16 GEMM's per-channel weight scale [1, N] (the first of ``ref.scale_keys``) applied
    along M (read as [N, 1]), for M <= N (the read stays in bounds); grouped scales do not apply."""
    key = ref.scale_keys[0][0]
    if p.get("group_size", -1) != -1:
        return
    s = np.asarray(p[key], np.float64)
    x = np.asarray(p["x"], np.float64)
    m, n = x.shape[0], s.shape[1]
    if s.shape == (1, n) and n > 1 and m <= n:
        yield dict(p, x=x * s[0, :m].reshape(m, 1), **{key: np.ones_like(s)}), (
            f"the per-channel {key} [1, {n}] is applied along rows (read as [{n}, 1]): "
            "row m is scaled by the scale of column m")


def scale_misapplied(ref, p, ctx):
    for key, kind in ref.scale_keys:
        if not present(p, key):
            continue
        if kind == "global":
            g = float(p[key])
            variants = ((g * g, "applied twice"), (1.0, "not applied at all"))
        elif kind == "float":
            s = np.asarray(p[key], np.float64)
            variants = ((s * s, "applied twice"), (np.ones_like(s), "not applied at all"))
        elif kind == "e8m0":
            c = np.asarray(p[key]).astype(np.int64)
            twice = 2 * c - 127
            variants = ((np.full_like(c, E8M0_ONE).astype(np.uint8), "not applied at all"),)
            if twice.size and twice.min() >= 0 and twice.max() <= 254:
                variants = ((twice.astype(np.uint8), "applied twice"),) + variants
        else:  # e4m3 codes: twice only where the square is an e4m3 value
            c = np.asarray(p[key])
            fmt = FORMATS["float8_e4m3fn"]
            sq = fmt.decode_table[c] ** 2
            enc = fmt.encode(sq, saturate=False)
            variants = ((np.full_like(c, E4M3_ONE), "not applied at all"),)
            if np.array_equal(fmt.decode_table[enc], sq):
                variants = ((enc, "applied twice"),) + variants
        for alt, why in variants:
            yield dict(p, **{key: alt}), f"the scale {key} is {why}"


def weight_transposed(ref, p, ctx):
    """A square weight (``ref.weight_key``) read with the other layout's strides ([N, K] taken
    for [K, N]): w -> w.T, its scales as given."""
    key = ref.weight_key
    w = np.asarray(p[key])
    if w.ndim == 2 and w.shape[0] == w.shape[1] > 1:
        yield dict(p, **{key: w.T.copy()}), (
            f"the weight ({key}, {list(w.shape)}) is read transposed: a [N, K] layout taken for [K, N] "
            "(the scales are read as given)")


def bias_dropped_or_spurious(ref, p, ctx):
    n = np.asarray(p[ref.weight_key]).shape[1]
    if p.get("bias") is not None:
        b = np.asarray(p["bias"], np.float64)
        yield dict(p, bias=None), "the bias is not added"
        yield dict(p, bias=2 * b), "the bias is added twice"
    if p.get("bias") is None:
        for key, why in (("out_prefill", "the output buffer's prior contents are added as a bias "
                                         "(an `out` argument bound to `bias`)"),
                         ("bias_buffer", "a bias is added though none was requested (the bias "
                                         "tensor handed to the kernel is read)")):
            if ctx.get(key) is not None:
                # a kernel reading the buffer as bias [N] reads its first N elements
                v = np.asarray(ctx[key], np.float64).reshape(-1)
                if v.size >= n:
                    yield dict(p, bias=v[:n]), why


# ------------------------------------------------------------------ output hypotheses


def _trailing_run(flags: np.ndarray) -> int:
    """Length of the run of True at the end of a 1-D bool array."""
    if flags.size == 0 or not flags[-1]:
        return 0
    falses = np.flatnonzero(~flags)
    return flags.size if falses.size == 0 else flags.size - 1 - int(falses[-1])


def missing_tail(ref, p, ctx, actual, e: Expectation, out_dtype):
    """Trailing columns (or rows) never written: they hold 0, NaN or the buffer's prior contents."""
    a = np.asarray(actual, np.float64)
    if a.ndim != 2 or a.size == 0:
        return
    fills = [("zeros", np.zeros_like(a)), ("NaN", np.full_like(a, np.nan))]
    if ctx.get("out_prefill") is not None:
        fills.append(("the buffer's prior contents", np.broadcast_to(np.asarray(ctx["out_prefill"], np.float64), a.shape)))
    for axis, name, label in ((1, "column", "BLOCK_N"), (0, "row", "BLOCK_M")):
        tile = ctx.get(label.lower())
        size = a.shape[axis]
        for what, fill in fills:
            eq = (a == fill) | (np.isnan(a) & np.isnan(fill))
            run = _trailing_run(eq.all(axis=1 - axis))
            if run == 0 or run == size:
                continue
            start = size - run
            tail = (slice(None), slice(start, None)) if axis == 1 else (slice(start, None), slice(None))
            if compare(fill[tail], e.expected[tail], e.bound[tail]) is None:
                continue  # the correct tail equals the fill: nothing tells them apart
            alt, bound = e.expected.copy(), e.bound.copy()
            alt[tail], bound[tail] = fill[tail], 0.0
            tiles = ""
            if tile:
                tiles = (f"; {start} is a multiple of {label}={tile}: the last "
                         f"{-(-run // tile)} tile(s) are skipped" if start % tile == 0 else
                         f"; {start} is not a multiple of {label}={tile}: the tail mask cuts too early")
            yield alt, bound, (f"{name}s {start}..{size - 1} of {size} are never written (they hold {what}){tiles}")


def _bits16(v: np.ndarray, dtype: str) -> np.ndarray:
    """uint16 bit patterns of values exact in ``dtype`` (float16 / bfloat16)."""
    if dtype == "float16":
        return v.astype(np.float16).view(np.uint16)
    return (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _from_bits16(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float64)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def output_dtype_reinterpreted(ref, p, ctx, actual, e: Expectation, out_dtype):
    """The kernel rounds its result to the other 16-bit dtype and stores those bits into the
    requested one. Bit patterns of same-sign values order like the values, so the correct
    interval [expected - bound, expected + bound] maps onto an interval of reinterpreted values."""
    twins = {"float16": "bfloat16", "bfloat16": "float16"}
    if out_dtype not in twins:
        return
    other = twins[out_dtype]
    y = e.exact_value
    # exact regime: the kernel's value is RNE_other(y); bounded: within the bound, widened by one
    # ulp of the other dtype (the bound is the reach in the requested dtype)
    half = np.zeros_like(y) if e.exact_regime else e.bound + wide_float(other).ulp(y)
    with np.errstate(invalid="ignore", over="ignore"):
        lo = _from_bits16(_bits16(round_to(y - half, other), other), out_dtype)
        hi = _from_bits16(_bits16(round_to(y + half, other), other), out_dtype)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return
    yield (lo + hi) / 2, np.abs(hi - lo) / 2, (
        f"the output holds {other} bit patterns read as {out_dtype} (the kernel rounds to {other} "
        f"and stores the bits into the {out_dtype} buffer)")


SCALES_TRANSPOSED = Hypothesis("scales_transposed", scales_transposed)
WEIGHT_SCALE_ON_WRONG_AXIS = Hypothesis("scale_vector_on_wrong_axis", weight_scale_on_wrong_axis)
NIBBLE_ORDER_SWAPPED = Hypothesis("nibble_order_swapped", nibble_order_swapped)
WEIGHT_TRANSPOSED = Hypothesis("weight_transposed", weight_transposed)
SCALE_MISAPPLIED = Hypothesis("scale_misapplied", scale_misapplied)
# what every GEMM ends with: a bias, then how the output was written
GEMM_TAIL: tuple[Hypothesis, ...] = (
    Hypothesis("bias_dropped_or_spurious", bias_dropped_or_spurious),
    Hypothesis("missing_tail", outputs=missing_tail),
    Hypothesis("output_dtype_reinterpreted", outputs=output_dtype_reinterpreted),
)


def diagnose(ref: OpReference, problem: Mapping, actual, *, exact: bool, compute_dtype: str, out_dtype: str,
             context: Mapping | None = None) -> list[Finding]:
    """Every variant of ``ref.hypotheses`` whose alternative output the kernel's ``actual`` matches
    (an ``OpReference.diagnoser``)."""
    ctx = dict(context or {})
    found: list[Finding] = []
    base: Expectation | None = None
    for hyp in ref.hypotheses:
        if hyp.rewrite is not None:
            for alt_problem, sentence in hyp.rewrite(ref, problem, ctx):
                try:
                    alt = ref.expect(alt_problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
                except ValueError:
                    continue  # the rewrite made an invalid problem (e.g. zero point out of range)
                if base is None:
                    base = ref.expect(problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
                if np.array_equal(alt.exact_value, base.exact_value, equal_nan=True):
                    continue  # a no-op on this problem (e.g. symmetric scales transposed): tells nothing
                if compare(actual, alt.expected, alt.bound) is None:
                    found.append(Finding(hyp.name, sentence))
        if hyp.outputs is not None:
            if base is None:
                base = ref.expect(problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
            for alt_expected, alt_bound, sentence in hyp.outputs(ref, problem, ctx, actual, base, out_dtype):
                if compare(actual, alt_expected, alt_bound) is None:
                    found.append(Finding(hyp.name, sentence))
    return found
