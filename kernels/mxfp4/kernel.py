"""MXFP4 GEMM: ``out[M, N] = act[M, K] @ dequant(W)[K, N] (+ bias[N])`` with OCP MX FP4 weights.

Formats (OCP Microscaling Formats (MX) v1.0; the records are ``oracle.formats.FORMATS``):

- elements: e2m1 (``float4_e2m1fn``, §5.3): 4-bit codes ``s.ee.m``, values ±{0, 0.5, 1, 1.5,
  2, 3, 4, 6}; no inf, no NaN.
- scales: E8M0 (``float8_e8m0fnu``, §5.4.1): one unsigned byte per block of 32 consecutive
  elements along K; code c means ``2**(c - 127)`` (c = 0 is 2**-127), code 255 is NaN.

Storage (the records of ``oracle.schemes.get_scheme("mxfp4")`` / ``oracle.packing``, read as data):

- ``w``: uint8 ``[K // 2, N]`` (``WEIGHT_PACKING`` = ``NIBBLES_K_WEIGHT``): byte ``w[r, n]`` holds
  e2m1 codes of k = 2*r in its low nibble (bits 0..3) and k = 2*r + 1 in its high nibble (4..7).
- ``w_scale``: uint8 (or ``torch.float8_e8m0fnu``) ``[K // 32, N]``: ``w_scale[g, n]`` scales
  k in ``[32*g, 32*g + 32)`` of column n.
- W4A4 activations ``a``: uint8 ``[M, K // 2]`` (``ACT_PACKING`` = ``NIBBLES_K_ACTIVATION``): byte
  ``a[m, r]`` holds k = 2*r (low nibble) and k = 2*r + 1 (high nibble); ``a_scale`` uint8 (or
  float8_e8m0fnu) ``[M, K // 32]``.
- W4A16 activations ``x``: float16 / bfloat16 ``[M, K]``.

Dequantization, per element: ``w[k, n] = e2m1(code[k, n]) * 2**(w_scale[k // 32, n] - 127)``
(the same for ``a[m, k]`` with ``a_scale[m, k // 32]``). K must be a multiple of 32.

Computation (default, ``config.dot_scaled == 0``; runs on every Triton target): each K tile of
the packed operands is decoded in-kernel -- the e2m1 code into its exact float32 value by bit
construction, the E8M0 code into the float32 ``2**(c - 127)`` by placing c in the float32
exponent field (c = 0: the float32 subnormal 2**-127; c = 255: NaN) -- multiplied in float32,
rounded (RNE) to the compute dtype and fed to ``tl.dot`` with float32 accumulation. The scale of
every k is loaded (scale row ``k // 32``), so BLOCK_K may be any multiple of 32: a K tile spans
``BLOCK_K // 32`` scale blocks. The compute dtype is the activation dtype for W4A16 and
``compute_dtype`` (default bfloat16) for W4A4.

Range of the decoded operands (what the compute dtype can hold):

- float16: the decoded value is ``RNE_fp16(e2m1 * 2**(c - 127))`` for every code: magnitudes
  >= 65520 become ±inf (e.g. 4 * 2**14), magnitudes below 2**-14 become fp16 subnormals with RNE
  (1.5 * 2**-24 -> 2**-23) or ±0 (0.5 * 2**-24 -> 0). The float32 product is exact wherever that
  matters (a float32 overflow or subnormal flush only happens far outside fp16's range, where the
  fp16 result is ±inf / ±0 anyway). Every element is held exactly for c in [104, 140] (as fp16
  normals for c in [114, 140]); bfloat16 (the W4A4 default) has no such limit.
- bfloat16: e2m1 * 2**(c - 127) has at most 2 significant bits, so it is exact in bf16 whenever
  the float32 product is; products >= 2**128 overflow to ±inf (bf16 cannot hold them either).
  Products below 2**-126 (c <= 2) are float32 subnormals and rely on the device keeping them.
- NaN scales (c = 255) make all 32 elements of their block NaN (even code 0), so every output
  that reduces over that block is NaN.

With ``config.dot_scaled == 1`` (W4A4 only) the packed codes and E8M0 scales go to
``tl.dot_scaled`` (the MX dot: native on GPUs with MX tensor cores, emulated by Triton
elsewhere, which upcasts to bf16); ``compute_dtype`` must then be None.

Bias (``[N]``, fp16/bf16/fp32) is added in float32 and the result is stored in ``out_dtype``. With
``split_k > 1`` each split writes a float32 partial into a ``[split_k, M, N]`` workspace that the
launcher reduces with a deterministic ``sum`` before adding bias and casting.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qkcheck.kernels.triton.arguments import dtype_name as _dtype_name, dtype_names as _names, require_tensor as _require_tensor
from qkcheck.kernels.triton.config import ListConfig
from qkcheck.kernels.triton.tiles import output_tile, split_k_tiles
from qkcheck.oracle.formats import FORMATS, FloatFormat, Specials
from qkcheck.oracle.packing import NIBBLES_K_ACTIVATION, Packing
from qkcheck.oracle.schemes import get_scheme

__all__ = [
    "ACT_PACKING",
    "MXFP4Config",
    "SCALE_BLOCK",
    "WEIGHT_PACKING",
    "check_arguments",
    "default_config",
    "mxfp4_gemm",
]

_SCHEME = get_scheme("mxfp4")
WEIGHT_PACKING: Packing = _SCHEME.packing  # uint8 [K // 2, N], two codes per byte along K
ACT_PACKING: Packing = NIBBLES_K_ACTIVATION  # uint8 [M, K // 2], two codes per byte along K
SCALE_BLOCK: int = _SCHEME.group_size  # 32 elements along K share one E8M0 scale
_ELEM: FloatFormat = FORMATS[_SCHEME.elem]
_SCALE: FloatFormat = FORMATS[_SCHEME.scale_format]

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
COMPUTE_DTYPES = (torch.float16, torch.bfloat16)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SCALE_DTYPES = (torch.uint8, torch.float8_e8m0fnu)
DEFAULT_W4A4_COMPUTE = torch.bfloat16  # holds e2m1 * 2**(c - 127) for every normal float32 result
MIN_DOT_BLOCK = 16  # tl.dot needs every tile dimension >= 16
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _low_nibble_element(packing: Packing, name: str, k_axis: int) -> int:
    """Which of a byte's two consecutive k the low nibble holds (0: the even one), checking that
    ``packing`` is two 4-bit codes per uint8 along ``k_axis`` (the only storage the kernel reads)."""
    if packing.container != "uint8" or packing.bits != 4 or packing.axis % 2 != k_axis:
        raise RuntimeError(
            f"{name}={packing} is not two 4-bit codes per uint8 along axis {k_axis}; "
            "the MXFP4 kernel reads only that storage"
        )
    return packing.field_order[0]


def _check_formats() -> None:
    """The decoders below are written for a signed, finite, subnormal-carrying element format
    and for a scale format that is a bare float32 exponent field; check the records say so."""
    if not (_ELEM.signed and _ELEM.subnormals and _ELEM.specials is Specials.FINITE and _ELEM.bits == 4):
        raise RuntimeError(f"{_ELEM.name} is not a signed finite 4-bit format with subnormals; the decoder needs one")
    if not (_SCALE.exponent_bits == 8 and _SCALE.mantissa_bits == 0 and not _SCALE.signed
            and _SCALE.bias == 127 and _SCALE.specials is Specials.FN):
        raise RuntimeError(f"{_SCALE.name} is not an unsigned 8-bit exponent with bias 127 and a NaN code")


_check_formats()
W_LOW_ELEMENT = _low_nibble_element(WEIGHT_PACKING, "WEIGHT_PACKING", 0)
A_LOW_ELEMENT = _low_nibble_element(ACT_PACKING, "ACT_PACKING", 1)
SCALE_NAN_CODE = _SCALE.num_codes - 1  # 0xFF
ELEM_SUBNORMAL_UNIT = 2.0 ** (1 - _ELEM.bias - _ELEM.mantissa_bits)  # 0.5 for e2m1
SCALE_NEUTRAL_CODE = _SCALE.bias  # 2**0: what masked-off scale loads read


@dataclass(frozen=True)
class MXFP4Config(ListConfig):
    """Tunables of one launch; each maps to a kernel constexpr (or the grid / launch options).

    block_m/n: tile sizes (powers of two >= 16). block_k: a power of two and a multiple of the
    32-element scale block (32, 64, 128, ...); a tile spans block_k // 32 scale blocks.
    split_k: number of K splits reduced in float32 by the launcher (1 = no workspace).
    group_m: program-id swizzle; GROUP_M consecutive M tiles are visited per N column.
    dot_scaled: 0 = decode to the compute dtype + ``tl.dot`` (default, every target);
    1 = ``tl.dot_scaled`` on the packed codes (W4A4 only).
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2
    dot_scaled: int = 0

