"""Input generators for the GEMM references: the exact regime, and random draws for the bounded
regime (``random`` and the sign-``coherent`` draws the tightness checks use).

Exact regime (``style='exact'``): small-integer activations, codes drawn from values with few
significand bits, power-of-two scales that differ between neighbouring groups / blocks / rows /
columns, an integer bias. Every operand is then exact in float16 *and* bfloat16 (at most 8
significand bits, inside float16's range), every product is exact in float32, and for every
output element ``(|X| @ |W| + |b|)[m, n] <= 2**24 * Q[m, n]`` where ``Q`` is the smallest
nonzero bit any term of that element can have. So *every* partial sum, in any order, split-K
included, is an exact float32 value, scale multiplies of fp32 partials are exact (powers of two),
and the only correct output is ``RNE(reference)`` in the output dtype: bound zero, for every op
here (no op legitimately rounds twice: the single rounding is float32 -> output dtype).
``exact_regime_reason`` checks these conditions for any problem and says which one fails.

Scales of the A16 ops are drawn exact in both float16 and bfloat16 (8 significand bits), so
one problem serves every compute dtype; the W8A8 / block / NVFP4 scales are float32 values.

Parameters (keyword, per op; defaults in brackets):

- ``w4a16_gemm``, ``w8a16_gemm``: ``group_size`` [32], ``zeros`` (bool) [False], ``bias`` [False]
- ``scaled_mm``: ``quant_dtype`` ["float8_e4m3fn"], ``per_token`` [True], ``per_channel`` [True],
  ``azp`` (int8 only) [False], ``bias`` [False]
- ``block_scaled_mm``: ``quant_dtype`` ["float8_e4m3fn"], ``block`` [(128, 128)], ``bias`` [False]
- ``fp8_w8a16_gemm``: ``quant_dtype`` ["float8_e4m3fn"], ``per_channel`` [True], ``bias`` [False]
- ``mxfp4_gemm``: ``act`` ["a16"], ``bias`` [False]
- ``nvfp4_gemm``: ``bias`` [False]

All draws come from the ``numpy.random.Generator`` passed in: the same seed gives the same bytes.
"""
from __future__ import annotations

import numpy as np

from qkcheck.oracle import gemm
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.numerics import round_to
from qkcheck.oracle.references import reference

STYLES = ("exact", "random", "coherent")
EXACT_DTYPES = ("float16", "bfloat16")
_OPS_PARAMS = {
    "w4a16_gemm": dict(group_size=32, zeros=False, bias=False),
    "w8a16_gemm": dict(group_size=32, zeros=False, bias=False),
    "scaled_mm": dict(quant_dtype="float8_e4m3fn", per_token=True, per_channel=True, azp=False, bias=False),
    "block_scaled_mm": dict(quant_dtype="float8_e4m3fn", block=(128, 128), bias=False),
    "fp8_w8a16_gemm": dict(quant_dtype="float8_e4m3fn", per_channel=True, bias=False),
    "mxfp4_gemm": dict(act="a16", bias=False),
    "nvfp4_gemm": dict(bias=False),
}
# values with at most 3 significand bits, in every fp8 format and (but 12) in e2m1
_SMALL_FP8 = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
_E2M1_VALUES = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _lsb(v: np.ndarray) -> np.ndarray:
    """The value of the lowest set bit of each nonzero float64 (inf where v == 0)."""
    v = np.abs(np.asarray(v, np.float64))
    m, e = np.frexp(v)
    mant = (m * 2.0**53).astype(np.int64)
    low = mant & -mant
    with np.errstate(divide="ignore"):
        out = np.where(v > 0, np.ldexp(low.astype(np.float64), e - 53), np.inf)
    return out


