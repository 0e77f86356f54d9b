"""The W8A8 / FP8 family: ``scaled_mm`` (int8 or fp8 codes, per-token / per-channel / per-tensor
scales), ``block_scaled_mm`` (fp8 codes, DeepSeek-style block scales) and ``fp8_w8a16_gemm`` (fp8
weights, 16-bit activations). Reference, bound, exact-regime inputs and the family's own diagnosis
hypotheses; the kernel twins are ``kernels/scaled_mm``.

Problem keys (orientation and conventions: ``oracle.gemm``; optional keys default to None):

- ``scaled_mm``: ``a [M,K]``, ``b [K,N]`` codes, ``quant_dtype`` ("int8" or an fp8 format),
  ``a_scale [M,1] | [1,1]``, ``b_scale [1,N] | [1,1]``, ``azp [M,1] | [1,1] | None`` (int8
  only: ``a_real = (a - azp) * a_scale``), ``bias [N] | None``.
- ``block_scaled_mm``: ``a [M,K]`` fp8 codes, ``a_scale [M, ceil(K/bk)]``, ``b [K,N]`` fp8 codes,
  ``b_scale [ceil(K/bk), ceil(N/bn)]``, ``block`` ``(bk, bn)`` (default (128, 128)),
  ``quant_dtype``, ``bias``.
- ``fp8_w8a16_gemm``: ``x [M,K]`` values, ``b [K,N]`` fp8 codes, ``b_scale [1,N] | [1,1]``,
  ``quant_dtype``, ``bias``.

``compute_dtype``: float16 / bfloat16 / float32 for every op (for the code-domain ops the
operands are dequantized and rounded to it, an emulation path), and for ``scaled_mm`` /
``block_scaled_mm`` also their code domain (``int8`` for int8 codes; any fp8 format name for fp8
codes). Bounds (``oracle.bounds``): the A16 bound for ``fp8_w8a16_gemm``; two scale roundings
with the codes' amplification for the others; int8 ``scaled_mm`` in its code domain: the exact
int32 dot and the epilogue's roundings.

Generator parameters (keyword; defaults in brackets; ``oracle.exact``): ``scaled_mm``:
``quant_dtype`` ["float8_e4m3fn"], ``per_token`` [True], ``per_channel`` [True], ``azp`` (int8
only) [False], ``bias`` [False]; ``block_scaled_mm``: ``quant_dtype`` ["float8_e4m3fn"],
``block`` [(128, 128)], ``bias`` [False]; ``fp8_w8a16_gemm``: ``quant_dtype``
["float8_e4m3fn"], ``per_channel`` [True], ``bias`` [False]. The scales are float32 values.
"""
from __future__ import annotations

import numpy as np

from qkcheck.oracle import diagnosis
from qkcheck.oracle.arguments import as_2d, check_choice
from qkcheck.oracle.bounds import (
    INT32_LIMIT,
    WIDE,
    a16_bound,
    amplification,
    check_compute_dtype,
    dot_bound,
    int8_epilogue_bound,
)
from qkcheck.oracle.diagnosis import Hypothesis, present
from qkcheck.oracle.exact import draw_bias, encode, f32, half16, ints, scale_span, signs, x16, xmax
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.gemm import (
    FP8_DTYPES,
    Operands,
    bias_vector,
    cdiv,
    check_k,
    finish,
    float_scale,
    fp_codes,
    int_codes,
    scale_groups,
)
from qkcheck.oracle.reference import VALUES, OpReference

SCALED_MM_DTYPES = ("int8",) + FP8_DTYPES
FNUZ_TWIN = {"float8_e4m3fn": "float8_e4m3fnuz", "float8_e4m3fnuz": "float8_e4m3fn",
             "float8_e5m2": "float8_e5m2fnuz", "float8_e5m2fnuz": "float8_e5m2"}
# values with at most 3 significand bits, in every fp8 format
SMALL_FP8 = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])

# ------------------------------------------------------------------ scaled_mm (W8A8)