# (largest M, config) -- first row whose bound is >= M wins; the last row has no bound.
_TILE_TABLE: tuple[tuple[int | None, MXFP4Config], ...] = (
    (16, MXFP4Config(block_m=16, block_n=64, block_k=128, group_m=8, num_warps=4, num_stages=2)),
    (64, MXFP4Config(block_m=32, block_n=64, block_k=128, group_m=8, num_warps=4, num_stages=3)),
    (256, MXFP4Config(block_m=64, block_n=128, block_k=64, group_m=8, num_warps=4, num_stages=3)),
    (None, MXFP4Config(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=3)),
)


def _next_pow2_at_least(n: int, floor: int) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def default_config(M: int, N: int, K: int) -> MXFP4Config:
    """A tile config from a small table keyed by M, with blocks clamped to the problem size
    (block_k never below the 32-element scale block)."""
    config = next(cfg for bound, cfg in _TILE_TABLE if bound is None or M <= bound)
    return dataclasses.replace(
        config,
        block_m=min(config.block_m, _next_pow2_at_least(M, MIN_DOT_BLOCK)),
        block_n=min(config.block_n, _next_pow2_at_least(N, MIN_DOT_BLOCK)),
        block_k=min(config.block_k, _next_pow2_at_least(K, SCALE_BLOCK)),
    )


