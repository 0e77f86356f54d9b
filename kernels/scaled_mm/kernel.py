"""W8A8 and FP8 GEMMs: ``out[M, N] = dequant(a)[M, K] @ dequant(b)[K, N] (+ bias[N])``.

Three launchers share one tile config, one program-id swizzle, one split-K scheme and one fp8
operand path:

- :func:`scaled_mm` — int8 x int8 (``tl.dot`` accumulating in int32) or fp8 x fp8 (accumulating
  in float32), per-tensor / per-token activation scales, per-tensor / per-channel weight scales,
  optional per-token zero points for asymmetric int8 activations::

      out[m, n] = a_s[m] * b_s[n] * (sum_k a[m, k] * b[k, n]  -  azp[m] * colsum(b)[n])  + bias[n]

  which is ``((a - azp) * a_s) @ (b * b_s) + bias``; ``colsum(b)[n] = sum_k b[k, n]`` is computed
  by the launcher (int32) and the correction is applied once, in the int32 accumulator.
- :func:`block_scaled_mm` — fp8 block quantization: weight scales per ``bk x bn`` block,
  ``b_scale[ceil(K/bk), ceil(N/bn)]``, activation scales per ``1 x bk`` group,
  ``a_scale[M, ceil(K/bk)]`` (any strides: a column-major ``a_scale`` is a ``.t()`` view)::

      out[m, n] = sum_g a_s[m, g] * b_s[g, n // bn] * sum_{k in group g} a[m, k] * b[k, n]  + bias[n]

  A K tile of ``BLOCK_K`` columns is processed as ``BLOCK_K // SUB_K`` sub-tiles of
  ``SUB_K = min(BLOCK_K, bk)`` columns, each lying inside one scale group: each sub-tile's dot
  is scaled with its own group's scales, so BLOCK_K below, equal to or above ``bk`` is correct
  (``bk`` must be a power of two >= 32; ``bn`` may be any positive integer).
- :func:`fp8_w8a16_gemm` — fp16/bf16 activations, fp8 weights with a scale that broadcasts
  against the ``[K, N]`` weight exactly as ``b.float() * b_scale`` does (per-tensor, per output
  channel ``[1, N]`` / ``[N]``, per input row ``[K, 1]``): each weight tile is dequantized
  ``(b * b_s)`` in float32, cast to the activation dtype and multiplied with ``tl.dot``
  accumulating in float32.

Operands: ``a`` ``[M, K]`` and ``b`` ``[K, N]`` are read through their strides, so ``b`` may be a
transposed view ``w.t()`` of a contiguous ``[N, K]`` weight (the usual storage). fp8 dtypes:
``float8_e4m3fn``, ``float8_e4m3fnuz``, ``float8_e5m2`` (a and b the same).

fp8 operand path (``fp8_path``): ``"native"`` loads the fp8 dtype and runs ``tl.dot`` on it;
``"decode"`` loads the raw bytes (a ``uint8`` view), decodes them bit-exactly into float32 from the
format's fields (``oracle.formats``), and runs ``tl.dot`` in float16, which holds every value of
these formats exactly. ``None`` picks native where the device has fp8 dot hardware for the format
(CUDA compute capability >= 8.9 for e4m3fn / e5m2; the CPU interpreter for all three) and decode
elsewhere (e4m3fnuz on NVIDIA GPUs, ROCm, older GPUs).

Scale shapes accepted (float32, float16 or bfloat16; read as float32):
``a_scale``: ``[]``, ``[1]``, ``[1, 1]`` (per-tensor) or ``[M, 1]`` (per-token);
``b_scale`` of :func:`scaled_mm`: ``[]``, ``[1]``, ``[1, 1]`` (per-tensor) or ``[1, N]``, ``[N]``,
``[N, 1]`` (per-channel — ``[N, 1]`` is the ``[N, K]``-weight convention and means the same as
``[1, N]``);
``b_scale`` of :func:`fp8_w8a16_gemm`: broadcast against ``b [K, N]`` like ``b.float() * b_scale``,
a 2-D scale read with its own strides as ``[rows, cols]``: ``[]``, ``[1]``, ``[1, 1]`` per-tensor,
``[1, N]`` or ``[N]`` per output channel, ``[K, 1]`` per input row (``[K, N]`` per element). The
orientation is the caller's: an ``[N, 1]`` checkpoint scale is *not* taken as per-channel — it is
rejected when ``N != K`` and, on a square weight, scales the rows k (what it broadcasts to);
``kernels.scaled_mm.loaders.prepare_weights`` turns checkpoint scales into ``[1, N]``.

Split-K (``config.split_k > 1``): each split writes its scaled float32 partial into a
``[split_k, M, N]`` workspace, reduced by the launcher with a deterministic ``sum`` before bias
and the output cast.
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
from qkcheck.oracle.formats import FloatFormat, Specials, get_format

__all__ = [
    "FP8_DTYPES",
    "ScaledMMConfig",
    "block_scaled_mm",
    "check_block_scaled_mm_arguments",
    "check_fp8_w8a16_arguments",
    "check_scaled_mm_arguments",
    "default_config",
    "default_fp8_path",
    "fp8_w8a16_gemm",
    "scaled_mm",
]

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)
QUANT_DTYPES = (torch.int8,) + FP8_DTYPES
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BIAS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_PATHS = ("native", "decode")
MIN_DOT_BLOCK = 16  # tl.dot needs every tile dimension >= 16
MIN_DOT_K_8BIT = 32  # ... and a K dimension >= 32 on 8-bit (int8 / fp8) operands when compiled

# Specials convention -> the kernel's constexpr code
_SPECIALS_CODE = {Specials.FN: 0, Specials.FNUZ: 1, Specials.IEEE: 2}


# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class ScaledMMConfig(ListConfig):
    """Tunables of one launch; each maps to a kernel constexpr (or the grid / launch options).

    block_m/n/k: tile sizes (powers of two >= 16 for ``tl.dot``; block_k >= 32 for the int8 / fp8
    operand dots of scaled_mm and block_scaled_mm); for block_scaled_mm block_k may be smaller
    than, equal to or larger than the scale block.
    split_k: number of K splits reduced in float32 by the launcher (1 = no workspace).
    group_m: program-id swizzle; GROUP_M consecutive M tiles are visited per N column.
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

