"""Bundled-kernel speed against their floors on the GPU, measured side by side in one run.

    python benchmarks/bench_kernels.py [--device cuda] [--quick] [--only w4a16,scaled_mm,moe] [--json]
    python benchmarks/bench_kernels.py --smoke   # tiny shapes, CPU interpreter: every code path, no timing value

Sections (``--only`` picks some):

- ``w4a16``: ``kernels.w4a16.kernel.w4a16_gemm``, GPTQ layout (qweight int32 ``[K/8, N]``, fp16
  scales ``[K/128, N]``, int32 zeros ``[K/128, N/8]``), fp16 activations, M in 1, 4, 16 and
  N = K = 4096. Memory floor = bytes(qweight + scales + zeros + x + out) / copy bandwidth; the row
  is the fraction of that floor reached (floor time / kernel time, goal >= 50 %), for the best of
  a few valid configs (named in the detail) next to ``default_config``'s fraction.
- ``scaled_mm``: ``kernels.scaled_mm.kernel.scaled_mm``, float8_e4m3fn per-token x per-channel,
  M = N = K = 4096, bf16 out, the weight a ``[K, N]`` transposed view of a contiguous ``[N, K]``,
  against ``torch._scaled_mm`` (row-wise scales where the installed torch has them, else
  per-tensor scales, else a bf16 ``torch.matmul``; the detail says which ran). The row is the
  TFLOP/s ratio ours / torch (goal >= 50 %), best config and default.
- ``moe``: the fused MoE, ``kernels.moe.op.fused_moe_native`` against
  ``kernels.moe.emulation.fused_moe_emulation`` (plain torch), Mixtral-like (H 4096, I 14336, 8 experts,
  top-2) and DeepSeek-like (H 2048, I 1408, 64 experts, top-6), bf16 and W4A16 (GPTQ g128,
  symmetric) experts stored in checkpoint order ``[E, N, K]`` and passed as ``[E, K, N]`` views;
  tokens 1, 8, 32, 512: tokens/s of each, speedup (goal >= 3x) and, at 1, 8 and 32 tokens, the
  fraction of the weight-bytes floor (bytes of the distinct experts the routing selects, over the
  copy bandwidth; goal >= 40 %).

Timing (CUDA): the median of CUDA-event timed runs, each after a 256 MiB L2 flush, with a
warm-up (compile) call first. A call that synchronizes with the host (the MoE's routing checks
read ids on the host) is timed end to end, host time included; for the MoE floor rows the GPU
busy time from the profiler is reported in the detail as well. The copy bandwidth is measured in
the same run (a >= 1 GiB device-to-device ``copy_``: 2 * bytes / time).

Goals are reported, not enforced: exit status 0 unless a section raised (its error is a row).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTIONS = ("w4a16", "scaled_mm", "moe")
GOAL_W4A16_NK = 4096  # N = K of the goal's shape
GOAL_W4A16_FLOOR = 0.50
GOAL_SCALED_MM_RATIO = 0.50
GOAL_MOE_SPEEDUP = 3.0
GOAL_MOE_FLOOR = 0.40
L2_FLUSH_BYTES = 256 << 20
COPY_BYTES = 1 << 30
SMOKE_COPY_BYTES = 16 << 20
# max |ours - reference| / max |reference| above which a config's output is called wrong (and
# never reported as the best): far above fp16 / bf16 output rounding, far below a wrong result
SANITY_REL = 2e-2


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every shape and repeat count of one run (full, quick or smoke)."""

    w4a16_ms: tuple[int, ...]
    w4a16_nk: int
    gemm_mnk: int
    moe_models: tuple[tuple[str, int, int, int, int, bool], ...]  # name, H, I, E, top_k, renormalize
    moe_tokens: tuple[int, ...]
    decode_tokens: tuple[int, ...]
    rep_ms: float  # timed-run budget per measurement
    slow_rep_ms: float  # ... for the emulation (seconds per call at large shapes)
    profile_runs: int
    all_configs: bool  # False: the default and a couple of candidates only


FULL = Sizes(
    w4a16_ms=(1, 4, 16), w4a16_nk=4096, gemm_mnk=4096,
    moe_models=(("mixtral", 4096, 14336, 8, 2, True), ("deepseek", 2048, 1408, 64, 6, False)),
    moe_tokens=(1, 8, 32, 512), decode_tokens=(1, 8, 32),
    rep_ms=50.0, slow_rep_ms=200.0, profile_runs=5, all_configs=True,
)
QUICK = dataclasses.replace(FULL, rep_ms=20.0, slow_rep_ms=60.0, profile_runs=3, all_configs=False)
SMOKE = Sizes(
    w4a16_ms=(1, 16), w4a16_nk=256, gemm_mnk=64,
    moe_models=(("mixtral", 128, 256, 4, 2, True), ("deepseek", 128, 128, 8, 3, False)),
    moe_tokens=(1, 8), decode_tokens=(1,),
    rep_ms=0.0, slow_rep_ms=0.0, profile_runs=1, all_configs=False,
)


def row(name, value, unit, goal=None, ok=True, detail=""):
    return {"name": name, "value": value, "unit": unit, "goal": goal, "ok": bool(ok), "detail": detail}


