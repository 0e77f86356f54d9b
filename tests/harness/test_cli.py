"""The qkcheck command line as a user meets it: exit codes 0/1/2, one-line errors, fuzz ->
shrunk case file -> replay reproduces it, the fixed kernel passes the same replay."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.harness.conftest import ROOT, qkcheck, qkcheck_popen
from tests.harness.torch_adapters import GOOD_W4A16
from tests.tiers import sampled

CORPUS_CASE = ROOT / "cases" / "corpus" / "w4a16-block-k-spans-two-groups.json"


def test_replay_of_the_seed_003_case_fails_on_the_zoo_kernel_and_passes_on_the_bundled_one(qkcheck_here):
    bad = qkcheck_here("replay", str(CORPUS_CASE), "--kernels", "zoo:scale_group_spanning", "--device", "cpu")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "first scale group of each BLOCK_K=64 tile is applied to the whole tile (group_size=32)" in bad.stdout
    good = qkcheck_here("replay", str(CORPUS_CASE), "--kernels", "bundled", "--device", "cpu")
    assert good.returncode == 0 and ": PASS" in good.stdout, good.stdout + good.stderr


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


NEEDS_NO_GPU = pytest.mark.skipif(_has_gpu(), reason="checks the error for a GPU this machine has")


@pytest.mark.parametrize(
    "args,match",
    [
        pytest.param(["gate", "--kernels", "zoo:nope", "--device", "cpu"], "zoo:nope: unknown kernel", id="kernel"),
        pytest.param(["gate", "--device", "tpu"], "device='tpu' is not a device", id="device"),
        pytest.param(["gate", "--device", "tpu", "-n", "2"], "device='tpu' is not a device", id="device-xdist"),
        pytest.param(["gate", "--device", "cuda", "--kernels", "bundled:w4a16_gemm"],
                     "device='cuda' was requested but torch sees no", id="no-gpu", marks=NEEDS_NO_GPU),
        # under xdist the controller checks the device while its workers start: the same one line (the
        # slow tier: it starts workers; test_isolation tests the workers' case runner saying it once)
        pytest.param(["gate", "--device", "cuda", "-n", "2", "--kernels", "bundled:w4a16_gemm"],
                     "device='cuda' was requested but torch sees no", id="no-gpu-xdist",
                     marks=[NEEDS_NO_GPU, pytest.mark.slow]),
        pytest.param(["gate", "--shard", "3/2", "--device", "cpu"], "--shard '3/2' must be i/n", id="shard"),
        pytest.param(["fuzz", "--budget", "soon", "--device", "cpu"], "--budget 'soon' is not a duration", id="budget"),
        pytest.param(["fuzz", "--shrink-budget", "briefly", "--device", "cpu"],
                     "--shrink-budget 'briefly' is not a duration", id="shrink-budget"),
        pytest.param(["gate", "--op", "w9a9", "--device", "cpu"], "--op w9a9: unknown op", id="op"),
        pytest.param(["replay", "missing.json", "--device", "cpu"], "missing.json: cannot read the case file", id="case-file"),
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="command"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args, match, qkcheck_here):
    # under -n the xdist controller reports the error while its workers start: that needs a process
    # of its own; the other errors come the same way in this process, without a torch start-up
    r = qkcheck(*args) if "-n" in args else qkcheck_here(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert match in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_adapter_file_that_fails_to_import_is_a_usage_error(tmp_path, qkcheck_here):
    f = tmp_path / "adapters.py"
    f.write_text("import not_a_module_anywhere\n")
    r = qkcheck_here("gate", "--kernels", str(f), "--device", "cpu")
    assert r.returncode == 2 and "failed to import (ModuleNotFoundError" in r.stdout + r.stderr


def test_fuzz_finds_seed_003_shrinks_it_and_the_replay_reproduces(tmp_path, qkcheck_here):
    fails = tmp_path / "failures"
    r = qkcheck("fuzz", "--kernels", "zoo:scale_group_spanning", "--budget", "60s", "--device", "cpu",
                "--failures-dir", str(fails), "--results", str(tmp_path / "r.jsonl"))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    # the failure is announced and saved the moment it is found, before shrinking ...
    found = re.search(r"qkcheck fuzz: zoo:scale_group_spanning\S*: failure found [\d.]+ s into the fuzz, "
                      r"saved as found: (\S+); shrinking", r.stdout)
    assert found, r.stdout[-3000:]
    saved = sorted(fails.glob("*.json"))
    # ... and replaced by the shrunk case: one failure, one file
    assert len(saved) == 1
    assert not Path(found.group(1)).exists()
    case = json.loads(saved[0].read_text())
    # minimal: two groups of the smallest size in one tile, one row
    assert case["shape"]["m"] == 1 and case["shape"]["k"] == 2 * case["params"]["group_size"]
    assert case["config"]["block_k"] > case["params"]["group_size"]
    replay = qkcheck_here("replay", str(saved[0]), "--kernels", "zoo:scale_group_spanning", "--device", "cpu")
    assert replay.returncode == 1 and "first scale group of each BLOCK_K" in replay.stdout
    fixed = qkcheck_here("replay", str(saved[0]), "--kernels", "bundled", "--device", "cpu")
    assert fixed.returncode == 0, fixed.stdout


def _fuzz_to_a_failure(entry: str, shrink_budget: str, tmp_path: Path, zoo_fuzz) -> tuple[str, Path]:
    """``qkcheck fuzz --kernels zoo:ENTRY`` on the CPU until it finds (and reports) a failure: its
    output and the folder of the cases it saved. With no shrink budget ("0") that is the run the
    entry's family tests assert on too (``zoo_fuzz``: run once)."""
    if shrink_budget == "0":
        run = zoo_fuzz(entry)
        r, fails = run.process, run.failures
    else:
        fails = tmp_path / "failures"
        r = qkcheck("fuzz", "--kernels", f"zoo:{entry}", "--budget", "60s", "--device", "cpu",
                    "--failures-dir", fails, "--shrink-budget", shrink_budget)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    return out, fails