def scaled_mm_operands(a, b, *, quant_dtype: str, a_scale, b_scale, azp=None, bias=None) -> Operands:
    check_choice("quant_dtype", quant_dtype, SCALED_MM_DTYPES, fix="pass the codes' format name")
    if quant_dtype == "int8":
        ac = int_codes("a", a, -128, 127, "int8 codes").astype(np.float64)
        bc = int_codes("b", b, -128, 127, "int8 codes").astype(np.float64)
    else:
        if azp is not None:
            raise ValueError(f"azp is given but quant_dtype={quant_dtype!r}; zero points are for int8 "
                             "activations only: pass azp=None or quant_dtype='int8'")
        ac = fp_codes("a", a, quant_dtype)
        bc = fp_codes("b", b, quant_dtype)
    m, k = ac.shape
    check_k("a", k, "b", bc.shape[0])
    n = bc.shape[1]
    sa = float_scale("a_scale", a_scale, {(m, 1): "per-token", (1, 1): "per-tensor"})
    sb = float_scale("b_scale", b_scale, {(1, n): "per-channel", (1, 1): "per-tensor"})
    if azp is not None:
        z = int_codes("azp", azp, -128, 127, "int8 zero points")
        if z.shape not in ((m, 1), (1, 1)):
            raise ValueError(f"azp has shape {z.shape}, expected [{m}, 1] (per-token) or [1, 1] (per-tensor); reshape it")
        ac = ac - z
    x = ac * sa
    w = bc * sb
    return Operands(x, w, bias_vector(bias, n), xc=ac, xs=sa, wc=bc, ws=sb)


def scaled_mm(a, b, *, quant_dtype: str, a_scale, b_scale, azp=None, bias=None) -> np.ndarray:
    """Reference W8A8 GEMM: ``((a - azp) * a_scale) @ (b * b_scale) + bias``.

    a: [M, K] codes, b: [K, N] codes (int8 values for ``quant_dtype='int8'``, else fp8 bit
    patterns); a_scale [M, 1] or [1, 1]; b_scale [1, N] or [1, 1]; azp: int zero points
    [M, 1] or [1, 1] (int8 only) or None; bias [N] or None.
    """
    op = scaled_mm_operands(a, b, quant_dtype=quant_dtype, a_scale=a_scale, b_scale=b_scale, azp=azp, bias=bias)
    y = op.xc @ op.wc  # the scales factor out of the dot: exact integer / fp8-product sums
    y *= op.xs
    y *= op.ws
    if op.bias is not None:
        y += op.bias
    return y


# ------------------------------------------------------------------ block-scaled FP8


def _check_block(block) -> tuple[int, int]:
    ok = (isinstance(block, (tuple, list)) and len(block) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in block))
    if not ok:
        raise ValueError(f"block={block!r} must be a pair of positive ints (bk along K, bn along N); pass e.g. (128, 128)")
    return int(block[0]), int(block[1])


def block_scaled_operands(a, a_scale, b, b_scale, *, quant_dtype: str, block=(128, 128), bias=None) -> Operands:
    check_choice("quant_dtype", quant_dtype, FP8_DTYPES, fix="block-scaled GEMMs take fp8 codes")
    bk, bn = _check_block(block)
    x = fp_codes("a", a, quant_dtype)
    w = fp_codes("b", b, quant_dtype)
    m, k = x.shape
    check_k("a", k, "b", w.shape[0])
    n = w.shape[1]
    kb, nb = cdiv(k, bk), cdiv(n, bn)
    sa = float_scale("a_scale", a_scale, {(m, kb): f"one scale per 1 x {bk} activation group, ceil(K/{bk})"})
    sb = float_scale("b_scale", b_scale, {(kb, nb): f"one scale per {bk} x {bn} weight block"})
    scale_groups(x, sa, bk, axis=1)
    if k:
        w = scale_groups(w, np.repeat(sb, bn, axis=1)[:, :n], bk, axis=0)
    return Operands(x, w, bias_vector(bias, n))


