"""pytest plugin: qkcheck's options (one group, all ``--qkcheck-*``), kernel selection, the gate and
fuzz parametrization, sharding, results collection across xdist workers and CI shards, the report.

Nothing loads it unless asked: ``qkcheck gate|fuzz`` pass ``-p qkcheck.cases.plugin``; a project's
own suite names it (``pytest_plugins = ["qkcheck.cases.plugin"]`` in a conftest, or
``pytest -p qkcheck.cases.plugin``). A plain pytest run in an environment with qkcheck installed
gets no option, fixture, marker or device selection from it.

In a suite that loads it, a test function asking for ``adapter, gate_case`` is parametrized over
the gate's cases (corpus + grid) of the selected adapters, and one asking for
``fuzz_adapter, fuzz_stream`` over fuzz streams; the adapters come from a
``@pytest.mark.qkcheck(kernels=[...])`` marker on the test (or its module), else from
``--qkcheck-kernels`` (default ``bundled``). ``check_gate_case`` / ``check_fuzz_stream`` run them.

Options are parsed and checked at configure time; bad values raise ``pytest.UsageError`` (exit
code 4 from pytest; the CLI maps it to 2).
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest


SUITES = Path(__file__).resolve().parent / "suites"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qkcheck", "qkcheck: quantized-kernel correctness harness")
    group.addoption("--qkcheck-device", default="auto", metavar="auto|cpu|cuda|xpu",
                    help="where kernels run: auto = cuda if available, then xpu, else cpu (Triton interpreter)")
    group.addoption("--qkcheck-kernels", action="append", default=None, metavar="SPEC",
                    help="kernels to check (repeatable): bundled (default), zoo, zoo:<name>, bundled:<name>, "
                         "a .py file defining ADAPTERS, or a module path")
    group.addoption("--qkcheck-op", action="append", default=None, metavar="OP", help="only cases of this op (repeatable)")
    group.addoption("--qkcheck-budget", default="60s", metavar="DURATION", help="fuzz time budget per kernel, e.g. 30s, 5m")
    group.addoption("--qkcheck-report", default=None, metavar="PATH", help="write the HTML report here at the end")
    group.addoption("--qkcheck-results", default=None, metavar="PATH", help="write results as JSON lines here")
    group.addoption("--qkcheck-shard", default=None, metavar="i/n", help="run only shard i of n (1-based) of the case list")
    group.addoption("--qkcheck-fuzz-seed", type=int, default=0, metavar="N",
                    help="first hypothesis seed of the fuzzer (runs are reproducible per seed)")
    group.addoption("--qkcheck-fuzz-siblings", type=int, default=None, metavar="N",
                    help="cases run per drawn fuzz case: the case and N-1 data siblings (other seeds and "
                         f"regimes; default {GPU_SIBLINGS} on a GPU, 1 on the CPU interpreter)")
    group.addoption("--qkcheck-shrink-budget", default=None, metavar="DURATION",
                    help="time the fuzzer spends shrinking a failure before it reports the smallest failing "
                         f"case found so far (default {GPU_SHRINK_BUDGET_S:g}s on a GPU, where each shrink "
                         "candidate may compile a new kernel variant; none on the CPU; 0 = none)")
    group.addoption("--qkcheck-fuzz-streams", type=int, default=None, metavar="N",
                    help="independent fuzz streams per kernel (default: one per xdist worker, else 1)")
    group.addoption("--qkcheck-isolate", default="auto", choices=("auto", "on", "off"),
                    help="run cases in a child process so a crash or hang fails only that case: "
                         "auto = on for cuda/xpu, off for cpu")
    group.addoption("--qkcheck-case-timeout", default="300s", metavar="DURATION",
                    help="per-case time limit; a case past it fails as a hang (0 = none)")
    group.addoption("--qkcheck-failures-dir", default="out/failures", metavar="DIR",
                    help="where failing and shrunk cases are saved as replayable JSON files")


def parse_duration(text: str, option: str = "--budget") -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", str(text))
    if not m:
        raise ValueError(f"{option} {text!r} is not a duration (allowed: a number with s, m or h, e.g. 30s, 5m)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard {text!r} must be i/n with 1 <= i <= n (e.g. 2/4)")
    return int(m.group(1)), int(m.group(2))


def pytest_configure(config: pytest.Config) -> None:
    from qkcheck.kernels import device as _device

    config.addinivalue_line("markers", "qkcheck(kernels=[...]): the kernel specs (or adapters) a qkcheck "
                                       "gate/fuzz test runs, instead of --qkcheck-kernels")
    config.addinivalue_line("markers", "unused: a placeholder parameter set with nothing to check "
                                       "(deselected at collection)")

    try:
        config.qkcheck_kernel_specs = config.getoption("--qkcheck-kernels") or ["bundled"]
        config.qkcheck_case_timeout = parse_duration(config.getoption("--qkcheck-case-timeout"), "--case-timeout") or None
        _start_runner_early(config)
        if _xdist_controller(config):
            # the workers resolve the device and run every case; this process starts them and
            # merges their results (their run information too). It checks the device too, for a
            # clear error, but in a thread joined only once the workers are starting: importing
            # torch and probing the device (~2 s on a GPU host) then overlaps their start-up
            _device.check_name(config.getoption("--qkcheck-device"))
            share_cpu_threads(int(config.option.numprocesses))
            config.qkcheck_device = None
            config._qkcheck_device_check = _DeviceCheck(
                config.getoption("--qkcheck-device"),
                [s for s in config.qkcheck_kernel_specs if _users(s)] if _runs_gate_suites(config, workers=True) else [])
        else:
            config.qkcheck_device = _device.activate(config.getoption("--qkcheck-device"))
        runner = getattr(config, "_qkcheck_isolated", None)
        if runner is not None:  # started early with the device as requested: record the resolved one
            runner.device = config.qkcheck_device
        config.qkcheck_gpu_index = _device.assign_worker_gpu(config.qkcheck_device, _worker_id(config))
        config.qkcheck_budget = parse_duration(config.getoption("--qkcheck-budget"))
        config.qkcheck_shard = parse_shard(config.getoption("--qkcheck-shard"))
        shrink = config.getoption("--qkcheck-shrink-budget")
        config.qkcheck_shrink_budget = (parse_duration(shrink, "--shrink-budget") if shrink is not None
                                        else (None if config.qkcheck_device == "cpu" else GPU_SHRINK_BUDGET_S)) or None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    for option in ("--fuzz-siblings", "--fuzz-streams"):
        value = config.getoption("--qkcheck" + option[1:])
        if value is not None and value < 1:
            raise pytest.UsageError(f"{option} {value} must be >= 1 (e.g. {option} 4)")
    config.qkcheck_fuzz_stats = []
    config.qkcheck_ops = config.getoption("--qkcheck-op")
    config.qkcheck_results = []
    config._qkcheck_pending = []
    config.qkcheck_started = time.time()
    config.qkcheck_run_id = getattr(config, "workerinput", {}).get("qkcheck_run_id") or uuid.uuid4().hex[:12]
    _CONFIG["config"] = config
    if _worker_id(config) is None:
        _finish_on_sigterm(config)
    if _worker_id(config) is None and _runs_gate_suites(config):
        # the kernels of a qkcheck gate/fuzz run: a bad spec or adapter file is one usage error
        # now, not a collection error with a traceback
        selected_adapters(config)


def _finish_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled, a timeout) ends the run as Ctrl-C does: pytest stops, and the
    results so far are written, marked interrupted.

    Where the signal lands matters. Raised as KeyboardInterrupt at an arbitrary point of pytest's
    own machinery, the interrupt can make pytest's report of it fail (Python 3.11 leaves some
    frames without a line number: a parenthesized ``with``, ``ast.copy_location`` while pytest
    rewrites a module's asserts; the terminal reporter's traceback formatting raises TypeError on
    them): the run then ended as an internal error, not marked interrupted. So a signal that comes
    while the run is still starting (configuring, or xdist bringing up its workers, before pytest
    would write the results) is kept and raised at collection, a known point. Later, in a
    single-process run the handler stops the session between cases (``session.shouldstop``, which
    pytest reports as an interruption) unless the process is waiting on a case (the isolated case
    runner, or a case running in process), where it interrupts at once. xdist runs keep the
    immediate interrupt (the controller waits on its workers' queue)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        config._qkcheck_sigterm = True
        session = config.__dict__.get("_qkcheck_session")
        if session is None:  # still starting (configuring, xdist bringing up its workers): stopped at collection
            config._qkcheck_sigterm_pending = signum
            return
        if config.pluginmanager.has_plugin("dsession") or _in_a_case(frame):
            raise KeyboardInterrupt(f"signal {signum}")
        session.shouldstop = f"interrupted by signal {signum}"

    config._qkcheck_previous_sigterm = previous = signal.signal(signal.SIGTERM, interrupt)
    if getattr(previous, "received", None):  # the qkcheck CLI's handler kept one while pytest started
        config._qkcheck_sigterm = True
        config._qkcheck_sigterm_pending = previous.received


def _in_a_case(frame) -> bool:
    """Whether ``frame`` (where a signal landed) is inside a case: the isolated runner waiting on its
    child, or a case run in this process."""
    here = os.path.dirname(os.path.abspath(__file__))
    waits = {(os.path.join(here, "isolation.py"), "run"), (os.path.join(here, "runner.py"), "run_case")}
    while frame is not None:
        if (os.path.abspath(frame.f_code.co_filename), frame.f_code.co_name) in waits:
            return True
        frame = frame.f_back
    return False


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker's results carry this run's id."""
    node.workerinput["qkcheck_run_id"] = node.config.qkcheck_run_id