def rel_diff(torch, actual, expected) -> float:
    """max |actual - expected| / max |expected| in float32 (inf when either holds a NaN/inf)."""
    a, e = actual.float(), expected.float()
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        return math.inf
    return float((a - e).abs().max()) / max(float(e.abs().max()), 1e-30)


# ---------------------------------------------------------------------------------------------
# timing


class Timer:
    """Median wall/GPU time of a callable on one device (module docstring: Timing)."""

    def __init__(self, torch, device: str, sizes: Sizes):
        self.torch = torch
        self.cuda = device == "cuda"
        self.sizes = sizes
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.zero_()

    def median_ms(self, fn, *, rep_ms: float | None = None, min_runs: int = 5, max_runs: int = 2000) -> float:
        """Warm-up call, then timed runs: as many as fit ``rep_ms`` (at least ``min_runs``).
        On the CPU interpreter a single call is timed (the smoke run only exercises the path)."""
        torch = self.torch
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        rep_ms = self.sizes.rep_ms if rep_ms is None else rep_ms
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.flush()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        estimate = max(start.elapsed_time(end), 1e-3)
        runs = int(min(max_runs, max(min_runs, rep_ms / estimate)))
        for _ in range(max(1, min(runs // 4, 50))):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        for s, e in zip(starts, ends):
            self.flush()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))

    def graph_ms(self, calls, *, min_calls: int = 64, replays: int = 15):
        """(GPU ms per call from CUDA-graph replays; None) or (None, why not).

        ``calls``: callables, each reading its own copy of the inputs (rotating copies keep the
        weights out of L2 between uses: see :func:`rotation_copies`). They are captured in turn,
        cycling until at least ``min_calls`` are in the graph, and the graph's replays are timed
        with CUDA events; host launch time is out of the number (decode in serving engines runs
        under CUDA graphs). On the CPU interpreter: (None, why)."""
        if not self.cuda:
            return None, "no CUDA graphs on the CPU interpreter"
        torch = self.torch
        n = max(min_calls, len(calls))
        order = [calls[i % len(calls)] for i in range(n)]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (compiles, allocator) outside the capture
                for fn in calls:
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for fn in order:
                    fn()
            graph.replay()
            torch.cuda.synchronize()
        except Exception as exc:  # a call that synchronizes with the host cannot be captured
            return None, f"not capturable ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})"
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        del graph
        return statistics.median(times) / n, None

    def host_us(self, fn, runs: int = 200) -> float | None:
        """Host time per call (microseconds) of back-to-back calls, the GPU kept busy behind them
        (launch and validation cost; what an eager caller pays per call at least)."""
        if not self.cuda:
            return None
        torch = self.torch
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(runs):
            fn()
        host = (time.perf_counter() - t0) / runs * 1e6
        torch.cuda.synchronize()
        return host

    def busy_ms(self, fn, runs: int):
        """(GPU busy ms per call from the profiler's kernel/memcpy/memset records, L2 flushed before
        each call and the flushes' own time subtracted; None) or (None, why not)."""
        if not self.cuda:
            return None, "no GPU profile on the CPU interpreter"
        torch = self.torch
        try:
            from torch.autograd import DeviceType
            from torch.profiler import ProfilerActivity, profile

            def device_us(body) -> float:
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(runs):
                        body()
                    torch.cuda.synchronize()
                return sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)

            fn()
            torch.cuda.synchronize()
            flushes = device_us(self.flush)
            total = device_us(lambda: (self.flush(), fn()))
        except Exception as exc:  # the profiler is optional here; the timed rows stand without it
            return None, f"profiler unavailable ({type(exc).__name__}: {exc})"
        if total <= 0:
            return None, "profiler recorded no GPU activity"
        if total <= flushes:
            return None, f"profiled time {total:.0f} us not above the L2 flushes' {flushes:.0f} us"
        return (total - flushes) / runs / 1e3, None


ROTATION_BYTES_PER_L2 = 4  # rotating copies span at least 4x the L2 between two uses of one copy
MAX_ROTATION = 32


