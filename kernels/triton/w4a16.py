"""W4A16 GEMM: ``out[M, N] = x[M, K] @ dequant(W)[K, N] (+ bias[N])``, int4 weights, fp16/bf16 activations.

Every weight layout stores the same canonical unsigned 4-bit codes ``q[K, N]`` (0..15); a layout
is a record of *how* they are packed (container dtype, packing axis, field order), and the kernel
reads those facts as compile-time constants — it never branches on a layout's name.

Layouts (see ``LAYOUTS``):

- ``"gptq"``   qweight int32 ``[K // 8, N]``, field i (bits 4i..4i+3) of word w holds k = 8*w + i;
               zeros int32 ``[K/G, N // 8]``, field i of word j holds n = 8*j + i.
- ``"awq"``    qweight int32 ``[K, N // 8]``, field i of word j holds n = 8*j + order[i] with
               order = (0, 2, 4, 6, 1, 3, 5, 7); zeros int32 ``[K/G, N // 8]`` in the same order.
- ``"nibble"`` qweight uint8 ``[K // 2, N]``, low nibble of byte r holds k = 2*r, high nibble
               k = 2*r + 1; zeros uint8 ``[K/G, N]`` unpacked (one code per byte).

scales: ``[K/G, N]`` in the activation dtype or float32, G = group_size (``-1``: one group over
all of K, scales ``[1, N]``). Dequantization, per element::

    w[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]

with z from ``zeros`` (the true zero point; a GPTQ "stored z - 1" convention must be undone by
the caller) or the implicit 8 when ``zeros is None`` (symmetric "uint4b8"). Every k row gets its
own group's scale and zero point (group index ``k // G``), so a K tile may span any number of
groups: BLOCK_K smaller than, equal to, or larger than G are all correct. The launcher picks one
of three constexpr scale paths (``scale_path``): one scale row per tile when the tile lies in one
group, ``[BLOCK_K/G, BLOCK_N]`` rows broadcast to their rows when whole groups fill the tile, and
a per-row gather otherwise.

Packed words are loaded once each in their stored shape and unpacked in registers; codes and
zero points become float32 through the ``2**23 + c`` bit pattern (no int -> float conversion).
With codes packed along K and ``BLOCK_K / P >= 16`` (``sub_dots``), a tile is multiplied as P
sub-products, one per word field, against the matching strided columns of x.

The dequantized tile is cast to the activation dtype and multiplied with ``tl.dot`` accumulating
in float32; bias is added in float32, and the result is stored in ``out_dtype``. With
``split_k > 1`` each split writes a float32 partial into a ``[split_k, M, N]`` workspace that the
launcher reduces with a deterministic ``sum`` before adding bias and casting.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.checks import dtype_name as _dtype_name, dtype_names as _names, require_tensor as _require_tensor
from kernels.triton.config import ListConfig
from oracle.packing import AWQ_QWEIGHT, AWQ_QZEROS, GPTQ_QWEIGHT, GPTQ_QZEROS, NIBBLES_K_WEIGHT, Packing

__all__ = [
    "LAYOUTS",
    "W4A16Config",
    "check_arguments",
    "WeightLayout",
    "ZEROS_UNPACKED_UINT8",
    "default_config",
    "scale_path",
    "sub_dots",
    "w4a16_gemm",
]

SYMMETRIC_ZERO = 8  # implicit zero point of the symmetric "uint4b8" convention
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_DOT_BLOCK = 16  # tl.dot needs every tile dimension >= 16


# container name (oracle.packing) -> the torch dtype the kernel reads
_TORCH_CONTAINERS: dict[str, torch.dtype] = {"int32": torch.int32, "uint8": torch.uint8}


def _container_dtype(packing: Packing) -> torch.dtype:
    return _TORCH_CONTAINERS[packing.container]


def _per_axis(packing: Packing, axis: int) -> int:
    """Codes per container element along logical axis ``axis`` of a 2-D array (1 elsewhere)."""
    return packing.per_word if packing.axis % 2 == axis else 1


def _field_code(packing: Packing) -> int:
    """The inverse of ``packing.field_order`` as one integer, 4 bits per element offset.

    Field i holds element ``order[i]`` of a word's run; the kernel needs the other direction,
    the field holding element p, and reads it as ``(code >> 4*p) & 0xF``. With at most 8 fields
    the code fits a non-negative int32 (gptq: 0x76543210, awq: 0x73625140).
    """
    return sum(field << (4 * element) for field, element in enumerate(packing.field_order))


@dataclass(frozen=True)
class WeightLayout:
    """One weight layout: how qweight ``[K, N]`` codes and the zero points ``[K/G, N]`` are packed
    (``oracle.packing.Packing`` records; ``bits=8`` in a uint8 means one code per byte)."""

    name: str
    qweight: Packing
    zeros: Packing


ZEROS_UNPACKED_UINT8 = Packing("uint8", axis=1, bits=8)

LAYOUTS: dict[str, WeightLayout] = {
    layout.name: layout
    for layout in (
        WeightLayout("gptq", qweight=GPTQ_QWEIGHT, zeros=GPTQ_QZEROS),
        WeightLayout("awq", qweight=AWQ_QWEIGHT, zeros=AWQ_QZEROS),
        WeightLayout("nibble", qweight=NIBBLES_K_WEIGHT, zeros=ZEROS_UNPACKED_UINT8),
    )
}


@dataclass(frozen=True)
class W4A16Config(ListConfig):
    """Tunables of one launch; each maps to a kernel constexpr (or the grid / launch options).

    block_m/n/k: tile sizes (powers of two, >= 16 for ``tl.dot``); block_k may exceed group_size.
    split_k: number of K splits reduced in float32 by the launcher (1 = no workspace).
    group_m: program-id swizzle; GROUP_M consecutive M tiles are visited per N column.
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2