class _DeviceCheck(threading.Thread):
    """Resolves the requested device in the background (``error``: why it is unavailable), then
    loads the foreign kernel ``specs`` (a user's files and modules, engines): a file that fails to
    import, exits at import or defines wrong ADAPTERS is one usage error here, not a collection
    error with a traceback on every worker."""

    def __init__(self, requested: str, specs=()):
        super().__init__(daemon=True, name="qkcheck-device-check")
        self.requested, self.specs, self.error = requested, list(specs), None
        self.start()

    def run(self) -> None:
        from qkcheck.kernels import device as _device

        try:
            _device.resolve(self.requested)
        except ValueError as exc:
            self.error = str(exc)
            return
        except Exception as exc:  # e.g. torch failing to import: the same error reaches every worker
            self.error = f"{type(exc).__name__}: {exc}"
            return
        if not self.specs:
            return
        from qkcheck.cases.registry import validate_adapter
        from qkcheck.kernels.adapters import AdapterError, KernelsUnavailable
        from qkcheck.kernels.catalog import resolve

        try:
            for spec in self.specs:
                try:
                    for a in resolve(spec):
                        validate_adapter(a)
                except KernelsUnavailable:  # the workers report it as skipped, with the reason
                    pass
        except AdapterError as exc:
            self.error = str(exc)
        except Exception:  # noqa: BLE001 - only a head start: the workers meet and report it
            pass


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    """The session has started (pytest calls ``pytest_sessionfinish`` from now on, which writes the
    results): a SIGTERM that came while the run was starting stops it here. On an xdist controller
    (its workers are starting by now): the device check's verdict."""
    session.config._qkcheck_session = session
    pending = session.config.__dict__.pop("_qkcheck_sigterm_pending", None)
    if pending is not None:
        raise KeyboardInterrupt(f"signal {pending}")
    check = getattr(session.config, "_qkcheck_device_check", None)
    if check is not None:
        check.join()
        if check.error:
            raise pytest.UsageError(check.error)


