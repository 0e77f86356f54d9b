"""Every benchmark of the project, one entry point, one table.

    python benchmarks/run_all.py                 # CPU set, here; results -> benchmarks/results/cpu.json
    python benchmarks/run_all.py --device cuda   # GPU set, on a GPU host -> benchmarks/results/cuda.json
    python benchmarks/run_all.py --table-only    # rebuild BENCHMARKS.md from the saved results
    python benchmarks/run_all.py --device cuda --save-as cuda-h200   # another GPU model: its own file

Each run measures its set side by side in one process tree and saves the rows (with the command
that produced each and the machine it ran on) as JSON under ``benchmarks/results/``; BENCHMARKS.md
is then rebuilt from *every* saved results file, so the CPU and GPU rows sit in one table even
though they were measured on different machines.

Sets:
- cpu: oracle throughput (bench_oracle, bench_moe_oracle), report rendering (bench_report),
  harness overhead and fuzz throughput (bench_harness), the CPU gate wall time (bundled kernels,
  ``-n 2``), time to detection of each zoo bug (bench_detect).
- cuda: the GPU gate wall time (same case list; cold and warm Triton cache), harness overhead and
  fuzz throughput on the GPU,
  time to detection on the GPU, bundled-kernel speed vs their floors (bench_kernels).

Run on their own (minutes each), their saved tables appended: mutants (bench_mutants.py ->
results/mutants/mutants.json) and fault injection (bench_faults.py -> results/faults/faults.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLE = ROOT / "BENCHMARKS.md"
PY = "python"

CPU_SET = [
    ["benchmarks/bench_oracle.py", "--json"],
    ["benchmarks/bench_moe_oracle.py", "--json"],
    ["benchmarks/bench_report.py", "--json"],
    ["benchmarks/bench_harness.py", "--device", "cpu", "--json"],
    ["benchmarks/bench_fuzz.py", "--device", "cpu", "--budget", "20s", "--json"],
    ["benchmarks/bench_detect.py", "--device", "cpu", "--json"],
]
GPU_SET = [
    ["benchmarks/bench_harness.py", "--device", "cuda", "--cases", "300", "--json"],
    ["benchmarks/bench_fuzz.py", "--device", "cuda", "--workers", "1,8,16", "--budget", "20s", "--json"],
    ["benchmarks/bench_detect.py", "--device", "cuda", "--seeds", "3", "--json"],
    ["benchmarks/bench_kernels.py", "--device", "cuda", "--json"],
]


def machine(device: str) -> str:
    desc = f"{platform.machine()} {os.cpu_count()}-core, {platform.system()}, Python {platform.python_version()}"
    try:
        import torch
        import triton

        desc += f", torch {torch.__version__}, Triton {triton.__version__}"
        if device == "cuda" and torch.cuda.is_available():
            desc = f"{torch.cuda.get_device_name()}; " + desc
    except Exception:
        pass
    return desc


def _normalize(r: dict) -> dict:
    """Rows from every script in one shape: name, value, unit, goal, ok, detail."""
    if "ratio" in r and "value" not in r:  # reference vs bare float64 matmuls, side by side
        goal = r.get("goal_ratio", r.get("goal"))
        name = r.get("name") or (f"fused-MoE reference vs its bare float64 expert matmuls (tokens {r.get('tokens')}, "
                                 f"hidden {r.get('hidden')}, intermediate {r.get('intermediate')}, "
                                 f"{r.get('experts')} experts, top-{r.get('top_k')})")
        ms = r.get("ms", 1e3 * r.get("reference_s", float("nan")))
        bare = r.get("matmul_ms", 1e3 * r.get("bare_gemms_s", float("nan")))
        return {"name": name, "value": r["ratio"], "unit": "x", "goal": None if goal is None else f"<= {goal:g} x",
                "ok": r.get("ok", goal is None or r["ratio"] <= goal), "detail": f"reference {ms:.0f} ms, bare {bare:.0f} ms"}
    if "units" in r:  # bench_oracle's own shape
        goal = r.get("goal_units")
        return {"name": r["name"], "value": r["units"], "unit": "units", "goal": None if goal is None else f"<= {goal:g} units",
                "ok": r.get("ok", True), "detail": f"{r.get('ms', 0):.1f} ms"}
    return {"name": r["name"], "value": r["value"], "unit": r.get("unit", ""), "goal": r.get("goal"),
            "ok": r.get("ok", True), "detail": r.get("detail", "")}


def run_script(args: list[str], timeout: float) -> tuple[list[dict], str]:
    cmd = [sys.executable, *args]
    shown = " ".join([PY, *map(shlex.quote, args)])
    if not (ROOT / args[0]).exists():
        return [{"name": f"{args[0]} (missing)", "value": float("nan"), "unit": "", "goal": None, "ok": False,
                 "detail": "script not found"}], shown
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        data = json.loads(proc.stdout[proc.stdout.index("{"):])
        found = (data.get("results", []) + data.get("gemm_references", [])) if "results" in data else [data]
        rows = [_normalize(r) for r in found]
    except subprocess.TimeoutExpired:
        rows = [{"name": f"{args[0]}", "value": float("nan"), "unit": "", "goal": None, "ok": False,
                 "detail": f"did not finish within {timeout:g} s"}]
    except (ValueError, KeyError) as exc:
        tail = (proc.stderr or proc.stdout)[-300:].replace("\n", " | ")
        rows = [{"name": f"{args[0]}", "value": float("nan"), "unit": "", "goal": None, "ok": False,
                 "detail": f"no JSON results ({type(exc).__name__}); output: {tail}"}]
    return rows, shown


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished child processes (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _gate(device: str, workers: str, timeout: float, env: dict | None = None) -> tuple[float, int, str, str, float]:
    """(wall seconds, exit code, pytest's summary line, the command shown, CPU seconds of every
    process of the run)."""
    args = ["-m", "qkcheck.cases.cli", "gate", "--device", device, "--kernels", "bundled", "-n", workers,
            "--failures-dir", "out/bench-failures"]
    shown = " ".join(["qkcheck", *args[2:]])
    cpu0, t0 = _children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    cpu = _children_cpu_seconds() - cpu0
    summary = next((line for line in reversed(proc.stdout.splitlines()) if " in " in line and ("passed" in line or "failed" in line)), "")
    return seconds, proc.returncode, summary.strip("= "), shown, cpu


def gate_wall(device: str, workers: str, timeout: float) -> tuple[list[dict], str]:
    """The gate's wall time. On a GPU host: compiled with ``workers`` from an empty Triton cache
    (cold), then again with the cache it left (warm); the ratio is to the CPU gate of this
    project's CI (saved CPU results: the 2-core machine, ``-n 2``, the interpreter)."""
    if device == "cpu":
        seconds, code, summary, shown, _ = _gate("cpu", workers, timeout)
        return [{"name": f"gate wall time, bundled kernels, cpu, -n {workers} (process start to exit)",
                 "value": seconds, "unit": "s", "goal": "<= 600 s", "ok": code == 0 and seconds <= 600,
                 "detail": f"exit {code}; {summary}"}], shown
    import tempfile

    rows = []
    # the baseline: the CPU gate as this project's CI runs it (2-core machine, -n 2, the interpreter),
    # from the saved CPU results; the interpreter is not run on the GPU host (its Triton differs)
    cpu_rows = []
    if (RESULTS / "cpu.json").exists():
        cpu_rows = [r for r in json.loads((RESULTS / "cpu.json").read_text()).get("rows", [])
                    if r["name"].startswith("gate wall time") and r.get("ok")]
    cpu_s = cpu_rows[0]["value"] if cpu_rows else None
    resolved = ""
    if workers == "auto":
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from qkcheck.cases.cli import auto_workers

        resolved = f" ({auto_workers(device, 'auto')} workers)"
    cores = os.cpu_count() or 1
    cpu_by_label = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {"TRITON_CACHE_DIR": cache}
        for label in ("cold Triton cache", "warm Triton cache"):
            seconds, code, summary, shown, cpu = _gate(device, workers, timeout, env)
            cpu_by_label[label] = cpu
            ratio = cpu_s / seconds if cpu_s else None
            rows.append({"name": f"gate wall time, bundled kernels, {device}, -n {workers}{resolved}, {label}",
                         "value": seconds, "unit": "s", "goal": "<= 180 s, >= 5x the CPU gate",
                         "ok": code == 0 and seconds <= 180 and ratio is not None and ratio >= 5,
                         "detail": f"exit {code}; {summary}; "
                                   + (f"{ratio:.1f}x faster than the CPU gate of CI ({cpu_s:.0f} s, saved CPU "
                                      "results: 2-core machine, -n 2; a different machine)" if ratio else
                                      "no saved CPU gate to compare with")
                                   + f"; {cpu:.0f} CPU s in all its processes ({cores} cores: at least "
                                     f"{cpu / cores:.1f} s of wall time)"})
    # what compiling alone costs: the cold run's CPU time beyond the warm run's, spread over every core
    compile_cpu = cpu_by_label["cold Triton cache"] - cpu_by_label["warm Triton cache"]
    rows[0]["detail"] += (f"; compiling took about {compile_cpu:.0f} CPU s more than the warm run, at least "
                          f"{compile_cpu / cores:.1f} s of wall time on {cores} cores")
    return rows, shown


