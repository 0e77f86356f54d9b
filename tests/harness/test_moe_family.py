"""The fused-MoE family in the harness: the dispatcher's choices by capability and its declared
expectations; the bundled adapter passes a sample of its grid (and a twin that skips the W4A4
activation quantization is caught in the exact regime); the seed-001 dispatcher
(zoo:silent_emulation) fails the generic gate with "ran on emulation, native expected", the
fuzzer finds it and shrinks it, the replay reproduces it, and the bundled dispatcher passes the
same gate selection, fuzz budget and replay."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qkcheck.cases.case import Case
from qkcheck.cases.registry import grid, materialize
from qkcheck.cases.runner import FAIL, PASS, SKIP, run_case
from qkcheck.kernels import backends
from qkcheck.kernels import backends as dispatch
from qkcheck.kernels.catalog import resolve
from tests.harness.conftest import qkcheck

ZOO, BUNDLED = "zoo:silent_emulation", "bundled:fused_moe"
W4A4 = "w_mxfp4_a_mxfp4"
WANT = "ran on emulation, native expected"


def plat(*caps):
    return dispatch.Platform("test", None, frozenset(caps))


# ------------------------------------------------------------------ dispatcher


def test_dispatcher_picks_native_where_the_capabilities_allow_and_emulation_elsewhere():
    from qkcheck.kernels.moe import dispatch as md

    full = plat("triton", "fp8", "mx")
    for scheme in md.SCHEMES:
        assert dispatch.pick("fused_moe", scheme, full, native_schemes=md.NATIVE_SCHEMES).name == backends.NATIVE
    no_mx = plat("triton", "fp8")
    assert dispatch.pick("fused_moe", W4A4, no_mx, native_schemes=md.NATIVE_SCHEMES).name == backends.EMULATION
    assert dispatch.pick("fused_moe", "w_mxfp4", no_mx, native_schemes=md.NATIVE_SCHEMES).name == backends.EMULATION
    assert dispatch.pick("fused_moe", "dense", no_mx, native_schemes=md.NATIVE_SCHEMES).name == backends.NATIVE
    no_fp8 = plat("triton", "mx")
    assert dispatch.pick("fused_moe", "fp8_block", no_fp8, native_schemes=md.NATIVE_SCHEMES).name == backends.EMULATION
    assert dispatch.pick("fused_moe", "dense", plat(), native_schemes=md.NATIVE_SCHEMES).name == backends.EMULATION
    assert "w_mxfp4_a_mxfp4" in md.NATIVE_SCHEMES and "w_mxfp4" in md.NATIVE_SCHEMES
    with pytest.raises(ValueError, match="scheme='w9a9' is not a fused MoE scheme"):
        md.pick("w9a9", "cpu")


def test_seed_001_dispatcher_differs_only_in_w4a4_on_mx_platforms():
    from qkcheck.kernels.moe import dispatch as md
    from qkcheck.kernels.zoo import silent_emulation as zoo

    assert md.NATIVE_SCHEMES - zoo.NATIVE_SCHEMES == {W4A4}
    full = plat("triton", "fp8", "mx")
    for scheme in md.SCHEMES:
        got = dispatch.pick("fused_moe", scheme, full, native_schemes=zoo.NATIVE_SCHEMES).name
        assert got == (backends.EMULATION if scheme == W4A4 else backends.NATIVE), scheme


def test_expectations_are_declared_as_data():
    from qkcheck.kernels.moe import dispatch as md

    declared = {e.scheme: e for e in dispatch.EXPECTATIONS if e.op == "fused_moe"}
    assert set(declared) == set(md.SCHEMES)
    assert declared[W4A4].requires == frozenset({"triton", "mx"}) and declared[W4A4].backend == backends.NATIVE
    assert "on a platform with mx and triton, fused_moe with scheme w_mxfp4_a_mxfp4 runs native" == \
        declared[W4A4].sentence()
    assert dispatch.expected_backend("fused_moe", W4A4, plat("triton", "mx")) == backends.NATIVE
    assert dispatch.expected_backend("fused_moe", W4A4, plat("triton")) is None
    assert dispatch.expected_backend("fused_moe", "fp8_block", plat("triton", "mx")) is None
    # every Triton platform decodes MX in software, the interpreter included
    assert md.expected_backend(W4A4, "cpu") == backends.NATIVE


def test_torch_mx_quantization_matches_the_oracle():
    import torch

    from qkcheck.kernels.moe.emulation import mx_fake_quant_torch
    from qkcheck.oracle.schemes import dequantize, get_scheme, quantize

    rng = np.random.default_rng(0)
    v = rng.standard_normal((5, 96)) * 2.0 ** rng.integers(-6, 6, (5, 1))
    v[0, :32] = 0.0  # all-zero block
    v[1, :32] = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0] * 4)  # ties and saturation at scale 1
    v = v.astype(np.float32).astype(np.float64)
    want = dequantize(quantize(v, get_scheme("mxfp4"), axis=1))
    got = mx_fake_quant_torch(torch.from_numpy(v).float()).double().numpy()
    assert np.array_equal(got, want)


# ------------------------------------------------------------------ bundled adapter


@pytest.mark.slow  # the gate (CI's main job) runs the whole grid
def test_bundled_adapter_passes_a_sample_of_its_grid(device):
    adapter = resolve(BUNDLED)[0]
    cases = grid(adapter)
    assert len(cases) < 40
    schemes = {c.p["scheme"] for c in cases}
    assert {"dense", "w4a16", "w_mxfp4", W4A4} <= schemes
    sample = [c for c in cases if c.p["scheme"] == W4A4][:2] + [cases[1], cases[9]]
    for case in sample:
        res = run_case(case, adapter, device)
        assert res.status in (PASS, SKIP), res.summary()
        if res.status == PASS:
            assert res.backends and set(res.backends) == {backends.NATIVE}


def test_grid_covers_zero_token_experts_one_expert_ep_and_every_scheme():
    cases = grid(resolve(BUNDLED)[0])
    assert any(c.p["routing"] == "sparse" for c in cases)
    assert any(c.p["routing"] == "one" for c in cases)
    assert any(c.p["ep"] for c in cases)
    assert {c.regime for c in cases if c.p["scheme"] == W4A4} == {"exact", "realistic", "adversarial"}
    sparse = next(c for c in cases if c.p["routing"] == "sparse")
    problem = materialize(sparse)
    from qkcheck.oracle.ops.moe import route

    used = set(np.unique(route(problem).topk_ids).tolist())
    assert len(used) < sparse.dims["e"]  # some experts get no token


def _moved_by_max_group_score(problem) -> np.ndarray:
    """Per token: whether scoring groups by their largest score (DeepSeek-V2) instead of the sum
    of their two largest (V3, the problem's rule) routes it to other experts (the oracle's route)."""
    from qkcheck.oracle.ops.moe import route

    rule = np.sort(route(problem).topk_ids, axis=1)
    by_max = np.sort(route(dict(problem, group_score="max")).topk_ids, axis=1)
    return (rule != by_max).any(axis=1)


def test_grouped_routing_cases_rank_groups_differently_by_their_largest_score():
    """A kernel scoring each expert group by its largest score routes every token as the rule does
    unless some token's groups rank differently the two ways: the grouped realistic and
    adversarial cases make them differ on their even tokens (where no correction bias undoes it),
    the gate's grouped cases included, deterministically from the seed."""
    from qkcheck.cases.families.moe import SPEC, _BASE, group_rankings_split

    gated = [c for c in grid(resolve(BUNDLED)[0]) if c.p["grouped"]]
    assert gated
    for case in gated:
        problem = materialize(case)
        assert _moved_by_max_group_score(problem).any(), case.id
        assert np.array_equal(problem["router_logits"], materialize(case)["router_logits"])
    for regime in ("realistic", "adversarial"):
        for scoring in ("softmax", "sigmoid"):
            for k, e in ((1, 4), (2, 8), (4, 8)):
                case = SPEC.case(shape={"t": 9, "h": 64, "i": 32, "e": e}, config={}, regime=regime, seed=k,
                                 params={**_BASE, "grouped": True, "scoring": scoring, "top_k": k})
                moved = _moved_by_max_group_score(materialize(case))
                assert moved[::2].all(), (case.id, moved)
    # twin: the split check fails on a token whose groups rank alike both ways
    assert not group_rankings_split(np.array([3.0, 2.0, 0.0, -1.0]), None, "sigmoid", 0)
    assert group_rankings_split(np.array([1.0, 0.9, 2.0, -3.0]), None, "sigmoid", 0)


