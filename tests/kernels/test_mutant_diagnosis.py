"""A few mutants of the bundled kernels (benchmarks/mutants/mutants.py) through the runner on one
gate case each: the failure is detected and the diagnosis names the mutant's mechanism alone (the
full table, gate and fuzz, is benchmarks/bench_mutants.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "benchmarks" / "mutants" / "mutants.py")

# mutant -> a predicate picking the gate case its mutation must show on
PICK = {
    "w4a16_first_group_scale": lambda c: c.cfg.get("block_k", 0) > c.p["group_size"] > 0,
    "w4a16_x_contiguous": lambda c: c.dims["m"] >= 2,
    "scaled_mm_a_scale_per_tensor": lambda c: c.dims["m"] >= 2 and c.p.get("a_scale_shape") == "[M,1]",
    # the decode path (the CPU's default is native); the exact regime's per-tensor a_scale 0.25
    # would make it indistinguishable from a_scale applied twice
    "scaled_mm_fn_as_fnuz": lambda c: (c.cfg.get("fp8_path") == "decode" and c.p["quant_dtype"] == "float8_e4m3fn"
                                       and c.regime != "exact"),
    # grouped routing whose tokens rank the groups differently by their largest score
    "fused_moe_group_score_max": lambda c: c.p.get("grouped", False),
}


@pytest.fixture(scope="module")
def mutants():
    import qkcheck

    return {a.name.removeprefix("mutant:"): a for a in qkcheck.resolve_kernels(SPEC, device="cpu")}


@pytest.mark.parametrize("name", sorted(PICK))
def test_mutant_is_caught_and_its_mechanism_named(mutants, name):
    import qkcheck

    adapter = mutants[name]
    expected = re.search(r"\(expected: (\w+)\)", adapter.description).group(1)
    case = next(c for c in qkcheck.gate_cases(adapter) if PICK[name](c))
    res, = qkcheck.run_cases([case], adapter, device="cpu")
    assert res.status == "fail", res.summary()
    assert [d["hypothesis"] for d in res.diagnosis] == [expected] * len(res.diagnosis) and res.diagnosis, \
        res.summary()
