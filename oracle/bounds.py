"""Per-element error bounds for a *correct* kernel, derived from the op, never pulled from the air.

Notation: ``u_c``, ``u_32`` are the unit roundoffs (2**-p) of the compute dtype and float32,
``eta_32`` the smallest float32 subnormal, ``RNE_t`` round-to-nearest-even into dtype ``t``.
A GEMM is ``y = X @ W + b`` over K, with ``X`` [M, K] and ``W`` [K, N] the *exact* dequantized
operands (the ``*_operands`` functions of the ``oracle.ops`` families) and ``y`` the exact
result. ``P = |X| @ |W|`` is the absolute product sum. The bound of an element is assembled
from these terms:

**T_op — operand rounding** (the dot runs in a wide float ``c``: fp16 / bf16 / fp32; the A16
ops, and the emulation path of the code-domain ops). A kernel forms each compute-dtype operand
from the exact value in one of two ways, element by element: rounded once,
``X_a = RNE_c(X)`` (dequantization in ``c``, or an fp32 product that is exact), or through
float32, ``X_b = RNE_c(RNE_32(X))`` (fp32 dequantization, then a cast); ``W`` likewise. The
resulting deviation of the dot is known exactly up to that choice::

    T_op = |X_a @ W_a - X @ W| + |X_b - X_a| @ |W_b| + |X_a| @ |W_b - W_a|

and, where the activations are not exact in ``c`` while a kernel keeps the weights exact (codes
in ``c``, the scale applied to the fp32 partial sum), the larger of that and
``|X_a @ W - X @ W| + |X_b - X_a| @ |W|``.

The first term is the *signed* sum of the rounding errors (it cancels where they do, which is
why it is far tighter than ``u_c P``); the other two allow any element to take the fp32 path
instead (they are zero unless double rounding changes a value). ``T_op = 0`` where the operands
are exact in ``c``: small integers, fp8 / e2m1 codes times power-of-two scales, or a dot that
runs in the code domain (int8 / fp8 / e2m1 ``compute_dtype``). Assumed: a dequantized weight is
``(q - z) * s`` formed from the exact integer ``q - z`` with one rounding; the "scaled zero"
form ``q * s - z * s`` (an extra rounding of ``z * s``) is covered only where a kernel declares
it (``partial_sums_bound``: the kernel's weights are passed, and ``T_op`` is taken against them
exactly). Ops whose scales need
more than one fp32 product to dequantize (NVFP4: code x block scale x global, where the scale
product may be rounded first) add ``extra_relative * P_hat`` with ``extra_relative = gamma_2``
(one more rounding of each operand).

**T_acc — float32 accumulation, in any order**: ``T_acc = gamma_r (P_hat + |b|)`` with
``gamma_r = r u / (1 - r u)`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
§3.1, eq. 3.4: a computed sum of terms each carrying at most r factors (1 + delta), |delta| <= u,
errs by at most gamma_r times the sum of their magnitudes) and ``P_hat = max(P, |X_a| @ |W_a| +
mixing terms)`` the product sum of whichever operands were fed to the dot. ``r`` counts the
roundings on any one term's path:

- additions: K products and the bias are K + 1 leaves; *any* summation tree — sequential,
  pairwise, BLOCK_K tiles, split-K partials summed afterwards — puts at most K additions on a
  leaf's path;
- products: exact in float32 for fp16 x fp16 (11 + 11 significand bits <= 24), bf16 x bf16
  (8 + 8), fp8 x fp8 (4 + 4), e2m1 x e2m1; one rounding for fp32 x fp32;
- scale multiplies applied to fp32 partial sums (``scale_roundings``): per-channel / per-group
  scale of an A16 kernel that scales the accumulator instead of the operand: 1; W8A8 and
  block-scaled FP8 (a_scale and b_scale, or their rounded product): 2; NVFP4 (block scales and
  the two globals): 4; MXFP4 in the code domain: 0 (powers of two are exact; see T_u).

``u = ACC_U = 2 u_32``, not ``u_32``: tensor cores add products in a multi-term adder that
truncates instead of rounding to nearest (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior
of NVIDIA tensor cores", PeerJ CS 2021), an error below one fp32 ulp, i.e. ``2 u_32`` relative.
FP8 dots (``compute_dtype`` an fp8 format) add an MMA term with ``FP8_MMA_U = 2**-13``: Hopper's FP8
MMA accumulates with about 14 retained significand bits, truncating (DeepSeek-V3 technical
report, arXiv:2412.19437, section 3.3.2, measured on H800). Kernels are assumed to promote the MMA
result to an fp32 accumulator every ``FP8_MMA_CHUNK = 128`` products or fewer (the interval the
report recommends), so an fp8 dot adds
``T_mma = gamma_c(FP8_MMA_U) (P_hat + |b|)`` with ``c = min(K, FP8_MMA_CHUNK)`` to the fp32 term
over all K. A kernel that accumulates longer runs in the MMA without promoting can exceed this
and is reported: its result is less accurate than that practice allows. Measured on an H100, a
correct per-token x per-channel fp8 kernel exceeded the fp32-only bound by up to 2x at
K = 16..32. int8 and e2m1 dots are exact or fp32 as stated.

**int8 W8A8** (``compute_dtype='int8'``): the dot accumulates exactly in int32 (the reference
checks ``K * max|a - azp| * max|b| < 2**31``), so only the epilogue rounds: the int32 sums
``S = sum_k a b`` and the zero-point correction ``C = azp * sum_k b`` are converted to fp32
(1 rounding each), subtracted (1), scaled by a_scale and b_scale (2) and the bias added (1):
``T_int = gamma_5 (|s| |S| + |s| |C| + |b|)`` with ``s = a_scale * b_scale`` and float32's u
(the epilogue runs on IEEE units) — relative to the result, not to ``P``; plus the T_u and T_64
terms below with ``A = max(|S| + |C|)``. A split-K kernel converts and scales each split's exact
int32 partial ``S_i`` and adds the scaled partials in fp32 (at most K - 1 additions, in any order):
``T_split = gamma_{K+3} |s| P_c`` with ``P_c = sum_k |a| |b|`` (``sum_i |S_i| <= P_c``). Found
needed by the fuzzer: a correct split_k=2 int8 kernel was 2.9x past ``T_int`` alone where the
partials cancel.

**T_u — underflow**: multiplications can underflow float32 (bf16 and E8M0 reach 2**-133 /
2**-127), each with an absolute error <= eta_32 / 2, later amplified by at most the largest
factor applied after it: ``T_u = 3 (K + 1) eta_32 A`` with ``A`` the op's largest code-domain
partial sum times its largest scales (at least 1). Additions are exact on underflow.

**T_64 — the oracle's own float64 evaluation**: ``y`` and the terms above are computed in
float64: ``T_64 = 2 gamma^{(64)}_{K+2} (P_hat + |b|)``.

**Output rounding**: with ``E = T_op + T_acc + T_u + T_64`` a correct kernel's float32 result lies in
``[y - E, y + E]``; RNE into the output dtype is monotone, so its output lies in
``[RNE_o(y - E), RNE_o(y + E)]`` and ``bound = max(|RNE_o(y + E) - y|, |RNE_o(y - E) - y|)``.
This is the exact reach of the final rounding, never more than ``u_o (|y| + E) + eta_o / 2``.
Where ``y`` is NaN or inf the bound is 0 (compare checks those positions); where both ends
round to the same infinity the output must be that infinity (bound 0, ``expect`` expects it);
where only one end overflows the bound is inf.

In the *exact regime* none of these roundings happens (every operand is exact in the compute
dtype, every partial sum is exact in float32), the only correct output is RNE(y) and the bound
is zero; see ``oracle.exact``.
"""
from __future__ import annotations

