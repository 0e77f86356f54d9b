"""The activation quantization family, as kernels expose it: expected codes and scales, the
rounding ambiguity a correct float32 kernel may show, a code-for-code comparison and the
family's diagnosis; the kernel twins are ``kernels/quant``. Its records judge codes and scales
(``CODES``) instead of values within a bound.

Ops (problem keys; ``x [M, K]`` activations, values exactly representable in float32)
------------------------------------------------------------------------------------
============================  ===============================================  ======================
op                            problem                                          outputs
============================  ===============================================  ======================
``per_token_quant``           x, quant_dtype, scale_ub=None                    codes [M,K], scales [M,1]
``static_quant``              x, scale, quant_dtype                            codes [M,K]
``per_token_group_quant``     x, group_size, quant_dtype, scale_ue8m0=False    codes [M,K], scales [M,K/G]
``mx_quant``                  x, fmt, scale_rule ("floor"|"rceil"|"even")      codes [M,K], E8M0 codes [M,K/32]
``nvfp4_quant``               x, global_scale                                  e2m1 codes [M,K], E4M3 codes [M,K/16]
============================  ===============================================  ======================

Optional keys of the three linear ops (per_token, static, per_token_group), for conventions that
production kernels differ on:

* ``qmax``: the largest magnitude the kernel maps to (float formats only; default the format's
  max). vLLM on ROCm uses 224.0 for float8_e4m3fnuz, not the format's 240.0.
* ``amax_floor`` (not static): lower bound on a group's amax, applied as the float32 constant the
  kernel holds (default 1e-10, the ``eps`` of the Triton per-token(-group) kernels). vLLM's CUDA
  floor ``scale >= 1 / (448 * 512)`` is ``amax_floor = 1 / 512`` (448 * 512 is exact).
* ``int8_clamp``: ``"full"`` (default) clips int8 codes to [-128, 127], what ``float_to_int8_rn``
  of vLLM and ``tl.clamp(q, -128, 127)`` do; ``"symmetric"`` clips to [-127, 127]. The choice
  matters only where |x / scale| can exceed 127.5, i.e. for a given (static) scale or a scale
  capped by ``scale_ub``: with a dynamic scale |x / scale| <= 127 (1 + 2**-20), so -128 never
  legitimately appears.
* ``int_ties``: ``"even"`` (default) or ``"away"``, how an int8 code is chosen for a value exactly
  halfway between two integers: to even, as ``rint`` and vLLM's ``float_to_int8_rn`` do, or away
  from zero, as ``libdevice.round`` (CUDA ``roundf``) does; a kernel that rounds with it declares
  ``"away"``. Ties only: every other value has one nearest integer. int8 only (a float8
  conversion rounds to even in hardware): a float format with ``"away"`` is a usage error.

Optional key of every quantization op (the five above):

* ``signed_zero``: ``"strict"`` (default) or ``"either"``. Strict: where the expected float code is
  -0 (a -0.0 input, or a small negative value that rounds to zero) only -0 is accepted, and +0
  only where +0 is expected. ``"either"``: a zero code of either sign is accepted wherever a zero
  code is (a quantizer that maps -0.0 to code +0, harmless when the codes are dequantized). int8
  has no signed zero: no effect there.

Unknown keys raise ValueError (a misspelt option must not be ignored silently).

Semantics (what kernels compute)
--------------------------------
Linear ops: ``amax`` = max |x| of the group (exact: the max of float32 values),
``scale = float32(max(min(amax, scale_ub), amax_floor) / qmax)`` divided in float32 (IEEE, i.e.
correctly rounded; computed here with NumPy float32 arithmetic, which is the same thing).
``scale_ue8m0``: ``scale = 2**ceil(log2(scale))`` of that float32 quotient (what
``exp2(ceil(log2(s)))`` and the ``(bits + 0x7FFFFF) & 0x7F800000`` trick give), clamped to E8M0's
[2**-127, 2**127]. Codes: ``RNE(clip(x / scale, -qmax, qmax))`` into the format (saturating),
int8 ``clip(RNE(x / scale), lo, 127)``. ``oracle.schemes.quantize`` computes the same codes and
scales for the default options except for int8's clamp (symmetric there) and the amax floor,
which it applies in float64 (float32(1e-10) / 127 and 1e-10 / 127 round to different float32
values); this module models the kernels' float32 constant.

MX (OCP MX v1.0 §6.3) and NVFP4 are ``oracle.schemes.quantize`` with ``get_scheme("mxfp4")``,
``get_scheme("mxfp4 rceil")``, ... (MX) resp. block scales ``e4m3(amax_block / (6 *
global_scale))`` and codes ``e2m1(x / (block_scale * global_scale))`` (NVFP4). ``global_scale``
is the *dequantization* multiplier (values ~ decode(code) * block_scale * global_scale), as in
``oracle.schemes``; kernels that take the quantization-side factor (vLLM ``scaled_fp4_quant``'s
``global_scale = 448 * 6 / amax``) receive ``1 / global_scale`` from their adapter. A block whose
scale is 0 (all-zero, or underflowing E4M3) has codes ±0: the kernels multiply by a zero
output scale, which keeps x's sign, so both zero codes are accepted there.

Ambiguity (derived; the only places a code or scale other than the expected one is accepted)
---------------------------------------------------------------------------------------------
A kernel computes ``v = x / s`` in float32 in one of several ways: ``x / s`` (IEEE: relative error
<= 2**-24; Triton's fp32 ``/`` lowers to PTX ``div.full.f32``: <= 2 ulp <= 2**-22), ``x * (1 / s)``
(two roundings, <= 2**-23), or ``x * (qmax / amax)`` without its stored scale (whose own deviation
from amax / qmax is <= SCALE_REL_AMBIGUITY, plus a division and a product). The sum of these is
below 2**-20, so:

* ``CODE_REL_AMBIGUITY = 2**-20``: the pre-rounding value is known to within
  ``a = |v| * 2**-20``; a code is accepted iff it is the rounding of some value in
  ``[v - a, v + a]``, i.e. ``encode(v - a)`` or ``encode(v + a)`` (rounding is monotone and ``a``
  is far below half a code step, so these are the RNE code and, only where a tie lies within
  ``a`` of v, its other neighbour). ``a = 0`` where the computation is exact: the effective scale
  is a power of two and the kernel divides by that very scale (power-of-two rules -- UE8M0, MX,
  a given static scale, NVFP4 with power-of-two block and global scales -- or an amax quotient
  that is exactly a power of two). There an exact tie must round to even; rounding ties away
  from zero (``libdevice.round``) is a violation, named by the ``ties_away_from_zero``
  hypothesis.
* ``SCALE_REL_AMBIGUITY = 2**-21``: a float32 amax-rule scale is accepted iff it equals the
  correctly rounded quotient or lies within ``q * 2**-21`` of the exact quotient ``q`` (twice the
  largest single-operation error, ``div.full.f32``'s 2 ulp <= q * 2**-22, to cover
  ``amax * (1 / qmax)`` and compounded products). A power-of-two or E8M0 / E4M3 scale is accepted
  iff it is the rounding, by its rule, of a quotient in ``[q (1 - 2**-21), q (1 + 2**-21)]``
  (MX "floor" reads amax's exponent bits: exact, no ambiguity). The codes are then checked
  against the scale the kernel actually returned (where accepted), so a legitimately different
  scale is never double-counted.

Everything else -- a code off by one away from a tie, a wrong scale, a NaN -- is a violation,
reported as an ``oracle.compare.Divergence`` in code steps (adjacent codes differ by 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import numpy as np

from qkcheck.oracle.arguments import check_choice
from qkcheck.oracle.compare import Divergence, compare
from qkcheck.oracle.formats import FORMATS, FloatFormat, IntFormat
from qkcheck.oracle.numerics import WIDE_FLOATS
from qkcheck.oracle.reference import Finding, Judge, OpReference
from qkcheck.oracle.schemes import DEFAULT_AMAX_FLOOR, get_scheme, quantize

__all__ = [
    "QuantExpectation",
    "QuantOp",
    "Rounding",
    "QUANT_OPS",
    "QuantHypothesis",
    "QUANT_HYPOTHESES",
    "CODE_REL_AMBIGUITY",
    "SCALE_REL_AMBIGUITY",
    "LINEAR_QUANT_DTYPES",
    "MX_FORMATS",
    "MX_SCALE_RULES",
    "expect_quant",
    "compare_quant",
    "codes_from_output",
    "diagnose_quant",
    "exact_quant_inputs",
]

CODE_REL_AMBIGUITY = 2.0**-20
SCALE_REL_AMBIGUITY = 2.0**-21
LINEAR_QUANT_DTYPES = ("int8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
# MX element format name -> the oracle.schemes scheme name (OCP MX v1.0 §5.3 element types)
MX_FORMATS: Mapping[str, str] = MappingProxyType({
    "mxfp4": "mxfp4",
    "mxfp6_e2m3": "mxfp6 e2m3",
    "mxfp6_e3m2": "mxfp6 e3m2",
    "mxfp8_e4m3": "mxfp8 e4m3",
    "mxfp8_e5m2": "mxfp8 e5m2",
})
# problem's scale_rule -> the oracle.schemes token
MX_SCALE_RULES: Mapping[str, str] = MappingProxyType({"floor": "floor", "rceil": "rceil", "even": "even"})
MX_BLOCK = 32
NVFP4_BLOCK = 16
NVFP4_ELEM = "float4_e2m1fn"
NVFP4_SCALE = "float8_e4m3fn"
E8M0 = "float8_e8m0fnu"
_E8M0_EXP = (-127, 127)
INT8_CLAMPS = {"full": (-128, 127), "symmetric": (-127, 127)}
INT_TIES = ("even", "away")
# the FP8 convention each one is confused with (same field widths, bias one higher, no -0/inf)
FNUZ_PARTNER = MappingProxyType({
    "float8_e4m3fn": "float8_e4m3fnuz", "float8_e4m3fnuz": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2fnuz", "float8_e5m2fnuz": "float8_e5m2",
})


# ---------------------------------------------------------------- element rounding


@dataclass(frozen=True)
class Rounding:
    """How pre-rounding values become codes: ``elem`` (a FORMATS name), saturating at ``limit``.

    Float formats: ``encode(clip(v, -limit, limit), saturate=True)`` (limit = qmax).
    int8: ``clip(rint(v), lo, hi)`` with (lo, hi) = ``int_range``.
    """

    elem: str
    limit: float
    int_range: tuple[int, int] | None = None
    ties: str = "even"  # int8 only: "even" (rint) or "away" (libdevice.round)

    @property
    def format(self):
        return FORMATS[self.elem]

    def encode(self, v: np.ndarray) -> np.ndarray:
        fmt = self.format
        if isinstance(fmt, IntFormat):
            lo, hi = self.int_range
            r = np.copysign(np.floor(np.abs(v) + 0.5), v) if self.ties == "away" else np.rint(v)
            return np.clip(r, lo, hi).astype(fmt.storage_dtype)
        return fmt.encode(np.clip(v, -self.limit, self.limit), saturate=True)

    def ordinal(self, codes: np.ndarray) -> np.ndarray:
        """float64 position of each code on the number line, in code steps: adjacent codes
        differ by 1, -0 sits at -0.5; NaN codes give NaN, inf codes ±inf."""
        return _ordinal(self.format, codes)


def _ordinal(fmt, codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes).astype(np.int64)
    if isinstance(fmt, IntFormat):
        return c.astype(np.float64)
    mag_bits = fmt.exponent_bits + fmt.mantissa_bits
    mag = c & ((1 << mag_bits) - 1)
    neg = ((c >> mag_bits) & 1).astype(bool) if fmt.signed else np.zeros(c.shape, bool)
    out = np.where(neg, -mag.astype(np.float64), mag.astype(np.float64))
    out = np.where(neg & (mag == 0), -0.5, out)
    values = fmt.decode_table[c]
    out = np.where(np.isnan(values), np.nan, out)
    return np.where(np.isinf(values), values, out)


# ---------------------------------------------------------------- expectation


@dataclass(frozen=True)
class QuantExpectation:
    """What a correct kernel returns for one problem.

    codes:         [M, K] RNE codes (np.int8 values for int8, np.uint8 bit patterns for floats).
    codes_alt:     [M, K] the other code accepted where a tie lies within ``ambiguity`` of
                   ``pre_round``, or the other zero code where the effective scale is 0 (NVFP4);
                   equal to ``codes`` everywhere else.
    pre_round:     [M, K] float64 ``x / effective_scale`` before clamping and rounding.
    ambiguity:     [M, K] float64 ``a >= 0``: a code is accepted iff it is the rounding of a value
                   in ``[pre_round - a, pre_round + a]`` (module docstring).
    scales:        float64 scale values (static_quant: the given scale, [1, 1]); shape
                   [M, K / group_size].
    scale_codes:   uint8 codes of the scales (E8M0 for UE8M0 and MX, E4M3 for NVFP4), else None.
    scale_format:  how the kernel returns its scales: "float32" (values), "float8_e8m0fnu" /
                   "float8_e4m3fn" (codes), or "" (static_quant returns none).
    scale_exact:   float64 exact quotient each scale rounds (amax / qmax; NVFP4 amax / (6 g)).
    scale_candidates: (lo, hi) arrays of the scales accepted by a rounding rule (values for
                   "float32" UE8M0 scales, codes otherwise); None for the float32 amax rule, which
                   accepts ``scale_exact`` within ``SCALE_REL_AMBIGUITY`` or the rounded quotient.
    scale_direct:  True where the kernel must divide by its rounded scale (power-of-two rules,
                   given scales, E4M3 block scales); False for the amax rule.
    group_size:    elements per scale along K (K for per-token; K for static, with one row group).
    global_scale:  NVFP4's dequantization multiplier, else None.
    x:             [M, K] float64 input (to check codes against the kernel's own scales).
    rounding:      the element rounding rule.
    signed_zero_either: a zero code of either sign is accepted where a zero code is expected
                   (the ``signed_zero="either"`` convention).
    """

    op: str
    quant_dtype: str
    codes: np.ndarray
    codes_alt: np.ndarray
    pre_round: np.ndarray
    ambiguity: np.ndarray
    scales: np.ndarray
    scale_codes: np.ndarray | None
    scale_format: str
    scale_exact: np.ndarray
    scale_candidates: tuple[np.ndarray, np.ndarray] | None
    scale_direct: bool
    group_size: int
    global_scale: float | None
    x: np.ndarray
    rounding: Rounding
    signed_zero_either: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def values(self) -> np.ndarray:
        """float64 dequantized values ``decode(codes) * scale [* global_scale]``."""
        fmt = self.rounding.format
        dec = self.codes.astype(np.float64) if isinstance(fmt, IntFormat) else fmt.decode_table[self.codes]
        return dec * _spread(self.scales * (self.global_scale or 1.0), self.shape)


def _spread(groups: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Repeat a [Ms, Gs] per-group array over its [M, K] elements (Ms is M, or 1 for one scale
    shared by all rows)."""
    m, k = shape
    ms, gs = groups.shape
    return np.repeat(np.repeat(groups, 1 if ms == m else m, axis=0), k // gs, axis=1)


def _is_pow2(a: np.ndarray) -> np.ndarray:
    f, _ = np.frexp(a)
    return (np.abs(f) == 0.5) & np.isfinite(a)


def _code_bounds(x: np.ndarray, eff: np.ndarray, exact: np.ndarray, rounding: Rounding):
    """(codes, codes_alt, v, a) for inputs ``x`` [M, K] and per-group effective scales ``eff``
    [Ms, Gs] (0 allowed: those groups give v = 0), ``exact`` [Ms, Gs]: the kernel's v is exact."""
    shape = x.shape
    eff_e = _spread(eff, shape)
    zero = eff_e == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(zero, 0.0, x / np.where(zero, 1.0, eff_e))
    a = np.where(_spread(exact, shape), 0.0, np.abs(v) * CODE_REL_AMBIGUITY)
    lo = rounding.encode(np.where(a == 0, v, v - a))
    hi = rounding.encode(np.where(a == 0, v, v + a))
    codes = rounding.encode(v)
    alt = np.where(lo != codes, lo, hi)
    if zero.any() and isinstance(rounding.format, FloatFormat):
        # x * 0 keeps x's sign: both zero codes are right where the scale is zero
        neg_zero = rounding.encode(np.array([-0.0]))[0]
        alt = np.where(zero, np.where(codes == 0, neg_zero, 0), alt)
    return codes, alt.astype(codes.dtype), v, a


# ---------------------------------------------------------------- problem validation


_MISSING = object()


def _check_keys(op: str, problem: Mapping, required: tuple[str, ...], optional: Mapping[str, object]) -> dict:
    if not isinstance(problem, Mapping):
        raise TypeError(f"problem must be a mapping (dict) of arrays and scalars, got {type(problem).__name__}")
    allowed = tuple(required) + tuple(optional)
    unknown = [k for k in problem if k not in allowed]
    if unknown:
        raise ValueError(
            f"{op} problem has unknown key(s) {unknown} (allowed: {', '.join(allowed)}); "
            f"check the spelling against oracle.ops.quant's docstring"
        )
    missing = [k for k in required if k not in problem]
    if missing:
        raise ValueError(f"{op} problem lacks required key(s) {missing} (required: {', '.join(required)})")
    out = dict(optional)
    out.update(problem)
    return out


def _check_x(op: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "f":
        try:
            converted = arr.astype(np.float64) if arr.dtype.kind == "V" or arr.dtype.name == "bfloat16" else None
        except (TypeError, ValueError):
            converted = None
        if converted is None:
            raise TypeError(
                f"{op}: x must be a float array (float32/float16/bfloat16 activations), got dtype "
                f"{arr.dtype}; convert it with np.asarray(x, np.float32)"
            )
        arr = converted
    if arr.ndim != 2:
        raise ValueError(f"{op}: x must be 2-D [M, K], got shape {arr.shape}; reshape to (-1, K)")
    if arr.shape[1] == 0:
        raise ValueError(f"{op}: x has K=0 columns (shape {arr.shape}); a group needs at least one element")
    x64 = arr.astype(np.float64)
    finite = np.isfinite(x64)
    if not finite.all():
        idx = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"{op}: x holds {x64[idx]!r} at {list(idx)} ({int((~finite).sum())} non-finite of {x64.size}); "
            f"the scale of a group holding NaN/Inf is undefined; replace them (np.nan_to_num) first"
        )
    with np.errstate(over="ignore"):
        exact = x64.astype(np.float32).astype(np.float64) == x64
    if not exact.all():
        idx = tuple(int(i) for i in np.argwhere(~exact)[0])
        raise ValueError(
            f"{op}: x holds {x64[idx]!r} at {list(idx)}, which float32 cannot represent; kernels read "
            f"x in float32/float16/bfloat16, so pass those values (e.g. x.astype(np.float32))"
        )
    return x64


def _check_positive(op: str, name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: {name} must be a positive float, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{op}: {name}={v!r} must be finite and > 0")
    return v


def _check_f32_positive(op: str, name: str, value) -> float:
    v = _check_positive(op, name, value)
    if float(np.float32(v)) != v:
        raise ValueError(
            f"{op}: {name}={v!r} is not exactly representable in float32, the dtype the kernel "
            f"receives it in; pass float(np.float32({v!r})) = {float(np.float32(v))!r}"
        )
    return v


def _check_group(op: str, name: str, g, k: int) -> int:
    if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an int (32, 64 or 128), got {type(g).__name__} {g!r}")
    if g <= 0 or k % g:
        ok = [d for d in (32, 64, 128) if k % d == 0]
        raise ValueError(
            f"{op}: {name}={g} must be a positive divisor of K={k} (allowed here: "
            f"{', '.join(map(str, ok)) or 'none of 32, 64, 128'}); pad K to a multiple of the group"
        )
    return int(g)


def _linear_rounding(op: str, p: Mapping) -> Rounding:
    dtype = check_choice("quant_dtype", p["quant_dtype"], LINEAR_QUANT_DTYPES, op=op)
    fmt = FORMATS[dtype]
    clamp = check_choice("int8_clamp", p["int8_clamp"], tuple(INT8_CLAMPS), op=op)
    ties = check_choice("int_ties", p.get("int_ties", "even"), INT_TIES, op=op)
    if isinstance(fmt, IntFormat):
        if p["qmax"] is not None and float(p["qmax"]) != 127.0:
            raise ValueError(f"{op}: qmax={p['qmax']!r} is fixed at 127 for int8; drop qmax")
        return Rounding(dtype, 127.0, INT8_CLAMPS[clamp], ties)
    if ties != "even":
        raise ValueError(f"{op}: int_ties={ties!r} applies to int8 codes only, got quant_dtype={dtype!r} (a float8 "
                         f"conversion rounds ties to even); declare it for int8 cases only")
    qmax = fmt.max
    if p["qmax"] is not None:
        qmax = _check_f32_positive(op, "qmax", p["qmax"])
        if qmax > fmt.max or fmt.decode(fmt.encode(np.array([qmax]), saturate=True))[0] != qmax:
            raise ValueError(
                f"{op}: qmax={qmax!r} must be a value of {dtype} no larger than its max {fmt.max!r} "
                f"(e.g. 224.0 for vLLM's float8_e4m3fnuz); pick a representable value"
            )
    return Rounding(dtype, float(qmax))


def _pow2_ceil_f32(s32: np.ndarray) -> np.ndarray:
    """2**ceil(log2(s)) of positive float32 values (as float64), clamped to E8M0's range."""
    f, e = np.frexp(s32)
    e = np.where(f == 0.5, e - 1, e)
    return np.ldexp(1.0, np.clip(e, *_E8M0_EXP).astype(np.int32))


def _group_amax(x: np.ndarray, g: int) -> np.ndarray:
    m, k = x.shape
    if m == 0:
        return np.zeros((0, k // g))
    return np.abs(x).reshape(m, k // g, g).max(axis=2)


# ---------------------------------------------------------------- the ops


SIGNED_ZERO = ("strict", "either")
_LINEAR_OPTIONS = {"qmax": None, "int8_clamp": "full", "int_ties": "even", "signed_zero": "strict"}


def _either_zero(op: str, p: Mapping) -> bool:
    """The ``signed_zero`` convention of a checked problem: True for "either"."""
    return check_choice("signed_zero", p["signed_zero"], SIGNED_ZERO, op=op) == "either"


def _dynamic(op: str, p: Mapping, x: np.ndarray, g: int, ue8m0: bool, ub: float | None) -> QuantExpectation:
    rounding = _linear_rounding(op, p)
    floor = _check_positive(op, "amax_floor", p["amax_floor"])
    floor32 = float(np.float32(floor))  # the kernel's float32 constant
    if floor32 == 0:
        raise ValueError(f"{op}: amax_floor={floor!r} underflows float32 to 0; pass a value >= 1e-38")
    qmax = rounding.limit
    amax = _group_amax(x, g)
    if ub is not None:
        amax = np.minimum(amax, ub)
    floored = np.maximum(amax, floor32)
    q = floored / qmax
    s32 = (floored.astype(np.float32) / np.float32(qmax)).astype(np.float64)
    scale_codes = None
    if ue8m0:
        scales = _pow2_ceil_f32(s32)
        lo = _pow2_ceil_f32((q * (1 - SCALE_REL_AMBIGUITY)).astype(np.float32).astype(np.float64))
        hi = _pow2_ceil_f32((q * (1 + SCALE_REL_AMBIGUITY)).astype(np.float32).astype(np.float64))
        candidates = (lo, hi)
        scale_codes = FORMATS[E8M0].encode(scales, saturate=False)
        exact = np.ones(scales.shape, bool)
    else:
        scales, candidates = s32, None
        exact = _is_pow2(scales) & (scales == q)
    codes, alt, v, a = _code_bounds(x, scales, exact, rounding)
    return QuantExpectation(op, rounding.elem, codes, alt, v, a, scales, scale_codes, "float32", q,
                            candidates, ue8m0, g, None, x, rounding, _either_zero(op, p))


def _per_token(p: Mapping) -> QuantExpectation:
    op = "per_token_quant"
    p = _check_keys(op, p, ("x", "quant_dtype"),
                    {"scale_ub": None, "amax_floor": DEFAULT_AMAX_FLOOR, **_LINEAR_OPTIONS})
    x = _check_x(op, p["x"])
    ub = None if p["scale_ub"] is None else _check_f32_positive(op, "scale_ub", p["scale_ub"])
    return _dynamic(op, p, x, x.shape[1], False, ub)


def _per_token_group(p: Mapping) -> QuantExpectation:
    op = "per_token_group_quant"
    p = _check_keys(op, p, ("x", "group_size", "quant_dtype"),
                    {"scale_ue8m0": False, "amax_floor": DEFAULT_AMAX_FLOOR, **_LINEAR_OPTIONS})
    x = _check_x(op, p["x"])
    g = _check_group(op, "group_size", p["group_size"], x.shape[1])
    if not isinstance(p["scale_ue8m0"], (bool, np.bool_)):
        raise TypeError(f"{op}: scale_ue8m0 must be a bool, got {type(p['scale_ue8m0']).__name__} {p['scale_ue8m0']!r}")
    return _dynamic(op, p, x, g, bool(p["scale_ue8m0"]), None)


def _static(p: Mapping) -> QuantExpectation:
    op = "static_quant"
    p = _check_keys(op, p, ("x", "scale", "quant_dtype"), dict(_LINEAR_OPTIONS))
    x = _check_x(op, p["x"])
    rounding = _linear_rounding(op, p)
    s = _check_f32_positive(op, "scale", p["scale"])
    scales = np.array([[s]])
    codes, alt, v, a = _code_bounds(x, scales, _is_pow2(scales), rounding)
    return QuantExpectation(op, rounding.elem, codes, alt, v, a, scales, None, "", scales.copy(), None, True,
                            x.shape[1], None, x, rounding, _either_zero(op, p))


def _mx(p: Mapping) -> QuantExpectation:
    op = "mx_quant"
    p = _check_keys(op, p, ("x", "fmt", "scale_rule"), {"signed_zero": "strict"})
    fmt = check_choice("fmt", p["fmt"], tuple(MX_FORMATS), op=op)
    rule = check_choice("scale_rule", p["scale_rule"], tuple(MX_SCALE_RULES), op=op)
    x = _check_x(op, p["x"])
    if x.shape[1] % MX_BLOCK:
        raise ValueError(f"{op}: K={x.shape[1]} must be a multiple of the MX block size {MX_BLOCK}; pad K")
    scheme = get_scheme(f"{MX_FORMATS[fmt]} {MX_SCALE_RULES[rule]}")
    rounding = Rounding(scheme.elem, FORMATS[scheme.elem].max)
    qt = quantize(x.astype(np.float32), scheme, axis=1)
    scales, scale_codes = qt.scales, qt.scale_codes
    q = _group_amax(x, MX_BLOCK) / rounding.limit
    if rule == "rceil":  # the float32 quotient amax / qmax is ambiguous; floor reads exponent bits
        lo = quantize(x * (1 - SCALE_REL_AMBIGUITY), scheme, axis=1).scale_codes
        hi = quantize(x * (1 + SCALE_REL_AMBIGUITY), scheme, axis=1).scale_codes
    else:
        lo = hi = scale_codes
    codes, alt, v, a = _code_bounds(x, scales, np.ones(scales.shape, bool), rounding)
    if not np.array_equal(codes, qt.codes):  # one computation, two implementations: must agree
        raise RuntimeError("oracle.ops.quant and oracle.schemes disagree on MX codes; this is an oracle bug")
    return QuantExpectation(op, rounding.elem, codes, alt, v, a, scales, scale_codes, E8M0, q, (lo, hi), True,
                            MX_BLOCK, None, x, rounding, _either_zero(op, p))


def _nvfp4(p: Mapping) -> QuantExpectation:
    op = "nvfp4_quant"
    p = _check_keys(op, p, ("x", "global_scale"), {"signed_zero": "strict"})
    x = _check_x(op, p["x"])
    if x.shape[1] % NVFP4_BLOCK:
        raise ValueError(f"{op}: K={x.shape[1]} must be a multiple of the NVFP4 block size {NVFP4_BLOCK}; pad K")
    g = _check_f32_positive(op, "global_scale", p["global_scale"])
    e4m3 = FORMATS[NVFP4_SCALE]
    r = _group_amax(x, NVFP4_BLOCK) / (6.0 * g)  # 6 * g is exact in float64
    scale_codes = e4m3.encode(r, saturate=True)
    lo = e4m3.encode(r * (1 - SCALE_REL_AMBIGUITY), saturate=True)
    hi = e4m3.encode(r * (1 + SCALE_REL_AMBIGUITY), saturate=True)
    scales = e4m3.decode_table[scale_codes]
    rounding = Rounding(NVFP4_ELEM, FORMATS[NVFP4_ELEM].max)
    eff = scales * g
    codes, alt, v, a = _code_bounds(x, eff, _is_pow2(eff), rounding)
    return QuantExpectation(op, NVFP4_ELEM, codes, alt, v, a, scales, scale_codes, NVFP4_SCALE, r, (lo, hi), True,
                            NVFP4_BLOCK, g, x, rounding, _either_zero(op, p))


@dataclass(frozen=True)
class QuantOp:
    """One quantization op: its name, its reference, and what its problem holds."""

    name: str
    compute: Callable[[Mapping], QuantExpectation]
    keys: str  # the problem keys, for messages and docs
    axis_names: tuple[str, str] = ("row", "column")  # codes [M, K]
    scale_axis_names: tuple[str, str] = ("row", "scale group")  # scales [M, K / G]


QUANT_OPS: Mapping[str, QuantOp] = MappingProxyType({
    o.name: o
    for o in (
        QuantOp("per_token_quant", _per_token,
                "x, quant_dtype, scale_ub=None [, qmax, amax_floor, int8_clamp, int_ties, signed_zero]"),
        QuantOp("static_quant", _static, "x, scale, quant_dtype [, qmax, int8_clamp, int_ties, signed_zero]"),
        QuantOp("per_token_group_quant", _per_token_group,
                "x, group_size, quant_dtype, scale_ue8m0=False [, qmax, amax_floor, int8_clamp, int_ties, signed_zero]"),
        QuantOp("mx_quant", _mx, "x, fmt, scale_rule [, signed_zero]"),
        QuantOp("nvfp4_quant", _nvfp4, "x, global_scale [, signed_zero]"),
    )
})


def _op(op: str) -> QuantOp:
    try:
        return QUANT_OPS[op]
    except (KeyError, TypeError):
        raise ValueError(f"op {op!r} is not a quantization op (allowed: {', '.join(QUANT_OPS)})") from None


def expect_quant(op: str, problem: Mapping) -> QuantExpectation:
    """The expected codes, scales, pre-rounding values and tie ambiguity of ``op`` on ``problem``."""
    return _op(op).compute(problem)


# ---------------------------------------------------------------- comparison


def _f32_ordinal(vals: np.ndarray) -> np.ndarray:
    """Position of float32 values on the float32 number line (adjacent floats differ by 1)."""
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.abs(np.nan_to_num(vals, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.float32)
    mag = f.view(np.int32).astype(np.float64)
    out = np.where(np.signbit(vals), -mag, mag)
    out = np.where(np.isnan(vals), np.nan, out)
    return np.where(np.isinf(vals), vals, out)


def _actual_codes(exp: QuantExpectation, actual) -> np.ndarray:
    a = np.asarray(actual)
    if a.dtype.kind not in "iu":
        raise TypeError(
            f"actual_codes must be integer codes (int8 values or uint8 bit patterns), got dtype {a.dtype}; "
            f"convert the kernel's output with codes_from_output(raw, dtype, {exp.quant_dtype!r})"
        )
    if a.shape != exp.shape:
        raise ValueError(
            f"actual_codes has shape {a.shape}, expected {exp.shape} ([M, K], canonical orientation, one "
            f"code per element); unpack / transpose the kernel's output first"
        )
    fmt = exp.rounding.format
    lo, hi = (fmt.min, fmt.max) if isinstance(fmt, IntFormat) else (0, fmt.num_codes - 1)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        bad = int(a.min()) if int(a.min()) < lo else int(a.max())
        raise ValueError(
            f"actual_codes holds {bad}, outside {exp.quant_dtype}'s codes {lo}..{hi}; int8 codes are "
            f"signed values, float codes unsigned bit patterns (use codes_from_output)"
        )
    return a.astype(exp.codes.dtype)


def _check_scales(rec: QuantOp, exp: QuantExpectation, actual_scales):
    """(actual scale values, accepted mask, scale Divergence | None, the Divergence's unit)."""
    if exp.scale_format == "":
        if actual_scales is not None:
            raise ValueError(f"{rec.name} returns no scales (the scale is given); pass actual_scales=None")
        return exp.scales, np.ones(exp.scales.shape, bool), None, ""
    if actual_scales is None:
        raise ValueError(f"{rec.name} returns scales {list(exp.scales.shape)}; pass them as actual_scales")
    a = np.asarray(actual_scales)
    if a.shape != exp.scales.shape:
        raise ValueError(
            f"actual_scales has shape {a.shape}, expected {exp.scales.shape} ([M, K / {exp.group_size}], "
            f"row-major); reshape or transpose the kernel's scale output"
        )
    as_codes = exp.scale_format != "float32" or (a.dtype.kind in "iu" and exp.scale_codes is not None)
    if as_codes:
        fmt = FORMATS[exp.scale_format if exp.scale_format != "float32" else E8M0]
        if a.dtype.kind not in "iu":
            raise TypeError(
                f"{rec.name} scales are {fmt.name} codes; pass them as integers (e.g. "
                f"tensor.view(torch.uint8)), got dtype {a.dtype}"
            )
        if a.size and (int(a.min()) < 0 or int(a.max()) > 255):
            raise ValueError(f"actual_scales holds {int(a.min())}..{int(a.max())}; {fmt.name} codes are 0..255")
        codes = a.astype(np.uint8)
        vals = fmt.decode_table[codes]
        exp_codes = exp.scale_codes
        lo, hi = exp.scale_candidates
        if exp.scale_format == "float32":  # UE8M0 values given as E8M0 codes
            lo, hi = (FORMATS[E8M0].encode(c, saturate=False) for c in (lo, hi))
        ok = ((codes == lo) | (codes == hi) | (codes == exp_codes)) & np.isfinite(vals)
        ord_act, ord_exp = _ordinal(fmt, codes), _ordinal(fmt, exp_codes)
        unit = f"{fmt.name} code steps"
    else:
        if a.dtype.kind != "f":
            raise TypeError(f"{rec.name} scales are float32 values; got dtype {a.dtype} (pass the float tensor)")
        vals = a.astype(np.float64)
        finite = np.isfinite(vals)
        with np.errstate(over="ignore"):
            f32 = np.where(finite, vals, 0).astype(np.float32).astype(np.float64) == np.where(finite, vals, 0)
        if not f32.all():
            raise ValueError("actual_scales holds values float32 cannot represent; pass the kernel's float32 scales")
        if exp.scale_candidates is None:
            q = exp.scale_exact
            ok = (vals == exp.scales) | (np.abs(vals - q) <= q * SCALE_REL_AMBIGUITY)
            ord_act, ord_exp = _f32_ordinal(vals), _f32_ordinal(exp.scales)
            unit = "float32 ulps"
        else:
            lo, hi = exp.scale_candidates
            ok = (vals == lo) | (vals == hi) | (vals == exp.scales)
            with np.errstate(divide="ignore", invalid="ignore"):
                ord_act = np.where(vals > 0, np.log2(np.where(vals > 0, vals, 1.0)), np.where(np.isnan(vals), np.nan, -np.inf))
            ord_exp = np.log2(exp.scales)
            unit = "binades (powers of two)"
        ok &= finite
    div = compare(np.where(ok, ord_exp, ord_act), ord_exp, 0.0, unit=1.0, axis_names=rec.scale_axis_names)
    return vals, ok, div, unit


def compare_quant(op: str, expectation: QuantExpectation, actual_codes, actual_scales=None) -> Divergence | None:
    """Compare a kernel's codes [M, K] and scales with ``expectation``; None when they agree.

    actual_codes: integer codes in canonical [M, K] orientation (``codes_from_output``).
    actual_scales: float32 values (per_token, per_token_group; UE8M0 scales may also be given as
    E8M0 uint8 codes), uint8 codes (mx_quant: E8M0, nvfp4_quant: E4M3), or None (static_quant).

    Scales are checked first (module docstring: exact, or within the float32 ambiguity of their
    computation); the codes are then checked against the kernel's own scale where it was accepted
    (against the expected one elsewhere), accepting the other neighbour only at a tie within
    ``ambiguity``. Returns one Divergence: the scales' (shape of the scales) when any scale is
    wrong, else the codes'; both in code steps (``ratio`` = how many codes / ulps / binades off),
    with notes saying which quantity it describes and how the other one fared.
    """
    rec = _op(op)
    if not isinstance(expectation, QuantExpectation):
        raise TypeError(f"expectation must be a QuantExpectation (from expect_quant), got {type(expectation).__name__}")
    if expectation.op != op:
        raise ValueError(f"expectation is for op {expectation.op!r}, not {op!r}; pass the matching op")
    exp = expectation
    codes = _actual_codes(exp, actual_codes)
    svals, sok, sdiv, sunit = _check_scales(rec, exp, actual_scales)
    used = np.where(sok, svals, exp.scales)
    g = exp.global_scale or 1.0
    eff = used * g
    exact = _is_pow2(eff) & (exp.scale_direct | (used == exp.scale_exact))
    want, alt, _, _ = _code_bounds(exp.x, eff, exact, exp.rounding)
    ok = (codes == want) | (codes == alt)
    n_zero = 0
    fmt = exp.rounding.format
    if exp.signed_zero_either and isinstance(fmt, FloatFormat):  # a zero of the other sign, declared harmless
        table = fmt.decode_table
        zero_ok = ~ok & (table[codes] == 0) & ((table[want] == 0) | (table[alt] == 0))
        n_zero = int(zero_ok.sum())
        ok |= zero_ok
    ordinal = exp.rounding.ordinal
    cdiv = compare(np.where(ok, ordinal(want), ordinal(codes)), ordinal(want), 0.0, unit=1.0,
                   axis_names=rec.axis_names)
    if sdiv is None and cdiv is None:
        return None
    n_alt = int((ok & (codes != want)).sum()) - n_zero
    code_note = (f"codes [{exp.shape[0]}, {exp.shape[1]}] ({exp.quant_dtype}): "
                 + ("all match" if cdiv is None else f"{cdiv.count} of {cdiv.total} wrong")
                 + (f"; {n_alt} took the other neighbour of a tie within the float32 ambiguity (accepted)" if n_alt else "")
                 + (f"; {n_zero} zero(s) of the other sign (accepted: signed_zero='either')" if n_zero else ""))
    if sdiv is not None:
        sdiv.notes += [f"quantity: scales {list(exp.scales.shape)} ({exp.scale_format}), compared in {sunit}",
                       code_note + " (checked against the kernel's scale where accepted, the expected one elsewhere)"]
        return sdiv
    cdiv.notes += [f"quantity: {code_note}, compared in code steps",
                   "scales: all accepted" if exp.scale_format else "scales: given (not an output)"]
    return cdiv


# ---------------------------------------------------------------- kernel output -> codes


def codes_from_output(raw, dtype: str, quant_dtype: str) -> np.ndarray:
    """Canonical codes of ``quant_dtype`` from a kernel's output ``raw`` whose dtype is ``dtype``.

    dtype: the torch/ml_dtypes name of the kernel's output tensor:
    * the requested 8-bit format itself (``raw`` as that ml_dtypes dtype, or its bytes as
      uint8/int8): the bit patterns (np.uint8), or int8 values (np.int8) for int8;
    * ``"uint8"`` for FP4/FP6 codes stored one per byte (unpacked; packing is the adapter's job);
    * ``"float32"`` / ``"float16"`` / ``"bfloat16"``: values, which must be exactly representable
      in ``quant_dtype`` (a value between codes is not a quantized output: ValueError).
    A dtype other than the requested one raises TypeError: that is an output-dtype contract
    violation, not something to reinterpret silently (``QUANT_HYPOTHESES`` name what it holds).
    """
    if quant_dtype not in FORMATS or quant_dtype == E8M0:
        allowed = [n for n in FORMATS if n != E8M0]
        raise ValueError(f"quant_dtype={quant_dtype!r} is not an element format (allowed: {', '.join(allowed)})")
    fmt = FORMATS[quant_dtype]
    a = np.asarray(raw)
    if dtype in WIDE_FLOATS:
        try:
            vals = a.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"raw must hold {dtype} values, got dtype {a.dtype}") from None
        if isinstance(fmt, IntFormat):
            codes = fmt.encode(np.nan_to_num(vals, nan=0.5), saturate=True)
            same = codes.astype(np.float64) == vals
        else:
            codes = fmt.encode(np.nan_to_num(vals, nan=0.0) if not fmt.has_nan else vals, saturate=False)
            dec = fmt.decode_table[codes]
            same = (dec == vals) | (np.isnan(dec) & np.isnan(vals))
        if not same.all():
            idx = tuple(int(i) for i in np.argwhere(~same)[0])
            raise ValueError(
                f"raw holds {vals[idx]!r} at {list(idx)} ({int((~same).sum())} of {vals.size}), which is not a "
                f"{quant_dtype} value; the kernel's {dtype} output is not a quantized {quant_dtype} tensor"
            )
        return codes
    if dtype not in FORMATS:
        raise ValueError(f"dtype={dtype!r} is not known (allowed: {', '.join(list(FORMATS) + list(WIDE_FLOATS))})")
    bytes_ok = dtype == quant_dtype or (dtype == "uint8" and fmt.bits < 8) or \
        (quant_dtype == "int8" and dtype == "uint8")
    if not bytes_ok:
        raise TypeError(
            f"the kernel's output dtype is {dtype} but {quant_dtype} was requested: an output-dtype contract "
            f"violation; to see what it holds, decode with codes_from_output(raw, {dtype!r}, {dtype!r}) "
            f"or run diagnose_quant on its bytes"
        )
    if a.dtype.itemsize != 1:
        raise TypeError(f"raw must hold one byte per element for {dtype}, got dtype {a.dtype}")
    if a.dtype.kind not in "iu" and a.dtype.name != dtype:
        raise TypeError(f"raw has dtype {a.dtype.name}, not the stated {dtype}; pass the matching dtype name")
    b = a.view(np.uint8)
    if isinstance(fmt, IntFormat):
        return b.view(fmt.storage_dtype).copy()
    if fmt.bits < 8 and b.size and int(b.max()) >= fmt.num_codes:
        raise ValueError(
            f"raw holds byte {int(b.max()):#04x}, above {quant_dtype}'s {fmt.bits}-bit codes; unpack packed "
            f"codes (two FP4 per byte) with oracle.packing first"
        )
    return b.copy()


# ---------------------------------------------------------------- diagnosis


class QuantHypothesis(NamedTuple):
    """A known way a quantization kernel goes wrong. ``test(op, problem, actual_codes)`` returns the
    fraction of elements the alternative reproduces (1.0: all of them), or None when it does not
    apply. ``sentence`` is a str.format template with {op}, {requested}, {other}."""

    name: str
    sentence: str
    test: Callable[[str, Mapping, np.ndarray], float | None]


def _requested(op: str, problem: Mapping) -> str:
    if op == "mx_quant":
        return get_scheme(MX_FORMATS[problem["fmt"]]).elem
    if op == "nvfp4_quant":
        return NVFP4_ELEM
    return problem["quant_dtype"]


def _as_bytes(actual) -> np.ndarray:
    a = np.asarray(actual)
    if a.dtype.kind not in "iu":
        raise TypeError(f"actual codes must be integers (codes_from_output), got dtype {a.dtype}")
    return (a.astype(np.int64) & 0xFF).astype(np.uint8)


def _admitted(want: np.ndarray, alt: np.ndarray, actual: np.ndarray) -> float | None:
    if actual.shape != want.shape:
        return None
    if actual.size == 0:
        return 1.0
    return float(((actual == want) | (actual == alt)).mean())


def _in_format(fmt_name: str, b: np.ndarray) -> np.ndarray:
    return b.view(np.int8) if fmt_name == "int8" else b


def _fn_fnuz_swapped(op: str, problem: Mapping, actual) -> float | None:
    if op not in _LINEAR_OPS:
        return None
    requested = problem.get("quant_dtype")
    other = FNUZ_PARTNER.get(requested)
    if other is None:
        return None
    b = _as_bytes(actual)
    exp = expect_quant(op, problem)
    # (a) the requested scale, codes rounded in the other convention
    r = Rounding(other, min(exp.rounding.limit, FORMATS[other].max))
    v, a = exp.pre_round, exp.ambiguity
    variant_a = _admitted(r.encode(np.where(a == 0, v, v - a)), r.encode(np.where(a == 0, v, v + a)), b)
    # (b) the whole quantization done for the other convention (its qmax too)
    alt = expect_quant(op, {k: val for k, val in {**problem, "quant_dtype": other}.items() if k != "qmax"})
    variant_b = _admitted(alt.codes, alt.codes_alt, b)
    return max(variant_a or 0.0, variant_b or 0.0)


def _output_is(fmt_name: str):
    def test(op: str, problem: Mapping, actual) -> float | None:
        if op not in _LINEAR_OPS or problem.get("quant_dtype") == fmt_name:
            return None
        alt = expect_quant(op, {k: v for k, v in {**problem, "quant_dtype": fmt_name}.items() if k != "qmax"})
        return _admitted(alt.codes, alt.codes_alt, _in_format(fmt_name, _as_bytes(actual)))
    test.__name__ = f"output_is_{fmt_name}"
    return test


def _ties_away(op: str, problem: Mapping, actual) -> float | None:
    exp = expect_quant(op, problem)
    v, a = exp.pre_round, exp.ambiguity
    away = exp.rounding.encode(np.nextafter(v, np.copysign(np.inf, v)))
    want = np.where(a == 0, away, exp.codes)
    alt = np.where(a > 0, exp.codes_alt, want)
    return _admitted(want, alt, _in_format(exp.quant_dtype, _as_bytes(actual)))


_LINEAR_OPS = ("per_token_quant", "static_quant", "per_token_group_quant")
E4M3_MAXES = (448.0, 240.0, 224.0)  # e4m3fn's, e4m3fnuz's, and the fnuz-safe 224 of some kernels


def _qmax_confused(op: str, problem: Mapping, actual) -> float | None:
    """Quantized against another e4m3 maximum (448 / 240 / 224) than the one asked for."""
    requested = problem.get("quant_dtype")
    if op not in _LINEAR_OPS or requested not in FNUZ_PARTNER or FORMATS[requested].exponent_bits != 4:
        return None
    mine = expect_quant(op, problem).rounding.limit
    best = None
    for qmax in E4M3_MAXES:
        if qmax == mine or qmax > FORMATS[requested].max:
            continue
        alt = expect_quant(op, {**problem, "qmax": qmax})
        got = _admitted(alt.codes, alt.codes_alt, _in_format(requested, _as_bytes(actual)))
        best = got if best is None else max(best, got or 0.0)
    return best

QUANT_HYPOTHESES: tuple[QuantHypothesis, ...] = (
    QuantHypothesis(
        "fn_fnuz_swapped",
        "{requested} was requested but the codes are {other} bit patterns (the other FP8 convention: "
        "exponent bias one higher, so read as {requested} every normal value is off by a factor of 2)",
        _fn_fnuz_swapped,
    ),
    *(
        QuantHypothesis(
            f"output_is_{name}",
            f"{{requested}} was requested but the output holds {name} codes, quantized for {name} "
            f"(an output allocated, or a kernel instantiated, with a hard-coded dtype)",
            _output_is(name),
        )
        for name in LINEAR_QUANT_DTYPES
    ),
    QuantHypothesis(
        "qmax_confused",
        "the codes are quantized against another e4m3 maximum (448 for e4m3fn, 240 for e4m3fnuz, or "
        "224) than the {requested} maximum asked for: scales and codes follow the other qmax",
        _qmax_confused,
    ),
    QuantHypothesis(
        "ties_away_from_zero",
        "exact ties are rounded away from zero (e.g. libdevice.round) instead of to even",
        _ties_away,
    ),
)


def diagnose_quant(op: str, problem: Mapping, actual_codes) -> list[Finding]:
    """The hypotheses that reproduce every code of ``actual_codes`` (canonical [M, K] integers,
    possibly the bytes of an output in another dtype) when the expected codes do not."""
    exp = expect_quant(op, problem)
    b = _as_bytes(actual_codes)
    if _admitted(exp.codes, exp.codes_alt, _in_format(exp.quant_dtype, b)) == 1.0:
        return []
    requested = _requested(op, problem)
    found = []
    for h in QUANT_HYPOTHESES:
        ratio = h.test(op, problem, actual_codes)
        if ratio == 1.0:
            found.append(Finding(h.name, h.sentence.format(op=op, requested=requested,
                                                           other=FNUZ_PARTNER.get(requested, ""))))
    return found


# ---------------------------------------------------------------- exact-regime inputs


def _positive_grid(r: Rounding) -> np.ndarray:
    fmt = r.format
    if isinstance(fmt, IntFormat):
        return np.arange(0, r.int_range[1] + 1, dtype=np.float64)
    t = fmt.decode_table
    return np.unique(t[np.isfinite(t) & (t >= 0) & (t <= r.limit)])


def _off_grid(r: Rounding, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values ``±(g + d)`` with g on the format's grid (within ±limit) and |d| <= 3/16 of the
    smaller gap to g's neighbours: at least 5/16 of a gap from every tie, never beyond limit."""
    grid = _positive_grid(r)
    n = len(grid)
    i = rng.integers(0, n, size=shape)
    gap_lo = np.where(i > 0, grid[i] - grid[np.maximum(i - 1, 0)], grid[1] - grid[0])
    gap_hi = np.where(i < n - 1, grid[np.minimum(i + 1, n - 1)] - grid[i], gap_lo)
    t = rng.integers(-3, 4, size=shape) / 16.0
    t = np.where((i == 0) | (i == n - 1), -np.abs(t), t)  # zero: |d| only; the top: stay below limit
    mag = np.abs(grid[i] + t * np.minimum(gap_lo, gap_hi))
    return np.where(rng.integers(0, 2, size=shape) == 1, -mag, mag)


def _exponents(limit: float, shape, rng) -> np.ndarray:
    c = math.floor(math.log2(limit))
    return rng.integers(-6 - c, 9 - c, size=shape)


def _plant_max(v: np.ndarray, group: int, limit: float, rng) -> np.ndarray:
    """Put ±limit at one random position of every group of ``group`` along axis 1."""
    m, k = v.shape
    v = v.copy().reshape(m, k // group, group)
    pos = rng.integers(0, group, size=(m, k // group))
    sign = np.where(rng.integers(0, 2, size=pos.shape) == 1, -1.0, 1.0)
    np.put_along_axis(v, pos[..., None], (sign * limit)[..., None], axis=2)
    return v.reshape(m, k)


def exact_quant_inputs(op: str, shape: tuple[int, int], quant_dtype: str, rng: np.random.Generator, *,
                       group_size: int | None = None, scale_rule: str = "floor",
                       scale_ue8m0: bool = False) -> dict:
    """A problem for ``op`` whose correct codes are unique: every scale is a power of two that the
    kernel computes exactly (each group holds an element ±qmax * 2**e, so amax / qmax = 2**e under
    every rule -- amax, UE8M0, MX floor and rceil agree), and every x / scale lies at least 5/16 of
    a code gap from a tie and within ±qmax. x is float32.

    quant_dtype: the element format for the linear ops (LINEAR_QUANT_DTYPES), the MX format name
    for mx_quant (MX_FORMATS), "nvfp4" (or "float4_e2m1fn") for nvfp4_quant. group_size (default:
    the largest of 128, 64, 32 dividing K), scale_ue8m0 and scale_rule set those problem keys.
    """
    _op(op)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(s, (int, np.integer)) and s >= 0 for s in shape)):
        raise ValueError(f"shape={shape!r} must be a pair (M, K) of ints >= 0")
    m, k = (int(s) for s in shape)
    if op in _LINEAR_OPS:
        check_choice("quant_dtype", quant_dtype, LINEAR_QUANT_DTYPES, op=op)
        r = _linear_rounding(op, {"quant_dtype": quant_dtype, "qmax": None, "int8_clamp": "full"})
        v = _off_grid(r, (m, k), rng)
        if op == "static_quant":
            e = int(_exponents(r.limit, (), rng))
            return {"x": (v * 2.0**e).astype(np.float32), "scale": 2.0**e, "quant_dtype": quant_dtype}
        if op == "per_token_quant":
            g = k
        else:
            g = group_size if group_size is not None else next((d for d in (128, 64, 32) if k % d == 0), None)
            if g is None:
                raise ValueError(f"K={k} is not a multiple of 32; pass group_size= a divisor of K")
            g = _check_group(op, "group_size", g, k)
        e = _exponents(r.limit, (m, k // g), rng)
        x = _plant_max(v, g, r.limit, rng) * np.repeat(np.ldexp(1.0, e), g, axis=1)
        if op == "per_token_quant":
            return {"x": x.astype(np.float32), "quant_dtype": quant_dtype, "scale_ub": None}
        return {"x": x.astype(np.float32), "group_size": g, "quant_dtype": quant_dtype,
                "scale_ue8m0": bool(scale_ue8m0)}
    if op == "mx_quant":
        check_choice("fmt", quant_dtype, tuple(MX_FORMATS), op=op)
        check_choice("scale_rule", scale_rule, tuple(MX_SCALE_RULES), op=op)
        if k % MX_BLOCK:
            raise ValueError(f"K={k} must be a multiple of the MX block size {MX_BLOCK}")
        elem = get_scheme(MX_FORMATS[quant_dtype]).elem
        r = Rounding(elem, FORMATS[elem].max)
        e = _exponents(r.limit, (m, k // MX_BLOCK), rng)
        x = _plant_max(_off_grid(r, (m, k), rng), MX_BLOCK, r.limit, rng) * np.repeat(np.ldexp(1.0, e), MX_BLOCK, axis=1)
        return {"x": x.astype(np.float32), "fmt": quant_dtype, "scale_rule": scale_rule}
    check_choice("quant_dtype", quant_dtype, ("nvfp4", NVFP4_ELEM), op=op)
    if k % NVFP4_BLOCK:
        raise ValueError(f"K={k} must be a multiple of the NVFP4 block size {NVFP4_BLOCK}")
    r = Rounding(NVFP4_ELEM, FORMATS[NVFP4_ELEM].max)
    g = 2.0 ** int(rng.integers(-8, -1))
    sb = np.ldexp(1.0, rng.integers(-6, 9, size=(m, k // NVFP4_BLOCK)))  # E4M3 normal powers of two
    x = _plant_max(_off_grid(r, (m, k), rng), NVFP4_BLOCK, r.limit, rng) * np.repeat(sb * g, NVFP4_BLOCK, axis=1)
    return {"x": x.astype(np.float32), "global_scale": g}


# ---------------------------------------------------------------- the records


def _expect(ref, problem, *, exact, compute_dtype, out_dtype) -> QuantExpectation:
    del exact, compute_dtype, out_dtype  # codes and scales are exact in either regime
    return ref.compute(problem)


def _unreadable(ref, expectation, outputs, promised) -> str | None:
    if len(outputs) != len(promised) or any(o.dtype != want for o, want in zip(outputs, promised)):
        return "the outputs' dtypes differ from the contract; codes not compared"
    return None


def _read(ref, expectation: QuantExpectation, outputs) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes [M, K], scales) of outputs stored the plain way: codes in the requested dtype, one
    per element; float scales as values, float8 / uint8 scales as their codes."""
    codes = codes_from_output(outputs[0].array, outputs[0].dtype, expectation.quant_dtype)
    scales = None
    if len(outputs) > 1:
        s = outputs[1]
        scales = s.array if s.dtype.startswith(("float8", "uint8")) else np.asarray(s.array, np.float64)
    return codes, scales


def _compare(ref, expectation, actual) -> Divergence | None:
    codes, scales = actual
    return compare_quant(ref.op, expectation, codes, scales)


def _diagnose(ref, problem, actual, *, exact, compute_dtype, out_dtype, context=None) -> list[Finding]:
    del exact, compute_dtype, out_dtype, context
    return diagnose_quant(ref.op, problem, actual[0])


# codes and scales compared code for code; actual = (codes [M, K], scales or None)
CODES = Judge(expect=_expect, unreadable=_unreadable, read=_read, compare=_compare)

# the optional keys of each op that are engine conventions (see the module docstring)
CONVENTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "per_token_quant": ("qmax", "amax_floor", "int8_clamp", "int_ties", "signed_zero"),
    "static_quant": ("qmax", "int8_clamp", "int_ties", "signed_zero"),
    "per_token_group_quant": ("qmax", "amax_floor", "int8_clamp", "int_ties", "signed_zero"),
    "mx_quant": ("scale_rule", "signed_zero"),
    "nvfp4_quant": ("signed_zero",),
})

REFERENCES: tuple[OpReference, ...] = tuple(
    OpReference(q.name, q.compute, judge=CODES, diagnoser=_diagnose, axis_names=q.axis_names,
                conventions=CONVENTIONS.get(q.name, ()))
    for q in QUANT_OPS.values()
)
