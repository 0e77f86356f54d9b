"""The integer-weight A16 family: ``w4a16_gemm`` and ``w8a16_gemm`` (16-bit activations, integer
weight codes grouped along K). Reference, bound, exact-regime inputs and the family's own diagnosis
hypotheses; the kernel twins are ``kernels/w4a16``.

Problem keys (orientation and conventions: ``oracle.gemm``; optional keys default to None):

- ``w4a16_gemm``: ``x [M,K]`` values, ``q [K,N]`` uint4 codes 0..15, ``scales [K/G,N]``,
  ``zeros [K/G,N] | None`` (None = 8), ``group_size`` (32 | 64 | 128 | -1 | any positive size),
  ``bias [N] | None``. A group size that does not divide K leaves a partial last group of
  ``K % G`` rows with a scale (and zero point) row of its own: ``ceil(K/G)`` rows.
- ``w8a16_gemm``: ``x [M,K]``, ``q [K,N]`` int8 codes (-128..127; uint8 0..255 with zero
  points), ``scales [K/G,N]`` (group_size -1: per-channel ``[1,N]``), ``zeros [K/G,N] | None``
  (None = 0), ``group_size``, ``bias``.

The bound is ``oracle.bounds.gemm_bound`` (one scale rounding). Generator parameters (keyword;
defaults in brackets; ``oracle.exact``): ``group_size`` [32], ``zeros`` (bool) [False], ``bias``
[False]. Scales are drawn exact in both float16 and bfloat16 (8 significand bits), so one
problem serves every compute dtype.

Declared conventions of ``w4a16_gemm`` (``KernelAdapter.conventions``; absent = the strict default
above), for kernels that do not form one fp32 result rounded once:

- ``dequant="fma_zs_rounded"``: the weight is ``fma(q, s, RNE_c(-z * s))`` in the compute dtype
  ``c`` (gemlite's ``fma_mode``): ``-z*s`` is rounded to ``c``, then one fused rounding. The bound
  takes ``T_op`` against those weights exactly (``fma_zs_rounded_weights``).
- ``partial_sums=S`` with ``partial_block_k=BK``: the K tiles of ``BK`` rows are reduced into
  ``S`` fp32 partial sums (tile ``t`` into partial ``t % S``), each rounded to the output dtype
  and added into a zeroed output in the output dtype, in any order (split-K ``atomic_add`` into
  a float16 output; S = cdiv(K, BK) where every K block is its own program).
  ``partial_roundings=r`` (default 1): each partial is rounded to the output dtype r times before
  it is added (2 for ``RNE_o(RNE_o(c) * s)``: a per-channel scale applied in the output dtype).

Either makes the exact regime bounded (its promise, RNE(y) only, presumes one rounding of an
exact result); the bound is ``oracle.bounds.partial_sums_bound``.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from qkcheck.oracle import diagnosis
from qkcheck.oracle.arguments import as_2d, check_group_size, check_shape
from qkcheck.oracle.bounds import a16_bound, partial_sums_bound
from qkcheck.oracle.diagnosis import Hypothesis
from qkcheck.oracle.exact import draw_bias, half16, ints, scale_span, signs, x16, xmax
from qkcheck.oracle.gemm import Operands, bias_vector, check_k, finish, int_codes
from qkcheck.oracle.numerics import round_to
from qkcheck.oracle.reference import VALUES, OpReference

UINT4_SYMMETRIC_ZERO = 8  # "uint4b8": codes 0..15 with the implicit zero point 8
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


# ------------------------------------------------------------------ references


def dequant_int_grouped(q, scales, zeros=None, *, group_size: int, default_zero: int = UINT4_SYMMETRIC_ZERO) -> np.ndarray:
    """Dequantize integer codes grouped along K: ``w[k, n] = (q[k, n] - z[g, n]) * s[g, n]``
    with ``g = k // group_size``.

    q: ints [K, N]; scales: float [K/G, N]; zeros: ints [K/G, N] (true zero points) or None for
    ``default_zero`` (8: the symmetric uint4 convention; W8A16 passes 0). group_size=-1: one
    group over K. ``group_size=1`` with per-k scales [K, N] expresses any per-row scale
    assignment (used by diagnosis hypotheses). A ``group_size`` that does not divide K leaves a
    partial last group of ``K % group_size`` rows: scales and zeros have ``ceil(K/G)`` rows.
    Returns float64 [K, N].
    """
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must be 2-D, got shape {q.shape}; reshape it to [rows, cols]")
    k, n = q.shape
    partial = (isinstance(group_size, (int, np.integer)) and not isinstance(group_size, bool)
               and group_size > 0 and k % group_size != 0)
    g = int(group_size) if partial else check_group_size(group_size, k)
    groups = -(-k // g) if g else 1  # K = 0 with group_size -1: one (empty) group
    s = as_2d("scales", scales)
    check_shape("scales", s, (groups, n), f"one row per group of {g} along K"
                + (f" (the last one partial: {k % g} rows)" if partial else "") + ", one column per N")
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"scales[{bad[0]}, {bad[1]}] is {s[tuple(bad)]}; scales must be finite")
    w = np.array(q, dtype=np.float64, order="C")  # a fresh array, modified in place below
    if partial:  # each k row takes its group's row (the same products, element for element)
        of_k = np.arange(k) // g
        if zeros is None:
            if default_zero:
                w -= default_zero
        else:
            z = as_2d("zeros", zeros)
            check_shape("zeros", z, s.shape, "zero points have the same shape as scales")
            w -= z[of_k]
        w *= s[of_k]
        return w
    view = w.reshape(groups, g, n)
    if zeros is None:
        if default_zero:
            w -= default_zero
    else:
        z = as_2d("zeros", zeros)
        check_shape("zeros", z, s.shape, "zero points have the same shape as scales")
        view -= z[:, None, :]
    view *= s[:, None, :]
    return w


def w4a16_gemm(x, q, scales, zeros=None, *, group_size: int, bias=None) -> np.ndarray:
    """Reference W4A16 GEMM: ``x @ dequant(q, scales, zeros) + bias``, exact in float64.

    x: float [M, K] (the activation values, already representable in fp16/bf16); q: uint4
    codes [K, N] in 0..15; scales: [K/G, N]; zeros: true zero points [K/G, N] or None (= 8);
    bias: [N] or None. M = 0 is valid and returns an empty [0, N] array.
    """
    return finish(w4a16_operands(x, q, scales, zeros, group_size=group_size, bias=bias))


def w4a16_operands(x, q, scales, zeros=None, *, group_size: int, bias=None) -> Operands:
    x = as_2d("x", x)
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must be 2-D, got shape {q.shape}; reshape it to [rows, cols]")
    check_k("x", x.shape[1], "q", q.shape[0])
    if q.size and (q.min() < 0 or q.max() > 15):
        raise ValueError(f"q holds codes in [{int(q.min())}, {int(q.max())}], uint4 codes are 0..15")
    w = dequant_int_grouped(q, scales, zeros, group_size=group_size)
    return Operands(x, w, bias_vector(bias, q.shape[1]))


def w8a16_operands(x, q, scales, zeros=None, *, group_size: int, bias=None) -> Operands:
    x = as_2d("x", x)
    q = int_codes("q", q, -128, 255, "int8 codes (or uint8 codes with zero points)")
    check_k("x", x.shape[1], "q", q.shape[0])
    if q.size and int(q.min()) < 0 and int(q.max()) > 127:
        raise ValueError(f"q mixes negative codes and codes above 127 ([{int(q.min())}, {int(q.max())}]); "
                         "int8 codes are -128..127, uint8 codes 0..255: pick one convention")
    if zeros is not None:
        zeros = int_codes("zeros", zeros, -128, 255, "zero points")
    w = dequant_int_grouped(q, scales, zeros, group_size=group_size, default_zero=0)
    return Operands(x, w, bias_vector(bias, q.shape[1]))


def w8a16_gemm(x, q, scales, zeros=None, *, group_size: int, bias=None) -> np.ndarray:
    """Reference W8A16 GEMM: ``x @ ((q - z) * s) + bias``.

    x: float [M, K] activation values; q: int8 codes [K, N] (-128..127; uint8 0..255 with zero
    points also accepted); scales: [K/G, N] (group_size=-1: per-channel [1, N]); zeros: int
    [K/G, N] or None (= 0); bias: [N] or None.
    """
    return finish(w8a16_operands(x, q, scales, zeros, group_size=group_size, bias=bias))


# ------------------------------------------------------------------ exact-regime and random inputs


@dataclass(frozen=True)
class _Codes:
    """An op's weight codes as the generator draws them: the code range, the range of drawn zero
    points, the implicit zero point, the largest |code - zero| and the codes' NumPy dtype."""

    lo: int
    hi: int
    zeros: tuple[int, int]
    implicit_zero: int
    span: float
    dtype: type | None = None