# (largest M, config) — first row whose bound is >= M wins; the last row has no bound.
_TILE_TABLE: tuple[tuple[int | None, ScaledMMConfig], ...] = (
    (16, ScaledMMConfig(block_m=16, block_n=64, block_k=128, group_m=8, num_warps=4, num_stages=3)),
    (64, ScaledMMConfig(block_m=32, block_n=64, block_k=128, group_m=8, num_warps=4, num_stages=3)),
    (256, ScaledMMConfig(block_m=64, block_n=128, block_k=128, group_m=8, num_warps=4, num_stages=3)),
    (None, ScaledMMConfig(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=3)),
)


def _next_pow2_at_least_16(n: int) -> int:
    return max(MIN_DOT_BLOCK, triton.next_power_of_2(max(int(n), 1)))


def default_config(M: int, N: int, K: int) -> ScaledMMConfig:
    """A tile config from a small table keyed by M, with blocks clamped to the problem size.

    For block_scaled_mm the block_k is *not* tied to the scale block: the kernel splits a tile
    into sub-tiles per scale group, so any power-of-two block_k is correct.
    """
    config = next(cfg for bound, cfg in _TILE_TABLE if bound is None or M <= bound)
    return dataclasses.replace(
        config,
        block_m=min(config.block_m, _next_pow2_at_least_16(M)),
        block_n=min(config.block_n, _next_pow2_at_least_16(N)),
        block_k=min(config.block_k, max(MIN_DOT_K_8BIT, _next_pow2_at_least_16(K))),
    )


def default_fp8_path(dtype: torch.dtype, device: torch.device) -> str:
    """``"native"`` where ``tl.dot`` runs on ``dtype`` operands on ``device``, else ``"decode"``."""
    device = torch.device(device)
    if device.type == "cpu":  # the Triton interpreter computes fp8 dots itself
        return "native"
    if device.type == "cuda" and torch.version.hip is None:
        native = dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
        return "native" if native and torch.cuda.get_device_capability(device) >= (8, 9) else "decode"
    return "decode"


# ------------------------------------------------------------------------------------ kernels
@triton.jit
def _fp8_bits_to_f32(bits, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr,
                     SPECIALS: tl.constexpr):
    """Bit-exact float32 value of fp8 codes (raw bytes), from the format's fields.

    Normal codes: 2**(e - BIAS) * (1 + m / 2**MAN_BITS), built as a float32 bit pattern;
    subnormal codes (e == 0): m * 2**(1 - BIAS - MAN_BITS). SPECIALS: 0 = FN (all-ones magnitude
    is NaN), 1 = FNUZ (0x80 is NaN, no -0), 2 = IEEE (all-ones exponent: inf or NaN).
    """
    bits = bits.to(tl.int32) & 0xFF
    sign = bits >> (EXP_BITS + MAN_BITS)
    e = (bits >> MAN_BITS) & ((1 << EXP_BITS) - 1)
    m = bits & ((1 << MAN_BITS) - 1)
    normal = tl.cast(((e - BIAS + 127) << 23) | (m << (23 - MAN_BITS)), tl.float32, bitcast=True)
    sub_unit = tl.cast(((1 - BIAS - MAN_BITS + 127) << 23) + m * 0, tl.float32, bitcast=True)
    magnitude = tl.where(e == 0, m.to(tl.float32) * sub_unit, normal)
    value = tl.where(sign == 1, -magnitude, magnitude)
    nan = tl.cast(0x7FC00000 + bits * 0, tl.float32, bitcast=True)
    if SPECIALS == 0:
        value = tl.where((bits & 0x7F) == 0x7F, nan, value)
    elif SPECIALS == 1:
        value = tl.where(bits == 0x80, nan, value)
    else:
        inf = tl.cast(0x7F800000 + bits * 0, tl.float32, bitcast=True)
        top = e == (1 << EXP_BITS) - 1
        value = tl.where(top, tl.where(m == 0, tl.where(sign == 1, -inf, inf), nan), value)
    return value


