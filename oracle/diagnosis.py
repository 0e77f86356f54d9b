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
    # a generic output hypothesis (a tail never written) gives way to a specific mechanism
    generic: bool = False


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
    # NaN is not among the fills: no output buffer a kernel writes into starts as NaN (the
    # runner's is sentinel-filled; a fresh allocation is not NaN-filled), while NaN rows are what a
    # read through a wrong stride into poisoned padding gives (``strides_assumed_contiguous``); a
    # caller whose buffer did hold NaN passes it as ``out_prefill``
    fills = [("zeros", np.zeros_like(a))]
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


# ------------------------------------------------------------------ hypotheses per bug class over the op's structure
#
# Builders: an op declares which of its inputs a class of bug concerns (its K-grouped scales, its
# activations, ...) and gets the hypothesis; nothing here names a kernel.


@dataclass(frozen=True)
class KGroups:
    """How an op's scales are grouped along K, for the tile / group-index hypotheses.

    ``size(p)`` -> ``(K, rows per scale group)`` (None: not grouped along K in this problem);
    ``regroup(p, group_of_k)`` -> the problem with k-row k dequantized with the scales (and zero
    points) of group ``group_of_k[k]`` (an equivalent problem with one group per k row)."""

    size: Callable[[Mapping], tuple[int, int] | None]
    regroup: Callable[[Mapping, np.ndarray], dict]