# (largest M, config) — first row whose bound is >= M wins; the last row has no bound.
_TILE_TABLE: tuple[tuple[int | None, W4A16Config], ...] = (
    (16, W4A16Config(block_m=16, block_n=32, block_k=512, group_m=8, num_warps=4, num_stages=3)),
    (64, W4A16Config(block_m=32, block_n=64, block_k=64, group_m=8, num_warps=4, num_stages=3)),
    (256, W4A16Config(block_m=64, block_n=128, block_k=64, group_m=8, num_warps=4, num_stages=3)),
    (None, W4A16Config(block_m=128, block_n=128, block_k=32, group_m=8, num_warps=8, num_stages=3)),
)


def _next_pow2_at_least_16(n: int) -> int:
    return max(MIN_DOT_BLOCK, triton.next_power_of_2(max(int(n), 1)))


def default_config(M: int, N: int, K: int, group_size: int) -> W4A16Config:
    """A tile config from a small table keyed by M, with blocks clamped to the problem size.

    BLOCK_K is *not* clamped to group_size: the kernel applies per-row group scales, so a tile
    spanning several groups is correct (``group_size`` is accepted for tuning tables that want it).
    """
    del group_size
    config = next(cfg for bound, cfg in _TILE_TABLE if bound is None or M <= bound)
    return dataclasses.replace(
        config,
        block_m=min(config.block_m, _next_pow2_at_least_16(M)),
        block_n=min(config.block_n, _next_pow2_at_least_16(N)),
        block_k=min(config.block_k, _next_pow2_at_least_16(K)),
    )


# float32 whose bit pattern is 0x4B000000 | c for a code c < 2**23 is exactly 2**23 + c: OR-ing a
# code into this pattern and reinterpreting the bits converts it without an int -> float instruction
MAGIC_F32_BITS = tl.constexpr(0x4B000000)

# how a K tile finds its scales (kernel constexpr SCALE_PATH, chosen by the launcher from G, BLOCK_K)
SCALES_ONE_GROUP = 0  # G % BLOCK_K == 0: every tile lies in one group, one scale row per tile
SCALES_GROUPS_IN_TILE = 1  # BLOCK_K % G == 0, BLOCK_K > G: [BLOCK_K/G, BLOCK_N] rows, each broadcast to its rows
SCALES_PER_ROW = 2  # anything else: each k row gathers its own group's row (group index k // G)