def test_w4a4_exact_regime_catches_a_dispatcher_that_skips_activation_quantization(device):
    """The W4A16 MXFP4 path run on a W4A4 problem (activations left unquantized) must fail the
    exact regime; the real W4A4 path passes it."""
    from qkcheck.kernels.moe import adapter as bundled_moe
    from qkcheck.oracle.compare import compare
    from qkcheck.oracle.ops import expect

    case = next(c for c in grid(resolve(BUNDLED)[0]) if c.p["scheme"] == W4A4 and c.regime == "exact")
    problem = materialize(case)
    e = expect("fused_moe", problem, exact=True, compute_dtype="float16", out_dtype=case.p["out_dtype"])
    adapter = resolve(BUNDLED)[0]
    tensors = adapter.pack(problem, case.p, device)
    good = adapter.call(tensors, case.p, case.cfg).double().cpu().numpy()
    assert compare(good, e.expected, e.bound) is None
    twin = {**case.p, "scheme": "w_mxfp4"}
    bad = bundled_moe._call_dispatcher(tensors, twin, case.cfg).double().cpu().numpy()
    assert compare(bad, e.expected, e.bound) is not None


# ------------------------------------------------------------------ the gate and the fuzzer


def test_gate_fails_the_seed_001_dispatcher_on_emulation_and_passes_the_bundled_one(tmp_path):
    select = ["--op", "fused_moe", "--device", "cpu", "--", "-k", f"{W4A4} and exact"]
    bad = qkcheck("gate", "--kernels", ZOO, "--results", str(tmp_path / "zoo.jsonl"),
                  "--failures-dir", str(tmp_path / "f1"), *select)
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert WANT in bad.stdout
    results = [json.loads(line) for line in (tmp_path / "zoo.jsonl").read_text().splitlines()[1:]]
    failed = [r for r in results if r.get("status") == FAIL]
    assert failed and all(r["case"]["params"]["scheme"] == W4A4 for r in failed)
    for r in failed:  # numerics are right: only the backend check fails
        assert [c["name"] for c in r["checks"] if c["outcome"] == FAIL] == ["backend"]
    good = qkcheck("gate", "--kernels", BUNDLED, "--failures-dir", str(tmp_path / "f2"), *select)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]