def _xdist_controller(config: pytest.Config) -> bool:
    """This process hands the tests to pytest-xdist workers (it runs none itself)."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def share_cpu_threads(workers: int, environ=os.environ) -> int | None:
    """Give each of ``workers`` xdist workers (and the case-runner child each may start) an equal
    share of this machine's cores for the thread pools of torch and NumPy's BLAS: sets
    ``OMP_NUM_THREADS`` to cores // workers (at least 1) in ``environ``, which the workers inherit.
    Left alone where any of THREAD_VARIABLES is set already (the user's choice wins). Without it
    every worker sizes its pools for the whole machine, and N workers' spinning pool threads
    contend for the same cores. Returns the threads per worker set, or None where left alone."""
    if workers < 2 or any(v in environ for v in THREAD_VARIABLES):
        return None
    threads = max(1, usable_cores() // workers)
    environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def _runs_gate_suites(config: pytest.Config, workers: bool = False) -> bool:
    """This process runs the gate or fuzz suites itself (not an xdist controller, whose workers
    run them, and not a run of other tests); ``workers``: or its xdist workers run them."""
    if _xdist_controller(config) and not workers:
        return False
    args = [Path(str(a).split("::")[0]).resolve() for a in config.args]
    return bool(args) and all(a == SUITES or SUITES in a.parents for a in args)


def _start_runner_early(config: pytest.Config) -> None:
    """Start the case-runner child first thing, before this process imports torch, when the
    options already say cases will run isolated (--isolate on, or auto with --device cuda/xpu):
    the child's imports, device set-up and kernel registrations then overlap this process's own
    start-up and collection instead of following them. Other runs start it at collection end."""
    mode, requested = config.getoption("--qkcheck-isolate"), config.getoption("--qkcheck-device")
    if (mode == "on" or (mode == "auto" and requested in ("cuda", "xpu"))) and _runs_gate_suites(config):
        _isolated_runner(config, requested).prestart()


class _Selection(NamedTuple):
    adapters: list  # validated, --op applied
    missing: list  # (spec, reason): kernels not installed here, reported as skipped, never dropped


def selected_adapters(config: pytest.Config, specs=None):
    """The adapters named by ``specs`` (default: --qkcheck-kernels), validated (a UsageError names
    the bad spec). A spec is a string (see ``qkcheck.kernels.adapters.resolve``) or an adapter."""
    return _selection(config, specs).adapters


def _selection(config: pytest.Config, specs=None) -> _Selection:
    """``specs``' adapters and the specs unavailable here, resolved once per run (cached)."""
    specs = tuple(config.qkcheck_kernel_specs if specs is None else specs)
    cache = config.__dict__.setdefault("_qkcheck_adapters", {})
    if specs not in cache:
        from qkcheck.cases.registry import validate_adapter
        from qkcheck.kernels.adapters import AdapterError, KernelAdapter, KernelsUnavailable
        from qkcheck.kernels.catalog import resolve

        adapters, missing = [], []
        try:
            for spec in specs:
                try:
                    found = [spec] if isinstance(spec, KernelAdapter) else resolve(spec)
                except KernelsUnavailable as exc:
                    missing.append((spec, exc.reason))
                    continue
                for a in found:
                    validate_adapter(a)
                    adapters.append(a)
                    config.__dict__.setdefault("_qkcheck_spec_of", {})[a.name] = replay_spec(spec, a)
        except AdapterError as exc:
            raise pytest.UsageError(str(exc)) from None
        names = [a.name for a in adapters]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise pytest.UsageError(f"kernel name {twice[0]!r} is given by more than one selected adapter (specs "
                                    f"{[str(s) for s in specs]}); names identify kernels in results and replays: "
                                    "rename one (KernelAdapter name=...) or select one with FILE::NAME")
        ops = config.qkcheck_ops
        if ops:
            from qkcheck.cases.registry import OP_SPECS

            unknown = sorted(set(ops) - set(OP_SPECS))
            if unknown:
                raise pytest.UsageError(f"--op {unknown[0]}: unknown op (allowed: {', '.join(sorted(OP_SPECS))})")
            adapters = [a for a in adapters if a.op in ops]
        cache[specs] = _Selection(adapters, missing)
    return cache[specs]


def _specs_of(metafunc) -> list | None:
    """The kernel specs of a ``qkcheck(kernels=...)`` marker on the test or its module, if any."""
    marker = metafunc.definition.get_closest_marker("qkcheck")
    if marker is None:
        return None
    kernels = marker.kwargs.get("kernels", marker.args[0] if marker.args else None)
    if kernels is None or isinstance(kernels, (str, bytes)) or not hasattr(kernels, "__iter__"):
        kernels = [kernels]
    if not kernels or any(k is None for k in kernels):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.qkcheck(kernels=...) needs a "
                                f"list of kernel specs or adapters (got {marker.kwargs or marker.args!r})")
    return list(kernels)