def exact_regime_reason(op: str, problem, compute_dtypes=EXACT_DTYPES) -> str | None:
    """None when ``problem`` is in the exact regime for every dot dtype of ``compute_dtypes``
    (see the module docstring), else a sentence naming the first violated condition."""
    ref = reference(op)
    ref.check(problem)
    ops = ref.operands(problem)
    x, w = ops.x, ops.w
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w))):
        return "an operand is NaN or inf"
    for c in compute_dtypes:
        for name, v in (("activations", x), ("weights", w)):
            if not np.array_equal(round_to(v, c), v):
                return f"the dequantized {name} are not exact in {c}"
    qx = _lsb(x).min(axis=1, keepdims=True) if x.size else np.ones((x.shape[0], 1))
    qw = _lsb(w).min(axis=0, keepdims=True) if w.size else np.ones((1, w.shape[1]))
    q = qx * qw
    b = np.zeros((1, w.shape[1])) if ops.bias is None else np.abs(ops.bias)[None, :]
    if ops.bias is not None:
        q = np.minimum(q, _lsb(ops.bias)[None, :])
    total = np.abs(x) @ np.abs(w) + b
    if op == "scaled_mm" and problem.get("azp") is not None:
        # the int32 sums of a and of azp * sum(b) are converted to fp32 separately
        a = np.asarray(problem["a"], np.float64) * ops.xs
        total = np.maximum(total, np.abs(a) @ np.abs(w) + b)
    q = np.where(np.isfinite(q), q, 1.0)
    over = total > 2.0**24 * q
    if over.any():
        i, j = np.argwhere(over)[0]
        return (f"output [{i}, {j}]: the term magnitudes sum to {total[i, j]:.6g} > 2**24 * {q[i, j]:.3g} "
                "(its smallest term bit), so a float32 partial sum could round")
    return None


def _half(v):
    """Values exact in both float16 and bfloat16 (what an A16 kernel may receive scales in)."""
    return round_to(round_to(v, "bfloat16"), "float16")


def _f32(v):
    return np.asarray(v, np.float32).astype(np.float64)


def _ints(rng, lo, hi, shape):
    return rng.integers(lo, hi + 1, shape)


def _signs(rng, shape):
    return rng.choice([-1.0, 1.0], shape)


def _encode(fmt: str, values) -> np.ndarray:
    return FORMATS[fmt].encode(np.asarray(values, np.float64), saturate=True)


def _xmax(k: int, budget: float) -> int:
    """Largest integer activation magnitude (<= 4) keeping K * xmax * budget_per_term exact."""
    xm = int(min(4.0, 2.0**24 / max(k * budget, 1.0)))
    if xm < 1:
        raise ValueError(f"K={k} is too long for the exact regime with these codes (K * max term > 2**24 "
                         "quanta); use K <= 4096 or the bounded regime")
    return xm


def _span(k: int, per_term: float, most: int = 3) -> int:
    """Power-of-two scale span (exponent range size - 1) that keeps the sums exact."""
    room = 2.0**24 / max(k * per_term, 1.0)
    span = int(min(most, np.floor(np.log2(room)) if room >= 1 else -1))
    if span < 1:
        raise ValueError(f"K={k} is too long for the exact regime (no room for distinct power-of-two scales); "
                         "use a smaller K or the bounded regime")
    return span


def _bias(rng, style, n, enabled, scale=1.0):
    if not enabled:
        return None
    if style == "exact":
        return _ints(rng, -8, 8, n).astype(np.float64)
    if style == "coherent":
        return np.abs(rng.standard_normal(n)) * scale
    return rng.standard_normal(n) * scale


def _x16(rng, style, m, k, xm=4):
    if style == "exact":
        return _ints(rng, -xm, xm, (m, k)).astype(np.float64)
    if style == "coherent":
        return _half(rng.uniform(0.5, 2.0, (m, k)))
    x = rng.standard_normal((m, k))
    if k:
        x[:, rng.integers(k)] *= 30.0  # one outlier channel
    return _half(x)


