"""Activation quantization kernels: dynamic per-token, static per-tensor, per-token-group, MX
(MXFP4, MXFP6 e2m3 / e3m2, MXFP8 e4m3 / e5m2) and NVFP4.

Every kernel reads ``x[M, K]`` (float16 / bfloat16 / float32, unit stride along K), converts each
element to float32 (exact) and does all arithmetic in float32. Outputs:

====================  ===========================  =========================================
op                    codes                         scales
====================  ===========================  =========================================
per_token_quant       ``[M, K]`` quant_dtype        ``[M, 1]`` float32
static_quant          ``[M, K]`` quant_dtype        (given: a float32 scalar tensor)
per_token_group_quant ``[M, K]`` quant_dtype        ``[M, K/G]`` float32, row- or column-major
mx_quant, mxfp4       ``[M, K/2]`` uint8, e2m1      ``[M, K/32]`` uint8 E8M0 codes
mx_quant, others      ``[M, K]`` uint8 bit patterns ``[M, K/32]`` uint8 E8M0 codes
nvfp4_quant           ``[M, K/2]`` uint8, e2m1      ``[M, K/16]`` uint8 E4M3 codes
====================  ===========================  =========================================

FP4 codes are packed two per byte along K (low nibble = even k, high nibble = odd k:
``oracle.packing.NIBBLES_K_ACTIVATION``). MXFP6 codes are stored one per byte, unpacked (the
6-bit pattern in the low bits; the OCP spec leaves FP6 packing to the implementation). MXFP8
codes are stored one per byte as uint8 bit patterns: ``codes.view(torch.float8_e4m3fn)`` (or
``float8_e5m2``) reads them as values without a copy. Scales are uint8 codes too (E8M0:
``2**(code - 127)``; E4M3: ``scales.view(torch.float8_e4m3fn)``). Nothing MX or NVFP4 is stored
in a torch float8 dtype: no kernel here converts to fp8 (every code is assembled from integer
bits), and byte outputs say so.

quant_dtype is ``torch.int8``, ``torch.float8_e4m3fn``, ``torch.float8_e4m3fnuz`` or
``torch.float8_e5m2``; the codes tensor always has exactly that dtype. Format facts (largest
value, mantissa bits, minimum exponent, signed zero) come from ``oracle.formats.FORMATS``.

Numerics (the reference twins are ``oracle.schemes.quantize`` with the matching scheme):

* Linear scales: ``scale = max(min(amax, scale_ub), floor) / qmax`` rounded once to float32,
  ``floor = 1e-10`` (``oracle.schemes.DEFAULT_AMAX_FLOOR``). Rounding is monotone, so this is
  ``max(min(rn(amax / qmax), rn(ub / qmax)), rn(floor / qmax))``: the kernel divides amax with
  an IEEE round-to-nearest division (``tl.math.div_rn``) and the launcher supplies the two
  constant terms, rounded exactly as the float64 oracle rounds them. (``oracle.ops.quant``
  models a kernel holding the floor as the float32 constant ``float32(1e-10)``; for int8 its
  floor scale is one float32 ulp from ``float32(1e-10 / 127)``, inside the 2**-21 relative scale
  ambiguity it accepts; for the fp8 formats the two agree.)
* UE8M0 scales (``scale_ue8m0=True``): ``2**ceil(log2(max(amax, floor) / qmax))``, computed
  exactly from the fields of amax and qmax: with ``amax = ma * 2**ea`` and ``qmax = mq * 2**eq``
  (``1 <= ma, mq < 2``), ``ceil(log2(amax / qmax)) = ea - eq + (ma > mq)``.
* MX scales (OCP MX v1.0 §6.3, E8M0 codes ``e + 127``), for an element format whose largest
  value is ``qmax`` (6, 7.5, 28, 448, 57344 for e2m1, e2m3, e3m2, e4m3, e5m2): ``"floor"``:
  ``e = floor(log2(amax)) - floor(log2(qmax))``; ``"rceil"``: ``e = ceil(log2(amax / qmax))``
  as above. ``e`` is clamped to E8M0's range [-127, 127]; an all-zero block gets ``e = -127``
  (code 0x00). Elements are ``x * 2**-e`` (exact), rounded to nearest even and saturated to
  ±qmax (MXFP8 e5m2 too: its inf codes never appear).
* NVFP4 (16-element blocks, ``global_scale`` g the float32 *dequantization* multiplier, as in
  ``oracle.ops.quant``): block scale ``E4M3(amax / (6 g))`` (RNE, saturating at 448; a block
  whose scale rounds to 0 gets codes ±0), codes ``e2m1(x / (scale * g))``. Both quotients are
  correctly rounded, computed as two round-to-odd float32 divisions, the arbitrary divisor
  first: ``RO(RO(amax / g) / 6)`` and ``RO(RO(x / g) / scale)``. Every rounding boundary of
  the target format, mapped back to the intermediate ``amax / g`` (``x / g``), is a float32
  value of at most 7 significant bits (an E4M3 midpoint times 6; an e2m1 midpoint times an E4M3
  scale), so the first round-to-odd keeps the value on its side of every boundary and the
  second one then gives a value whose RNE is that of the exact quotient. The E4M3 scale code
  is assembled in integer arithmetic like every other code (``_encode_float_sw``) and decoded
  the same way.
* Codes: ``RNE(x / scale)`` of the *exact* quotient, saturated to ±qmax (int8: to [-128, 127],
  as ``float_to_int8_rn`` of vLLM and ``oracle.ops.quant``' default ``int8_clamp="full"``;
  -128 only appears where |x / scale| > 127.5: a given static scale, or a scale capped by
  scale_ub; a dynamic scale keeps |x / scale| <= 127 and agrees with ``oracle.schemes``).
  A float32 quotient can land exactly on a rounding midpoint that the exact quotient misses
  (double rounding), so the kernel rounds the quotient to odd first: the
  float32 quotient ``q = div_rn(x, s)``, the exact sign of ``q * s - x`` from one fma, and when
  q is inexact with an even last bit it moves one ulp toward the exact value. Rounding the
  round-to-odd value (24 bits) to a format of at most 22 bits is then the correct rounding of the
  exact quotient.
* Float codes are produced one of two ways (``sw_fp8`` in the configs): the hardware conversion
  ``tl.clamp(q, -qmax, qmax).to(fp8)`` (round to nearest even; what serving kernels do), or an
  explicit RNE in integer arithmetic that assembles the code's bits (exponent field from the
  float32 exponent, mantissa by rounding ``|q| / 2**(e - mbits)`` to an integer, ties to even)
  and stores them through a uint8 view. The second path is the only one for e4m3fnuz on NVIDIA
  GPUs (no hardware conversion) and the one that runs correctly under the Triton interpreter,
  whose float32 -> fp8 conversion is defective (``kernels.probes``). The MX and NVFP4 kernels
  always use it (elements and NVFP4's E4M3 scales).
  Signed zero: kept for formats that have -0 (``-0.0`` and negative values rounding to zero give
  0x80 / 0x8); e4m3fnuz has no -0 (0x80 is its NaN) and gives 0x00.

Non-finite inputs are not checked (that would cost a pass over x and a host sync): a NaN or
infinity in a row gives meaningless codes and scales for that row (the oracle refuses them).
Tunables live in :class:`TileConfig` (per-token, static), :class:`GroupConfig` (per-token-group),
:class:`MXConfig` and :class:`NVFP4Config`; :func:`default_config` picks them. Every launcher validates all arguments
before launching (ValueError / TypeError naming the argument); ``M == 0`` returns empty outputs
without launching. Each launcher takes ``kernel=`` (default: its own ``@triton.jit`` function) so
that copies with a known bug put back can be launched with the same validation and arguments.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from qkcheck.kernels.triton.arguments import dtype_name as _dtype_name, dtype_names as _names, require_tensor as _require_tensor
from qkcheck.oracle.formats import FORMATS, FloatFormat
from qkcheck.oracle.ops.quant import MX_FORMATS as _MX_SCHEMES
from qkcheck.oracle.schemes import DEFAULT_AMAX_FLOOR, get_scheme

__all__ = [
    "GroupConfig",
    "INPUT_DTYPES",
    "MX_BLOCK",
    "MX_ELEMENTS",
    "MX_FORMATS",
    "MXConfig",
    "NVFP4_BLOCK",
    "NVFP4Config",
    "QUANT_DTYPES",
    "SCALE_RULES",
    "TileConfig",
    "check_mx_quant",
    "check_nvfp4_quant",
    "check_per_token_group_quant",
    "check_per_token_quant",
    "check_static_quant",
    "default_config",
    "GROUP_SIZES",
    "group_scales_empty",
    "hardware_fp8_conversion",
    "mx_codes_shape",
    "mx_quant",
    "nvfp4_quant",
    "per_token_group_quant",
    "per_token_quant",
    "static_quant",
]

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
QUANT_DTYPES = (torch.int8, torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)
GROUP_SIZES = (32, 64, 128)
MX_BLOCK = 32  # OCP MX v1.0: 32 elements share one E8M0 scale
# MX format name (the oracle's ``fmt``) -> its element format (an ``oracle.formats`` name)
MX_ELEMENTS = {fmt: get_scheme(scheme).elem for fmt, scheme in _MX_SCHEMES.items()}
MX_FORMATS = tuple(MX_ELEMENTS)
MX_PACKED = ("mxfp4",)  # FP4 codes go two per byte; the others one per byte
SCALE_RULES = ("floor", "rceil")
NVFP4_BLOCK = 16  # 16 elements share one E4M3 scale
NVFP4_ELEM = "float4_e2m1fn"
NVFP4_SCALE = "float8_e4m3fn"
E8M0_EXP_MIN, E8M0_EXP_MAX = -127, 127

# how codes are produced (kernel constexpr ENCODE)
_ENC_INT = 0  # RNE to an integer, saturated, stored as int8
_ENC_FLOAT_SW = 1  # bits assembled in integer arithmetic, stored through a uint8 view
_ENC_FLOAT_HW = 2  # clamp, then the hardware float32 -> fp8 conversion


# ------------------------------------------------------------------------------------ formats


@dataclass(frozen=True)
class _ElemParams:
    """The kernel constexprs of an element format (from its oracle.formats record)."""

    qmax: float
    qmin: float
    is_float: bool
    mbits: int = 0
    emin: int = 0
    sign_bit: int = 0
    neg_zero: bool = False
    min_subnormal: float = 0.0


def _elem_params(name: str) -> _ElemParams:
    fmt = FORMATS[name]
    if isinstance(fmt, FloatFormat):
        return _ElemParams(float(fmt.max), -float(fmt.max), True, fmt.mantissa_bits, fmt.emin, fmt.bits - 1,
                           fmt.has_negative_zero, float(fmt.min_subnormal))
    return _ElemParams(float(fmt.max), float(fmt.min), False)


def _f32_fields(value: float) -> tuple[int, int]:
    """(unbiased exponent, 23-bit mantissa field) of a positive normal float32 value."""
    bits = int(np.array(value, dtype=np.float32).view(np.uint32))
    return ((bits >> 23) & 0xFF) - 127, bits & 0x7FFFFF


def _f32_div(num: float, den: float) -> float:
    """float32(num / den) computed as the float64 oracle computes it."""
    return float(np.float32(np.float64(num) / np.float64(den)))


def _ceil_log2(value: float) -> int:
    """ceil(log2(value)) exactly for value > 0 (from frexp: value = f * 2**e, 0.5 <= f < 1)."""
    f, e = math.frexp(value)
    return e - 1 if f == 0.5 else e


# ------------------------------------------------------------------------------------ configs


def _ints(config) -> list[int]:
    return [int(getattr(config, f.name)) for f in dataclasses.fields(config)]


def _from_list(cls, values, required: int):
    names = [f.name for f in dataclasses.fields(cls)]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(
            f"config={values!r} must be a list of ints in the order {names}; pass {cls.__name__}(...).as_list()"
        )
    if not required <= len(values) <= len(names):
        raise ValueError(
            f"config={list(values)!r} has {len(values)} entries (allowed: {required} to {len(names)}, in the "
            f"order {names}); pass {cls.__name__}(...).as_list()"
        )
    kwargs = {}
    for f, v in zip(dataclasses.fields(cls), values):
        kwargs[f.name] = bool(v) if f.type in (bool, "bool") else int(v)
    return cls(**kwargs)


@dataclass(frozen=True)
class TileConfig:
    """Tunables of :func:`per_token_quant` and :func:`static_quant`.

    block_m: rows per program; block_k: columns per tile (per_token_quant loops over K in tiles
    of block_k, twice: amax, then codes; static_quant launches one program per tile). Both powers
    of two. sw_fp8: produce fp8 codes by explicit integer RNE instead of the hardware conversion
    (ignored for int8). num_warps: a power of two.
    """

    block_m: int
    block_k: int
    num_warps: int = 4
    sw_fp8: bool = False

    def as_list(self) -> list[int]:
        """The fields in declaration order, as ints (the custom ops take configs as ``int[]``)."""
        return _ints(self)

    @classmethod
    def from_list(cls, values) -> "TileConfig":
        return _from_list(cls, values, 2)


@dataclass(frozen=True)
class GroupConfig:
    """Tunables of :func:`per_token_group_quant`: block_m rows by block_g groups per program
    (powers of two; a tile holds block_m * block_g * group_size elements), num_warps, sw_fp8 as
    in :class:`TileConfig`."""

    block_m: int
    block_g: int
    num_warps: int = 4
    sw_fp8: bool = False

    def as_list(self) -> list[int]:
        return _ints(self)

    @classmethod
    def from_list(cls, values) -> "GroupConfig":
        return _from_list(cls, values, 2)


@dataclass(frozen=True)
class _BlockConfig:
    """block_m rows by block_g scale blocks per program (powers of two), num_warps."""

    block_m: int
    block_g: int
    num_warps: int = 4

    def as_list(self) -> list[int]:
        return _ints(self)

    @classmethod
    def from_list(cls, values):
        return _from_list(cls, values, 2)


@dataclass(frozen=True)
class MXConfig(_BlockConfig):
    """Tunables of :func:`mx_quant`: block_m rows by block_g 32-element blocks per program
    (powers of two), num_warps."""


@dataclass(frozen=True)
class NVFP4Config(_BlockConfig):
    """Tunables of :func:`nvfp4_quant`: block_m rows by block_g 16-element blocks per program
    (powers of two), num_warps. A config of one op is refused by the other."""


def _pow2_at_most(n: int, cap: int) -> int:
    return min(cap, triton.next_power_of_2(max(int(n), 1)))


def hardware_fp8_conversion(quant_dtype: torch.dtype, device) -> bool:
    """Whether Triton converts float32 to ``quant_dtype`` in hardware on ``device``: the fnuz
    formats only on AMD (ROCm), the OCP formats (e4m3fn, e5m2) everywhere else. The interpreter
    (cpu) counts as its GPU twin, so the defective interpreter conversion is what gets probed."""
    is_fnuz = "fnuz" in _dtype_name(quant_dtype)
    device_type = torch.device(device).type if device is not None else "cuda"
    on_rocm = device_type == "cuda" and torch.version.hip is not None
    return is_fnuz == on_rocm


def default_config(op: str, M: int, K: int, *, quant_dtype: torch.dtype | None = None,
                   group_size: int | None = None, device=None):
    """The launcher's tunables for ``op`` ("per_token_quant", "static_quant",
    "per_token_group_quant", "mx_quant", "nvfp4_quant") on an ``[M, K]`` input, blocks clamped to
    the problem.

    sw_fp8 is set where the device has no hardware conversion to quant_dtype (e4m3fnuz on NVIDIA,
    e4m3fn / e5m2 on ROCm); elsewhere the hardware conversion is used.
    """
    if op not in _DEFAULTS:
        raise ValueError(f"op={op!r} has no default config (allowed: {', '.join(_DEFAULTS)}); pass one of them")
    sw = quant_dtype is not None and quant_dtype != torch.int8 and not hardware_fp8_conversion(quant_dtype, device)
    return _DEFAULTS[op](M, K, group_size, sw)


def _default_tile(M, K, group_size, sw):
    del group_size
    return TileConfig(block_m=_pow2_at_most(M, 4), block_k=_pow2_at_most(K, 1024), num_warps=4, sw_fp8=sw)


def _default_static(M, K, group_size, sw):
    del group_size
    return TileConfig(block_m=_pow2_at_most(M, 16), block_k=_pow2_at_most(K, 256), num_warps=4, sw_fp8=sw)


def _default_group(M, K, group_size, sw):
    g = group_size if group_size in GROUP_SIZES else 128
    groups = max(K // g, 1)
    return GroupConfig(block_m=_pow2_at_most(M, 8), block_g=_pow2_at_most(groups, max(512 // g, 1)), num_warps=4,
                       sw_fp8=sw)


def _default_mx(M, K, group_size, sw):
    del group_size, sw
    return MXConfig(block_m=_pow2_at_most(M, 8), block_g=_pow2_at_most(K // MX_BLOCK, 8), num_warps=4)


def _default_nvfp4(M, K, group_size, sw):
    del group_size, sw
    return NVFP4Config(block_m=_pow2_at_most(M, 8), block_g=_pow2_at_most(K // NVFP4_BLOCK, 16), num_warps=4)


_DEFAULTS = {
    "per_token_quant": _default_tile,
    "static_quant": _default_static,
    "per_token_group_quant": _default_group,
    "mx_quant": _default_mx,
    "nvfp4_quant": _default_nvfp4,
}


# ------------------------------------------------------------------------------------ device code


@triton.jit
def _rne_nonneg(a):
    """Round the non-negative float32 ``a`` (< 2**31) to the nearest integer, ties to even (int32)."""
    ai = a.to(tl.int32)  # truncation: floor for a >= 0
    frac = a - ai.to(tl.float32)  # exact
    up = (frac > 0.5) | ((frac == 0.5) & ((ai & 1) == 1))
    return ai + up.to(tl.int32)


@triton.jit
def _quotient_round_to_odd(x, s):
    """``x / s`` (float32, s > 0) rounded to odd: the nearest float32 when exact, else the
    neighbour of the exact quotient whose last significand bit is 1."""
    q = tl.math.div_rn(x, s)
    resid = tl.math.fma(q, s, -x)  # q * s - x, one rounding: its sign is exact
    bits = q.to(tl.int32, bitcast=True)
    fix = (resid != 0.0) & ((bits & 1) == 0) & (q != 0.0)
    toward_larger_magnitude = (resid > 0.0) != (q > 0.0)
    bits = tl.where(fix, tl.where(toward_larger_magnitude, bits + 1, bits - 1), bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _encode_float_sw(v, QMAX: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
                     SIGN_BIT: tl.constexpr, NEG_ZERO: tl.constexpr):
    """Bit pattern (int32) of RNE(v) in a float format without inf/NaN codes, saturated to
    ±QMAX. Field layout: sign | exponent (bias 1 - EMIN) | MBITS mantissa bits.

    With e = max(floor(log2|v|), EMIN) the format's spacing at |v| is 2**(e - MBITS), so
    r = RNE(|v| / 2**(e - MBITS)) is the significand as an integer; the code's magnitude is
    ``((e - EMIN) << MBITS) + r``, which also covers subnormals (e = EMIN, r < 2**MBITS) and a
    carry into the next binade (r = 2**(MBITS + 1))."""
    sign = (v.to(tl.int32, bitcast=True) >> 31) & 1
    a = tl.minimum(tl.abs(v), QMAX)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, EMIN)
    inv_spacing = ((127 - (e - MBITS)) << 23).to(tl.float32, bitcast=True)
    r = _rne_nonneg(a * inv_spacing)  # exact product: a power-of-two scaling
    mag = ((e - EMIN) << MBITS) + r
    if not NEG_ZERO:
        sign = tl.where(mag == 0, 0, sign)
    return mag | (sign << SIGN_BIT)


@triton.jit
def _encode(v, ENCODE: tl.constexpr, QMAX: tl.constexpr, QMIN: tl.constexpr, MBITS: tl.constexpr,
            EMIN: tl.constexpr, SIGN_BIT: tl.constexpr, NEG_ZERO: tl.constexpr):
    """Codes of the round-to-odd quotient ``v``, ready to ``.to()`` the output pointer's type:
    int32 integers in [QMIN, QMAX] (ENCODE 0), int32 bit patterns (1), or clamped float32 (2)."""
    if ENCODE == 0:
        clamped = tl.clamp(v, QMIN, QMAX)  # integer bounds: clamping before rounding is the same
        r = _rne_nonneg(tl.abs(clamped))
        out = tl.where(clamped < 0.0, -r, r)
    elif ENCODE == 1:
        out = _encode_float_sw(v, QMAX, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
    else:
        out = tl.clamp(v, -QMAX, QMAX)
    return out


@triton.jit
def _per_token_quant_kernel(
    x_ptr, q_ptr, s_ptr, ub_ptr,
    M, K,
    stride_xm, stride_xk, stride_qm, stride_qk, stride_sm,
    floor_scale, ub_scale,
    UB_MODE: tl.constexpr,  # 0: none, 1: ub_scale (already divided by QMAX), 2: load ub from ub_ptr
    ENCODE: tl.constexpr, QMAX: tl.constexpr, QMIN: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
    SIGN_BIT: tl.constexpr, NEG_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    x_rows = offs_m.to(tl.int64) * stride_xm
    q_rows = offs_m.to(tl.int64) * stride_qm

    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = mask_m[:, None] & (offs_k < K)[None, :]
        x = tl.load(x_ptr + x_rows[:, None] + offs_k[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))

    scale = tl.math.div_rn(amax, QMAX)
    if UB_MODE == 1:
        scale = tl.minimum(scale, ub_scale)
    elif UB_MODE == 2:
        ub = tl.load(ub_ptr).to(tl.float32)
        scale = tl.minimum(scale, tl.math.div_rn(ub, QMAX))
    scale = tl.maximum(scale, floor_scale)
    tl.store(s_ptr + offs_m * stride_sm, scale, mask=mask_m)

    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = mask_m[:, None] & (offs_k < K)[None, :]
        x = tl.load(x_ptr + x_rows[:, None] + offs_k[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        v = _quotient_round_to_odd(x, scale[:, None])
        codes = _encode(v, ENCODE, QMAX, QMIN, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
        tl.store(q_ptr + q_rows[:, None] + offs_k[None, :] * stride_qk, codes.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _static_quant_kernel(
    x_ptr, q_ptr, scale_ptr,
    M, K,
    stride_xm, stride_xk, stride_qm, stride_qk,
    ENCODE: tl.constexpr, QMAX: tl.constexpr, QMIN: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
    SIGN_BIT: tl.constexpr, NEG_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_m < M)[:, None] & (offs_k < K)[None, :]
    rows = offs_m.to(tl.int64)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    scale = tl.load(scale_ptr).to(tl.float32)
    v = _quotient_round_to_odd(x.to(tl.float32), scale)
    codes = _encode(v, ENCODE, QMAX, QMIN, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
    tl.store(q_ptr + rows[:, None] * stride_qm + offs_k[None, :] * stride_qk, codes.to(q_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _per_token_group_quant_kernel(
    x_ptr, q_ptr, s_ptr,
    M, NUM_GROUPS,
    stride_xm, stride_xk, stride_qm, stride_qk, stride_sm, stride_sg,
    floor_scale,
    FLOOR_EXP: tl.constexpr, Q_EXP: tl.constexpr, Q_MANT: tl.constexpr, UE8M0: tl.constexpr,
    ENCODE: tl.constexpr, QMAX: tl.constexpr, QMIN: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
    SIGN_BIT: tl.constexpr, NEG_ZERO: tl.constexpr,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    offs_e = tl.arange(0, GROUP)
    mask_mg = (offs_m < M)[:, None] & (offs_g < NUM_GROUPS)[None, :]
    mask = mask_mg[:, :, None]
    rows = offs_m.to(tl.int64)[:, None, None]
    k = offs_g[None, :, None] * GROUP + offs_e[None, None, :]

    x = tl.load(x_ptr + rows * stride_xm + k * stride_xk, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=2)  # [BLOCK_M, BLOCK_G]
    if UE8M0:
        bits = amax.to(tl.int32, bitcast=True)
        e = ((bits >> 23) & 0xFF) - 127 - Q_EXP + ((bits & 0x7FFFFF) > Q_MANT).to(tl.int32)
        e = tl.minimum(tl.maximum(e, FLOOR_EXP), 127)
        scale = ((e + 127) << 23).to(tl.float32, bitcast=True)
    else:
        scale = tl.maximum(tl.math.div_rn(amax, QMAX), floor_scale)
    tl.store(s_ptr + offs_m[:, None] * stride_sm + offs_g[None, :] * stride_sg, scale, mask=mask_mg)

    v = _quotient_round_to_odd(x, scale[:, :, None])
    codes = _encode(v, ENCODE, QMAX, QMIN, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
    tl.store(q_ptr + rows * stride_qm + k * stride_qk, codes.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _decode_float_sw(code, MBITS: tl.constexpr, EMIN: tl.constexpr, MIN_SUBNORMAL: tl.constexpr):
    """float32 value of the non-negative code (int32 bit pattern, sign bit clear) of a float
    format laid out as in :func:`_encode_float_sw`; exact (the formats here fit float32)."""
    field = code >> MBITS
    mant = code & ((1 << MBITS) - 1)
    normal = ((((field - 1 + EMIN) + 127) << 23) | (mant << (23 - MBITS))).to(tl.float32, bitcast=True)
    return tl.where(field == 0, mant.to(tl.float32) * MIN_SUBNORMAL, normal)


@triton.jit
def _store_code_pairs(q_ptr, rows, pair, stride_qm, stride_qk, lo, hi, mask, PACKED: tl.constexpr):
    """Store the codes of elements 2 * pair (lo) and 2 * pair + 1 (hi): packed into one byte
    (lo in the low nibble), or one byte each."""
    if PACKED:
        tl.store(q_ptr + rows * stride_qm + pair * stride_qk, (lo | (hi << 4)).to(tl.uint8), mask=mask)
    else:
        ptrs = q_ptr + rows * stride_qm + (2 * pair) * stride_qk
        tl.store(ptrs, lo.to(tl.uint8), mask=mask)
        tl.store(ptrs + stride_qk, hi.to(tl.uint8), mask=mask)


@triton.jit
def _mx_quant_kernel(
    x_ptr, q_ptr, s_ptr,
    M, NUM_GROUPS,
    stride_xm, stride_xk, stride_qm, stride_qk, stride_sm, stride_sg,
    RCEIL: tl.constexpr, Q_EXP: tl.constexpr, Q_MANT: tl.constexpr,
    QMAX: tl.constexpr, QMIN: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr, SIGN_BIT: tl.constexpr,
    NEG_ZERO: tl.constexpr, PACKED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr,
):
    HALF: tl.constexpr = 16  # element pairs per 32-element block
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    offs_p = tl.arange(0, HALF)
    mask_mg = (offs_m < M)[:, None] & (offs_g < NUM_GROUPS)[None, :]
    mask = mask_mg[:, :, None]
    rows = offs_m.to(tl.int64)[:, None, None]
    pair = offs_g[None, :, None] * HALF + offs_p[None, None, :]  # pair index along K/2
    even_ptrs = x_ptr + rows * stride_xm + (2 * pair) * stride_xk

    x_even = tl.load(even_ptrs, mask=mask, other=0.0).to(tl.float32)
    x_odd = tl.load(even_ptrs + stride_xk, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x_even), axis=2), tl.max(tl.abs(x_odd), axis=2))
    bits = amax.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127 - Q_EXP  # floor(log2(amax)) - floor(log2(qmax)); amax=0 -> below -127
    if RCEIL:
        e += ((bits & 0x7FFFFF) > Q_MANT).to(tl.int32)
    e = tl.minimum(tl.maximum(e, -127), 127)
    tl.store(s_ptr + offs_m[:, None] * stride_sm + offs_g[None, :] * stride_sg, (e + 127).to(tl.uint8), mask=mask_mg)

    inv_scale = ((127 - e) << 23).to(tl.float32, bitcast=True)[:, :, None]  # 2**-e, normal for e <= 126
    lo = _encode_float_sw(x_even * inv_scale, QMAX, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
    hi = _encode_float_sw(x_odd * inv_scale, QMAX, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
    _store_code_pairs(q_ptr, rows, pair, stride_qm, stride_qk, lo, hi, mask, PACKED)


@triton.jit
def _nvfp4_codes(x, g, sv):
    """``x / (sv * g)`` rounded to odd in float32 (module docstring: RNE of it is RNE of the
    exact quotient); ``x * 0`` (a signed zero) where the block scale sv is 0."""
    zero = sv == 0.0
    v = _quotient_round_to_odd(_quotient_round_to_odd(x, g), tl.where(zero, 1.0, sv))
    return tl.where(zero, x * 0.0, v)


@triton.jit
def _nvfp4_quant_kernel(
    x_ptr, q_ptr, s_ptr, g_ptr,
    M, NUM_GROUPS,
    stride_xm, stride_xk, stride_qm, stride_qk, stride_sm, stride_sg,
    QMAX: tl.constexpr, QMIN: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr, SIGN_BIT: tl.constexpr,
    NEG_ZERO: tl.constexpr,
    S_QMAX: tl.constexpr, S_MBITS: tl.constexpr, S_EMIN: tl.constexpr, S_SIGN_BIT: tl.constexpr,
    S_NEG_ZERO: tl.constexpr, S_MIN_SUBNORMAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr,
):
    HALF: tl.constexpr = 8  # element pairs per 16-element block
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    offs_p = tl.arange(0, HALF)
    mask_mg = (offs_m < M)[:, None] & (offs_g < NUM_GROUPS)[None, :]
    mask = mask_mg[:, :, None]
    rows = offs_m.to(tl.int64)[:, None, None]
    pair = offs_g[None, :, None] * HALF + offs_p[None, None, :]
    even_ptrs = x_ptr + rows * stride_xm + (2 * pair) * stride_xk

    x_even = tl.load(even_ptrs, mask=mask, other=0.0).to(tl.float32)
    x_odd = tl.load(even_ptrs + stride_xk, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x_even), axis=2), tl.max(tl.abs(x_odd), axis=2))
    g = tl.load(g_ptr).to(tl.float32)
    six = tl.full(amax.shape, QMAX, tl.float32)  # e2m1's largest value
    r = _quotient_round_to_odd(_quotient_round_to_odd(amax, g), six)  # amax / (6 g), rounded to odd
    s_code = _encode_float_sw(r, S_QMAX, S_MBITS, S_EMIN, S_SIGN_BIT, S_NEG_ZERO)  # E4M3 RNE, saturating
    tl.store(s_ptr + offs_m[:, None] * stride_sm + offs_g[None, :] * stride_sg, s_code.to(tl.uint8), mask=mask_mg)

    sv = _decode_float_sw(s_code, S_MBITS, S_EMIN, S_MIN_SUBNORMAL)[:, :, None]
    lo = _encode_float_sw(_nvfp4_codes(x_even, g, sv), QMAX, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
    hi = _encode_float_sw(_nvfp4_codes(x_odd, g, sv), QMAX, MBITS, EMIN, SIGN_BIT, NEG_ZERO)
    _store_code_pairs(q_ptr, rows, pair, stride_qm, stride_qk, lo, hi, mask, True)


# ------------------------------------------------------------------------------------ validation


def _check_x(x) -> tuple[int, int]:
    _require_tensor("x", x)
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(
            f"x.dtype={_dtype_name(x.dtype)} is not supported (allowed: {_names(INPUT_DTYPES)}); "
            "cast x with x.to(torch.float16)"
        )
    if x.dim() != 2:
        raise ValueError(f"x.shape={tuple(x.shape)} must be 2-D [M, K]; reshape with x.reshape(-1, x.shape[-1])")
    M, K = x.shape
    if K == 0:
        raise ValueError(f"x.shape={tuple(x.shape)} has K=0: a row needs at least one element to have a scale")
    if M > 0 and K > 1 and x.stride(1) != 1:  # an empty x is never read: any strides will do
        raise ValueError(
            f"x.stride()={tuple(x.stride())} must have unit stride along K (x.stride(1) == 1); "
            "pass x.contiguous()"
        )
    if M > 1 and x.stride(0) < K:
        raise ValueError(
            f"x.stride()={tuple(x.stride())} has rows overlapping (x.stride(0) < K={K}); pass x.contiguous()"
        )
    return M, K


def _check_quant_dtype(quant_dtype) -> None:
    if not isinstance(quant_dtype, torch.dtype) or quant_dtype not in QUANT_DTYPES:
        shown = _dtype_name(quant_dtype) if isinstance(quant_dtype, torch.dtype) else repr(quant_dtype)
        raise TypeError(
            f"quant_dtype={shown} is not supported (allowed: {_names(QUANT_DTYPES)}); "
            "pass e.g. torch.float8_e4m3fn"
        )


def _check_pow2(config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
            shown = triton.next_power_of_2(value) if isinstance(value, int) and value > 0 else 1
            raise ValueError(
                f"config.{name}={value!r} must be a power of two >= 1 (allowed: 1, 2, 4, 8, ...); "
                f"round it to {shown}"
            )


def _check_config(config, cls, pow2_fields: tuple[str, ...]) -> None:
    if not isinstance(config, cls):
        raise TypeError(
            f"config must be a {cls.__name__} or None, got {type(config).__name__}; "
            f"build one with {cls.__name__}(...) or default_config(...)"
        )
    _check_pow2(config, pow2_fields + ("num_warps",))
    if config.num_warps > 32:
        raise ValueError(f"config.num_warps={config.num_warps} is too large (allowed: 1 to 32); use 4")
    if hasattr(config, "sw_fp8") and not isinstance(config.sw_fp8, bool):
        raise TypeError(f"config.sw_fp8={config.sw_fp8!r} must be a bool; pass True or False")


def _check_device(x: torch.Tensor, *others) -> None:
    for name, t in others:
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move {name} to {x.device}")


def _check_launchable(x: torch.Tensor) -> None:
    """Launch-time only (fake tensors skip it): can Triton run on x's device?"""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if x.device.type == "cpu" and not interpreting:
        raise ValueError(
            "x is on cpu but Triton is compiling for a GPU (TRITON_INTERPRET is not 1); move x to the GPU, "
            "or set TRITON_INTERPRET=1 before importing the kernels to run them interpreted"
        )
    if x.device.type not in ("cpu", "cuda", "xpu"):
        raise ValueError(f"x is on {x.device}, where Triton cannot run (allowed: cuda, xpu, or cpu interpreted)")