def gate_params(config: pytest.Config, specs=None) -> list:
    """The gate's cases (``qkcheck.cases.gate``) of the selected adapters as pytest params."""
    from qkcheck.cases.gate import compile_group, gate_cases

    return [pytest.param(adapter, case, id=f"{adapter.name}::{case.id}",
                         marks=pytest.mark.xdist_group(compile_group(adapter, case)))
            for adapter in selected_adapters(config, specs) for case in gate_cases(adapter, config.qkcheck_shard)]


def pytest_generate_tests(metafunc) -> None:
    names, config = metafunc.fixturenames, metafunc.config
    placeholder = [pytest.param(None, None, marks=pytest.mark.unused)]
    if "unavailable_spec" in names:
        items = _selection(config, _specs_of(metafunc)).missing
        metafunc.parametrize("unavailable_spec,reason", items or placeholder,
                             ids=[str(s) for s, _ in items] or ["none"])
    elif "gate_case" in names:
        metafunc.parametrize("adapter,gate_case", gate_params(config, _specs_of(metafunc)) or placeholder)
    elif "fuzz_adapter" in names:
        streams = fuzz_streams(config)
        params = [pytest.param(a, s, id=a.name if streams == 1 else f"{a.name}-stream{s}")
                  for a in selected_adapters(config, _specs_of(metafunc)) for s in range(streams)]
        metafunc.parametrize("fuzz_adapter,fuzz_stream", params or placeholder)


@pytest.fixture(scope="session")
def qkcheck_device(pytestconfig: pytest.Config) -> str:
    """The concrete device kernels run on: 'cpu' (interpreter), 'cuda' or 'xpu'."""
    return pytestconfig.qkcheck_device


def check_gate_case(config: pytest.Config, adapter, case) -> None:
    """Run one gate case, record it, and turn its status into the test's outcome."""
    result = execute(config, case, adapter)
    record(config, result)
    if result.status == "skip":
        pytest.skip(result.skip_reason)
    if result.status in ("fail", "error"):
        pytest.fail(result.summary(), pytrace=False)


