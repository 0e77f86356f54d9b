"""Contracts an adapter can state beyond its op's strict default, each through the adapter file
``tests/harness/contract_kernels.py`` (written only against the public API), each with a twin
that shows the check can fail: partial last groups (``accepts``), padded or column-major scale
outputs (``output_layouts``), a workspace the runner allocates poisoned (``workspace``), the
clamped silu*up MoE activation (an opt-in ``act`` value), and ``signed_zero="either"`` (a
convention). What is not declared stays strict."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from qkcheck.cases import registry
from qkcheck.cases.gate import gate_cases
from qkcheck.cases.registry import OP_SPECS, validate_adapter
from qkcheck.cases.runner import run_case
from qkcheck.kernels.adapters import AdapterError, KernelAdapter, Workspace, padded
from qkcheck.kernels.catalog import resolve

FILE = Path(__file__).with_name("contract_kernels.py")


@pytest.fixture(scope="module")
def ck():
    spec = importlib.util.spec_from_file_location("contract_kernels", FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _draw(strategy, n=150):
    got = []

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def collect(case):
        got.append(case)

    collect()
    return got


def _check(res, name):
    return next((c for c in res.checks if c.name == name), None)


def test_the_file_loads_as_a_kernels_spec(ck):
    names = [a.name for a in resolve(str(FILE))]
    assert names == [a.name for a in ck.ADAPTERS]
    for a in ck.ADAPTERS:
        validate_adapter(a)


# ------------------------------------------------------------------ partial last groups


W4 = OP_SPECS["w4a16_gemm"]


def _w4(k, g, regime="exact", zp=True, bias=False, m=3, seed=1):
    return W4.case(shape={"m": m, "n": 24, "k": k},
                   params={"group_size": g, "zero_points": zp, "layout": "gptq", "act_dtype": "float16",
                           "out_dtype": "float16", "bias": bias}, regime=regime, seed=seed)


def test_partial_groups_reference_against_an_independent_dequantization():
    from qkcheck.oracle.ops.w4a16 import w4a16_gemm

    rng = np.random.default_rng(3)
    k, n, g = 80, 8, 32
    x = rng.integers(-3, 4, (2, k)).astype(float)
    q = rng.integers(0, 16, (k, n))
    s = rng.integers(1, 4, (3, n)).astype(float)
    z = rng.integers(0, 16, (3, n))
    w = np.stack([(q[r] - z[r // g]) * s[r // g] for r in range(k)])
    assert np.array_equal(w4a16_gemm(x, q, s, z, group_size=g), x @ w)
    with pytest.raises(ValueError, match=r"expected \(3, 8\) \(one row per group of 32 along K \(the last one partial: 16"):
        w4a16_gemm(x, q, s[:2], z[:2], group_size=g)


def test_partial_groups_run_only_where_declared(ck):
    a = ck.w4a16_partial_adapter()
    cases = [_w4(80, 32), _w4(104, 64, "realistic", bias=True), _w4(40, 64, "adversarial", zp=False),
             _w4(24, 32, "adversarial", bias=True, m=1, seed=2892)]  # one group, shorter than G, zeroed
    for c in cases:
        res = run_case(c, a, "cpu")
        assert res.status == "pass", res.summary()
    # the gate covers one, the fuzzer draws them
    assert any(c.dims["k"] % c.p["group_size"] for c in gate_cases(a))
    drawn = _draw(registry.from_adapter(a))
    assert sum(c.dims["k"] % c.p["group_size"] != 0 for c in drawn) >= 10
    # twin: the same kernel without the declaration never gets one, and a given one is skipped
    strict = ck.w4a16_partial_adapter(accepts=())
    assert not any(c.dims["k"] % c.p["group_size"] for c in gate_cases(strict))
    assert not any(c.dims["k"] % c.p["group_size"] for c in _draw(registry.from_adapter(strict)))
    res = run_case(cases[0], strict, "cpu")
    assert res.status == "skip" and "does not declare accepts=('partial_groups',)" in res.skip_reason
    assert run_case(_w4(96, 32), strict, "cpu").status == "pass"


def test_a_kernel_that_drops_the_partial_group_fails(ck):
    bug = ck.w4a16_partial_adapter(whole_groups_only=True)
    res = run_case(_w4(80, 32), bug, "cpu")
    assert res.status == "fail" and _check(res, "numerics").outcome == "fail", res.summary()
    assert run_case(_w4(96, 32), bug, "cpu").status == "pass"  # whole groups: the bug does not show


def test_an_unknown_accepts_name_is_a_usage_error(ck):
    import dataclasses

    with pytest.raises(AdapterError, match=r"accepts \['partial_group'\], which w4a16_gemm does not have \(allowed: partial_groups"):
        validate_adapter(dataclasses.replace(ck.w4a16_partial_adapter(), accepts=("partial_group",)))


def test_the_bundled_w4a16_does_not_declare_partial_groups():
    bundled = next(a for a in resolve("bundled") if a.op == "w4a16_gemm")
    assert "partial_groups" not in bundled.accepts
    assert not any(c.p["group_size"] != -1 and c.dims["k"] % c.p["group_size"] for c in gate_cases(bundled))


# ------------------------------------------------------------------ padded / column-major scales


GQ = OP_SPECS["per_token_group_quant"]


def _gq(m, k, regime, seed=0, dt="float32"):
    return GQ.case(shape={"m": m, "k": k},
                   params={"in_dtype": dt, "quant_dtype": "int8", "group_size": 32, "column_major_scales": False,
                           "scale_ue8m0": False}, regime=regime, seed=seed)


GQ_CASES = [(5, 96, "adversarial"), (3, 160, "realistic"), (2, 64, "exact")]  # 3, 5, 2 groups: padded to 4, 8, 4


def test_padded_scales_are_checked_in_their_region_only(ck):
    a = ck.group_quant_padded_adapter()
    for m, k, regime in GQ_CASES:
        res = run_case(_gq(m, k, regime), a, "cpu")  # the padding differs from run to run: never read
        assert res.status == "pass", res.summary()
    # twin: the same kernel without the declaration fails its contract (shape)
    plain = ck.group_quant_padded_adapter(output_layouts={})
    res = run_case(_gq(5, 96, "adversarial"), plain, "cpu")
    assert res.status == "fail" and "scales: output shape [5, 4], expected [5, 3]" in _check(res, "contract").detail


def test_padding_is_held_to_the_declared_shape_and_the_region_strictly(ck):
    # padded to 8 where 4 is declared: a contract failure naming the declaration
    wide = ck.group_quant_padded_adapter(pad_cols=8)
    res = run_case(_gq(5, 96, "adversarial"), wide, "cpu")
    assert "scales: output shape [5, 8], expected [5, 4] (the contract's [5, 3] padded(cols=4), as declared)" in \
        _check(res, "contract").detail
    # scales written one column off, into the padding: the region is wrong, numerics fail
    shifted = ck.group_quant_padded_adapter(shift=True)
    res = run_case(_gq(5, 96, "adversarial"), shifted, "cpu")
    assert res.status == "fail" and _check(res, "numerics").outcome == "fail", res.summary()


def test_column_major_scales_need_no_declaration(ck):
    a = ck.group_quant_padded_adapter("cm", output_layouts={}, column_major=True)
    for m, k, regime in GQ_CASES + [(1, 32, "exact")]:  # M = 1: a [1, 1] view with column stride 4
        res = run_case(_gq(m, k, regime), a, "cpu")
        assert res.status == "pass", res.summary()


def test_a_padded_preallocated_output_needs_only_its_region_written():
    import torch

    def make(cols):  # writes codes [M, K] (the first `cols` columns of them) into a given padded output
        def call(t, params, config):
            m, k = t["x"].shape
            g = t["x"].float().reshape(m, k // 32, 32)
            s = g.abs().amax(2).clamp_min(1e-10) / 127.0
            codes = torch.round(g / s[:, :, None]).clamp(-128, 127).to(torch.int8).reshape(m, k)
            t["out"][:, :cols] = codes[:, :cols]
            return t["out"], s

        return KernelAdapter(name="prealloc", op="per_token_group_quant", call=call, triton=False, out_param="out",
                             pack=lambda p, params, d: {"x": torch.from_numpy(np.asarray(p["x"], np.float32))},
                             params={"quant_dtype": ("int8",), "group_size": (32,), "in_dtype": ("float32",)},
                             output_layouts={"codes": padded(cols=64)})

    case = _gq(3, 96, "realistic")  # codes [3, 96] in a [3, 128] output
    res = run_case(case, make(96), "cpu")
    assert res.status == "pass" and _check(res, "output_memory").outcome == "pass", res.summary()
    # twin: a kernel that leaves part of the region unwritten fails (the padding is not required)
    res = run_case(case, make(64), "cpu")
    assert "96 output element(s) were never written (first at [0, 64]" in _check(res, "output_memory").detail


def test_an_output_layout_for_an_output_the_op_lacks_errors_the_case(ck):
    bad = ck.group_quant_padded_adapter(output_layouts={"scale": padded(cols=4)})
    res = run_case(_gq(5, 96, "adversarial"), bad, "cpu")
    assert res.status == "error" and "output_layouts names ['scale']" in res.error["exception"]
    with pytest.raises(AdapterError, match="padded"):
        KernelAdapter(name="x", op="per_token_group_quant", pack=None, call=None, output_layouts={"scales": 4})


# ------------------------------------------------------------------ a workspace


PT = OP_SPECS["per_token_quant"]
PT_CASES = [PT.case(shape={"m": m, "k": k}, params={"in_dtype": dt, "quant_dtype": "float8_e4m3fn", "scale_ub": False},
                    regime=regime, seed=s)
            for s, (m, k, dt, regime) in enumerate([(6, 64, "float32", "realistic"), (3, 96, "float16", "adversarial")])]


def test_a_declared_workspace_is_allocated_poisoned_and_passed(ck):
    a = ck.token_quant_workspace_adapter()
    for c in PT_CASES:
        res = run_case(c, a, "cpu")
        assert res.status == "pass", res.summary()
        assert _check(res, "workspace").outcome == "pass"
    # twin: the same kernel without the declaration gets no workspace and fails
    res = run_case(PT_CASES[0], ck.token_quant_workspace_adapter(workspace=False), "cpu")
    assert res.status == "fail" and "the kernel raised KeyError: 'amax'" in _check(res, "raised").detail


def test_a_kernel_that_depends_on_the_workspace_contents_fails(ck):
    # fmax folds the row max into what the workspace held: NaN poison is ignored (the first run is
    # right, numerics pass), the second fill is not
    stale = ck.token_quant_workspace_adapter(stale_max=True)
    res = run_case(PT_CASES[0], stale, "cpu")
    assert res.status == "fail", res.summary()
    assert _check(res, "numerics").outcome == "pass"
    assert "the output depends on the workspace's initial contents" in _check(res, "workspace").detail


def test_a_kernel_that_writes_past_its_workspace_fails(ck):
    res = run_case(PT_CASES[0], ck.token_quant_workspace_adapter(spill=True), "cpu")
    assert res.status == "fail", res.summary()
    assert "around workspace 'amax' were overwritten" in _check(res, "workspace").detail
    assert "past its end" in _check(res, "workspace").detail


def test_workspace_shapes_and_dtypes_may_depend_on_the_case():
    w = Workspace("ws", shape=lambda d, p, c: (d["m"], c.get("split_k", 1)), dtype=lambda p: p["d"])
    assert w.shape_for({"m": 3}, {}, {"split_k": 2}) == (3, 2) and w.dtype_for({"d": "int32"}) == "int32"
    a = KernelAdapter(name="x", op="per_token_quant", pack=None, call=None, workspace=w)
    assert a.workspace == (w,)


# ------------------------------------------------------------------ clamped silu*up (fused_moe)


MOE = OP_SPECS["fused_moe"]


def _moe(act, regime, seed):
    return MOE.case(shape={"t": 9, "h": 64, "i": 32, "e": 4},
                    params={"scheme": "dense", "top_k": 2, "scoring": "softmax", "renorm": True, "grouped": False,
                            "bias": False, "act": act, "weight_on_input": False, "ep": False, "routing": "spread",
                            "layout": "gptq", "zp": False, "act_dtype": "float16", "out_dtype": "float32"},
                    regime=regime, seed=seed)


def test_clamped_silu_runs_where_declared_and_the_clamp_is_checked(ck):
    a = ck.moe_silu7_adapter()
    cases = [_moe("silu7", "adversarial", 1), _moe("silu7", "realistic", 2), _moe("silu", "realistic", 3)]
    for c in cases:
        res = run_case(c, a, "cpu")
        assert res.status == "pass", res.summary()
    assert any(c.p["act"] == "silu7" for c in gate_cases(a))
    assert any(c.p["act"] == "silu7" for c in _draw(registry.from_adapter(a), 60))
    # twin: a kernel that forgets the clamp fails the clamped cases
    res = run_case(cases[0], ck.moe_silu7_adapter(clamp=False), "cpu")
    assert res.status == "fail" and _check(res, "numerics").outcome == "fail", res.summary()


def test_clamped_silu_is_opt_in(ck):
    # an adapter that does not name act at all takes silu, swiglu and swiglu7, never silu7
    import dataclasses

    a = ck.moe_silu7_adapter()
    silent = dataclasses.replace(a, params={k: v for k, v in a.params.items() if k != "act"})
    space = registry.case_space(silent)
    assert "silu7" not in space.values("act") and "swiglu7" in space.values("act")
    res = run_case(_moe("silu7", "adversarial", 1), silent, "cpu")
    assert res.status == "skip" and "act='silu7' is taken only where declared" in res.skip_reason
    bundled = next(x for x in resolve("bundled") if x.op == "fused_moe")
    assert not any(c.p["act"] == "silu7" for c in gate_cases(bundled))


# ------------------------------------------------------------------ signed_zero="either"


def _zero_cases():
    # adversarial per-token cases hold rows of -0.0: their expected code is -0
    return [PT.case(shape={"m": m, "k": 64}, params={"in_dtype": dt, "quant_dtype": "float8_e4m3fn", "scale_ub": False},
                    regime="adversarial", seed=s) for s, (m, dt) in enumerate([(12, "float32"), (16, "bfloat16")])]


def test_signed_zero_either_is_answered_where_declared(ck):
    a = ck.fp8_plus_zero_adapter()
    for c in _zero_cases():
        res = run_case(c, a, "cpu")
        assert res.status == "pass", res.summary()
        assert res.conventions == {"signed_zero": "either"}
    # twin: the same kernel without the declaration fails (its +0 where -0 is expected)
    strict = ck.fp8_plus_zero_adapter(conventions={})
    failed = [run_case(c, strict, "cpu") for c in _zero_cases()]
    assert all(r.status == "fail" and _check(r, "numerics").outcome == "fail" for r in failed), \
        [r.summary() for r in failed]


def test_signed_zero_either_accepts_zeros_only(ck):
    bug = ck.fp8_plus_zero_adapter(off_by_one_code=True)
    assert all(run_case(c, bug, "cpu").status == "fail" for c in _zero_cases())
    with pytest.raises(AdapterError, match="signed_zeros"):
        import dataclasses

        validate_adapter(dataclasses.replace(ck.fp8_plus_zero_adapter(), conventions={"signed_zeros": "either"}))


def test_signed_zero_is_a_convention_of_every_quant_op():
    from qkcheck.oracle.ops import reference
    from qkcheck.oracle.ops.quant import compare_quant, expect_quant

    for op in ("per_token_quant", "static_quant", "per_token_group_quant", "mx_quant", "nvfp4_quant"):
        assert "signed_zero" in reference(op).conventions
    x = np.array([[-0.0, 1.0, -1e-6, 3.0]], np.float32)
    for value, passes in (("strict", False), ("either", True)):
        e = expect_quant("per_token_quant", {"x": x, "quant_dtype": "float8_e4m3fn", "signed_zero": value})
        plus = np.where(e.codes == 0x80, 0, e.codes).astype(np.uint8)
        assert (compare_quant("per_token_quant", e, plus, e.scales.astype(np.float32)) is None) == passes
    with pytest.raises(ValueError, match=r"signed_zero='maybe' is not allowed \(allowed: 'strict', 'either'\)"):
        expect_quant("per_token_quant", {"x": x, "quant_dtype": "float8_e4m3fn", "signed_zero": "maybe"})


# ------------------------------------------------------------------ through the command line


def test_the_gate_passes_the_stated_contracts_from_the_file(qkcheck_here, tmp_path):
    results = tmp_path / "r.jsonl"
    r = qkcheck_here("gate", "--kernels", f"{FILE}::contract:group_quant_padded", "--kernels",
                     f"{FILE}::contract:fp8_plus_zero", "--kernels", f"{FILE}::contract:token_quant_workspace",
                     "--device", "cpu", "--isolate", "off", "--results", results)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    import json

    lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    res = [x for x in lines if x.get("kernel")]
    assert {x["kernel"] for x in res} == {"contract:group_quant_padded", "contract:fp8_plus_zero",
                                          "contract:token_quant_workspace"}
    assert all(x["status"] == "pass" for x in res)
    assert all(x["conventions"] == {"signed_zero": "either"} for x in res if x["kernel"] == "contract:fp8_plus_zero")
    assert all(any(c["name"] == "workspace" for c in x["checks"]) for x in res
               if x["kernel"] == "contract:token_quant_workspace")