W4_CODES = _Codes(0, 15, (0, 15), UINT4_SYMMETRIC_ZERO, 15.0)
W8_CODES = _Codes(-128, 127, (-8, 8), 0, 136.0, np.int8)


def _generator(codes: _Codes):
    def generate(rng, style, m, k, n, group_size, zeros, bias):
        return _draw(codes, rng, style, m, k, n, group_size, zeros, bias)
    return generate


def _draw(c: _Codes, rng, style, m, k, n, group_size, zeros, bias):
    g = k if group_size == -1 else group_size
    groups = k // g if g else 1
    q = ints(rng, c.lo, c.hi, (k, n))
    if c.dtype is not None:
        q = q.astype(c.dtype)
    z = ints(rng, c.zeros[0], c.zeros[1], (groups, n)) if zeros else None
    zval = c.implicit_zero if z is None else None
    if style == "coherent":  # each (group, column) has codes of one sign relative to the zero point
        zz = np.full((groups, n), zval) if z is None else z
        sign = signs(rng, (groups, n))
        lo_room = zz - c.lo
        hi_room = c.hi - zz
        mag = rng.integers(1, 1 << 16, (k, n))
        room = np.repeat(np.where(sign > 0, hi_room, lo_room), g, axis=0)
        room = np.clip(room, 1, 8)  # within 8 steps of the zero point: a zero-point error is large
        q = np.repeat(zz, g, axis=0) + np.repeat(sign, g, axis=0).astype(int) * (1 + mag % room)
        q = np.clip(q, c.lo, c.hi)
        q = q.astype(c.dtype) if c.dtype is not None else q
    if style == "exact":
        spread = scale_span(k, 4 * c.span * 2, most=3)
        emin = -4
        s = np.exp2(emin + np.arange(groups) % (spread + 1))[:, None] * signs(rng, (groups, n))
        xm = xmax(k, c.span * 2.0 ** (emin + spread) / 2.0**emin)
        x = x16(rng, style, m, k, xm)
    elif style == "coherent":
        s = half16(np.exp2(-6 + np.arange(groups) % 4)[:, None] * rng.uniform(1, 2, (groups, n)))
        x = x16(rng, style, m, k)
    else:
        s = half16(np.exp2(rng.integers(-10, -3, (groups, n))) * rng.uniform(1, 2, (groups, n)) * signs(rng, (groups, n)))
        x = x16(rng, style, m, k)
    return {"x": x, "q": q, "scales": s, "zeros": z, "group_size": group_size, "bias": draw_bias(rng, style, n, bias)}