def first_group_scale_per_tile(groups: KGroups) -> Hypothesis:
    """A K-tile of BLOCK_K > group rows spans several scale groups, but the kernel applies the
    scale of the tile's first group to the whole tile (seed 003's class)."""
    def rewrite(ref, p, ctx):
        size, bk = groups.size(p), ctx.get("block_k")
        if size is None or not bk:
            return
        k, g = size
        if bk <= g or k <= g:
            return
        ks = np.arange(k)
        yield groups.regroup(p, np.minimum((ks // bk) * bk // g, -(-k // g) - 1)), (
            f"the first scale group of each BLOCK_K={bk} tile is applied to the whole tile "
            f"(group_size={g}): k-rows past the first group of every tile use the wrong scale")
    return Hypothesis("first_group_scale_per_tile", rewrite)


def group_index_not_advancing(groups: KGroups) -> Hypothesis:
    """The scale-group index does not follow k: group 0's scale used for all of K (the index is
    computed once, or from a tile offset that stays 0 when BLOCK_K < group), or the index taken
    from the K-tile counter instead of ``k // group`` (wrong whenever BLOCK_K != group)."""
    def rewrite(ref, p, ctx):
        size, bk = groups.size(p), ctx.get("block_k")
        if size is None:
            return
        k, g = size
        n_groups = -(-k // g)
        if n_groups < 2:
            return
        ks = np.arange(k)
        tiles = f" (BLOCK_K={bk} < group size {g})" if bk and bk < g else ""
        yield groups.regroup(p, np.zeros(k, dtype=np.int64)), (
            f"the scale-group index never advances: group 0's scale is applied to all {k} k-rows"
            f"{tiles}, so every later group of {g} rows uses the wrong scale")
        if bk and bk != g and (k - 1) // bk < n_groups:
            yield groups.regroup(p, ks // bk), (
                f"the scale-group index is the K-tile index (k // BLOCK_K={bk}) instead of k // {g}: "
                "tiles and groups are confused")
    return Hypothesis("group_index_not_advancing", rewrite)


def _poison(a: np.ndarray, kind: str, p: Mapping):
    """What a read outside an input view returns in the runner's poisoned buffers (every byte
    0xFF): NaN for float values; for integer / fp8 codes the all-ones code."""
    if kind == "values" or a.dtype.kind == "f":
        return np.nan
    if kind == "codes" and str(p.get("quant_dtype", "")) in FORMATS and str(p.get("quant_dtype")).startswith("float8"):
        return 0xFF
    return -1 if a.dtype.kind == "i" else np.iinfo(a.dtype).max


def _row_padded_read(a: np.ndarray, pad: int, poison, offsets: np.ndarray) -> np.ndarray:
    """Elements of ``a`` [R, C] laid out as the runner lays out inputs (``pad`` poison elements
    before the first row and after every row), read at element ``offsets`` from the view's start;
    anything outside the rows (the padding, past the end) reads ``poison``."""
    r, c = a.shape
    stride = c + pad
    row, col = np.divmod(offsets, stride)
    inside = (offsets >= 0) & (row < r) & (col < c)
    out = np.full(offsets.shape, poison, dtype=np.float64 if isinstance(poison, float) else a.dtype)
    out[inside] = a[row[inside], col[inside]]
    return out


def strides_assumed_contiguous(*keys: tuple[str, str]) -> Hypothesis:
    """A 2-D input (``keys``: (problem key, "values" | "codes")) read with the row stride of a
    contiguous array (its column count) while the tensor handed over is a strided view: row m is
    read from element ``m * C`` of the view, running into the padding after earlier rows (the
    runner's inputs sit in poisoned buffers with ``context['input_row_pad']`` elements after
    every row: NaN / all-ones codes)."""
    def rewrite(ref, p, ctx):
        pad = ctx.get("input_row_pad")
        if not pad:
            return
        for key, kind in keys:
            if not present(p, key):
                continue
            a = np.asarray(p[key])
            if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] == 0:
                continue
            r, c = a.shape
            offs = np.arange(r)[:, None] * c + np.arange(c)[None, :]
            alt = _row_padded_read(a, pad, _poison(a, kind, p), offs)
            yield dict(p, **{key: alt}), (
                f"{key} [{r}, {c}] is read as if contiguous (row stride {c}, its stride argument ignored) "
                f"while the tensor is a strided view (row stride {c + pad}): rows past the first read "
                "shifted data and the padding between rows")
    return Hypothesis("strides_assumed_contiguous", rewrite)


def k_tail_unmasked(key: str) -> Hypothesis:
    """The last, partial K-tile (K % BLOCK_K != 0) is loaded without its K mask: each row of the
    activations ``key`` is read past its end, into poison (NaN), which every output then carries."""
    def outputs(ref, p, ctx, actual, e, out_dtype):
        bk = ctx.get("block_k")
        if not bk or not present(p, key):
            return
        k = np.asarray(p[key]).shape[-1]
        a = np.asarray(actual, np.float64)
        if k % bk == 0 or a.size == 0 or not np.isnan(a).all():
            return
        yield np.full_like(a, np.nan), np.zeros_like(a), (
            f"the last K-tile is read without its mask (K={k} is not a multiple of BLOCK_K={bk}): "
            f"the {key} loads run past each row's end into the padding (poison), and every output is NaN")
    return Hypothesis("k_tail_unmasked", outputs=outputs)


def split_k_reduction_wrong(key: str, zero_code=0) -> Hypothesis:
    """Split-K (``context['split_k']`` > 1) whose partial sums are not all reduced: only the first
    split's partial reaches the output, or the last split's is lost. Rewritten as the activations
    ``key`` zeroed outside the K range that did arrive (``zero_code``: the input's zero)."""
    def rewrite(ref, p, ctx):
        sk, bk = ctx.get("split_k") or 1, ctx.get("block_k")
        if sk < 2 or not bk or not present(p, key) or present(p, "azp"):
            return
        a = np.asarray(p[key])
        k = a.shape[1]
        per = -(-(-(-k // bk)) // sk) * bk  # k rows per split
        ranges = [(s * per, min((s + 1) * per, k)) for s in range(sk) if s * per < k]
        if len(ranges) < 2:
            return

        def keep(lo, hi):
            out = np.full_like(a, zero_code)
            out[:, lo:hi] = a[:, lo:hi]
            return out

        yield dict(p, **{key: keep(*ranges[0])}), (
            f"only the first of the {len(ranges)} split-K partial sums (split_k={sk}) reaches the "
            f"output: k-rows {ranges[1][0]}..{k - 1} contribute nothing")
        yield dict(p, **{key: keep(0, ranges[-1][0])}), (
            f"the last split-K partial sum (k-rows {ranges[-1][0]}..{k - 1}, split_k={sk}) is lost")
    return Hypothesis("split_k_reduction_wrong", rewrite)


def scale_granularity_confused(ref, p, ctx):
    """A per-channel / per-token / per-group scale array taken for a per-tensor one: its first
    element applied to every element."""
    for key, kind in ref.scale_keys:
        if kind != "float" or not present(p, key):
            continue
        s = np.asarray(p[key], np.float64)
        if s.size < 2 or np.all(s == s.flat[0]):
            continue
        what = {True: "per-token", False: "per-channel"}[s.ndim == 2 and s.shape[1] == 1] \
            if s.ndim == 2 and 1 in s.shape else "grouped"
        yield dict(p, **{key: np.full_like(s, s.flat[0])}), (
            f"the {what} scales {key} {list(s.shape)} are read as one per-tensor scale: the first "
            f"element ({s.flat[0]:g}) is applied everywhere")


SCALES_TRANSPOSED = Hypothesis("scales_transposed", scales_transposed)
WEIGHT_SCALE_ON_WRONG_AXIS = Hypothesis("scale_vector_on_wrong_axis", weight_scale_on_wrong_axis)
NIBBLE_ORDER_SWAPPED = Hypothesis("nibble_order_swapped", nibble_order_swapped)
WEIGHT_TRANSPOSED = Hypothesis("weight_transposed", weight_transposed)
SCALE_MISAPPLIED = Hypothesis("scale_misapplied", scale_misapplied)
SCALE_GRANULARITY_CONFUSED = Hypothesis("scale_granularity_confused", scale_granularity_confused)
# what every GEMM ends with: a bias, then how the output was written
GEMM_TAIL: tuple[Hypothesis, ...] = (
    Hypothesis("bias_dropped_or_spurious", bias_dropped_or_spurious),
    Hypothesis("missing_tail", outputs=missing_tail, generic=True),
    Hypothesis("output_dtype_reinterpreted", outputs=output_dtype_reinterpreted),
)


NO_MECHANISM = "no_known_mechanism"
AMBIGUOUS = "ambiguous"


def no_mechanism(count: int) -> Finding:
    """The finding of a failure that none of an op's ``count`` hypothesis variants reproduces."""
    return Finding(NO_MECHANISM, f"no known mechanism matches: none of the {count} bug hypotheses tried "
                                 "reproduces this output within its bound")


@dataclass(frozen=True)
class Candidate:
    """A hypothesis variant whose alternative output the kernel's output matched."""

    name: str
    sentence: str
    expected: np.ndarray
    bound: np.ndarray
    generic: bool = False


def conclude(candidates: list[Candidate], tried: int, *, failed: bool = True) -> list[Finding]:
    """The findings named for ``candidates`` (the variants the output matched, each already
    distinguishable from the correct output). A mechanism is named only where it alone explains
    the output: generic output hypotheses (a tail never written) give way to a specific mechanism
    that matched too; several mechanisms that still match are named only as indistinguishable on
    this case (``ambiguous``); nothing matched on a failing output: ``no_known_mechanism``."""
    if not candidates:
        return [no_mechanism(tried)] if failed else []
    if any(not c.generic for c in candidates):
        candidates = [c for c in candidates if not c.generic]
    names = list(dict.fromkeys(c.name for c in candidates))
    if len(names) == 1:
        return [Finding(c.name, c.sentence) for c in candidates]
    firsts = [next(c for c in candidates if c.name == n) for n in names]
    return [Finding(AMBIGUOUS, "several mechanisms reproduce this output and this case cannot tell them apart: "
                    + "; or ".join(f"{c.name} ({c.sentence})" for c in firsts))]


def _distinct(alt_expected, alt_bound, base: Expectation) -> bool:
    """Whether the correct output is told apart from the alternative (it would not pass as it)."""
    return compare(base.expected, alt_expected, alt_bound) is not None


def diagnose(ref: OpReference, problem: Mapping, actual, *, exact: bool, compute_dtype: str, out_dtype: str,
             context: Mapping | None = None) -> list[Finding]:
    """The mechanism among ``ref.hypotheses`` that reproduces the kernel's ``actual`` (an
    ``OpReference.diagnoser``): each variant whose alternative output ``actual`` matches within
    the alternative's bound, while the correct output would not, goes to ``conclude``."""
    ctx = dict(context or {})
    candidates: list[Candidate] = []
    nan_only: list[str] = []  # rewrites predicting NaN / inf everywhere that the output matched
    tried = 0
    base = ref.expect(problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
    failed = compare(actual, base.expected, base.bound) is not None
    if not failed:
        return []
    for hyp in ref.hypotheses:
        if hyp.rewrite is not None:
            for alt_problem, sentence in hyp.rewrite(ref, problem, ctx):
                tried += 1
                try:
                    with np.errstate(invalid="ignore", over="ignore"):
                        alt = ref.expect(alt_problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
                except (ValueError, IndexError):
                    continue  # the rewrite made an invalid problem (e.g. zero point out of range)
                if np.array_equal(alt.exact_value, base.exact_value, equal_nan=True):
                    continue  # a no-op on this problem (e.g. symmetric scales transposed): tells nothing
                if alt.expected.size and not np.isfinite(alt.expected).any():
                    # NaN / inf everywhere (e.g. fn codes read as fnuz, where 0x80 is NaN): the same
                    # symptom as any NaN source (a poisoned read, a NaN scale); never named alone
                    if compare(actual, alt.expected, alt.bound) is None:
                        nan_only.append(hyp.name)
                    continue
                if compare(actual, alt.expected, alt.bound) is None and _distinct(alt.expected, alt.bound, base):
                    candidates.append(Candidate(hyp.name, sentence, alt.expected, alt.bound, hyp.generic))
        if hyp.outputs is not None:
            for alt_expected, alt_bound, sentence in hyp.outputs(ref, problem, ctx, actual, base, out_dtype):
                tried += 1
                if compare(actual, alt_expected, alt_bound) is None and _distinct(alt_expected, alt_bound, base):
                    candidates.append(Candidate(hyp.name, sentence, alt_expected, alt_bound, hyp.generic))
    if not candidates and nan_only:
        names = ", ".join(dict.fromkeys(nan_only))
        return [Finding(AMBIGUOUS, f"the output is NaN / inf everywhere: {names} would give that on this case, and so "
                        f"would any NaN source (a read of poisoned memory, a NaN scale); this case cannot tell "
                        f"them apart")]
    return conclude(candidates, tried)
