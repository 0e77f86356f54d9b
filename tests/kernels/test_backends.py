"""Which backend ran is recorded by the code that ran it, so the runner's backend check can fail.

The bundled single-backend ops record ``native`` from their torch.library implementation (not
from the adapter's ``call``) and declare no expectation; the fused-MoE dispatcher's adapter
declares one, and a launcher that reports emulation fails it."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from qkcheck.cases.case import Case
from qkcheck.cases.runner import FAIL, PASS, run_case
from qkcheck.kernels import backends, catalog
from qkcheck.kernels.w4a16.adapter import W4A16

W4A16_CASE = Case.make("w4a16_gemm", shape={"m": 3, "n": 16, "k": 64},
                       params={"group_size": 32, "zero_points": True, "layout": "gptq", "act_dtype": "float16",
                               "out_dtype": "float16", "bias": True},
                       regime="exact", seed=11)

# dense experts, one expert per token: the smallest fused MoE the dispatcher sends to the Triton kernel
MOE_CASE = Case.make("fused_moe", shape={"t": 9, "h": 64, "i": 32, "e": 4},
                     params={"act": "silu", "act_dtype": "float16", "bias": False, "ep": False, "grouped": False,
                             "layout": "gptq", "out_dtype": "float32", "renorm": False, "routing": "one",
                             "scheme": "dense", "scoring": "softmax", "top_k": 1, "weight_on_input": False,
                             "zp": False},
                     config={"block_k": 16, "block_m": 32, "block_n": 32, "fuse_activation": 0},
                     regime="exact", seed=1)


def _dispatched_ops() -> set[str]:
    from qkcheck.kernels.moe import dispatch  # noqa: F401 — registers the fused MoE's backends

    return {op for op, _ in backends.REGISTRY.backends}


@pytest.mark.parametrize("adapter", catalog.bundled(), ids=lambda a: a.name)
def test_only_a_dispatched_op_declares_an_expected_backend(adapter):
    assert (adapter.expected_backend is not None) == (adapter.op in _dispatched_ops())


@pytest.mark.parametrize("family", catalog.families(), ids=lambda m: m.__name__)
def test_no_bundled_adapter_records_its_own_backend(family):
    assert "backends.record" not in inspect.getsource(family)


def test_the_bundled_op_records_native_and_no_backend_check_runs(device):
    r = run_case(W4A16_CASE, W4A16, device)
    assert r.status == PASS, r.summary()
    assert r.backends == [backends.NATIVE]
    assert "backend" not in {c.name for c in r.checks}


def test_what_the_op_records_is_what_the_result_carries(monkeypatch, device):
    from qkcheck.kernels.w4a16 import op

    monkeypatch.setattr(op, "backends", SimpleNamespace(NATIVE=backends.EMULATION, record=backends.record))
    assert run_case(W4A16_CASE, W4A16, device).backends == [backends.EMULATION]


def _moe_adapter():
    return catalog.resolve("bundled:fused_moe")[0]


def test_the_bundled_moe_dispatcher_passes_its_backend_check(device):
    r = run_case(MOE_CASE, _moe_adapter(), device)
    assert r.status == PASS, r.summary()
    assert r.backends == [backends.NATIVE]
    assert [c.outcome for c in r.checks if c.name == "backend"] == [PASS]


def test_a_launcher_that_reports_emulation_fails_the_backend_check(monkeypatch, device):
    """The native fused-MoE launcher (``kernels.moe.op.fused_moe_native``) made to record
    emulation: the outputs are unchanged, only the backend check sees it."""
    from qkcheck.kernels.moe import op

    monkeypatch.setattr(op, "backends", SimpleNamespace(NATIVE=backends.EMULATION, record=backends.record))
    r = run_case(MOE_CASE, _moe_adapter(), device)
    assert r.status == FAIL
    assert {c.name: c.detail for c in r.checks if c.outcome == FAIL} == {"backend": "ran on emulation, native expected"}
