"""Crash and hang isolation: a kernel that loops forever or kills its process fails that case
only; the run goes on and the next case (of a good kernel) still passes and is recorded."""
from __future__ import annotations

import _thread
import json
import textwrap
import threading
import time

import pytest

from qkcheck.cases.case import Case
from qkcheck.cases.isolation import IsolatedRunner, run_in_process
from qkcheck.kernels.catalog import resolve
from tests.harness.conftest import qkcheck
from tests.harness.torch_adapters import GOOD_W4A16

CASE = Case.make("w4a16_gemm", shape={"m": 2, "n": 16, "k": 64},
                 params={"group_size": 32, "zero_points": False, "layout": "gptq", "act_dtype": "float16",
                         "out_dtype": "float16", "bias": False},
                 regime="exact", seed=3)

# Tiny torch kernels for the adapter file: one correct, one that hangs, two that kill their process.
ADAPTERS = GOOD_W4A16 + textwrap.dedent('''
    def hangs(t, params, config):
        while True:
            time.sleep(0.01)

    def swallows(t, params, config):  # a retry loop that catches Exception around its work
        while True:
            try:
                time.sleep(0.01)
            except Exception:
                pass

    def swallows_once(t, params, config):  # a bare except around its work, then more work
        try:
            while True:
                time.sleep(0.01)
        except:  # noqa: E722
            pass
        while True:
            time.sleep(0.01)

    def exits(t, params, config):
        os._exit(3)

    def aborts(t, params, config):
        os.abort()

    def make(name, call):
        return KernelAdapter(name=name, op="w4a16_gemm", pack=W4A16.pack, call=call, layouts=("gptq",),
                             triton=False)

    ADAPTERS = [make("test:good", good), make("test:hangs", hangs), make("test:swallows", swallows),
                make("test:swallows_once", swallows_once), make("test:exits", exits),
                make("test:aborts", aborts)]
''')


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("isolation") / "adapters.py"
    path.write_text(ADAPTERS)
    return path


def _by_name(path):
    return {a.name: a for a in resolve(str(path))}


def _failed(result):
    return {c.name: c.detail for c in result.checks if c.outcome == "fail"}


def test_in_process_time_limit_stops_an_interpreted_hang(adapter_file):
    adapters = _by_name(adapter_file)
    t0 = time.monotonic()
    r = run_in_process(CASE, adapters["test:hangs"], "cpu", timeout=1.0)
    assert time.monotonic() - t0 < 20
    assert r.status == "fail" and "did not return within the 1 s per-case limit" in _failed(r)["timeout"]
    assert run_in_process(CASE, adapters["test:good"], "cpu", timeout=30).status == "pass"


@pytest.mark.parametrize("name", ["test:swallows", "test:swallows_once"])
def test_in_process_time_limit_is_not_swallowed_by_the_kernel(adapter_file, name):
    done = threading.Event()

    def guard():  # a time limit that fails to stop the kernel fails this test, never hangs the run
        if not done.wait(30):
            while not done.is_set():
                _thread.interrupt_main()
                done.wait(1)

    threading.Thread(target=guard, daemon=True).start()
    t0 = time.monotonic()
    try:
        r = run_in_process(CASE, _by_name(adapter_file)[name], "cpu", timeout=1.0)
    except KeyboardInterrupt:
        pytest.fail(f"{name} ran on past its 1 s limit for 30 s")
    finally:
        done.set()
    assert time.monotonic() - t0 < 20
    assert r.status == "fail" and "did not return within the 1 s per-case limit" in _failed(r)["timeout"]


def test_isolated_runner_survives_hangs_and_crashes(adapter_file):
    adapters = _by_name(adapter_file)
    runner = IsolatedRunner([str(adapter_file)], "cpu", timeout=3.0)
    try:
        first = runner.run(CASE, adapters["test:good"])
        hang = runner.run(CASE, adapters["test:hangs"])
        after_hang = runner.run(CASE, adapters["test:good"])
        exited = runner.run(CASE, adapters["test:exits"])
        aborted = runner.run(CASE, adapters["test:aborts"])
        last = runner.run(CASE, adapters["test:good"])
    finally:
        runner.close()
    assert first.status == "pass", first.summary()
    assert "killed" in _failed(hang)["timeout"]
    assert after_hang.status == "pass"
    assert "exited with code 3" in _failed(exited)["crashed"]
    assert "signal SIGABRT" in _failed(aborted)["crashed"]
    assert last.status == "pass" and runner.restarts == 3


