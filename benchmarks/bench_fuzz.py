"""Fuzz throughput of the real command, next to a bare loop, measured in one run.

    python benchmarks/bench_fuzz.py [--device cuda] [--kernels bundled:w4a16_gemm] [--budget 20s]
                                    [--workers 1,8] [--warm-factor 3] [--json]

Rows:
- ``qkcheck fuzz`` cases/s as the command's summary prints it "after start-up" (from each
  stream's first finished case: the case-runner process, imports and first compile left out; the
  rate with them is in the detail), once per ``--workers`` value (1 = one process; N = ``-n N``: N
  xdist workers, one fuzz stream each, sharing the device). Each is run twice with the same seed
  and the second run is the row: the first, with ``--warm-factor`` times the budget, compiles
  the kernel variants of at least the draws the second makes, so the second finds them in
  Triton's on-disk cache ("once kernels are compiled"); the detail says if it drew further.
- a bare loop for scale: small W4A16 cases (NumPy inputs, a float64 NumPy reference, one launch of
  the bundled kernel at a fixed config, an exact-regime comparison), no harness; cases/s. The ratio
  bare / harness per process is the harness's cost (goal: within about 3x).

Goal (GPU): >= 1000 cases/s. Reported, exit status 0 unless a run broke.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_CASES_PER_S = 1000.0
SUMMARY = re.compile(r"qkcheck fuzz (\S+): (\d+) cases \((\d+) drawn, \d+ repeated draws skipped, (\d+) stream\(s\)\) "
                     r"in ([\d.]+) s = (\d+) cases/s "
                     r"\((\d+) cases/s after start-up\)")


def fuzz_once(device: str, kernels: str, budget: str, workers: int) -> tuple[dict | None, str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "qkcheck.cases.cli", "fuzz", "--device", device, "--kernels", kernels,
               "--budget", budget, "--failures-dir", tmp]
        if workers > 1:
            cmd += ["-n", str(workers)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    m = SUMMARY.search(out)
    if not m:
        return None, out[-600:], cmd
    return ({"cases": int(m.group(2)), "drawn": int(m.group(3)), "streams": int(m.group(4)),
             "seconds": float(m.group(5)), "rate": float(m.group(6)), "steady": float(m.group(7)), "wall": wall,
             "exit": proc.returncode},
            "", cmd)


def bare_loop(device: str, seconds: float) -> tuple[float, int]:
    """cases/s of the bare loop (module docstring)."""
    import numpy as np

    from qkcheck.kernels import device as _device

    _device.activate(device)
    import torch

    from qkcheck.kernels.w4a16.kernel import W4A16Config, w4a16_gemm

    rng = np.random.default_rng(0)
    M, N, K, G = 4, 32, 128, 32
    config = W4A16Config(block_m=16, block_n=32, block_k=32)
    dev = torch.device(device)
    shifts = np.arange(8, dtype=np.uint32) * 4

    def one() -> bool:
        q = rng.integers(0, 16, size=(K, N), dtype=np.uint32)
        s = rng.integers(1, 4, size=(K // G, N)).astype(np.float16) / np.float16(64)
        x = rng.integers(-4, 5, size=(M, K)).astype(np.float16)
        packed = (q.reshape(K // 8, 8, N) << shifts[None, :, None]).sum(axis=1, dtype=np.uint32).view(np.int32)
        ref = x.astype(np.float64) @ ((q.astype(np.float64) - 8) * np.repeat(s.astype(np.float64), G, axis=0))
        out = w4a16_gemm(torch.from_numpy(x).to(dev), torch.from_numpy(packed).to(dev), torch.from_numpy(s).to(dev),
                         layout="gptq", group_size=G, out_dtype=torch.float32, config=config)
        return bool(np.array_equal(out.cpu().numpy().astype(np.float64), ref))

    if not one():  # warm-up compile; the values are exact in float32 (small integers x powers of two)
        raise RuntimeError("bare loop: the bundled kernel disagreed with the exact reference")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if not one():
            raise RuntimeError("bare loop: the bundled kernel disagreed with the exact reference")
        n += 1
    return n / (time.perf_counter() - t0), n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kernels", default="bundled:w4a16_gemm")
    parser.add_argument("--budget", default="20s")
    parser.add_argument("--workers", default="1", help="comma-separated worker counts, e.g. 1,8")
    parser.add_argument("--bare-seconds", type=float, default=5.0)
    parser.add_argument("--warm-factor", type=float, default=3.0,
                        help="budget of the first (compiling) run as a multiple of --budget (default 3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from qkcheck.cases.plugin import parse_duration

    budget_s = parse_duration(args.budget)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if not workers or min(workers) < 1:
        parser.error(f"--workers {args.workers!r} must list worker counts >= 1, e.g. 1,8")
    rows, broke = [], False
    bare_rate, bare_n = bare_loop(args.device, args.bare_seconds)
    rows.append({"name": f"bare loop, small W4A16 cases, one launch each ({args.device})", "value": bare_rate,
                 "unit": "cases/s", "goal": None, "ok": True,
                 "detail": f"{bare_n} cases; M=4 N=32 K=128 g32, exact regime, no harness checks"})
    for w in workers:
        # the compiling run gets a longer budget so that it draws at least what the measured run
        # will (same seed, same sequence): the measured run then finds every kernel in the cache
        first, _, _ = fuzz_once(args.device, args.kernels, f"{budget_s * args.warm_factor:g}s", w)
        second, tail, cmd = fuzz_once(args.device, args.kernels, args.budget, w)
        name = (f"qkcheck fuzz {args.kernels}, {args.device}, {w} process(es), second run (Triton cache warm), "
                f"after each stream's start-up")
        if second is None:
            broke = True
            rows.append({"name": name, "value": 0.0, "unit": "cases/s", "goal": None, "ok": False,
                         "detail": f"no summary line; output tail: {tail}"})
            continue
        rate = second["steady"]
        per_process = rate / max(w, 1)
        goal = f">= {GOAL_CASES_PER_S:g}" if args.device != "cpu" else None
        rows.append({"name": name, "value": rate, "unit": "cases/s", "goal": goal,
                     "ok": rate >= GOAL_CASES_PER_S if goal else True,
                     "detail": (f"{second['cases']} cases ({second['drawn']} drawn) in {second['seconds']:.1f} s "
                                f"({second['rate']:.0f} cases/s with each stream's start-up included), "
                                f"{second['streams']} stream(s); per process {per_process:.0f} cases/s = bare loop / "
                                f"{bare_rate / max(per_process, 1e-9):.1f}; first run (compiling) "
                                + (f"{first['rate']:.0f} cases/s, {first['drawn']} drawn in {first['seconds']:.0f} s"
                                   + ("" if first["drawn"] >= second["drawn"] else
                                      " (fewer than the measured run: some of its draws compiled)")
                                   if first else "gave no summary")
                                + f"; command: {' '.join(cmd[1:])}")})
    info = {"machine": f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}", "device": args.device,
            "python": platform.python_version()}
    if args.json:
        print(json.dumps({"info": info, "results": rows}, indent=2))
    else:
        for r in rows:
            status = ("ok" if r["ok"] else "MISSED") if r["goal"] else ""
            print(f"{r['name']:<90} {r['value']:9.1f} {r['unit']:<8} {r['goal'] or '':<8} {status}\n    {r['detail']}")
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