# ------------------------------------------------------------------ the family's hypotheses


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


def _zero_point_off_by_one(default: int):
    """The hypothesis for an op whose implicit zero point (``zeros`` None) is ``default``."""
    def zero_point_off_by_one(ref, p, ctx):
        k, g = _group_rows(p)
        shape = (-(-k // g), np.asarray(p["q"]).shape[1])
        z = np.full(shape, default) if p.get("zeros") is None else np.asarray(p["zeros"])
        for d, why in ((-1, "the stored 'z - 1' (GPTQ) convention is not undone"), (+1, "the zero point is incremented twice")):
            out = dict(p)
            out["zeros"] = z + d
            yield out, f"the zero point is off by {d:+d}: {why}"
    return zero_point_off_by_one


def awq_order_ignored(ref, p, ctx):
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


def _k_groups(p: Mapping):
    k, g = _group_rows(p)
    return (k, g) if 0 < g < k else None


# the op's structure the per-class hypotheses (oracle.diagnosis) read: scales grouped along K
K_GROUPS = diagnosis.KGroups(_k_groups, _per_k)
FIRST_GROUP_SCALE_PER_TILE = diagnosis.first_group_scale_per_tile(K_GROUPS)
# every bug class of oracle.diagnosis that applies to an integer-weight A16 GEMM, beside the family's own
_CLASSES = (diagnosis.group_index_not_advancing(K_GROUPS), diagnosis.strides_assumed_contiguous(("x", "values")),
            diagnosis.k_tail_unmasked("x"), diagnosis.split_k_reduction_wrong("x"),
            diagnosis.SCALE_GRANULARITY_CONFUSED)


# ------------------------------------------------------------------ declared conventions

CONVENTIONS = ("dequant", "partial_sums", "partial_block_k", "partial_roundings")
DEQUANT_CONVENTIONS = ("fma_zs_rounded",)


def fma_zs_rounded_weights(q, scales, zeros, *, group_size: int, compute_dtype: str):
    """(W~, W_alt) float64 [K, N]: ``W~ = RNE_c(q*s + RNE_c(-z*s))`` (one fused rounding, as
    ``fma.rn`` does), and ``W_alt = RNE_c(RNE_32(q*s + RNE_c(-z*s)))`` (the same fma evaluated in
    float32 first, as an emulation may). ``s`` is the scale rounded to ``c`` (the kernel holds
    it in ``c``); ``z`` the zero point (None: 8). ``q*s`` and the sum are exact in float64 for
    float16 (and for bfloat16 unless the two terms lie more than 40 binades apart)."""
    q = np.asarray(q, np.float64)
    k, n = q.shape
    g = k if group_size == -1 else int(group_size)
    s = round_to(np.asarray(scales, np.float64), compute_dtype)
    z = np.full(s.shape, float(UINT4_SYMMETRIC_ZERO)) if zeros is None else np.asarray(zeros, np.float64)
    of_k = np.arange(k) // g
    s_k, z_k = s[of_k], z[of_k]
    fused = q * s_k + round_to(-z_k * s_k, compute_dtype)
    return round_to(fused, compute_dtype), round_to(round_to(fused, "float32"), compute_dtype)


def _declared(p) -> bool:
    return p.get("dequant") is not None or (p.get("partial_sums") or 1) > 1 or (p.get("partial_roundings") or 1) > 1


def _w4a16_bound(p, y, compute_dtype, out_dtype):
    """The A16 bound, or under a declared convention ``partial_sums_bound``."""
    if not _declared(p):
        return _A16_W4(p, y, compute_dtype, out_dtype)
    dq = p.get("dequant")
    if dq is not None and dq not in DEQUANT_CONVENTIONS:
        raise ValueError(f"dequant={dq!r} is not a w4a16_gemm dequantization convention "
                         f"(known: {', '.join(DEQUANT_CONVENTIONS)})")
    ops = _w4a16_ops(p)
    k = ops.x.shape[1]
    s_count = p.get("partial_sums") or 1
    block_k = p.get("partial_block_k")
    if s_count > 1 and block_k is None:
        raise ValueError("partial_sums needs partial_block_k: the K tile whose partials are reduced")
    wk = alt = None
    if dq == "fma_zs_rounded":
        wk, alt = fma_zs_rounded_weights(p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"],
                                         compute_dtype=compute_dtype)
    return partial_sums_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                              partials=int(s_count), block_k=int(block_k or max(k, 1)), w_kernel=wk, w_alt=alt,
                              roundings=int(p.get("partial_roundings") or 1))


def _expect_declared(ref, problem, *, exact, compute_dtype, out_dtype):
    """VALUES' expectation; under a declared convention the exact regime is bounded too."""
    return VALUES.expect(ref, problem, exact=exact and not _declared(problem), compute_dtype=compute_dtype,
                         out_dtype=out_dtype)


# ------------------------------------------------------------------ the records


def _w4a16_ops(p):
    return w4a16_operands(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias"))


def _w8a16_ops(p):
    return w8a16_operands(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias"))


def _k_group_size(p) -> int:
    k = np.asarray(p["x"]).shape[1]
    return k if p["group_size"] == -1 else p["group_size"]


_KEYS = dict(required=("x", "q", "scales", "group_size"), optional=("zeros", "bias"),
             axis_names=("row (m)", "column (n)"), generator_params=dict(group_size=32, zeros=False, bias=False),
             scale_keys=(("scales", "float"),), weight_key="q", k_group_size=_k_group_size,
             judge=VALUES, diagnoser=diagnosis.diagnose)

_A16_W4 = a16_bound(lambda p: _w4a16_ops(p))

REFERENCES: tuple[OpReference, ...] = (
    OpReference(
        "w4a16_gemm",
        lambda p: w4a16_gemm(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias")),
        bound=_w4a16_bound, operands=_w4a16_ops, conventions=CONVENTIONS, generate=_generator(W4_CODES),
        nibble_keys=(("q", 0),),
        hypotheses=(FIRST_GROUP_SCALE_PER_TILE, diagnosis.SCALES_TRANSPOSED, diagnosis.WEIGHT_SCALE_ON_WRONG_AXIS,
                    Hypothesis("zero_point_off_by_one", _zero_point_off_by_one(UINT4_SYMMETRIC_ZERO)),
                    diagnosis.NIBBLE_ORDER_SWAPPED, Hypothesis("awq_order_ignored", awq_order_ignored),
                    diagnosis.WEIGHT_TRANSPOSED, diagnosis.SCALE_MISAPPLIED, *_CLASSES, *diagnosis.GEMM_TAIL),
        **{**_KEYS, "optional": _KEYS["optional"] + CONVENTIONS,
           "judge": dataclasses.replace(VALUES, expect=_expect_declared)}),
    OpReference(
        "w8a16_gemm",
        lambda p: w8a16_gemm(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias")),
        bound=a16_bound(_w8a16_ops), operands=_w8a16_ops, generate=_generator(W8_CODES),
        hypotheses=(FIRST_GROUP_SCALE_PER_TILE, diagnosis.SCALES_TRANSPOSED, diagnosis.WEIGHT_SCALE_ON_WRONG_AXIS,
                    Hypothesis("zero_point_off_by_one", _zero_point_off_by_one(0)),
                    diagnosis.WEIGHT_TRANSPOSED, diagnosis.SCALE_MISAPPLIED, *_CLASSES, *diagnosis.GEMM_TAIL),
        **_KEYS),
)
