"""Mutant table: every mutant of ``benchmarks/mutants/mutants.py`` (a small broken twin of a bundled
kernel, labelled with the hypothesis that should name it) through the gate and through the fuzzer,
one at a time, on this machine; the diagnosis named on each failure is scored against the label.

    python benchmarks/bench_mutants.py --device cpu --budget 60s      # -> benchmarks/results/mutants/mutants.json
    python benchmarks/bench_mutants.py --only w4a16_nibble_order --budget 20s --no-save
    python benchmarks/bench_mutants.py --device cpu --budget 60s --jobs 2   # two mutants at a time

With ``--jobs N`` each mutant runs in a process of its own, N at a time (``--jobs 1``, the
default, runs them one after another in this process); the fuzz budget is wall time, so on a
machine with fewer free cores than N each fuzz run gets fewer cases in its budget.

Per mutant: gate (detected yes/no, cases failed of cases run), fuzz (caught yes/no, seconds to the
first failure), and the diagnosis: *correct* (the expected mechanism named alone), *none* ("no
known mechanism matches", or several mechanisms named as indistinguishable), or *WRONG* (another
mechanism named). A mutant's gate verdict is WRONG if any failing gate case names a wrong
mechanism, else correct if any names the right one, else none. The gate runs its cases in order
until 12 have failed (the whole gate where fewer fail): the table gives the first failing case's
position and the verdict over those 12 (a diagnosis costs seconds a case, and W4A16's gate has
261). Its fuzz verdict is that of the shrunk failing case, replayed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutants" / "mutants.json"
SPEC = "benchmarks/mutants/mutants.py"
NEUTRAL = ("no_known_mechanism", "ambiguous")
DIAGNOSED = 12  # the gate runs until this many of its cases have failed (each diagnosed)


def verdict(names: list[str], expected: str) -> str:
    named = [n for n in names if n not in NEUTRAL]
    if not named:
        return "none"
    return "correct" if set(named) == {expected} else "WRONG"


def combine(verdicts: list[str]) -> str:
    if "WRONG" in verdicts:
        return "WRONG"
    return "correct" if "correct" in verdicts else "none"


def machine() -> str:
    import torch
    import triton

    return (f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, Triton {triton.__version__} (interpreter)")


def run_one(m, adapter, device: str, budget: str) -> dict:
    import qkcheck

    row = {"mutant": m.name, "kernel": m.adapter, "what": m.what, "expected": m.expected}
    t0 = time.perf_counter()
    cases = qkcheck.gate_cases(adapter)
    # the gate's cases in its order until DIAGNOSED of them have failed (each failure diagnosed);
    # a mutant the gate does not detect runs the whole gate
    failed, ran = [], 0
    for case in cases:
        result, = qkcheck.run_cases([case], adapter, device=device) or [None]
        if result is None or result.status == "skip":
            continue
        ran += 1
        if result.status == "fail":
            failed.append((ran, result))
            if len(failed) == DIAGNOSED:
                break
    first = failed[0][0] if failed else None
    failed = [r for _, r in failed]
    per_case = [verdict([d["hypothesis"] for d in r.diagnosis], m.expected) for r in failed]
    wrong = sorted({d["hypothesis"] for r in failed for d in r.diagnosis
                    if d["hypothesis"] not in NEUTRAL and d["hypothesis"] != m.expected})
    numeric = [r for r in failed if r.divergence is not None]
    row["gate"] = {"cases": len(cases), "ran": ran, "failed": len(failed), "detected": bool(failed),
                   "first_failing": first,
                   "diagnosis": combine(per_case) if failed else "-",
                   "failures_correct": per_case.count("correct"), "failures_none": per_case.count("none"),
                   "failures_wrong": per_case.count("WRONG"), "numeric_failures": len(numeric),
                   "wrong_names": wrong, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{m.name}: gate {len(failed)} failed of the first {ran} run (first failing: {first}), "
          f"diagnosis {row['gate']['diagnosis']}", file=sys.stderr)

    outcome, = qkcheck.fuzz(adapter, budget=budget, device=device)
    fz = {"budget": budget, "caught": outcome.failure is not None, "cases": outcome.cases,
          "first_failure_s": round(outcome.found_at, 1) if outcome.failure is not None else None,
          "seconds": round(outcome.seconds, 1)}
    if outcome.failure is not None:
        res, = qkcheck.run_cases([outcome.failure], adapter, device=device)
        names = [d["hypothesis"] for d in res.diagnosis]
        fz.update(diagnosis=verdict(names, m.expected) if res.status == "fail" else "flaky", named=names,
                  sentence=res.diagnosis[0]["sentence"] if res.diagnosis else "", case=res.case_id)
    row["fuzz"] = fz
    print(f"{m.name}: fuzz caught={fz['caught']} at {fz['first_failure_s']} s, diagnosis {fz.get('diagnosis')}",
          file=sys.stderr)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="60s", help="fuzz budget per mutant (the run ends at its first failure)")
    ap.add_argument("--only", default=None, help="comma-separated mutant names")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the record as JSON")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own process")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: must be 1 or more")
    sys.path.insert(0, str(ROOT))
    import qkcheck

    adapters = {a.name.removeprefix("mutant:"): a for a in qkcheck.resolve_kernels(SPEC, device=args.device)}
    sys.path.insert(0, str(ROOT / "benchmarks" / "mutants"))
    from mutants import MUTANTS

    todo = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    previous = json.loads(OUT.read_text()) if OUT.exists() and args.only else None
    rows = {r["mutant"]: r for r in (previous or {}).get("rows", [])}
    record = {"device": args.device, "machine": machine(), "measured": time.strftime("%Y-%m-%d"),
              "command": f"python benchmarks/bench_mutants.py --device {args.device} --budget {args.budget}"
                         + (f" --only {args.only}" if args.only else ""), "rows": []}
    if args.jobs > 1:
        record["command"] += f" --jobs {args.jobs}"

    def save(row):
        rows[row["mutant"]] = row
        record["rows"] = [rows[x.name] for x in MUTANTS if x.name in rows]
        if not args.no_save:
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(record, indent=2) + "\n")

    if args.jobs == 1:
        for m in todo:
            save(run_one(m, adapters[m.name], args.device, args.budget))
    else:
        import concurrent.futures
        import subprocess

        def child(m):
            done = subprocess.run([sys.executable, __file__, "--device", args.device, "--budget", args.budget,
                                   "--only", m.name, "--no-save", "--json"], capture_output=True, text=True)
            sys.stderr.write(done.stderr[-2000:])
            if done.returncode:
                raise RuntimeError(f"mutant {m.name}: the child exited {done.returncode}")
            return next(r for r in json.loads(done.stdout)["rows"] if r["mutant"] == m.name)

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for row in pool.map(child, todo):
                save(row)
    if args.json:
        print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