def rotation_copies(torch, device: str, touched_bytes: int, budget_bytes: int) -> int:
    """How many copies of the inputs to rotate through so that the bytes read between two uses of
    one copy exceed ``ROTATION_BYTES_PER_L2`` times the device's L2 (1 on the CPU); at most
    ``MAX_ROTATION`` and at most what fits ``budget_bytes`` (each copy costing ``budget`` / its
    full size is the caller's concern: pass the bytes one copy allocates)."""
    if device != "cuda":
        return 1
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2 = int(getattr(props, "L2_cache_size", 0) or 50 << 20)
    want = -(-ROTATION_BYTES_PER_L2 * l2 // max(touched_bytes, 1))
    free, _ = torch.cuda.mem_get_info()
    fits = max(1, int(0.5 * free) // max(budget_bytes, 1))
    return max(1, min(MAX_ROTATION, want, fits))


def copy_bandwidth(torch, timer: Timer, device: str, nbytes: int) -> tuple[float, float]:
    """(bytes/s, ms) of a device-to-device ``dst.copy_(src)`` of ``nbytes``: 2 * nbytes / time."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda: dst.copy_(src), min_runs=10, max_runs=50)
    del src, dst
    return 2 * nbytes / (ms / 1e3), ms


# ---------------------------------------------------------------------------------------------
# W4A16


def random_int32(torch, shape, device, gen) -> "torch.Tensor":
    """int32 words with every bit random (every 4-bit field a uniform code 0..15)."""
    n = math.prod(shape)
    raw = torch.randint(0, 256, (n * 4,), dtype=torch.uint8, generator=gen, device="cpu")
    return raw.view(torch.int32).reshape(shape).to(device)


def gptq_dequant(torch, qweight, scales, zeros, group: int):
    """float32 ``[K, N]`` from GPTQ qweight ``[K/8, N]``, scales ``[K/G, N]``, zeros ``[K/G, N/8]``
    (field i of a qweight word holds k = 8w + i; of a zeros word n = 8j + i)."""
    K8, N = qweight.shape
    shifts = 4 * torch.arange(8, device=qweight.device, dtype=torch.int32)
    q = ((qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(K8 * 8, N)
    z = ((zeros[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(zeros.shape[0], N)
    return (q - z.repeat_interleave(group, dim=0)).float() * scales.float().repeat_interleave(group, dim=0)


def w4a16_candidates(w4, M: int, N: int, K: int, sizes: Sizes):
    default = w4.default_config(M, N, K, 128)
    bm = max(16, default.block_m)  # tl.dot tiles are >= 16
    extra = [
        w4.W4A16Config(block_m=bm, block_n=32, block_k=128, split_k=1, num_warps=4, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=128, block_k=128, split_k=4, num_warps=4, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=32, block_k=256, split_k=2, num_warps=4, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=64, block_k=64, split_k=8, num_warps=4, num_stages=4),
        w4.W4A16Config(block_m=bm, block_n=128, block_k=64, split_k=8, num_warps=4, num_stages=4),
        w4.W4A16Config(block_m=bm, block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=128, block_k=256, split_k=8, num_warps=8, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=256, block_k=128, split_k=16, num_warps=8, num_stages=3),
        w4.W4A16Config(block_m=bm, block_n=64, block_k=512, split_k=4, num_warps=4, num_stages=2),
        w4.W4A16Config(block_m=bm, block_n=32, block_k=128, split_k=8, num_warps=2, num_stages=4),
    ]
    if M <= 16 and "dot" in {f.name for f in dataclasses.fields(w4.W4A16Config)}:
        gm = min(1 << max(M - 1, 0).bit_length(), 8)  # the GEMV path takes BLOCK_M 1..8
        extra += [w4.W4A16Config(block_m=gm, block_n=bn, block_k=bk, split_k=sk, num_warps=w, num_stages=st, dot=False)
                  for bn, bk, sk, w, st in ((64, 128, 8, 4, 3), (128, 128, 8, 4, 3), (32, 256, 4, 4, 3),
                                            (64, 256, 8, 4, 2), (128, 64, 16, 4, 4), (256, 128, 8, 8, 3),
                                            (64, 128, 16, 2, 4), (128, 256, 4, 8, 2))]
    if not sizes.all_configs:
        extra = extra[1:3]
    out = [default]
    for cfg in extra:
        cfg = dataclasses.replace(cfg, block_n=min(cfg.block_n, max(16, N)), block_k=min(cfg.block_k, max(16, K)))
        if cfg not in out:
            out.append(cfg)
    return out


def config_name(cfg) -> str:
    fields = dataclasses.asdict(cfg)
    short = {"block_m": "bm", "block_n": "bn", "block_k": "bk", "split_k": "sk", "group_m": "gm",
             "num_warps": "w", "num_stages": "s", "fuse_activation": "fuse"}
    return " ".join(f"{short.get(k, k)}{int(v)}" for k, v in fields.items())


def sweep(timer: Timer, configs, run, reference, torch):
    """Time ``run(cfg)`` for each config. Returns (results [(cfg, ms)], notes): a config that fails
    to compile/launch or gives a result off ``reference`` by more than SANITY_REL is left out and
    named in the notes (the default config too, so its failure is visible)."""
    results, notes = [], []
    for cfg in configs:
        try:
            out = run(cfg)
            diff = rel_diff(torch, out, reference)
            if not diff <= SANITY_REL:
                notes.append(f"{config_name(cfg)}: WRONG result (rel diff {diff:.2e})")
                continue
            ms = timer.median_ms(lambda: run(cfg))
        except Exception as exc:  # a config the device cannot run (e.g. out of shared memory)
            notes.append(f"{config_name(cfg)}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        results.append((cfg, ms))
    return results, notes


def bench_w4a16(torch, timer: Timer, device: str, bandwidth: float, sizes: Sizes) -> list[dict]:
    from qkcheck.kernels.w4a16 import kernel as w4

    gen = torch.Generator().manual_seed(0)
    N = K = sizes.w4a16_nk
    G = 128
    qweight = random_int32(torch, (K // 8, N), device, gen)
    zeros = random_int32(torch, (K // G, N // 8), device, gen)
    scales = ((torch.rand((K // G, N), generator=gen) + 0.5) / (4 * math.sqrt(K))).to(torch.float16).to(device)
    w_ref = gptq_dequant(torch, qweight, scales, zeros, G)
    weight_bytes = sum(t.numel() * t.element_size() for t in (qweight, scales, zeros))
    n_copies = rotation_copies(torch, device, weight_bytes, weight_bytes)
    copies = [(qweight, scales, zeros)] + [tuple(t.clone() for t in (qweight, scales, zeros))
                                           for _ in range(n_copies - 1)]
    rows = []
    for M in sizes.w4a16_ms:
        x = torch.randn((M, K), generator=gen).to(torch.float16).to(device)
        reference = x.float() @ w_ref
        nbytes = weight_bytes + x.numel() * 2 + M * N * 2
        floor_ms = nbytes / bandwidth * 1e3

        def run(cfg, x=x, copy=0):
            q, s_, z = copies[copy]
            return w4.w4a16_gemm(x, q, s_, z, layout="gptq", group_size=G, config=cfg)

        configs = w4a16_candidates(w4, M, N, K, sizes)
        results, notes = sweep(timer, configs, run, reference, torch)
        name = f"w4a16 gptq g128 fp16 M={M} N=K={K}: fraction of memory floor (GPU time, CUDA graph)"
        goal = f">= {GOAL_W4A16_FLOOR * 100:g} %" if K == GOAL_W4A16_NK else None  # the goal's size
        if not results:
            rows.append(row(name, 0.0, "%", goal, False, "no config ran: " + "; ".join(notes)))
            continue
        graphed = []
        for cfg, eager_ms in results:
            gpu_ms, why = timer.graph_ms([lambda cfg=cfg, i=i: run(cfg, copy=i) for i in range(n_copies)])
            graphed.append((cfg, eager_ms, gpu_ms))
            if why and why not in notes:
                notes.append(why)
        timed = [r for r in graphed if r[2] is not None]
        best_cfg, best_eager, best_gpu = min(timed, key=lambda r: r[2]) if timed else min(graphed, key=lambda r: r[1])
        default = next((r for r in graphed if r[0] == configs[0]), None)
        host = timer.host_us(lambda: run(best_cfg))
        measured = best_gpu if best_gpu is not None else best_eager
        frac = floor_ms / measured

        def describe(r):
            cfg, eager_ms, gpu_ms = r
            text = f"{config_name(cfg)}: "
            if gpu_ms is not None:
                text += f"GPU {gpu_ms * 1e3:.1f} us ({floor_ms / gpu_ms * 100:.1f} % of floor), "
            return text + f"eager end-to-end {eager_ms * 1e3:.1f} us ({floor_ms / eager_ms * 100:.1f} %)"

        detail = (f"best {describe((best_cfg, best_eager, best_gpu))}"
                  + (f"; host launch {host:.1f} us per call" if host is not None else "")
                  + (f"; default {describe(default)}" if default else "; default did not run")
                  + f"; floor {floor_ms * 1e3:.1f} us = {nbytes / 1e6:.2f} MB at {bandwidth / 1e9:.0f} GB/s; "
                  f"{n_copies} rotating weight copies; {len(results)} of {len(configs)} configs timed"
                  + ("; all: " + " | ".join(describe(r) for r in graphed) if sizes.all_configs else ""))
        if best_gpu is None:
            detail += " (no graph timing: the value is the eager end-to-end time)"
        if notes:
            detail += "; " + "; ".join(notes)
        rows.append(row(name, frac * 100, "%", goal, goal is None or frac >= GOAL_W4A16_FLOOR, detail))
        rows.append(dense_reference(torch, timer, device, bandwidth, M, N, K // 4, gen, n_copies))
    return rows


def dense_reference(torch, timer: Timer, device: str, bandwidth: float, M: int, N: int, K: int, gen,
                    n_copies: int) -> dict:
    """For scale: torch's fp16 matmul (the vendor library) over the same bytes of weights as the
    W4A16 row (an fp16 ``[N, K]`` weight with K a quarter of the W4A16 K: 4 bits against 16), timed
    the same way (CUDA graph, rotating weight copies): the fraction of the memory floor a dense
    decode GEMM reaches at this size."""
    w = torch.randn((N, K), generator=gen).to(torch.float16).to(device)
    copies = [w] + [w.clone() for _ in range(n_copies - 1)]
    x = torch.randn((M, K), generator=gen).to(torch.float16).to(device)
    nbytes = w.numel() * 2 + x.numel() * 2 + M * N * 2
    floor_ms = nbytes / bandwidth * 1e3
    name = (f"for scale: torch fp16 matmul M={M} N={N} K={K} (the W4A16 row's weight bytes): "
            "fraction of memory floor (GPU time, CUDA graph)")
    gpu_ms, why = timer.graph_ms([lambda i=i: x @ copies[i].t() for i in range(n_copies)])
    if gpu_ms is None:
        return row(name, float("nan"), "%", None, True, why)
    return row(name, floor_ms / gpu_ms * 100, "%", None, True,
               f"GPU {gpu_ms * 1e3:.1f} us; floor {floor_ms * 1e3:.1f} us = {nbytes / 1e6:.2f} MB at "
               f"{bandwidth / 1e9:.0f} GB/s; {n_copies} rotating weight copies")


# ---------------------------------------------------------------------------------------------
# FP8 scaled_mm


def scaled_mm_candidates(sm, M: int, N: int, K: int, sizes: Sizes):
    default = sm.default_config(M, N, K)
    extra = [
        sm.ScaledMMConfig(block_m=128, block_n=128, block_k=128, group_m=8, num_warps=8, num_stages=3),
        sm.ScaledMMConfig(block_m=128, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=3),
        sm.ScaledMMConfig(block_m=128, block_n=256, block_k=128, group_m=8, num_warps=8, num_stages=3),
        sm.ScaledMMConfig(block_m=256, block_n=128, block_k=128, group_m=8, num_warps=8, num_stages=3),
        sm.ScaledMMConfig(block_m=128, block_n=128, block_k=128, group_m=8, num_warps=4, num_stages=4),
        sm.ScaledMMConfig(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=4, num_stages=4),
        sm.ScaledMMConfig(block_m=64, block_n=128, block_k=128, group_m=8, num_warps=4, num_stages=4),
    ]
    if not sizes.all_configs:
        extra = extra[:2]
    out = [default]
    for cfg in extra:
        cfg = dataclasses.replace(cfg, block_m=min(cfg.block_m, max(16, M)), block_n=min(cfg.block_n, max(16, N)),
                                  block_k=min(cfg.block_k, max(32, K)))
        if cfg not in out:
            out.append(cfg)
    return out


def torch_scaled_mm(torch, a, w, a_scale, b_scale):
    """(callable, which variant) for torch's own fp8 GEMM of ``a [M, K] @ w.t()``: row-wise scales,
    else per-tensor scales, else a bf16 matmul of the dequantized operands. Each is tried once."""
    b = w.t()
    attempts = []

    def rowwise():
        return torch._scaled_mm(a, b, scale_a=a_scale, scale_b=b_scale, out_dtype=torch.bfloat16)

    one = torch.ones((), dtype=torch.float32, device=a.device)

    def per_tensor():
        out = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return out[0] if isinstance(out, tuple) else out  # torch < 2.5 returned (out, amax)

    a16 = (a.float() * a_scale).to(torch.bfloat16)
    b16 = (b.float() * b_scale).to(torch.bfloat16)

    def bf16():
        return a16 @ b16

    for variant, fn in (("torch._scaled_mm row-wise scales", rowwise),
                        ("torch._scaled_mm per-tensor scales (row-wise unsupported)", per_tensor),
                        ("torch bf16 matmul (torch._scaled_mm unavailable)", bf16)):
        try:
            out = fn()
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (a.shape[0], b.shape[1]):
                raise TypeError(f"unexpected result {type(out).__name__}")
            return fn, variant, attempts
        except Exception as exc:  # signature / support differences between torch versions and devices
            attempts.append(f"{variant.split(' (')[0]}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
    raise RuntimeError("no torch GEMM ran: " + "; ".join(attempts))


def bench_scaled_mm(torch, timer: Timer, device: str, sizes: Sizes) -> list[dict]:
    from qkcheck.kernels.scaled_mm import kernel as sm

    gen = torch.Generator().manual_seed(1)
    M = N = K = sizes.gemm_mnk
    fp8 = torch.float8_e4m3fn
    a = (torch.randn((M, K), generator=gen) * 2).to(fp8).to(device)
    w = (torch.randn((N, K), generator=gen) * 2).to(fp8).to(device)  # contiguous [N, K]; b = w.t()
    a_scale = (torch.rand((M, 1), generator=gen) * 0.01 + 0.005).to(device)
    b_scale = (torch.rand((1, N), generator=gen) * 0.01 + 0.005).to(device)
    b = w.t()
    reference = (a.float() * a_scale) @ (b.float() * b_scale)
    flop = 2.0 * M * N * K

    torch_fn, variant, attempts = torch_scaled_mm(torch, a, w, a_scale, b_scale)
    torch_ms = timer.median_ms(torch_fn)
    rowwise = variant.endswith("row-wise scales")
    torch_diff = rel_diff(torch, torch_fn(), reference) if rowwise else None
    fast_accum = None
    if rowwise:  # for reference only: the baseline stays the default (precise) accumulation
        try:
            fast_accum = timer.median_ms(lambda: torch._scaled_mm(
                a, b, scale_a=a_scale, scale_b=b_scale, out_dtype=torch.bfloat16, use_fast_accum=True))
        except Exception as exc:  # use_fast_accum is not in every torch / on every device
            fast_accum = f"{type(exc).__name__}"

    def run(cfg):
        return sm.scaled_mm(a, b, a_scale, b_scale, out_dtype=torch.bfloat16, config=cfg)

    configs = scaled_mm_candidates(sm, M, N, K, sizes)
    results, notes = sweep(timer, configs, run, reference, torch)
    name = f"fp8 e4m3fn scaled_mm per-token x per-channel M=N=K={M} bf16 out: TFLOP/s ours / torch"
    goal = f">= {GOAL_SCALED_MM_RATIO * 100:g} %"
    torch_tflops = flop / (torch_ms / 1e3) / 1e12
    versus = f"{variant}: {torch_tflops:.1f} TFLOP/s ({torch_ms * 1e3:.0f} us)"
    if torch_diff is not None:
        versus += f", rel diff vs fp32 reference {torch_diff:.1e}"
    if isinstance(fast_accum, float):
        versus += f"; with use_fast_accum=True {flop / (fast_accum / 1e3) / 1e12:.1f} TFLOP/s"
    elif fast_accum is not None:
        versus += f"; use_fast_accum=True failed ({fast_accum})"
    if attempts:
        versus += " [tried first: " + "; ".join(attempts) + "]"
    if not results:
        return [row(name, 0.0, "%", goal, False, f"no config ran: {'; '.join(notes)}; torch {versus}")]
    best_cfg, best_ms = min(results, key=lambda r: r[1])
    default_ms = next((ms for cfg, ms in results if cfg == configs[0]), None)
    ratio = torch_ms / best_ms
    detail = (f"best {config_name(best_cfg)}: {flop / (best_ms / 1e3) / 1e12:.1f} TFLOP/s; "
              + (f"default {config_name(configs[0])}: {flop / (default_ms / 1e3) / 1e12:.1f} TFLOP/s "
                 f"({torch_ms / default_ms * 100:.1f} % of torch); " if default_ms else "default did not run; ")
              + f"torch {versus}; fp8 path {sm.default_fp8_path(fp8, a.device)}; "
              f"{len(results)} of {len(configs)} configs timed")
    if notes:
        detail += "; " + "; ".join(notes)
    return [row(name, ratio * 100, "%", goal, ratio >= GOAL_SCALED_MM_RATIO, detail)]


# ---------------------------------------------------------------------------------------------
# fused MoE


def moe_weights(torch, scheme: str, H: int, I: int, E: int, device: str, gen) -> dict:
    """The op arguments of one model's experts in ``scheme`` (dense bf16 or w4a16 GPTQ g128,
    symmetric), stored in checkpoint order ``[E, N, K]`` and passed as ``[E, K, N]`` views."""
    if scheme == "dense":
        def dense(n, k):
            w = torch.empty((E, n, k), dtype=torch.bfloat16, device=device)
            w.normal_(0.0, 1.0 / math.sqrt(k), generator=gen)
            return w.transpose(1, 2)

        return dict(w13=dense(2 * I, H), w2=dense(H, I), w13_scales=None, w2_scales=None,
                    layout=None, group_size=None)
    G = 128

    def packed(k, n):
        # symmetric uint4b8: w = (q - 8) * s, std(q - 8) ~ 4.6; aim at std ~ 1/sqrt(k)
        q = torch.empty((E, k // 8, n), dtype=torch.int32, device=device)
        q.random_(-(1 << 31), 1 << 31, generator=gen)
        s = torch.empty((E, k // G, n), dtype=torch.float32, device=device)
        s.uniform_(0.5, 1.5, generator=gen)
        return q, (s / (4.6 * math.sqrt(k))).to(torch.bfloat16)

    q13, s13 = packed(H, 2 * I)
    q2, s2 = packed(I, H)
    return dict(w13=q13, w2=q2, w13_scales=s13, w2_scales=s2, layout="gptq", group_size=G)


ROTATED_KEYS = ("w13", "w2", "w13_scales", "w2_scales")


def clone_weights(weights: dict) -> dict:
    """A copy of the expert weights (same strides: the [E, K, N] views stay views of [E, N, K])."""
    return {k: (None if weights[k] is None else weights[k].clone()) for k in ROTATED_KEYS}


def moe_candidates(moe, T: int, top_k: int, H: int, I: int, E: int, sizes: Sizes):
    """The default config and, with ``all_configs``, a few decode-oriented alternatives."""
    default = moe.default_config(T, top_k, H, I, E)
    out = [default]
    if not sizes.all_configs:
        return out
    bm = default.block_m
    for bn, bk, sk, w, st in ((32, 128, 1, 4, 4), (64, 128, 2, 4, 4), (64, 256, 4, 4, 3), (128, 128, 4, 8, 3),
                              (32, 256, 8, 4, 3), (128, 64, 8, 4, 4)):
        cfg = dataclasses.replace(default, block_n=min(bn, max(16, I)), block_k=min(bk, max(16, min(H, I))),
                                  split_k=sk, num_warps=w, num_stages=st)
        if cfg not in out:
            out.append(cfg)
    return out


def expert_bytes(weights: dict) -> int:
    """Bytes one expert's weights (and scales) occupy."""
    total = 0
    for key in ("w13", "w2", "w13_scales", "w2_scales"):
        t = weights[key]
        if t is not None:
            total += t[0].numel() * t.element_size()
    return total


def bench_moe(torch, timer: Timer, device: str, bandwidth: float, sizes: Sizes) -> list[dict]:
    from qkcheck.kernels import probes
    from qkcheck.kernels.moe import emulation
    from qkcheck.kernels.moe import kernel as moe
    from qkcheck.kernels.moe import op as ops_moe

    # under the CPU interpreter a bf16 tl.dot is wrong (kernels.probes): the diff is not meaningful there
    interpreter_caveat = probes.skip_reason(compute_dtype="bf16", fp8_output=False)
    rows = []
    seed = 2
    for model, H, I, E, top_k, renormalize in sizes.moe_models:
        for scheme, label in (("dense", "bf16"), ("w4a16", "w4a16 g128")):
            gen = torch.Generator(device=device).manual_seed(seed)
            seed += 1
            weights = moe_weights(torch, scheme, H, I, E, device, gen)
            per_expert = expert_bytes(weights)
            rotated = [{k: weights[k] for k in ROTATED_KEYS}]  # copy 0: the weights themselves
            for T in sizes.moe_tokens:
                x = torch.randn((T, H), dtype=torch.float32, device=device, generator=gen).to(torch.bfloat16)
                logits = torch.randn((T, E), dtype=torch.float32, device=device, generator=gen)
                args = dict(
                    x=x, router_logits=logits, w13=weights["w13"], w2=weights["w2"],
                    w13_scales=weights["w13_scales"], w2_scales=weights["w2_scales"], w13_zeros=None, w2_zeros=None,
                    correction_bias=None, expert_map=None, scheme=scheme, layout=weights["layout"],
                    group_size=weights["group_size"], block=None, top_k=top_k, scoring="softmax",
                    renormalize=renormalize, num_groups=None, topk_groups=None, activation="silu",
                    swiglu_limit=None, apply_router_weight_on_input=False, out_dtype=None, config=None,
                )
                tag = f"moe {model} (H{H} I{I} E{E} top{top_k}) {label} T={T}"

                def native(args=args):
                    return ops_moe.fused_moe_native(**args)

                def emulation(args=args):
                    return emulation.fused_moe_emulation(**args)

                y_native = native()
                diff = rel_diff(torch, y_native, emulation())
                del y_native
                native_ms = timer.median_ms(native)
                emu_ms = timer.median_ms(emulation, rep_ms=sizes.slow_rep_ms, min_runs=2, max_runs=20)
                config = moe.default_config(T, top_k, H, I, E)
                speedup = emu_ms / native_ms
                rows.append(row(f"{tag}: tokens/s native", T / (native_ms / 1e3), "tok/s", None, True,
                                f"{native_ms * 1e3:.1f} us per call (default {config_name(config)}); "
                                f"rel diff vs emulation {diff:.1e}"
                                + (" (not meaningful here: kernels.probes finds bf16 tl.dot wrong under the "
                                   "interpreter)" if interpreter_caveat else "")))
                rows.append(row(f"{tag}: tokens/s emulation", T / (emu_ms / 1e3), "tok/s", None, True,
                                f"{emu_ms * 1e3:.1f} us per call"))
                rows.append(row(f"{tag}: speedup native / emulation", speedup, "x", f">= {GOAL_MOE_SPEEDUP:g}x",
                                speedup >= GOAL_MOE_SPEEDUP, ""))
                if T in sizes.decode_tokens:
                    ids, _ = moe.route(logits, top_k, scoring="softmax", renormalize=renormalize)
                    hit = int(torch.unique(ids).numel())
                    nbytes = hit * per_expert + 2 * x.numel() * x.element_size()
                    floor_ms = nbytes / bandwidth * 1e3
                    n_copies = rotation_copies(torch, device, hit * per_expert, per_expert * E)
                    if len(rotated) < n_copies:
                        rotated.extend(clone_weights(weights) for _ in range(n_copies - len(rotated)))
                    graphed = []
                    for cfg in moe_candidates(moe, T, top_k, H, I, E, sizes):
                        calls = [lambda w=w, cfg=cfg: ops_moe.fused_moe_native(**{**args, **w, "config": cfg.as_list()})
                                 for w in rotated[:n_copies]]
                        try:
                            ok_diff = rel_diff(torch, calls[0](), emulation())
                        except Exception as exc:  # a config the device cannot run
                            graphed.append((cfg, None, f"failed ({type(exc).__name__})"))
                            continue
                        if not ok_diff <= SANITY_REL and not interpreter_caveat:
                            graphed.append((cfg, None, f"WRONG result (rel diff {ok_diff:.1e})"))
                            continue
                        gpu_ms, why = timer.graph_ms(calls)
                        graphed.append((cfg, gpu_ms, why))
                    timed = [g for g in graphed if g[1] is not None]
                    busy, why = timer.busy_ms(native, sizes.profile_runs)
                    busy_text = (f"GPU busy (eager, profiler) {busy * 1e3:.1f} us per call ({floor_ms / busy * 100:.1f} % of floor)"
                                 if busy is not None else f"GPU busy time n/a: {why}")
                    listing = " | ".join(f"{config_name(c)}: " + (f"{g * 1e3:.1f} us" if g is not None else str(w))
                                         for c, g, w in graphed)
                    common_detail = (f"{hit} distinct experts x {per_expert / 1e6:.2f} MB = {nbytes / 1e6:.1f} MB, floor "
                                     f"{floor_ms * 1e3:.1f} us at {bandwidth / 1e9:.0f} GB/s; eager end-to-end "
                                     f"{native_ms * 1e3:.1f} us ({floor_ms / native_ms * 100:.1f} % of floor); {busy_text}; "
                                     f"{n_copies} rotating weight copies; graph timings: {listing}")
                    name = f"{tag}: fraction of weight-bytes floor (GPU time, CUDA graph)"
                    goal = f">= {GOAL_MOE_FLOOR * 100:g} %"
                    if timed:
                        cfg, gpu_ms, _ = min(timed, key=lambda g: g[1])
                        default_gpu = next((g for c, g, _ in graphed if c == config), None)
                        frac = floor_ms / gpu_ms
                        rows.append(row(name, frac * 100, "%", goal, frac >= GOAL_MOE_FLOOR,
                                        f"best {config_name(cfg)} {gpu_ms * 1e3:.1f} us"
                                        + (f"; default {floor_ms / default_gpu * 100:.1f} % of floor" if default_gpu else "")
                                        + f"; {common_detail}"))
                    else:
                        frac = floor_ms / native_ms
                        rows.append(row(name, frac * 100, "%", goal, frac >= GOAL_MOE_FLOOR,
                                        f"no graph timing (value from the eager end-to-end time); {common_detail}"))
                del x, logits, args
            del weights, rotated
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# driver


def machine_info(torch, triton, device: str, sizes_name: str) -> dict:
    info = {"machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}",
            "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "device": device, "sizes": sizes_name, "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1"}
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu=torch.cuda.get_device_name(), capability=f"sm_{props.major}{props.minor}",
                    sms=props.multi_processor_count, gpu_memory_gb=round(props.total_memory / 1e9, 1),
                    cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None))
    return info


