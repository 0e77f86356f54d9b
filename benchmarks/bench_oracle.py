"""Oracle throughput, in units of one float64 elementwise multiply of two 4096 x 4096 arrays.

    python benchmarks/bench_oracle.py [--repeats 7] [--gemm-repeats 3] [--json]

Each row is the median of ``--repeats`` runs divided by the median of the unit (``a * b``), all
measured in this one process, so the ratios are comparable across machines. The GEMM reference
rows (M = N = K = 4096) are measured instead against a bare float64 ``numpy.matmul`` of the same
size, timed alternately with them (median of ``--gemm-repeats``): the reference's cost beyond the
matmul is its dequantization. Exit status 1 when a row misses its goal.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qkcheck.oracle.formats import FORMATS  # noqa: E402
from qkcheck.oracle.ops import scaled_mm, w4a16  # noqa: E402
from qkcheck.oracle.schemes import dequantize, get_scheme, pack_codes, quantize, unpack_codes  # noqa: E402

SIZE = 4096


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: lookup tables, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


GEMM_GOAL = 1.5  # reference time / bare float64 matmul time


def _gemm_rows(rng, repeats: int) -> list[dict]:
    """W4A16 g128 and FP8 128x128-block references vs a bare float64 matmul of the same size."""
    n = SIZE
    x = rng.standard_normal((n, n)).astype(np.float16).astype(np.float64)
    q = rng.integers(0, 16, (n, n)).astype(np.uint8)
    scales = rng.uniform(0.001, 0.02, (n // 128, n)).astype(np.float16).astype(np.float64)
    zeros = rng.integers(0, 16, (n // 128, n)).astype(np.uint8)
    e4m3 = FORMATS["float8_e4m3fn"]
    a8 = e4m3.encode(rng.standard_normal((n, n)) * 32, saturate=True)
    b8 = e4m3.encode(rng.standard_normal((n, n)) * 32, saturate=True)
    a_s = rng.uniform(0.001, 0.01, (n, n // 128)).astype(np.float32).astype(np.float64)
    b_s = rng.uniform(0.001, 0.01, (n // 128, n // 128)).astype(np.float32).astype(np.float64)
    w_plain = rng.standard_normal((n, n))
    cases = [
        ("w4a16_gemm reference g128 asym, 4096^3 (uint4 codes + fp16 scales/zeros -> float64 GEMM)",
         lambda: w4a16.w4a16_gemm(x, q, scales, zeros, group_size=128)),
        ("block_scaled_mm reference fp8 e4m3 128x128 blocks, 4096^3 (codes + fp32 scales -> float64 GEMM)",
         lambda: scaled_mm.block_scaled_mm(a8, a_s, b8, b_s, quant_dtype="float8_e4m3fn", block=(128, 128))),
    ]
    bare = lambda: np.matmul(x, w_plain)  # noqa: E731
    rows = []
    for name, fn in cases:
        fn(), bare()  # warm-up
        t_ref, t_mm = [], []
        for _ in range(repeats):  # alternate, so load changes hit both alike
            t0 = time.perf_counter()
            fn()
            t_ref.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bare()
            t_mm.append(time.perf_counter() - t0)
        ref, mm = statistics.median(t_ref), statistics.median(t_mm)
        rows.append({"name": name, "ms": ref * 1e3, "matmul_ms": mm * 1e3, "ratio": ref / mm,
                     "goal_ratio": GEMM_GOAL, "ok": ref / mm <= GEMM_GOAL})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per row (median is reported)")
    parser.add_argument("--gemm-repeats", type=int, default=3,
                        help="timed runs of each GEMM reference and of the bare matmul (median is reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1; pass e.g. --repeats 7")
    if args.gemm_repeats < 1:
        parser.error(f"--gemm-repeats={args.gemm_repeats} must be >= 1; pass e.g. --gemm-repeats 3")

    rng = np.random.default_rng(0)
    a = rng.standard_normal((SIZE, SIZE))
    b = rng.standard_normal((SIZE, SIZE))
    w = rng.standard_normal((SIZE, SIZE)).astype(np.float32)

    gptq = get_scheme("gptq int4 g128 asym")
    stored = pack_codes(quantize(w, gptq, axis=0))  # int32 qweight [512, 4096], qzeros [32, 512]
    mxfp4 = get_scheme("mxfp4")

    rows = [
        ("unit: float64 a * b, 4096x4096", lambda: a * b, None),
        ("dequant gptq int4 g128 asym (packed qweight+qzeros+fp16 scales -> float64)",
         lambda: dequantize(unpack_codes(stored, gptq, axis=0)), 3.0),
        ("quant float32 -> mxfp4 (packed uint8 nibbles + e8m0 scales)",
         lambda: pack_codes(quantize(w, mxfp4, axis=0)), 8.0),
    ]
    unit = None
    results = []
    for name, fn, goal in rows:
        sec = _median_seconds(fn, args.repeats)
        unit = unit if unit is not None else sec
        ratio = sec / unit
        results.append({"name": name, "ms": sec * 1e3, "units": ratio, "goal_units": goal,
                        "ok": goal is None or ratio <= goal})
    gemm_rows = _gemm_rows(rng, args.gemm_repeats)
    info = {"machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.processor() or platform.system()}",
            "numpy": np.__version__, "python": platform.python_version(), "repeats": args.repeats}
    if args.json:
        print(json.dumps({"info": info, "results": results, "gemm_references": gemm_rows}, indent=2))
    else:
        print(f"machine: {info['machine']}; numpy {info['numpy']}; median of {args.repeats}")
        print(f"{'benchmark':<80} {'ms':>9} {'units':>7} {'goal':>7}  ok")
        for r in results:
            goal = "" if r["goal_units"] is None else f"<= {r['goal_units']:g}"
            print(f"{r['name']:<80} {r['ms']:9.1f} {r['units']:7.2f} {goal:>7}  {'yes' if r['ok'] else 'NO'}")
        print(f"\nGEMM references vs bare float64 numpy.matmul 4096^3, median of {args.gemm_repeats}")
        print(f"{'benchmark':<100} {'ref ms':>9} {'matmul ms':>10} {'ratio':>6} {'goal':>7}  ok")
        for r in gemm_rows:
            print(f"{r['name']:<100} {r['ms']:9.1f} {r['matmul_ms']:10.1f} {r['ratio']:6.2f} "
                  f"{'<= ' + format(r['goal_ratio'], 'g'):>7}  {'yes' if r['ok'] else 'NO'}")
    return 0 if all(r["ok"] for r in results + gemm_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
