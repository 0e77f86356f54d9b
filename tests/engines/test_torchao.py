"""torchao 0.18.0's Triton quantization kernels through their adapters, under the interpreter:
they resolve, their signatures match (the triton_op's registered schema for triton_to_mxfp8_dim0),
passing cases pass and a signature-drift twin fails. Skipped with the reason where torchao does
not import (install: ``pip install --no-deps --target DIR torchao==0.18.0``, DIR on PYTHONPATH)."""
from __future__ import annotations

import dataclasses

import pytest

from qkcheck.kernels import device as _device

_device.activate("cpu")  # before torchao's kernels are built: @triton.jit reads TRITON_INTERPRET

from qkcheck.cases.case import Case  # noqa: E402
from qkcheck.cases.runner import FAIL, PASS, run_case  # noqa: E402
from qkcheck.kernels.catalog import resolve  # noqa: E402
from qkcheck.kernels.engines import torchao as torchao_engine  # noqa: E402

pytestmark = pytest.mark.skipif(torchao_engine.UNAVAILABLE is not None, reason=str(torchao_engine.UNAVAILABLE))


def _by_name():
    return {a.name: a for a in resolve("torchao")}


def test_adapters_resolve_with_matching_signatures():
    by = _by_name()
    assert set(by) == {"torchao:fp8_blockwise_act_quant", "torchao:triton_to_mxfp8_dim0"}
    for a in by.values():
        assert a.target is not None and a.check_signature() is None, a.name
        assert "torchao 0.18.0 (verified)" in a.description or "NOT the verified" in a.description


@pytest.mark.parametrize("rule,seed,regime", [("floor", 1, "exact"), ("rceil", 2, "realistic")])
def test_mxfp8_dim0_passes(rule, seed, regime):
    case = Case.make("mx_quant", shape={"m": 9, "k": 64},
                     params={"fmt": "mxfp8_e4m3", "in_dtype": "bfloat16", "scale_rule": rule}, regime=regime, seed=seed)
    res = run_case(case, _by_name()["torchao:triton_to_mxfp8_dim0"], "cpu")
    assert res.status == PASS, res.summary()


@pytest.mark.parametrize("fmt,seed", [("float8_e4m3fn", 1), ("float8_e5m2", 2)])
def test_blockwise_act_quant_passes_with_its_declared_qmax(fmt, seed):
    case = Case.make("per_token_group_quant", shape={"m": 3, "k": 128},
                     params={"quant_dtype": fmt, "in_dtype": "float32", "group_size": 64,
                             "column_major_scales": False, "scale_ue8m0": False}, regime="realistic", seed=seed)
    res = run_case(case, _by_name()["torchao:fp8_blockwise_act_quant"], "cpu")
    assert res.status == PASS, res.summary()
    assert res.conventions == ({"qmax": 448.0} if fmt == "float8_e5m2" else {})


def test_a_signature_drift_twin_fails_the_signature_check():
    act = _by_name()["torchao:fp8_blockwise_act_quant"]
    real = act.target

    def drifted(x, dtype=None, block_size=128):
        return real(x=x, block_size=block_size, dtype=dtype)

    case = Case.make("per_token_group_quant", shape={"m": 2, "k": 128},
                     params={"quant_dtype": "float8_e4m3fn", "in_dtype": "float32", "group_size": 128,
                             "column_major_scales": False, "scale_ue8m0": False}, seed=3)
    res = run_case(case, dataclasses.replace(act, target=drifted), "cpu")
    sig = next(c for c in res.checks if c.name == "signature")
    assert res.status == FAIL and sig.outcome == FAIL and "parameter 1 is 'dtype'" in sig.detail, sig.detail