def block_scaled_mm(a, a_scale, b, b_scale, *, quant_dtype: str, block=(128, 128), bias=None) -> np.ndarray:
    """Reference block-scaled FP8 GEMM (DeepSeek-style): ``y[m, n] = sum_k a[m,k] a_s[m, k//bk]
    b[k,n] b_s[k//bk, n//bn] + bias[n]``.

    a: [M, K] fp8 codes; a_scale [M, ceil(K/bk)]; b: [K, N] fp8 codes; b_scale
    [ceil(K/bk), ceil(N/bn)]; block = (bk, bn), default (128, 128).
    """
    return finish(block_scaled_operands(a, a_scale, b, b_scale, quant_dtype=quant_dtype, block=block, bias=bias))


# ------------------------------------------------------------------ FP8 weights, 16-bit activations


def fp8_w8a16_operands(x, b, b_scale, *, quant_dtype: str, bias=None) -> Operands:
    check_choice("quant_dtype", quant_dtype, FP8_DTYPES, fix="FP8 weight-only GEMMs take fp8 codes")
    x = as_2d("x", x)
    wc = fp_codes("b", b, quant_dtype)
    check_k("x", x.shape[1], "b", wc.shape[0])
    n = wc.shape[1]
    sb = float_scale("b_scale", b_scale, {(1, n): "per-channel", (1, 1): "per-tensor"})
    return Operands(x, wc * sb, bias_vector(bias, n), wc=wc, ws=sb)


def fp8_w8a16_gemm(x, b, b_scale, *, quant_dtype: str, bias=None) -> np.ndarray:
    """Reference FP8 weight-only GEMM: ``x @ (b * b_scale) + bias``; x [M, K] values, b [K, N]
    fp8 codes, b_scale [1, N] or [1, 1]."""
    op = fp8_w8a16_operands(x, b, b_scale, quant_dtype=quant_dtype, bias=bias)
    y = op.x @ op.wc
    y *= op.ws
    if op.bias is not None:
        y += op.bias
    return y


# ------------------------------------------------------------------ bounds


def _code_max(fmt: str) -> float:
    f = FORMATS[fmt]
    return float(max(abs(f.min), f.max)) if fmt == "int8" else float(f.max)


def _code_domains(qd: str) -> tuple[str, ...]:
    """Compute dtypes naming the code domain of ``qd``: int8 for int8, any fp8 format for fp8
    codes (the products of fp8 values are exact in fp32 whichever variant names the dot)."""
    return ("int8",) if qd == "int8" else FP8_DTYPES


def _scaled_mm_bound(p, y, compute_dtype, out_dtype):
    qd = p["quant_dtype"]
    check_compute_dtype(compute_dtype, _code_domains(qd) + WIDE, f"scaled_mm with quant_dtype={qd!r}")
    ops = _scaled_mm_ops(p)
    k = ops.x.shape[1]
    if compute_dtype == "int8":
        a = np.asarray(p["a"], np.float64)
        azp = p.get("azp")
        worst = k * float(np.max(np.abs(ops.xc), initial=0)) * float(np.max(np.abs(ops.wc), initial=0))
        raw = k * float(np.max(np.abs(a), initial=0)) * float(np.max(np.abs(ops.wc), initial=0))
        if max(worst, raw) >= INT32_LIMIT:
            raise ValueError(
                f"K={k} with these codes can overflow an int32 accumulator (K * max|a| * max|b| = "
                f"{max(worst, raw):.4g} >= 2**31); the int8 bound assumes exact int32 accumulation: use "
                f"smaller K (< 2**17 for full-range codes) or compute_dtype='float32'"
            )
        sums = np.abs(a @ ops.wc)
        if azp is None:
            corr = np.zeros_like(sums)
        else:
            corr = np.abs(np.asarray(azp, np.float64) * ops.wc.sum(axis=0, keepdims=True))
        s_abs = np.abs(ops.xs * ops.ws)
        return int8_epilogue_bound(s_abs, sums, corr, y, bias=ops.bias, out_dtype=out_dtype,
                                   products=np.abs(a) @ np.abs(ops.wc), k=a.shape[1])
    amp = amplification(k, _code_max(qd) * 2, _code_max(qd), ops.xs, ops.ws)
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=2, amplification=amp)