def _check_encode(quant_dtype: torch.dtype, config, device) -> int:
    if quant_dtype == torch.int8:
        return _ENC_INT
    if config.sw_fp8:
        return _ENC_FLOAT_SW
    if torch.device(device).type != "cpu" and not hardware_fp8_conversion(quant_dtype, device):
        raise ValueError(
            f"quant_dtype={_dtype_name(quant_dtype)} has no hardware float32 conversion on {device} "
            "(config.sw_fp8=False); pass a config with sw_fp8=True, or config=None for the default"
        )
    return _ENC_FLOAT_HW


def _elem_constexprs(params: _ElemParams) -> dict:
    return dict(QMAX=params.qmax, QMIN=params.qmin, MBITS=params.mbits, EMIN=params.emin, SIGN_BIT=params.sign_bit,
                NEG_ZERO=params.neg_zero)


def check_per_token_quant(x, quant_dtype, *, scale_ub=None) -> tuple[int, int]:
    """Raise what :func:`per_token_quant` raises for these arguments (metadata only: works on fake
    and meta tensors); returns (M, K)."""
    M, K = _check_x(x)
    _check_quant_dtype(quant_dtype)
    if scale_ub is not None:
        if isinstance(scale_ub, torch.Tensor):
            if scale_ub.dtype != torch.float32 or scale_ub.numel() != 1:
                raise ValueError(
                    f"scale_ub must be a one-element float32 tensor or a float, got dtype "
                    f"{_dtype_name(scale_ub.dtype)} shape {tuple(scale_ub.shape)}; pass e.g. torch.tensor([1200.0])"
                )
            _check_device(x, ("scale_ub", scale_ub))
        elif isinstance(scale_ub, bool) or not isinstance(scale_ub, (int, float)):
            raise TypeError(f"scale_ub={scale_ub!r} must be a float, a one-element float32 tensor or None")
        elif not (math.isfinite(scale_ub) and scale_ub > 0):
            raise ValueError(f"scale_ub={scale_ub!r} must be a finite positive float (an amax bound); pass e.g. 1200.0")
    return M, K