def measure(device: str, timeout: float, only: list[str] | None = None, previous: dict | None = None) -> dict:
    """Run the device's set (or only the scripts named in ``only``, keeping the other rows of
    ``previous``) and return the saved-results record."""
    rows = []
    today = time.strftime("%Y-%m-%d")
    todo = CPU_SET if device == "cpu" else GPU_SET
    if only:
        todo = [a for a in todo if Path(a[0]).stem in only]
        keep = {Path(a[0]).stem for a in (CPU_SET if device == "cpu" else GPU_SET)} - set(only)
        earlier = (previous or {}).get("measured")
        # kept rows keep the date they were measured on (rows saved before rows had dates: the file's)
        rows = [{"measured": earlier, **r} for r in (previous or {}).get("rows", [])
                if Path(r["command"].split()[1]).stem in keep or r["command"].startswith("qkcheck")]
    for args in todo:
        got, cmd = run_script(args, timeout)
        rows += [{**r, "command": cmd, "measured": today} for r in got]
        print(f"done: {cmd}", file=sys.stderr)
    if not only or "gate" in only:
        rows = [r for r in rows if not r["command"].startswith("qkcheck")]
        got, cmd = gate_wall(device, "2" if device == "cpu" else "auto", timeout)
        rows += [{**r, "command": cmd, "measured": today} for r in got]
    return {"device": device, "machine": machine(device), "measured": today, "rows": rows}


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def render_table() -> str:
    lines = ["# Benchmarks", "",
             "Generated by `python benchmarks/run_all.py` from the saved results in `benchmarks/results/`",
             "(`--device cuda` on a GPU host adds the GPU rows). Every row carries its command and the machine",
             "it ran on; ratios are measured side by side in one run. Oracle throughput is in *units*: one",
             "float64 elementwise multiply of two 4096 x 4096 arrays timed in the same process.", ""]
    summary = ROOT / "benchmarks" / "SUMMARY.md"  # the readable summary, kept by hand, goes first
    if summary.exists():
        lines += [summary.read_text().rstrip(), ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {data['device']} — {data['machine']} (measured {data['measured']})", "",
                  "| benchmark | value | goal | met | detail | command |", "|---|---|---|---|---|---|"]
        for r in data["rows"]:
            met = "yes" if r["ok"] else "**no**"
            detail = str(r.get("detail", "")).replace("|", "/")
            if r.get("measured") and r["measured"] != data["measured"]:
                detail = f"(measured {r['measured']}) {detail}"
            lines.append(f"| {r['name']} | {_fmt(r['value'])} {r['unit']} | {r['goal'] or '-'} | {met} | {detail} | "
                         f"`{r['command']}` |")
        lines.append("")
    lines += mutant_section()
    lines += fault_section()
    notes = ROOT / "benchmarks" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def fault_section() -> list[str]:
    """The fault-injection table (benchmarks/bench_faults.py -> results/faults/faults.json): per
    hostile adapter (a row) and isolation mode x worker count (a column), what a gate run over it
    exited with, kept, lost and took."""
    path = RESULTS / "faults" / "faults.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = data["rows"]
    modes = list(dict.fromkeys((r["isolation"], r["workers"]) for r in rows))
    faults = list(dict.fromkeys(r["fault"] for r in rows))
    by = {(r["fault"], r["isolation"], r["workers"]): r for r in rows}

    def lost(r) -> bool:
        return r["exit"] == "hung" or bool(r["lost"] and not r["interrupted"])

    def cell(r) -> str:
        if r is None:
            return "n/a"
        if r["exit"] == "hung":
            text = f"**hung**, killed after {r['seconds']:.0f} s · kept {r['results']}/{r['expected']}"
        else:
            text = f"exit {r['exit']} · kept {r['results']}/{r['expected']}"
            text += f" · interrupted, {r['lost']} not run" if r["interrupted"] else f" · lost {r['lost']}"
            text += f" · {r['seconds']:.0f} s"
        if not r["report_renders"]:
            text += " · no report"
        return f"**{text}**" if lost(r) and r["exit"] != "hung" else text

    lost_on = sum(r["lost"] or 0 for r in rows if r["isolation"] == "on" and not r["interrupted"])
    hung_on = [r for r in rows if r["isolation"] == "on" and r["exit"] == "hung"]
    off_losses = sorted({r["fault"] for r in rows if r["isolation"] == "off" and lost(r)})
    lines = [f"## Fault injection — {data['machine']} (measured {data['measured']})", "",
             f"`{data['command']}`: each hostile adapter (the README's example kernel, misbehaving on the cases "
             f"with a bias) through `qkcheck gate --device cpu --shard {data['shard']}`, with `--isolate on` "
             "(what `auto`, the default, gives a user's file) and `--isolate off`, each in one process and "
             "under `-n 2`. A cell: the exit code, the cases in the results file out of the shard's, the cases "
             "lost (an interrupted run keeps what finished, is marked so, and the cases after it did not run), "
             "the wall time; a run still going "
             f"after {data.get('hang_cap_s', 120)} s is killed and shown as hung. With isolation on: "
             f"{lost_on} cases lost, {len(hung_on)} runs hung. With `--isolate off` the run is lost or hangs for: "
             f"{', '.join(off_losses) or 'none'} (a fault in the pytest process itself; under `-n 2` pytest-xdist "
             f"replaces a dead worker). {data.get('note', '')}".rstrip(), "",
             "| fault | " + " | ".join(f"isolate {i}, -n {w}" for i, w in modes) + " |",
             "|---|" + "---|" * len(modes)]
    for f in faults:
        lines.append(f"| {f} | " + " | ".join(cell(by.get((f, i, w))) for i, w in modes) + " |")
    return lines + [""]