def sub_dots(qweight_packing: Packing, block_k: int) -> bool:
    """Whether a K tile is multiplied as P sub-products, one per field of the words (P codes per
    word along K): sub-product i takes field i of every word, i.e. the k rows ``P*w + i``, with the
    matching strided columns of x, so the words are never expanded to ``[BLOCK_K, BLOCK_N]``.
    Needs codes packed along K and ``BLOCK_K / P >= 16`` (the ``tl.dot`` minimum)."""
    per_k = _per_axis(qweight_packing, 0)
    return per_k > 1 and block_k // per_k >= MIN_DOT_BLOCK


def scale_path(block_k: int, group_size: int, rows_per_k_step: int = 1) -> int:
    """The kernel's scale-addressing path for a K tile of ``block_k`` rows and groups of
    ``group_size`` rows (already resolved: K for one group over all of K). ``rows_per_k_step``:
    P when the tile is multiplied as P sub-products (:func:`sub_dots`), whose rows are every P-th
    k; their groups are whole rows of a sub-product only when P divides the group size."""
    if group_size % block_k == 0:
        return SCALES_ONE_GROUP
    if block_k % group_size == 0 and group_size % rows_per_k_step == 0:
        return SCALES_GROUPS_IN_TILE
    return SCALES_PER_ROW


@triton.jit
def _field_shifts(FIELD_CODE: tl.constexpr, PER_WORD: tl.constexpr, BITS: tl.constexpr):
    """[PER_WORD] int32: the bit offset of the field holding element p of a word's run."""
    p = tl.arange(0, PER_WORD)
    return ((FIELD_CODE >> (4 * p)) & 0xF) * BITS


@triton.jit
def _codes_as_f32(fields):
    """float32 ``2**23 + c`` for int32 codes ``c`` (exact, no int -> float conversion)."""
    return (fields | MAGIC_F32_BITS).to(tl.float32, bitcast=True)