@pytest.mark.parametrize("shrink_budget", sampled(["0", "0.001s"], 2))
def test_shrink_budget_bounds_shrinking_and_the_failure_is_still_reported(tmp_path, shrink_budget, zoo_fuzz):
    """A spent shrink budget stops candidates from running: the first failing case is reported and
    saved as found (no shrink cases); with no budget (0) the same failure is shrunk further."""
    out, fails = _fuzz_to_a_failure("api_misbinding", shrink_budget, tmp_path, zoo_fuzz)
    m = re.search(r"fuzz found a failure after (\d+) cases, [\d.]+ s into the fuzz \(shrunk in (\d+) more cases", out)
    assert m, out[-3000:]
    shrink_cases = int(m.group(2))
    assert (shrink_cases == 0) if shrink_budget != "0" else (shrink_cases > 0)
    assert len(list(fails.glob("*.json"))) == 1


@pytest.mark.slow  # a 20 s fuzz run per budget: the slow tier
@pytest.mark.parametrize("shrink_budget", ["0", "1s"])
def test_shrink_candidates_whose_compile_the_budget_cannot_pay_for_are_not_tried(tmp_path, shrink_budget, zoo_fuzz,
                                                                                 qkcheck_here):
    """Under a shrink budget, a candidate of a kernel variant (params and config) not yet run in
    the process is not tried once the time left is less than the longest first run of a variant so
    far (its compile, on a GPU); the summary counts them. Without a budget every candidate runs."""
    out, fails = _fuzz_to_a_failure("silent_emulation", shrink_budget, tmp_path, zoo_fuzz)
    m = re.search(r"(\d+) shrink candidate\(s\) of kernel variants not yet compiled left untried", out)
    if shrink_budget == "0":
        assert m is None, out[-3000:]
    else:
        assert m and int(m.group(1)) > 0, out[-3000:]
    saved = list(fails.glob("*.json"))
    assert len(saved) == 1
    replay = qkcheck_here("replay", str(saved[0]), "--kernels", "zoo:silent_emulation", "--device", "cpu")
    assert replay.returncode == 1, replay.stdout[-2000:]


