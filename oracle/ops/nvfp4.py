"""The NVFP4 family: ``nvfp4_gemm`` (e2m1 activations and weights, E4M3 block scales per 16
elements along K and a float32 global scale each). Reference, bound, exact-regime inputs and the
family's own diagnosis hypothesis. No bundled kernel computes it yet (``nvfp4_quant`` of
``oracle.ops.quant`` makes its activations).

Problem keys (orientation and conventions: ``oracle.gemm``): ``a [M,K]`` e2m1, ``a_scale
[M,K/16]`` E4M3 codes, ``a_global`` float, ``w [K,N]`` e2m1, ``w_scale [K/16,N]`` E4M3 codes,
``w_global`` float, ``bias [N] | None``.

``compute_dtype``: float16 / bfloat16 / float32, or ``float4_e2m1fn`` (the code domain). Bound:
four scale roundings (block scales and the two globals) and, in a wide float, one more rounding
of each operand (``extra_relative = gamma_2``; ``oracle.bounds``). Generator parameters
(``oracle.exact``): ``bias`` [False].
"""
from __future__ import annotations

import numpy as np

from qkcheck.oracle import diagnosis
from qkcheck.oracle.bounds import WIDE, amplification, check_compute_dtype, dot_bound, gamma
from qkcheck.oracle.diagnosis import Hypothesis
from qkcheck.oracle.exact import draw_bias, e2m1_codes, encode, signs
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.gemm import (
    E2M1,
    E4M3,
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

NV_BLOCK = 16  # NVFP4: one E4M3 scale per 16 elements along K


# ------------------------------------------------------------------ reference


def _global(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
        raise ValueError(f"{name}={v!r} must be a finite float (the fp32 dequantization multiplier); pass e.g. 1.0")
    return float(v)


def nvfp4_operands(a, a_scale, a_global, w, w_scale, w_global, *, bias=None) -> Operands:
    xv = fp_codes("a", a, E2M1)
    wv = fp_codes("w", w, E2M1)
    m, k = xv.shape
    check_k("a", k, "w", wv.shape[0])
    n = wv.shape[1]
    check_block_divides(k, NV_BLOCK, "NVFP4")
    sa = grouped_scales("a_scale", a_scale, E4M3, (m, k // NV_BLOCK), "E4M3 codes, one per 16 k-columns per row")
    sw = grouped_scales("w_scale", w_scale, E4M3, (k // NV_BLOCK, n), "E4M3 codes, one per 16 k-rows per column")
    ga, gw = _global("a_global", a_global), _global("w_global", w_global)
    scale_groups(xv, sa * ga, NV_BLOCK, axis=1)
    scale_groups(wv, sw * gw, NV_BLOCK, axis=0)
    return Operands(xv, wv, bias_vector(bias, n))


def nvfp4_gemm(a, a_scale, a_global, w, w_scale, w_global, *, bias=None) -> np.ndarray:
    """Reference NVFP4 GEMM: ``(e2m1(a) * e4m3(a_scale) * a_global) @ (e2m1(w) * e4m3(w_scale)
    * w_global) + bias`` with 16-element blocks along K."""
    return finish(nvfp4_operands(a, a_scale, a_global, w, w_scale, w_global, bias=bias))


# ------------------------------------------------------------------ bound


def _nvfp4_ops(p):
    return nvfp4_operands(p["a"], p["a_scale"], p["a_global"], p["w"], p["w_scale"], p["w_global"],
                          bias=p.get("bias"))


def _nvfp4_bound(p, y, compute_dtype, out_dtype):
    check_compute_dtype(compute_dtype, (E2M1,) + WIDE, "nvfp4_gemm")
    ops = _nvfp4_ops(p)
    k = ops.x.shape[1]
    amp = amplification(k, 6.0 * 448.0, 6.0 * 448.0, p["a_global"], p["w_global"])
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=4, amplification=amp,
                     extra_relative=gamma(2) if compute_dtype in WIDE else 0.0)


# ------------------------------------------------------------------ exact-regime and random inputs


def _gen_nvfp4(rng, style, m, k, n, bias):
    if k % NV_BLOCK:
        raise ValueError(f"K={k} must be a multiple of {NV_BLOCK} for NVFP4")
    groups = k // NV_BLOCK
    if style == "coherent":
        sign = np.repeat(signs(rng, (groups, n)), NV_BLOCK, axis=0)
        w = e2m1_codes(rng, style, (k, n), sign)
    else:
        w = e2m1_codes(rng, style, (k, n))
    a = e2m1_codes(rng, style, (m, k), np.ones((m, k)))
    if style == "random":
        sa = encode("float8_e4m3fn", rng.uniform(0.5, 400, (m, groups)))
        sw = encode("float8_e4m3fn", rng.uniform(0.5, 400, (groups, n)))
        ga, gw = float(np.float32(rng.uniform(1e-4, 1e-2))), float(np.float32(rng.uniform(1e-4, 1e-2)))
    else:
        span = 2 if style == "exact" else 3
        sa = encode("float8_e4m3fn", np.exp2((np.arange(m)[:, None] + 2 * np.arange(groups)[None, :]) % span))
        sw = encode("float8_e4m3fn", np.exp2((np.arange(groups)[:, None] + 2 * np.arange(n)[None, :]) % (span + 1)))
        ga, gw = 2.0**-2, 2.0**-3
    return {"a": a, "a_scale": sa, "a_global": ga, "w": w, "w_scale": sw, "w_global": gw,
            "bias": draw_bias(rng, style, n, bias)}


# ------------------------------------------------------------------ the family's hypothesis


def e4m3_scales_as_fnuz(ref, p, ctx):
    """The E4M3 block scales decoded as float8_e4m3fnuz: every scale halves (the global scale
    carries the factor)."""
    f, t = FORMATS["float8_e4m3fn"].decode_table, FORMATS["float8_e4m3fnuz"].decode_table
    for key, glob in (("w_scale", "w_global"), ("a_scale", "a_global")):
        c = np.asarray(p[key])
        if np.all(np.isfinite(t[c]) & ((t[c] == f[c] / 2) | (f[c] == 0))):
            yield dict(p, **{glob: float(p[glob]) / 2}), (
                f"the E4M3 block scales ({key}) are decoded as float8_e4m3fnuz: off by a factor 0.5")


REFERENCES: tuple[OpReference, ...] = (
    OpReference(
        "nvfp4_gemm",
        lambda p: nvfp4_gemm(p["a"], p["a_scale"], p["a_global"], p["w"], p["w_scale"], p["w_global"], bias=p.get("bias")),
        required=("a", "a_scale", "a_global", "w", "w_scale", "w_global"), optional=("bias",),
        axis_names=("row (m)", "column (n)"),
        bound=_nvfp4_bound, operands=_nvfp4_ops, generate=_gen_nvfp4, generator_params=dict(bias=False),
        scale_keys=(("w_scale", "e4m3"), ("a_scale", "e4m3"), ("w_global", "global"), ("a_global", "global")),
        nibble_keys=(("w", 0), ("a", 1)), weight_key="w",
        hypotheses=(diagnosis.SCALES_TRANSPOSED, diagnosis.NIBBLE_ORDER_SWAPPED, diagnosis.WEIGHT_TRANSPOSED,
                    Hypothesis("fn_fnuz_confused", e4m3_scales_as_fnuz), diagnosis.SCALE_MISAPPLIED,
                    *diagnosis.GEMM_TAIL),
        judge=VALUES, diagnoser=diagnosis.diagnose),
)
