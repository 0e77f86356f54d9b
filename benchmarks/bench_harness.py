"""Harness overhead and fuzz throughput: cases drawn by the fuzzer's own strategy for a kernel
(default shapes), each run through the runner; per case the time spent in the kernel call and in
the oracle is separated from everything else (materializing inputs, packing, poisoned views,
checks, fake-vs-real) — that remainder is the harness overhead.

    python benchmarks/bench_harness.py [--kernels bundled:w4a16_gemm] [--cases 60] [--device cpu] [--json]

Goal: overhead <= 20 % of a case's total time on the CPU interpreter (the goal is for default
fuzz shapes; failures, which add diagnosis, are not part of it). Exit status 1 when missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_OVERHEAD = 0.20


def draw_cases(adapter, n: int, seed: int = 0):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from qkcheck.cases.registry import from_adapter

    drawn = []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])
    @given(case=from_adapter(adapter))
    def collect(case):
        drawn.append(case)

    collect()
    return drawn[:n]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="bundled:w4a16_gemm", help="one kernel spec (default bundled:w4a16_gemm)")
    parser.add_argument("--cases", type=int, default=60, help="cases to run")
    parser.add_argument("--device", default="cpu", help="cpu|cuda|xpu")
    parser.add_argument("--siblings", type=int, default=1,
                        help="run each drawn case with N-1 data siblings, as the fuzzer does on a GPU (default 1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from qkcheck.kernels import device as _device

    dev = _device.activate(args.device)
    from qkcheck.cases.runner import run_case
    from qkcheck.kernels.catalog import resolve

    adapter = resolve(args.kernels)[0]
    cases = draw_cases(adapter, args.cases)
    if args.siblings > 1:
        from qkcheck.cases.fuzz import siblings

        cases = [member for case in cases for member in siblings(case, args.siblings)]
    for case in cases[:3]:  # warm-up: imports, probes, first compiles
        run_case(case, adapter, dev)
    totals = {"kernel": 0.0, "oracle": 0.0, "total": 0.0}
    phases: dict[str, float] = {}
    ran = skipped = 0
    t0 = time.perf_counter()
    for case in cases:
        r = run_case(case, adapter, dev, diagnose_failures=False)
        if r.status == "skip":
            skipped += 1
            continue
        ran += 1
        for k in totals:
            totals[k] += r.timings.get(k, 0.0)
        for k, v in r.timings.items():
            phases[k] = phases.get(k, 0.0) + v
    wall = time.perf_counter() - t0
    overhead = (totals["total"] - totals["kernel"] - totals["oracle"]) / max(totals["total"], 1e-12)
    rows = [
        {"name": f"harness overhead per case ({adapter.name}, {ran} fuzz-drawn cases, {dev})", "value": overhead * 100,
         "unit": "%", "goal": f"<= {GOAL_OVERHEAD * 100:g} %", "ok": overhead <= GOAL_OVERHEAD},
        {"name": f"kernel share / oracle share of case time ({adapter.name})",
         "value": totals["kernel"] / max(totals["total"], 1e-12) * 100, "unit": "%",
         "detail": f"oracle {totals['oracle'] / max(totals['total'], 1e-12) * 100:.1f} %", "goal": None, "ok": True},
        {"name": f"time per case by phase ({adapter.name}, {dev})", "value": totals["total"] / max(ran, 1) * 1e3,
         "unit": "ms", "goal": None, "ok": True,
         "detail": ", ".join(f"{k} {v / max(ran, 1) * 1e3:.3f} ms" for k, v in phases.items() if k != "total")},
        {"name": f"fuzz throughput ({adapter.name}, {dev}; {skipped} of {len(cases)} drawn cases skipped)",
         "value": len(cases) / wall, "unit": "cases/s", "goal": None, "ok": True},
    ]
    info = {"machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}", "device": dev,
            "python": platform.python_version()}
    if args.json:
        print(json.dumps({"info": info, "results": rows}, indent=2))
    else:
        for r in rows:
            goal = r["goal"] or ""
            print(f"{r['name']:<80} {r['value']:8.2f} {r['unit']:<8} {goal:<10} {'ok' if r['ok'] else 'MISSED'}")
            if r.get("detail"):
                print(f"    {r['detail']}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