def check_static_quant(x, scale, quant_dtype) -> tuple[int, int]:
    """Raise what :func:`static_quant` raises (metadata only); returns (M, K)."""
    M, K = _check_x(x)
    _require_tensor("scale", scale)
    _check_quant_dtype(quant_dtype)
    if scale.dtype != torch.float32 or scale.numel() != 1 or scale.dim() > 1:
        raise ValueError(
            f"scale must be a float32 scalar tensor of shape [] or [1], got dtype {_dtype_name(scale.dtype)} "
            f"shape {tuple(scale.shape)}; pass e.g. torch.tensor([0.05], dtype=torch.float32)"
        )
    _check_device(x, ("scale", scale))
    return M, K


def check_per_token_group_quant(x, group_size, quant_dtype) -> tuple[int, int, int]:
    """Raise what :func:`per_token_group_quant` raises (metadata only); returns (M, K, K // G)."""
    M, K = _check_x(x)
    _check_quant_dtype(quant_dtype)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in GROUP_SIZES:
        raise ValueError(
            f"group_size={group_size!r} is not supported (allowed: {', '.join(map(str, GROUP_SIZES))}); "
            "pick one of them"
        )
    if K % group_size:
        allowed = [g for g in GROUP_SIZES if K % g == 0]
        raise ValueError(
            f"group_size={group_size} must divide K={K} (allowed for this K: "
            f"{', '.join(map(str, allowed)) or 'none'}); pad K to a multiple of {group_size}"
        )
    return M, K, K // group_size


