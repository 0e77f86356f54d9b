"""Per-case time limits and crash isolation: a kernel that hangs or takes its process (or the
device context) down is a recorded failure of *that* case, and the run goes on.

Two ways to run a case, chosen by the plugin's ``--isolate`` option:

- in process (``run_in_process``): the case runs in the test process; a time limit is enforced
  with a POSIX interval timer that interrupts Python code (the Triton interpreter is Python, so a
  kernel looping forever on CPU is stopped), again each second after the limit. Native code (a
  compiled kernel stuck on a GPU, a blocking wait) cannot be interrupted this way: a watchdog
  then hands the case's timeout to ``on_stuck``, which ends the process (the plugin: an xdist
  worker exits and its case is recorded as crashed; a single-process run writes its results and
  stops). Use isolation where that matters.
- isolated (``IsolatedRunner``): cases run in a child process started once and reused. The parent
  waits for each result at most ``timeout`` seconds; on a hang it kills the child, on a crash
  (the child died: a segfault, an abort, ``os._exit``) it records how the child ended; either way
  the case fails with a ``timeout`` or ``crashed`` check and a fresh child takes the next case.
  After a case that raised, the child checks the device still works (a device error such as an
  illegal memory access poisons the context) and exits if not, so the next case gets a clean one.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from typing import Any

from qkcheck.cases.case import Case
from qkcheck.cases.runner import FAIL, CaseTimeout, Check, Result, run_case

STARTUP_TIMEOUT_S = 300.0  # a child imports torch/triton and the kernels, and warms up, before its first case


def _failed(case: Case, adapter_name: str, op: str, device: str, check: str, detail: str, seconds: float) -> Result:
    res = Result(case=case.to_dict(), case_id=case.id, kernel=adapter_name, op=op, status=FAIL, device=device)
    res.checks.append(Check(check, FAIL, detail))
    res.timings = {"total": round(seconds, 6)}
    return res


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _expired(signum, frame):
        raise CaseTimeout(f"the case ran past its {seconds:g} s time limit")

    previous = signal.signal(signal.SIGALRM, _expired)
    # and again each second after that: a kernel that swallows even a BaseException once (a bare
    # ``except:``) is interrupted again where it goes on
    signal.setitimer(signal.ITIMER_REAL, seconds, min(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


STUCK_GRACE_S = 5.0  # past the time limit (its signal repeats each second): the kernel is stuck in native code


class _Watchdog:
    """One thread per process that calls a job's function once its deadline passes, unless the job
    was replaced or cleared first. Arming costs a lock and a notify per case, where a thread per
    case (``threading.Timer``) cost ~0.2 ms: a few percent of a GPU case."""

    def __init__(self):
        self._cond = threading.Condition()
        self._job = None  # (deadline on time.monotonic(), function)
        self._thread = None

    def arm(self, seconds: float, fire) -> None:
        with self._cond:
            self._job = (time.monotonic() + seconds, fire)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="qkcheck-case-watchdog")
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._job = None  # the thread finds it gone when it wakes

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    job = self._job
                    if job is None:
                        self._cond.wait()
                    elif job[0] > time.monotonic():
                        self._cond.wait(job[0] - time.monotonic())
                    else:
                        self._job = None
                        break
            job[1]()


_WATCHDOG = _Watchdog()


def run_in_process(case: Case, adapter, device: str, *, timeout: float | None, diagnose_failures: bool = True,
                   on_stuck=None) -> Result:
    """``on_stuck(result)``: called from a watchdog thread when the case is still running
    STUCK_GRACE_S after its time limit (native code the timer's signal cannot interrupt: a
    blocking wait, a C loop), with the case's ``timeout`` failure; it is expected to save what
    it can and end the process, the only way out of such a hang without isolation."""
    t0 = time.perf_counter()
    watched = on_stuck is not None and bool(timeout) and timeout > 0
    if watched:
        def stuck():
            on_stuck(_failed(case, adapter.name, adapter.op, device, "timeout",
                             f"the kernel did not return within the {timeout:g} s per-case limit (--case-timeout) "
                             "and could not be interrupted in process (native code); the process was ended "
                             "(--isolate on runs cases in a child that is killed instead)",
                             time.perf_counter() - t0))

        _WATCHDOG.arm(timeout + STUCK_GRACE_S, stuck)
    try:
        with _time_limit(timeout):
            return run_case(case, adapter, device, diagnose_failures=diagnose_failures)
    except CaseTimeout:
        return _failed(case, adapter.name, adapter.op, device, "timeout",
                       f"the kernel did not return within the {timeout:g} s per-case limit (--case-timeout)",
                       time.perf_counter() - t0)
    finally:
        if watched:
            _WATCHDOG.disarm()


def _device_healthy(device: str) -> bool:
    if device not in ("cuda", "xpu"):
        return True
    try:
        import torch

        mod = getattr(torch, device)
        (torch.ones(4, device=device) * 2).sum().item()
        mod.synchronize()
        return True
    except Exception:
        return False


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when its parent dies (a SIGKILLed xdist worker leaves no
    case runner behind, hung or not). Elsewhere the closed pipe ends it at its next message."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _warm_up(adapters: dict, device: str) -> None:
    """One-time costs a first case would otherwise carry, paid before the child says it is ready,
    so they never run on a case's clock (--case-timeout): a first case and the first case after
    a restart see the same warm process as the others."""
    if any(a.custom_op for a in adapters.values()):
        # the first call of a torch.library custom op imports torch._dynamo (torch disables dynamo
        # around the op's implementation): 1.5-5 s
        import torch._dynamo  # noqa: F401
    if any(a.triton for a in adapters.values()):
        from qkcheck.kernels.triton import warmup

        try:
            warmup.first_compile(device)  # the compiler back end's set-up (~1.7 s on an H100 host)
        except Exception:  # noqa: BLE001 - only a head start: the cases meet and report any such error
            pass


def _serve(conn, specs: list[str], device: str, worker_id: str | None = None) -> None:  # runs in the child
    from qkcheck.cases.registry import validate_adapter
    from qkcheck.kernels import device as _device
    from qkcheck.kernels.catalog import resolve

    _die_with_parent()
    try:
        device = _device.activate(device)
        # the GPU of the parent's xdist worker (gwN takes GPU N mod count on a multi-GPU host)
        _device.assign_worker_gpu(device, worker_id)
        adapters = {}
        for spec in specs:
            for a in resolve(spec):
                validate_adapter(a)
                adapters[a.name] = a
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - told to the parent, which reports it once
        # (a device that is not there, an adapter file that fails to load): the parent's own
        # checks usually say it first; never a traceback printed by a process nobody waits on
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        return
    _warm_up(adapters, device)
    try:
        conn.send(("ready", None))
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent closed its end or died
                return
            case_dict, name, diagnose = msg
            result = run_case(Case.from_dict(case_dict), adapters[name], device, diagnose_failures=diagnose)
            conn.send(("result", result.to_dict()))
            if any(c.name == "raised" for c in result.failed_checks) and not _device_healthy(device):
                return  # the device context is gone: exit, the parent starts a fresh child
    except (BrokenPipeError, ConnectionResetError):  # the parent died mid-case: nobody to answer
        return


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the child process stopped answering"
    if code < 0:
        try:
            return f"the process was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"the process was killed by signal {-code}"
    return f"the process exited with code {code}"


class IsolatedRunner:
    """Runs cases of the adapters named by ``specs`` in a reusable child process.

    ``device`` may be ``auto`` (the child resolves it); ``worker_id`` is the parent's xdist worker
    id, so the child uses the same GPU as its worker on a multi-GPU host."""

    def __init__(self, specs: list[str], device: str, *, timeout: float | None, worker_id: str | None = None):
        self.specs, self.device, self.timeout, self.worker_id = list(specs), device, timeout, worker_id
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = self._conn = None
        self._pending = None  # a child started by prestart(), not yet known to be ready
        self.restarts = 0

    def prestart(self) -> None:
        """Start the child now without waiting for it: its imports and device set-up overlap the
        caller's own start-up (collection); the first :meth:`run` waits for it to be ready."""
        if self._proc is None and self._pending is None:
            self._pending = self._launch()

    def _launch(self):
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.specs, self.device, self.worker_id), daemon=True,
                                 name="qkcheck-case-runner")
        proc.start()
        child.close()
        return proc, parent

    def _start(self) -> None:
        pending, self._pending = self._pending, None
        proc, parent = pending or self._launch()
        if not parent.poll(STARTUP_TIMEOUT_S):
            proc.kill()
            raise RuntimeError(f"the case runner process did not start within {STARTUP_TIMEOUT_S:g} s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"the case runner process failed to start ({_describe_exit(proc.exitcode)}); "
                               "run with --isolate off to see the error in process") from None
        if kind == "error":
            proc.join(5)
            raise RuntimeError(f"the case runner process failed to start: {payload}")
        self._proc, self._conn = proc, parent

    def _discard(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(10)
            self.restarts += 1
        self._proc = self._conn = None

    def close(self) -> None:
        if self._pending is not None:  # started ahead and never used
            self._proc, self._conn = self._pending
            self._pending = None
        if self._proc is not None and self._proc.is_alive():
            # every result is already back and the child holds nothing else worth keeping: stop
            # it at once instead of waiting out its interpreter and device teardown (~1 s on a GPU)
            self._proc.kill()
            self._proc.join(10)
        self._proc = self._conn = None

    def run(self, case: Case, adapter, *, diagnose_failures: bool = True) -> Result:
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._discard()
            self._start()
        t0 = time.perf_counter()
        try:
            self._conn.send((case.to_dict(), adapter.name, diagnose_failures))
            ready = self._conn.poll(self.timeout) if self.timeout else self._conn.poll(None)
        except (BrokenPipeError, EOFError, OSError):
            ready = True  # the child is gone; recv below says so
        if not ready:
            self._discard()
            return _failed(case, adapter.name, adapter.op, self.device, "timeout",
                           f"the kernel did not return within the {self.timeout:g} s per-case limit "
                           "(--case-timeout); its process was killed", time.perf_counter() - t0)
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(10)
            how = _describe_exit(self._proc.exitcode)
            self._discard()
            return _failed(case, adapter.name, adapter.op, self.device, "crashed",
                           f"the kernel crashed its process ({how}); the run went on in a fresh one",
                           time.perf_counter() - t0)
        return result_from_dict(payload)


def result_from_dict(d: dict[str, Any]) -> Result:
    d = dict(d)
    d["checks"] = [Check(**c) for c in d.get("checks", [])]
    return Result(**d)
