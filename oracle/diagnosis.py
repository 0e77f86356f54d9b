"""Diagnosis: which alternative oracle — a "bug hypothesis" — reproduces a kernel's output.

Two kinds of hypothesis, each a small function plus one line in ``CATALOGUE`` that declares the
ops it applies to:

- *problem rewrites* (``rewrite(problem, context)`` yields ``(rewritten problem, sentence)``):
  the way a known class of bug misreads the inputs (the scale of the first group used for a whole
  K-tile, scales read transposed or along the wrong axis, a square weight read transposed, zero point off by one, nibble order
  swapped, fp8 codes decoded as the other fn/fnuz variant, a scale applied twice or not at all,
  a bias dropped or added, ...). The op's own reference and bound are evaluated on the rewritten
  problem.
- *output rewrites* (``outputs(problem, context, actual, expectation, out_dtype)`` yields
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
from qkcheck.oracle.references import Expectation, expect

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)

INT_A16 = ("w4a16_gemm", "w8a16_gemm")
GEMMS = ("w4a16_gemm", "w8a16_gemm", "scaled_mm", "block_scaled_mm", "fp8_w8a16_gemm", "mxfp4_gemm", "nvfp4_gemm")
FP8_OPS = ("scaled_mm", "block_scaled_mm", "fp8_w8a16_gemm")

# the scale inputs of each op, as data: (problem key, how it is stored)
# kinds: "float" (values), "e8m0" / "e4m3" (uint8 codes), "global" (a Python float)
SCALE_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "w4a16_gemm": (("scales", "float"),),
    "w8a16_gemm": (("scales", "float"),),
    "scaled_mm": (("b_scale", "float"), ("a_scale", "float")),
    "block_scaled_mm": (("b_scale", "float"), ("a_scale", "float")),
    "fp8_w8a16_gemm": (("b_scale", "float"),),
    "mxfp4_gemm": (("w_scale", "e8m0"), ("a_scale", "e8m0")),
    "nvfp4_gemm": (("w_scale", "e4m3"), ("a_scale", "e4m3"), ("w_global", "global"), ("a_global", "global")),
}
# the packed 4-bit code inputs: (key, axis of K)
NIBBLE_KEYS = {"w4a16_gemm": (("q", 0),), "mxfp4_gemm": (("w", 0), ("a", 1)), "nvfp4_gemm": (("w", 0), ("a", 1))}
FNUZ_TWIN = {"float8_e4m3fn": "float8_e4m3fnuz", "float8_e4m3fnuz": "float8_e4m3fn",
             "float8_e5m2": "float8_e5m2fnuz", "float8_e5m2fnuz": "float8_e5m2"}
E8M0_ONE, E4M3_ONE = 127, 0x38


@dataclass(frozen=True)
class Hypothesis:
    name: str
    ops: tuple[str, ...]
    # yields (rewritten problem, sentence) for each variant worth trying; nothing if not applicable
    rewrite: Callable[[Mapping, Mapping], Iterator[tuple[dict, str]]] | None = None
    # yields (alternative expected, alternative bound, sentence) from the correct expectation
    outputs: Callable[..., Iterator[tuple[np.ndarray, np.ndarray, str]]] | None = None


@dataclass(frozen=True)
class Finding:
    hypothesis: str
    sentence: str


def _present(p: Mapping, key: str) -> bool:
    return p.get(key) is not None


# ------------------------------------------------------------------ integer-weight hypotheses


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


def zero_point_off_by_one(p, ctx):
    k, g = _group_rows(p)
    shape = (k // g, np.asarray(p["q"]).shape[1])
    default = 8 if ctx.get("_op", "w4a16_gemm") == "w4a16_gemm" else 0  # the op's implicit zero point
    z = np.full(shape, default) if p.get("zeros") is None else np.asarray(p["zeros"])
    for d, why in ((-1, "the stored 'z - 1' (GPTQ) convention is not undone"), (+1, "the zero point is incremented twice")):
        out = dict(p)
        out["zeros"] = z + d
        yield out, f"the zero point is off by {d:+d}: {why}"


def azp_off_by_one(p, ctx):
    if not _present(p, "azp"):
        return
    for d in (-1, 1):
        yield dict(p, azp=np.asarray(p["azp"]) + d), f"the activation zero point (azp) is off by {d:+d}"


def nibble_order_swapped(p, ctx):
    keys = NIBBLE_KEYS.get(ctx.get("_op", "w4a16_gemm"), (("q", 0),))
    for key, axis in keys:
        if not _present(p, key):
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


# ------------------------------------------------------------------ scale hypotheses (every GEMM)


def scales_transposed(p, ctx):
    """A [R, C] scale array read with the other array's strides: as if stored [C, R]. For
    fp8_w8a16_gemm on a square weight, also the per-channel [1, N] scale reaching the kernel as
    [N, 1], which broadcasts along K: w[k, n] scaled by b_scale[k], rewritten as x[:, k] scaled
    by it (the same products; the roundings agree where they are exact, e.g. power-of-two scales)."""
    if ctx["_op"] == "fp8_w8a16_gemm":
        s = np.asarray(p["b_scale"], np.float64)
        x = np.asarray(p["x"], np.float64)
        k, n = x.shape[1], s.shape[1]
        if s.shape == (1, n) and n == k > 1:
            yield dict(p, x=x * s.reshape(1, k), b_scale=np.ones_like(s)), (
                "the per-channel weight scales were applied along K (rows) instead of N (columns): the "
                f"scale tensor reached the kernel transposed ([{n}, 1] where [1, {n}] was expected)")
    for key, kind in SCALE_KEYS[ctx["_op"]]:
        if kind == "global" or not _present(p, key):
            continue
        s = np.asarray(p[key])
        if s.ndim != 2 or s.shape[0] == 1 or s.shape[1] == 1:
            continue
        yield dict(p, **{key: s.T.copy().reshape(s.shape)}), (
            f"the {list(s.shape)} scales ({key}) are read transposed (as if stored "
            f"{list(s.shape[::-1])}): each element gets another channel's/group's scale")


def scale_vector_on_wrong_axis(p, ctx):
    """A per-channel scale [1, N] applied along M (read as [N, 1]), or a per-token scale [M, 1]
    applied along N (for M <= N, resp. N <= M: the read stays in bounds)."""
    op = ctx["_op"]
    if op == "scaled_mm":
        sa, sb = np.asarray(p["a_scale"], np.float64), np.asarray(p["b_scale"], np.float64)
        m, n = np.asarray(p["a"]).shape[0], np.asarray(p["b"]).shape[1]
        if sb.shape == (1, n) and n > 1 and m <= n:
            yield dict(p, a_scale=sa * sb[0, :m].reshape(m, 1), b_scale=np.ones((1, 1))), (
                f"the per-channel b_scale [1, {n}] is applied along rows (read as [{n}, 1]): "
                "row m is scaled by b_scale[m]")
        if sa.shape == (m, 1) and m > 1 and n <= m:
            yield dict(p, a_scale=np.ones((1, 1)), b_scale=sb * sa[:n, 0].reshape(1, n)), (
                f"the per-token a_scale [{m}, 1] is applied along columns (read as [1, {m}]): "
                "column n is scaled by a_scale[n]")
        return
    key = "b_scale" if op == "fp8_w8a16_gemm" else "scales"
    if op in INT_A16 and p["group_size"] != -1:
        return
    s = np.asarray(p[key], np.float64)
    x = np.asarray(p["x"], np.float64)
    m, n = x.shape[0], s.shape[1]
    if s.shape == (1, n) and n > 1 and m <= n:
        yield dict(p, x=x * s[0, :m].reshape(m, 1), **{key: np.ones_like(s)}), (
            f"the per-channel {key} [1, {n}] is applied along rows (read as [{n}, 1]): "
            "row m is scaled by the scale of column m")


def scale_misapplied(p, ctx):
    for key, kind in SCALE_KEYS[ctx["_op"]]:
        if not _present(p, key):
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


def fn_fnuz_confused(p, ctx):
    """fp8 codes decoded with the other variant of the format (fn <-> fnuz: the exponent bias
    differs by one, so every value halves or doubles; the NaN / -0 codes differ)."""
    op = ctx["_op"]
    qd = p.get("quant_dtype")
    if op in FP8_OPS and qd in FNUZ_TWIN:
        twin = FNUZ_TWIN[qd]
        yield dict(p, quant_dtype=twin), (
            f"the {qd} codes are decoded as {twin} (fn <-> fnuz confusion: values off by a factor 2)")
        if op != "fp8_w8a16_gemm":  # weights only: the same codes, the weight scale carries the factor
            f, t = FORMATS[qd].decode_table, FORMATS[twin].decode_table
            b = np.asarray(p["b"])
            ratio = 2.0 ** (FORMATS[qd].bias - FORMATS[twin].bias)
            fv, tv = f[b], t[b]
            same = np.isfinite(fv) & np.isfinite(tv) & (tv == fv * ratio) | (fv == 0) & (tv == 0)
            if same.all():
                yield dict(p, b_scale=np.asarray(p["b_scale"], np.float64) * ratio), (
                    f"the weight codes (b) are decoded as {twin} while the activations are read as "
                    f"{qd}: weights off by a factor {ratio:g}")
    if op == "nvfp4_gemm":
        f, t = FORMATS["float8_e4m3fn"].decode_table, FORMATS["float8_e4m3fnuz"].decode_table
        for key, glob in (("w_scale", "w_global"), ("a_scale", "a_global")):
            c = np.asarray(p[key])
            if np.all(np.isfinite(t[c]) & ((t[c] == f[c] / 2) | (f[c] == 0))):
                yield dict(p, **{glob: float(p[glob]) / 2}), (
                    f"the E4M3 block scales ({key}) are decoded as float8_e4m3fnuz: off by a factor 0.5")


WEIGHT_KEYS = {"w4a16_gemm": "q", "w8a16_gemm": "q", "scaled_mm": "b", "block_scaled_mm": "b",
               "fp8_w8a16_gemm": "b", "mxfp4_gemm": "w", "nvfp4_gemm": "w"}


def weight_transposed(p, ctx):
    """A square weight read with the other layout's strides ([N, K] taken for [K, N]): w -> w.T,
    its scales as given."""
    key = WEIGHT_KEYS[ctx["_op"]]
    w = np.asarray(p[key])
    if w.ndim == 2 and w.shape[0] == w.shape[1] > 1:
        yield dict(p, **{key: w.T.copy()}), (
            f"the weight ({key}, {list(w.shape)}) is read transposed: a [N, K] layout taken for [K, N] "
            "(the scales are read as given)")


def bias_dropped_or_spurious(p, ctx):
    op = ctx.get("_op", "w4a16_gemm")
    n = _n_of(op, p)
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


def _n_of(op: str, p: Mapping) -> int:
    for key in ("q", "b", "w"):
        if key in p and p[key] is not None:
            return np.asarray(p[key]).shape[1]
    raise ValueError(f"cannot tell N of a {op} problem (keys {sorted(p)})")


# ------------------------------------------------------------------ output hypotheses


def _trailing_run(flags: np.ndarray) -> int:
    """Length of the run of True at the end of a 1-D bool array."""
    if flags.size == 0 or not flags[-1]:
        return 0
    falses = np.flatnonzero(~flags)
    return flags.size if falses.size == 0 else flags.size - 1 - int(falses[-1])


def missing_tail(p, ctx, actual, e: Expectation, out_dtype):
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


def output_dtype_reinterpreted(p, ctx, actual, e: Expectation, out_dtype):
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


CATALOGUE: tuple[Hypothesis, ...] = (
    Hypothesis("first_group_scale_per_tile", INT_A16, first_group_scale_per_tile),
    Hypothesis("scales_transposed", GEMMS, scales_transposed),
    Hypothesis("scale_vector_on_wrong_axis", ("scaled_mm", "fp8_w8a16_gemm", "w8a16_gemm", "w4a16_gemm"),
               scale_vector_on_wrong_axis),
    Hypothesis("zero_point_off_by_one", INT_A16, zero_point_off_by_one),
    Hypothesis("azp_off_by_one", ("scaled_mm",), azp_off_by_one),
    Hypothesis("nibble_order_swapped", ("w4a16_gemm", "mxfp4_gemm", "nvfp4_gemm"), nibble_order_swapped),
    Hypothesis("awq_order_ignored", ("w4a16_gemm",), awq_order_ignored),
    Hypothesis("weight_transposed", GEMMS, weight_transposed),
    Hypothesis("fn_fnuz_confused", FP8_OPS + ("nvfp4_gemm",), fn_fnuz_confused),
    Hypothesis("scale_misapplied", GEMMS, scale_misapplied),
    Hypothesis("bias_dropped_or_spurious", GEMMS, bias_dropped_or_spurious),
    Hypothesis("missing_tail", GEMMS, outputs=missing_tail),
    Hypothesis("output_dtype_reinterpreted", GEMMS, outputs=output_dtype_reinterpreted),
)


def hypotheses_for(op: str) -> list[Hypothesis]:
    """The catalogue entries that declare ``op``."""
    return [h for h in CATALOGUE if op in h.ops]


def diagnose(op: str, problem: Mapping, actual, *, exact: bool, compute_dtype: str, out_dtype: str,
             context: Mapping | None = None) -> list[Finding]:
    """Every hypothesis variant whose alternative output the kernel's ``actual`` matches."""
    ctx = dict(context or {})
    ctx["_op"] = op
    found: list[Finding] = []
    base: Expectation | None = None
    for hyp in hypotheses_for(op):
        if hyp.rewrite is not None:
            for alt_problem, sentence in hyp.rewrite(problem, ctx):
                try:
                    alt = expect(op, alt_problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
                except ValueError:
                    continue  # the rewrite made an invalid problem (e.g. zero point out of range)
                if base is None:
                    base = expect(op, problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
                if np.array_equal(alt.exact_value, base.exact_value, equal_nan=True):
                    continue  # a no-op on this problem (e.g. symmetric scales transposed): tells nothing
                if compare(actual, alt.expected, alt.bound) is None:
                    found.append(Finding(hyp.name, sentence))
        if hyp.outputs is not None:
            if base is None:
                base = expect(op, problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
            for alt_expected, alt_bound, sentence in hyp.outputs(problem, ctx, actual, base, out_dtype):
                if compare(actual, alt_expected, alt_bound) is None:
                    found.append(Finding(hyp.name, sentence))
    return found
