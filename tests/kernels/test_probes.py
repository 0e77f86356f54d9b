"""Interpreter defect probes: they find the known Triton 3.9 interpreter defects here, say what
they saw, and skip_reason turns the findings into a skip sentence that names them."""
from __future__ import annotations

import dataclasses

import pytest
import triton

from qkcheck.kernels import interpreter, probes
from qkcheck.kernels.device import interpreted

# probes known to find a defect in the Triton 3.9 interpreter (seen with 3.9.0)
KNOWN_DEFECTIVE_IN_3_9 = ("bf16_arithmetic", "bf16_dot", "bf16_conversion", "fp8_conversion", "unchecked_oob_load")

needs_3_9_interpreter = pytest.mark.skipif(
    not (interpreted() and triton.__version__.startswith("3.9.")),
    reason=f"the known defects are those of the Triton 3.9 interpreter (here: triton {triton.__version__}, "
    f"interpreting={interpreted()})",
)


def test_every_probe_reports():
    results = probes.probe_results()
    assert sorted(results) == sorted(p.name for p in probes.PROBES)
    for name, result in results.items():
        assert result.name == name and result.detail and result.affects and isinstance(result.defective, bool)


def test_results_are_cached():
    probes.probe_results()
    misses = probes._results.cache_info().misses
    assert probes.probe_results() == probes.probe_results()
    assert probes._results.cache_info().misses == misses


@needs_3_9_interpreter
@pytest.mark.parametrize("name", KNOWN_DEFECTIVE_IN_3_9)
def test_probe_finds_known_defect(name):
    result = probes.probe_results()[name]
    assert result.defective, result.detail


@needs_3_9_interpreter
@pytest.mark.parametrize(
    "name, evidence",
    [
        pytest.param("bf16_dot", "expected 3.0, got", id="bf16_dot"),
        pytest.param("bf16_arithmetic", "expected 4.5, got", id="bf16_arithmetic"),
        pytest.param("bf16_conversion", "1.01171875 -> expected 1.015625, got 1.0078125", id="bf16_conversion-tie"),
        pytest.param("fp8_conversion", "31.6 -> expected 32.0, got", id="fp8_conversion-31.6"),
        pytest.param("fp8_conversion", "1.0625 -> expected 1.0, got 1.125", id="fp8_conversion-tie"),
        pytest.param("unchecked_oob_load", "did not fail", id="unchecked_oob_load"),
    ],
)
def test_probe_detail_says_expected_and_seen(name, evidence):
    assert evidence in probes.probe_results()[name].detail


@pytest.fixture
def without_correction():
    """The raw interpreter's skips: the correction (kernels.interpreter) removed, then put back."""
    interpreter.uninstall()
    yield
    interpreter.install()


@needs_3_9_interpreter
def test_skip_reason_bf16_compute_names_the_probes(without_correction):
    reason = probes.skip_reason(compute_dtype="bf16", fp8_output=False)
    assert reason.startswith(f"Triton {triton.__version__} interpreter: ")
    assert "bf16 tl.dot is wrong (probe bf16_dot: " in reason
    assert probes.probe_results()["bf16_dot"].detail in reason
    assert "bf16 compute cases run only compiled (qkcheck's interpreter correction is off: " in reason


@needs_3_9_interpreter
def test_skip_reason_fp8_output_names_the_probe(without_correction):
    reason = probes.skip_reason(compute_dtype="fp16", fp8_output=True)
    assert "probe fp8_conversion: " in reason and "bf16" not in reason
    assert "fp8 output cases run only compiled (qkcheck's interpreter correction is off: " in reason


@needs_3_9_interpreter
def test_skip_reason_bf16_output_names_the_probe(without_correction):
    reason = probes.skip_reason(compute_dtype="float16", fp8_output=False, output_dtype="bfloat16")
    assert "probe bf16_conversion: " in reason
    assert "bf16 output cases run only compiled (qkcheck's interpreter correction is off: " in reason


@pytest.mark.parametrize("compute_dtype", ["fp16", "float16", "fp32"])
@pytest.mark.parametrize("output_dtype", [None, "fp16", "fp32"])
def test_skip_reason_none_when_checkable(compute_dtype, output_dtype):
    """fp16/fp32 compute without fp8/bf16 outputs is never skipped: the OOB-load defect affects
    mask checking (canaries), not numerics."""
    assert probes.skip_reason(compute_dtype=compute_dtype, fp8_output=False, output_dtype=output_dtype) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(compute_dtype="int8", fp8_output=False),
                     r"compute_dtype='int8' is not a dtype the probes know \(allowed: bf16, bfloat16", id="compute"),
        pytest.param(dict(compute_dtype="fp16", fp8_output=False, output_dtype="fp8"),
                     r"output_dtype='fp8' is not a dtype the probes know .*fp8 outputs use fp8_output=True",
                     id="output"),
    ],
)
def test_skip_reason_rejects_unknown_dtypes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        probes.skip_reason(**kwargs)


@pytest.mark.parametrize("probe", probes.PROBES, ids=lambda p: p.name)
def test_compiled_mode_reports_not_defective_without_launching(probe, monkeypatch):
    def must_not_launch():
        raise AssertionError(f"probe {probe.name} launched a kernel under compiled Triton")

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    result = probes._run(dataclasses.replace(probe, run=must_not_launch))
    assert not result.defective
    assert "not run" in result.detail


def test_a_probe_that_raises_counts_as_defective(monkeypatch):
    def broken():
        raise RuntimeError("unsupported conversion")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    result = probes._run(dataclasses.replace(probes.PROBES[0], run=broken))
    assert result.defective and "RuntimeError: unsupported conversion" in result.detail
