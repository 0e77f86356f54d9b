"""The OpReference protocol: every op's record answers expect / read / compare / diagnose with one
signature, whatever it returns; the values judge reads a kernel's outputs as the runner hands them
(``Raw``); argument choices are refused naming what is allowed."""
from __future__ import annotations

import numpy as np
import pytest

from qkcheck.oracle.arguments import check_choice
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.ops import FAMILIES, exact_problem, make_problem, reference, references
from qkcheck.oracle.ops.quant import exact_quant_inputs
from qkcheck.oracle.reference import Raw, values_of

GENERATED = [op for op, ref in references().items() if ref.generate is not None]
KW = dict(exact=True, compute_dtype="float16", out_dtype="float32")


def test_every_op_is_defined_once_by_exactly_one_family():
    ops = [r.op for fam in FAMILIES for r in fam.REFERENCES]
    assert len(ops) == len(set(ops)) == len(references())
    assert {"w4a16_gemm", "scaled_mm", "mxfp4_gemm", "nvfp4_gemm", "per_token_quant", "fused_moe"} <= set(ops)


@pytest.mark.parametrize("op", GENERATED)
def test_a_correct_output_read_from_raw_outputs_passes_and_is_diagnosed_as_nothing(op):
    p = exact_problem(op, np.random.default_rng(0), m=4, k=64, n=8)
    ref = reference(op)
    e = ref.expect(p, **KW)
    raw = [Raw(e.expected.copy(), "float32")]
    assert ref.unreadable(e, raw, ["float32"]) is None
    actual = ref.read(e, raw)
    assert ref.compare(e, actual) is None
    assert ref.diagnose(p, actual, context={"block_k": 32}, **KW) == []


def test_an_output_of_another_shape_is_not_compared():
    ref = reference("w4a16_gemm")
    e = ref.expect(make_problem("w4a16_gemm", np.random.default_rng(0), m=4, k=64, n=8), **KW)
    assert ref.unreadable(e, [Raw(np.zeros((8, 4)), "float32")], ["float32"]) == "output shape differs; values not compared"


def test_a_quant_record_reads_codes_and_scales_and_judges_them_code_for_code():
    ref = reference("per_token_quant")
    p = exact_quant_inputs("per_token_quant", (4, 64), "int8", np.random.default_rng(0))
    e = ref.expect(p, **KW)  # the dtypes do not matter to codes
    raw = [Raw(e.codes.copy(), "int8"), Raw(e.scales.astype(np.float32).astype(np.float64), "float32")]
    assert ref.unreadable(e, raw, ["int8", "float32"]) is None
    assert "dtypes differ from the contract" in ref.unreadable(e, raw, ["float8_e4m3fn", "float32"])
    actual = ref.read(e, raw)
    assert ref.compare(e, actual) is None
    assert ref.diagnose(p, actual, **KW) == []
    wrong = (actual[0] + 1, actual[1])
    assert ref.compare(e, wrong) is not None


def test_values_of_decodes_fp8_bit_patterns_and_widens_integers_through_float32():
    codes = np.array([[0x38, 0xB8, 0x7E]], np.uint8)  # 1.0, -1.0, 448.0 in e4m3fn
    assert values_of(Raw(codes, "float8_e4m3fn")).tolist() == [[1.0, -1.0, 448.0]]
    assert FORMATS["float8_e4m3fn"].max == 448.0
    big = np.array([[2**24 + 1]], np.int32)
    assert values_of(Raw(big, "int32")).tolist() == [[float(2**24)]]  # rounded as a float32 read is


@pytest.mark.parametrize("kw,message", [
    (dict(), r"^act='a8' is not allowed \(allowed: 'a16', 'mxfp4'\)$"),
    (dict(fix="pass 'a16'"), r"^act='a8' is not allowed \(allowed: 'a16', 'mxfp4'\); pass 'a16'$"),
    (dict(op="mx_quant"), r"^mx_quant: act='a8' is not allowed \(allowed: 'a16', 'mxfp4'\)$"),
], ids=["plain", "with-fix", "with-op"])
def test_check_choice_names_the_value_and_what_is_allowed(kw, message):
    assert check_choice("act", "a16", ("a16", "mxfp4"), **kw) == "a16"
    with pytest.raises(ValueError, match=message):
        check_choice("act", "a8", ("a16", "mxfp4"), **kw)
