"""The MXFP4 GEMM family in the harness: its regimes make the inputs they promise, its grid covers
the case space and runs green on the bundled kernel, and the seed-000 zoo entry (an adapter that
binds its output buffer to an engine API's new ``bias`` slot) is caught by the generic checks —
the signature check naming ``bias``, and, without the declaration, the numerics — by the gate and
by the fuzzer, which shrinks it to a replayable case, while the bundled kernel passes the same."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qkcheck.cases.case import REGIMES, Case
from qkcheck.cases.families import mxfp4 as family
from qkcheck.cases.registry import grid, materialize
from qkcheck.cases.runner import FAIL, PASS, SKIP, run_case
from qkcheck.kernels.mxfp4.adapter import MXFP4
from qkcheck.kernels.zoo import api_misbinding as zoo
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.ops import exact_regime_reason
from qkcheck.oracle.ops.mxfp4 import MX_BLOCK
from tests.harness.conftest import qkcheck, qkcheck_popen

E2M1 = FORMATS["float4_e2m1fn"]
DRIFT = "parameter 3 is 'bias' where the adapter binds 'out'"


def _case(regime, act="a16", *, m=3, n=24, k=96, bias=True, seed=7, out="float16"):
    return Case.make("mxfp4_gemm", shape={"m": m, "n": n, "k": k},
                     params={"act": act, "act_dtype": "float16", "out_dtype": out, "bias": bias},
                     config={"block_m": 16, "block_n": 16, "block_k": 64}, regime=regime, seed=seed)


# ------------------------------------------------------------------------------------ regimes


@pytest.mark.parametrize("act", family.ACTS)
@pytest.mark.parametrize("regime", REGIMES)
def test_every_regime_is_deterministic_and_a_valid_problem(regime, act):
    a, b = materialize(_case(regime, act)), materialize(_case(regime, act))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert a["w"].shape == (96, 24) and a["w_scale"].shape == (3, 24) and a["act"] == act
    if act == "a16":
        assert a["x"].shape == (3, 96) and "a" not in a
    else:
        assert a["a"].shape == (3, 96) and a["a_scale"].shape == (3, 3) and "x" not in a
    assert a["bias"].shape == (24,)
    other = materialize(_case(regime, act, seed=8))
    assert not np.array_equal(other["w"], a["w"])


@pytest.mark.parametrize("act", family.ACTS)
def test_exact_regime_inputs_are_exact(act):
    for seed in range(4):
        problem = materialize(_case("exact", act, seed=seed, k=256, m=5, n=16))
        assert exact_regime_reason("mxfp4_gemm", problem) is None


def test_realistic_scales_are_checkpoint_like():
    p = materialize(_case("realistic", "mxfp4", m=8, n=64, k=256))
    assert 112 <= p["w_scale"].min() and p["w_scale"].max() <= 127
    assert len(np.unique(p["w_scale"])) >= 4  # per-column spreads, not one scale
    assert 118 <= p["a_scale"].min() and p["a_scale"].max() <= 133  # normal activations, outliers 20x


@pytest.mark.parametrize("act", family.ACTS)
def test_adversarial_inputs_span_exponents_and_hold_max_and_zero_blocks(act):
    p = materialize(_case("adversarial", act, m=4, n=16, k=256))
    blocks = 256 // MX_BLOCK
    lo, hi = family.ADVERSARIAL_EXPONENTS
    e = p["w_scale"].astype(int) - 127
    assert e.min() >= lo and e.max() <= hi
    assert np.all(e[1:] != e[:-1])  # neighbouring blocks never share a scale
    assert all(len(np.unique(e[:, j])) == blocks for j in range(16))  # one exponent per block of a column
    w = E2M1.decode_table[p["w"]].reshape(blocks, MX_BLOCK, 16)
    assert np.any(np.all(np.abs(w) == 6.0, axis=1)) and np.any(np.all(w == 0.0, axis=1))
    assert np.any(p["w"] == 0x8)  # negative zero codes
    if act == "mxfp4":
        ea = p["a_scale"].astype(int) - 127
        assert np.all(ea[:, 1:] != ea[:, :-1])
        a = E2M1.decode_table[p["a"]].reshape(4, blocks, MX_BLOCK)
        assert np.any(np.all(np.abs(a) == 6.0, axis=2)) and np.any(np.all(a == 0.0, axis=2))


def test_case_rules_name_the_fix():
    with pytest.raises(ValueError, match=r"K=40 must be a multiple of the 32-element MX scale block.*K = 32 or 64"):
        _case("exact", k=40)
    with pytest.raises(ValueError, match=r"config\[.block_k.\]=16 is not allowed"):
        Case.make("mxfp4_gemm", shape={"m": 1, "n": 16, "k": 32},
                  params={"act": "a16", "act_dtype": "float16", "out_dtype": "float16", "bias": False},
                  config={"block_m": 16, "block_n": 16, "block_k": 16})


# --------------------------------------------------------------------------------------- grid


def test_grid_covers_the_case_space():
    cases = grid(MXFP4)
    assert 30 <= len(cases) <= 50
    assert len({c.id for c in cases}) == len(cases)
    runnable = [c for c in cases if c.p["act_dtype"] == "float16" and c.p["out_dtype"] != "bfloat16"]
    seen = lambda f: {f(c) for c in runnable}  # noqa: E731
    assert seen(lambda c: c.p["act"]) == set(family.ACTS)
    assert seen(lambda c: c.cfg.get("block_k")) >= {32, 64, 128, None}  # = and > the scale block, default
    assert seen(lambda c: c.regime) == set(REGIMES)
    assert seen(lambda c: (c.p["act"], c.regime)) == {(a, r) for a in family.ACTS for r in REGIMES}
    assert seen(lambda c: c.p["bias"]) == {False, True}
    assert seen(lambda c: c.p["out_dtype"]) == {"float16", "float32"}
    assert seen(lambda c: c.cfg.get("split_k", 1)) >= {1, 2}
    # the case space's coverage: every split_k value the adapter declares appears in the grid
    assert {c.cfg.get("split_k", 1) for c in cases} >= set(MXFP4.tunables["split_k"])
    assert 1 in seen(lambda c: c.dims["m"]) and any(c.dims["k"] % c.cfg.get("block_k", 1) for c in runnable)
    assert {c.p["act_dtype"] for c in cases} == {"float16", "bfloat16"}
    assert "bfloat16" in {c.p["out_dtype"] for c in cases}


@pytest.mark.slow  # the gate (CI's main job) runs the whole grid
def test_bundled_adapter_passes_a_sample_of_its_grid():
    cases = [c for c in grid(MXFP4) if c.p["act_dtype"] == "float16" and c.p["out_dtype"] != "bfloat16"]
    sample = cases[::3]
    assert {c.p["act"] for c in sample} == set(family.ACTS) and {c.regime for c in sample} == set(REGIMES)
    for case in sample:
        result = run_case(case, MXFP4, "cpu")
        assert result.status == PASS, result.summary()
        assert [c.name for c in result.checks] == ["signature", "contract", "numerics", "inputs_unchanged",
                                                   "determinism", "fake_vs_real"]
    bf16 = next(c for c in grid(MXFP4) if c.p["act_dtype"] == "bfloat16")
    corrected = run_case(bf16, MXFP4, "cpu")  # bf16 tl.dot: corrected in the interpreter (kernels/interpreter.py)
    assert corrected.status == PASS, corrected.summary()


# ------------------------------------------------------------------------------ zoo: seed 000


def test_signature_check_names_the_bias_parameter():
    drift = zoo.ADAPTER.check_signature()
    assert drift and DRIFT in drift and "(x, w, w_scale, bias, out," in drift
    result = run_case(_case("exact"), zoo.ADAPTER, "cpu")
    assert result.status == FAIL and [c.name for c in result.failed_checks] == ["signature"]


@pytest.mark.parametrize("act,bias,out", [("a16", False, "float16"), ("mxfp4", True, "float32")])
def test_without_the_signature_declaration_the_numerics_catch_the_misbinding(act, bias, out):
    undeclared = dataclasses.replace(zoo.ADAPTER, signature=())
    assert undeclared.check_signature() is None
    case = _case("realistic", act, bias=bias, out=out)
    result = run_case(case, undeclared, "cpu")
    assert result.status == FAIL
    assert [c.name for c in result.failed_checks] == ["numerics"], result.summary()
    # what came back is the stale buffer (plus the model bias), not the GEMM
    import torch

    t = MXFP4.pack(materialize(case), case.p, "cpu")
    got = undeclared.call(t, case.p, case.cfg).double()
    stale = zoo.stale_buffer(tuple(got.shape), torch.float32, "cpu").double()
    if bias:
        stale = stale + t["bias"].double()
    assert torch.equal(got, stale.to(got.dtype).double())
    # and the diagnosis result is recorded (its hypotheses are the oracle's business)
    assert isinstance(result.diagnosis, list)


def test_the_same_adapter_against_the_previous_api_passes(monkeypatch):
    """Only the API drift is wrong: bound to a function with the previous release's signature
    (``out`` in slot 3, no bias), the adapter's call is correct."""
    current = zoo.mxfp4_gemm

    def previous_release(x, w, w_scale, out=None, *, x_scale=None, dtype=None, compute_dtype=None, config=None):
        return current(x, w, w_scale, out=out, x_scale=x_scale, dtype=dtype, compute_dtype=compute_dtype,
                       config=config)

    monkeypatch.setattr(zoo, "mxfp4_gemm", previous_release)
    adapter = dataclasses.replace(zoo.ADAPTER, target=previous_release)
    assert adapter.check_signature() is None
    for case in (_case("exact", "a16", bias=True), _case("adversarial", "mxfp4", bias=False, out="float32")):
        result = run_case(case, adapter, "cpu")
        assert result.status == PASS, result.summary()