def _block_bound(p, y, compute_dtype, out_dtype):
    qd = p["quant_dtype"]
    check_compute_dtype(compute_dtype, _code_domains(qd) + WIDE, f"block_scaled_mm with quant_dtype={qd!r}")
    ops = _block_ops(p)
    k = ops.x.shape[1]
    amp = amplification(k, _code_max(qd), _code_max(qd), p["a_scale"], p["b_scale"])
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=2, amplification=amp)


# ------------------------------------------------------------------ exact-regime and random inputs


def _fp8_codes(rng, style, fmt, shape, coherent_sign=None):
    if style in ("exact", "coherent"):
        v = rng.choice(SMALL_FP8, shape)
        if style == "exact":
            v = v * signs(rng, shape) * (rng.random(shape) > 0.1)
        elif coherent_sign is not None:
            v = v * coherent_sign
        return encode(fmt, v)
    f = FORMATS[fmt]
    codes = rng.integers(0, 256, shape).astype(np.uint8)
    vals = f.decode_table[codes]
    bad = ~np.isfinite(vals)
    codes[bad] = 0  # only finite codes in the bounded regime
    return codes


def _gen_scaled_mm(rng, style, m, k, n, quant_dtype, per_token, per_channel, azp, bias):
    if azp and quant_dtype != "int8":
        raise ValueError(f"azp=True needs quant_dtype='int8', got {quant_dtype!r}")
    sa_shape = (m, 1) if per_token else (1, 1)
    sb_shape = (1, n) if per_channel else (1, 1)
    if quant_dtype == "int8":
        if style == "exact":
            lim = max(1, min(127, int(np.sqrt(2.0**24 / max(4 * k, 1)))))
            a, b = ints(rng, -lim, lim, (m, k)), ints(rng, -lim, lim, (k, n))
            if azp:
                a = np.clip(a, -lim // 2, lim // 2)
        elif style == "coherent":
            a = ints(rng, 1, 8, (m, k))  # near the zero point: a zero-point error is large
            b = (ints(rng, 1, 127, (k, n)) * signs(rng, (1, n))).astype(int)
        else:
            a, b = ints(rng, -128, 127, (m, k)), ints(rng, -128, 127, (k, n))
        a, b = a.astype(np.int8), b.astype(np.int8)
        z = None
        if azp:
            z = ints(rng, -4, 4, sa_shape) if style != "coherent" else np.zeros(sa_shape, int)
            if style == "coherent":
                z[...] = -1
            a = np.clip(a.astype(int), -128 + 4, 127 - 4).astype(np.int8)
    else:
        a = _fp8_codes(rng, style, quant_dtype, (m, k), np.ones((m, k)))
        b = _fp8_codes(rng, style, quant_dtype, (k, n), signs(rng, (1, n)))
        z = None
    qmax = 127.0 if quant_dtype == "int8" else (FORMATS[quant_dtype].max if style == "random" else 12.0)
    if style == "random":  # amax / qmax-like float32 scales: dequantized values O(1)
        sa = f32(rng.uniform(0.5, 4.0, sa_shape) / qmax)
        sb = f32(rng.uniform(0.5, 4.0, sb_shape) / qmax)
    else:
        ea = np.arange(sa_shape[0]) % 4 - 2
        eb = np.arange(sb_shape[1]) % 3 - 1 if style == "exact" else np.arange(sb_shape[1]) % 5 - 2
        shift = 0 if style == "exact" else -int(np.log2(qmax))
        sa = np.exp2(ea + shift)[:, None].reshape(sa_shape)
        sb = np.exp2(eb + shift)[None, :].reshape(sb_shape)
    return {"a": a, "b": b, "quant_dtype": quant_dtype, "a_scale": sa, "b_scale": sb, "azp": z,
            "bias": draw_bias(rng, style, n, bias)}


def _gen_block(rng, style, m, k, n, quant_dtype, block, bias):
    bk, bn = block
    kb, nb = -(-k // bk), -(-n // bn)
    if style == "coherent":
        sign_blocks = signs(rng, (kb, nb))
        sign = np.repeat(np.repeat(sign_blocks, bk, axis=0), bn, axis=1)[:k, :n]
        a = _fp8_codes(rng, style, quant_dtype, (m, k), np.ones((m, k)))
        b = _fp8_codes(rng, style, quant_dtype, (k, n), sign)
    else:
        a = _fp8_codes(rng, style, quant_dtype, (m, k))
        b = _fp8_codes(rng, style, quant_dtype, (k, n))
    if style == "exact":
        span = scale_span(k, 144.0 / 0.25, most=4)
        ea = (np.arange(m)[:, None] + 2 * np.arange(kb)[None, :]) % (span // 2 + 1)
        eb = (np.arange(kb)[:, None] + 2 * np.arange(nb)[None, :]) % (span - span // 2 + 1)
        sa, sb = np.exp2(ea - 1.0), np.exp2(eb - 1.0)
    elif style == "coherent":
        sa = np.exp2((np.arange(m)[:, None] + 2 * np.arange(kb)[None, :]) % 4 - 5.0)
        sb = np.exp2((3 * np.arange(kb)[:, None] + np.arange(nb)[None, :]) % 5 - 2.0)
    else:  # per-block amax / qmax-like scales spanning 2**6
        qmax = FORMATS[quant_dtype].max
        sa = f32(np.exp2(rng.uniform(-3, 3, (m, kb))) / qmax)
        sb = f32(np.exp2(rng.uniform(-3, 3, (kb, nb))) / qmax)
    return {"a": a, "a_scale": sa, "b": b, "b_scale": sb, "block": tuple(block), "quant_dtype": quant_dtype,
            "bias": draw_bias(rng, style, n, bias)}


def _gen_fp8_w8a16(rng, style, m, k, n, quant_dtype, per_channel, bias):
    sb_shape = (1, n) if per_channel else (1, 1)
    b = _fp8_codes(rng, style, quant_dtype, (k, n), signs(rng, (1, n)))
    if style == "exact":
        xm = xmax(k, 12.0 * 4 / 0.125)
        x = x16(rng, style, m, k, xm)
        sb = np.exp2(np.arange(sb_shape[1]) % 3 - 1.0)[None, :].reshape(sb_shape)
    elif style == "coherent":
        x = x16(rng, style, m, k)
        sb = np.exp2(np.arange(sb_shape[1]) % 5 - 2.0)[None, :].reshape(sb_shape)
    else:
        x = x16(rng, style, m, k)
        sb = half16(rng.uniform(0.5, 4.0, sb_shape) / FORMATS[quant_dtype].max)  # amax / qmax-like
    return {"x": x, "b": b, "b_scale": sb, "quant_dtype": quant_dtype, "bias": draw_bias(rng, style, n, bias)}


# ------------------------------------------------------------------ the family's hypotheses


def scales_along_k(ref, p, ctx):
    """fp8_w8a16_gemm on a square weight: the per-channel [1, N] scale reaching the kernel as
    [N, 1], which broadcasts along K: w[k, n] scaled by b_scale[k], rewritten as x[:, k] scaled
    by it (the same products; the roundings agree where they are exact, e.g. power-of-two scales)."""
    s = np.asarray(p["b_scale"], np.float64)
    x = np.asarray(p["x"], np.float64)
    k, n = x.shape[1], s.shape[1]
    if s.shape == (1, n) and n == k > 1:
        yield dict(p, x=x * s.reshape(1, k), b_scale=np.ones_like(s)), (
            "the per-channel weight scales were applied along K (rows) instead of N (columns): the "
            f"scale tensor reached the kernel transposed ([{n}, 1] where [1, {n}] was expected)")


def scale_vector_on_wrong_axis(ref, p, ctx):
    """A per-channel b_scale [1, N] applied along M (read as [N, 1]), or a per-token a_scale
    [M, 1] applied along N (for M <= N, resp. N <= M: the read stays in bounds)."""
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


def azp_off_by_one(ref, p, ctx):
    if not present(p, "azp"):
        return
    for d in (-1, 1):
        yield dict(p, azp=np.asarray(p["azp"]) + d), f"the activation zero point (azp) is off by {d:+d}"


def fn_fnuz_confused(ref, p, ctx):
    """fp8 codes decoded with the other variant of the format (fn <-> fnuz: the exponent bias
    differs by one, so every value halves or doubles; the NaN / -0 codes differ); where some code
    is special in the other variant only (fn's -0 is fnuz's NaN), also with that variant's
    exponent bias alone, the format's own special codes kept (a decoder taking the bias from the
    wrong format: every finite value off by the factor, carried by the operands' scales); where
    both operands are codes (``a`` given), also the weights alone."""
    qd = p.get("quant_dtype")
    if qd not in FNUZ_TWIN:
        return
    twin = FNUZ_TWIN[qd]
    yield dict(p, quant_dtype=twin), (
        f"the {qd} codes are decoded as {twin} (fn <-> fnuz confusion: values off by a factor 2)")
    mine, other = FORMATS[qd].decode_table, FORMATS[twin].decode_table
    ratio = 2.0 ** (FORMATS[qd].bias - FORMATS[twin].bias)
    operands = [(codes, scale) for codes, scale in (("a", "a_scale"), ("b", "b_scale")) if codes in p]
    if any((np.isfinite(mine[np.asarray(p[c])]) & ~np.isfinite(other[np.asarray(p[c])])).any() for c, _ in operands):
        yield dict(p, **{s: np.asarray(p[s], np.float64) * ratio for _, s in operands}), (
            f"the {qd} codes are decoded with the exponent bias of {twin} (fn <-> fnuz confusion: values off "
            "by a factor 2)")
    if "a" in p:  # weights only: the same codes, the weight scale carries the factor
        f, t = FORMATS[qd].decode_table, FORMATS[twin].decode_table
        b = np.asarray(p["b"])
        ratio = 2.0 ** (FORMATS[qd].bias - FORMATS[twin].bias)
        fv, tv = f[b], t[b]
        same = np.isfinite(fv) & np.isfinite(tv) & (tv == fv * ratio) | (fv == 0) & (tv == 0)
        if same.all():
            yield dict(p, b_scale=np.asarray(p["b_scale"], np.float64) * ratio), (
                f"the weight codes (b) are decoded as {twin} while the activations are read as "
                f"{qd}: weights off by a factor {ratio:g}")


FN_FNUZ_CONFUSED = Hypothesis("fn_fnuz_confused", fn_fnuz_confused)


def _block_k_groups(p):
    k, bk = np.asarray(p["a"]).shape[1], p.get("block", (128, 128))[0]
    return (k, bk) if bk < k else None


def _block_regroup(p, group_of_k):
    """block_scaled_mm with k-row k scaled by the a / b scales of K-block ``group_of_k[k]``: one
    scale block per k row (block (1, bn))."""
    bn = p.get("block", (128, 128))[1]
    return dict(p, a_scale=np.asarray(p["a_scale"], np.float64)[:, group_of_k],
                b_scale=np.asarray(p["b_scale"], np.float64)[group_of_k, :], block=(1, bn))


# the op's structure the per-class hypotheses (oracle.diagnosis) read
BLOCK_K_GROUPS = diagnosis.KGroups(_block_k_groups, _block_regroup)
_GEMM_CLASSES = (diagnosis.SCALE_GRANULARITY_CONFUSED, diagnosis.k_tail_unmasked("a"),
                 diagnosis.split_k_reduction_wrong("a"))


# ------------------------------------------------------------------ the records


def _scaled_mm_ops(p):
    return scaled_mm_operands(p["a"], p["b"], quant_dtype=p["quant_dtype"], a_scale=p["a_scale"],
                              b_scale=p["b_scale"], azp=p.get("azp"), bias=p.get("bias"))


def _block_ops(p):
    return block_scaled_operands(p["a"], p["a_scale"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"],
                                 block=p.get("block", (128, 128)), bias=p.get("bias"))


def _fp8_w8a16_ops(p):
    return fp8_w8a16_operands(p["x"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"], bias=p.get("bias"))


_COMMON = dict(axis_names=("row (m)", "column (n)"), weight_key="b", judge=VALUES, diagnoser=diagnosis.diagnose)

REFERENCES: tuple[OpReference, ...] = (
    OpReference(
        "scaled_mm",
        lambda p: scaled_mm(p["a"], p["b"], quant_dtype=p["quant_dtype"], a_scale=p["a_scale"], b_scale=p["b_scale"],
                            azp=p.get("azp"), bias=p.get("bias")),
        required=("a", "b", "quant_dtype", "a_scale", "b_scale"), optional=("azp", "bias"),
        bound=_scaled_mm_bound, operands=_scaled_mm_ops, generate=_gen_scaled_mm,
        generator_params=dict(quant_dtype="float8_e4m3fn", per_token=True, per_channel=True, azp=False, bias=False),
        scale_keys=(("b_scale", "float"), ("a_scale", "float")),
        hypotheses=(diagnosis.SCALES_TRANSPOSED, Hypothesis("scale_vector_on_wrong_axis", scale_vector_on_wrong_axis),
                    Hypothesis("azp_off_by_one", azp_off_by_one), diagnosis.WEIGHT_TRANSPOSED, FN_FNUZ_CONFUSED,
                    diagnosis.SCALE_MISAPPLIED, diagnosis.strides_assumed_contiguous(("a", "codes")),
                    *_GEMM_CLASSES, *diagnosis.GEMM_TAIL),
        **_COMMON),
    OpReference(
        "block_scaled_mm",
        lambda p: block_scaled_mm(p["a"], p["a_scale"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"],
                                  block=p.get("block", (128, 128)), bias=p.get("bias")),
        required=("a", "a_scale", "b", "b_scale", "quant_dtype"), optional=("block", "bias"),
        bound=_block_bound, operands=_block_ops, generate=_gen_block,
        generator_params=dict(quant_dtype="float8_e4m3fn", block=(128, 128), bias=False),
        scale_keys=(("b_scale", "float"), ("a_scale", "float")),
        hypotheses=(diagnosis.first_group_scale_per_tile(BLOCK_K_GROUPS), diagnosis.SCALES_TRANSPOSED,
                    diagnosis.WEIGHT_TRANSPOSED, FN_FNUZ_CONFUSED, diagnosis.SCALE_MISAPPLIED,
                    diagnosis.group_index_not_advancing(BLOCK_K_GROUPS),
                    diagnosis.strides_assumed_contiguous(("a", "codes")), *_GEMM_CLASSES, *diagnosis.GEMM_TAIL),
        **_COMMON),
    OpReference(
        "fp8_w8a16_gemm",
        lambda p: fp8_w8a16_gemm(p["x"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"], bias=p.get("bias")),
        required=("x", "b", "b_scale", "quant_dtype"), optional=("bias",),
        bound=a16_bound(_fp8_w8a16_ops), operands=_fp8_w8a16_ops, generate=_gen_fp8_w8a16,
        generator_params=dict(quant_dtype="float8_e4m3fn", per_channel=True, bias=False),
        scale_keys=(("b_scale", "float"),),
        hypotheses=(Hypothesis("scales_transposed", scales_along_k), diagnosis.SCALES_TRANSPOSED,
                    diagnosis.WEIGHT_SCALE_ON_WRONG_AXIS, diagnosis.WEIGHT_TRANSPOSED, FN_FNUZ_CONFUSED,
                    diagnosis.SCALE_MISAPPLIED, diagnosis.strides_assumed_contiguous(("x", "values")),
                    diagnosis.SCALE_GRANULARITY_CONFUSED, diagnosis.k_tail_unmasked("x"),
                    diagnosis.split_k_reduction_wrong("x"), *diagnosis.GEMM_TAIL),
        **_COMMON),
)
