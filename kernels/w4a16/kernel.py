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

Two main loops (``W4A16Config.dot``), one kernel, one launch:

- **dot path** (``dot=True``, the default above M = ``GEMV_MAX_M``): the dequantized tile is
  cast to the activation dtype and multiplied with ``tl.dot`` accumulating in float32.
- **GEMV path** (``dot=False``, decode: M <= ``GEMV_MAX_M`` by default): no ``tl.dot``. Per K
  tile the packed words are loaded once; each field's codes become float32 and the products
  ``x[m, k] * (q[k, n] - z)`` are summed over K with ``tl.sum`` in float32 (activations are
  loaded and converted to float32; no arithmetic in the activation dtype). When the tile lies in
  one group the scale is factored out: ``s * sum_k x * (q - z)``, one multiply per column per
  tile; otherwise every k row takes its own group's scale, ``sum_k x * ((q - z) * s)``. The
  zero point is deliberately not factored out (``s * (sum x*q - z * sum x)``): where most
  weights are 0 the two sums cancel and their rounding errors would exceed the error bound of
  a weight-rounding dot. The weight is never rounded to the activation dtype, so the result is
  at least as accurate as the dot path's.

Bias is added in float32 and the result stored in ``out_dtype`` by the kernel in every case.

**Fused deterministic split-K** (``split_k > 1``): program (tile, s) sums K tiles
``s*T .. s*T+T-1`` (T = ceil(K tiles / split_k); trailing splits may get none and contribute 0),
stores its float32 partial in row s of a ``[split_k, M, N]`` workspace, and increments the
tile's arrival counter (a CTA barrier, then an acq_rel ``atomic_add``). The program that sees
``split_k - 1`` (it arrived last) reads the partials back in split order 0..split_k-1 and adds
them in that order, so the result is bitwise the same whatever the arrival order; it then adds
bias, stores the output and resets the counter to 0. The counters (one int32 per output tile)
are cached per device and stream by :func:`arrival_counters`, zero between launches, so a launch
needs no host synchronization and works inside CUDA-graph capture.
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
from qkcheck.oracle.packing import AWQ_QWEIGHT, AWQ_QZEROS, GPTQ_QWEIGHT, GPTQ_QZEROS, NIBBLES_K_WEIGHT, Packing