def _gen_int_a16(op, rng, style, m, k, n, group_size, zeros, bias):
    g = k if group_size == -1 else group_size
    groups = k // g if g else 1
    if op == "w4a16_gemm":
        q = _ints(rng, 0, 15, (k, n))
        z = _ints(rng, 0, 15, (groups, n)) if zeros else None
        zval = 8 if z is None else None
        span_codes = 15.0
    else:
        q = _ints(rng, -128, 127, (k, n)).astype(np.int8)
        z = _ints(rng, -8, 8, (groups, n)) if zeros else None
        zval = 0 if z is None else None
        span_codes = 136.0
    if style == "coherent":  # each (group, column) has codes of one sign relative to the zero point
        zz = np.full((groups, n), zval) if z is None else z
        sign = _signs(rng, (groups, n))
        lo_room = zz - (0 if op == "w4a16_gemm" else -128)
        hi_room = (15 if op == "w4a16_gemm" else 127) - zz
        mag = rng.integers(1, 1 << 16, (k, n))
        room = np.repeat(np.where(sign > 0, hi_room, lo_room), g, axis=0)
        room = np.clip(room, 1, 8)  # within 8 steps of the zero point: a zero-point error is large
        q = np.repeat(zz, g, axis=0) + np.repeat(sign, g, axis=0).astype(int) * (1 + mag % room)
        q = np.clip(q, 0 if op == "w4a16_gemm" else -128, 15 if op == "w4a16_gemm" else 127)
        q = q.astype(np.int8) if op == "w8a16_gemm" else q
    if style == "exact":
        span = _span(k, 4 * span_codes * 2, most=3)
        emin = -4
        s = np.exp2(emin + np.arange(groups) % (span + 1))[:, None] * _signs(rng, (groups, n))
        xm = _xmax(k, span_codes * 2.0 ** (emin + span) / 2.0**emin)
        x = _x16(rng, style, m, k, xm)
    elif style == "coherent":
        s = _half(np.exp2(-6 + np.arange(groups) % 4)[:, None] * rng.uniform(1, 2, (groups, n)))
        x = _x16(rng, style, m, k)
    else:
        s = _half(np.exp2(rng.integers(-10, -3, (groups, n))) * rng.uniform(1, 2, (groups, n)) * _signs(rng, (groups, n)))
        x = _x16(rng, style, m, k)
    return {"x": x, "q": q, "scales": s, "zeros": z, "group_size": group_size, "bias": _bias(rng, style, n, bias)}