def check_fuzz_stream(config: pytest.Config, request, adapter, stream: int) -> None:
    """Run one fuzz stream of ``adapter`` (``qkcheck.cases.fuzz``) within the options' budgets; a
    failure is saved when found, shrunk, diagnosed, recorded and fails the test."""
    from qkcheck.cases.fuzz import fuzz_adapter

    found_file: list[Path] = []

    def on_found(case, seconds: float) -> None:
        found_file.append(save_found(config, case, adapter.name, seconds))

    def run(case, a, *, diagnose_failures=True):
        return execute(config, case, a, diagnose_failures=diagnose_failures)

    out = fuzz_adapter(adapter, run, budget=config.qkcheck_budget, stream=stream, streams=fuzz_streams(config),
                       siblings_per_draw=fuzz_siblings(config), shrink_budget=config.qkcheck_shrink_budget,
                       first_seed=config.getoption("--qkcheck-fuzz-seed"), on_found=on_found)
    request.node.user_properties.append(("qkcheck_fuzz", out.stats()))
    if out.failure is None:
        print(f"fuzz {adapter.name}: {out.cases} cases in {config.qkcheck_budget:.0f}s budget, no failure")
        return
    result = execute(config, out.failure, adapter)  # again, diagnosed
    if result.status not in ("fail", "error"):
        # the failure did not reproduce: flaky (nondeterministic kernel, memory it read by accident,
        # a race). Recorded as a failure with both runs; the found case stays saved for replay.
        from qkcheck.cases.runner import Check

        second = result.summary()
        result.status = "fail"
        result.checks.append(Check("flaky", "fail", f"failed when the fuzzer ran it, passed when run again; "
                                                     f"first run: {out.failure_summary}"))
        record(config, result)
        pytest.fail(f"fuzz found a FLAKY failure after {out.found_after_cases} cases, {out.found_at:.1f} s into "
                    f"the fuzz: it failed, then passed when run again\n  first run: "
                    f"{out.failure_summary}\n  second run: {second}\n  saved as found: "
                    + ", ".join(str(p) for p in found_file), pytrace=False)
    record(config, result)
    for path in found_file:  # the shrunk case is saved now: it replaces the case saved as found
        path.unlink(missing_ok=True)
    pytest.fail(f"fuzz found a failure after {out.found_after_cases} cases, {out.found_at:.1f} s into the fuzz "
                f"(shrunk in {out.cases - out.found_after_cases} more cases by {out.seconds:.1f} s):\n"
                f"{result.summary()}", pytrace=False)


GPU_SIBLINGS = 64
# shrinking on a GPU: a candidate of a new shape or config compiles a kernel variant (0.1-0.5 s each),
# so shrinking is bounded there; the failing case is saved either way, shrunk as far as time allowed
GPU_SHRINK_BUDGET_S = 2.0


def fuzz_siblings(config: pytest.Config) -> int:
    """Cases per drawn fuzz case: --fuzz-siblings, else GPU_SIBLINGS on a GPU (one draw and one
    compile of its kernel variants serve that many cases) and 1 under the CPU interpreter (its kernel time dominates; more distinct draws
    explore more within a budget)."""
    given = config.getoption("--qkcheck-fuzz-siblings")
    if given:
        return given
    return 1 if config.qkcheck_device == "cpu" else GPU_SIBLINGS


def fuzz_streams(config: pytest.Config) -> int:
    """Fuzz streams per kernel: --fuzz-streams, else the xdist worker count (identical on every
    worker, so every worker collects the same items), else 1."""
    given = config.getoption("--qkcheck-fuzz-streams")
    if given:
        return given
    return int(getattr(config, "workerinput", {}).get("workercount", 1))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's recorded results ride on its report (``user_properties``): on an xdist worker the
    report reaches the controller as soon as the test ends, so a worker that dies later, or a run
    interrupted later, loses none of the results already reported."""
    outcome = yield
    report = outcome.get_result()
    pending = item.config.__dict__.get("_qkcheck_pending")
    if pending:  # on this phase's report only (the item's own user_properties go on every phase's)
        report.user_properties = [*report.user_properties, *(("qkcheck_result", r) for r in pending)]
        pending.clear()
    if call.when == "setup" and _worker_id(item.config) is not None:
        started = _case_started(item)
        if started is not None:  # the controller records the case as crashed if this worker dies in it
            report.user_properties = [*report.user_properties, ("qkcheck_started", started)]


def _case_started(item) -> dict | None:
    """What the controller needs to record a gate case whose worker died while running it."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    adapter, case = params.get("adapter"), params.get("gate_case")
    if adapter is None or case is None:
        return None
    spec = item.config.__dict__.get("_qkcheck_spec_of", {}).get(adapter.name, adapter.name)
    return {"case": case.to_dict(), "case_id": case.id, "kernel": adapter.name, "op": adapter.op, "spec": spec}


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched) -> None:
    """xdist controller: a worker died while running ``crashitem`` (a segfault in process, a
    SIGKILL, the OOM killer). pytest-xdist reports the test failed and gives the worker's other
    tests to a fresh worker; the case it was running is recorded here as crashed, so it is in the
    results file and the report, with its case file saved, never silently missing."""
    config = _CONFIG.get("config")
    started = config.__dict__.get("_qkcheck_started", {}).pop(crashitem, None) if config is not None else None
    if started is None:  # not a gate case, or the worker died before its setup was reported
        return
    from qkcheck.cases.runner import FAIL, Check, Result

    worker = getattr(getattr(report, "node", None), "gateway", None)
    res = Result(case=started["case"], case_id=started["case_id"], kernel=started["kernel"], op=started["op"],
                 status=FAIL, device=config.getoption("--qkcheck-device"))
    res.checks.append(Check("crashed", FAIL, f"the xdist worker {getattr(worker, 'id', '?')} running this case died "
                                             "(killed by a signal, or the kernel crashed it); the run went on"))
    config.__dict__.setdefault("_qkcheck_spec_of", {})[res.kernel] = started["spec"]
    record(config, res)
    report.user_properties = [*report.user_properties,
                              *(("qkcheck_result", r) for r in config._qkcheck_pending)]
    config._qkcheck_pending.clear()


