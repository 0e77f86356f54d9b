"""Fault injection: hostile adapters through ``qkcheck gate``, one row per fault.

    python benchmarks/bench_faults.py [--shard 1/8] [--json]   # -> benchmarks/results/faults/faults.json

Each fault is a small adapter file around the README's example kernel (examples/torch_w4a16_adapter.py)
that misbehaves on the gate cases with a bias (the others stay correct), run on one shard of its
gate (``--device cpu``, the default isolation: on for a user's file). A row says: the exit code,
how many of the shard's cases are in the results file (``lost`` = the shard's case count minus
those; must be 0 except for an interrupted run, which is marked so), the failures and errors
recorded, the case files saved, whether ``qkcheck report`` renders the results, and the wall
time. ``sigterm`` interrupts the run after a few cases; ``sigkill-worker`` runs with ``-n 2`` and
the case runner of one xdist worker SIGKILLs that worker once; two segfault rows run with
``--isolate off`` (in one process, and under ``-n 2`` where pytest-xdist replaces the worker).
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
# name -> (what pack does on a bias case, what call does on one, extra gate options)
FAULTS = {
    "none (the correct example)": (PASS, PASS, []),
    "raise in pack": ("raise ValueError('bad pack')", PASS, []),
    "call returns None": (PASS, "return None", []),
    "call returns int": (PASS, "return 3", []),
    "call returns ndarray": (PASS, "return np.zeros((t['x'].shape[0], 16), np.float16)", []),
    "call returns ()": (PASS, "return ()", []),
    "sys.exit(0) in call": (PASS, "sys.exit(0)", []),
    "segfault": (PASS, "ctypes.string_at(0)", []),
    "os._exit(3)": (PASS, "os._exit(3)", []),
    "abort": (PASS, "os.abort()", []),
    "segfault, --isolate off": (PASS, "ctypes.string_at(0)", ["--isolate", "off"]),
    "segfault, --isolate off -n 2": (PASS, "ctypes.string_at(0)", ["--isolate", "off", "-n", "2"]),
    "hang": (PASS, "while True: time.sleep(0.01)", ["--case-timeout", "5s"]),
    "OOB write into a gap (16 past x)": (PASS, "past_x(t, 16).fill_(1.0)", []),
    "OOB read (16 past x)": (PASS, "return ex.call(t, params, config) + past_x(t, 16).to(torch.float16)", []),
    "SIGTERM mid-run": (PASS, "time.sleep(1.0)", []),
    # in the case runner of an xdist worker (-n 2): its parent is that worker
    "SIGKILL a worker (-n 2)": (PASS, "(not os.path.exists({killed!r}) "
                                "and (open({killed!r}, 'w').close() or os.kill(os.getppid(), signal.SIGKILL)))",
                                ["-n", "2"]),
}


def _report_renders(results: Path, html: Path) -> tuple[bool, str]:
    from qkcheck.cases.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["report", str(results), "-o", str(html)])
    return code in (0, 1) and html.exists(), err.getvalue().strip()


def run_fault(name: str, shard: str, workdir: Path, expected: int | None) -> dict:
    pack, call, extra = FAULTS[name]
    slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
    d = workdir / slug
    d.mkdir()
    killed = d / "worker-killed"
    source = HEADER.format(example=str(EXAMPLE), name=slug, pack="pass" if pack == PASS else pack,
                           call=("pass" if call == PASS else call).format(killed=str(killed)))
    (d / "faulty.py").write_text(source)
    results, failures = d / "r.jsonl", d / "failures"
    cmd = [sys.executable, "-m", "qkcheck.cases.cli", "gate", "--device", "cpu", "--kernels", str(d / "faulty.py"),
           "--results", str(results), "--failures-dir", str(failures), "--shard", shard, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    if name.startswith("SIGTERM"):
        while out.split("nodes...")[-1].count(".") < 2 and proc.poll() is None:  # a couple of cases passed
            char = proc.stdout.read(1)
            if not char:
                break
            out += char
        proc.send_signal(signal.SIGTERM)
    try:
        rest, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
    out += rest
    seconds = time.perf_counter() - t0
    lines = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    run, recs = (lines[0], lines[1:]) if lines else ({}, [])
    statuses = [r["status"] for r in recs]
    renders, why = _report_renders(results, d / "r.html") if results.exists() else (False, "no results file")
    return {"fault": name, "isolation": "off" if "off" in extra else "on (auto: a user's file)",
            "workers": "2" if "-n" in extra else "1",
            "exit": proc.returncode, "results": len(recs), "expected": expected,
            "lost": None if expected is None else expected - len(recs), "interrupted": bool(run.get("interrupted")),
            "failed": statuses.count("fail"), "errors": statuses.count("error"), "passed": statuses.count("pass"),
            "case_files": len(list(failures.glob("*.json"))) if failures.exists() else 0,
            "report_renders": renders, "report_error": why, "seconds": round(seconds, 1),
            "tail": "" if proc.returncode in (0, 1) else out[-400:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard", default="1/8", help="the gate shard each fault runs (default 1/8)")
    ap.add_argument("--only", action="append", help="only faults whose name contains this (repeatable)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = [n for n in FAULTS if not args.only or n == "none (the correct example)" or any(o in n for o in args.only)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        expected = None
        for name in names:
            row = run_fault(name, args.shard, Path(tmp), expected)
            if name.startswith("none"):
                expected = row["expected"] = row["results"]
                row["lost"] = 0
            rows.append(row)
            print(f"{name}: exit {row['exit']}, {row['results']}/{row['expected']} results, {row['failed']} failed, "
                  f"{row['errors']} errors, {row['case_files']} case files, report {row['report_renders']}, "
                  f"{row['seconds']} s", file=sys.stderr)
    data = {"command": "python benchmarks/bench_faults.py" + (f" --shard {args.shard}" if args.shard != "1/8" else ""),
            "machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}, Python {platform.python_version()}",
            "measured": time.strftime("%Y-%m-%d"), "shard": args.shard, "rows": rows,
            "note": f"Load average {os.getloadavg()[0]:.1f} at the end of the run: wall times include other work "
                    "on the machine."}
    if not args.only:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(data, indent=1) + "\n")
    if args.json:
        print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