@triton.jit
def _load_operand(ptrs, mask, INT_CODES: tl.constexpr):
    """Masked load of an a/b tile; masked elements are zero codes (0 for integer / raw-byte
    tensors, 0.0 for fp8 tensors: fp8 has no integer-to-fp8 constant cast)."""
    if INT_CODES:
        return tl.load(ptrs, mask=mask, other=0)
    else:
        return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _dot_operand(tile, DECODE: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                 BIAS: tl.constexpr, SPECIALS: tl.constexpr):
    """A loaded a/b tile as ``tl.dot`` takes it: unchanged (native fp8 / int8), or decoded raw
    fp8 bytes as float16 (exact for every fp8 value)."""
    if DECODE:
        return _fp8_bits_to_f32(tile, EXP_BITS, MAN_BITS, BIAS, SPECIALS).to(tl.float16)
    else:
        return tile


@triton.jit
def _scaled_mm_kernel(
    a_ptr, b_ptr, as_ptr, bs_ptr, azp_ptr, colsum_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn,
    stride_as, stride_bs, stride_azp,
    stride_os, stride_om, stride_on,
    IS_INT: tl.constexpr, DECODE: tl.constexpr,
    EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SPECIALS: tl.constexpr,
    HAS_AZP: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
):
    _, _, offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)

    tile_begin, tile_end = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)

    if IS_INT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(tile_begin, tile_end):
        offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = _load_operand(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                          mask_m[:, None] & mask_k[None, :], IS_INT or DECODE)
        b = _load_operand(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                          mask_k[:, None] & mask_n[None, :], IS_INT or DECODE)
        a = _dot_operand(a, DECODE, EXP_BITS, MAN_BITS, BIAS, SPECIALS)
        b = _dot_operand(b, DECODE, EXP_BITS, MAN_BITS, BIAS, SPECIALS)
        if IS_INT:
            acc = tl.dot(a, b, acc=acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc=acc, out_dtype=tl.float32)

    if HAS_AZP:
        # (a - azp) @ b = a @ b - azp[m] * colsum(b)[n]: over all of K, so only split 0 applies it
        azp = tl.load(azp_ptr + offs_m * stride_azp, mask=mask_m, other=0)
        colsum = tl.load(colsum_ptr + offs_n, mask=mask_n, other=0)
        correction = azp[:, None] * colsum[None, :]
        acc = acc - tl.where(pid_k == 0, correction, 0)

    a_s = tl.load(as_ptr + offs_m * stride_as, mask=mask_m, other=0.0).to(tl.float32)
    b_s = tl.load(bs_ptr + offs_n * stride_bs, mask=mask_n, other=0.0).to(tl.float32)
    result = acc.to(tl.float32) * a_s[:, None] * b_s[None, :]
    if HAS_BIAS:
        result = result + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]

    out_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _block_scaled_mm_kernel(
    a_ptr, b_ptr, as_ptr, bs_ptr, bias_ptr, out_ptr,
    M, N, K, GROUP_N,
    stride_am, stride_ak, stride_bk, stride_bn,
    stride_asm, stride_asg, stride_bsg, stride_bsn,
    stride_os, stride_om, stride_on,
    GROUP_K: tl.constexpr, SUB_K: tl.constexpr,
    DECODE: tl.constexpr,
    EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SPECIALS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
):
    _, _, offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    scale_col = offs_n // GROUP_N  # the weight block column of every output column

    tile_begin, tile_end = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(tile_begin, tile_end):
        # SUB_K = min(BLOCK_K, GROUP_K), both powers of two: each sub-tile lies in one scale group
        for sub in tl.static_range(BLOCK_K // SUB_K):
            k_start = tile * BLOCK_K + sub * SUB_K
            offs_k = k_start + tl.arange(0, SUB_K)
            mask_k = offs_k < K
            a = _load_operand(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                              mask_m[:, None] & mask_k[None, :], DECODE)
            b = _load_operand(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                              mask_k[:, None] & mask_n[None, :], DECODE)
            a = _dot_operand(a, DECODE, EXP_BITS, MAN_BITS, BIAS, SPECIALS)
            b = _dot_operand(b, DECODE, EXP_BITS, MAN_BITS, BIAS, SPECIALS)
            partial = tl.dot(a, b, out_dtype=tl.float32)
            # a sub-tile past the end of K (BLOCK_K > GROUP_K tails) has no scale group: mask it
            group = k_start // GROUP_K
            a_in_k = tl.full((BLOCK_M,), k_start, tl.int32) < K
            b_in_k = tl.full((BLOCK_N,), k_start, tl.int32) < K
            a_s = tl.load(as_ptr + offs_m * stride_asm + group * stride_asg, mask=mask_m & a_in_k, other=0.0)
            b_s = tl.load(bs_ptr + group * stride_bsg + scale_col * stride_bsn, mask=mask_n & b_in_k, other=0.0)
            acc += partial * a_s.to(tl.float32)[:, None] * b_s.to(tl.float32)[None, :]

    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]

    out_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _fp8_w8a16_kernel(
    x_ptr, b_ptr, bs_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_bk, stride_bn, stride_bsk, stride_bsn,
    stride_os, stride_om, stride_on,
    DECODE: tl.constexpr,
    EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SPECIALS: tl.constexpr,
    SCALE_PER_K: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
):
    _, _, offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)

    tile_begin, tile_end = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)

    # b_scale broadcast to [K, N] through its strides (0 along a broadcast axis): without a K
    # stride it is one value per column (or one for all), loaded once; with one, a [BLOCK_K,
    # BLOCK_N] tile of it is loaded beside every weight tile
    if not SCALE_PER_K:
        b_s_cols = tl.load(bs_ptr + offs_n * stride_bsn, mask=mask_n, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(tile_begin, tile_end):
        offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = _load_operand(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                          mask_k[:, None] & mask_n[None, :], DECODE)
        if DECODE:
            b = _fp8_bits_to_f32(b, EXP_BITS, MAN_BITS, BIAS, SPECIALS)
        else:
            b = b.to(tl.float32)
        if SCALE_PER_K:
            b_s = tl.load(bs_ptr + offs_k[:, None] * stride_bsk + offs_n[None, :] * stride_bsn,
                          mask=mask_k[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
            w = (b * b_s).to(x.dtype)
        else:
            w = (b * b_s_cols[None, :]).to(x.dtype)
        acc = tl.dot(x, w, acc=acc, out_dtype=tl.float32)

    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]

    out_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ------------------------------------------------------------------------------------ validation
def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _validate_config(config) -> ScaledMMConfig:
    if not isinstance(config, ScaledMMConfig):
        raise TypeError(
            f"config must be a ScaledMMConfig, got {type(config).__name__}; "
            "build one with ScaledMMConfig(block_m=..., block_n=..., block_k=...)"
        )
    for name in ("block_m", "block_n", "block_k"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < MIN_DOT_BLOCK or value & (value - 1):
            raise ValueError(
                f"config.{name}={value!r} must be a power of two >= {MIN_DOT_BLOCK} "
                f"(tl.dot needs tiles of at least {MIN_DOT_BLOCK}; allowed: 16, 32, 64, 128, ...); "
                f"round it to {_next_pow2_at_least_16(value if isinstance(value, int) else 16)}"
            )
    for name in ("split_k", "group_m", "num_stages"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{name}={value!r} must be an integer >= 1; use 1 for the default")
    if not isinstance(config.num_warps, int) or config.num_warps < 1 or config.num_warps & (config.num_warps - 1):
        raise ValueError(
            f"config.num_warps={config.num_warps!r} must be a power of two (allowed: 1, 2, 4, 8, 16); use 4"
        )
    return config


def _check_block_k_8bit(config: ScaledMMConfig) -> None:
    """int8 / fp8 operand dots need K tiles of at least 32 (compiled Triton rejects 16)."""
    if config.block_k < MIN_DOT_K_8BIT:
        raise ValueError(
            f"config.block_k={config.block_k} is below {MIN_DOT_K_8BIT}: tl.dot on 8-bit (int8 / fp8) "
            f"operands needs K tiles of at least {MIN_DOT_K_8BIT} (allowed: 32, 64, 128, ...); use block_k=32"
        )


def _check_devices(**tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        first = next(iter(devices.values()))
        raise ValueError(f"tensors are on different devices ({listing}); move them all to {first}")


def _check_out_dtype(out_dtype) -> torch.dtype:
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype!r} is not supported (allowed: {_names(OUT_DTYPES)}); pick one of them")
    return out_dtype


def _check_scale_dtype(name: str, scale: torch.Tensor) -> None:
    if scale.dtype not in SCALE_DTYPES:
        raise TypeError(
            f"{name}.dtype={_dtype_name(scale.dtype)} is not a scale dtype (allowed: {_names(SCALE_DTYPES)}); "
            f"cast with {name}.to(torch.float32)"
        )


def _check_bias(bias, N: int) -> None:
    if bias is None:
        return
    _require_tensor("bias", bias)
    if tuple(bias.shape) != (N,):
        raise ValueError(f"bias.shape={_shape(bias)} must be [N] = [{N}]; pass one bias per output column")
    if bias.dtype not in BIAS_DTYPES:
        raise TypeError(
            f"bias.dtype={_dtype_name(bias.dtype)} is not supported (allowed: {_names(BIAS_DTYPES)}); "
            "cast with bias.to(torch.float32)"
        )


def _check_fp8_path(fp8_path) -> None:
    if fp8_path is not None and fp8_path not in FP8_PATHS:
        raise ValueError(
            f"fp8_path={fp8_path!r} is not known (allowed: {', '.join(FP8_PATHS)}, or None for the "
            "device default); pass None unless forcing a path for testing"
        )


def _check_matrix(name: str, t: torch.Tensor, dims: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name}.shape={_shape(t)} must be 2-D {dims}")


def _check_operands(a, b, a_name: str = "a") -> tuple[int, int, int]:
    """Shapes of ``a [M, K]`` and ``b [K, N]``; returns (M, N, K)."""
    _check_matrix(a_name, a, "[M, K]; reshape with .reshape(-1, K)")
    _check_matrix("b", b, "[K, N]; pass a [N, K] weight as its transposed view w.t()")
    M, K = a.shape
    if b.shape[0] != K:
        hint = (
            "; b looks like an [N, K] weight: pass its transposed view b.t()"
            if b.shape[1] == K else ""
        )
        raise ValueError(
            f"b.shape={_shape(b)} must be [K, N] with K={K} (the columns of {a_name}.shape={_shape(a)}){hint}"
        )
    return M, b.shape[1], K


def _per_row_stride(name: str, scale: torch.Tensor, rows: int, row_name: str) -> int:
    """Element stride between consecutive rows' scales: 0 for a per-tensor scale."""
    if scale.dim() <= 2 and scale.numel() == 1:
        return 0
    if scale.dim() == 2 and tuple(scale.shape) == (rows, 1):
        return scale.stride(0)
    raise ValueError(
        f"{name}.shape={_shape(scale)} fits no scale layout for {row_name}={rows} (allowed: [], [1], [1, 1] "
        f"per-tensor, or [{rows}, 1] per-token); reshape per-token scales with .reshape(-1, 1)"
    )


def _per_column_stride(name: str, scale: torch.Tensor, N: int) -> int:
    """Element stride between consecutive columns' scales: 0 for a per-tensor scale. [1, N], [N]
    and [N, 1] are all per-channel (one scale per output column n)."""
    if scale.dim() <= 2 and scale.numel() == 1:
        return 0
    shape = tuple(scale.shape)
    if shape == (1, N):
        return scale.stride(1)
    if shape == (N,) or shape == (N, 1):
        return scale.stride(0)
    raise ValueError(
        f"{name}.shape={_shape(scale)} fits no scale layout for N={N} (allowed: [], [1], [1, 1] per-tensor, "
        f"or [1, {N}], [{N}], [{N}, 1] per-channel); a per-channel scale has one entry per output column"
    )


def _weight_broadcast_strides(name: str, scale: torch.Tensor, K: int, N: int) -> tuple[int, int]:
    """(stride along k, stride along n) of a scale broadcast against the ``[K, N]`` weight as
    ``w * scale`` broadcasts: a 0-D or 1-D scale lines up with the columns (``[N]``, or ``[1]``
    for all), a 2-D one is ``[rows, cols]`` read with its own strides; an axis of size 1 has
    stride 0. Per-tensor ``[]``, ``[1]``, ``[1, 1]``; per output channel ``[1, N]``, ``[N]``;
    per input row ``[K, 1]`` (and ``[K, N]`` per element)."""
    shape = tuple(scale.shape)
    rows, cols = (1,) * (2 - len(shape)) + shape if len(shape) <= 2 else (None, None)
    if rows in (1, K) and cols in (1, N):
        strides = (1,) * (2 - scale.dim()) + tuple(scale.stride())
        return (strides[0] if rows != 1 else 0), (strides[1] if cols != 1 else 0)
    if shape == (N, 1):
        fix = ("per-channel scales are [1, N] or [N]; prepare_weights converts checkpoint [N, 1] scales "
               f"(or pass b_scale.reshape(1, {N}))")
    elif shape == (1, K) or shape == (K,):
        fix = f"a per-input-row scale is [K, 1] = [{K}, 1]; pass b_scale.reshape({K}, 1)"
    else:
        fix = "per-channel scales are [1, N] or [N]; prepare_weights converts checkpoint scales"
    raise ValueError(
        f"{name}.shape={_shape(scale)} does not broadcast to the weight's [K, N] = [{K}, {N}] (allowed: [], [1], "
        f"[1, 1] per-tensor, [1, {N}] or [{N}] per output channel, [{K}, 1] per input row, [{K}, {N}] per "
        f"element); {fix}"
    )


def _format_constants(dtype: torch.dtype) -> dict:
    """The fp8 format's fields as kernel constexprs (int8: unused placeholders)."""
    if dtype == torch.int8:
        return dict(EXP_BITS=0, MAN_BITS=0, BIAS=0, SPECIALS=0)
    fmt: FloatFormat = get_format(_dtype_name(dtype))
    return dict(EXP_BITS=fmt.exponent_bits, MAN_BITS=fmt.mantissa_bits, BIAS=fmt.bias,
                SPECIALS=_SPECIALS_CODE[fmt.specials])


def _validate_scaled_mm(a, b, a_scale, b_scale, out_dtype, bias, azp):
    for name, value in (("a", a), ("b", b), ("a_scale", a_scale), ("b_scale", b_scale)):
        _require_tensor(name, value)
    if azp is not None:
        _require_tensor("azp", azp)
    _check_devices(a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias, azp=azp)
    if a.dtype not in QUANT_DTYPES:
        raise TypeError(
            f"a.dtype={_dtype_name(a.dtype)} is not a W8A8 code dtype (allowed: {_names(QUANT_DTYPES)}); "
            "quantize the activations first"
        )
    if b.dtype != a.dtype:
        raise TypeError(
            f"b.dtype={_dtype_name(b.dtype)} must equal a.dtype={_dtype_name(a.dtype)} "
            f"(allowed: {_names(QUANT_DTYPES)}, the same for both); quantize both operands to one dtype"
        )
    M, N, K = _check_operands(a, b)
    _check_scale_dtype("a_scale", a_scale)
    _check_scale_dtype("b_scale", b_scale)
    stride_as = _per_row_stride("a_scale", a_scale, M, "M")
    stride_bs = _per_column_stride("b_scale", b_scale, N)
    stride_azp = 0
    if azp is not None:
        if a.dtype != torch.int8:
            raise ValueError(
                f"azp is given but a.dtype={_dtype_name(a.dtype)}; zero points apply only to int8 "
                "activations (allowed: int8 with azp, or azp=None)"
            )
        if azp.dtype != torch.int32:
            raise TypeError(f"azp.dtype={_dtype_name(azp.dtype)} must be int32; cast with azp.to(torch.int32)")
        stride_azp = _per_row_stride("azp", azp, M, "M")
    _check_bias(bias, N)
    out_dtype = _check_out_dtype(out_dtype)
    return M, N, K, stride_as, stride_bs, stride_azp, out_dtype


def _validate_block_scaled_mm(a, b, a_scale, b_scale, block, out_dtype, bias):
    for name, value in (("a", a), ("b", b), ("a_scale", a_scale), ("b_scale", b_scale)):
        _require_tensor(name, value)
    _check_devices(a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias)
    if a.dtype not in FP8_DTYPES:
        raise TypeError(
            f"a.dtype={_dtype_name(a.dtype)} is not an fp8 dtype (allowed: {_names(FP8_DTYPES)}); "
            "quantize the activations per 1 x block_k group first"
        )
    if b.dtype != a.dtype:
        raise TypeError(
            f"b.dtype={_dtype_name(b.dtype)} must equal a.dtype={_dtype_name(a.dtype)} "
            f"(allowed: {_names(FP8_DTYPES)}, the same for both); quantize both operands to one dtype"
        )
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in block)):
        raise TypeError(f"block={block!r} must be a pair of ints (block_k, block_n), e.g. (128, 128)")
    bk, bn = block
    if bk < MIN_DOT_K_8BIT or bk & (bk - 1):
        raise ValueError(
            f"block=({bk}, {bn}): block_k={bk} must be a power of two >= {MIN_DOT_K_8BIT} "
            f"(allowed: 32, 64, 128, ...: each fp8 sub-dot spans one scale block); use the quantizer's K block size, e.g. 128"
        )
    if bn < 1:
        raise ValueError(f"block=({bk}, {bn}): block_n={bn} must be >= 1 (e.g. 128)")
    M, N, K = _check_operands(a, b)
    gk, gn = triton.cdiv(K, bk), triton.cdiv(N, bn)
    _check_scale_dtype("a_scale", a_scale)
    _check_scale_dtype("b_scale", b_scale)
    if tuple(a_scale.shape) != (M, gk):
        raise ValueError(
            f"a_scale.shape={_shape(a_scale)} must be [M, ceil(K/block_k)] = [{M}, {gk}] for M={M}, K={K}, "
            f"block_k={bk}; a column-major scale is passed as the .t() view of its [{gk}, {M}] storage"
        )
    if tuple(b_scale.shape) != (gk, gn):
        hint = (
            f"; it looks like [ceil(N/block_n), ceil(K/block_k)] (an [N, K] weight's scales): pass b_scale.t()"
            if tuple(b_scale.shape) == (gn, gk) else ""
        )
        raise ValueError(
            f"b_scale.shape={_shape(b_scale)} must be [ceil(K/block_k), ceil(N/block_n)] = [{gk}, {gn}] "
            f"for K={K}, N={N}, block=({bk}, {bn}){hint}"
        )
    _check_bias(bias, N)
    out_dtype = _check_out_dtype(out_dtype)
    return M, N, K, bk, bn, out_dtype


def _validate_fp8_w8a16(x, b, b_scale, out_dtype, bias):
    for name, value in (("x", x), ("b", b), ("b_scale", b_scale)):
        _require_tensor(name, value)
    _check_devices(x=x, b=b, b_scale=b_scale, bias=bias)
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(
            f"x.dtype={_dtype_name(x.dtype)} is not an activation dtype (allowed: {_names(ACTIVATION_DTYPES)}); "
            "cast x with x.to(torch.float16)"
        )
    if b.dtype not in FP8_DTYPES:
        raise TypeError(
            f"b.dtype={_dtype_name(b.dtype)} is not an fp8 weight dtype (allowed: {_names(FP8_DTYPES)}); "
            "quantize the weight to fp8 first"
        )
    M, N, K = _check_operands(x, b, a_name="x")
    _check_scale_dtype("b_scale", b_scale)
    stride_bsk, stride_bsn = _weight_broadcast_strides("b_scale", b_scale, K, N)
    _check_bias(bias, N)
    out_dtype = _check_out_dtype(out_dtype)
    return M, N, K, stride_bsk, stride_bsn, out_dtype


def check_scaled_mm_arguments(a, b, a_scale, b_scale, *, out_dtype, bias=None, azp=None,
                              fp8_path=None) -> tuple[int, int]:
    """Raise what :func:`scaled_mm` would raise for these arguments; returns (M, N).
    Metadata only: works on fake and meta tensors."""
    M, N, *_ = _validate_scaled_mm(a, b, a_scale, b_scale, out_dtype, bias, azp)
    _check_fp8_path(fp8_path)
    return M, N


def check_block_scaled_mm_arguments(a, b, a_scale, b_scale, *, block=(128, 128), out_dtype, bias=None,
                                    fp8_path=None) -> tuple[int, int]:
    """Raise what :func:`block_scaled_mm` would raise; returns (M, N). Metadata only."""
    M, N, *_ = _validate_block_scaled_mm(a, b, a_scale, b_scale, block, out_dtype, bias)
    _check_fp8_path(fp8_path)
    return M, N


def check_fp8_w8a16_arguments(x, b, b_scale, *, out_dtype, bias=None, fp8_path=None) -> tuple[int, int]:
    """Raise what :func:`fp8_w8a16_gemm` would raise; returns (M, N). Metadata only."""
    M, N, *_ = _validate_fp8_w8a16(x, b, b_scale, out_dtype, bias)
    _check_fp8_path(fp8_path)
    return M, N


# ------------------------------------------------------------------------------------ launchers
def _target(M: int, N: int, split_k: int, out_dtype: torch.dtype, device):
    """(tensor the kernel writes, its split / row / column strides)."""
    if split_k == 1:
        out = torch.empty((M, N), dtype=out_dtype, device=device)
        return out, (0, out.stride(0), out.stride(1))
    work = torch.empty((split_k, M, N), dtype=torch.float32, device=device)
    return work, work.stride()


def _finish(target, split_k: int, bias, out_dtype):
    if split_k == 1:
        return target
    result = target.sum(dim=0)
    if bias is not None:
        result = result + bias.to(torch.float32)
    return result.to(out_dtype)


def _operand_path(dtype: torch.dtype, device, fp8_path) -> bool:
    """True where fp8 operands are loaded as raw bytes and decoded in-kernel."""
    if dtype not in FP8_DTYPES:
        return False
    return (fp8_path or default_fp8_path(dtype, device)) == "decode"


def _raw(t: torch.Tensor, decode: bool) -> torch.Tensor:
    return t.view(torch.uint8) if decode else t


def _launch_options(config: ScaledMMConfig) -> dict:
    return dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                GROUP_M=config.group_m, SPLIT_K=config.split_k,
                num_warps=config.num_warps, num_stages=config.num_stages)


def _grid(M: int, N: int, config: ScaledMMConfig) -> tuple[int, int]:
    return (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n), config.split_k)


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    azp: torch.Tensor | None = None,
    config: ScaledMMConfig | None = None,
    fp8_path: str | None = None,
    kernel=None,
) -> torch.Tensor:
    """``out = ((a - azp) * a_scale) @ (b * b_scale) + bias`` for int8 or fp8 codes.

    a: ``[M, K]`` int8 / fp8 codes; b: ``[K, N]`` of the same dtype (any strides, e.g. ``w.t()``
    of a contiguous ``[N, K]`` weight). a_scale: ``[]``/``[1]``/``[1, 1]`` or ``[M, 1]``;
    b_scale: ``[]``/``[1]``/``[1, 1]`` or ``[1, N]``/``[N]``/``[N, 1]`` (float32/16, bf16).
    azp: int32 ``[M, 1]`` (or per-tensor ``[]``/``[1]``) zero points of int8 activations.
    bias: ``[N]``. out_dtype: float16, bfloat16 or float32. config: tunables (default
    ``default_config(M, N, K)``). fp8_path: ``"native"``/``"decode"``/None (module docstring).
    kernel: the ``@triton.jit`` function launched (default ``_scaled_mm_kernel``), so a variant
    with a deliberate bug can share launch and validation.
    """
    M, N, K, stride_as, stride_bs, stride_azp, out_dtype = _validate_scaled_mm(
        a, b, a_scale, b_scale, out_dtype, bias, azp)
    _check_fp8_path(fp8_path)
    config = _validate_config(default_config(M, N, K) if config is None else config)
    _check_block_k_8bit(config)
    if M == 0 or N == 0:
        return torch.zeros((M, N), dtype=out_dtype, device=a.device)

    is_int = a.dtype == torch.int8
    decode = _operand_path(a.dtype, a.device, fp8_path)
    target, (stride_os, stride_om, stride_on) = _target(M, N, config.split_k, out_dtype, a.device)
    colsum = b.sum(dim=0, dtype=torch.int32) if azp is not None else None
    fuse_bias = bias is not None and config.split_k == 1
    (kernel or _scaled_mm_kernel)[_grid(M, N, config)](
        _raw(a, decode), _raw(b, decode), a_scale, b_scale,
        azp if azp is not None else a_scale,  # never read without HAS_AZP
        colsum if colsum is not None else a_scale,
        bias if fuse_bias else a_scale,  # never read without HAS_BIAS
        target,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        stride_as, stride_bs, stride_azp,
        stride_os, stride_om, stride_on,
        IS_INT=is_int, DECODE=decode, **_format_constants(a.dtype),
        HAS_AZP=azp is not None, HAS_BIAS=fuse_bias,
        **_launch_options(config),
    )
    return _finish(target, config.split_k, bias, out_dtype)


