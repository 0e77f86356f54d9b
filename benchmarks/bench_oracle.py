"""Oracle throughput, in units of one float64 elementwise multiply of two 4096 x 4096 arrays.

    python benchmarks/bench_oracle.py [--repeats 7] [--json]

Each row is the median of ``--repeats`` runs divided by the median of the unit (``a * b``), all
measured in this one process, so the ratios are comparable across machines. Exit status 1 when a
row misses its goal.
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

from oracle.schemes import dequantize, get_scheme, pack_codes, quantize, unpack_codes  # noqa: E402

SIZE = 4096


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: lookup tables, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per row (median is reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1; pass e.g. --repeats 7")

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
    info = {"machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.processor() or platform.system()}",
            "numpy": np.__version__, "python": platform.python_version(), "repeats": args.repeats}
    if args.json:
        print(json.dumps({"info": info, "results": results}, indent=2))
    else:
        print(f"machine: {info['machine']}; numpy {info['numpy']}; median of {args.repeats}")
        print(f"{'benchmark':<80} {'ms':>9} {'units':>7} {'goal':>7}  ok")
        for r in results:
            goal = "" if r["goal_units"] is None else f"<= {r['goal_units']:g}"
            print(f"{r['name']:<80} {r['ms']:9.1f} {r['units']:7.2f} {goal:>7}  {'yes' if r['ok'] else 'NO'}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
