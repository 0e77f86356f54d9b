"""Time to detection: for each zoo entry, ``qkcheck fuzz`` from a cold start (a fresh process:
imports, interpreter probes, first compiles included) until the fuzzer detects the bug: a case
fails, the terminal says so and the case is saved as a replayable file (``<case>.found.json``).
Median over several fuzz seeds. A second row per entry times the whole run: the failure shrunk
(within the fuzzer's shrink budget), diagnosed, saved and the process exited.

On a GPU each seed runs twice, each time in a fresh process: first with an empty Triton cache
(``TRITON_CACHE_DIR`` a new directory: every kernel variant the run draws is compiled, 0.1-0.5 s
each), then again with the cache that run left (a runner that keeps its Triton cache between
jobs); each gives its own row. Under the CPU interpreter nothing is compiled: one run per seed.

    python benchmarks/bench_detect.py [--device cpu] [--seeds 5] [--budget 60s] [--entries a,b] [--shrink-budget D] [--json]

Goals (time to detection): <= 30 s per entry on the 2-core CPU machine, <= 10 s on a GPU. An
entry not caught within the budget counts as missed. Exit status 1 when any goal is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS = {"cpu": 30.0, "cuda": 10.0, "xpu": 10.0}


def detect(entry: str, device: str, seed: int, budget: str, shrink_budget: str | None = None,
           cache_dir: str | None = None) -> dict:
    env = dict(os.environ)
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = cache_dir
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "qkcheck.cases.cli", "fuzz", "--kernels", f"zoo:{entry}", "--device", device,
               "--budget", budget, "--fuzz-seed", str(seed), "--failures-dir", tmp]
        if shrink_budget is not None:
            cmd += ["--shrink-budget", shrink_budget]
        t0 = time.perf_counter()
        saved_at, lines = None, []
        with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) as proc:
            for line in proc.stdout:  # the fuzzer announces a failing case when it saves it, before shrinking
                if saved_at is None and "failure found" in line and "saved as found" in line:
                    saved_at = time.perf_counter() - t0
                lines.append(line)
        seconds = time.perf_counter() - t0
    out = "".join(lines)
    m = re.search(r"fuzz found a failure after (\d+) cases, ([\d.]+) s into the fuzz "
                  r"\(shrunk in (\d+) more cases by ([\d.]+) s, diagnosed and saved at ([\d.]+) s\)", out)
    # the fuzz's own clock: first failure found at found_s, shrunk by shrunk_s, diagnosed and saved
    # at fuzz_s; the rest of ``seconds`` is outside the fuzz loop (process start-up, imports,
    # collection, exit)
    return {"seconds": seconds, "caught": proc.returncode == 1 and m is not None,
            "cases": int(m.group(1)) if m else None, "exit": proc.returncode,
            "found_s": float(m.group(2)) if m else None, "shrink_cases": int(m.group(3)) if m else None,
            "shrunk_s": float(m.group(4)) if m else None, "fuzz_s": float(m.group(5)) if m else None,
            "saved_at": saved_at, "tail": "" if m else out[-400:]}


def _round(a, b=0.0):
    """``a - b`` to 0.1 s, or None where the run was not caught (no timings)."""
    return None if a is None or b is None else round(a - b, 1)


def main(argv=None) -> int:
    from qkcheck.kernels import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", default="60s", help="fuzz budget per run (an entry not caught in it is missed)")
    parser.add_argument("--entries", default=None, help="comma-separated zoo entries (default: all)")
    parser.add_argument("--shrink-budget", default=None, help="passed to qkcheck fuzz (default: its own default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    entries = args.entries.split(",") if args.entries else list(zoo.entries())
    unknown = sorted(set(entries) - set(zoo.entries()))
    if unknown:
        parser.error(f"unknown zoo entries {unknown} (allowed: {', '.join(zoo.entries())})")
    goal = GOALS.get(args.device, 30.0)
    rows = []
    compiled = args.device != "cpu"
    for entry in entries:
        if compiled:
            cold, warm = [], []
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as cache:
                    cold.append(detect(entry, args.device, seed, args.budget, args.shrink_budget, cache))
                    warm.append(detect(entry, args.device, seed, args.budget, args.shrink_budget, cache))
            series = [("empty Triton cache, ", cold), ("warm Triton cache, ", warm)]
        else:
            series = [("", [detect(entry, args.device, s, args.budget, args.shrink_budget) for s in range(args.seeds)])]
        for label, runs in series:
            for r in _row(entry, args, label, runs, goal):
                rows.append(r)
                if not args.json:
                    print(f"{r['name']:<70} {r['value']:7.1f} s  goal {r['goal'] or '-':<8} "
                          f"{'ok' if r['ok'] else 'MISSED'}  {r['detail']}")
                    for tail in r["misses"]:
                        print("   not caught; output tail:", tail.replace("\n", " | "))
    info = {"machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}", "device": args.device,
            "python": platform.python_version()}
    if args.json:
        print(json.dumps({"info": info, "results": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


def _row(entry: str, args, label: str, runs: list[dict], goal: float) -> list[dict]:
    """Two rows: time to detection (the failing case found, announced on the terminal and saved as a
    replayable case file; the goal applies here) and time to the shrunk, diagnosed failure and the
    process's exit (shrinking is bounded by its own budget)."""
    caught = [r for r in runs if r["caught"] and r["saved_at"] is not None]
    all_caught = len(caught) == len(runs)
    found = statistics.median(r["saved_at"] for r in runs) if all_caught else float("inf")
    full = statistics.median(r["seconds"] for r in runs) if all_caught else float("inf")
    where = f"({args.device}, {label}median of {args.seeds} seeds)"
    detail = (f"cases to first failure: {[r['cases'] for r in runs]}; "
              f"found, announced and saved at {[_round(r['saved_at']) for r in runs]} s after process start; "
              f"whole run (shrunk, diagnosed, exited): {[round(r['seconds'], 1) for r in runs]} s, "
              f"of which outside the fuzz loop (start-up, collection, exit): "
              f"{[_round(r['seconds'], r['fuzz_s']) for r in runs]}, "
              f"fuzzing to the first failure: {[_round(r['found_s']) for r in runs]}, "
              f"shrinking: {[_round(r['shrunk_s'], r['found_s']) for r in runs]} "
              f"(shrink cases {[r['shrink_cases'] for r in runs]}), "
              f"diagnosing and saving: {[_round(r['fuzz_s'], r['shrunk_s']) for r in runs]}")
    misses = [r["tail"] for r in runs if not r["caught"]][:1]
    return [
        {"name": f"time to detection, zoo:{entry} {where}", "value": found, "unit": "s",
         "goal": f"<= {goal:g} s", "ok": found <= goal, "detail": detail, "misses": misses},
        {"name": f"time to the shrunk, diagnosed failure, zoo:{entry} {where}", "value": full, "unit": "s",
         "goal": None, "ok": all_caught, "detail": f"shrink budget: {args.shrink_budget or 'the default'}",
         "misses": []},
    ]


if __name__ == "__main__":
    sys.exit(main())