def block_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    block: tuple[int, int] = (128, 128),
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    config: ScaledMMConfig | None = None,
    fp8_path: str | None = None,
    kernel=None,
) -> torch.Tensor:
    """FP8 block-quantized GEMM (module docstring for the formula).

    a: ``[M, K]`` fp8 codes; b: ``[K, N]`` fp8 codes (same dtype, any strides);
    a_scale: ``[M, ceil(K/bk)]`` (any strides: row- or column-major storage);
    b_scale: ``[ceil(K/bk), ceil(N/bn)]``; block: ``(bk, bn)``, bk a power of two >= 32.
    config.block_k may be smaller than, equal to or larger than bk.
    """
    M, N, K, bk, bn, out_dtype = _validate_block_scaled_mm(a, b, a_scale, b_scale, block, out_dtype, bias)
    _check_fp8_path(fp8_path)
    config = _validate_config(default_config(M, N, K) if config is None else config)
    _check_block_k_8bit(config)
    if M == 0 or N == 0:
        return torch.zeros((M, N), dtype=out_dtype, device=a.device)

    decode = _operand_path(a.dtype, a.device, fp8_path)
    target, (stride_os, stride_om, stride_on) = _target(M, N, config.split_k, out_dtype, a.device)
    fuse_bias = bias is not None and config.split_k == 1
    (kernel or _block_scaled_mm_kernel)[_grid(M, N, config)](
        _raw(a, decode), _raw(b, decode), a_scale, b_scale,
        bias if fuse_bias else a_scale,
        target,
        M, N, K, bn,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1),
        stride_os, stride_om, stride_on,
        GROUP_K=bk, SUB_K=min(config.block_k, bk),
        DECODE=decode, **_format_constants(a.dtype),
        HAS_BIAS=fuse_bias,
        **_launch_options(config),
    )
    return _finish(target, config.split_k, bias, out_dtype)


