"""Program-to-tile mapping shared by the tiled GEMM kernels (grid ``(output tiles, K splits)``)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile: ``(pid_m, pid_n, offs_m, offs_n, mask_m, mask_n)``. Grouped
    ordering: GROUP_M tiles along M share an N column before moving on (program ``tl.program_id(0)``)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return pid_m, pid_n, offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def split_k_tiles(K, pid_k, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """``(tile_begin, tile_end)``: split ``pid_k``'s contiguous run of K tiles (possibly empty)."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    tile_begin = pid_k * tiles_per_split
    return tile_begin, tl.minimum(tile_begin + tiles_per_split, k_tiles)
