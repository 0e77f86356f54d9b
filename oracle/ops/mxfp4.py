"""The MXFP4 family: ``mxfp4_gemm`` (OCP MX e2m1 weights with E8M0 scales per 32 k-rows; 16-bit
activations or MXFP4 activations). Reference, bound and exact-regime inputs; the kernel twin is
``kernels/mxfp4``.

Problem keys (orientation and conventions: ``oracle.gemm``): ``w [K,N]`` e2m1 codes, ``w_scale
[K/32,N]`` E8M0 codes, ``act`` ("a16" | "mxfp4"), and ``x [M,K]`` values (a16) or ``a [M,K]``
e2m1 codes + ``a_scale [M,K/32]`` E8M0 codes (mxfp4), ``bias [N] | None``.

``compute_dtype``: float16 / bfloat16 / float32, and ``float4_e2m1fn`` with ``act='mxfp4'`` (the
code domain). Bound: the A16 bound for ``act='a16'``; in the code domain no scale rounding (E8M0
scales are powers of two: applying them is exact up to underflow, T_u of ``oracle.bounds``).
Generator parameters (``oracle.exact``): ``act`` ["a16"], ``bias`` [False].
"""
from __future__ import annotations

import numpy as np

from qkcheck.oracle import diagnosis
from qkcheck.oracle.arguments import as_2d, check_choice
from qkcheck.oracle.bounds import WIDE, a16_bound, amplification, check_compute_dtype, dot_bound
from qkcheck.oracle.exact import draw_bias, e2m1_codes, scale_span, signs, x16
from qkcheck.oracle.gemm import (
    E2M1,
    E8M0,
    Operands,
    bias_vector,
    check_block_divides,
    check_k,
    finish,
    fp_codes,
    grouped_scales,
    scale_groups,
)
from qkcheck.oracle.reference import VALUES, OpReference

MX_BLOCK = 32  # OCP MX: one E8M0 scale per 32 elements along K
MXFP4_ACTS = ("a16", "mxfp4")


# ------------------------------------------------------------------ reference