def _check_mx_fmt(fmt) -> str:
    if not isinstance(fmt, str) or fmt not in MX_ELEMENTS:
        raise ValueError(
            f"fmt={fmt!r} is not an MX format (allowed: {', '.join(map(repr, MX_FORMATS))}); "
            "'mxfp4' is e2m1, 'mxfp6_*' and 'mxfp8_*' name their element's exponent/mantissa bits"
        )
    return fmt


def check_mx_quant(x, scale_rule="floor", fmt="mxfp4") -> tuple[int, int]:
    """Raise what :func:`mx_quant` raises (metadata only); returns (M, K)."""
    M, K = _check_x(x)
    _check_mx_fmt(fmt)
    if not isinstance(scale_rule, str) or scale_rule not in SCALE_RULES:
        raise ValueError(
            f"scale_rule={scale_rule!r} is not known (allowed: {', '.join(map(repr, SCALE_RULES))}); "
            "'floor' is OCP MX v1.0 §6.3, 'rceil' rounds the scale up"
        )
    if K % MX_BLOCK:
        raise ValueError(f"K={K} must be a multiple of {MX_BLOCK} (one E8M0 scale per {MX_BLOCK} elements); pad K")
    return M, K


def mx_codes_shape(M: int, K: int, fmt: str) -> tuple[int, int]:
    """Shape of :func:`mx_quant`'s codes: ``[M, K/2]`` for MXFP4 (packed), else ``[M, K]``."""
    return (M, K // 2) if _check_mx_fmt(fmt) in MX_PACKED else (M, K)


def check_nvfp4_quant(x, global_scale) -> tuple[int, int]:
    """Raise what :func:`nvfp4_quant` raises (metadata only: the scale's value is checked at
    launch); returns (M, K)."""
    M, K = _check_x(x)
    _require_tensor("global_scale", global_scale)
    if global_scale.dtype != torch.float32 or global_scale.numel() != 1 or global_scale.dim() > 1:
        raise ValueError(
            f"global_scale must be a float32 tensor of shape [] or [1], got dtype {_dtype_name(global_scale.dtype)} "
            f"shape {tuple(global_scale.shape)}; pass e.g. torch.tensor([amax / (6 * 448)], dtype=torch.float32)"
        )
    _check_device(x, ("global_scale", global_scale))
    if K % NVFP4_BLOCK:
        raise ValueError(
            f"K={K} must be a multiple of {NVFP4_BLOCK} (one E4M3 scale per {NVFP4_BLOCK} elements); pad K"
        )
    return M, K


# ------------------------------------------------------------------------------------ launchers


def per_token_quant(x: torch.Tensor, quant_dtype: torch.dtype, *, scale_ub=None,
                    config: TileConfig | None = None, kernel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of ``x[M, K]``.

    Returns ``codes [M, K]`` (dtype ``quant_dtype``) and ``scales [M, 1]`` float32 with
    ``scale = max(min(amax_row, scale_ub), 1e-10) / qmax`` and ``codes = RNE(x / scale)``
    saturated (module docstring). scale_ub: None, a positive float, or a one-element float32
    tensor on x's device (read by the kernel, no host sync).
    """
    M, K = check_per_token_quant(x, quant_dtype, scale_ub=scale_ub)
    if config is None:
        config = default_config("per_token_quant", M, K, quant_dtype=quant_dtype, device=x.device)
    _check_config(config, TileConfig, ("block_m", "block_k"))
    codes = torch.empty((M, K), dtype=quant_dtype, device=x.device)
    scales = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M == 0:
        return codes, scales
    _check_launchable(x)
    encode = _check_encode(quant_dtype, config, x.device)
    params = _elem_params(_dtype_name(quant_dtype))
    target = codes.view(torch.uint8) if encode == _ENC_FLOAT_SW else codes
    if scale_ub is None:
        ub_mode, ub_scale, ub_arg = 0, 1.0, scales
    elif isinstance(scale_ub, torch.Tensor):
        ub_mode, ub_scale, ub_arg = 2, 1.0, scale_ub
    else:
        ub_mode, ub_scale, ub_arg = 1, _f32_div(scale_ub, params.qmax), scales
    (kernel or _per_token_quant_kernel)[(triton.cdiv(M, config.block_m),)](
        x, target, scales, ub_arg,
        M, K,
        x.stride(0), x.stride(1), target.stride(0), target.stride(1), scales.stride(0),
        _f32_div(DEFAULT_AMAX_FLOOR, params.qmax), ub_scale,
        UB_MODE=ub_mode, ENCODE=encode, **_elem_constexprs(params),
        BLOCK_M=config.block_m, BLOCK_K=config.block_k,
        num_warps=config.num_warps,
    )
    return codes, scales


def static_quant(x: torch.Tensor, scale: torch.Tensor, quant_dtype: torch.dtype, *,
                 config: TileConfig | None = None, kernel=None) -> torch.Tensor:
    """Per-tensor quantization with a given scale: ``codes = RNE(x / scale)`` saturated, ``[M, K]``
    in ``quant_dtype``. scale: a float32 tensor of shape [] or [1] on x's device holding a finite
    positive value (checked on the host: one sync)."""
    M, K = check_static_quant(x, scale, quant_dtype)
    if config is None:
        config = default_config("static_quant", M, K, quant_dtype=quant_dtype, device=x.device)
    _check_config(config, TileConfig, ("block_m", "block_k"))
    codes = torch.empty((M, K), dtype=quant_dtype, device=x.device)
    if M == 0:
        return codes
    value = float(scale.reshape(()).item())
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale holds {value!r}; a quantization scale must be finite and > 0")
    _check_launchable(x)
    encode = _check_encode(quant_dtype, config, x.device)
    params = _elem_params(_dtype_name(quant_dtype))
    target = codes.view(torch.uint8) if encode == _ENC_FLOAT_SW else codes
    grid = (triton.cdiv(M, config.block_m), triton.cdiv(K, config.block_k))
    (kernel or _static_quant_kernel)[grid](
        x, target, scale,
        M, K,
        x.stride(0), x.stride(1), target.stride(0), target.stride(1),
        ENCODE=encode, **_elem_constexprs(params),
        BLOCK_M=config.block_m, BLOCK_K=config.block_k,
        num_warps=config.num_warps,
    )
    return codes


def group_scales_empty(M: int, groups: int, column_major: bool, device) -> torch.Tensor:
    """An uninitialised ``[M, groups]`` float32 scale tensor, row-major, or column-major (a
    ``.t()`` view of a contiguous ``[groups, M]`` tensor, as DeepGEMM-style GEMMs read it)."""
    if column_major:
        return torch.empty((groups, M), dtype=torch.float32, device=device).t()
    return torch.empty((M, groups), dtype=torch.float32, device=device)


def per_token_group_quant(x: torch.Tensor, group_size: int, quant_dtype: torch.dtype, *,
                          column_major_scales: bool = False, scale_ue8m0: bool = False,
                          config: GroupConfig | None = None, kernel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group quantization: groups of ``group_size`` (32, 64, 128) consecutive elements
    along K. Returns ``codes [M, K]`` (quant_dtype) and ``scales [M, K/G]`` float32,
    ``scale = max(amax_group, 1e-10) / qmax``, rounded up to a power of two when scale_ue8m0.
    column_major_scales: the scales' storage is ``[K/G, M]`` (strides ``(1, M)``)."""
    M, K, groups = check_per_token_group_quant(x, group_size, quant_dtype)
    for name, flag in (("column_major_scales", column_major_scales), ("scale_ue8m0", scale_ue8m0)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}={flag!r} must be a bool; pass True or False")
    if config is None:
        config = default_config("per_token_group_quant", M, K, quant_dtype=quant_dtype, group_size=group_size,
                                device=x.device)
    _check_config(config, GroupConfig, ("block_m", "block_g"))
    codes = torch.empty((M, K), dtype=quant_dtype, device=x.device)
    scales = group_scales_empty(M, groups, column_major_scales, x.device)
    if M == 0:
        return codes, scales
    _check_launchable(x)
    encode = _check_encode(quant_dtype, config, x.device)
    params = _elem_params(_dtype_name(quant_dtype))
    q_exp, q_mant = _f32_fields(params.qmax)
    target = codes.view(torch.uint8) if encode == _ENC_FLOAT_SW else codes
    grid = (triton.cdiv(M, config.block_m), triton.cdiv(groups, config.block_g))
    (kernel or _per_token_group_quant_kernel)[grid](
        x, target, scales,
        M, groups,
        x.stride(0), x.stride(1), target.stride(0), target.stride(1), scales.stride(0), scales.stride(1),
        _f32_div(DEFAULT_AMAX_FLOOR, params.qmax),
        FLOOR_EXP=_ceil_log2(DEFAULT_AMAX_FLOOR / params.qmax), Q_EXP=q_exp, Q_MANT=q_mant, UE8M0=scale_ue8m0,
        ENCODE=encode, **_elem_constexprs(params),
        GROUP=group_size, BLOCK_M=config.block_m, BLOCK_G=config.block_g,
        num_warps=config.num_warps,
    )
    return codes, scales


def mx_quant(x: torch.Tensor, *, fmt: str = "mxfp4", scale_rule: str = "floor",
             config: MXConfig | None = None, kernel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """MX quantization of ``x[M, K]`` (K a multiple of 32) into ``fmt``: "mxfp4" (e2m1),
    "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3" or "mxfp8_e5m2" (``MX_ELEMENTS``).

    Returns ``codes`` and ``scales [M, K/32]`` uint8 E8M0 codes (value ``2**(code - 127)``).
    codes: mxfp4 ``[M, K/2]`` uint8 (two e2m1 codes per byte, low nibble = even k); every other
    format ``[M, K]`` uint8, one bit pattern per byte (FP6 in the low 6 bits; FP8 readable as
    values with ``codes.view(torch.float8_e4m3fn)`` / ``float8_e5m2``). scale_rule: ``"floor"``
    (OCP MX v1.0 §6.3) or ``"rceil"`` (module docstring)."""
    M, K = check_mx_quant(x, scale_rule, fmt)
    config = default_config("mx_quant", M, K, device=x.device) if config is None else config
    _check_config(config, MXConfig, ("block_m", "block_g"))
    groups = K // MX_BLOCK
    codes = torch.empty(mx_codes_shape(M, K, fmt), dtype=torch.uint8, device=x.device)
    scales = torch.empty((M, groups), dtype=torch.uint8, device=x.device)
    if M == 0:
        return codes, scales
    _check_launchable(x)
    params = _elem_params(MX_ELEMENTS[fmt])
    q_exp, q_mant = _f32_fields(params.qmax)
    grid = (triton.cdiv(M, config.block_m), triton.cdiv(groups, config.block_g))
    (kernel or _mx_quant_kernel)[grid](
        x, codes, scales,
        M, groups,
        x.stride(0), x.stride(1), codes.stride(0), codes.stride(1), scales.stride(0), scales.stride(1),
        RCEIL=scale_rule == "rceil", Q_EXP=q_exp, Q_MANT=q_mant, **_elem_constexprs(params),
        PACKED=fmt in MX_PACKED, BLOCK_M=config.block_m, BLOCK_G=config.block_g,
        num_warps=config.num_warps,
    )
    return codes, scales


def nvfp4_quant(x: torch.Tensor, global_scale: torch.Tensor, *, config: NVFP4Config | None = None,
                kernel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 quantization of ``x[M, K]`` (K a multiple of 16).

    global_scale: a float32 tensor of shape [] or [1] on x's device holding the *dequantization*
    multiplier g > 0 (values ~ e2m1(code) * E4M3(scale) * g; the usual choice is
    ``amax(x) / (6 * 448)``; a kernel API taking the quantization-side ``6 * 448 / amax`` gets
    its reciprocal). Its value is checked on the host (one sync).

    Returns ``packed [M, K/2]`` uint8 (two e2m1 codes per byte, low nibble = even k) and
    ``scales [M, K/16]`` uint8 E4M3 codes (``scales.view(torch.float8_e4m3fn)`` gives the
    values), ``scale = E4M3(amax_block / (6 g))`` rounded to nearest even and saturated at 448,
    codes ``e2m1(x / (scale * g))`` rounded to nearest even and saturated at ±6; a block whose
    scale is 0 gets codes ±0 (module docstring)."""
    M, K = check_nvfp4_quant(x, global_scale)
    config = default_config("nvfp4_quant", M, K, device=x.device) if config is None else config
    _check_config(config, NVFP4Config, ("block_m", "block_g"))
    groups = K // NVFP4_BLOCK
    packed = torch.empty((M, K // 2), dtype=torch.uint8, device=x.device)
    scales = torch.empty((M, groups), dtype=torch.uint8, device=x.device)
    if M == 0:
        return packed, scales
    value = float(global_scale.reshape(()).item())
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"global_scale holds {value!r}; NVFP4's global scale (a dequantization multiplier) must be finite "
            "and > 0; for an all-zero tensor pass 1.0"
        )
    _check_launchable(x)
    elem, scale_fmt = _elem_params(NVFP4_ELEM), _elem_params(NVFP4_SCALE)
    grid = (triton.cdiv(M, config.block_m), triton.cdiv(groups, config.block_g))
    (kernel or _nvfp4_quant_kernel)[grid](
        x, packed, scales, global_scale,
        M, groups,
        x.stride(0), x.stride(1), packed.stride(0), packed.stride(1), scales.stride(0), scales.stride(1),
        **_elem_constexprs(elem),
        S_QMAX=scale_fmt.qmax, S_MBITS=scale_fmt.mbits, S_EMIN=scale_fmt.emin, S_SIGN_BIT=scale_fmt.sign_bit,
        S_NEG_ZERO=scale_fmt.neg_zero, S_MIN_SUBNORMAL=scale_fmt.min_subnormal,
        BLOCK_M=config.block_m, BLOCK_G=config.block_g,
        num_warps=config.num_warps,
    )
    return packed, scales