def mutant_section() -> list[str]:
    """The mutant table (benchmarks/bench_mutants.py -> results/mutants/mutants.json): per mutant of a
    bundled kernel, caught by the gate / by the fuzzer, and the diagnosis against its label."""
    path = RESULTS / "mutants" / "mutants.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = data["rows"]
    gate = sum(r["gate"]["detected"] for r in rows)
    fuzz = sum(r["fuzz"]["caught"] for r in rows)
    verdicts = [r["gate"]["diagnosis"] if r["gate"]["detected"] else r["fuzz"].get("diagnosis", "-") for r in rows]
    lines = [f"## Mutants — {data['machine']} (measured {data['measured']})", "",
             f"`{data['command']}`: {len(rows)} mutants of the bundled kernels (`benchmarks/mutants/mutants.py`, "
             f"each labelled with the mechanism that should be named). Caught by the gate: {gate}/{len(rows)}; by "
             f"`fuzz --budget {rows[0]['fuzz']['budget'] if rows else '-'}`: {fuzz}/{len(rows)}; diagnosis correct "
             f"{verdicts.count('correct')}, none {verdicts.count('none')}, WRONG {verdicts.count('WRONG')} (gate "
             "verdict over the failing cases diagnosed: WRONG if any names another mechanism, else correct if any "
             "names the label). The gate runs its cases in order until 12 have failed (each diagnosed), or to its "
             "end.", "",
             "| mutant | expected | gate: first failing case (of cases) | failed / run | gate diagnosis "
             "| fuzz: caught (s to first) | fuzz diagnosis |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        g, f = r["gate"], r["fuzz"]
        caught = f"yes ({f['first_failure_s']} s)" if f["caught"] else "**no**"
        first = f"{g['first_failing']} (of {g['cases']})" if g.get("first_failing") else f"**none** (of {g['cases']})"
        lines.append(f"| {r['mutant']} | {r['expected']} | {first} | {g['failed']} / {g.get('ran', g['cases'])} | "
                     f"{g['diagnosis']} | {caught} | {f.get('diagnosis', '-')} |")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--table-only", action="store_true", help="only rebuild BENCHMARKS.md from saved results")
    parser.add_argument("--timeout", type=float, default=1200, help="per-script limit in seconds")
    parser.add_argument("--save-as", default=None, metavar="NAME",
                        help="save under benchmarks/results/NAME.json (default: the device's name); one file per "
                             "machine keeps each row next to the machine that measured it")
    parser.add_argument("--only", default=None,
                        help="comma-separated scripts to re-run (e.g. bench_oracle,gate); the other saved rows are kept")
    args = parser.parse_args(argv)
    if not args.table_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        saved = RESULTS / f"{args.save_as or args.device}.json"
        previous = json.loads(saved.read_text()) if saved.exists() else None
        if previous is not None and args.only and previous.get("machine") != machine(args.device):
            print(f"run_all: {saved} holds rows of another machine ({previous.get('machine')}); "
                  f"pass --save-as NAME to keep this machine's rows apart", file=sys.stderr)
            return 2
        data = measure(args.device, args.timeout, args.only.split(",") if args.only else None, previous)
        saved.write_text(json.dumps(data, indent=2, default=str) + "\n")
    TABLE.write_text(render_table())
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
