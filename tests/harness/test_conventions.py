"""Declared conventions: an adapter states a documented choice of its kernel (an fp8 e4m3fnuz
quantizer that maps the group amax to 224, not the format's 240, as ROCm engines do), the runner
sets it on the oracle's problem and records it with the result, the report shows it, and what is
not declared stays strict: the same kernel without the declaration fails (the can-fail twin), and
a declaration the op does not know is a usage error, not an ignored option."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from qkcheck.cases.registry import OP_SPECS, validate_adapter
from qkcheck.cases.runner import run_case
from qkcheck.kernels.adapters import AdapterError, KernelAdapter
from qkcheck.kernels.quant.adapter import pack_per_token
from qkcheck.reports.html import _case_rows

FNUZ = "float8_e4m3fnuz"


def _quant_224(t, params, config):
    """Per-token fp8 quantization to amax / 224 (the ROCm engines' e4m3fnuz choice), in torch."""
    qmax = 224.0 if params["quant_dtype"] == FNUZ else torch.finfo(getattr(torch, params["quant_dtype"])).max
    x = t["x"].float()
    amax = x.abs().amax(dim=1, keepdim=True)
    if t.get("scale_ub") is not None:
        amax = torch.minimum(amax, t["scale_ub"].float())
    scale = amax.clamp(min=1e-10) / qmax
    codes = (x / scale).clamp(-qmax, qmax).to(getattr(torch, params["quant_dtype"]))
    return codes, scale


def _adapter(conventions) -> KernelAdapter:
    return KernelAdapter(name="test:fnuz224", op="per_token_quant", pack=pack_per_token, call=_quant_224,
                         triton=False, conventions=conventions,
                         supports=lambda p: None if p["quant_dtype"] == FNUZ else "e4m3fnuz only")


def _cases():
    spec = OP_SPECS["per_token_quant"]
    return [spec.case(shape={"m": m, "k": k}, params={"in_dtype": dt, "quant_dtype": FNUZ, "scale_ub": ub},
                      regime=regime, seed=seed)
            for seed, (m, k, dt, ub, regime) in enumerate([(9, 96, "float16", False, "adversarial"),
                                                          (4, 64, "float32", False, "exact"),
                                                          (3, 40, "bfloat16", False, "realistic"),
                                                          (5, 128, "float32", True, "realistic")])]


def test_a_declared_qmax_is_answered_for_recorded_and_shown():
    declared = _adapter(lambda p: {"qmax": 224.0} if p["quant_dtype"] == FNUZ else {})
    validate_adapter(declared)
    cases = _cases()
    assert len(cases) >= 3
    for case in cases:
        res = run_case(case, declared, "cpu")
        assert res.status == "pass", res.summary()
        assert res.conventions == {"qmax": 224.0}
        assert ("conventions", "qmax=224.0") in _case_rows(res.to_dict())


def test_the_same_kernel_without_the_declaration_fails():
    strict = _adapter({})
    failed = [run_case(c, strict, "cpu") for c in _cases()]
    assert all(r.status == "fail" for r in failed), [r.summary() for r in failed]
    assert all(r.conventions == {} for r in failed)
    assert all(not any(k == "conventions" for k, _ in _case_rows(r.to_dict())) for r in failed)


def test_a_declared_convention_is_answered_exactly_not_loosely():
    # declared 224 but the kernel uses 232: still a failure (the convention is a value, not a tolerance)
    def quant_232(t, params, config):
        codes, scale = _quant_224(t, params, config)
        x = t["x"].float()
        scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-10) / 232.0
        return (x / scale).clamp(-232.0, 232.0).to(codes.dtype), scale

    wrong = dataclasses.replace(_adapter({"qmax": 224.0}), call=quant_232)
    assert all(run_case(c, wrong, "cpu").status == "fail" for c in _cases()[:3])


@pytest.mark.parametrize("op, conventions, says", [
    ("per_token_quant", {"qmaks": 224.0}, "['qmaks'] are not conventions of per_token_quant (allowed: qmax, amax_floor"),
    ("w4a16_gemm", {"qmax": 224.0}, "not conventions of w4a16_gemm (allowed: dequant, partial_sums"),
    ("scaled_mm", {"qmax": 224.0}, "not conventions of scaled_mm (allowed: none"),
])
def test_an_unknown_convention_is_a_usage_error(op, conventions, says):
    bad = dataclasses.replace(_adapter(conventions), op=op)
    with pytest.raises(AdapterError, match="test:fnuz224") as err:
        validate_adapter(bad)
    assert says in str(err.value)


def test_a_convention_function_naming_an_unknown_key_errors_the_case_with_its_stage():
    bad = _adapter(lambda p: {"qmaks": 224.0})
    res = run_case(_cases()[0], bad, "cpu")
    assert res.status == "error" and res.error["stage"] == "conventions", res.to_dict()
    assert "qmaks" in res.error["exception"]
