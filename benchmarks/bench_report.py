"""Report rendering at gate scale: a results file of N records (default 10,000: mostly passing,
some skipped, a few hundred failing with real ``Divergence`` data and diagnoses) is written,
loaded and rendered to one self-contained HTML page; the render time and page size are measured.

    python benchmarks/bench_report.py [--results 10000] [--failures 300] [--repeats 3] [--json]

Goals (the report's): render <= 10 s, page <= 20 MB. Exit status 1 when a goal is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qkcheck.reports.html import render_report  # noqa: E402
from qkcheck.reports.store import write_results  # noqa: E402
from tests.reports.synth import banded_divergence, case_dict, record  # noqa: E402

GOAL_SECONDS, GOAL_MB = 10.0, 20.0


def records(n: int, failures: int) -> list[dict]:
    out = []
    divs = [banded_divergence(seed=s) for s in range(8)]
    for i in range(n):
        g = (32, 64, 128, -1)[i % 4]
        case = case_dict(m=1 + i % 40, n=64, k=256, group_size=g, layout=("gptq", "awq", "nibble")[i % 3],
                         config={"block_m": 16, "block_n": 32, "block_k": (16, 32, 64, 128)[i % 4]}, seed=i)
        kernel = "bundled:w4a16_gemm" if i % 2 else "zoo:scale_group_spanning"
        status = "fail" if i < failures else ("skip" if i % 9 == 0 else "pass")
        r = record(case, kernel, status)
        if status == "fail":
            r["checks"][2] = {"name": "numerics", "outcome": "fail", "detail": "violations on columns n mod 64 >= 32"}
            r["divergence"] = divs[i % len(divs)]
            r["diagnosis"] = [{"name": "first_group_scale_per_tile", "sentence": "first group's scale used per tile",
                               "max_ratio": 0.0, "explains": True}]
            r["replay"] = f"qkcheck replay out/failures/{r['case_id']}.json --kernels {kernel}"
        out.append(r)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=10_000, help="records in the results file")
    parser.add_argument("--failures", type=int, default=300, help="how many of them fail")
    parser.add_argument("--repeats", type=int, default=3, help="renders timed (median reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.results < 1 or not 0 <= args.failures <= args.results or args.repeats < 1:
        parser.error(f"need --results >= 1, 0 <= --failures <= --results and --repeats >= 1 "
                     f"(got {args.results}, {args.failures}, {args.repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        write_results(results, records(args.results, args.failures), {"device": "cpu", "platform": "cpu"})
        page = Path(tmp) / "report.html"
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            render_report([results], page)
            times.append(time.perf_counter() - t0)
        seconds, mb = statistics.median(times), page.stat().st_size / 1e6
    rows = [
        {"name": f"render {args.results} results ({args.failures} failing) to one HTML page", "value": seconds,
         "unit": "s", "goal": f"<= {GOAL_SECONDS:g} s", "ok": seconds <= GOAL_SECONDS},
        {"name": f"page size for {args.results} results", "value": mb, "unit": "MB", "goal": f"<= {GOAL_MB:g} MB",
         "ok": mb <= GOAL_MB},
    ]
    info = {"machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}",
            "python": platform.python_version(), "repeats": args.repeats}
    if args.json:
        print(json.dumps({"info": info, "results": rows}, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<60} {r['value']:8.2f} {r['unit']:<3} goal {r['goal']:<10} {'ok' if r['ok'] else 'MISSED'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