def parse_only(text: str) -> tuple[str, ...]:
    picked = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in picked if s not in SECTIONS]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(
            f"--only={text!r} names {unknown or 'no section'}; "
            f"allowed: a comma-separated subset of {','.join(SECTIONS)}")
    return picked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (with --smoke only; the default there)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configs")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes (CPU interpreter unless --device cuda): every path, timings meaningless")
    parser.add_argument("--only", type=parse_only, default=SECTIONS,
                        help=f"sections, comma-separated ({','.join(SECTIONS)})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--w4a16-nk", type=int, default=None, metavar="N",
                        help="N = K of the w4a16 section (default 4096, where its goal is set; other sizes "
                             "are reported without a goal)")
    args = parser.parse_args(argv)
    requested = args.device or ("cpu" if args.smoke else "cuda")
    if requested not in ("cuda", "cpu"):
        parser.error(f"--device={requested!r} is not supported here (allowed: cuda, or cpu with --smoke)")
    if requested == "cpu" and not args.smoke:
        parser.error("--device cpu runs the Triton interpreter, far too slow for full shapes; add --smoke")
    sizes, sizes_name = (SMOKE, "smoke") if args.smoke else (QUICK, "quick") if args.quick else (FULL, "full")
    if args.w4a16_nk is not None:
        if args.w4a16_nk < 256 or args.w4a16_nk % 256:
            parser.error(f"--w4a16-nk={args.w4a16_nk} must be a multiple of 256 (at least 256)")
        sizes = dataclasses.replace(sizes, w4a16_nk=args.w4a16_nk)

    from qkcheck.kernels import device as _device

    try:
        device = _device.activate(requested)  # sets TRITON_INTERPRET=1 for cpu before any kernel import
    except ValueError as exc:
        parser.error(str(exc))
    import torch
    import triton

    t_start = time.perf_counter()
    timer = Timer(torch, device, sizes)
    bandwidth, copy_ms = copy_bandwidth(torch, timer, device, SMOKE_COPY_BYTES if args.smoke else COPY_BYTES)
    nbytes = SMOKE_COPY_BYTES if args.smoke else COPY_BYTES
    rows = [row(f"device copy bandwidth ({nbytes >> 20} MiB copy_, 2 x bytes / time)", bandwidth / 1e9, "GB/s",
                detail=f"{copy_ms * 1e3:.0f} us per copy; the floors below use this bandwidth")]
    errors = 0
    benches = {
        "w4a16": lambda: bench_w4a16(torch, timer, device, bandwidth, sizes),
        "scaled_mm": lambda: bench_scaled_mm(torch, timer, device, sizes),
        "moe": lambda: bench_moe(torch, timer, device, bandwidth, sizes),
    }
    for section in SECTIONS:
        if section not in args.only:
            continue
        t0 = time.perf_counter()
        before = len(rows)
        try:
            rows.extend(benches[section]())
        except Exception as exc:  # report the section's failure as a row and go on with the others
            errors += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            rows.append(row(f"{section}: ERROR", 0.0, "", "runs", False,
                            f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"))
            if not args.json:
                traceback.print_exc()
        if device == "cuda":
            torch.cuda.empty_cache()
        if not args.json:
            print(f"# {section}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for r in rows[before:]:  # as each section ends, so a run cut short keeps what it measured
                print(f"{r['name']:<86} {r['value']:10.2f} {r['unit']:<6} {r['goal'] or '':<8}\n    {r['detail']}",
                      file=sys.stderr, flush=True)

    info = machine_info(torch, triton, device, sizes_name)
    info.update(copy_bandwidth_gbs=round(bandwidth / 1e9, 1), wall_s=round(time.perf_counter() - t_start, 1))
    if args.json:
        print(json.dumps({"info": info, "results": rows}, indent=2))
    else:
        print("  ".join(f"{k}={v}" for k, v in info.items()))
        for r in rows:
            goal = r["goal"] or ""
            status = ("ok" if r["ok"] else "MISSED") if r["goal"] else ""
            print(f"{r['name']:<86} {r['value']:10.2f} {r['unit']:<6} {goal:<8} {status}")
            if r["detail"]:
                print(f"    {r['detail']}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
