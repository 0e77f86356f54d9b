"""``qkcheck``: the command line, thin over pytest.

    qkcheck gate   [--device D] [--kernels SPEC]... [--op OP]... [--report PATH] [--results PATH] [-n N] [--shard i/n]
    qkcheck fuzz   [--kernels SPEC]... [--budget 60s] (same options as gate)
    qkcheck replay CASE.json [--kernels SPEC]... [--device D]
    qkcheck report RESULTS.jsonl... -o report.html
    qkcheck list

Exit codes: 0 pass, 1 divergences found, 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SUITES = Path(__file__).resolve().parent / "suites"  # shipped in the package: runs from any directory
EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"qkcheck: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _run_options(p: argparse.ArgumentParser, *, budget: bool) -> None:
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|xpu (default auto)")
    p.add_argument("--kernels", action="append", metavar="SPEC",
                   help="bundled (default), zoo, zoo:<name>, bundled:<name>, adapters.py, or a module path; repeatable")
    p.add_argument("--op", action="append", metavar="OP", help="only this op (repeatable)")
    p.add_argument("--report", metavar="PATH", help="write the HTML report here")
    p.add_argument("--results", metavar="PATH", help="write results as JSON lines here")
    p.add_argument("-n", dest="workers", default=None,
                   help="pytest-xdist workers: a number, or auto (with cases isolated, as on GPUs: half the "
                        "CPU cores, at most 8 per GPU; otherwise one per core)")
    p.add_argument("--shard", metavar="i/n", help="run shard i of n of the case list")
    p.add_argument("--failures-dir", default="out/failures", help="where failing cases are saved (default out/failures)")
    p.add_argument("--isolate", choices=("auto", "on", "off"), default="auto",
                   help="run cases in a child process so a crash or hang fails only that case (auto: on for GPUs)")
    p.add_argument("--case-timeout", default="300s", help="per-case time limit (default 300s; 0 = none)")
    if budget:
        p.add_argument("--budget", default="60s", help="time budget per kernel, e.g. 30s, 5m (default 60s)")
        p.add_argument("--fuzz-seed", default=None, help="first hypothesis seed (default 0; runs are reproducible per seed)")
        p.add_argument("--fuzz-siblings", default=None,
                       help="cases per drawn case: it and N-1 siblings (other seeds/regimes/row counts; default 64 on a GPU, "
                            "1 on the CPU)")
        p.add_argument("--fuzz-streams", default=None, help="fuzz streams per kernel (default: one per -n worker)")
        p.add_argument("--shrink-budget", default=None,
                       help="time spent shrinking a failure before the smallest one found is reported "
                            "(default 2s on a GPU, none on the CPU; 0 = none)")
    p.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest after --")


# with isolation on, each worker runs its cases in a child process: two processes per worker,
# each importing torch and registering the kernels. On one H100 host (16 cores) the warm bundled
# gate took 11.8 s with -n 8, 13.9 s with -n 12 and 16.3 s with -n 16 (start-up dominates; the
# cases themselves ran in 1.2-1.6 s): -n auto takes half the cores, at most this many per GPU
AUTO_WORKERS_PER_GPU = 8


def auto_workers(device: str, isolate: str) -> str:
    """What ``-n auto`` means: with cases isolated (GPUs by default, or ``--isolate on``) half the
    CPU cores, at most AUTO_WORKERS_PER_GPU per GPU and at least one; otherwise pytest-xdist's
    own ``auto`` (one worker per core)."""
    from qkcheck.kernels import device as _device

    if isolate == "off" or (isolate == "auto" and device == "cpu"):
        return "auto"
    half = max(1, (os.cpu_count() or 2) // 2)
    if device in ("cuda", "xpu") and half <= AUTO_WORKERS_PER_GPU:
        return str(half)  # the per-GPU cap cannot bind: no GPU count needed (nor torch in this process)
    try:
        dev = _device.resolve(device)
    except ValueError:  # the run itself reports the device error
        return "auto"
    if dev == "cpu" and isolate != "on":
        return "auto"
    return str(min(half, AUTO_WORKERS_PER_GPU * max(1, _device.gpu_count(dev))))


def _check_workers(value: str | None) -> None:
    if value is None or value == "auto" or (value.isdigit() and int(value) >= 1):
        return
    raise ValueError(f"-n {value!r}: expected a number of workers >= 1 or auto (e.g. -n 2); "
                     "leave -n out to run in this process")


def _check_output_paths(args) -> None:
    """--results, --report and --failures-dir: writable, not directories where a file goes, and
    distinct, checked before any case runs (not discovered after the run)."""
    files = {opt: Path(getattr(args, opt)).resolve() for opt in ("results", "report") if getattr(args, opt, None)}
    if len(set(files.values())) < len(files):
        raise ValueError(f"--report and --results both name {files['report']}; the report would overwrite the "
                         "results: give them different paths (e.g. out/report.html and out/results.jsonl)")
    for opt, path in files.items():
        if path.is_dir():
            raise ValueError(f"--{opt} {getattr(args, opt)} is a directory; expected a file path "
                             f"(e.g. {Path(getattr(args, opt)) / ('results.jsonl' if opt == 'results' else 'report.html')})")
        _check_writable_dir(f"--{opt}", path.parent)
    failures = Path(args.failures_dir).resolve()
    if failures.exists() and not failures.is_dir():
        raise ValueError(f"--failures-dir {args.failures_dir} is a file; expected a directory for the failing cases")
    if failures in files.values():
        raise ValueError(f"--failures-dir {args.failures_dir} is also a results/report path; give it its own directory")
    _check_writable_dir("--failures-dir", failures)


def _check_writable_dir(option: str, directory: Path) -> None:
    """``directory`` exists (it is created) and a file can be written in it."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(f"{option}: cannot write under {directory} ({exc.strerror or exc}); "
                         "choose a path you can write to") from None


