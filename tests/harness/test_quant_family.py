"""The quantization family in the harness: its grid and regimes say what they promise, the
bundled quant kernels pass a sample of their grid (every MX format and NVFP4 case in full), a
ties-away twin is caught by the adversarial regime, broken copies of the MX and NVFP4 kernels
(RCEIL ignored, ties away, a truncated E4M3 block scale) fail the gate's cases through the runner,
and the seed 002 zoo entry (codes allocated as FP8 whatever is requested, in the op and
its fake) fails the gate and is found, shrunk and replayed by the fuzzer, while the bundled
per_token_quant passes the same gate and fuzz budget."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qkcheck.cases.registry import OP_SPECS, grid, materialize
from qkcheck.cases.runner import run_case
from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.catalog import available
from qkcheck.kernels.quant.adapter import adapters as quant_adapters
from qkcheck.oracle.numerics import round_to
from qkcheck.oracle.ops.quant import expect_quant
from tests.harness.conftest import ROOT, qkcheck, qkcheck_popen

ZOO = "zoo:wrong_output_dtype"
WRONG = "codes: output dtype float8_e4m3fn, requested int8"
OPS = ("per_token_quant", "static_quant", "per_token_group_quant", "mx_quant", "nvfp4_quant")
ADAPTERS = {a.op: a for a in quant_adapters()}
GRIDS = {op: grid(ADAPTERS[op]) for op in OPS}


def runs_on_cpu(case) -> bool:
    return case.p.get("quant_dtype", "int8") == "int8"


# ------------------------------------------------------------------ the grid and the regimes


def test_grid_is_small_covers_the_space_and_runs_mostly_on_cpu():
    cases = [c for op in OPS for c in GRIDS[op]]
    assert 60 <= len(cases) < 100  # the family's grid plus the case space's coverage cases
    assert sum(runs_on_cpu(c) for c in cases) > len(cases) / 2  # int8 and MX: the interpreter runs them
    for op in OPS:
        spec_params = OP_SPECS[op].params
        seen = {k: {c.p[k] for c in GRIDS[op]} for k in spec_params}
        assert seen == {k: set(v) for k, v in spec_params.items()}, op  # every value of every param
        assert {c.regime for c in GRIDS[op]} == {"exact", "realistic", "adversarial"}
        assert any(not c.cfg for c in GRIDS[op]) and any(c.cfg for c in GRIDS[op])
        assert any(c.dims["m"] == 1 for c in GRIDS[op])
    # every fp8 format meets every linear op at least once (they run compiled)
    for op in OPS[:3]:
        assert {c.p["quant_dtype"] for c in GRIDS[op]} == {"int8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2"}
    # every MX format meets both scale rules and all three regimes
    for fmt in OP_SPECS["mx_quant"].params["fmt"]:
        mine = [c for c in GRIDS["mx_quant"] if c.p["fmt"] == fmt]
        assert {c.p["scale_rule"] for c in mine} == {"floor", "rceil"}, fmt
        assert {c.regime for c in mine} == {"exact", "realistic", "adversarial"}, fmt
    # NVFP4's adversarial cases take all three global-scale modes (seed mod 3)
    assert {c.seed % 3 for c in GRIDS["nvfp4_quant"] if c.regime == "adversarial"} == {0, 1, 2}
    # tile tails: M not a multiple of block_m, K not a multiple of block_k
    tails = [c for c in GRIDS["per_token_quant"] if c.cfg and c.dims["k"] % c.cfg["block_k"]]
    assert tails and any(c.dims["m"] % c.cfg["block_m"] for c in GRIDS["per_token_quant"] if c.cfg)


@pytest.mark.parametrize("op", OPS)
def test_inputs_are_representable_and_the_exact_regime_has_one_answer(op):
    for case in GRIDS[op]:
        problem = materialize(case)
        x = problem["x"]
        assert np.array_equal(round_to(x, case.p["in_dtype"]), x), case.id
        assert np.array_equal(materialize(case)["x"], x)  # same case, same bytes
        exp = expect_quant(op, problem)
        if case.regime == "exact":
            assert not exp.ambiguity.any(), case.id  # power-of-two scales: no tie ambiguity anywhere
            assert np.array_equal(exp.codes, exp.codes_alt), case.id


def test_adversarial_regime_has_ties_saturation_zero_groups_and_non_power_of_two_scales():
    hits = {"exact ties": 0, "saturated": 0, "zero group": 0, "non-pow2 scale": 0, "amax at qmax": 0}
    for op in OPS:
        for case in (c for c in GRIDS[op] if c.regime == "adversarial"):
            exp = expect_quant(op, materialize(case))
            v, a = exp.pre_round, exp.ambiguity
            hits["exact ties"] += int(((np.abs(v) % 1 == 0.5) & (a == 0)).sum()) if "int8" in exp.quant_dtype else \
                int((exp.rounding.encode(np.nextafter(v, np.inf)) != exp.rounding.encode(np.nextafter(v, -np.inf)))
                    [a == 0].sum())
            hits["saturated"] += int((np.abs(v) > exp.rounding.limit).sum())
            hits["amax at qmax"] += int((np.abs(v) == exp.rounding.limit).sum())
            g = exp.group_size
            groups = np.abs(exp.x).reshape(exp.x.shape[0], -1, g).max(axis=2)
            hits["zero group"] += int((groups == 0).sum())
            f, _ = np.frexp(exp.scales)
            hits["non-pow2 scale"] += int((np.abs(f) != 0.5).sum())
    assert all(n > 0 for n in hits.values()), hits


def _ties_away_per_token(t, params, config):
    """A per_token_quant written in torch that rounds exact ties away from zero."""
    import torch

    from qkcheck.kernels import backends

    x = t["x"].float()
    scale = torch.clamp(x.abs().amax(dim=1, keepdim=True), min=1e-10) / 127.0
    v = x / scale
    codes = torch.clamp(torch.sign(v) * torch.floor(v.abs() + 0.5), -128, 127).to(torch.int8)
    backends.record(backends.NATIVE)
    return codes, scale


def test_a_ties_away_twin_is_caught_by_the_adversarial_regime_and_named():
    twin = KernelAdapter(name="test:ties_away", op="per_token_quant", pack=ADAPTERS["per_token_quant"].pack,
                         call=_ties_away_per_token, triton=False, expected_backend="native")
    adv = [c.replace(params={**c.p, "scale_ub": False}) for c in GRIDS["per_token_quant"]
           if c.regime == "adversarial" and runs_on_cpu(c)]
    results = [run_case(c, twin, "cpu") for c in adv]
    failed = [r for r in results if r.status == "fail"]
    assert failed, [r.summary() for r in results]
    assert any(d["hypothesis"] == "ties_away_from_zero" for r in failed for d in r.diagnosis), failed[0].summary()


# ------------------------------------------------------------------ the bundled kernels


@pytest.mark.slow  # the gate (CI's main job) runs the whole grid
@pytest.mark.parametrize("op", OPS)
def test_bundled_quant_adapter_passes_a_sample_of_its_grid(op):
    adapter = ADAPTERS[op]
    cases = GRIDS[op]
    cpu = [c for c in cases if runs_on_cpu(c)]
    sample = cpu[::3] + [c for c in cases if not runs_on_cpu(c)][:1]
    for case in sample:
        result = run_case(case, adapter, "cpu")
        if runs_on_cpu(case):
            assert result.status == "pass", result.summary()
            assert {c.name for c in result.checks} >= {"contract", "numerics", "fake_vs_real"}
        else:  # fp8 outputs: the raw interpreter's conversion is wrong; qkcheck's correction makes it right
            assert result.status == "pass", result.summary()


@pytest.mark.slow  # the whole grid; the gate (CI's main job) runs it too
def test_every_mx_and_nvfp4_grid_case_passes_with_the_bundled_adapters():
    """All of them run on cpu: every code is assembled from integer bits (no fp8 conversion)."""
    for op in ("mx_quant", "nvfp4_quant"):
        for case in GRIDS[op]:
            result = run_case(case, ADAPTERS[op], "cpu")
            assert result.status == "pass", result.summary()
            assert {c.name for c in result.checks} >= {"contract", "numerics", "fake_vs_real"}


def test_nvfp4_adversarial_regime_reaches_the_scale_edges():
    """E4M3 block scales saturating at 448, subnormal, exactly on the 2**-10 tie, underflowing to 0,
    and not powers of two (then the codes' float32 ambiguity applies)."""
    hits = dict.fromkeys(("saturated scale", "subnormal scale", "tie at 2**-10", "zero scale", "non-pow2 scale",
                          "saturated code"), 0)
    for case in (c for c in GRIDS["nvfp4_quant"] if c.regime == "adversarial"):
        exp = expect_quant("nvfp4_quant", materialize(case))
        r, sc = exp.scale_exact, exp.scale_codes
        hits["saturated scale"] += int((r > 464).sum())
        hits["subnormal scale"] += int(((sc > 0) & (sc < 8)).sum())
        hits["tie at 2**-10"] += int((r == 2.0**-10).sum())
        hits["zero scale"] += int((sc == 0).sum())
        f, _ = np.frexp(exp.scales[exp.scales > 0])
        hits["non-pow2 scale"] += int((f != 0.5).sum())
        hits["saturated code"] += int((np.abs(exp.pre_round) > 6).sum())
    assert all(n > 0 for n in hits.values()), hits


def _broken_adapter(op: str, bug: int) -> KernelAdapter:
    """The bundled adapter's packing and unpacking around a broken copy of the kernel
    (tests/kernels/test_quant.py), launched by the real launcher."""
    from qkcheck.kernels.quant import kernel as Q
    from tests.kernels.test_quant import broken_kernel

    if op == "mx_quant":
        def call(t, params, config):
            return Q.mx_quant(t["x"], fmt=params["fmt"], scale_rule=params["scale_rule"],
                              kernel=broken_kernel("mx", bug))
    else:
        def call(t, params, config):
            return Q.nvfp4_quant(t["x"], t["global_scale"], kernel=broken_kernel("nvfp4", bug))
    bundled = ADAPTERS[op]
    return KernelAdapter(name=f"test:{op}_bug{bug}", op=op, pack=bundled.pack, call=call, unpack=bundled.unpack)


def test_broken_mx_and_nvfp4_copies_fail_their_grid_cases_through_the_runner():
    from tests.kernels.test_quant import BUG_NONE, BUG_RCEIL_AS_FLOOR, BUG_SCALE_TRUNCATED, BUG_TIES_AWAY

    rceil = [c for c in GRIDS["mx_quant"] if c.p["scale_rule"] == "rceil" and c.regime != "exact"]
    adversarial_mx = [c for c in GRIDS["mx_quant"] if c.regime == "adversarial"]
    nvfp4 = [c for c in GRIDS["nvfp4_quant"] if c.regime != "exact"]
    runs = {
        "rceil ignored": [run_case(c, _broken_adapter("mx_quant", BUG_RCEIL_AS_FLOOR), "cpu") for c in rceil],
        "mx ties away": [run_case(c, _broken_adapter("mx_quant", BUG_TIES_AWAY), "cpu") for c in adversarial_mx],
        "nvfp4 scale truncated": [run_case(c, _broken_adapter("nvfp4_quant", BUG_SCALE_TRUNCATED), "cpu")
                                  for c in nvfp4],
    }
    for name, results in runs.items():
        failed = [r for r in results if r.status == "fail"]
        assert failed, (name, [r.summary() for r in results])
        for r in failed:  # caught by the oracle's comparison, not by a crash or a contract slip
            checks = {c.name: c.outcome for c in r.checks}
            assert checks["numerics"] == "fail" and checks["contract"] == "pass", r.summary()
    scale_notes = [n for r in runs["nvfp4 scale truncated"] if r.status == "fail" for n in r.divergence["notes"]]
    assert any("quantity: scales" in n and "float8_e4m3fn" in n for n in scale_notes), scale_notes
    assert any(d["hypothesis"] == "ties_away_from_zero" for r in runs["mx ties away"] for d in r.diagnosis)
    # the same copies without their bug pass the same cases
    for op, cases in (("mx_quant", rceil + adversarial_mx), ("nvfp4_quant", nvfp4)):
        for c in cases:
            r = run_case(c, _broken_adapter(op, BUG_NONE), "cpu")
            assert r.status == "pass", r.summary()


# ------------------------------------------------------------------ seed 002 through the CLI


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    """The fuzz of the zoo entry and the bundled op, started once and run alongside the gate. 15 s
    each: the zoo entry's first case fails (a few seconds into the fuzz on the CPU), already one
    row and one element, so its shrinking has little left to do."""
    tmp = tmp_path_factory.mktemp("fuzz")
    proc = qkcheck_popen("fuzz", "--kernels", ZOO, "--kernels", "bundled:per_token_quant", "--budget", "15s",
                         "--device", "cpu", "--failures-dir", tmp / "failures", "--results", tmp / "r.jsonl")
    try:
        yield proc, tmp / "failures"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_gate_fails_the_seed_002_zoo_entry_on_the_real_output_and_the_fake_and_passes_the_bundled_op(tmp_path,
                                                                                                    fuzz_run):
    results = tmp_path / "r.jsonl"
    r = qkcheck("gate", "--device", "cpu", "--kernels", ZOO, "--kernels", "bundled:per_token_quant",
                "--failures-dir", str(tmp_path / "failures"), "--results", str(results))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"[contract] {WRONG}" in r.stdout and f"[fake_vs_real] fake: {WRONG}" in r.stdout
    records = [json.loads(line) for line in results.read_text().splitlines()]
    records = [x for x in records if "status" in x]
    zoo = [x for x in records if x["kernel"] == ZOO]
    bundled = [x for x in records if x["kernel"] == "bundled:per_token_quant"]
    assert bundled and all(x["status"] in ("pass", "skip") for x in bundled)
    assert any(x["status"] == "pass" for x in bundled)
    int8 = [x for x in zoo if x["case"]["params"]["quant_dtype"] == "int8"]
    assert int8 and all(x["status"] == "fail" for x in int8)
    for x in int8:
        checks = {c["name"]: c for c in x["checks"]}
        assert checks["contract"]["outcome"] == "fail" and checks["contract"]["detail"] == WRONG
        assert checks["fake_vs_real"]["outcome"] == "fail" and checks["fake_vs_real"]["detail"] == f"fake: {WRONG}"


def test_fuzz_finds_seed_002_shrinks_it_and_the_printed_replay_reproduces(fuzz_run, qkcheck_here):
    proc, fails = fuzz_run
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "1 failed, 1 passed" in stdout  # the zoo entry fails, the bundled op survives the budget
    saved = sorted(fails.glob("*.json"))
    assert len(saved) == 1
    case = json.loads(saved[0].read_text())
    # minimal: one row, one element, int8, the kernel's default config
    assert case["shape"] == {"m": 1, "k": 1} and case["params"]["quant_dtype"] == "int8" and case["config"] == {}
    printed = re.search(r"replay: (qkcheck replay \S+ --kernels \S+)", stdout)
    assert printed and printed.group(1).endswith(f"--kernels {ZOO}"), stdout[-3000:]
    argv = shlex.split(printed.group(1))
    # the printed command as a user runs it (a process of its own), and meanwhile the same case on
    # the bundled op
    user = subprocess.Popen([str(Path(sys.executable).parent / argv[0]), *argv[1:]], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fixed = qkcheck_here("replay", str(saved[0]), "--kernels", "bundled:per_token_quant", "--device", "cpu")
    out, err = user.communicate(timeout=300)
    assert user.returncode == 1 and WRONG in out, out + err
    assert fixed.returncode == 0 and ": PASS" in fixed.stdout, fixed.stdout + fixed.stderr


def test_zoo_entry_is_listed_and_implements_per_token_quant():
    zoo = available()[ZOO]
    assert zoo.op == "per_token_quant" and zoo.custom_op == "qkcheck_zoo::per_token_quant"