def _fp8_codes(rng, style, fmt, shape, coherent_sign=None):
    if style in ("exact", "coherent"):
        v = rng.choice(_SMALL_FP8, shape)
        if style == "exact":
            v = v * _signs(rng, shape) * (rng.random(shape) > 0.1)
        elif coherent_sign is not None:
            v = v * coherent_sign
        return _encode(fmt, v)
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
            a, b = _ints(rng, -lim, lim, (m, k)), _ints(rng, -lim, lim, (k, n))
            if azp:
                a = np.clip(a, -lim // 2, lim // 2)
        elif style == "coherent":
            a = _ints(rng, 1, 8, (m, k))  # near the zero point: a zero-point error is large
            b = (_ints(rng, 1, 127, (k, n)) * _signs(rng, (1, n))).astype(int)
        else:
            a, b = _ints(rng, -128, 127, (m, k)), _ints(rng, -128, 127, (k, n))
        a, b = a.astype(np.int8), b.astype(np.int8)
        z = None
        if azp:
            z = _ints(rng, -4, 4, sa_shape) if style != "coherent" else np.zeros(sa_shape, int)
            if style == "coherent":
                z[...] = -1
            a = np.clip(a.astype(int), -128 + 4, 127 - 4).astype(np.int8)
    else:
        a = _fp8_codes(rng, style, quant_dtype, (m, k), np.ones((m, k)))
        b = _fp8_codes(rng, style, quant_dtype, (k, n), _signs(rng, (1, n)))
        z = None
    qmax = 127.0 if quant_dtype == "int8" else (FORMATS[quant_dtype].max if style == "random" else 12.0)
    if style == "random":  # amax / qmax-like float32 scales: dequantized values O(1)
        sa = _f32(rng.uniform(0.5, 4.0, sa_shape) / qmax)
        sb = _f32(rng.uniform(0.5, 4.0, sb_shape) / qmax)
    else:
        ea = np.arange(sa_shape[0]) % 4 - 2
        eb = np.arange(sb_shape[1]) % 3 - 1 if style == "exact" else np.arange(sb_shape[1]) % 5 - 2
        shift = 0 if style == "exact" else -int(np.log2(qmax))
        sa = np.exp2(ea + shift)[:, None].reshape(sa_shape)
        sb = np.exp2(eb + shift)[None, :].reshape(sb_shape)
    return {"a": a, "b": b, "quant_dtype": quant_dtype, "a_scale": sa, "b_scale": sb, "azp": z,
            "bias": _bias(rng, style, n, bias)}


def _gen_block(rng, style, m, k, n, quant_dtype, block, bias):
    bk, bn = block
    kb, nb = -(-k // bk), -(-n // bn)
    if style == "coherent":
        sign_blocks = _signs(rng, (kb, nb))
        sign = np.repeat(np.repeat(sign_blocks, bk, axis=0), bn, axis=1)[:k, :n]
        a = _fp8_codes(rng, style, quant_dtype, (m, k), np.ones((m, k)))
        b = _fp8_codes(rng, style, quant_dtype, (k, n), sign)
    else:
        a = _fp8_codes(rng, style, quant_dtype, (m, k))
        b = _fp8_codes(rng, style, quant_dtype, (k, n))
    if style == "exact":
        span = _span(k, 144.0 / 0.25, most=4)
        ea = (np.arange(m)[:, None] + 2 * np.arange(kb)[None, :]) % (span // 2 + 1)
        eb = (np.arange(kb)[:, None] + 2 * np.arange(nb)[None, :]) % (span - span // 2 + 1)
        sa, sb = np.exp2(ea - 1.0), np.exp2(eb - 1.0)
    elif style == "coherent":
        sa = np.exp2((np.arange(m)[:, None] + 2 * np.arange(kb)[None, :]) % 4 - 5.0)
        sb = np.exp2((3 * np.arange(kb)[:, None] + np.arange(nb)[None, :]) % 5 - 2.0)
    else:  # per-block amax / qmax-like scales spanning 2**6
        qmax = FORMATS[quant_dtype].max
        sa = _f32(np.exp2(rng.uniform(-3, 3, (m, kb))) / qmax)
        sb = _f32(np.exp2(rng.uniform(-3, 3, (kb, nb))) / qmax)
    return {"a": a, "a_scale": sa, "b": b, "b_scale": sb, "block": tuple(block), "quant_dtype": quant_dtype,
            "bias": _bias(rng, style, n, bias)}


def _gen_fp8_w8a16(rng, style, m, k, n, quant_dtype, per_channel, bias):
    sb_shape = (1, n) if per_channel else (1, 1)
    b = _fp8_codes(rng, style, quant_dtype, (k, n), _signs(rng, (1, n)))
    if style == "exact":
        xm = _xmax(k, 12.0 * 4 / 0.125)
        x = _x16(rng, style, m, k, xm)
        sb = np.exp2(np.arange(sb_shape[1]) % 3 - 1.0)[None, :].reshape(sb_shape)
    elif style == "coherent":
        x = _x16(rng, style, m, k)
        sb = np.exp2(np.arange(sb_shape[1]) % 5 - 2.0)[None, :].reshape(sb_shape)
    else:
        x = _x16(rng, style, m, k)
        sb = _half(rng.uniform(0.5, 4.0, sb_shape) / FORMATS[quant_dtype].max)  # amax / qmax-like
    return {"x": x, "b": b, "b_scale": sb, "quant_dtype": quant_dtype, "bias": _bias(rng, style, n, bias)}


def _e2m1(rng, style, shape, sign=None):
    if style == "random":
        return rng.integers(0, 16, shape).astype(np.uint8)
    v = rng.choice(_E2M1_VALUES, shape)
    if style == "exact":
        v = v * _signs(rng, shape) * (rng.random(shape) > 0.1)
    elif sign is not None:
        v = v * sign
    return _encode("float4_e2m1fn", v)


def _gen_mxfp4(rng, style, m, k, n, act, bias):
    if k % gemm.MX_BLOCK:
        raise ValueError(f"K={k} must be a multiple of {gemm.MX_BLOCK} for MXFP4")
    groups = k // gemm.MX_BLOCK
    if style == "coherent":
        sign = np.repeat(_signs(rng, (groups, n)), gemm.MX_BLOCK, axis=0)
        w = _e2m1(rng, style, (k, n), sign)
    else:
        w = _e2m1(rng, style, (k, n))
    if style == "exact":
        span = _span(k, 36.0 / 0.25 * (4 if act == "mxfp4" else 4), most=3)
        ew = (np.arange(groups)[:, None] + np.arange(n)[None, :]) % (span + 1) - 1
    elif style == "coherent":
        ew = (np.arange(groups)[:, None] + 2 * np.arange(n)[None, :]) % 4 - 2
    else:
        ew = rng.integers(-8, 3, (groups, n))
    p = {"w": w, "w_scale": (127 + ew).astype(np.uint8), "act": act, "bias": _bias(rng, style, n, bias)}
    if act == "a16":
        p["x"] = _x16(rng, style, m, k, 2)
    else:
        p["a"] = _e2m1(rng, style, (m, k), np.ones((m, k)))
        ea = (np.arange(m)[:, None] + 2 * np.arange(groups)[None, :]) % 2 if style != "random" else rng.integers(-4, 3, (m, groups))
        p["a_scale"] = (127 + ea).astype(np.uint8)
    return p


def _gen_nvfp4(rng, style, m, k, n, bias):
    if k % gemm.NV_BLOCK:
        raise ValueError(f"K={k} must be a multiple of {gemm.NV_BLOCK} for NVFP4")
    groups = k // gemm.NV_BLOCK
    if style == "coherent":
        sign = np.repeat(_signs(rng, (groups, n)), gemm.NV_BLOCK, axis=0)
        w = _e2m1(rng, style, (k, n), sign)
    else:
        w = _e2m1(rng, style, (k, n))
    a = _e2m1(rng, style, (m, k), np.ones((m, k)))
    if style == "random":
        sa = _encode("float8_e4m3fn", rng.uniform(0.5, 400, (m, groups)))
        sw = _encode("float8_e4m3fn", rng.uniform(0.5, 400, (groups, n)))
        ga, gw = float(np.float32(rng.uniform(1e-4, 1e-2))), float(np.float32(rng.uniform(1e-4, 1e-2)))
    else:
        span = 2 if style == "exact" else 3
        sa = _encode("float8_e4m3fn", np.exp2((np.arange(m)[:, None] + 2 * np.arange(groups)[None, :]) % span))
        sw = _encode("float8_e4m3fn", np.exp2((np.arange(groups)[:, None] + 2 * np.arange(n)[None, :]) % (span + 1)))
        ga, gw = 2.0**-2, 2.0**-3
    return {"a": a, "a_scale": sa, "a_global": ga, "w": w, "w_scale": sw, "w_global": gw,
            "bias": _bias(rng, style, n, bias)}


def make_problem(op: str, rng: np.random.Generator, *, m: int, k: int, n: int, style: str = "exact", **params) -> dict:
    """A problem for ``op`` of shape (m, k, n) drawn in ``style``: ``'exact'`` (see the module
    docstring), ``'random'`` (codes over the whole finite range, realistic-to-wide scales, an
    outlier activation channel) or ``'coherent'`` (positive activations, codes of one sign per
    scale group and column, integer codes within 8 steps of their zero point, scales differing
    by powers of two: no term of a group cancels another, so a wrong scale or zero point changes
    every element it touches by a definite amount)."""
    if op not in _OPS_PARAMS:
        raise ValueError(f"op {op!r} has no generator (allowed: {', '.join(_OPS_PARAMS)})")
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not allowed (allowed: {', '.join(STYLES)})")
    unknown = sorted(set(params) - set(_OPS_PARAMS[op]))
    if unknown:
        raise ValueError(f"{op} generator has no parameter(s) {unknown} (allowed: {', '.join(_OPS_PARAMS[op])})")
    kw = {**_OPS_PARAMS[op], **params}
    for name, v in (("m", m), ("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative int")
    if op in ("w4a16_gemm", "w8a16_gemm"):
        p = _gen_int_a16(op, rng, style, m, k, n, **kw)
    elif op == "scaled_mm":
        p = _gen_scaled_mm(rng, style, m, k, n, **kw)
    elif op == "block_scaled_mm":
        p = _gen_block(rng, style, m, k, n, **kw)
    elif op == "fp8_w8a16_gemm":
        p = _gen_fp8_w8a16(rng, style, m, k, n, **kw)
    elif op == "mxfp4_gemm":
        p = _gen_mxfp4(rng, style, m, k, n, **kw)
    else:
        p = _gen_nvfp4(rng, style, m, k, n, **kw)
    return p


def exact_problem(op: str, rng: np.random.Generator, *, m: int, k: int, n: int, **params) -> dict:
    """``make_problem(..., style='exact')``, checked with ``exact_regime_reason`` (raises
    ValueError naming the violated condition if the shape is out of the regime's reach)."""
    p = make_problem(op, rng, m=m, k=k, n=n, style="exact", **params)
    why = exact_regime_reason(op, p)
    if why:
        raise ValueError(f"{op} at m={m}, k={k}, n={n}, {params}: not exact: {why}; use a smaller K")
    return p