__all__ = [
    "LAYOUTS",
    "W4A16Config",
    "check_arguments",
    "WeightLayout",
    "ZEROS_UNPACKED_UINT8",
    "arrival_counters",
    "default_config",
    "gemv_scale_path",
    "scale_path",
    "sub_dots",
    "word_row_groups",
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

    block_m/n/k: tile sizes, powers of two; block_k may exceed group_size. With ``dot`` they must
    be >= 16 (``tl.dot``); the GEMV path takes any block_m (1, 2, 4, ...) and block_n/k >= 16.
    split_k: number of K splits (1 = none); their float32 partials are reduced inside the launch
    by the split that finishes a tile last, in split order (see the module docstring).
    group_m: program-id swizzle; GROUP_M consecutive M tiles are visited per N column.
    dot: True multiplies dequantized tiles with ``tl.dot``; False selects the GEMV path (no
    ``tl.dot``, float32 products summed over K), meant for a handful of rows (decode).
    New fields go at the end with defaults, so shorter ``as_list()`` lists still parse.
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2
    dot: bool = True

# (largest M, config) — first row whose bound is >= M wins; the last row has no bound.
# Rows at M <= DECODE_MAX_M are picked by _decode_config instead.
_TILE_TABLE: tuple[tuple[int | None, W4A16Config], ...] = (
    (64, W4A16Config(block_m=32, block_n=64, block_k=64, group_m=8, num_warps=4, num_stages=3)),
    (256, W4A16Config(block_m=64, block_n=128, block_k=64, group_m=8, num_warps=4, num_stages=3)),
    (None, W4A16Config(block_m=128, block_n=128, block_k=32, group_m=8, num_warps=8, num_stages=3)),
)

DECODE_MAX_M = 16  # default_config treats M up to this as decode: split-K to fill the GPU
GEMV_MAX_M = 1  # ... and up to this M takes the GEMV path (above it, the tensor-core tl.dot path;
# on an H100 the GEMV path at M = 4 took 3x the dot path's time)
# programs a decode launch aims for: about four per SM of a 132-SM H100, so that every SM has
# several weight streams in flight (N / BLOCK_N tiles alone are far too few at N = 4096)
DECODE_TARGET_PROGRAMS = 512
MAX_DEFAULT_SPLIT_K = 16
# split-K workspace traffic (float32 partials, written and read back) kept <= 1/2 of the weight
# bytes: split_k * M * N * 8 <= (K * N / 2) / 2, i.e. split_k <= K / (32 * M)
_WORKSPACE_BYTES_DIVISOR = 32
UNROLLED_SPLIT_K = tl.constexpr(32)  # the split-K reduction is unrolled up to this many splits
MAX_GEMV_TILE = 2**20  # BLOCK_M * BLOCK_K * BLOCK_N: the GEMV product tile (Triton's tensor size limit)
# the GEMV path's largest BLOCK_M: compiled on an H100 (Triton 3.6), GEMV tiles of 16 rows stored
# wrong bfloat16 outputs (fp16 and float32 outputs were right); more rows belong on the tl.dot path
GEMV_MAX_BLOCK_M = 8


def _next_pow2_at_least_16(n: int) -> int:
    return max(MIN_DOT_BLOCK, triton.next_power_of_2(max(int(n), 1)))


def _decode_config(M: int, N: int, K: int, dot: bool) -> W4A16Config:
    """M <= DECODE_MAX_M: one BLOCK_M tile over all rows and the fewest K splits (powers of two,
    each split keeping at least one K tile, workspace capped) that reach a program count, with the
    widest BLOCK_N whose programs reach at least half of it, else the most programs found.
    dot path: BLOCK_K 64, 4 pipeline stages, DECODE_TARGET_PROGRAMS / 2, BLOCK_N 128, 64 or 32;
    GEMV path: BLOCK_K 128, 1 stage, 2 * DECODE_TARGET_PROGRAMS, BLOCK_N 64 or 32.
    At N = K = 4096 on an H100 (Triton 3.6; benchmarks/bench_kernels.py) these were the fastest
    of the candidates timed: GEMV bm1/bn64/bk128/split 16 at M = 1, dot bm16/bn128/bk64/split 8
    at M = 16."""
    block_m = _next_pow2_at_least_16(M) if dot else min(triton.next_power_of_2(M), GEMV_MAX_BLOCK_M)
    # GEMV: 128-row K tiles (16 word rows, one g128 group) over narrower columns and twice the
    # programs; on the H100 (N = K = 4096, M = 1) bn64/bk128/split 16 took 8.9 us, bn128/bk64 13.9
    block_k = min(64 if dot else 128, _next_pow2_at_least_16(K))
    k_tiles = triton.cdiv(K, block_k)
    max_split = max(1, min(MAX_DEFAULT_SPLIT_K, k_tiles, K // (_WORKSPACE_BYTES_DIVISOR * M)))
    # the dot path's programs each carry 16 rows of MMA work: half as many programs suffice (on the
    # H100, M = 4: split 8 took 14.1 us, split 16 17.1 us)
    target = 2 * DECODE_TARGET_PROGRAMS if not dot else DECODE_TARGET_PROGRAMS // 2
    best = None
    for block_n in ((128, 64, 32) if dot else (64, 32)):
        block_n = min(block_n, _next_pow2_at_least_16(N))
        tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
        split_k = 1
        while split_k * 2 <= max_split and tiles * split_k < target:
            split_k *= 2
        programs = tiles * split_k
        if best is None or programs > best[0]:
            best = (programs, block_n, split_k)
        if programs >= target // 2:  # the widest BLOCK_N that gets half-way
            break
    _, block_n, split_k = best
    return W4A16Config(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k, group_m=8,
                       num_warps=4, num_stages=4 if dot else 1, dot=dot)


def default_config(M: int, N: int, K: int, group_size: int, *, dot: bool | None = None) -> W4A16Config:
    """The launch config for an ``[M, K] x [K, N]`` problem.

    M <= DECODE_MAX_M (decode): the GEMV path up to GEMV_MAX_M rows, the ``tl.dot`` path above,
    with split-K (fused, one launch) and BLOCK_N 128, 64 or 32 so that enough programs run
    (:func:`_decode_config`); at N = K = 4096 that is M=1 -> GEMV bm1/bn64/bk128/split 16, M=4 and M=16 -> dot
    bm16/bn128/bk64/split 8. Larger M: a small tile table
    keyed by M, with blocks clamped to the problem size. ``dot``: None picks as above; True or
    False forces that path (same block_k).

    BLOCK_K is *not* clamped to group_size: the kernel applies per-row group scales, so a tile
    spanning several groups is correct (``group_size`` is accepted for tuning tables that want it).
    """
    del group_size
    if M <= DECODE_MAX_M:
        return _decode_config(max(M, 1), N, K, (M > GEMV_MAX_M) if dot is None else bool(dot))
    config = next(cfg for bound, cfg in _TILE_TABLE if bound is None or M <= bound)
    config = dataclasses.replace(
        config,
        block_m=min(config.block_m, _next_pow2_at_least_16(M)),
        block_n=min(config.block_n, _next_pow2_at_least_16(N)),
        block_k=min(config.block_k, _next_pow2_at_least_16(K)),
    )
    if dot is False:
        config = dataclasses.replace(config, dot=False, block_m=min(config.block_m, GEMV_MAX_BLOCK_M))
        while config.block_m * config.block_n * config.block_k > MAX_GEMV_TILE // 16:
            config = dataclasses.replace(config, block_m=config.block_m // 2)
    return config


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


def gemv_scale_path(block_k: int, group_size: int) -> int:
    """The GEMV path's scale addressing: SCALES_ONE_GROUP when every K tile lies in one group (the
    scale then multiplies the tile's float32 sum once per column), else SCALES_PER_ROW."""
    return SCALES_ONE_GROUP if group_size % block_k == 0 else SCALES_PER_ROW


def word_row_groups(qweight_packing: Packing, group_size: int) -> bool:
    """Whether the P codes of a word packed along K always share a group (P divides the group
    size), so the GEMV per-row path gathers scales once per word row instead of once per field."""
    per_k = _per_axis(qweight_packing, 0)
    return per_k > 1 and group_size % per_k == 0


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
def _dot_accumulate(
    x_ptr, qw_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, pid_n, tile_begin, tile_end,
    N, K, GROUP_SIZE, stride_xm, stride_xk, stride_qr, stride_qc, stride_sg, stride_sn, stride_zg, stride_zc,
    QW_PER_K: tl.constexpr, QW_PER_N: tl.constexpr, QW_FIELD_CODE: tl.constexpr, QW_BITS: tl.constexpr,
    Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SUB_DOTS: tl.constexpr, SCALE_PATH: tl.constexpr, TILE_GROUPS: tl.constexpr, TILE_GROUP_ROWS: tl.constexpr,
):
    """The ``tl.dot`` path: float32 ``[BLOCK_M, BLOCK_N]`` sum over K tiles ``tile_begin..tile_end-1``
    of ``x @ ((q - z) * s).to(x.dtype)``."""
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
    return acc


@triton.jit
def _zeros_at(z_ptr, groups, offs_n, mask, stride_zg, stride_zc,
              Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr):
    """float32 ``2**23 + z`` of groups ``groups`` x columns ``offs_n`` (any shapes that broadcast
    together and with ``mask``)."""
    z_shift = ((Z_FIELD_CODE >> (4 * (offs_n % Z_PER_N))) & 0xF) * Z_BITS
    z_words = tl.load(
        z_ptr + (groups // Z_PER_G) * stride_zg + (offs_n // Z_PER_N) * stride_zc, mask=mask, other=0,
    ).to(tl.int32)
    return _codes_as_f32((z_words >> z_shift) & ((1 << Z_BITS) - 1))


@triton.jit
def _gemv_scales_and_zeros(s_ptr, z_ptr, groups, offs_n, mask, stride_sg, stride_sn, stride_zg, stride_zc,
                           Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr,
                           Z_BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr):
    """float32 scales and ``2**23 + z`` of groups ``groups`` x columns ``offs_n`` (broadcasting shapes)."""
    s = tl.load(s_ptr + groups * stride_sg + offs_n * stride_sn, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        z = _zeros_at(z_ptr, groups, offs_n, mask, stride_zg, stride_zc, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
    else:
        z = tl.zeros_like(s) + (8388608.0 + SYM_ZERO)
    return s, z


@triton.jit
def _gemv_word_tile(qw_ptr, s_ptr, z_ptr, tile, offs_n, mask_n, K, GROUP_SIZE, stride_qr, stride_qc, stride_sg,
                    stride_sn, stride_zg, stride_zc,
                    Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr,
                    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, P: tl.constexpr, QW_ROWS: tl.constexpr,
                    SCALE_PATH: tl.constexpr, WORD_ROW_GROUPS: tl.constexpr):
    """K tile ``tile`` of codes packed along K (P per word): its word rows ``offs_r`` and their
    mask, the words ``[QW_ROWS, BLOCK_N]`` (int32), and the scales and ``2**23 + z`` that serve the
    whole tile: ``[1, BLOCK_N]`` (SCALE_PATH 0: one group), ``[QW_ROWS, BLOCK_N]``
    (WORD_ROW_GROUPS: one group per word row), or placeholders (every k row gathers its own)."""
    offs_r = tile * QW_ROWS + tl.arange(0, QW_ROWS)
    mask_r = offs_r < K // P
    words = tl.load(
        qw_ptr + offs_r[:, None] * stride_qr + offs_n[None, :] * stride_qc,
        mask=mask_r[:, None] & mask_n[None, :], other=0, eviction_policy="evict_first",
    ).to(tl.int32)
    if SCALE_PATH == 0:
        s, z = _gemv_scales_and_zeros(
            s_ptr, z_ptr, (tile * QW_ROWS * P) // GROUP_SIZE, offs_n[None, :], mask_n[None, :], stride_sg,
            stride_sn, stride_zg, stride_zc, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO)
    elif WORD_ROW_GROUPS:
        s, z = _gemv_scales_and_zeros(
            s_ptr, z_ptr, (offs_r * P // GROUP_SIZE)[:, None], offs_n[None, :],
            mask_r[:, None] & mask_n[None, :], stride_sg, stride_sn, stride_zg, stride_zc,
            Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO)
    else:
        s = tl.zeros_like(offs_n[None, :].to(tl.float32))
        z = s
    return offs_r, words, s, z


@triton.jit
def _gemv_accumulate(
    x_ptr, qw_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, pid_n, tile_begin, tile_end,
    N, K, GROUP_SIZE, stride_xm, stride_xk, stride_qr, stride_qc, stride_sg, stride_sn, stride_zg, stride_zc,
    QW_PER_K: tl.constexpr, QW_PER_N: tl.constexpr, QW_FIELD_CODE: tl.constexpr, QW_BITS: tl.constexpr,
    Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SCALE_PATH: tl.constexpr, WORD_ROW_GROUPS: tl.constexpr,
):
    """The GEMV path (no ``tl.dot``): float32 ``[BLOCK_M, BLOCK_N]`` sum over K tiles
    ``tile_begin..tile_end-1`` of ``x[m, k] * (q[k, n] - z) * s``, everything in float32.

    Codes packed along K (P per word): one pass per word field i, whose codes ``[BLOCK_K/P, BLOCK_N]``
    (k rows ``P*r + i``) meet the matching strided columns of x. With BLOCK_M == 1 the products are
    summed elementwise into a float32 tile of the words' shape and reduced over its rows once, after
    the split's last K tile (on an H100, N = K = 4096: 8.9 us against 13.9 us for the per-field
    reduction); with more rows each field's products are reduced over K as they come. Along N: every field at once, as
    ``[BLOCK_K, BLOCK_N/P, P]`` codes (column ``P*c + e``) and a ``[BLOCK_M, BLOCK_N/P, P]`` sum,
    reshaped to ``[BLOCK_M, BLOCK_N]`` once at the end. SCALE_PATH 0 (the tile lies in one group):
    the scale multiplies the tile's fp32 sum of ``x * (q - z)`` once per column; otherwise every
    k row takes its own group's scale (WORD_ROW_GROUPS: the P rows of a word share a group, so the
    gather is done once per word row)."""
    QW_MASK: tl.constexpr = (1 << QW_BITS) - 1
    if QW_PER_N == 1 and BLOCK_M == 1:
        # one row (decode): products are summed elementwise into a [BLOCK_K/P, BLOCK_N] float32
        # tile, the shape of the packed words, and reduced over its rows once, after the last K
        # tile; no per-field reduction across threads inside the loop
        P: tl.constexpr = QW_PER_K
        QW_ROWS: tl.constexpr = BLOCK_K // P
        acc2 = tl.zeros((QW_ROWS, BLOCK_N), dtype=tl.float32)
        for tile in range(tile_begin, tile_end):
            offs_r, words, s, z = _gemv_word_tile(
                qw_ptr, s_ptr, z_ptr, tile, offs_n, mask_n, K, GROUP_SIZE, stride_qr, stride_qc, stride_sg,
                stride_sn, stride_zg, stride_zc, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO,
                P, QW_ROWS, SCALE_PATH, WORD_ROW_GROUPS)
            if SCALE_PATH == 0:
                part = tl.zeros((QW_ROWS, BLOCK_N), dtype=tl.float32)
            for i in tl.static_range(P):
                offs_k = offs_r * P + i
                mask_k = offs_k < K
                x = tl.sum(tl.load(
                    x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0,
                ).to(tl.float32), axis=0)  # [QW_ROWS]: the one row's activations (a sum over 1 row)
                shift = ((QW_FIELD_CODE >> (4 * i)) & 0xF) * QW_BITS
                q = _codes_as_f32((words >> shift) & QW_MASK)
                if SCALE_PATH == 0:
                    part += x[:, None] * (q - z)
                else:
                    if not WORD_ROW_GROUPS:
                        s, z = _gemv_scales_and_zeros(
                            s_ptr, z_ptr, (offs_k // GROUP_SIZE)[:, None], offs_n[None, :],
                            mask_k[:, None] & mask_n[None, :], stride_sg, stride_sn, stride_zg, stride_zc,
                            Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO)
                    acc2 += x[:, None] * ((q - z) * s)
            if SCALE_PATH == 0:
                acc2 += part * s
        acc = tl.sum(acc2, axis=0)[None, :]
    elif QW_PER_N == 1:
        P: tl.constexpr = QW_PER_K
        QW_ROWS: tl.constexpr = BLOCK_K // P
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tile in range(tile_begin, tile_end):
            offs_r, words, s, z = _gemv_word_tile(
                qw_ptr, s_ptr, z_ptr, tile, offs_n, mask_n, K, GROUP_SIZE, stride_qr, stride_qc, stride_sg,
                stride_sn, stride_zg, stride_zc, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO,
                P, QW_ROWS, SCALE_PATH, WORD_ROW_GROUPS)
            if SCALE_PATH == 0:
                part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for i in tl.static_range(P):
                offs_k = offs_r * P + i
                mask_k = offs_k < K
                x = tl.load(
                    x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0,
                ).to(tl.float32)
                shift = ((QW_FIELD_CODE >> (4 * i)) & 0xF) * QW_BITS
                q = _codes_as_f32((words >> shift) & QW_MASK)
                if SCALE_PATH == 0:
                    part += tl.sum(x[:, :, None] * (q - z)[None, :, :], axis=1)
                else:
                    if not WORD_ROW_GROUPS:
                        s, z = _gemv_scales_and_zeros(
                            s_ptr, z_ptr, (offs_k // GROUP_SIZE)[:, None], offs_n[None, :],
                            mask_k[:, None] & mask_n[None, :], stride_sg, stride_sn, stride_zg, stride_zc,
                            Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO)
                    acc += tl.sum(x[:, :, None] * ((q - z) * s)[None, :, :], axis=1)
            if SCALE_PATH == 0:
                acc += part * s
    else:
        P: tl.constexpr = QW_PER_N
        QW_COLS: tl.constexpr = BLOCK_N // P
        offs_c = pid_n * QW_COLS + tl.arange(0, QW_COLS)
        mask_c = offs_c < N // P
        offs_e = tl.arange(0, P)
        offs_n2 = offs_c[:, None] * P + offs_e[None, :]  # [QW_COLS, P]: column of element e of word c
        mask_n2 = mask_c[:, None] & (offs_e < P)[None, :]
        shifts = _field_shifts(QW_FIELD_CODE, P, QW_BITS)
        acc3 = tl.zeros((BLOCK_M, QW_COLS, P), dtype=tl.float32)
        for tile in range(tile_begin, tile_end):
            offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            words = tl.load(
                qw_ptr + offs_k[:, None] * stride_qr + offs_c[None, :] * stride_qc,
                mask=mask_k[:, None] & mask_c[None, :], other=0, eviction_policy="evict_first",
            ).to(tl.int32)
            q = _codes_as_f32((words[:, :, None] >> shifts[None, None, :]) & QW_MASK)  # [BLOCK_K, QW_COLS, P]
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=mask_m[:, None] & mask_k[None, :], other=0.0,
            ).to(tl.float32)
            if SCALE_PATH == 0:
                group = (tile * BLOCK_K) // GROUP_SIZE
                s, z = _gemv_scales_and_zeros(
                    s_ptr, z_ptr, group, offs_n2, mask_n2, stride_sg, stride_sn, stride_zg, stride_zc,
                    Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO)
                part = tl.sum(x[:, :, None, None] * (q - z)[None, :, :, :], axis=1)
                acc3 += part * s[None, :, :]
            else:
                s, z = _gemv_scales_and_zeros(
                    s_ptr, z_ptr, (offs_k // GROUP_SIZE)[:, None, None], offs_n2[None, :, :],
                    mask_k[:, None, None] & mask_n2[None, :, :], stride_sg, stride_sn, stride_zg, stride_zc,
                    Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO)
                acc3 += tl.sum(x[:, :, None, None] * ((q - z) * s)[None, :, :, :], axis=1)
        acc = tl.reshape(acc3, (BLOCK_M, BLOCK_N))
    return acc


@triton.jit
def _store_tile(acc, offs_m, offs_n, mask_m, mask_n, bias_ptr, out_ptr, stride_om, stride_on,
                HAS_BIAS: tl.constexpr):
    """Add bias in float32 to the float32 tile ``acc`` and store it in the output dtype."""
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + b[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _split_k_epilogue(acc, offs_m, offs_n, mask_m, mask_n, tile_id, pid_k,
                      ws_ptr, stride_ws, stride_wm, stride_wn, counter_ptr,
                      bias_ptr, out_ptr, stride_om, stride_on,
                      HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Finish output tile ``tile_id`` with this split's float32 partial ``acc``.

    SPLIT_K == 1: bias and store. Otherwise: write the partial to workspace row ``pid_k``, then
    count this split in as arrived (acq_rel atomic on the tile's counter, after a CTA barrier so
    every thread's partial stores are ordered before it); the split that arrives last adds the
    partials in split order 0..SPLIT_K-1 (deterministic whatever the arrival order), adds bias,
    stores the output and resets the counter to 0 for the next launch."""
    if SPLIT_K == 1:
        _store_tile(acc, offs_m, offs_n, mask_m, mask_n, bias_ptr, out_ptr, stride_om, stride_on, HAS_BIAS)
    else:
        mask = mask_m[:, None] & mask_n[None, :]
        ws_tile = ws_ptr + offs_m[:, None] * stride_wm + offs_n[None, :] * stride_wn
        tl.store(ws_tile + pid_k * stride_ws, acc, mask=mask)
        tl.debug_barrier()
        arrived = tl.atomic_add(counter_ptr + tile_id, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.load(ws_tile, mask=mask, other=0.0, cache_modifier=".cg")
            if SPLIT_K <= UNROLLED_SPLIT_K:
                # unrolled: the partials' loads are independent and issue together (a loop would
                # wait for one L2 round trip per split); the adds keep split order
                for split in tl.static_range(1, SPLIT_K):
                    total += tl.load(ws_tile + split * stride_ws, mask=mask, other=0.0, cache_modifier=".cg")
            else:
                for split in range(1, SPLIT_K):
                    total += tl.load(ws_tile + split * stride_ws, mask=mask, other=0.0, cache_modifier=".cg")
            _store_tile(total, offs_m, offs_n, mask_m, mask_n, bias_ptr, out_ptr, stride_om, stride_on, HAS_BIAS)
            tl.atomic_xchg(counter_ptr + tile_id, 0, sem="relaxed")


@triton.jit
def _w4a16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr,
    M, N, K,
    stride_xm, stride_xk,
    stride_qr, stride_qc,
    stride_sg, stride_sn,
    stride_zg, stride_zc,
    stride_om, stride_on,
    stride_ws, stride_wm, stride_wn,
    GROUP_SIZE,
    QW_PER_K: tl.constexpr, QW_PER_N: tl.constexpr, QW_FIELD_CODE: tl.constexpr, QW_BITS: tl.constexpr,
    Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, DOT: tl.constexpr,
    SUB_DOTS: tl.constexpr, SCALE_PATH: tl.constexpr, TILE_GROUPS: tl.constexpr, TILE_GROUP_ROWS: tl.constexpr,
    WORD_ROW_GROUPS: tl.constexpr,
):
    """One output tile x one K split: the dot or GEMV main loop, then the fused split-K epilogue."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    _, pid_n, offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    # this split's contiguous run of K tiles (possibly none)
    tile_begin, tile_end = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)

    if DOT:
        acc = _dot_accumulate(
            x_ptr, qw_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, pid_n, tile_begin, tile_end,
            N, K, GROUP_SIZE, stride_xm, stride_xk, stride_qr, stride_qc, stride_sg, stride_sn, stride_zg, stride_zc,
            QW_PER_K, QW_PER_N, QW_FIELD_CODE, QW_BITS, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS,
            HAS_ZEROS, SYM_ZERO, BLOCK_M, BLOCK_N, BLOCK_K, SUB_DOTS, SCALE_PATH, TILE_GROUPS, TILE_GROUP_ROWS)
    else:
        acc = _gemv_accumulate(
            x_ptr, qw_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, pid_n, tile_begin, tile_end,
            N, K, GROUP_SIZE, stride_xm, stride_xk, stride_qr, stride_qc, stride_sg, stride_sn, stride_zg, stride_zc,
            QW_PER_K, QW_PER_N, QW_FIELD_CODE, QW_BITS, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS,
            HAS_ZEROS, SYM_ZERO, BLOCK_M, BLOCK_N, BLOCK_K, SCALE_PATH, WORD_ROW_GROUPS)

    _split_k_epilogue(acc, offs_m, offs_n, mask_m, mask_n, pid, pid_k,  # pid: the output tile's counter
                      ws_ptr, stride_ws, stride_wm, stride_wn, counter_ptr,
                      bias_ptr, out_ptr, stride_om, stride_on, HAS_BIAS, SPLIT_K)


def _validate_config(config: W4A16Config) -> None:
    if not isinstance(config, W4A16Config):
        raise TypeError(
            f"config must be a W4A16Config, got {type(config).__name__}; "
            "build one with W4A16Config(block_m=..., block_n=..., block_k=...)"
        )
    if not isinstance(config.dot, bool):
        raise TypeError(
            f"config.dot={config.dot!r} must be a bool (True: the tl.dot path, False: the GEMV path); "
            "pass dot=True or dot=False"
        )
    for name in ("block_m", "block_n", "block_k"):
        value = getattr(config, name)
        if name == "block_m" and not config.dot:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value & (value - 1):
                raise ValueError(
                    f"config.block_m={value!r} must be a power of two (allowed with dot=False: 1, 2, 4, {GEMV_MAX_BLOCK_M}); "
                    f"round it to {triton.next_power_of_2(max(value, 1)) if isinstance(value, int) else 1}"
                )
            if value > GEMV_MAX_BLOCK_M:
                raise ValueError(
                    f"config.block_m={value} is too large for dot=False (allowed: 1, 2, 4, {GEMV_MAX_BLOCK_M}: "
                    "the GEMV path serves few rows); use dot=True for more rows, or a smaller block_m"
                )
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < MIN_DOT_BLOCK or value & (value - 1):
            raise ValueError(
                f"config.{name}={value!r} must be a power of two >= {MIN_DOT_BLOCK} "
                f"(tl.dot needs tiles of at least {MIN_DOT_BLOCK}; allowed: 16, 32, 64, 128, ...); "
                f"round it to {_next_pow2_at_least_16(value if isinstance(value, int) else 16)}"
            )
    for name in ("split_k", "group_m", "num_stages"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.{name}={value!r} must be an integer >= 1; use 1 for the default")
    if not isinstance(config.num_warps, int) or config.num_warps < 1 or config.num_warps & (config.num_warps - 1):
        raise ValueError(
            f"config.num_warps={config.num_warps!r} must be a power of two (allowed: 1, 2, 4, 8, 16); use 4"
        )
    if not config.dot:
        tile = config.block_m * config.block_k * config.block_n
        if tile > MAX_GEMV_TILE:
            raise ValueError(
                f"config block_m*block_k*block_n={config.block_m}*{config.block_k}*{config.block_n}={tile} "
                f"is too large for dot=False (allowed: <= {MAX_GEMV_TILE}, the GEMV path's product tile); "
                "lower block_m, block_k or block_n, or use dot=True for many rows"
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


# arrival counters of the fused split-K reduction, one int32 per output tile, all 0 between
# launches (the last split of a tile resets its counter); keyed by (device, stream) so launches
# that may run concurrently on different streams never share counters
_ARRIVAL_COUNTERS: dict[tuple, torch.Tensor] = {}
# counters replaced by larger ones stay allocated: a captured CUDA graph may still point at them
_RETIRED_COUNTERS: list[torch.Tensor] = []
_MIN_COUNTERS = 1024


def _counter_key(device: torch.device) -> tuple:
    if device.type == "cuda":  # "cuda" and "cuda:0" name one buffer when 0 is the current device
        index = device.index if device.index is not None else torch.cuda.current_device()
        return ("cuda", index, torch.cuda.current_stream(index).cuda_stream)
    return (device.type, device.index, None)


def arrival_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """A zeroed int32 buffer of at least ``tiles`` counters for a split-K launch on ``device``
    (cached per device and stream, grown by doubling; no host synchronization). Inside CUDA-graph
    capture a buffer that must grow is allocated for that launch only: its zero fill is captured
    with the graph and runs at every replay, before the kernel."""
    key = _counter_key(device)
    cached = _ARRIVAL_COUNTERS.get(key)
    if cached is not None and cached.numel() >= tiles:
        return cached
    size = max(tiles, _MIN_COUNTERS, 0 if cached is None else 2 * cached.numel())
    fresh = torch.zeros(size, dtype=torch.int32, device=device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return fresh
    if cached is not None:
        _RETIRED_COUNTERS.append(cached)
    _ARRIVAL_COUNTERS[key] = fresh
    return fresh


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
    One kernel launch, split-K included.

    kernel: a ``@triton.jit`` replacement for the ``tl.dot`` kernel with the original argument
    list (``x, qweight, scales, zeros, bias, out, M, N, K, <strides>, stride_os, stride_om,
    stride_on, GROUP_SIZE, <constexprs>``: see ``_launch_replacement``); ``kernels.zoo`` passes
    copies of the kernel with a historical bug put back, so launch and validation stay shared.
    It writes split-K partials to a ``[split_k, M, N]`` float32 workspace that the launcher
    reduces; it needs ``config.dot`` True (the default picks the dot path when kernel is given).
    """
    layout_rec, M, N, K, G, out_dtype = _validate(x, qweight, scales, zeros, layout, group_size, bias, out_dtype)
    if config is None:
        config = default_config(M, N, K, group_size, dot=True if kernel is not None else None)
    _validate_config(config)
    if kernel is not None and not config.dot:
        raise ValueError(
            "config.dot=False selects the GEMV path, which has no replaceable kernel; kernel= replaces "
            "the tl.dot kernel: pass a config with dot=True (or config=None)"
        )

    if M == 0:
        return torch.empty((0, N), dtype=out_dtype, device=x.device)

    qpack, zpack = layout_rec.qweight, layout_rec.zeros
    has_zeros = zeros is not None
    z_arg = zeros if has_zeros else qweight  # never read when HAS_ZEROS is False
    z_strides = zeros.stride() if has_zeros else (0, 0)

    use_sub_dots = config.dot and sub_dots(qpack, config.block_k)
    rows_per_k_step = _per_axis(qpack, 0) if use_sub_dots else 1
    if config.dot:
        path = scale_path(config.block_k, G, rows_per_k_step)
    else:
        path = gemv_scale_path(config.block_k, G)
    tile_groups, tile_group_rows = (
        (config.block_k // G, G // rows_per_k_step) if config.dot and path == SCALES_GROUPS_IN_TILE else (1, 1)
    )
    common = dict(
        QW_PER_K=_per_axis(qpack, 0), QW_PER_N=_per_axis(qpack, 1), QW_FIELD_CODE=_field_code(qpack), QW_BITS=qpack.bits,
        Z_PER_G=_per_axis(zpack, 0), Z_PER_N=_per_axis(zpack, 1), Z_FIELD_CODE=_field_code(zpack), Z_BITS=zpack.bits,
        HAS_ZEROS=has_zeros, SYM_ZERO=SYMMETRIC_ZERO,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        GROUP_M=config.group_m, SPLIT_K=config.split_k,
        SUB_DOTS=use_sub_dots, SCALE_PATH=path, TILE_GROUPS=tile_groups, TILE_GROUP_ROWS=tile_group_rows,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if kernel is not None:
        return _launch_replacement(kernel, x, qweight, scales, z_arg, z_strides, bias, M, N, G, out_dtype,
                                   config, common)

    tiles = triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n)
    out = torch.empty((M, N), dtype=out_dtype, device=x.device)
    if config.split_k > 1:
        workspace = torch.empty((config.split_k, M, N), dtype=torch.float32, device=x.device)
        counters = arrival_counters(x.device, tiles)
    else:
        workspace = counters = out  # never read with SPLIT_K == 1
    bias_arg = bias if bias is not None else scales  # never read when HAS_BIAS is False
    _w4a16_kernel[(tiles, config.split_k)](
        x, qweight, scales, z_arg, bias_arg, out, workspace, counters,
        M, N, K,
        x.stride(0), x.stride(1),
        qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1),
        z_strides[0], z_strides[1],
        out.stride(0), out.stride(1),
        workspace.stride(0), workspace.stride(-2), workspace.stride(-1),
        G,
        HAS_BIAS=bias is not None, DOT=config.dot, WORD_ROW_GROUPS=word_row_groups(qpack, G),
        **common,
    )
    return out


def _launch_replacement(kernel, x, qweight, scales, z_arg, z_strides, bias, M, N, G, out_dtype, config, common):
    """Launch a replacement dot kernel with the original argument list: no workspace or counter
    arguments; with split_k > 1 it stores float32 partials ``[split_k, M, N]`` (``stride_os``
    apart, bias not added) that the launcher reduces with ``torch.sum``, then adds bias and casts."""
    split_k = config.split_k
    if split_k == 1:
        target = torch.empty((M, N), dtype=out_dtype, device=x.device)
        stride_os = 0
    else:
        target = torch.empty((split_k, M, N), dtype=torch.float32, device=x.device)
        stride_os = target.stride(0)
    fuse_bias = bias is not None and split_k == 1
    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n), split_k)
    kernel[grid](
        x, qweight, scales, z_arg, bias if fuse_bias else scales, target,
        M, N, x.shape[1],
        x.stride(0), x.stride(1),
        qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1),
        z_strides[0], z_strides[1],
        stride_os, target.stride(-2), target.stride(-1),
        G,
        HAS_BIAS=fuse_bias,
        **common,
    )
    if split_k == 1:
        return target
    result = target.sum(dim=0)
    if bias is not None:
        result = result + bias.to(torch.float32)
    return result.to(out_dtype)