def pytest_runtest_logreport(report) -> None:
    """In the process that writes the results (single process, or the xdist controller): keep the
    results and fuzz counts the report carries."""
    config = _CONFIG.get("config")
    if config is None or _worker_id(config) is not None:
        return
    started = config.__dict__.setdefault("_qkcheck_started", {})
    for name, value in getattr(report, "user_properties", ()):
        if name == "qkcheck_result":
            config.qkcheck_results.append(value)
        elif name == "qkcheck_started" and report.when == "setup":
            started[report.nodeid] = value
        elif name == "qkcheck_fuzz" and report.when == "call":
            config.qkcheck_fuzz_stats.append(value)
    if report.when == "teardown":
        started.pop(report.nodeid, None)


_CONFIG: dict = {}  # this process's pytest config, for hooks that are not given it


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    stats_seen = getattr(config, "qkcheck_fuzz_stats", [])
    if not stats_seen or _worker_id(config) is not None:
        return
    by_kernel: dict[str, list[dict]] = {}
    for s in stats_seen:
        by_kernel.setdefault(s["kernel"], []).append(s)
    for kernel, stats in by_kernel.items():
        cases = sum(s["cases"] for s in stats)
        draws = sum(s["draws"] for s in stats)
        repeats = sum(s.get("repeats", 0) for s in stats)
        skipped = sum(s.get("skipped", 0) for s in stats)
        untried = sum(s.get("untried", 0) for s in stats)
        wall = max(s["seconds"] for s in stats)
        failed = sum(s["outcome"] == "fail" for s in stats)
        # after each stream's first case: its start-up (case-runner process, imports, first compile) left out
        steady = sum((s["cases"] - 1) / s["after_first"] for s in stats if s["cases"] > 1 and s["after_first"] > 0)
        terminalreporter.write_line(
            f"qkcheck fuzz {kernel}: {cases} cases ({draws} drawn, {repeats} repeated draws skipped, "
            f"{len(stats)} stream(s)) in {wall:.1f} s = "
            f"{cases / max(wall, 1e-9):.0f} cases/s ({steady:.0f} cases/s after start-up)"
            + (f"; {skipped} case(s) skipped, not counted (outside what the kernel or device takes)" if skipped else "")
            + (f"; {failed} stream(s) found a failure" if failed else "")
            + (f"; {untried} shrink candidate(s) of kernel variants not yet compiled left untried "
               "(the shrink budget could not pay for their compile)" if untried else ""))


SHIPPED_SPECS = ("bundled", "zoo")


def _foreign(spec) -> bool:
    """A kernel spec naming code qkcheck did not write: a user's file or module, or an engine."""
    return not (spec in SHIPPED_SPECS or spec.startswith(tuple(f"{s}:" for s in SHIPPED_SPECS)))


def _users(spec) -> bool:
    """A kernel spec naming a user's file or module (not qkcheck's kernels, not an engine, whose
    package may need the device set up before it imports)."""
    from qkcheck.kernels.engines import ENGINES

    return isinstance(spec, str) and _foreign(spec) and spec.split("::")[0] not in ENGINES


def isolated(config: pytest.Config) -> bool:
    """Whether cases run in the case-runner child: ``--qkcheck-isolate on``, or auto on a GPU, or
    auto on the CPU when any selected kernel is foreign (a user's file or module, an engine): a
    crash, abort or hang there then fails that case, never the run. Adapters given as objects (a
    marker's) cannot travel to the child and run in process."""
    mode = config.getoption("--qkcheck-isolate")
    specs = config.qkcheck_kernel_specs
    if mode == "off" or not all(isinstance(s, str) for s in specs):
        return False
    return mode == "on" or config.qkcheck_device != "cpu" or any(_foreign(s) for s in specs)