def test_engine_api_rejects_what_it_cannot_broadcast():
    import torch

    case = _case("exact")
    t = MXFP4.pack(materialize(case), case.p, "cpu")
    with pytest.raises(ValueError, match=r"bias.shape=\(2, 24\) does not broadcast against the output \[3, 24\]"):
        zoo.mxfp4_gemm(t["x_or_a"], t["w"], t["w_scale"], torch.zeros(2, 24))
    with pytest.raises(ValueError, match=r"out=\(3, 5\) must be a tensor of shape \[M, N\] = \[3, 24\]"):
        zoo.mxfp4_gemm(t["x_or_a"], t["w"], t["w_scale"], out=torch.zeros(3, 5))


# ------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def bundled_fuzz(tmp_path_factory):
    """The bundled kernel's fuzz run, started as soon as a test asks for it and collected by the
    last test: it spends its budget while the other command-line runs go on. 15 s: many times what
    the fuzzer needs to find the zoo entry (its first case, about a second into the fuzz)."""
    where = tmp_path_factory.mktemp("bundled-fuzz")
    proc = qkcheck_popen("fuzz", "--kernels", "bundled:mxfp4_gemm", "--budget", "15s", "--device", "cpu",
                         "--failures-dir", where / "f", "--", "-s", merge_stderr=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_gate_fails_the_zoo_entry_naming_bias_and_passes_the_bundled_kernel(tmp_path, bundled_fuzz):
    shard = ("--shard", "1/2")  # half the grid for each, the same half (the whole grid: tests/gate)
    bad = qkcheck("gate", "--device", "cpu", "--kernels", "zoo:api_misbinding", *shard,
                  "--failures-dir", str(tmp_path / "f"))
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert DRIFT in bad.stdout and "'bias'" in bad.stdout
    good = qkcheck("gate", "--device", "cpu", "--kernels", "bundled:mxfp4_gemm", *shard,
                   "--failures-dir", str(tmp_path / "g"))
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    assert " passed" in good.stdout and "failed" not in good.stdout


def test_fuzz_finds_the_zoo_entry_shrinks_it_and_the_replay_reproduces(zoo_fuzz, qkcheck_here):
    run = zoo_fuzz("api_misbinding")  # the run test_cli's shrink-budget test asserts on too
    r, fails = run.process, run.failures
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert DRIFT in r.stdout and "fuzz found a failure" in r.stdout
    saved = sorted(fails.glob("*.json"))
    assert len(saved) == 1
    case = json.loads(saved[0].read_text())
    # shrunk to the smallest case: one row, one scale block, the narrowest N
    assert (case["shape"]["m"], case["shape"]["k"], case["shape"]["n"]) == (1, MX_BLOCK, 16)
    assert case["params"]["bias"] is False and case["params"]["act"] == "a16"
    replay = qkcheck_here("replay", str(saved[0]), "--kernels", "zoo:api_misbinding", "--device", "cpu")
    assert replay.returncode == 1 and DRIFT in replay.stdout, replay.stdout + replay.stderr
    fixed = qkcheck_here("replay", str(saved[0]), "--kernels", "bundled:mxfp4_gemm", "--device", "cpu")
    assert fixed.returncode == 0 and ": PASS" in fixed.stdout, fixed.stdout + fixed.stderr


def test_fuzz_passes_the_bundled_kernel_within_the_same_budget(bundled_fuzz):
    out, _ = bundled_fuzz.communicate(timeout=300)
    assert bundled_fuzz.returncode == 0, out[-3000:]
    assert "fuzz bundled:mxfp4_gemm:" in out and "no failure" in out