def mxfp4_operands(w, w_scale, *, act: str, x=None, a=None, a_scale=None, bias=None) -> Operands:
    check_choice("act", act, MXFP4_ACTS, fix="'a16' takes activation values x, 'mxfp4' codes a + a_scale")
    wv = fp_codes("w", w, E2M1)
    k, n = wv.shape
    check_block_divides(k, MX_BLOCK, "MX")
    sw = grouped_scales("w_scale", w_scale, E8M0, (k // MX_BLOCK, n), "E8M0 codes, one per 32 k-rows per column")
    scale_groups(wv, sw, MX_BLOCK, axis=0)
    if act == "a16":
        if x is None or a is not None or a_scale is not None:
            raise ValueError("act='a16' takes x (activation values) and no a / a_scale; pass x=..., a=None, a_scale=None")
        xv = as_2d("x", x)
        check_k("x", xv.shape[1], "w", k)
    else:
        if a is None or a_scale is None or x is not None:
            raise ValueError("act='mxfp4' takes a (e2m1 codes) and a_scale (E8M0 codes) and no x; pass them")
        xv = fp_codes("a", a, E2M1)
        check_k("a", xv.shape[1], "w", k)
        sa = grouped_scales("a_scale", a_scale, E8M0, (xv.shape[0], k // MX_BLOCK), "E8M0 codes, one per 32 k-columns per row")
        scale_groups(xv, sa, MX_BLOCK, axis=1)
    return Operands(xv, wv, bias_vector(bias, n))


def mxfp4_gemm(w, w_scale, *, act: str, x=None, a=None, a_scale=None, bias=None) -> np.ndarray:
    """Reference MXFP4 GEMM: weights ``e2m1(w) * 2**(w_scale - 127)`` per 32 k-rows; activations
    given as values (``act='a16'``) or as MXFP4 codes with E8M0 scales per 32 k-columns
    (``act='mxfp4'``). A NaN scale code (0xFF) makes its block NaN (OCP MX v1.0 §6.3)."""
    return finish(mxfp4_operands(w, w_scale, act=act, x=x, a=a, a_scale=a_scale, bias=bias))


# ------------------------------------------------------------------ bound


def _mxfp4_ops(p):
    return mxfp4_operands(p["w"], p["w_scale"], act=p["act"], x=p.get("x"), a=p.get("a"),
                          a_scale=p.get("a_scale"), bias=p.get("bias"))


def _mxfp4_bound(p, y, compute_dtype, out_dtype):
    if p.get("act") == "a16":
        return a16_bound(_mxfp4_ops)(p, y, compute_dtype, out_dtype)
    check_compute_dtype(compute_dtype, (E2M1,) + WIDE, "mxfp4_gemm with act='mxfp4'")
    ops = _mxfp4_ops(p)
    k = ops.x.shape[1]
    # E8M0 scales are powers of two: applying them is exact up to underflow (T_u)
    amp = amplification(k, 6.0, 6.0, 2.0**127)
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=0, amplification=amp)


# ------------------------------------------------------------------ exact-regime and random inputs


def _gen_mxfp4(rng, style, m, k, n, act, bias):
    if k % MX_BLOCK:
        raise ValueError(f"K={k} must be a multiple of {MX_BLOCK} for MXFP4")
    groups = k // MX_BLOCK
    if style == "coherent":
        sign = np.repeat(signs(rng, (groups, n)), MX_BLOCK, axis=0)
        w = e2m1_codes(rng, style, (k, n), sign)
    else:
        w = e2m1_codes(rng, style, (k, n))
    if style == "exact":
        span = scale_span(k, 36.0 / 0.25 * (4 if act == "mxfp4" else 4), most=3)
        ew = (np.arange(groups)[:, None] + np.arange(n)[None, :]) % (span + 1) - 1
    elif style == "coherent":
        ew = (np.arange(groups)[:, None] + 2 * np.arange(n)[None, :]) % 4 - 2
    else:
        ew = rng.integers(-8, 3, (groups, n))
    p = {"w": w, "w_scale": (127 + ew).astype(np.uint8), "act": act, "bias": draw_bias(rng, style, n, bias)}
    if act == "a16":
        p["x"] = x16(rng, style, m, k, 2)
    else:
        p["a"] = e2m1_codes(rng, style, (m, k), np.ones((m, k)))
        ea = (np.arange(m)[:, None] + 2 * np.arange(groups)[None, :]) % 2 if style != "random" else rng.integers(-4, 3, (m, groups))
        p["a_scale"] = (127 + ea).astype(np.uint8)
    return p


REFERENCES: tuple[OpReference, ...] = (
    OpReference(
        "mxfp4_gemm",
        lambda p: mxfp4_gemm(p["w"], p["w_scale"], act=p["act"], x=p.get("x"), a=p.get("a"), a_scale=p.get("a_scale"),
                             bias=p.get("bias")),
        required=("w", "w_scale", "act"), optional=("x", "a", "a_scale", "bias"), axis_names=("row (m)", "column (n)"),
        bound=_mxfp4_bound, operands=_mxfp4_ops, generate=_gen_mxfp4, generator_params=dict(act="a16", bias=False),
        scale_keys=(("w_scale", "e8m0"), ("a_scale", "e8m0")), nibble_keys=(("w", 0), ("a", 1)), weight_key="w",
        hypotheses=(diagnosis.SCALES_TRANSPOSED, diagnosis.NIBBLE_ORDER_SWAPPED, diagnosis.WEIGHT_TRANSPOSED,
                    diagnosis.SCALE_MISAPPLIED, *diagnosis.GEMM_TAIL),
        judge=VALUES, diagnoser=diagnosis.diagnose),
)