@triton.jit
def _unpacked_codes_as_f32(words, shifts, BITS: tl.constexpr, ALONG_K: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_K, BLOCK_N] float32 ``2**23 + code`` from a tile of packed words: ``[BLOCK_K/P, BLOCK_N]``
    when the codes are packed along K (``ALONG_K``), ``[BLOCK_K, BLOCK_N/P]`` when along N."""
    mask = (1 << BITS) - 1
    if ALONG_K:
        fields = (words[:, None, :] >> shifts[None, :, None]) & mask
    else:
        fields = (words[:, :, None] >> shifts[None, None, :]) & mask
    return _codes_as_f32(tl.reshape(fields, (BLOCK_K, BLOCK_N)))


@triton.jit
def _zero_points_as_f32(z_ptr, rows, offs_n, row_mask, mask_n, stride_zg, stride_zc,
                        Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr,
                        Z_BITS: tl.constexpr):
    """float32 ``2**23 + z`` for groups ``rows`` ([R] int32) x columns ``offs_n`` ([BLOCK_N]): [R, BLOCK_N]."""
    z_col = offs_n // Z_PER_N
    z_shift = ((Z_FIELD_CODE >> (4 * (offs_n % Z_PER_N))) & 0xF) * Z_BITS
    z_words = tl.load(
        z_ptr + (rows // Z_PER_G)[:, None] * stride_zg + z_col[None, :] * stride_zc,
        mask=row_mask[:, None] & mask_n[None, :], other=0,
    ).to(tl.int32)
    return _codes_as_f32((z_words >> z_shift[None, :]) & ((1 << Z_BITS) - 1))


@triton.jit
def _tile_scales_and_zeros(s_ptr, z_ptr, tile, offs_n, mask_n, K, GROUP_SIZE,
                           stride_sg, stride_sn, stride_zg, stride_zc,
                           Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr,
                           Z_BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, SCALE_PATH: tl.constexpr,
                           TILE_GROUPS: tl.constexpr, TILE_GROUP_ROWS: tl.constexpr):
    """Scales and zero points (float32 ``2**23 + z``) of one K tile, for the two paths that need
    no per-row gather: ``[1, BLOCK_N]`` when the tile lies in one group (SCALE_PATH 0), else
    ``[TILE_GROUPS * TILE_GROUP_ROWS, BLOCK_N]``: each of the tile's TILE_GROUPS groups' rows
    repeated for the TILE_GROUP_ROWS consecutive rows of the dequantized tile it covers."""
    if SCALE_PATH == 0:
        groups = tl.full((1,), 0, tl.int32) + (tile * BLOCK_K) // GROUP_SIZE
        mask_g = tl.full((1,), 1, tl.int1)
    else:
        groups = tile * TILE_GROUPS + tl.arange(0, TILE_GROUPS)
        mask_g = groups * GROUP_SIZE < K
    s = tl.load(
        s_ptr + groups[:, None] * stride_sg + offs_n[None, :] * stride_sn,
        mask=mask_g[:, None] & mask_n[None, :], other=0.0,
    ).to(tl.float32)
    if HAS_ZEROS:
        z = _zero_points_as_f32(z_ptr, groups, offs_n, mask_g, mask_n, stride_zg, stride_zc,
                                Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
    else:
        z = tl.full((1, BLOCK_N), 8388608.0 + SYM_ZERO, tl.float32)
    if SCALE_PATH == 1:
        ROWS: tl.constexpr = TILE_GROUPS * TILE_GROUP_ROWS
        s = tl.reshape(tl.broadcast_to(s[:, None, :], (TILE_GROUPS, TILE_GROUP_ROWS, BLOCK_N)), (ROWS, BLOCK_N))
        if HAS_ZEROS:
            z = tl.reshape(tl.broadcast_to(z[:, None, :], (TILE_GROUPS, TILE_GROUP_ROWS, BLOCK_N)), (ROWS, BLOCK_N))
    return s, z


@triton.jit
def _row_scales_and_zeros(s_ptr, z_ptr, offs_k, mask_k, offs_n, mask_n, GROUP_SIZE,
                          stride_sg, stride_sn, stride_zg, stride_zc,
                          Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr,
                          Z_BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    """General path: each k row ``offs_k`` gathers its own group's scales and zero points."""
    group = offs_k // GROUP_SIZE
    s = tl.load(
        s_ptr + group[:, None] * stride_sg + offs_n[None, :] * stride_sn,
        mask=mask_k[:, None] & mask_n[None, :], other=0.0,
    ).to(tl.float32)
    if HAS_ZEROS:
        z = _zero_points_as_f32(z_ptr, group, offs_n, mask_k, mask_n, stride_zg, stride_zc,
                                Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
    else:
        z = tl.full((1, BLOCK_N), 8388608.0 + SYM_ZERO, tl.float32)
    return s, z


@triton.jit
def _w4a16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk,
    stride_qr, stride_qc,
    stride_sg, stride_sn,
    stride_zg, stride_zc,
    stride_os, stride_om, stride_on,
    GROUP_SIZE,
    QW_PER_K: tl.constexpr, QW_PER_N: tl.constexpr, QW_FIELD_CODE: tl.constexpr, QW_BITS: tl.constexpr,
    Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
    SUB_DOTS: tl.constexpr, SCALE_PATH: tl.constexpr, TILE_GROUPS: tl.constexpr, TILE_GROUP_ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)

    # grouped ordering: GROUP_M tiles along M share an N column before moving on
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N

    # this split's contiguous run of K tiles
    k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    tile_begin = pid_k * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, k_tiles)

    # packed weight words are loaded once each, in their own shape: [BLOCK_K / P, BLOCK_N] words
    # when P codes share a word along K, [BLOCK_K, BLOCK_N / P] when along N
    QW_ALONG_K: tl.constexpr = QW_PER_N == 1
    QW_ROWS: tl.constexpr = BLOCK_K // QW_PER_K
    QW_MASK: tl.constexpr = (1 << QW_BITS) - 1
    qw_shifts = _field_shifts(QW_FIELD_CODE, QW_PER_K * QW_PER_N, QW_BITS)
    if QW_ALONG_K:
        offs_qc = offs_n
        mask_qc = mask_n
    else:
        offs_qc = pid_n * (BLOCK_N // QW_PER_N) + tl.arange(0, BLOCK_N // QW_PER_N)
        mask_qc = offs_qc < N // QW_PER_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(tile_begin, tile_end):
        offs_qr = tile * QW_ROWS + tl.arange(0, QW_ROWS)
        words = tl.load(
            qw_ptr + offs_qr[:, None] * stride_qr + offs_qc[None, :] * stride_qc,
            mask=(offs_qr < K // QW_PER_K)[:, None] & mask_qc[None, :], other=0,
            eviction_policy="evict_first",
        ).to(tl.int32)
        if SCALE_PATH != 2:
            s, z = _tile_scales_and_zeros(
                s_ptr, z_ptr, tile, offs_n, mask_n, K, GROUP_SIZE, stride_sg, stride_sn, stride_zg, stride_zc,
                Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO, BLOCK_K, BLOCK_N, SCALE_PATH,
                TILE_GROUPS, TILE_GROUP_ROWS)

        if SUB_DOTS:
            # sub-product i: field i of every word (k rows tile*BLOCK_K + P*r + i) against the
            # matching strided columns of x; the sum over i covers the tile's k rows once each
            offs_kw = tile * BLOCK_K + QW_PER_K * tl.arange(0, QW_ROWS)
            for i in tl.static_range(QW_PER_K):
                offs_k = offs_kw + i
                mask_k = offs_k < K
                x = tl.load(
                    x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0,
                )
                shift = ((QW_FIELD_CODE >> (4 * i)) & 0xF) * QW_BITS
                q = _codes_as_f32((words >> shift) & QW_MASK)
                if SCALE_PATH == 2:
                    s, z = _row_scales_and_zeros(
                        s_ptr, z_ptr, offs_k, mask_k, offs_n, mask_n, GROUP_SIZE, stride_sg, stride_sn,
                        stride_zg, stride_zc, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO, BLOCK_N)
                w = ((q - z) * s).to(x.dtype)
                acc = tl.dot(x, w, acc=acc, out_dtype=tl.float32)
        else:
            offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=mask_m[:, None] & mask_k[None, :], other=0.0,
            )
            q = _unpacked_codes_as_f32(words, qw_shifts, QW_BITS, QW_ALONG_K, BLOCK_K, BLOCK_N)
            if SCALE_PATH == 2:
                s, z = _row_scales_and_zeros(
                    s_ptr, z_ptr, offs_k, mask_k, offs_n, mask_n, GROUP_SIZE, stride_sg, stride_sn,
                    stride_zg, stride_zc, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO, BLOCK_N)
            w = ((q - z) * s).to(x.dtype)
            acc = tl.dot(x, w, acc=acc, out_dtype=tl.float32)

    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + b[None, :]

    out_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _validate_config(config: W4A16Config) -> None:
    if not isinstance(config, W4A16Config):
        raise TypeError(
            f"config must be a W4A16Config, got {type(config).__name__}; "
            "build one with W4A16Config(block_m=..., block_n=..., block_k=...)"
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


def _allowed_group_sizes(K: int) -> str:
    sizes = [g for g in (16, 32, 64, 128, 256) if K % g == 0]
    return ", ".join(str(g) for g in sizes + [-1])


def _validate(x, qweight, scales, zeros, layout_name, group_size, bias, out_dtype):
    """Check every argument before launch; returns (layout, M, N, K, G, out_dtype)."""
    for name, value in (("x", x), ("qweight", qweight), ("scales", scales)):
        _require_tensor(name, value)
    for name, value in (("zeros", zeros), ("bias", bias)):
        if value is not None:
            _require_tensor(name, value)

    if layout_name not in LAYOUTS:
        raise ValueError(
            f"layout={layout_name!r} is not a known weight layout (allowed: {', '.join(LAYOUTS)}); "
            "repack the weights into one of them"
        )
    layout = LAYOUTS[layout_name]

    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(
            f"x.dtype={_dtype_name(x.dtype)} is not an activation dtype (allowed: {_names(ACTIVATION_DTYPES)}); "
            "cast x with x.to(torch.float16)"
        )
    if x.dim() != 2:
        raise ValueError(f"x.shape={tuple(x.shape)} must be 2-D [M, K]; reshape with x.reshape(-1, K)")
    M, K = x.shape

    devices = {name: t.device for name, t in
               (("x", x), ("qweight", qweight), ("scales", scales), ("zeros", zeros), ("bias", bias))
               if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"tensors are on different devices ({listing}); move them all to {x.device}")

    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"group_size={group_size!r} must be an int (a divisor of K, or -1 for one group)")
    if group_size == -1:
        G = K
    elif group_size < 1 or K % group_size:
        raise ValueError(
            f"group_size={group_size} must divide K={K} (allowed: {_allowed_group_sizes(K)}); "
            "use a divisor of K, or -1 for one group over all of K"
        )
    else:
        G = group_size

    qpack = layout.qweight
    if qweight.dtype != _container_dtype(qpack):
        raise TypeError(
            f"qweight.dtype={_dtype_name(qweight.dtype)} does not match layout={layout_name!r} "
            f"(allowed: {qpack.container}); pack the codes into a "
            f"{qpack.container} tensor or pick the layout that matches"
        )
    if K % _per_axis(qpack, 0):
        raise ValueError(
            f"K={K} must be a multiple of {_per_axis(qpack, 0)} for layout={layout_name!r} "
            f"({_per_axis(qpack, 0)} codes per {qpack.container} along K); pad K"
        )

    if scales.dtype not in (x.dtype, torch.float32):
        raise TypeError(
            f"scales.dtype={_dtype_name(scales.dtype)} must be the activation dtype or float32 "
            f"(allowed: {_dtype_name(x.dtype)}, float32); cast with scales.to(x.dtype)"
        )
    if scales.dim() != 2 or scales.shape[0] != K // G:
        raise ValueError(
            f"scales.shape={tuple(scales.shape)} must be [K/G, N] = [{K // G}, N] for K={K}, "
            f"group_size={group_size}; pass one row of scales per group"
        )
    N = scales.shape[1]

    if N % _per_axis(qpack, 1):
        raise ValueError(
            f"N={N} must be a multiple of {_per_axis(qpack, 1)} for layout={layout_name!r} "
            f"({_per_axis(qpack, 1)} codes per {qpack.container} along N); pad N"
        )
    expected_q = (K // _per_axis(qpack, 0), N // _per_axis(qpack, 1))
    if tuple(qweight.shape) != expected_q:
        raise ValueError(
            f"qweight.shape={tuple(qweight.shape)} does not match layout={layout_name!r} for K={K}, N={N} "
            f"(expected {list(expected_q)}); check the layout and that scales is [K/G, N]"
        )

    if zeros is not None:
        zpack = layout.zeros
        if zeros.dtype != _container_dtype(zpack):
            raise TypeError(
                f"zeros.dtype={_dtype_name(zeros.dtype)} does not match layout={layout_name!r} "
                f"(allowed: {zpack.container}); pack the zero points like the layout says"
            )
        if N % _per_axis(zpack, 1):
            raise ValueError(
                f"N={N} must be a multiple of {_per_axis(zpack, 1)} for the zero points of layout={layout_name!r}; pad N"
            )
        expected_z = (K // G // _per_axis(zpack, 0), N // _per_axis(zpack, 1))
        if tuple(zeros.shape) != expected_z:
            raise ValueError(
                f"zeros.shape={tuple(zeros.shape)} does not match layout={layout_name!r} for K/G={K // G}, "
                f"N={N} (expected {list(expected_z)}); pack one row of zero points per group"
            )

    if bias is not None:
        if bias.shape != (N,):
            raise ValueError(f"bias.shape={tuple(bias.shape)} must be [N] = [{N}]; pass one bias per output column")
        if bias.dtype not in (x.dtype, torch.float32):
            raise TypeError(
                f"bias.dtype={_dtype_name(bias.dtype)} must be the activation dtype or float32 "
                f"(allowed: {_dtype_name(x.dtype)}, float32); cast with bias.to(x.dtype)"
            )

    if out_dtype is None:
        out_dtype = x.dtype
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype!r} is not supported (allowed: {_names(OUT_DTYPES)}); pick one of them")
    return layout, M, N, K, G, out_dtype


def check_arguments(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    *,
    layout: str,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> None:
    """Raise the ValueError / TypeError that :func:`w4a16_gemm` would raise for these arguments
    (metadata only: works on fake and meta tensors)."""
    _validate(x, qweight, scales, zeros, layout, group_size, bias, out_dtype)


def w4a16_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    *,
    layout: str,
    group_size: int,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: W4A16Config | None = None,
    kernel=None,
) -> torch.Tensor:
    """``out[M, N] = x[M, K] @ dequant(qweight, scales, zeros)[K, N] (+ bias[N])``.

    x: fp16/bf16 ``[M, K]``; qweight/zeros: packed as ``LAYOUTS[layout]`` says (module docstring);
    scales: ``[K/G, N]`` in x.dtype or float32; bias: ``[N]`` in x.dtype or float32.
    group_size: G dividing K, or -1 for one group. out_dtype: float16, bfloat16 or float32
    (default x.dtype). config: tile/launch tunables (default ``default_config(M, N, K, G)``).
    Every argument is validated before launch (ValueError / TypeError naming the argument).
    kernel: the ``@triton.jit`` function launched (default ``_w4a16_kernel``); ``kernels.zoo``
    passes copies of it with a historical bug put back, so launch and validation stay shared.
    """
    layout_rec, M, N, K, G, out_dtype = _validate(x, qweight, scales, zeros, layout, group_size, bias, out_dtype)
    if config is None:
        config = default_config(M, N, K, group_size)
    _validate_config(config)

    if M == 0:
        return torch.empty((0, N), dtype=out_dtype, device=x.device)

    split_k = config.split_k
    if split_k == 1:
        out = torch.empty((M, N), dtype=out_dtype, device=x.device)
        target = out
        stride_os = 0
    else:
        target = torch.empty((split_k, M, N), dtype=torch.float32, device=x.device)
        stride_os = target.stride(0)
    stride_om, stride_on = target.stride(-2), target.stride(-1)

    qpack, zpack = layout_rec.qweight, layout_rec.zeros
    has_zeros = zeros is not None
    z_arg = zeros if has_zeros else qweight  # never read when HAS_ZEROS is False
    z_strides = zeros.stride() if has_zeros else (0, 0)
    fuse_bias = bias is not None and split_k == 1
    bias_arg = bias if fuse_bias else scales  # never read when HAS_BIAS is False

    use_sub_dots = sub_dots(qpack, config.block_k)
    rows_per_k_step = _per_axis(qpack, 0) if use_sub_dots else 1
    path = scale_path(config.block_k, G, rows_per_k_step)
    tile_groups, tile_group_rows = (
        (config.block_k // G, G // rows_per_k_step) if path == SCALES_GROUPS_IN_TILE else (1, 1)
    )

    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n), split_k)
    (kernel or _w4a16_kernel)[grid](
        x, qweight, scales, z_arg, bias_arg, target,
        M, N, K,
        x.stride(0), x.stride(1),
        qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1),
        z_strides[0], z_strides[1],
        stride_os, stride_om, stride_on,
        G,
        QW_PER_K=_per_axis(qpack, 0), QW_PER_N=_per_axis(qpack, 1), QW_FIELD_CODE=_field_code(qpack), QW_BITS=qpack.bits,
        Z_PER_G=_per_axis(zpack, 0), Z_PER_N=_per_axis(zpack, 1), Z_FIELD_CODE=_field_code(zpack), Z_BITS=zpack.bits,
        HAS_ZEROS=has_zeros, SYM_ZERO=SYMMETRIC_ZERO, HAS_BIAS=fuse_bias,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        GROUP_M=config.group_m, SPLIT_K=split_k,
        SUB_DOTS=use_sub_dots, SCALE_PATH=path, TILE_GROUPS=tile_groups, TILE_GROUP_ROWS=tile_group_rows,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if split_k == 1:
        return out
    result = target.sum(dim=0)
    if bias is not None:
        result = result + bias.to(torch.float32)
    return result.to(out_dtype)
