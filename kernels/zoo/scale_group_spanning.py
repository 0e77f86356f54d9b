"""Zoo: W4A16 GEMM that applies the first scale group of each K-tile to the whole tile.

Seed 003 (Triton W4A16 GEMM in a serving engine, fixed by clamping BLOCK_K to group_size):
when BLOCK_K > group_size a K-tile spans several scale groups, but the kernel loaded the scale
(and zero point) of the tile's first group only and applied it to every row of the tile, so the
tail rows of each tile were dequantized with the wrong scale — silently, and only for tile
configs with BLOCK_K > group_size (e.g. GPTQ W4A16 G32 models, whose launcher tile table picked
BLOCK_K=64/128 at some M). Symptoms appeared as degraded output at long context.

This is a copy of ``kernels.w4a16.kernel._w4a16_kernel`` with only that mistake put back (every
tile takes the kernel's one-group scale path, whatever the launcher's SCALE_PATH says; the jit
helpers are the bundled ones); the launcher (validation, default tile table, split-K with the
partials reduced in torch, as the historical launcher did) is the bundled one, and its default
picks BLOCK_K=64 for M <= 256 whatever the group size, so groups of 32 span two per tile.
"""
from __future__ import annotations

import triton
import triton.language as tl

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.torch_io import torch_dtype
from qkcheck.kernels.triton.tiles import output_tile, split_k_tiles
from qkcheck.kernels.w4a16.adapter import W4A16, _w4a16_default
from qkcheck.kernels.w4a16.kernel import (
    W4A16Config, _codes_as_f32, _field_shifts, _tile_scales_and_zeros, _unpacked_codes_as_f32, w4a16_gemm,
)


@triton.jit
def _w4a16_kernel_first_group_scale(
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
    pid_k = tl.program_id(1)
    _, pid_n, offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    # this split's contiguous run of K tiles
    tile_begin, tile_end = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)

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
        # THE BUG (seed 003): every tile takes the one-group path, whatever SCALE_PATH says — the
        # scale and zero point of the group of the tile's first row — so when BLOCK_K > group_size
        # the tile's later rows get the first group's scale
        s, z = _tile_scales_and_zeros(
            s_ptr, z_ptr, tile, offs_n, mask_n, K, GROUP_SIZE, stride_sg, stride_sn, stride_zg, stride_zc,
            Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS, HAS_ZEROS, SYM_ZERO, BLOCK_K, BLOCK_N, 0, 1, 1)

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
            w = ((q - z) * s).to(x.dtype)
            acc = tl.dot(x, w, acc=acc, out_dtype=tl.float32)

    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + b[None, :]

    out_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def w4a16_gemm_first_group_scale(x, qweight, scales, zeros=None, **kwargs):
    """The bundled launcher, launching the buggy kernel copy."""
    return w4a16_gemm(x, qweight, scales, zeros, kernel=_w4a16_kernel_first_group_scale, **kwargs)


def _call(t, params, config):
    return w4a16_gemm_first_group_scale(
        t["x"], t["qweight"], t["scales"], t["zeros"], layout=params["layout"], group_size=params["group_size"],
        bias=t["bias"], out_dtype=torch_dtype(params["out_dtype"]),
        config=W4A16Config(**config) if config else None,
    )


ADAPTER = KernelAdapter(
    name="zoo:scale_group_spanning",
    op="w4a16_gemm",
    pack=W4A16.pack,
    call=_call,
    layouts=W4A16.layouts,
    tunables=W4A16.tunables,
    default_config=_w4a16_default,
    description="seed 003: first scale group of each K-tile applied to the whole tile (BLOCK_K > group_size)",
)


def adapters():
    return (ADAPTER,)