class _EarlySigterm:
    """The SIGTERM handler of a gate or fuzz run until the plugin installs its own (pytest is
    still importing and configuring): it keeps the signal, which the plugin then honours at
    collection (``plugin._finish_on_sigterm``), so a run stopped that early still ends as an
    interrupted run with its results file rather than killed by the default action."""

    def __init__(self):
        self.received = None

    def __call__(self, signum, frame):
        self.received = signum


def _pytest(suite: str, args) -> int:
    import signal

    original = signal.signal(signal.SIGTERM, _EarlySigterm()) if hasattr(signal, "SIGTERM") else None
    try:
        return _pytest_run(suite, args)
    finally:
        if original is not None:
            signal.signal(signal.SIGTERM, original)


def _pytest_run(suite: str, args) -> int:
    import pytest

    try:
        _check_workers(args.workers)
        _check_output_paths(args)
    except ValueError as exc:
        print(f"qkcheck: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    # the suites' own pytest.ini makes their folder the rootdir: a project's ini files, addopts
    # and conftests around the current directory stay out of the run
    argv = [str(SUITES / suite), "-c", str(SUITES / "pytest.ini"), f"--rootdir={SUITES}", "--import-mode=importlib",
            "-p", "qkcheck.cases.plugin", "-p", "no:cacheprovider", "-q", "--qkcheck-device", args.device,
            "--qkcheck-failures-dir", str(Path(args.failures_dir).resolve()), "--qkcheck-isolate", args.isolate,
            "--qkcheck-case-timeout", args.case_timeout]
    if suite != "test_fuzz.py":  # the gate draws nothing: hypothesis' pytest plugin would import it (~1 s)
        argv += ["-p", "no:hypothesispytest"]
    for spec in args.kernels or ["bundled"]:
        argv += ["--qkcheck-kernels", _absolute_if_file(spec)]
    for op in args.op or []:
        argv += ["--qkcheck-op", op]
    for opt in ("report", "results", "shard", "budget", "fuzz_seed", "fuzz_siblings", "fuzz_streams", "shrink_budget"):
        value = getattr(args, opt, None)
        if value:
            if opt in ("report", "results"):
                value = Path(value).resolve()
            argv += [f"--qkcheck-{opt.replace('_', '-')}", str(value)]
    workers = auto_workers(args.device, args.isolate) if args.workers == "auto" else args.workers
    if workers:
        # load, not loadgroup: under pytest 9 loadgroup groups nothing (pytest-xdist can no longer
        # suffix node ids with the group), and its scheduler, when a worker dies after the queue
        # has drained, re-queues the dead worker's cases where no worker takes them: the run hung.
        # load hands them to the replacement worker; the case that was running is recorded as
        # crashed (plugin.pytest_handlecrashitem)
        argv += ["-n", str(workers), "--dist", "load"]
    argv += list(args.pytest_args)
    code = int(pytest.main(argv))
    if code == 0:
        return EXIT_PASS
    if code == 1:
        return EXIT_FAIL
    if code == 5:
        print("qkcheck: no cases matched the selected kernels/ops/shard", file=sys.stderr)
    return EXIT_USAGE


def _absolute_if_file(spec: str) -> str:
    """A kernel spec naming a file, made absolute (pytest runs with the suites' folder as rootdir)."""
    path_part = spec.split("::")[0]
    return str(Path(path_part).resolve()) + spec[len(path_part):] if path_part.endswith(".py") else spec


def _replay(args) -> int:
    from qkcheck.cases.case import Case, CaseError
    from qkcheck.kernels import device as _device
    from qkcheck.kernels.adapters import AdapterError

    try:
        dev = _device.activate(args.device)
        case = Case.load(args.case)
        from qkcheck.cases.registry import validate_adapter
        from qkcheck.kernels.catalog import resolve

        specs = args.kernels or ["bundled"]
        adapters = [a for s in specs for a in resolve(s)]
        for a in adapters:
            validate_adapter(a)
    except (CaseError, AdapterError, ValueError) as exc:
        print(f"qkcheck: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from qkcheck.cases import isolation
    from qkcheck.cases.plugin import parse_duration

    adapters = [a for a in adapters if a.op == case.op]
    if not adapters:
        print(f"qkcheck: error: none of --kernels {specs} implements op {case.op!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        timeout = parse_duration(args.case_timeout, "--case-timeout") or None
    except ValueError as exc:
        print(f"qkcheck: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    runner = isolation.IsolatedRunner(specs, dev, timeout=timeout) if args.isolate == "on" else None
    worst = EXIT_PASS
    for a in adapters:
        result = (runner.run(case, a) if runner is not None
                  else isolation.run_in_process(case, a, dev, timeout=timeout))
        print(result.summary())
        if result.status == "skip":
            print(f"  skipped: {result.skip_reason}")
        if result.status in ("fail", "error"):
            worst = EXIT_FAIL
    if runner is not None:
        runner.close()
    return worst


def _report(args) -> int:
    """Render results files as one page. Exit 0 when they hold no failure, 1 when they do (the
    report is written either way), 2 for unreadable input."""
    from qkcheck.reports.html import render_report
    from qkcheck.reports.store import load_results

    paths = [Path(p) for p in args.results]
    seen: dict[Path, str] = {}
    for p in paths:
        if p.resolve() in seen:
            print(f"qkcheck: error: {p} is given twice (as {seen[p.resolve()]} too); each results file once, "
                  "or its results would count twice", file=sys.stderr)
            return EXIT_USAGE
        seen[p.resolve()] = str(p)
    if Path(args.output).resolve() in seen:
        print(f"qkcheck: error: -o {args.output} is one of the results files; the report would overwrite it",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        frame, _ = load_results(paths)
        out = render_report(paths, Path(args.output))
    except (ValueError, OSError) as exc:
        print(f"qkcheck: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = int(frame["status"].isin(["fail", "error"]).sum()) if len(frame) else 0
    print(f"report written to {out}" + (f"; {failed} failing result(s)" if failed else ""))
    return EXIT_FAIL if failed else EXIT_PASS


def _engine_lines() -> list[str]:
    """One line per engine: its adapters and that they can run here, or why none can."""
    import importlib

    from qkcheck.kernels.engines import ENGINES

    lines = []
    for name, module in ENGINES.items():
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # an engine module that breaks must not take the listing down
            lines.append(f"{name}: cannot run here (its adapter module failed: {type(exc).__name__}: {exc})")
            continue
        if mod.UNAVAILABLE:
            lines.append(f"{name}: cannot run here ({mod.UNAVAILABLE})")
            continue
        note = mod.version_note() if hasattr(mod, "version_note") else ""
        lines.append(f"{name}: can run here, {len(mod.ADAPTERS)} adapters" + (f" ({note})" if note else ""))
        lines.extend(f"  {a.name}  ({a.op})" for a in mod.ADAPTERS)
    return lines


def _list(args) -> int:
    from qkcheck.cases.registry import OP_SPECS
    from qkcheck.kernels import device as _device

    try:
        dev = _device.activate(args.device)
    except ValueError as exc:
        print(f"qkcheck: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from qkcheck.kernels import probes
    from qkcheck.kernels.catalog import available

    print("ops:")
    for op, spec in OP_SPECS.items():
        print(f"  {op}: shape {list(spec.shape_keys)}; " + "; ".join(f"{k} in {list(v)}" for k, v in spec.params.items()))
    print("kernels:")
    for name, a in available().items():
        print(f"  {name}  ({a.op}) {a.description}")
    print("engines (--kernels NAME; adapters for the kernels each engine ships, loaded from its installed package):")
    for line in _engine_lines():
        print(f"  {line}")
    print(f"device: {dev} (platform {_device.platform_name(dev)}, native fp8 {_device.native_fp8_format(dev)})")
    print("interpreter probes:")
    for name, r in probes.probe_results().items():
        print(f"  {name}: raw {'DEFECTIVE' if r.defective else 'ok'} ({r.detail}); under qkcheck {'DEFECTIVE' if r.corrected_defective else 'ok'} ({r.corrected_detail})")
    return EXIT_PASS


def main(argv=None) -> int:
    parser = _Parser(prog="qkcheck", description="Correctness oracle and regression harness for quantized GPU kernels")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _run_options(sub.add_parser("gate", help="regression corpus + deterministic grid over the selected kernels"), budget=False)
    _run_options(sub.add_parser("fuzz", help="hypothesis fuzzing within a time budget"), budget=True)
    rp = sub.add_parser("replay", help="run one case file against kernels")
    rp.add_argument("case")
    rp.add_argument("--kernels", action="append", metavar="SPEC")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--isolate", choices=("on", "off"), default="off",
                    help="run the case in a child process, so a crash or hang is reported instead of ending qkcheck")
    rp.add_argument("--case-timeout", default="0", help="time limit for the case (e.g. 60s; default 0 = none)")
    rep = sub.add_parser("report", help="render results (JSON lines, several files merge) as HTML")
    rep.add_argument("results", nargs="+")
    rep.add_argument("-o", "--output", required=True)
    lp = sub.add_parser("list", help="ops, kernels (bundled and zoo:<name>), engines, device, interpreter probes")
    lp.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.command == "gate":
        return _pytest("test_gate.py", args)
    if args.command == "fuzz":
        return _pytest("test_fuzz.py", args)
    return {"replay": _replay, "report": _report, "list": _list}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