import numpy as np

from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.numerics import WIDE_FLOATS, round_to, wide_float

U32 = wide_float("float32").unit_roundoff
ETA32 = wide_float("float32").min_subnormal
U64 = 2.0**-53
ACC_U = 2 * U32  # tensor-core adders truncate: < 1 fp32 ulp per addition
FP8_MMA_U = 2.0**-13  # FP8 MMA accumulators keep ~14 significand bits and truncate (sm_90)
FP8_MMA_CHUNK = 128  # products accumulated in the MMA before promotion to fp32, at most

CODE_COMPUTE = ("int8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn")


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u) (float32's u unless given)."""
    nu = n * u
    if nu >= 1:
        raise ValueError(f"K={n} is too long for a float32 accumulation bound (n*u >= 1); split the GEMM along K")
    return nu / (1 - nu)


def check_compute_dtype(compute_dtype: str, allowed: tuple[str, ...], op: str) -> str:
    if compute_dtype not in allowed:
        raise ValueError(
            f"compute_dtype={compute_dtype!r} is not a dtype {op}'s dot can run in "
            f"(allowed: {', '.join(allowed)}); pass the dtype of the kernel's tl.dot operands"
        )
    return compute_dtype


def _paths(v: np.ndarray, c: str) -> tuple[np.ndarray, np.ndarray]:
    """(RNE_c(v), RNE_c(RNE_32(v))): the two ways a kernel forms a compute-dtype operand."""
    a = round_to(v, c)
    if c == "float32":
        return a, a
    return a, round_to(round_to(v, "float32"), c)


def operand_rounding(x: np.ndarray, w: np.ndarray, compute_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(T_op, P_hat) of the module docstring for a dot of ``x`` and ``w`` in ``compute_dtype``
    (a wide float). Both float64 [M, N]."""
    p = np.abs(x) @ np.abs(w)
    xa, xb = _paths(x, compute_dtype)
    wa, wb = _paths(w, compute_dtype)
    x_exact, w_exact = np.array_equal(xa, x), np.array_equal(wa, w)
    if x_exact and w_exact and np.array_equal(xb, x) and np.array_equal(wb, w):
        return np.zeros_like(p), p
    y0 = x @ w
    dev = np.abs(xa @ wa - y0)
    p_a = p if (x_exact and w_exact) else np.abs(xa) @ np.abs(wa)
    mix = np.zeros_like(p)
    if not np.array_equal(xb, xa):
        mix += np.abs(xb - xa) @ np.abs(wb)
    if not np.array_equal(wb, wa):
        mix += np.abs(xa) @ np.abs(wb - wa)
    t_op = dev + mix
    if not x_exact:
        # a kernel that keeps the weights exact (codes in c, the scale applied to the fp32 partial
        # sum) still rounds the activations: (X_a or X_b) @ W
        t_fact = np.abs(xa @ w - y0)
        if not np.array_equal(xb, xa):
            t_fact += np.abs(xb - xa) @ np.abs(w)
        t_op = np.maximum(t_op, t_fact)
        p_a = np.maximum(p_a, np.abs(xa) @ np.abs(w) + (mix if not np.array_equal(xb, xa) else 0))
    return t_op, np.maximum(p, p_a + mix)


def output_reach(y: np.ndarray, e: np.ndarray, out_dtype: str) -> np.ndarray:
    """max(|RNE_o(y + E) - y|, |RNE_o(y - E) - y|): how far a correct output can be from y when
    the kernel's fp32 result is within E of it. Non-finite y: 0."""
    o = wide_float(out_dtype)
    finite = np.isfinite(y)
    yf = np.where(finite, y, 0.0)
    e = np.where(finite, e, 0.0)
    # y +- E is itself rounded in float64: widen E by a float64 ulp so the interval still holds
    e = e * (1 + 4 * U64) + 4 * np.finfo(np.float64).smallest_subnormal
    with np.errstate(invalid="ignore", over="ignore"):
        r_hi, r_lo = o.round(yf + e), o.round(yf - e)
        reach = np.maximum(np.abs(r_hi - yf), np.abs(yf - r_lo))
    # both ends overflow to the same infinity: the output is certainly that infinity (reach 0,
    # ``expect`` makes it the expected value); one end only: the reach is inf
    certain = np.isinf(r_hi) & (r_hi == r_lo)
    return np.where(finite & ~certain, reach, 0.0)


def _bias_abs(bias, n: int) -> np.ndarray:
    if bias is None:
        return np.zeros((1, n))
    return np.abs(np.asarray(bias, np.float64)).reshape(1, -1)


def dot_bound(
    x: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    *,
    bias,
    compute_dtype: str,
    out_dtype: str,
    scale_roundings: int,
    amplification: float = 1.0,
    extra_relative: float = 0.0,
) -> np.ndarray:
    """Bound for ``y = x @ w + bias`` with the dot in ``compute_dtype``: a wide float
    (operands rounded, T_op) or a code format of ``CODE_COMPUTE`` (operands exact: the kernel
    multiplies the codes and applies the scales to fp32 partial sums). ``scale_roundings``:
    fp32 scale multiplies on a term's path; ``amplification``: A of T_u; ``extra_relative``:
    additional operand rounding relative to P (see the module docstring)."""
    k = x.shape[1]
    if compute_dtype in WIDE_FLOATS:
        t_op, p_hat = operand_rounding(x, w, compute_dtype)
        product_roundings = 1 if compute_dtype == "float32" else 0
    elif compute_dtype in FORMATS:
        p_hat = np.abs(x) @ np.abs(w)
        t_op = np.zeros_like(p_hat)
        product_roundings = 0
    else:
        wide_float(compute_dtype)  # raises, naming the allowed dtypes
    b = _bias_abs(bias, w.shape[1])
    r = k + product_roundings + scale_roundings
    e = t_op + extra_relative * p_hat + gamma(r, ACC_U) * (p_hat + b)
    if compute_dtype.startswith("float8"):
        e = e + gamma(min(k, FP8_MMA_CHUNK), FP8_MMA_U) * (p_hat + b)
    e += 3 * (k + 1) * ETA32 * max(1.0, amplification)
    e += 2 * gamma(k + 2, U64) * (p_hat + b)
    return output_reach(y, e, out_dtype)


def gemm_bound(
    x: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    *,
    bias: np.ndarray | None,
    compute_dtype: str,
    out_dtype: str,
) -> np.ndarray:
    """Per-element bound of an A16 GEMM ``y = x @ w (+ bias)`` (weights dequantized to the
    compute dtype, or the per-channel / per-group scale applied to the fp32 accumulator: one
    scale rounding), as the module docstring states.

    x: float64 [M, K] activations; w: float64 [K, N] exact dequantized weights; y: float64
    [M, N] the exact result. Returns float64 [M, N].
    """
    # an underflowing product or scale multiply is the last multiply on its path: A = 1
    return dot_bound(x, w, y, bias=bias, compute_dtype=compute_dtype, out_dtype=out_dtype, scale_roundings=1)



def partial_sums_bound(
    x: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    *,
    bias,
    compute_dtype: str,
    out_dtype: str,
    partials: int,
    block_k: int,
    w_kernel: np.ndarray | None = None,
    w_alt: np.ndarray | None = None,
    roundings: int = 1,
) -> np.ndarray:
    """Bound for an A16 GEMM whose kernel reduces ``partials`` fp32 partial sums **in the output
    dtype** (a declared convention: split-K or per-K-block programs that round their fp32
    accumulator to the output dtype and ``atomic_add`` it into a zeroed output buffer of that
    dtype), optionally over weights the kernel dequantizes its own declared way (``w_kernel``).

    x: float64 [M, K] activations; w: float64 [K, N] exact dequantized weights; y = x @ w (+ b),
    float64 [M, N]; partials: S, the number of partial sums; block_k: the K tile: tile ``t`` (rows
    ``[t*block_k, (t+1)*block_k)``) belongs to partial ``t % S`` (split-K with S splits; one
    partial per tile when S = cdiv(K, block_k)). w_kernel: the weights the kernel multiplies
    (exact in the compute dtype; default: ``w`` rounded as ``operand_rounding`` allows); w_alt:
    another value a weight may take (a second rounding path), or None. roundings: r, the roundings
    to the output dtype each partial takes before it is added (1; 2 for ``RNE_o(RNE_o(c) * s)``, a
    per-channel scale applied in the output dtype). S = r = 1 without ``w_kernel`` is ``gemm_bound``.

    Derivation. Let ``R_i`` be partial i's rows of K, ``W~ = w_kernel``, ``p_i = x[:, R_i] @
    w[R_i]`` (exact), ``c_i`` the kernel's fp32 partial and ``out`` its result.

    1. fp32 partials (as ``dot_bound``, per partial): ``|c_i - x_i @ W~_i| <= a_i`` with
       ``a_i = T_op,i' + gamma_{|R_i|+2}(ACC_U) Phat_i + 3 (|R_i|+1) eta_32`` (``T_op,i'``: the
       rounding of the activations into the compute dtype, ``operand_rounding(x_i, W~_i)``; one
       more rounding than the K_i additions allows a scale applied to the accumulator; the
       partial that takes the bias carries ``|b|`` too).
    2. The weight model, signed: ``|sum_i x_i @ W~_i - x @ w| = |x @ W~ - x @ w| + |x| @ |W_alt -
       W~|`` (``T_w``; computed exactly, so it cancels where the weight errors do).
    3. The reduction (Higham eq. 3.4 with the output dtype's ``u_o``): ``out`` is the sum of the S
       values ``RNE_o(c_i)`` formed by S - 1 additions in the output dtype, in any order, from a
       zeroed buffer (adding to zero is exact). Each conversion is ``c_i (1 + d) + e`` with
       ``|d| <= u_o``, ``|e| <= eta_o / 2`` (subnormal), each addition ``(1 + d)`` (a subnormal
       sum is exact), so each term carries at most S factors: ``|out - sum_i c_i| <= gamma_S(u_o)
       sum_i |c_i| + (1 + gamma_S(u_o)) S eta_o / 2`` with ``|c_i| <= |p_i| + t_i + a_i``,
       ``t_i`` = partial i's share of step 2 taken in absolute value. With r roundings of each
       partial (an exact scale multiply between them), S - 1 + r factors and r S subnormal terms.
    4. ``out`` is a value of the output dtype within ``E = T_w + sum_i a_i + T_red + T_64`` of
       ``y``; RNE is monotone, so it lies in ``[RNE_o(y - E), RNE_o(y + E)]``: ``output_reach``.

    For S = 2 partials each rounded once and added once, this is two roundings of each partial's
    magnitude (``gamma_2(u_o) (|p_0| + |p_1|)``), not of ``P``: it stays a few output ulps of the
    partials, and a kernel that drops a partial, or multiplies a partial by another group's
    scale, is off by that partial's whole value. Assumed: no partial and no intermediate sum
    overflows the output dtype (one that does is reported).
    """
    if partials <= 1 and w_kernel is None and roundings <= 1:
        return gemm_bound(x, w, y, bias=bias, compute_dtype=compute_dtype, out_dtype=out_dtype)
    if not isinstance(partials, (int, np.integer)) or isinstance(partials, bool) or partials < 1:
        raise ValueError(f"partials={partials!r}: the number of partial sums is a positive integer")
    if not isinstance(block_k, (int, np.integer)) or isinstance(block_k, bool) or block_k < 1:
        raise ValueError(f"block_k={block_k!r}: the K tile of the partial sums is a positive integer")
    check_compute_dtype(compute_dtype, WIDE, "a partial-sum A16 GEMM")
    k = x.shape[1]
    wk = round_to(w, compute_dtype) if w_kernel is None else np.asarray(w_kernel, np.float64)
    alt = np.zeros_like(wk) if w_alt is None else np.abs(np.asarray(w_alt, np.float64) - wk)
    if w_kernel is None:  # the kernel may form each weight either way operand_rounding allows
        alt = alt + np.abs(_paths(w, compute_dtype)[1] - wk)
    b = _bias_abs(bias, w.shape[1])
    o = wide_float(out_dtype)
    of_row = (np.arange(k) // block_k) % partials
    t_w = np.abs(x @ wk - x @ w) + np.abs(x) @ alt
    e_fp32 = np.zeros_like(y)
    mags = np.zeros_like(y)
    for i in range(partials):
        rows = of_row == i
        if not rows.any():
            continue
        xi, wi, wki = x[:, rows], w[rows], wk[rows]
        t_x, p_hat = operand_rounding(xi, wki, compute_dtype)
        p_hat = p_hat + np.abs(xi) @ alt[rows]
        bi = b if i == 0 else 0.0
        ki = int(rows.sum())
        a_i = t_x + gamma(ki + 2, ACC_U) * (p_hat + bi) + 3 * (ki + 1) * ETA32
        e_fp32 += a_i
        t_i = np.abs(xi @ wki - xi @ wi) + np.abs(xi) @ alt[rows]
        mags += np.abs(xi @ wi) + (bi if bias is not None else 0.0) + t_i + a_i
    factors = partials - 1 + roundings
    g = gamma(factors, o.unit_roundoff) if factors > 1 else 0.0
    t_red = g * mags + (1 + g) * partials * roundings * o.min_subnormal / 2 if factors > 1 else 0.0
    p_all = np.abs(x) @ (np.abs(wk) + alt) + b
    e = t_w + e_fp32 + t_red + 2 * gamma(k + 2, U64) * (np.abs(x) @ np.abs(w) + p_all)
    return output_reach(y, e, out_dtype)


INT32_LIMIT = 2**31


def int8_epilogue_bound(s_abs: np.ndarray, sums: np.ndarray, corr: np.ndarray, y: np.ndarray, *,
                        bias, out_dtype: str, products: np.ndarray | None = None, k: int = 0) -> np.ndarray:
    """T_int (+ T_split) of the module docstring then the output reach. s_abs: |a_scale * b_scale|
    [M, N] (broadcastable); sums: |sum_k a b| [M, N]; corr: |azp * sum_k b| [M, N] (0 without azp);
    products: sum_k |a| |b| [M, N] and k: K, for the split-K term (omitted when None)."""
    b = _bias_abs(bias, y.shape[1])
    e = gamma(5) * (s_abs * (sums + corr) + b)
    if products is not None and k > 1:
        e = e + gamma(k + 3) * s_abs * products
    amp = float(np.max(sums + corr)) if sums.size else 1.0
    e = e + 3 * ETA32 * max(1.0, amp) + 2 * gamma(4, U64) * (s_abs * (sums + corr) + b)
    return output_reach(y, e, out_dtype)


# ------------------------------------------------------------------ glue the op families share

WIDE = tuple(WIDE_FLOATS)  # the wide compute dtypes every GEMM's dot may run in


def amplification(k: int, code_a: float, code_b: float, *scales) -> float:
    """A of T_u: the largest code-domain partial sum and the largest scale (at least 1)."""
    s = max([1.0] + [float(np.max(np.abs(v))) for v in scales if np.size(v)])
    return max(1.0, k * code_a * code_b, s)


def a16_bound(operands):
    """The bound of an A16 GEMM (``gemm_bound``) as an ``OpReference.bound``: ``operands(problem)``
    gives its exact dequantized operands; the dot runs in a wide float."""
    def bound(p, y, compute_dtype, out_dtype):
        check_compute_dtype(compute_dtype, WIDE, "an A16 GEMM")
        ops = operands(p)
        return gemm_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype)
    return bound