def test_fuzz_finds_seed_001_shrinks_it_and_the_replay_reproduces(zoo_fuzz, qkcheck_here):
    run = zoo_fuzz("silent_emulation")  # (fused_moe only) the run test_cli's shrink-budget test asserts on too
    r, fails = run.process, run.failures
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert WANT in r.stdout
    saved = sorted(fails.glob("*.json"))
    assert len(saved) == 1
    case = json.loads(saved[0].read_text())
    assert case["params"]["scheme"] == W4A4
    # shrunk toward the smallest case of the space
    assert case["shape"]["t"] == 1 and case["shape"]["h"] == 32 and case["shape"]["i"] == 32
    assert case["params"]["top_k"] == 1 and case["shape"]["e"] == 1
    replay = qkcheck_here("replay", str(saved[0]), "--kernels", ZOO, "--device", "cpu")
    assert replay.returncode == 1 and WANT in replay.stdout
    fixed = qkcheck_here("replay", str(saved[0]), "--kernels", BUNDLED, "--device", "cpu")
    assert fixed.returncode == 0, fixed.stdout


@pytest.mark.slow  # a 20 s fuzz; the bundled dispatcher's grid runs in the gate
def test_fuzz_passes_the_bundled_dispatcher_on_the_same_budget(tmp_path):
    # 15 s: several times what the fuzzer needs to find the seed-001 dispatcher (its second case,
    # 3-8 s into the fuzz on the CPU); the shrinking after that is what the zoo run's budget is for
    r = qkcheck("fuzz", "--kernels", BUNDLED, "--op", "fused_moe", "--budget", "15s", "--device", "cpu",
                "--failures-dir", str(tmp_path / "failures"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not list((tmp_path / "failures").glob("*.json"))