def test_a_run_killed_while_shrinking_leaves_the_case_it_found(tmp_path, qkcheck_here):
    """The failing case is saved when found: killing the run during shrinking (no shrink budget)
    still leaves a case file, and replaying it reproduces the failure."""
    fails = tmp_path / "failures"
    proc = qkcheck_popen("fuzz", "--kernels", "zoo:api_misbinding", "--budget", "120s", "--device", "cpu",
                         "--failures-dir", fails, "--shrink-budget", "0", merge_stderr=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            m = re.search(r"failure found [\d.]+ s into the fuzz, saved as found: (\S+); shrinking", line)
            if m:
                break
        else:
            pytest.fail("no 'failure found' line: " + "".join(seen)[-3000:])
    finally:
        proc.kill()
        proc.wait(timeout=60)
    found = Path(m.group(1))
    assert found.exists() and found.parent == fails and found.name.endswith(".found.json")
    replay = qkcheck_here("replay", str(found), "--kernels", "zoo:api_misbinding", "--device", "cpu")
    assert replay.returncode == 1, replay.stdout[-2000:]


TORCH_W4A16 = GOOD_W4A16 + """
ADAPTERS = [KernelAdapter(name="test:torch_w4a16", op="w4a16_gemm", pack=W4A16.pack, call=good,
                          layouts=("gptq",), triton=False, expected_backend=backends.NATIVE)]
"""


@pytest.mark.slow  # two fuzz runs: the slow tier
def test_fuzz_skips_draws_it_already_checked(tmp_path):
    """Every hypothesis run starts from the simplest case; a draw already checked in this stream is
    not run again (a case's siblings derive from it, so they would repeat too)."""
    adapters = tmp_path / "adapters.py"
    adapters.write_text(TORCH_W4A16)
    # --isolate off: a user's file runs in a case-runner child by default, whose start-up (a torch
    # import) would take a good part of the budget; the draws are what this test counts
    r = qkcheck("fuzz", "--kernels", str(adapters), "--budget", "8s", "--device", "cpu", "--isolate", "off",
                "--failures-dir", str(tmp_path / "failures"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    m = re.search(r"qkcheck fuzz test:torch_w4a16: (\d+) cases \((\d+) drawn, (\d+) repeated draws skipped", out)
    assert m, out[-3000:]
    cases, drawn, repeats = map(int, m.groups())
    assert cases == drawn > 20 and repeats >= 1  # one case per draw on the CPU; several hypothesis runs


@pytest.mark.parametrize("device, isolate, cores, gpus, expected", [
    ("cpu", "auto", 16, 0, "auto"),  # interpreter, no isolation: xdist's own auto
    ("cuda", "off", 16, 1, "auto"),
    ("cpu", "on", 16, 0, "8"),  # isolated cases: two processes per worker
    ("cpu", "on", 2, 0, "1"),
    ("cuda", "auto", 16, 1, "8"),
    ("cuda", "auto", 128, 1, "8"),  # at most 8 per GPU
    ("cuda", "auto", 128, 4, "32"),
    ("auto", "auto", 32, 2, "16"),
])
def test_n_auto_takes_half_the_cores_when_cases_run_isolated(monkeypatch, device, isolate, cores, gpus, expected):
    from qkcheck.cases import cli
    from qkcheck.kernels import device as _device

    monkeypatch.setattr(cli.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(_device, "resolve", lambda requested: "cuda" if requested in ("cuda", "auto") else requested)
    monkeypatch.setattr(_device, "gpu_count", lambda dev: gpus)
    assert cli.auto_workers(device, isolate) == expected


def test_n_auto_leaves_device_errors_to_the_run(monkeypatch):
    from qkcheck.cases import cli
    from qkcheck.kernels import device as _device

    def unavailable(requested):
        raise ValueError("device='cuda' was requested but torch sees no CUDA/ROCm GPU")

    monkeypatch.setattr(_device, "resolve", unavailable)
    assert cli.auto_workers("auto", "auto") == "auto"


def test_n_auto_counts_gpus_only_when_the_cap_can_bind(monkeypatch):
    """With --device cuda and at most 16 cores the per-GPU cap cannot bind: -n auto is decided
    without torch (the controller process then never imports it)."""
    from qkcheck.cases import cli
    from qkcheck.kernels import device as _device

    def must_not_run(*args):
        raise AssertionError("the device was resolved")

    monkeypatch.setattr(_device, "resolve", must_not_run)
    monkeypatch.setattr(_device, "gpu_count", must_not_run)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 16)
    assert cli.auto_workers("cuda", "auto") == "8"
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 64)
    with pytest.raises(AssertionError, match="resolved"):
        cli.auto_workers("cuda", "auto")
