"""GEMM references against an independent exact computation (ml_dtypes decoding, Python Fractions,
scale index per element written out), argument validation messages, M = 0, block tails."""
from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from qkcheck.oracle.ops import expect, make_problem, reference, references
from qkcheck.oracle.ops.scaled_mm import block_scaled_mm

ML = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
      "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
      "float4_e2m1fn": ml_dtypes.float4_e2m1fn, "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu}


def ml(codes, fmt):
    return np.asarray(codes, np.uint8).view(ML[fmt]).astype(np.float64)


def exact_sum(xs, ws):
    """sum_k xs[k] * ws[k] in exact rational arithmetic."""
    return sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(xs, ws)), Fraction(0))


def independent(op, p):
    """y[m][n] as Fractions, each operand value decoded with ml_dtypes and each scale indexed per
    element by hand."""
    if op in ("w4a16_gemm", "w8a16_gemm"):
        q = np.asarray(p["q"])
        k, n = q.shape
        g = k if p["group_size"] == -1 else p["group_size"]
        zdef = 8 if op == "w4a16_gemm" else 0
        def w(kk, nn):
            z = zdef if p["zeros"] is None else p["zeros"][kk // g][nn]
            return (int(q[kk, nn]) - int(z)) * p["scales"][kk // g][nn]
        x = lambda mm, kk: p["x"][mm][kk]
    elif op == "scaled_mm":
        qd = p["quant_dtype"]
        av = np.asarray(p["a"], np.float64) if qd == "int8" else ml(p["a"], qd)
        bv = np.asarray(p["b"], np.float64) if qd == "int8" else ml(p["b"], qd)
        sa, sb = np.asarray(p["a_scale"]), np.asarray(p["b_scale"])
        z = p["azp"]
        k, n = bv.shape
        x = lambda mm, kk: (av[mm, kk] - (0 if z is None else z[mm % z.shape[0]][0])) * sa[mm % sa.shape[0]][0]
        w = lambda kk, nn: bv[kk, nn] * sb[0][nn % sb.shape[1]]
    elif op == "block_scaled_mm":
        qd = p["quant_dtype"]
        bk, bn = p["block"]
        av, bv = ml(p["a"], qd), ml(p["b"], qd)
        k, n = bv.shape
        x = lambda mm, kk: av[mm, kk] * p["a_scale"][mm][kk // bk]
        w = lambda kk, nn: bv[kk, nn] * p["b_scale"][kk // bk][nn // bn]
    elif op == "fp8_w8a16_gemm":
        bv = ml(p["b"], p["quant_dtype"])
        k, n = bv.shape
        sb = np.asarray(p["b_scale"])
        x = lambda mm, kk: p["x"][mm][kk]
        w = lambda kk, nn: bv[kk, nn] * sb[0][nn % sb.shape[1]]
    elif op == "mxfp4_gemm":
        wv, sw = ml(p["w"], "float4_e2m1fn"), ml(p["w_scale"], "float8_e8m0fnu")
        k, n = wv.shape
        w = lambda kk, nn: wv[kk, nn] * sw[kk // 32, nn]
        if p["act"] == "a16":
            x = lambda mm, kk: p["x"][mm][kk]
        else:
            av, sa = ml(p["a"], "float4_e2m1fn"), ml(p["a_scale"], "float8_e8m0fnu")
            x = lambda mm, kk: av[mm, kk] * sa[mm, kk // 32]
    else:
        av, wv = ml(p["a"], "float4_e2m1fn"), ml(p["w"], "float4_e2m1fn")
        sa, sw = ml(p["a_scale"], "float8_e4m3fn"), ml(p["w_scale"], "float8_e4m3fn")
        k, n = wv.shape
        x = lambda mm, kk: Fraction(float(av[mm, kk] * sa[mm, kk // 16])) * Fraction(p["a_global"])
        w = lambda kk, nn: Fraction(float(wv[kk, nn] * sw[kk // 16, nn])) * Fraction(p["w_global"])
    m = np.asarray(p["a"] if "a" in p and p.get("a") is not None else p["x"]).shape[0]
    y = [[exact_sum([x(i, kk) for kk in range(k)], [w(kk, j) for kk in range(k)]) for j in range(n)] for i in range(m)]
    if p.get("bias") is not None:
        y = [[v + Fraction(float(p["bias"][j])) for j, v in enumerate(row)] for row in y]
    return y


CASES = [
    ("w4a16_gemm", dict(group_size=32, zeros=True)), ("w4a16_gemm", dict(group_size=-1)),
    ("w8a16_gemm", dict(group_size=32, zeros=True)), ("w8a16_gemm", dict(group_size=-1)),
    ("scaled_mm", dict(quant_dtype="int8", azp=True)), ("scaled_mm", dict(quant_dtype="int8", per_token=False)),
    ("scaled_mm", dict(quant_dtype="float8_e4m3fn", per_channel=False)), ("scaled_mm", dict(quant_dtype="float8_e5m2")),
    ("scaled_mm", dict(quant_dtype="float8_e4m3fnuz")),
    ("block_scaled_mm", dict(block=(32, 2))), ("block_scaled_mm", dict(block=(24, 5), quant_dtype="float8_e5m2fnuz")),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e4m3fn")), ("fp8_w8a16_gemm", dict(quant_dtype="float8_e5m2", per_channel=False)),
    ("mxfp4_gemm", dict(act="a16")), ("mxfp4_gemm", dict(act="mxfp4")), ("nvfp4_gemm", {}),
]


@pytest.mark.parametrize("style", ["random", "exact"])
@pytest.mark.parametrize("op,params", CASES, ids=[f"{o}-{i}" for i, (o, _) in enumerate(CASES)])
def test_reference_equals_independent_exact_sum(op, params, style):
    p = make_problem(op, np.random.default_rng(11), m=3, k=64, n=7, style=style, bias=True, **params)
    y = reference(op).compute(p)
    want = independent(op, p)
    ops = reference(op).operands(p)
    mag = np.abs(ops.x) @ np.abs(ops.w) + np.abs(ops.bias)
    for i in range(3):
        for j in range(7):
            err = abs(Fraction(float(y[i, j])) - want[i][j])
            assert err <= Fraction(66 * 2.0**-53 * float(mag[i, j])), (i, j, float(y[i, j]), float(want[i][j]))
    if style == "exact":  # every partial sum is exact: so is the float64 reference
        assert all(Fraction(float(y[i, j])) == want[i][j] for i in range(3) for j in range(7))


@pytest.mark.parametrize("op,params", CASES, ids=[f"{o}-{i}" for i, (o, _) in enumerate(CASES)])
def test_zero_rows_give_an_empty_result(op, params):
    p = make_problem(op, np.random.default_rng(0), m=0, k=64, n=8, style="random", bias=True, **params)
    c = {"scaled_mm": params.get("quant_dtype"), "block_scaled_mm": "float8_e4m3fn"}.get(op, "float16")
    e = expect(op, p, exact=False, compute_dtype=c if c else "float16", out_dtype="bfloat16")
    assert e.expected.shape == (0, 8) and e.bound.shape == (0, 8)


def test_block_tails_use_ceil_scale_grids():
    rng = np.random.default_rng(0)
    p = make_problem("block_scaled_mm", rng, m=2, k=70, n=9, style="random", block=(32, 4))
    assert p["a_scale"].shape == (2, 3) and p["b_scale"].shape == (3, 3)
    y = block_scaled_mm(p["a"], p["a_scale"], p["b"], p["b_scale"], quant_dtype="float8_e4m3fn", block=(32, 4))
    # the last k-block (rows 64..69) and the last n-block (column 8) have their own scales
    p2 = dict(p, b_scale=p["b_scale"].copy())
    p2["b_scale"][2, 2] *= 2
    y2 = reference("block_scaled_mm").compute(p2)
    assert np.array_equal(y2[:, :8], y[:, :8]) and not np.array_equal(y2[:, 8], y[:, 8])


def test_nan_e8m0_scale_makes_its_block_nan():
    p = make_problem("mxfp4_gemm", np.random.default_rng(0), m=2, k=64, n=4, style="random")
    p["w_scale"] = p["w_scale"].copy()
    p["w_scale"][1, 2] = 0xFF
    y = reference("mxfp4_gemm").compute(p)
    assert np.isnan(y[:, 2]).all() and np.isfinite(np.delete(y, 2, axis=1)).all()


def _base(op):
    params = {"scaled_mm": dict(quant_dtype="int8", azp=True), "block_scaled_mm": dict(block=(32, 8))}.get(op, {})
    return make_problem(op, np.random.default_rng(0), m=2, k=64, n=8, style="random", bias=True, **params)


BAD = [
    ("w8a16_gemm", dict(q=np.full((64, 8), 300)), ValueError, r"q holds codes in \[300, 300\], int8 codes .* are -128..255"),
    ("w8a16_gemm", dict(q=np.where(np.arange(8) % 2, 200, -3) * np.ones((64, 1), int)), ValueError, r"mixes negative codes and codes above 127"),
    ("w8a16_gemm", dict(scales=np.ones((3, 8))), ValueError, r"scales has shape \(3, 8\), expected \(2, 8\)"),
    ("scaled_mm", dict(quant_dtype="int4"), ValueError, r"quant_dtype='int4' is not allowed \(allowed: 'int8', 'float8_e4m3fn'"),
    ("scaled_mm", dict(a_scale=np.ones((1, 2))), ValueError, r"a_scale has shape \(1, 2\), expected \[2, 1\] \(per-token\) or \[1, 1\]"),
    ("scaled_mm", dict(b_scale=np.ones((8, 1))), ValueError, r"b_scale has shape \(8, 1\), expected \[1, 8\] \(per-channel\)"),
    ("scaled_mm", dict(azp=np.ones((2, 2), int)), ValueError, r"azp has shape \(2, 2\), expected \[2, 1\]"),
    ("scaled_mm", dict(a=np.ones((2, 64)) * 0.5), TypeError, r"a must hold integer codes, got dtype float64"),
    ("scaled_mm", dict(b=np.ones((32, 8), np.int8)), ValueError, r"a has K=64 columns but b has K=32 rows"),
    ("scaled_mm", dict(a_scale=np.full((2, 1), np.inf)), ValueError, r"a_scale\[0, 0\] is inf; scales must be finite"),
    ("block_scaled_mm", dict(block=(0, 8)), ValueError, r"block=\(0, 8\) must be a pair of positive ints"),
    ("block_scaled_mm", dict(b_scale=np.ones((2, 2))), ValueError, r"b_scale has shape \(2, 2\), expected \[2, 1\] \(one scale per 32 x 8 weight block\)"),
    ("block_scaled_mm", dict(quant_dtype="int8"), ValueError, r"quant_dtype='int8' is not allowed .* block-scaled GEMMs take fp8 codes"),
    ("block_scaled_mm", dict(a=np.full((2, 64), 256)), ValueError, r"a holds codes in \[256, 256\], float8_e4m3fn codes are 0..255"),
    ("fp8_w8a16_gemm", dict(b=np.ones((64, 8), np.float32)), TypeError, r"b must hold float8_e4m3fn bit patterns as unsigned ints"),
    ("mxfp4_gemm", dict(act="a8"), ValueError, r"act='a8' is not allowed \(allowed: 'a16', 'mxfp4'\)"),
    ("mxfp4_gemm", dict(w=np.full((64, 8), 16)), ValueError, r"w holds codes in \[16, 16\], float4_e2m1fn codes are 0..15"),
    ("mxfp4_gemm", dict(a=np.zeros((2, 64), np.uint8)), ValueError, r"act='a16' takes x \(activation values\) and no a / a_scale"),
    ("mxfp4_gemm", dict(w_scale=np.full((1, 8), 127, np.uint8)), ValueError, r"w_scale has shape \(1, 8\), expected \(2, 8\)"),
    ("nvfp4_gemm", dict(a_global=float("nan")), ValueError, r"a_global=nan must be a finite float"),
    ("nvfp4_gemm", dict(a=np.zeros((2, 40), np.uint8)), ValueError, r"a has K=40 columns but w has K=64 rows"),
    ("nvfp4_gemm", dict(bias=np.ones(3)), ValueError, r"bias has shape \(3,\), expected \(8,\)"),
]


@pytest.mark.parametrize("op,change,exc,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_named_with_what_is_allowed(op, change, exc, match):
    p = dict(_base(op), **change)
    with pytest.raises(exc, match=match):
        reference(op).compute(p)


def test_problem_keys_and_compute_dtype_are_checked():
    p = _base("scaled_mm")
    with pytest.raises(ValueError, match=r"lacks \['b_scale'\] .*required: a, b, quant_dtype, a_scale, b_scale"):
        expect("scaled_mm", {k: v for k, v in p.items() if k != "b_scale"}, exact=True, compute_dtype="int8", out_dtype="float16")
    with pytest.raises(ValueError, match=r"has unknown keys \['scales'\]"):
        expect("scaled_mm", dict(p, scales=1), exact=True, compute_dtype="int8", out_dtype="float16")
    with pytest.raises(ValueError, match=r"compute_dtype='float8_e4m3fn' is not a dtype scaled_mm with quant_dtype='int8'"):
        expect("scaled_mm", p, exact=False, compute_dtype="float8_e4m3fn", out_dtype="float16")
    with pytest.raises(ValueError, match=r"dtype 'float64' is not a compute/output dtype"):
        expect("scaled_mm", p, exact=False, compute_dtype="int8", out_dtype="float64")
    with pytest.raises(ValueError, match=r"op 'int4_gemm' has no reference \(allowed: block_scaled_mm"):
        reference("int4_gemm")
    assert {"w4a16_gemm", "w8a16_gemm", "scaled_mm", "block_scaled_mm", "fp8_w8a16_gemm",
            "mxfp4_gemm", "nvfp4_gemm"} <= set(references())


def test_int8_accumulator_overflow_is_refused():
    k = 2**17 + 64
    p = {"a": np.full((1, k), -128, np.int8), "b": np.full((k, 1), -128, np.int8), "quant_dtype": "int8",
         "a_scale": np.ones((1, 1)), "b_scale": np.ones((1, 1))}
    with pytest.raises(ValueError, match=r"can overflow an int32 accumulator .* >= 2\*\*31"):
        expect("scaled_mm", p, exact=False, compute_dtype="int8", out_dtype="float32")


def test_bounded_expectation_is_inf_where_the_output_overflows():
    p = {"x": np.array([[60000.0, 60000.0]]), "b": np.array([[0x38], [0x38]], np.uint8), "b_scale": np.ones((1, 1)),
         "quant_dtype": "float8_e4m3fn", "bias": None}
    e = expect("fp8_w8a16_gemm", p, exact=False, compute_dtype="float16", out_dtype="float16")
    assert e.expected[0, 0] == np.inf and e.bound[0, 0] == 0 and e.exact_value[0, 0] == 120000.0
