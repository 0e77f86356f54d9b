"""Fault injection: hostile adapters through ``qkcheck gate``, each fault under each isolation mode
and worker count.

    python benchmarks/bench_faults.py [--shard 1/16] [--only NAME] [--json]
        # -> benchmarks/results/faults/faults.json

Each fault is a small adapter file around the README's example kernel (examples/torch_w4a16_adapter.py)
that misbehaves on the gate cases with a bias (the others stay correct), run on one shard of its
gate (``--device cpu``) four ways: ``--isolate on`` and ``off`` (``auto``, the default, is on for a
user's file), each in one process and under ``-n 2``. A row says: the exit code, how many of the
shard's cases are in the results file (``lost`` = the shard's case count minus those; must be 0
except for an interrupted run, which is marked so), the failures and errors recorded, the case
files saved, whether ``qkcheck report`` renders the results, and the wall time. A run still going
after HANG_CAP_S is killed by this script and shown as hung. ``SIGTERM mid-run`` interrupts the
run after a couple of cases; ``SIGKILL its xdist worker`` (isolation on, ``-n 2`` only) has the
case runner of one worker SIGKILL that worker once.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HANG_CAP_S = 120  # a run still going after this long is killed here and shown as hung
MODES = (("on", 1), ("on", 2), ("off", 1), ("off", 2))  # --isolate, workers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "torch_w4a16_adapter.py"
OUT = ROOT / "benchmarks" / "results" / "faults" / "faults.json"

HEADER = '''
import ctypes, dataclasses, importlib.util, os, signal, sys, time
import numpy as np
import torch
spec = importlib.util.spec_from_file_location("ex", {example!r})
ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)

def past_x(t, elements):
    x = t["x"]
    last = x.storage_offset() + (x.shape[0] - 1) * x.stride(0) + x.shape[1]
    return torch.as_strided(x, (1,), (1,), storage_offset=last + elements)

def pack(problem, params, device):
    if params["bias"]:
        {pack}
    return ex.ADAPTERS[0].pack(problem, params, device)

def call(t, params, config):
    if params["bias"]:
        {call}
    return ex.call(t, params, config)

ADAPTERS = [dataclasses.replace(ex.ADAPTERS[0], name="fault:{name}", pack=pack, call=call)]
'''

PASS = "pass"


def _once(action: str) -> str:
    """``action`` on the first bias case only (a file marks it done), as a call expression."""
    return f"(not os.path.exists({{killed!r}}) and (open({{killed!r}}, 'w').close() or {action}))"


# name -> (what pack does on a bias case, what call does on one, extra gate options, modes or None for all)
FAULTS = {
    "none (the correct example)": (PASS, PASS, [], None),
    "raise in pack": ("raise ValueError('bad pack')", PASS, [], None),
    "call returns None": (PASS, "return None", [], None),
    "call returns int": (PASS, "return 3", [], None),
    "call returns ndarray": (PASS, "return np.zeros((t['x'].shape[0], 16), np.float16)", [], None),
    "call returns ()": (PASS, "return ()", [], None),
    "sys.exit(0) in call": (PASS, "sys.exit(0)", [], None),
    "segfault": (PASS, "ctypes.string_at(0)", [], None),
    "os._exit(3)": (PASS, "os._exit(3)", [], None),
    "abort": (PASS, "os.abort()", [], None),
    "SIGKILL of its own process (once)": (PASS, _once("os.kill(os.getpid(), signal.SIGKILL)"), [], None),
    "hang": (PASS, "while True: time.sleep(0.01)", ["--case-timeout", "5s"], None),
    "hang catching Exception": (PASS, "while True:\n            try: time.sleep(0.01)\n            except Exception: pass",
                                ["--case-timeout", "5s"], None),
    # sigwait on a blocked signal nobody sends: a wait in native code that never returns to Python
    # (the in-process timer's signal is handled at the C level and the wait goes on)
    "hang in native code": (PASS, "signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR2}})\n"
                                  "        signal.sigwait({{signal.SIGUSR2}})", ["--case-timeout", "5s"], None),
    "OOB write into a gap (16 past x)": (PASS, "past_x(t, 16).fill_(1.0)", [], None),
    "OOB read (16 past x)": (PASS, "return ex.call(t, params, config) + past_x(t, 16).to(torch.float16)", [], None),
    "SIGTERM mid-run": (PASS, "time.sleep(1.0)", [], None),
    # in the case runner of an xdist worker: its parent is that worker
    "SIGKILL its xdist worker": (PASS, _once("os.kill(os.getppid(), signal.SIGKILL)"), [], (("on", 2),)),
}


def _report_renders(results: Path, html: Path) -> tuple[bool, str]:
    from qkcheck.cases.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["report", str(results), "-o", str(html)])
    return code in (0, 1) and html.exists(), err.getvalue().strip()


def run_fault(name: str, isolate: str, workers: int, shard: str, workdir: Path, expected: int | None) -> dict:
    pack, call, extra, _ = FAULTS[name]
    slug = "".join(c if c.isalnum() else "_" for c in name)[:40] + f"_{isolate}_{workers}"
    d = workdir / slug
    d.mkdir()
    killed = d / "worker-killed"
    source = HEADER.format(example=str(EXAMPLE), name=slug, pack="pass" if pack == PASS else pack,
                           call=("pass" if call == PASS else call).format(killed=str(killed)))
    (d / "faulty.py").write_text(source)
    results, failures = d / "r.jsonl", d / "failures"
    cmd = [sys.executable, "-m", "qkcheck.cases.cli", "gate", "--device", "cpu", "--kernels", str(d / "faulty.py"),
           "--results", str(results), "--failures-dir", str(failures), "--shard", shard, "--isolate", isolate,
           *(["-n", str(workers)] if workers > 1 else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = ""
    if name.startswith("SIGTERM"):
        # a couple of cases passed: two dots of progress (not those of xdist's "bringing up nodes...")
        while "".join(ln for ln in out.split("\n") if not ln.startswith("bringing")).count(".") < 2 \
                and proc.poll() is None:
            char = proc.stdout.read(1)
            if not char:
                break
            out += char
        proc.send_signal(signal.SIGTERM)
    hung = False
    try:
        rest, _ = proc.communicate(timeout=max(1.0, HANG_CAP_S - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(proc.pid, signal.SIGKILL)  # the run and every process it started
        rest, _ = proc.communicate()
    out += rest
    seconds = time.perf_counter() - t0
    lines = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    run, recs = (lines[0], lines[1:]) if lines else ({}, [])
    statuses = [r["status"] for r in recs]
    renders, why = _report_renders(results, d / "r.html") if results.exists() else (False, "no results file")
    return {"fault": name, "isolation": isolate, "workers": str(workers),
            "exit": "hung" if hung else proc.returncode, "results": len(recs), "expected": expected,
            "lost": None if expected is None else expected - len(recs), "interrupted": bool(run.get("interrupted")),
            "failed": statuses.count("fail"), "errors": statuses.count("error"), "passed": statuses.count("pass"),
            "case_files": len(list(failures.glob("*.json"))) if failures.exists() else 0,
            "report_renders": renders, "report_error": why, "seconds": round(seconds, 1),
            "tail": "" if proc.returncode in (0, 1) else out[-400:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard", default="1/16", help="the gate shard each fault runs (default 1/16)")
    ap.add_argument("--only", action="append", help="only faults whose name contains this (repeatable)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = [n for n in FAULTS if not args.only or n == "none (the correct example)" or any(o in n for o in args.only)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        expected = None
        for name in names:
            for isolate, workers in FAULTS[name][3] or MODES:
                row = run_fault(name, isolate, workers, args.shard, Path(tmp), expected)
                if name.startswith("none") and expected is None:
                    expected = row["expected"] = row["results"]
                    row["lost"] = 0
                rows.append(row)
                print(f"{name} (isolate {isolate}, -n {workers}): exit {row['exit']}, {row['results']}/{row['expected']} "
                      f"results, {row['failed']} failed, {row['errors']} errors, {row['case_files']} case files, "
                      f"report {row['report_renders']}, {row['seconds']} s", file=sys.stderr)
    data = {"command": "python benchmarks/bench_faults.py" + (f" --shard {args.shard}" if args.shard != "1/16" else ""),
            "machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}, Python {platform.python_version()}",
            "measured": time.strftime("%Y-%m-%d"), "shard": args.shard, "hang_cap_s": HANG_CAP_S, "rows": rows,
            "note": f"Load average {os.getloadavg()[0]:.1f} at the end of the run."}
    if not args.only:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(data, indent=1) + "\n")
    if args.json:
        print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