def _isolated_runner(config: pytest.Config, device: str | None = None):
    """This process's case runner, created on first use (``device``: as requested, before it is
    resolved; default the resolved one)."""
    from qkcheck.cases import isolation

    runner = getattr(config, "_qkcheck_isolated", None)
    if runner is None:
        runner = config._qkcheck_isolated = isolation.IsolatedRunner(
            config.qkcheck_kernel_specs, device or config.qkcheck_device, timeout=config.qkcheck_case_timeout,
            worker_id=_worker_id(config))
    return runner


def pytest_collection_finish(session: pytest.Session) -> None:
    """With isolation on and cases to run, start the case-runner child now: its imports and device
    set-up overlap the rest of this process's start-up."""
    config = session.config
    if session.items and hasattr(config, "qkcheck_device") and isolated(config) and any(
            "gate_case" in getattr(i, "fixturenames", ()) or "fuzz_adapter" in getattr(i, "fixturenames", ())
            for i in session.items):
        _isolated_runner(config).prestart()


def execute(config: pytest.Config, case, adapter, *, diagnose_failures: bool = True):
    """Run one case the way the options say: in process or in the isolated case runner, with
    the per-case time limit. Never raises for a kernel's failure."""
    from qkcheck.cases import isolation

    device, timeout = config.qkcheck_device, config.qkcheck_case_timeout
    if not isolated(config):
        return isolation.run_in_process(case, adapter, device, timeout=timeout, diagnose_failures=diagnose_failures,
                                        on_stuck=lambda result: _stuck(config, result))
    return _isolated_runner(config).run(case, adapter, diagnose_failures=diagnose_failures)


def pytest_collection_modifyitems(config: pytest.Config, items) -> None:
    """Drop placeholder items (``unused`` marker): a parametrized check with nothing to check."""
    keep = [i for i in items if i.get_closest_marker("unused") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("unused") is not None])
        items[:] = keep


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.__dict__.pop("_qkcheck_previous_sigterm", None)
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)
    if _CONFIG.get("config") is config:
        _CONFIG.pop("config")
    runner = getattr(config, "_qkcheck_isolated", None)
    if runner is not None:
        runner.close()


def record(config: pytest.Config, result) -> None:
    """Keep a result for the results file; save failing cases as replayable files."""
    from qkcheck.cases.case import Case

    if result.status in ("fail", "error"):
        path = Case.from_dict(result.case).save(failure_path(config, result.case_id))
        result.replay = replay_command(path, config.__dict__.get("_qkcheck_spec_of", {}).get(result.kernel, result.kernel),
                                       config.qkcheck_device)
    config._qkcheck_pending.append({**result.to_dict(), "run_id": config.qkcheck_run_id})


def replay_command(case_path: Path, spec: str, device: str | None) -> str:
    """The shell command that replays a saved case on the kernel that failed it, quoted."""
    import shlex

    words = ["qkcheck", "replay", str(Path(case_path).resolve()), "--kernels", spec]
    if device:
        words += ["--device", device]
    return shlex.join(words)


def replay_spec(spec, adapter) -> str:
    """A ``--kernels`` spec that names exactly ``adapter`` as found through ``spec``: its own name
    for the bundled and zoo kernels, ``FILE::NAME`` / ``MODULE::NAME`` for a file's or module's."""
    if isinstance(spec, str) and (spec in ("bundled", "zoo") or spec.startswith(("bundled:", "zoo:"))):
        return adapter.name
    if isinstance(spec, str):
        base = spec.split("::")[0]
        if base.endswith(".py"):
            base = str(Path(base).resolve())
        return f"{base}::{adapter.name}"
    return adapter.name


def failure_path(config: pytest.Config, case_id: str, kind: str = "") -> Path:
    """Where a failing case with id ``case_id`` is saved (``--failures-dir``); ``kind`` "found":
    the fuzzer's unshrunk case, saved under its own name until the shrunk one replaces it."""
    return Path(config.getoption("--qkcheck-failures-dir")) / f"{case_id}{'.' + kind if kind else ''}.json"


def save_found(config: pytest.Config, case, kernel: str, seconds: float) -> Path:
    """Save a failing case the moment the fuzzer finds it, before shrinking, and say so on the
    terminal at once (a run killed while shrinking still leaves a replayable case; xdist workers
    have no terminal of their own, so there only the file). The caller removes the file when the
    shrunk case is saved."""
    path = case.save(failure_path(config, case.id, "found"))
    line = f"qkcheck fuzz: {kernel}: failure found {seconds:.1f} s into the fuzz, saved as found: {path}; shrinking"
    tr = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if _worker_id(config) is None and tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            tr.write_line(line)
    return path


def _worker_id(config) -> str | None:
    return getattr(config, "workerinput", {}).get("workerid")