def test_a_runner_that_cannot_start_says_why_once(adapter_file, tmp_path, capfd):
    """The child meets the error its parent's own checks also meet (an adapter file that fails to
    load, a device that is not there): it tells the parent, which raises it with the reason; the
    child prints nothing (a multiprocessing traceback beside the run's one-line usage error)."""
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('no such kernel here')\n")
    runner = IsolatedRunner([str(bad)], "cpu", timeout=30)
    try:
        with pytest.raises(RuntimeError, match="failed to start: .*no such kernel here"):
            runner.run(CASE, _by_name(adapter_file)["test:good"])
    finally:
        runner.close()
    assert "Traceback" not in capfd.readouterr().err


def test_gate_run_goes_on_and_records_every_case(adapter_file, tmp_path):
    """Through the CLI: the crashing kernel's case fails, the good kernel's cases still run, and
    the results file holds all of them."""
    results = tmp_path / "r.jsonl"
    proc = qkcheck("gate", "--device", "cpu", "--kernels", adapter_file, "--isolate", "on", "--case-timeout", "5s",
                   "--results", results, "--shard", "1/40", "--failures-dir", tmp_path / "f",
                   "--", "-k", "test:exits or test:good")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    by_kernel = {}
    for r in records:
        by_kernel.setdefault(r["kernel"], []).append(r["status"])
    assert set(by_kernel["test:exits"]) == {"fail"}
    assert by_kernel["test:good"] and set(by_kernel["test:good"]) <= {"pass", "skip"}
    assert "pass" in by_kernel["test:good"]


# A kernel behind a torch.library custom op (its first call in a process imports torch._dynamo,
# 1.5-5 s): it raises if that import was left to it, i.e. if the case runner's warm-up ran on the
# case's clock instead of before the child said it was ready.
WARM_ADAPTERS = GOOD_W4A16 + textwrap.dedent('''
    import sys
    from typing import Optional

    @torch.library.custom_op("qkchecktest::w4a16_warm", mutates_args=())
    def good_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], group_size: int, out_dtype: str) -> torch.Tensor:
        return good({"x": x, "qweight": qweight, "scales": scales, "zeros": zeros, "bias": bias},
                    {"group_size": group_size, "out_dtype": out_dtype}, {})

    @good_op.register_fake
    def _(x, qweight, scales, zeros, bias, group_size, out_dtype):
        return x.new_empty((x.shape[0], scales.shape[1]), dtype=getattr(torch, out_dtype))

    def warm(t, params, config):
        if "torch._dynamo" not in sys.modules:
            raise RuntimeError("torch._dynamo not imported yet: the warm-up is on this case's clock")
        return good_op(t["x"], t["qweight"], t["scales"], t["zeros"], t["bias"], params["group_size"],
                       params["out_dtype"])

    def exits(t, params, config):
        os._exit(3)

    ADAPTERS = [KernelAdapter(name="test:warm", op="w4a16_gemm", pack=W4A16.pack, call=warm, layouts=("gptq",),
                              triton=False, custom_op="qkchecktest::w4a16_warm"),
                KernelAdapter(name="test:exits", op="w4a16_gemm", pack=W4A16.pack, call=exits, layouts=("gptq",),
                              triton=False)]
''')


def test_warm_up_never_runs_on_a_cases_clock(tmp_path):
    """The child's one-time costs (here torch._dynamo's import for a custom op) are paid before
    it says it is ready: the first case, and the first case after a crash restarted the child,
    start in a warm process (so --case-timeout 2s does not time out a correct first case)."""
    path = tmp_path / "warm.py"
    path.write_text(WARM_ADAPTERS)
    adapters = _by_name(path)
    runner = IsolatedRunner([str(path)], "cpu", timeout=60.0)
    try:
        first = runner.run(CASE, adapters["test:warm"])
        crashed = runner.run(CASE, adapters["test:exits"])
        after_restart = runner.run(CASE, adapters["test:warm"])
    finally:
        runner.close()
    assert first.status == "pass", first.summary()
    assert "exited with code 3" in _failed(crashed)["crashed"]
    assert after_restart.status == "pass" and runner.restarts == 1, after_restart.summary()