# ------------------------------------------------------------------------------------------ kernel


@triton.jit
def _e2m1_to_f32(code, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr,
                 SUBNORMAL_UNIT: tl.constexpr):
    """int32 e2m1 codes -> their exact float32 values (sign | exponent | mantissa, no specials)."""
    sign = (code >> (EXP_BITS + MAN_BITS)) & 1
    exp = (code >> MAN_BITS) & ((1 << EXP_BITS) - 1)
    man = code & ((1 << MAN_BITS) - 1)
    # normal: 2**(exp - BIAS) * (1 + man / 2**MAN_BITS) -> float32 fields (exp - BIAS + 127, man)
    normal = (((exp + (127 - BIAS)) << 23) | (man << (23 - MAN_BITS))).to(tl.float32, bitcast=True)
    # exponent field 0: man * 2**(1 - BIAS - MAN_BITS), an integer times a power of two (exact)
    subnormal = man.to(tl.float32) * SUBNORMAL_UNIT
    magnitude = tl.where(exp == 0, subnormal, normal)
    return tl.where(sign == 1, -magnitude, magnitude)


@triton.jit
def _e8m0_to_f32(code, NAN_CODE: tl.constexpr):
    """int32 E8M0 codes -> float32 ``2**(code - 127)``: the code is the float32 exponent field;
    code 0 is the float32 subnormal 2**-127 (bits 0x00400000), NAN_CODE is a quiet NaN."""
    bits = tl.where(code == 0, 0x00400000, code << 23)
    bits = tl.where(code == NAN_CODE, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _decode_pair(bytes_, scale, COMPUTE: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                 BIAS: tl.constexpr, SUBNORMAL_UNIT: tl.constexpr):
    """Both nibbles of a byte tile, each times its (broadcast float32) scale, in COMPUTE."""
    b = bytes_.to(tl.int32)
    lo = (_e2m1_to_f32(b & 0xF, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT) * scale).to(COMPUTE)
    hi = (_e2m1_to_f32((b >> 4) & 0xF, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT) * scale).to(COMPUTE)
    return lo, hi


@triton.jit
def _dequant_weight_tile(w_bytes, w_scale_codes, HALF_K: tl.constexpr, GROUPS_K: tl.constexpr,
                         BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr, LOW_ELEMENT: tl.constexpr,
                         NAN_CODE: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                         BIAS: tl.constexpr, SUBNORMAL_UNIT: tl.constexpr):
    """w_bytes uint8 [HALF_K, BLOCK_N] (byte r: k = 2r, 2r + 1) and w_scale_codes [GROUPS_K, BLOCK_N]
    -> the dequantized [2 * HALF_K, BLOCK_N] tile in COMPUTE. Byte rows r of one scale block are
    the HALF_K // GROUPS_K consecutive rows sharing ``r // (HALF_K // GROUPS_K)``."""
    s = _e8m0_to_f32(w_scale_codes.to(tl.int32), NAN_CODE)
    s = tl.reshape(tl.broadcast_to(s[:, None, :], (GROUPS_K, HALF_K // GROUPS_K, BLOCK_N)), (HALF_K, BLOCK_N))
    lo, hi = _decode_pair(w_bytes, s, COMPUTE, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT)
    if LOW_ELEMENT == 0:
        pair = tl.join(lo, hi)  # [HALF_K, BLOCK_N, 2]
    else:
        pair = tl.join(hi, lo)
    return tl.reshape(tl.permute(pair, (0, 2, 1)), (2 * HALF_K, BLOCK_N))


@triton.jit
def _dequant_act_tile(a_bytes, a_scale_codes, BLOCK_M: tl.constexpr, HALF_K: tl.constexpr,
                      GROUPS_K: tl.constexpr, COMPUTE: tl.constexpr, LOW_ELEMENT: tl.constexpr,
                      NAN_CODE: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                      BIAS: tl.constexpr, SUBNORMAL_UNIT: tl.constexpr):
    """a_bytes uint8 [BLOCK_M, HALF_K] and a_scale_codes [BLOCK_M, GROUPS_K] -> the dequantized
    [BLOCK_M, 2 * HALF_K] tile in COMPUTE."""
    s = _e8m0_to_f32(a_scale_codes.to(tl.int32), NAN_CODE)
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_M, GROUPS_K, HALF_K // GROUPS_K)), (BLOCK_M, HALF_K))
    lo, hi = _decode_pair(a_bytes, s, COMPUTE, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT)
    if LOW_ELEMENT == 0:
        pair = tl.join(lo, hi)  # [BLOCK_M, HALF_K, 2]
    else:
        pair = tl.join(hi, lo)
    return tl.reshape(pair, (BLOCK_M, 2 * HALF_K))


@triton.jit
def _mxfp4_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_asm, stride_asg,
    stride_wr, stride_wn,
    stride_wsg, stride_wsn,
    stride_os, stride_om, stride_on,
    ACT_MX: tl.constexpr, DOT_SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr,
    W_LOW_ELEMENT: tl.constexpr, A_LOW_ELEMENT: tl.constexpr,
    SCALE_BLOCK: tl.constexpr, NAN_CODE: tl.constexpr, NEUTRAL_CODE: tl.constexpr,
    EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SUBNORMAL_UNIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_k = tl.program_id(1)
    _, _, offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    HALF_K: tl.constexpr = BLOCK_K // 2  # packed bytes per K tile
    GROUPS_K: tl.constexpr = BLOCK_K // SCALE_BLOCK  # scale blocks per K tile

    # this split's contiguous run of K tiles
    tile_begin, tile_end = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(tile_begin, tile_end):
        # K is a multiple of SCALE_BLOCK (checked by the launcher), so whole bytes and whole
        # scale blocks are either in range or not
        offs_r = tile * HALF_K + tl.arange(0, HALF_K)
        offs_g = tile * GROUPS_K + tl.arange(0, GROUPS_K)
        mask_r = offs_r < K // 2
        mask_g = offs_g < K // SCALE_BLOCK

        w_bytes = tl.load(
            w_ptr + offs_r[:, None] * stride_wr + offs_n[None, :] * stride_wn,
            mask=mask_r[:, None] & mask_n[None, :], other=0,
        )
        if DOT_SCALED:
            # tl.dot_scaled wants the weight scales as [N, K // 32]
            w_scale_t = tl.load(
                ws_ptr + offs_n[:, None] * stride_wsn + offs_g[None, :] * stride_wsg,
                mask=mask_n[:, None] & mask_g[None, :], other=NEUTRAL_CODE,
            )
            a_bytes = tl.load(
                a_ptr + offs_m[:, None] * stride_am + offs_r[None, :] * stride_ak,
                mask=mask_m[:, None] & mask_r[None, :], other=0,
            )
            a_scale = tl.load(
                as_ptr + offs_m[:, None] * stride_asm + offs_g[None, :] * stride_asg,
                mask=mask_m[:, None] & mask_g[None, :], other=NEUTRAL_CODE,
            )
            acc = tl.dot_scaled(a_bytes, a_scale, "e2m1", w_bytes, w_scale_t, "e2m1", acc=acc,
                                out_dtype=tl.float32)
        else:
            w_scale = tl.load(
                ws_ptr + offs_g[:, None] * stride_wsg + offs_n[None, :] * stride_wsn,
                mask=mask_g[:, None] & mask_n[None, :], other=NEUTRAL_CODE,
            )
            w = _dequant_weight_tile(w_bytes, w_scale, HALF_K, GROUPS_K, BLOCK_N, COMPUTE, W_LOW_ELEMENT,
                                     NAN_CODE, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT)
            if ACT_MX:
                a_bytes = tl.load(
                    a_ptr + offs_m[:, None] * stride_am + offs_r[None, :] * stride_ak,
                    mask=mask_m[:, None] & mask_r[None, :], other=0,
                )
                a_scale = tl.load(
                    as_ptr + offs_m[:, None] * stride_asm + offs_g[None, :] * stride_asg,
                    mask=mask_m[:, None] & mask_g[None, :], other=NEUTRAL_CODE,
                )
                a = _dequant_act_tile(a_bytes, a_scale, BLOCK_M, HALF_K, GROUPS_K, COMPUTE, A_LOW_ELEMENT,
                                      NAN_CODE, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT)
            else:
                offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
                a = tl.load(
                    a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0,
                )
            acc = tl.dot(a, w, acc=acc, out_dtype=tl.float32)

    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + b[None, :]

    out_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# -------------------------------------------------------------------------------------- validation


def _validate_config(config: MXFP4Config, act_mx: bool) -> None:
    if not isinstance(config, MXFP4Config):
        raise TypeError(
            f"config must be a MXFP4Config, got {type(config).__name__}; "
            "build one with MXFP4Config(block_m=..., block_n=..., block_k=...)"
        )
    for name in ("block_m", "block_n"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < MIN_DOT_BLOCK or value & (value - 1):
            raise ValueError(
                f"config.{name}={value!r} must be a power of two >= {MIN_DOT_BLOCK} "
                f"(tl.dot needs tiles of at least {MIN_DOT_BLOCK}; allowed: 16, 32, 64, 128, ...); "
                f"round it to {_next_pow2_at_least(value if isinstance(value, int) else 16, MIN_DOT_BLOCK)}"
            )
    bk = config.block_k
    if not isinstance(bk, int) or bk < SCALE_BLOCK or bk % SCALE_BLOCK or bk & (bk - 1):
        raise ValueError(
            f"config.block_k={bk!r} must be a power of two and a multiple of the {SCALE_BLOCK}-element "
            f"MX scale block (allowed: 32, 64, 128, 256, ...; a K tile must hold whole scale blocks); "
            f"use {_next_pow2_at_least(bk if isinstance(bk, int) else SCALE_BLOCK, SCALE_BLOCK)}"
        )
    for name in ("split_k", "group_m", "num_stages"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{name}={value!r} must be an integer >= 1; use 1 for the default")
    if not isinstance(config.num_warps, int) or config.num_warps < 1 or config.num_warps & (config.num_warps - 1):
        raise ValueError(
            f"config.num_warps={config.num_warps!r} must be a power of two (allowed: 1, 2, 4, 8, 16); use 4"
        )
    if config.dot_scaled not in (0, 1) or isinstance(config.dot_scaled, float):
        raise ValueError(
            f"config.dot_scaled={config.dot_scaled!r} must be 0 (decode + tl.dot) or 1 (tl.dot_scaled)"
        )
    if config.dot_scaled and not act_mx:
        raise ValueError(
            "config.dot_scaled=1 needs MXFP4 activations (a_scale given); W4A16 runs only with "
            "dot_scaled=0 (the weights are decoded to the activation dtype)"
        )


def _scale_codes_check(name: str, t: torch.Tensor, expected: tuple[int, int], what: str) -> None:
    if t.dtype not in SCALE_DTYPES:
        raise TypeError(
            f"{name}.dtype={_dtype_name(t.dtype)} is not an E8M0 code dtype (allowed: {_names(SCALE_DTYPES)}); "
            f"pass the raw E8M0 bytes (2**(c - 127)), e.g. {name}.view(torch.uint8), not decoded scale values"
        )
    if tuple(t.shape) != expected:
        raise ValueError(
            f"{name}.shape={tuple(t.shape)} must be {what} = {list(expected)}; "
            f"pass one E8M0 code per {SCALE_BLOCK} elements along K"
        )


def _validate(x_or_a, w, w_scale, a_scale, bias, out_dtype, compute_dtype, config):
    """Check every argument before launch; returns (act_mx, M, N, K, compute_dtype, config)."""
    for name, value in (("x_or_a", x_or_a), ("w", w), ("w_scale", w_scale)):
        _require_tensor(name, value)
    for name, value in (("a_scale", a_scale), ("bias", bias)):
        if value is not None:
            _require_tensor(name, value)

    act_mx = a_scale is not None
    if x_or_a.dim() != 2:
        raise ValueError(
            f"x_or_a.shape={tuple(x_or_a.shape)} must be 2-D ([M, K] activations or [M, K // 2] packed "
            "codes); reshape with .reshape(-1, x_or_a.shape[-1])"
        )
    if act_mx:
        if x_or_a.dtype != torch.uint8:
            raise TypeError(
                f"x_or_a.dtype={_dtype_name(x_or_a.dtype)} with a_scale given: MXFP4 activations are "
                "packed e2m1 codes (allowed: uint8 [M, K // 2]); pass a_scale=None for fp16/bf16 activations"
            )
        M, K = x_or_a.shape[0], 2 * x_or_a.shape[1]
    else:
        if x_or_a.dtype == torch.uint8:
            raise TypeError(
                "x_or_a.dtype=uint8 but a_scale is None: packed e2m1 activations need their E8M0 scales; "
                "pass a_scale=[M, K // 32] codes, or fp16/bf16 activations"
            )
        if x_or_a.dtype not in ACTIVATION_DTYPES:
            raise TypeError(
                f"x_or_a.dtype={_dtype_name(x_or_a.dtype)} is not an activation dtype "
                f"(allowed: {_names(ACTIVATION_DTYPES)}, or uint8 packed e2m1 with a_scale); "
                "cast with x.to(torch.float16)"
            )
        M, K = x_or_a.shape

    devices = {name: t.device for name, t in
               (("x_or_a", x_or_a), ("w", w), ("w_scale", w_scale), ("a_scale", a_scale), ("bias", bias))
               if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"tensors are on different devices ({listing}); move them all to {x_or_a.device}")

    if K % SCALE_BLOCK:
        raise ValueError(
            f"K={K} must be a multiple of {SCALE_BLOCK} (one E8M0 scale per {SCALE_BLOCK} elements along K); "
            f"pad K to {-(-K // SCALE_BLOCK) * SCALE_BLOCK} with zero codes"
        )

    if w.dtype != torch.uint8:
        raise TypeError(
            f"w.dtype={_dtype_name(w.dtype)} is not packed e2m1 (allowed: uint8 [K // 2, N], low nibble = "
            "even k); pack the codes with oracle.packing.pack(codes, WEIGHT_PACKING)"
        )
    if w.dim() != 2 or w.shape[0] != K // 2:
        raise ValueError(
            f"w.shape={tuple(w.shape)} must be [K // 2, N] = [{K // 2}, N] for K={K} "
            "(two e2m1 codes per byte along K); pack along K, not N"
        )
    N = w.shape[1]
    _scale_codes_check("w_scale", w_scale, (K // SCALE_BLOCK, N), "[K // 32, N]")
    if act_mx:
        _scale_codes_check("a_scale", a_scale, (M, K // SCALE_BLOCK), "[M, K // 32]")

    if bias is not None:
        if tuple(bias.shape) != (N,):
            raise ValueError(f"bias.shape={tuple(bias.shape)} must be [N] = [{N}]; pass one bias per output column")
        if bias.dtype not in OUT_DTYPES:
            raise TypeError(
                f"bias.dtype={_dtype_name(bias.dtype)} is not a float dtype (allowed: {_names(OUT_DTYPES)}); "
                "cast with bias.float()"
            )

    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype!r} is not supported (allowed: {_names(OUT_DTYPES)}); pick one of them")

    if config is None:
        config = default_config(M, N, K)
    _validate_config(config, act_mx)

    if config.dot_scaled:
        if compute_dtype is not None:
            raise ValueError(
                f"compute_dtype={compute_dtype!r} with config.dot_scaled=1: tl.dot_scaled computes in "
                "the MX hardware (or Triton's emulation); pass compute_dtype=None"
            )
    elif act_mx:
        if compute_dtype is None:
            compute_dtype = DEFAULT_W4A4_COMPUTE
        elif compute_dtype not in COMPUTE_DTYPES:
            raise TypeError(
                f"compute_dtype={compute_dtype!r} is not a dot dtype (allowed: {_names(COMPUTE_DTYPES)}); "
                "bfloat16 holds every E8M0 scale's range, float16 only 2**-24 .. 65504"
            )
    else:
        if compute_dtype is None:
            compute_dtype = x_or_a.dtype
        elif compute_dtype != x_or_a.dtype:
            raise ValueError(
                f"compute_dtype={compute_dtype!r} differs from the activation dtype {_dtype_name(x_or_a.dtype)}: "
                "W4A16 decodes the weights to the activation dtype; pass compute_dtype=None or cast x"
            )
    return act_mx, M, N, K, compute_dtype, config


def check_arguments(
    x_or_a: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    a_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype,
    compute_dtype: torch.dtype | None = None,
    config: MXFP4Config | None = None,
) -> None:
    """Raise the ValueError / TypeError that :func:`mxfp4_gemm` would raise for these arguments
    (metadata only: works on fake and meta tensors)."""
    _validate(x_or_a, w, w_scale, a_scale, bias, out_dtype, compute_dtype, config)


def _as_codes(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


def mxfp4_gemm(
    x_or_a: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    a_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype,
    compute_dtype: torch.dtype | None = None,
    config: MXFP4Config | None = None,
    kernel=None,
) -> torch.Tensor:
    """``out[M, N] = act[M, K] @ dequant(w, w_scale)[K, N] (+ bias[N])`` (module docstring).

    W4A16 (``a_scale is None``): x_or_a is ``x``, float16/bfloat16 ``[M, K]``.
    W4A4 (``a_scale`` given): x_or_a is ``a``, uint8 ``[M, K // 2]`` packed e2m1 codes (low nibble
    = even k), a_scale E8M0 codes ``[M, K // 32]``.
    w: uint8 ``[K // 2, N]`` packed e2m1 codes (low nibble = even k); w_scale: E8M0 codes
    ``[K // 32, N]`` (uint8 or torch.float8_e8m0fnu). K must be a multiple of 32.
    bias: ``[N]`` float16/bfloat16/float32. out_dtype: float16, bfloat16 or float32.
    compute_dtype: the dot's operand dtype -- W4A16: None or x's dtype; W4A4: float16 or bfloat16
    (default bfloat16); must be None with ``config.dot_scaled=1``.
    config: tile/launch tunables (default ``default_config(M, N, K)``).
    Every argument is validated before launch (ValueError / TypeError naming the argument).
    kernel: the ``@triton.jit`` function launched (default ``_mxfp4_kernel``), so copies with a
    deliberate bug share launch and validation.
    """
    act_mx, M, N, K, compute_dtype, config = _validate(
        x_or_a, w, w_scale, a_scale, bias, out_dtype, compute_dtype, config,
    )
    device = x_or_a.device
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=out_dtype, device=device)
    if K == 0:  # an empty reduction: the sum is 0 (+ bias)
        out = torch.zeros((M, N), dtype=torch.float32, device=device)
        return (out if bias is None else out + bias.float()).to(out_dtype)

    split_k = config.split_k
    if split_k == 1:
        out = torch.empty((M, N), dtype=out_dtype, device=device)
        target = out
        stride_os = 0
    else:
        target = torch.empty((split_k, M, N), dtype=torch.float32, device=device)
        stride_os = target.stride(0)
    stride_om, stride_on = target.stride(-2), target.stride(-1)

    w_scale = _as_codes(w_scale)
    a_scale_arg = _as_codes(a_scale) if act_mx else w_scale  # never read when ACT_MX is False
    as_strides = a_scale_arg.stride() if act_mx else (0, 0)
    fuse_bias = bias is not None and split_k == 1
    bias_arg = bias if fuse_bias else w_scale  # never read when HAS_BIAS is False
    compute = _TL_DTYPES[compute_dtype] if compute_dtype is not None else tl.bfloat16  # unused by dot_scaled

    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n), split_k)
    (kernel or _mxfp4_kernel)[grid](
        x_or_a, a_scale_arg, w, w_scale, bias_arg, target,
        M, N, K,
        x_or_a.stride(0), x_or_a.stride(1),
        as_strides[0], as_strides[1],
        w.stride(0), w.stride(1),
        w_scale.stride(0), w_scale.stride(1),
        stride_os, stride_om, stride_on,
        ACT_MX=act_mx, DOT_SCALED=bool(config.dot_scaled), HAS_BIAS=fuse_bias, COMPUTE=compute,
        W_LOW_ELEMENT=W_LOW_ELEMENT, A_LOW_ELEMENT=A_LOW_ELEMENT,
        SCALE_BLOCK=SCALE_BLOCK, NAN_CODE=SCALE_NAN_CODE, NEUTRAL_CODE=SCALE_NEUTRAL_CODE,
        EXP_BITS=_ELEM.exponent_bits, MAN_BITS=_ELEM.mantissa_bits, BIAS=_ELEM.bias,
        SUBNORMAL_UNIT=ELEM_SUBNORMAL_UNIT,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        GROUP_M=config.group_m, SPLIT_K=split_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if split_k == 1:
        return out
    result = target.sum(dim=0)
    if bias is not None:
        result = result + bias.to(torch.float32)
    return result.to(out_dtype)