def fp8_w8a16_gemm(
    x: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    config: ScaledMMConfig | None = None,
    fp8_path: str | None = None,
    kernel=None,
) -> torch.Tensor:
    """``out = x @ (b * b_scale) + bias``: fp16/bf16 activations ``x [M, K]``, fp8 weight codes
    ``b [K, N]`` (any strides), b_scale broadcast against ``b`` as ``b.float() * b_scale`` would
    (``[]``/``[1]``/``[1, 1]`` per-tensor, ``[1, N]``/``[N]`` per output channel, ``[K, 1]`` per
    input row, any strides; anything else, e.g. ``[N, 1]`` with N != K, is a ValueError).
    The weight tile is dequantized in float32, cast to x.dtype, and multiplied with ``tl.dot``
    accumulating in float32. fp8_path only changes how the weight bytes are read (both exact).
    """
    M, N, K, stride_bsk, stride_bsn, out_dtype = _validate_fp8_w8a16(x, b, b_scale, out_dtype, bias)
    _check_fp8_path(fp8_path)
    config = _validate_config(default_config(M, N, K) if config is None else config)
    if M == 0 or N == 0:
        return torch.zeros((M, N), dtype=out_dtype, device=x.device)

    decode = _operand_path(b.dtype, x.device, fp8_path)
    target, (stride_os, stride_om, stride_on) = _target(M, N, config.split_k, out_dtype, x.device)
    fuse_bias = bias is not None and config.split_k == 1
    (kernel or _fp8_w8a16_kernel)[_grid(M, N, config)](
        x, _raw(b, decode), b_scale,
        bias if fuse_bias else b_scale,
        target,
        M, N, K,
        x.stride(0), x.stride(1), b.stride(0), b.stride(1), stride_bsk, stride_bsn,
        stride_os, stride_om, stride_on,
        DECODE=decode, **_format_constants(b.dtype),
        SCALE_PER_K=stride_bsk != 0, HAS_BIAS=fuse_bias,
        **_launch_options(config),
    )
    return _finish(target, config.split_k, bias, out_dtype)
