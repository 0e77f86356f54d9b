"""AMD AITER's real Triton kernels (amd-aiter 0.1.7.post2.dev18) through their adapters, under the
interpreter: they resolve, their signatures match, passing cases pass, and the classified failures
(docs/findings/aiter-*.md) fail the way they were classified. Skipped with the reason where the
AITER files are not importable (install: ``pip install --no-deps --target DIR amd-aiter`` and put
DIR on PYTHONPATH)."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from qkcheck.kernels import device as _device

_device.activate("cpu")  # before AITER's modules are loaded: their @triton.jit reads TRITON_INTERPRET

from qkcheck.cases.case import Case  # noqa: E402
from qkcheck.cases.runner import FAIL, PASS, run_case  # noqa: E402
from qkcheck.kernels.catalog import resolve  # noqa: E402
from qkcheck.kernels.engines import aiter as aiter_engine  # noqa: E402

pytestmark = pytest.mark.skipif(aiter_engine.UNAVAILABLE is not None, reason=str(aiter_engine.UNAVAILABLE))

NAMES = {"aiter:dynamic_per_token_quant_fp8_i8", "aiter:static_per_tensor_quant_fp8_i8", "aiter:dynamic_mxfp4_quant",
         "aiter:gemm_a8w8", "aiter:gemm_a8w8_blockscale"}


def _by_name():
    return {a.name: a for a in resolve("aiter")}


def _check(res, name):
    return next(c for c in res.checks if c.name == name)


def test_adapters_resolve_with_matching_signatures_and_a_version_note():
    by = _by_name()
    assert set(by) == NAMES
    for a in by.values():
        assert a.target is not None and a.check_signature() is None, a.name
        assert "amd-aiter 0.1.7.post2.dev18 (verified)" in a.description or "NOT the verified" in a.description


def _mm(fmt, seed, out="bfloat16", storage="nk", bias=False, regime="exact", m=33, n=40, k=96, config=None):
    return Case.make("scaled_mm", shape={"m": m, "n": n, "k": k},
                     params={"quant_dtype": fmt, "a_scale_shape": "[M,1]", "b_scale_shape": "[1,N]",
                             "b_storage": storage, "azp": False, "bias": bias, "out_dtype": out},
                     config=config, regime=regime, seed=seed)


@pytest.mark.parametrize("case", [
    _mm("int8", 1, m=1), _mm("float8_e4m3fn", 2, out="float16", storage="kn", regime="realistic", m=1),
    _mm("int8", 3, bias=True, m=1, config={"block_m": 16, "block_n": 32, "block_k": 32, "group_m": 4}),
], ids=lambda c: c.id[:60])
def test_gemm_a8w8_passes_single_row_cases_and_writes_only_its_output(case):
    """M = 1: x_scale (1, 1) is contiguous whatever its row stride (see the next test)."""
    res = run_case(case, _by_name()["aiter:gemm_a8w8"], "cpu")
    assert res.status == PASS, res.summary()
    assert _check(res, "output_memory").outcome == PASS


def test_gemm_a8w8_reads_x_scale_as_contiguous_whatever_its_strides():
    """docs/findings/aiter-gemm-a8w8-scale-strides.md: x_scale (M, 1) with a row stride other than
    1 (here the harness's padded rows) is read at a_scale_ptr + row: rows >= 1 get other memory."""
    res = run_case(_mm("int8", 1), _by_name()["aiter:gemm_a8w8"], "cpu")
    num = _check(res, "numerics")
    assert res.status == FAIL and num.outcome == FAIL, res.summary()
    assert "row (m)s 1..31" in num.detail, num.detail


def _mx(seed, regime):
    return Case.make("mx_quant", shape={"m": 5, "k": 64},
                     params={"fmt": "mxfp4", "in_dtype": "float32", "scale_rule": "floor"}, regime=regime, seed=seed)


def test_dynamic_mxfp4_quant_passes_where_even_and_floor_agree():
    res = run_case(_mx(1, "exact"), _by_name()["aiter:dynamic_mxfp4_quant"], "cpu")
    assert res.status == PASS, res.summary()


def test_dynamic_mxfp4_quant_even_scales_are_the_declared_convention():
    """docs/findings/aiter-mxfp4-even-scale.md: 'even' rounds amax up at its second mantissa bit
    before floor(log2): a block whose amax mantissa is >= 1.75 gets the next scale. The adapter declares
    scale_rule='even': the case passes under it, and fails judged by OCP's floor (its broken twin)."""
    a = _by_name()["aiter:dynamic_mxfp4_quant"]
    res = run_case(_mx(2, "realistic"), a, "cpu")
    assert res.status == PASS and res.conventions == {"scale_rule": "even"}, res.summary()
    strict = run_case(_mx(2, "realistic"), dataclasses.replace(a, conventions={}), "cpu")
    num = _check(strict, "numerics")
    assert strict.status == FAIL and "scales [5, 2]" in num.detail and "Max abs error: 1 " in num.detail, num.detail


def test_false_assume_fails_every_per_token_static_and_blockscale_case():
    """docs/findings/aiter-assume-pid-positive.md: tl.assume(pid > 0) (quant kernels) and
    tl.assume(stride_ck > 0) with stride_ck = 0 (blockscale, NUM_KSPLIT = 1) are false; the
    interpreter checks assumptions."""
    by = _by_name()
    cases = {
        "aiter:dynamic_per_token_quant_fp8_i8": Case.make(
            "per_token_quant", shape={"m": 1, "k": 64},
            params={"quant_dtype": "float8_e4m3fn", "in_dtype": "float32", "scale_ub": False}, seed=1),
        "aiter:static_per_tensor_quant_fp8_i8": Case.make(
            "static_quant", shape={"m": 1, "k": 64}, params={"quant_dtype": "int8", "in_dtype": "float32"}, seed=1),
        "aiter:gemm_a8w8_blockscale": Case.make(
            "block_scaled_mm", shape={"m": 24, "n": 64, "k": 256},
            params={"quant_dtype": "float8_e4m3fn", "scale_block_k": 128, "scale_block_n": 128,
                    "a_scale_major": "row", "bias": False, "out_dtype": "float16"}, seed=1),
    }
    for name, case in cases.items():
        res = run_case(case, by[name], "cpu")
        assert res.status == FAIL and "Assume failed" in _check(res, "raised").detail, (name, res.summary())


@pytest.fixture
def assume_unchecked(monkeypatch):
    import triton.runtime.interpreter as interp

    monkeypatch.setattr(interp.InterpreterBuilder, "create_assume", lambda self, condition: None)


def test_past_the_assume_int8_codes_are_truncated_not_rounded(assume_unchecked):
    """docs/findings/aiter-int8-truncation.md: (x * (1 / scale)).to(int8) truncates toward zero."""
    import torch

    fn = _by_name()["aiter:static_per_tensor_quant_fp8_i8"].target
    x = torch.tensor([[1.0, 2.6, -2.6, 126.5, 0.4, -0.6]], dtype=torch.float32)
    qx = fn(qx=torch.empty_like(x, dtype=torch.int8), x_in=x, scale_in=torch.tensor([1.0]))
    assert qx.tolist() == [[1, 2, -2, 126, 0, 0]]  # RNE would give [1, 3, -3, 126, 0, -1]


def test_past_the_assume_codes_are_stored_at_the_input_row_stride(assume_unchecked):
    """docs/findings/aiter-quant-output-row-stride.md: qx is addressed with x_in's row stride."""
    import torch

    fn = _by_name()["aiter:static_per_tensor_quant_fp8_i8"].target
    rows = torch.full((2, 16), 7.0)
    x = rows[:, :8]
    x.copy_(torch.arange(16.0).view(2, 8))
    big = torch.full((64,), -1, dtype=torch.int8)
    qx = big[:16].view(2, 8)
    fn(qx=qx, x_in=x, scale_in=torch.tensor([1.0]))
    assert qx[1].tolist() == [-1] * 8  # row 1 never written
    assert big[16:24].tolist() == list(range(8, 16))  # written past the end of qx


def test_a_signature_drift_twin_fails_the_signature_check():
    gemm = _by_name()["aiter:gemm_a8w8"]
    real = gemm.target

    def drifted(x, w, x_scale, w_scale, y=None, bias=None, dtype=None, config=None):
        return real(x=x, w=w, x_scale=x_scale, w_scale=w_scale, bias=bias, dtype=dtype, y=y, config=config)

    assert list(inspect.signature(real).parameters)[4] == "bias"
    twin = dataclasses.replace(gemm, target=drifted)
    res = run_case(_mm("int8", 4), twin, "cpu")
    sig = _check(res, "signature")
    assert res.status == FAIL and sig.outcome == FAIL and "parameter 4 is 'y'" in sig.detail, sig.detail


def _blockscale_case(k, split_k):
    return Case.from_dict({"schema": 1, "op": "block_scaled_mm", "shape": {"m": 17, "n": 64, "k": k},
                           "params": {"a_scale_major": "row", "bias": False, "out_dtype": "float16",
                                      "quant_dtype": "float8_e4m3fn", "scale_block_k": 32, "scale_block_n": 32},
                           "config": {"block_m": 64, "block_n": 64, "group_m": 4, "split_k": split_k},
                           "regime": "exact", "seed": 4})


def test_blockscale_split_below_the_scale_block_is_outside_the_api():
    """The launcher refuses a split smaller than the scale block (AssertionError: GROUP_K must equal
    BLOCK_SIZE_K): the adapter's constraint keeps such configs out of the case space, with the reason."""
    a = _by_name()["aiter:gemm_a8w8_blockscale"]
    why = a.constraint({"scale_block_k": 32}, {"m": 1, "n": 16, "k": 32}, {"split_k": 2})
    assert why and "below the scale block" in why
    assert a.constraint({"scale_block_k": 32}, {"m": 17, "n": 64, "k": 192}, {"split_k": 4}) is None  # 48 >= 32
    assert a.constraint({"scale_block_k": 32}, {"m": 1, "n": 16, "k": 32}, {"split_k": 1}) is None


def test_past_the_assume_an_unaligned_split_gives_a_wrong_result(assume_unchecked):
    """docs/findings/aiter-blockscale-split-unaligned.md: K = 192 in 4 splits of 48 (not a multiple of the 32
    scale block) fails; 2 splits of 96 pass. Compiled on an H100 the same case failed the same way (1088 of
    1088 outputs NaN)."""
    import qkcheck

    a = _by_name()["aiter:gemm_a8w8_blockscale"]
    good, bad = qkcheck.run_cases([_blockscale_case(192, 2), _blockscale_case(192, 4)], [a], device="cpu")
    assert good.status == PASS, good.summary()
    assert bad.status == FAIL and [c.name for c in bad.failed_checks] == ["numerics"], bad.summary()
    assert "1088 / 1088" in bad.summary()
