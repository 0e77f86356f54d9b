"""Per-op references as data: how to compute an op's exact output from a *problem* (a mapping of
canonical NumPy inputs and parameters), and the bound a correct kernel stays within.

Orientation: activations ``[M, K]``, weights ``[K, N]``, output ``y [M, N]``. "codes" are integer
codes (int8 values, or the bit patterns of a float format as unsigned ints, one per element),
unpacked, in that orientation. Scales are the float values the kernel receives (float32 unless
said otherwise); ``E8M0`` / ``E4M3`` scales are given as their uint8 codes. ``bias`` is ``[N]``
or None everywhere. Problem keys, exactly (optional keys may be left out; they default to None
unless said):

- ``w4a16_gemm``: ``x [M,K]`` values, ``q [K,N]`` uint4 codes 0..15, ``scales [K/G,N]``,
  ``zeros [K/G,N] | None`` (None = 8), ``group_size`` (32 | 64 | 128 | -1 | any divisor of K),
  ``bias``.
- ``w8a16_gemm``: ``x [M,K]``, ``q [K,N]`` int8 codes (-128..127; uint8 0..255 with zero
  points), ``scales [K/G,N]`` (group_size -1: per-channel ``[1,N]``), ``zeros [K/G,N] | None``
  (None = 0), ``group_size``, ``bias``.
- ``scaled_mm``: ``a [M,K]``, ``b [K,N]`` codes, ``quant_dtype`` ("int8" or an fp8 format),
  ``a_scale [M,1] | [1,1]``, ``b_scale [1,N] | [1,1]``, ``azp [M,1] | [1,1] | None`` (int8
  only: ``a_real = (a - azp) * a_scale``), ``bias``.
- ``block_scaled_mm``: ``a [M,K]`` fp8 codes, ``a_scale [M, ceil(K/bk)]``, ``b [K,N]`` fp8 codes,
  ``b_scale [ceil(K/bk), ceil(N/bn)]``, ``block`` ``(bk, bn)`` (default (128, 128)),
  ``quant_dtype``, ``bias``.
- ``fp8_w8a16_gemm``: ``x [M,K]`` values, ``b [K,N]`` fp8 codes, ``b_scale [1,N] | [1,1]``,
  ``quant_dtype``, ``bias``.
- ``mxfp4_gemm``: ``w [K,N]`` e2m1 codes, ``w_scale [K/32,N]`` E8M0 codes, ``act`` ("a16" |
  "mxfp4"), and ``x [M,K]`` values (a16) or ``a [M,K]`` e2m1 codes + ``a_scale [M,K/32]`` E8M0
  codes (mxfp4), ``bias``.
- ``nvfp4_gemm``: ``a [M,K]`` e2m1, ``a_scale [M,K/16]`` E4M3 codes, ``a_global`` float, ``w
  [K,N]`` e2m1, ``w_scale [K/16,N]`` E4M3 codes, ``w_global`` float, ``bias``.

Outside the problem, ``expect`` takes ``compute_dtype`` — what the kernel's dot runs in: float16
/ bfloat16 / float32 for every op (for the code-domain ops: the operands are dequantized and
rounded to it, an emulation path), and for the code-domain ops also their code domain (``int8``
for int8 ``scaled_mm``; any fp8 format name for fp8 ``scaled_mm`` / ``block_scaled_mm``;
``float4_e2m1fn`` for ``mxfp4_gemm`` with ``act='mxfp4'`` and for ``nvfp4_gemm``) — and
``out_dtype`` (float16 / bfloat16 / float32). The bound of each op is ``oracle.bounds``'
derivation with the op's scale roundings (see ``_BOUND_PARAMS`` below and that module's
docstring). Diagnosis hypotheses rewrite a problem and run the same reference, so a reference
must depend on nothing but its problem.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from qkcheck.oracle import gemm, moe
from qkcheck.oracle.bounds import (
    INT32_LIMIT,
    check_compute_dtype,
    dot_bound,
    gamma,
    gemm_bound,
    int8_epilogue_bound,
)
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.numerics import WIDE_FLOATS, round_to, wide_float

Problem = Mapping[str, object]
WIDE = tuple(WIDE_FLOATS)


@dataclass(frozen=True)
class Reference:
    op: str
    compute: Callable[[Problem], np.ndarray]
    bound: Callable[[Problem, np.ndarray, str, str], np.ndarray]
    axis_names: tuple[str, str] = ("row", "column")
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    operands: Callable[[Problem], gemm.Operands] | None = None

    def check(self, p: Problem) -> None:
        """Raise ValueError naming missing or unknown problem keys."""
        if not isinstance(p, Mapping):
            raise TypeError(f"a {self.op} problem must be a mapping of inputs, got {type(p).__name__}")
        missing = [k for k in self.required if k not in p]
        unknown = sorted(set(p) - set(self.required) - set(self.optional))
        if missing or unknown:
            what = []
            if missing:
                what.append(f"lacks {missing}")
            if unknown:
                what.append(f"has unknown keys {unknown}")
            raise ValueError(
                f"the {self.op} problem {' and '.join(what)} (required: {', '.join(self.required)}; "
                f"optional: {', '.join(self.optional) or 'none'}); see oracle.references' docstring"
            )


# ------------------------------------------------------------------ operands per op


def _w4a16_ops(p):
    return gemm.w4a16_operands(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias"))


def _w8a16_ops(p):
    return gemm.w8a16_operands(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias"))


def _scaled_mm_ops(p):
    return gemm.scaled_mm_operands(p["a"], p["b"], quant_dtype=p["quant_dtype"], a_scale=p["a_scale"],
                                   b_scale=p["b_scale"], azp=p.get("azp"), bias=p.get("bias"))


def _block_ops(p):
    return gemm.block_scaled_operands(p["a"], p["a_scale"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"],
                                      block=p.get("block", (128, 128)), bias=p.get("bias"))


def _fp8_w8a16_ops(p):
    return gemm.fp8_w8a16_operands(p["x"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"], bias=p.get("bias"))


def _mxfp4_ops(p):
    return gemm.mxfp4_operands(p["w"], p["w_scale"], act=p["act"], x=p.get("x"), a=p.get("a"),
                               a_scale=p.get("a_scale"), bias=p.get("bias"))


def _nvfp4_ops(p):
    return gemm.nvfp4_operands(p["a"], p["a_scale"], p["a_global"], p["w"], p["w_scale"], p["w_global"],
                               bias=p.get("bias"))


# ------------------------------------------------------------------ compute


def _w4a16(p):
    return gemm.w4a16_gemm(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias"))


def _w8a16(p):
    return gemm.w8a16_gemm(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias"))


def _scaled_mm(p):
    return gemm.scaled_mm(p["a"], p["b"], quant_dtype=p["quant_dtype"], a_scale=p["a_scale"], b_scale=p["b_scale"],
                          azp=p.get("azp"), bias=p.get("bias"))


def _block(p):
    return gemm.block_scaled_mm(p["a"], p["a_scale"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"],
                                block=p.get("block", (128, 128)), bias=p.get("bias"))


def _fp8_w8a16(p):
    return gemm.fp8_w8a16_gemm(p["x"], p["b"], p["b_scale"], quant_dtype=p["quant_dtype"], bias=p.get("bias"))


def _mxfp4(p):
    return gemm.mxfp4_gemm(p["w"], p["w_scale"], act=p["act"], x=p.get("x"), a=p.get("a"), a_scale=p.get("a_scale"),
                           bias=p.get("bias"))


def _nvfp4(p):
    return gemm.nvfp4_gemm(p["a"], p["a_scale"], p["a_global"], p["w"], p["w_scale"], p["w_global"], bias=p.get("bias"))


# ------------------------------------------------------------------ bounds


def _a16_bound(operands):
    def bound(p, y, compute_dtype, out_dtype):
        check_compute_dtype(compute_dtype, WIDE, "an A16 GEMM")
        ops = operands(p)
        return gemm_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype)
    return bound


def _code_max(fmt: str) -> float:
    f = FORMATS[fmt]
    return float(max(abs(f.min), f.max)) if fmt == "int8" else float(f.max)


def _amplification(k: int, code_a: float, code_b: float, *scales) -> float:
    """A of T_u: the largest code-domain partial sum and the largest scale (at least 1)."""
    s = max([1.0] + [float(np.max(np.abs(v))) for v in scales if np.size(v)])
    return max(1.0, k * code_a * code_b, s)


def _code_domains(qd: str) -> tuple[str, ...]:
    """Compute dtypes naming the code domain of ``qd``: int8 for int8, any fp8 format for fp8
    codes (the products of fp8 values are exact in fp32 whichever variant names the dot)."""
    return ("int8",) if qd == "int8" else gemm.FP8_DTYPES


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
    amp = _amplification(k, _code_max(qd) * 2, _code_max(qd), ops.xs, ops.ws)
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=2, amplification=amp)


def _block_bound(p, y, compute_dtype, out_dtype):
    qd = p["quant_dtype"]
    check_compute_dtype(compute_dtype, _code_domains(qd) + WIDE, f"block_scaled_mm with quant_dtype={qd!r}")
    ops = _block_ops(p)
    k = ops.x.shape[1]
    amp = _amplification(k, _code_max(qd), _code_max(qd), p["a_scale"], p["b_scale"])
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=2, amplification=amp)


def _mxfp4_bound(p, y, compute_dtype, out_dtype):
    if p.get("act") == "a16":
        return _a16_bound(_mxfp4_ops)(p, y, compute_dtype, out_dtype)
    check_compute_dtype(compute_dtype, (gemm.E2M1,) + WIDE, "mxfp4_gemm with act='mxfp4'")
    ops = _mxfp4_ops(p)
    k = ops.x.shape[1]
    # E8M0 scales are powers of two: applying them is exact up to underflow (T_u)
    amp = _amplification(k, 6.0, 6.0, 2.0**127)
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=0, amplification=amp)


def _nvfp4_bound(p, y, compute_dtype, out_dtype):
    check_compute_dtype(compute_dtype, (gemm.E2M1,) + WIDE, "nvfp4_gemm")
    ops = _nvfp4_ops(p)
    k = ops.x.shape[1]
    amp = _amplification(k, 6.0 * 448.0, 6.0 * 448.0, p["a_global"], p["w_global"])
    return dot_bound(ops.x, ops.w, y, bias=ops.bias, compute_dtype=compute_dtype, out_dtype=out_dtype,
                     scale_roundings=4, amplification=amp,
                     extra_relative=gamma(2) if compute_dtype in WIDE else 0.0)


REFERENCES: dict[str, Reference] = {
    r.op: r
    for r in (
        Reference("w4a16_gemm", _w4a16, _a16_bound(_w4a16_ops), ("row (m)", "column (n)"),
                  ("x", "q", "scales", "group_size"), ("zeros", "bias"), _w4a16_ops),
        Reference("w8a16_gemm", _w8a16, _a16_bound(_w8a16_ops), ("row (m)", "column (n)"),
                  ("x", "q", "scales", "group_size"), ("zeros", "bias"), _w8a16_ops),
        Reference("scaled_mm", _scaled_mm, _scaled_mm_bound, ("row (m)", "column (n)"),
                  ("a", "b", "quant_dtype", "a_scale", "b_scale"), ("azp", "bias"), _scaled_mm_ops),
        Reference("block_scaled_mm", _block, _block_bound, ("row (m)", "column (n)"),
                  ("a", "a_scale", "b", "b_scale", "quant_dtype"), ("block", "bias"), _block_ops),
        Reference("fp8_w8a16_gemm", _fp8_w8a16, _a16_bound(_fp8_w8a16_ops), ("row (m)", "column (n)"),
                  ("x", "b", "b_scale", "quant_dtype"), ("bias",), _fp8_w8a16_ops),
        Reference("mxfp4_gemm", _mxfp4, _mxfp4_bound, ("row (m)", "column (n)"),
                  ("w", "w_scale", "act"), ("x", "a", "a_scale", "bias"), _mxfp4_ops),
        Reference("nvfp4_gemm", _nvfp4, _nvfp4_bound, ("row (m)", "column (n)"),
                  ("a", "a_scale", "a_global", "w", "w_scale", "w_global"), ("bias",), _nvfp4_ops),
        Reference("fused_moe", moe.fused_moe, moe.fused_moe_bound, ("token (t)", "hidden (h)"),
                  ("x", "w13", "w2"),
                  ("router_logits", "scoring", "top_k", "renormalize", "num_groups", "topk_groups",
                   "correction_bias", "group_score", "topk_ids", "topk_weights", "activation", "swiglu_limit",
                   "swiglu_alpha", "swiglu_up_offset", "apply_router_weight_on_input", "expert_map", "act_quant",
                   "gather_rows", "scatter_rows")),
    )
}


def reference(op: str) -> Reference:
    try:
        return REFERENCES[op]
    except (KeyError, TypeError):
        raise ValueError(f"op {op!r} has no reference (allowed: {', '.join(sorted(REFERENCES))})") from None


@dataclass(frozen=True)
class Expectation:
    """What a correct kernel must return: ``expected`` within ``bound``; ``unit`` is the output
    ULP at the expected value (the ratio unit where the bound is zero)."""

    exact_value: np.ndarray  # unrounded float64 result
    expected: np.ndarray
    bound: np.ndarray
    unit: np.ndarray
    exact_regime: bool


def expect(op: str, problem: Problem, *, exact: bool, compute_dtype: str, out_dtype: str) -> Expectation:
    """Expected output and per-element bound. Exact regime: RNE(y) in the output dtype, bound 0.
    Bounded regime: y itself with the op's derived bound (±inf, bound 0, where y and all it may
    be computed as round past the output dtype's largest value: a correct kernel overflows)."""
    ref = reference(op)
    ref.check(problem)
    wide_float(out_dtype)  # raises naming the allowed output dtypes
    y = ref.compute(problem)
    unit = wide_float(out_dtype).ulp(y)
    rounded = round_to(y, out_dtype)
    if exact:
        return Expectation(y, rounded, np.zeros_like(y), unit, True)
    bound = ref.bound(problem, y, compute_dtype, out_dtype)
    # where y and everything within the bound round past the output's largest value, the output
    # is that infinity (oracle.bounds.output_reach gives those elements the reach 0)
    over = np.isinf(rounded) & np.isfinite(y) & (bound == 0)
    if over.any():
        y_exp = np.where(over, rounded, y)
        return Expectation(y, y_exp, np.where(over, 0.0, bound), unit, False)
    return Expectation(y, y, bound, unit, False)