def _device_info(config) -> dict:
    """What ran the cases: device, GPU index, platform, native FP8 variant, versions, probes."""
    from qkcheck.kernels import device as _device
    from qkcheck.kernels import probes

    dev = config.qkcheck_device
    info = {"device": dev, "gpu_index": getattr(config, "qkcheck_gpu_index", None),
            "platform": _device.platform_name(dev), "native_fp8": _device.native_fp8_format(dev)}
    try:
        import torch
        import triton

        info["versions"] = {"torch": str(torch.__version__), "triton": str(triton.__version__)}
        selections = config.__dict__.get("_qkcheck_adapters", {}).values()
        adapters = [a for selection in selections for a in selection.adapters]
        if adapters and not any(a.triton for a in adapters):
            # the probes concern Triton kernels only (runner.skip_reason): not run for a torch-only run
            info["probes"] = {}
        else:
            info["probes"] = {n: {"defective": r.defective, "detail": r.detail,
                                  "corrected_defective": r.corrected_defective,
                                  "corrected_detail": r.corrected_detail} for n, r in probes.probe_results().items()}
    except Exception as exc:  # info only; never lose results over it
        info["probe_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _run_info(config, worker_infos: list[dict]) -> dict:
    """The results file's run line. An xdist controller runs no case and has no device of its
    own: it takes its workers' (the first one's; a worker's GPU index is not the run's)."""
    run = {"started": config.qkcheck_started, "kernels": [str(s) for s in config.qkcheck_kernel_specs],
           "shard": config.getoption("--qkcheck-shard"), "run_id": config.qkcheck_run_id}
    if config.qkcheck_device is None and worker_infos:
        return {**worker_infos[0], "gpu_index": None, **run}
    if config.qkcheck_device is None:  # no worker reported (none ran): resolve it here
        from qkcheck.kernels import device as _device

        try:
            config.qkcheck_device = _device.activate(config.getoption("--qkcheck-device"))
        except ValueError as exc:
            return {"device": config.getoption("--qkcheck-device"), "probe_error": str(exc), **run}
    return {**_device_info(config), **run}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: keep a finished worker's device information (it ran the cases)."""
    info = getattr(node, "workeroutput", {}).get("qkcheck_device_info")
    if info:
        node.config.__dict__.setdefault("_qkcheck_worker_infos", []).append(info)


EXIT_STUCK = 75  # an xdist worker ended by the stuck-case watchdog


def _stuck(config: pytest.Config, result) -> None:
    """A case run in process is stuck in native code past its time limit (``isolation.run_in_process``
    calls this from its watchdog thread): the process is ended, the only way out. An xdist worker
    just exits: the controller records its case as crashed and a fresh worker takes the rest. A
    single-process run records the case, writes the results so far (marked interrupted) and
    exits 1."""
    line = (f"qkcheck: case {result.case_id} on {result.kernel} is stuck in native code past its "
            f"{config.qkcheck_case_timeout:g} s limit; ending the process")
    capture = config.pluginmanager.get_plugin("capturemanager")
    try:  # the test's output capture would swallow the line
        if capture is not None:
            capture.suspend_global_capture(in_=False)
    except Exception:  # noqa: BLE001 - the line is a courtesy; ending the process is what matters
        pass
    if _worker_id(config) is not None:
        print(line, file=sys.stderr, flush=True)
        os._exit(EXIT_STUCK)
    record(config, result)
    path = _write_results_file(config, list(config.qkcheck_results) + list(config._qkcheck_pending), interrupted=True)
    print(f"{line}; the results so far are in {path}" if path else line, file=sys.stderr, flush=True)
    os._exit(1)


def _write_results_file(config: pytest.Config, records: list, *, interrupted: bool) -> Path | None:
    """Write this run's results file (where --qkcheck-results or --qkcheck-report asks for one)."""
    results_opt, report = config.getoption("--qkcheck-results"), config.getoption("--qkcheck-report")
    if not results_opt and not report:
        return None
    from qkcheck.reports.store import write_results

    results_path = Path(results_opt or (Path(report).with_suffix(".jsonl")))
    info = _run_info(config, config.__dict__.get("_qkcheck_worker_infos", []))
    info["finished"] = time.time()
    if interrupted:
        info["interrupted"] = True
    write_results(results_path, records, info)
    return results_path


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    if not hasattr(config, "qkcheck_results"):
        return
    worker = _worker_id(config)
    if worker is not None:  # its results went to the controller with each report; its device info goes now
        config.workeroutput["qkcheck_device_info"] = _device_info(config)
        return
    records = list(config.qkcheck_results)
    interrupted = int(exitstatus) == int(pytest.ExitCode.INTERRUPTED) or bool(config.__dict__.get("_qkcheck_sigterm"))
    results_path = _write_results_file(config, records, interrupted=interrupted)
    if results_path is None:
        return
    report = config.getoption("--qkcheck-report")
    if report:
        from qkcheck.reports.html import render_report

        render_report([results_path], Path(report))
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr:
            tr.write_line(f"qkcheck: {len(records)} results -> {results_path}; report -> {report}")
