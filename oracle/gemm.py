"""GEMM references, float64, from exactly dequantized operands.

Orientation everywhere: activations ``x[M, K]``, weights ``w[K, N]``, output ``y[M, N] = x @ w
(+ bias[N])``. References return the exact (unrounded) float64 result; rounding to the output
dtype and the legitimate error of a real kernel are ``oracle.bounds``' business. Each reference
has a bundled kernel twin of the same name in ``kernels/`` with the same argument meaning.

Codes are decoded with ``oracle.formats`` (the format records' decode tables); the dequantized
operands are exact float64 values (a code's value times its scale: at most 24 + 24 significant
bits, so every product here is exact in float64). Every reference also exposes its operands
(``*_operands`` functions returning the exact dequantized ``x``/``w`` and the bias) so the
error bound and the diagnosis reason about the same numbers.

Scale shapes follow ``oracle.schemes`` (reduced axis -> number of groups, others kept):
per-tensor ``[1, 1]``, per-token ``[M, 1]``, per-channel ``[1, N]``, grouped weights
``[ceil(K/G), N]``, block weights ``[ceil(K/bk), ceil(N/bn)]``, activation groups
``[M, ceil(K/bk)]``. Where a block size does not divide its axis the last block is partial
(ceil), the convention of block-scaled FP8 checkpoints; group sizes of integer and MX/NV
schemes must divide K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkcheck.oracle.errors import as_2d, check_group_size, check_shape
from qkcheck.oracle.formats import FORMATS

UINT4_SYMMETRIC_ZERO = 8  # "uint4b8": codes 0..15 with the implicit zero point 8

FP8_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
SCALED_MM_DTYPES = ("int8",) + FP8_DTYPES
E2M1 = "float4_e2m1fn"
E8M0 = "float8_e8m0fnu"
E4M3 = "float8_e4m3fn"
MX_BLOCK = 32  # OCP MX: one E8M0 scale per 32 elements along K
NV_BLOCK = 16  # NVFP4: one E4M3 scale per 16 elements along K
MXFP4_ACTS = ("a16", "mxfp4")


@dataclass(frozen=True)
class Operands:
    """The exact dequantized operands of a GEMM: ``y = x @ w + bias``.

    For ops whose scales factor out of the dot (per-tensor / per-token / per-channel) the
    unscaled code values and the scale vectors are kept too: ``x = xc * xs`` (xs [M,1] or [1,1])
    and ``w = wc * ws`` (ws [1,N] or [1,1]); None where that does not apply.
    """

    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray | None
    xc: np.ndarray | None = None
    xs: np.ndarray | None = None
    wc: np.ndarray | None = None
    ws: np.ndarray | None = None


# ------------------------------------------------------------------ argument checks


def _check_choice(name: str, value, allowed: tuple, fix: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed (allowed: {', '.join(map(repr, allowed))}); {fix}")
    return value


def _check_k(xname: str, kx: int, wname: str, kw: int) -> None:
    if kx != kw:
        raise ValueError(
            f"{xname} has K={kx} columns but {wname} has K={kw} rows; {xname} is [M, K] and {wname} is "
            f"[K, N] (transpose a [N, K] weight first)"
        )


def _int_codes(name: str, codes, lo: int, hi: int, what: str) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}; reshape it to [rows, cols]")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.rint(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer codes, got dtype {arr.dtype}; pass the {what} as ints")
    if arr.size:
        cmin, cmax = int(arr.min()), int(arr.max())
        if cmin < lo or cmax > hi:
            raise ValueError(f"{name} holds codes in [{cmin}, {cmax}], {what} are {lo}..{hi}; "
                             f"unpack / sign-extend the stored codes first")
    return arr


def _fp_codes(name: str, codes, fmt_name: str) -> np.ndarray:
    """float64 values of the bit-pattern ``codes`` of format ``fmt_name`` (2-D)."""
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}; reshape it to [rows, cols]")
    fmt = FORMATS[fmt_name]
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must hold {fmt_name} bit patterns as unsigned ints, got dtype {arr.dtype}; encode "
            f"values with oracle.formats.get_format({fmt_name!r}).encode or view the bytes as np.uint8"
        )
    if arr.dtype != np.uint8 or fmt.bits != 8:
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= fmt.num_codes):
            raise ValueError(
                f"{name} holds codes in [{int(arr.min())}, {int(arr.max())}], {fmt_name} codes are "
                f"0..{fmt.num_codes - 1}; view signed bytes as np.uint8 / mask to the low {fmt.bits} bits"
            )
    return _lookup(fmt.decode_table, arr)


_LOOKUP_CHUNK = 1 << 14  # codes per table lookup: the index temporaries stay in cache


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table[codes]`` as a fresh C-contiguous float64 array, in cache-sized chunks (one
    whole-array lookup first widens every index to intp: a 4096 x 4096 matrix of uint8 codes
    becomes a 128 MiB temporary, and the lookup runs several times slower)."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    out = np.empty(flat.size, np.float64)
    for start in range(0, flat.size, _LOOKUP_CHUNK):
        np.take(table, flat[start:start + _LOOKUP_CHUNK], out=out[start:start + _LOOKUP_CHUNK])
    return out.reshape(codes.shape)


def _float_scale(name: str, s, shapes: dict[tuple[int, int], str]) -> np.ndarray:
    arr = as_2d(name, s)
    if tuple(arr.shape) not in shapes:
        allowed = " or ".join(f"{list(k)} ({v})" for k, v in shapes.items())
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {allowed}; reshape it")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}] is {arr[tuple(bad)]}; scales must be finite")
    return arr


def _bias(bias, n: int) -> np.ndarray | None:
    if bias is None:
        return None
    b = np.asarray(bias, dtype=np.float64)
    if b.shape != (n,):
        raise ValueError(f"bias has shape {b.shape}, expected ({n},) (one value per output column)")
    return b


def _finish(op: Operands) -> np.ndarray:
    y = op.x @ op.w
    if op.bias is not None:
        y += op.bias
    return y


def _scale_groups(v: np.ndarray, s: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``v`` (float64, C-contiguous; modified in place and returned) times ``s`` broadcast over
    groups of ``size`` along ``axis`` (the last group may be partial)."""
    n = v.shape[axis]
    if n % size == 0 and v.flags.c_contiguous:
        if axis == 0:
            view = v.reshape(n // size, size, v.shape[1])
            view *= s[:, None, :]
        else:
            view = v.reshape(v.shape[0], n // size, size)
            view *= s[:, :, None]
    else:
        v *= np.repeat(s, size, axis=axis)[:n] if axis == 0 else np.repeat(s, size, axis=axis)[:, :n]
    return v


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------ integer weights (A16)


def dequant_int_grouped(q, scales, zeros=None, *, group_size: int, default_zero: int = UINT4_SYMMETRIC_ZERO) -> np.ndarray:
    """Dequantize integer codes grouped along K: ``w[k, n] = (q[k, n] - z[g, n]) * s[g, n]``
    with ``g = k // group_size``.

    q: ints [K, N]; scales: float [K/G, N]; zeros: ints [K/G, N] (true zero points) or None for
    ``default_zero`` (8: the symmetric uint4 convention; W8A16 passes 0). group_size=-1: one
    group over K. ``group_size=1`` with per-k scales [K, N] expresses any per-row scale
    assignment (used by diagnosis hypotheses). Returns float64 [K, N].
    """
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must be 2-D, got shape {q.shape}; reshape it to [rows, cols]")
    k, n = q.shape
    g = check_group_size(group_size, k)
    groups = k // g if g else 1  # K = 0 with group_size -1: one (empty) group
    s = as_2d("scales", scales)
    check_shape("scales", s, (groups, n), f"one row per group of {g} along K, one column per N")
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"scales[{bad[0]}, {bad[1]}] is {s[tuple(bad)]}; scales must be finite")
    w = np.array(q, dtype=np.float64, order="C")  # a fresh array, modified in place below
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
    return _finish(w4a16_operands(x, q, scales, zeros, group_size=group_size, bias=bias))


def w4a16_operands(x, q, scales, zeros=None, *, group_size: int, bias=None) -> Operands:
    x = as_2d("x", x)
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must be 2-D, got shape {q.shape}; reshape it to [rows, cols]")
    _check_k("x", x.shape[1], "q", q.shape[0])
    if q.size and (q.min() < 0 or q.max() > 15):
        raise ValueError(f"q holds codes in [{int(q.min())}, {int(q.max())}], uint4 codes are 0..15")
    w = dequant_int_grouped(q, scales, zeros, group_size=group_size)
    return Operands(x, w, _bias(bias, q.shape[1]))


def w8a16_operands(x, q, scales, zeros=None, *, group_size: int, bias=None) -> Operands:
    x = as_2d("x", x)
    q = _int_codes("q", q, -128, 255, "int8 codes (or uint8 codes with zero points)")
    _check_k("x", x.shape[1], "q", q.shape[0])
    if q.size and int(q.min()) < 0 and int(q.max()) > 127:
        raise ValueError(f"q mixes negative codes and codes above 127 ([{int(q.min())}, {int(q.max())}]); "
                         "int8 codes are -128..127, uint8 codes 0..255: pick one convention")
    if zeros is not None:
        zeros = _int_codes("zeros", zeros, -128, 255, "zero points")
    w = dequant_int_grouped(q, scales, zeros, group_size=group_size, default_zero=0)
    return Operands(x, w, _bias(bias, q.shape[1]))


def w8a16_gemm(x, q, scales, zeros=None, *, group_size: int, bias=None) -> np.ndarray:
    """Reference W8A16 GEMM: ``x @ ((q - z) * s) + bias``.

    x: float [M, K] activation values; q: int8 codes [K, N] (-128..127; uint8 0..255 with zero
    points also accepted); scales: [K/G, N] (group_size=-1: per-channel [1, N]); zeros: int
    [K/G, N] or None (= 0); bias: [N] or None.
    """
    return _finish(w8a16_operands(x, q, scales, zeros, group_size=group_size, bias=bias))


# ------------------------------------------------------------------ scaled_mm (W8A8)


def scaled_mm_operands(a, b, *, quant_dtype: str, a_scale, b_scale, azp=None, bias=None) -> Operands:
    _check_choice("quant_dtype", quant_dtype, SCALED_MM_DTYPES, "pass the codes' format name")
    if quant_dtype == "int8":
        ac = _int_codes("a", a, -128, 127, "int8 codes").astype(np.float64)
        bc = _int_codes("b", b, -128, 127, "int8 codes").astype(np.float64)
    else:
        if azp is not None:
            raise ValueError(f"azp is given but quant_dtype={quant_dtype!r}; zero points are for int8 "
                             "activations only: pass azp=None or quant_dtype='int8'")
        ac = _fp_codes("a", a, quant_dtype)
        bc = _fp_codes("b", b, quant_dtype)
    m, k = ac.shape
    _check_k("a", k, "b", bc.shape[0])
    n = bc.shape[1]
    sa = _float_scale("a_scale", a_scale, {(m, 1): "per-token", (1, 1): "per-tensor"})
    sb = _float_scale("b_scale", b_scale, {(1, n): "per-channel", (1, 1): "per-tensor"})
    if azp is not None:
        z = _int_codes("azp", azp, -128, 127, "int8 zero points")
        if z.shape not in ((m, 1), (1, 1)):
            raise ValueError(f"azp has shape {z.shape}, expected [{m}, 1] (per-token) or [1, 1] (per-tensor); reshape it")
        ac = ac - z
    x = ac * sa
    w = bc * sb
    return Operands(x, w, _bias(bias, n), xc=ac, xs=sa, wc=bc, ws=sb)


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
    _check_choice("quant_dtype", quant_dtype, FP8_DTYPES, "block-scaled GEMMs take fp8 codes")
    bk, bn = _check_block(block)
    x = _fp_codes("a", a, quant_dtype)
    w = _fp_codes("b", b, quant_dtype)
    m, k = x.shape
    _check_k("a", k, "b", w.shape[0])
    n = w.shape[1]
    kb, nb = _cdiv(k, bk), _cdiv(n, bn)
    sa = _float_scale("a_scale", a_scale, {(m, kb): f"one scale per 1 x {bk} activation group, ceil(K/{bk})"})
    sb = _float_scale("b_scale", b_scale, {(kb, nb): f"one scale per {bk} x {bn} weight block"})
    _scale_groups(x, sa, bk, axis=1)
    if k:
        w = _scale_groups(w, np.repeat(sb, bn, axis=1)[:, :n], bk, axis=0)
    return Operands(x, w, _bias(bias, n))


def block_scaled_mm(a, a_scale, b, b_scale, *, quant_dtype: str, block=(128, 128), bias=None) -> np.ndarray:
    """Reference block-scaled FP8 GEMM (DeepSeek-style): ``y[m, n] = sum_k a[m,k] a_s[m, k//bk]
    b[k,n] b_s[k//bk, n//bn] + bias[n]``.

    a: [M, K] fp8 codes; a_scale [M, ceil(K/bk)]; b: [K, N] fp8 codes; b_scale
    [ceil(K/bk), ceil(N/bn)]; block = (bk, bn), default (128, 128).
    """
    return _finish(block_scaled_operands(a, a_scale, b, b_scale, quant_dtype=quant_dtype, block=block, bias=bias))


# ------------------------------------------------------------------ FP8 weights, 16-bit activations


def fp8_w8a16_operands(x, b, b_scale, *, quant_dtype: str, bias=None) -> Operands:
    _check_choice("quant_dtype", quant_dtype, FP8_DTYPES, "FP8 weight-only GEMMs take fp8 codes")
    x = as_2d("x", x)
    wc = _fp_codes("b", b, quant_dtype)
    _check_k("x", x.shape[1], "b", wc.shape[0])
    n = wc.shape[1]
    sb = _float_scale("b_scale", b_scale, {(1, n): "per-channel", (1, 1): "per-tensor"})
    return Operands(x, wc * sb, _bias(bias, n), wc=wc, ws=sb)


def fp8_w8a16_gemm(x, b, b_scale, *, quant_dtype: str, bias=None) -> np.ndarray:
    """Reference FP8 weight-only GEMM: ``x @ (b * b_scale) + bias``; x [M, K] values, b [K, N]
    fp8 codes, b_scale [1, N] or [1, 1]."""
    op = fp8_w8a16_operands(x, b, b_scale, quant_dtype=quant_dtype, bias=bias)
    y = op.x @ op.wc
    y *= op.ws
    if op.bias is not None:
        y += op.bias
    return y


# ------------------------------------------------------------------ MXFP4 / NVFP4


def _grouped_scales(name: str, codes, fmt_name: str, shape: tuple[int, int], what: str) -> np.ndarray:
    s = _fp_codes(name, codes, fmt_name)
    check_shape(name, s, shape, what)
    return s


def _check_block_divides(k: int, size: int, what: str) -> None:
    if k % size:
        raise ValueError(f"K={k} must be a multiple of {size} ({what} scale one block of {size} along K); "
                         f"pad K to a multiple of {size}")


def mxfp4_operands(w, w_scale, *, act: str, x=None, a=None, a_scale=None, bias=None) -> Operands:
    _check_choice("act", act, MXFP4_ACTS, "'a16' takes activation values x, 'mxfp4' codes a + a_scale")
    wv = _fp_codes("w", w, E2M1)
    k, n = wv.shape
    _check_block_divides(k, MX_BLOCK, "MX")
    sw = _grouped_scales("w_scale", w_scale, E8M0, (k // MX_BLOCK, n), "E8M0 codes, one per 32 k-rows per column")
    _scale_groups(wv, sw, MX_BLOCK, axis=0)
    if act == "a16":
        if x is None or a is not None or a_scale is not None:
            raise ValueError("act='a16' takes x (activation values) and no a / a_scale; pass x=..., a=None, a_scale=None")
        xv = as_2d("x", x)
        _check_k("x", xv.shape[1], "w", k)
    else:
        if a is None or a_scale is None or x is not None:
            raise ValueError("act='mxfp4' takes a (e2m1 codes) and a_scale (E8M0 codes) and no x; pass them")
        xv = _fp_codes("a", a, E2M1)
        _check_k("a", xv.shape[1], "w", k)
        sa = _grouped_scales("a_scale", a_scale, E8M0, (xv.shape[0], k // MX_BLOCK), "E8M0 codes, one per 32 k-columns per row")
        _scale_groups(xv, sa, MX_BLOCK, axis=1)
    return Operands(xv, wv, _bias(bias, n))


def mxfp4_gemm(w, w_scale, *, act: str, x=None, a=None, a_scale=None, bias=None) -> np.ndarray:
    """Reference MXFP4 GEMM: weights ``e2m1(w) * 2**(w_scale - 127)`` per 32 k-rows; activations
    given as values (``act='a16'``) or as MXFP4 codes with E8M0 scales per 32 k-columns
    (``act='mxfp4'``). A NaN scale code (0xFF) makes its block NaN (OCP MX v1.0 §6.3)."""
    return _finish(mxfp4_operands(w, w_scale, act=act, x=x, a=a, a_scale=a_scale, bias=bias))


def _global(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
        raise ValueError(f"{name}={v!r} must be a finite float (the fp32 dequantization multiplier); pass e.g. 1.0")
    return float(v)


def nvfp4_operands(a, a_scale, a_global, w, w_scale, w_global, *, bias=None) -> Operands:
    xv = _fp_codes("a", a, E2M1)
    wv = _fp_codes("w", w, E2M1)
    m, k = xv.shape
    _check_k("a", k, "w", wv.shape[0])
    n = wv.shape[1]
    _check_block_divides(k, NV_BLOCK, "NVFP4")
    sa = _grouped_scales("a_scale", a_scale, E4M3, (m, k // NV_BLOCK), "E4M3 codes, one per 16 k-columns per row")
    sw = _grouped_scales("w_scale", w_scale, E4M3, (k // NV_BLOCK, n), "E4M3 codes, one per 16 k-rows per column")
    ga, gw = _global("a_global", a_global), _global("w_global", w_global)
    _scale_groups(xv, sa * ga, NV_BLOCK, axis=1)
    _scale_groups(wv, sw * gw, NV_BLOCK, axis=0)
    return Operands(xv, wv, _bias(bias, n))


def nvfp4_gemm(a, a_scale, a_global, w, w_scale, w_global, *, bias=None) -> np.ndarray:
    """Reference NVFP4 GEMM: ``(e2m1(a) * e4m3(a_scale) * a_global) @ (e2m1(w) * e4m3(w_scale)
    * w_global) + bias`` with 16-element blocks along K."""
    return _finish(nvfp4_operands(a, a_scale, a_global, w, w_scale, w_global, bias=bias))
