"""Diagnosis catalogue over every GEMM: each hypothesis names the bug of a deliberately broken
implementation (a correct torch implementation fed a misread input, or whose output is written
wrongly), and a correct implementation's output matches none."""
from __future__ import annotations

import numpy as np
import pytest

from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.ops import diagnose, expect, make_problem, reference, references
from tests.oracle.test_gemm_bounds import torch_impl

SHAPE = dict(m=8, k=128, n=16)
GEMMS = ("w4a16_gemm", "w8a16_gemm", "scaled_mm", "block_scaled_mm", "fp8_w8a16_gemm", "mxfp4_gemm", "nvfp4_gemm")


def _problem(op, style="random", seed=0, shape=SHAPE, **params):
    return make_problem(op, np.random.default_rng(seed), style=style, **shape, **params)


def _run(op, p, c, o, order="blas", mode=None):
    a16 = op in ("w4a16_gemm", "w8a16_gemm", "fp8_w8a16_gemm") or (op == "mxfp4_gemm" and p["act"] == "a16")
    return torch_impl(op, p, c, o, order, mode or ("fp32" if a16 else "separate"), np.random.default_rng(0))


CORRECT = [
    ("w4a16_gemm", dict(group_size=32, zeros=True, bias=True), "float16"),
    ("w8a16_gemm", dict(group_size=-1, bias=True), "bfloat16"),
    ("scaled_mm", dict(quant_dtype="int8", azp=True, bias=True), "int8"),
    ("scaled_mm", dict(quant_dtype="float8_e4m3fn"), "float8_e4m3fn"),
    ("block_scaled_mm", dict(block=(32, 8), bias=True), "float8_e4m3fn"),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e4m3fnuz", bias=True), "bfloat16"),
    ("mxfp4_gemm", dict(act="a16"), "bfloat16"),
    ("mxfp4_gemm", dict(act="mxfp4", bias=True), "float4_e2m1fn"),
    ("nvfp4_gemm", dict(bias=True), "float4_e2m1fn"),
]


@pytest.mark.parametrize("shape", [SHAPE, dict(m=32, k=32, n=32)], ids=["wide", "square"])
@pytest.mark.parametrize("style", ["random", "exact"])
@pytest.mark.parametrize("op,params,c", CORRECT, ids=[f"{o}-{c}" for o, _, c in CORRECT])
def test_correct_output_matches_no_hypothesis(op, params, c, style, shape):
    """Square shapes let the transposition / wrong-axis hypotheses apply too."""
    p = _problem(op, style, shape=shape, **params)
    for o in ("float16", "bfloat16"):
        actual = _run(op, p, c, o)
        found = diagnose(op, p, actual, exact=style == "exact", compute_dtype=c, out_dtype=o,
                         context={"block_k": 64, "block_n": 8,
                                  "out_prefill": np.full((shape["m"], shape["n"]), 7.0)})
        assert found == [], [f.sentence for f in found]


def _swap_fnuz(p):
    twin = {"float8_e4m3fn": "float8_e4m3fnuz", "float8_e4m3fnuz": "float8_e4m3fn"}[p["quant_dtype"]]
    return dict(p, quant_dtype=twin)


# (op, generator params, compute dtype, how the broken kernel misreads the problem, hypothesis, sentence part)
MISREADS = [
    ("w4a16_gemm", dict(group_size=32), "float16",
     lambda p: dict(p, scales=p["scales"].T.copy().reshape(p["scales"].shape)), "scales_transposed", "read transposed"),
    ("block_scaled_mm", dict(block=(32, 8)), "float8_e4m3fn",
     lambda p: dict(p, b_scale=p["b_scale"].T.copy().reshape(p["b_scale"].shape)), "scales_transposed", "b_scale"),
    ("mxfp4_gemm", dict(act="a16"), "bfloat16",
     lambda p: dict(p, w_scale=p["w_scale"].T.copy().reshape(p["w_scale"].shape)), "scales_transposed", "w_scale"),
    ("scaled_mm", dict(quant_dtype="float8_e4m3fn", per_token=False), "float8_e4m3fn",
     lambda p: dict(p, a_scale=p["a_scale"] * p["b_scale"][0, :8].reshape(8, 1), b_scale=np.ones((1, 1))),
     "scale_vector_on_wrong_axis", "applied along rows"),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e4m3fn"), "float16",
     lambda p: dict(p, x=p["x"] * p["b_scale"][0, :8].reshape(8, 1), b_scale=np.ones((1, 1))),
     "scale_vector_on_wrong_axis", "applied along rows"),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e4m3fn"), "float16",
     lambda p: dict(p, x=p["x"] * p["b_scale"].reshape(1, -1), b_scale=np.ones_like(p["b_scale"])),
     "scales_transposed", "applied along K (rows) instead of N (columns)"),
    ("scaled_mm", dict(quant_dtype="float8_e4m3fn"), "float8_e4m3fn", _swap_fnuz, "fn_fnuz_confused", "decoded as float8_e4m3fnuz"),
    ("block_scaled_mm", dict(quant_dtype="float8_e4m3fnuz", block=(32, 8)), "float8_e4m3fnuz", _swap_fnuz,
     "fn_fnuz_confused", "decoded as float8_e4m3fn"),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e4m3fn"), "bfloat16", _swap_fnuz, "fn_fnuz_confused", "fn <-> fnuz"),
    ("scaled_mm", dict(quant_dtype="int8"), "int8", lambda p: dict(p, b_scale=p["b_scale"] ** 2),
     "scale_misapplied", "b_scale is applied twice"),
    ("w8a16_gemm", dict(group_size=64), "float16", lambda p: dict(p, scales=np.ones_like(p["scales"])),
     "scale_misapplied", "not applied at all"),
    ("mxfp4_gemm", dict(act="mxfp4"), "float4_e2m1fn", lambda p: dict(p, a_scale=np.full_like(p["a_scale"], 127)),
     "scale_misapplied", "a_scale is not applied"),
    ("nvfp4_gemm", {}, "float4_e2m1fn", lambda p: dict(p, w_global=1.0), "scale_misapplied", "w_global is not applied"),
    ("w8a16_gemm", dict(group_size=32, zeros=True), "bfloat16", lambda p: dict(p, zeros=p["zeros"] + 1),
     "zero_point_off_by_one", "off by +1"),
    ("scaled_mm", dict(quant_dtype="int8", azp=True), "int8", lambda p: dict(p, azp=p["azp"] - 1),
     "azp_off_by_one", "off by -1"),
    ("mxfp4_gemm", dict(act="a16"), "float16",
     lambda p: dict(p, w=p["w"][np.arange(p["w"].shape[0]) ^ 1]), "nibble_order_swapped", "swapped order"),
    ("scaled_mm", dict(quant_dtype="int8"), "int8", lambda p: dict(p, b=p["b"].T.copy()),
     "weight_transposed", "read transposed"),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e4m3fn"), "float16", lambda p: dict(p, b=p["b"].T.copy()),
     "weight_transposed", "[N, K] layout taken for [K, N]"),
    ("scaled_mm", dict(quant_dtype="float8_e5m2"), "float8_e5m2", lambda p: dict(p, bias=None),
     "bias_dropped_or_spurious", "not added"),
    ("w8a16_gemm", dict(group_size=-1), "float16", lambda p: dict(p, bias=np.full(16, 7.0)),
     "bias_dropped_or_spurious", "output buffer's prior contents"),
]


@pytest.mark.parametrize("op,params,c,misread,name,words", MISREADS,
                         ids=[f"{m[4]}-{m[0]}-{i}" for i, m in enumerate(MISREADS)])
@pytest.mark.parametrize("style", ["random", "exact"])
def test_hypothesis_names_a_misread_input(op, params, c, misread, name, words, style):
    bias = name == "bias_dropped_or_spurious" and "not added" in words
    square = name == "weight_transposed" or "along K" in words
    shape = dict(m=8, k=16, n=16) if square else SHAPE  # a square weight
    p = _problem(op, style, seed=3, bias=bias, shape=shape, **params)
    o = "float16"
    actual = _run(op, misread(p), c, o)
    e = expect(op, p, exact=style == "exact", compute_dtype=c, out_dtype=o)
    from qkcheck.oracle.compare import compare
    assert compare(actual, e.expected, e.bound) is not None  # the bug is visible at all
    found = diagnose(op, p, actual, exact=style == "exact", compute_dtype=c, out_dtype=o,
                     context={"out_prefill": np.full((8, 16), 7.0)})
    names = [f.hypothesis for f in found]
    assert name in names, names
    assert any(words in f.sentence for f in found if f.hypothesis == name), [f.sentence for f in found]


@pytest.mark.parametrize("fill,what", [(0.0, "zeros"), (np.nan, "NaN"), (7.0, "prior contents")])
@pytest.mark.parametrize("axis", [0, 1])
def test_missing_tail_is_named_with_its_start(fill, what, axis):
    p = _problem("block_scaled_mm", "random", block=(32, 8))
    o = "bfloat16"
    actual = _run("block_scaled_mm", p, "float8_e4m3fn", o)
    start = 5 if axis == 0 else 12
    if axis == 0:
        actual[start:] = fill
    else:
        actual[:, start:] = fill
    found = diagnose("block_scaled_mm", p, actual, exact=False, compute_dtype="float8_e4m3fn", out_dtype=o,
                     context={"block_n": 4, "block_m": 4, "out_prefill": np.full((8, 16), 7.0)})
    tail = [f.sentence for f in found if f.hypothesis == "missing_tail"]
    name = "row" if axis == 0 else "column"
    assert tail and tail[0].startswith(f"{name}s {start}..") and what in tail[0], tail
    assert ("is a multiple of BLOCK_N=4" in tail[0]) == (axis == 1)


@pytest.mark.parametrize("out_dtype,other", [("bfloat16", "float16"), ("float16", "bfloat16")])
@pytest.mark.parametrize("style", ["random", "exact"])
def test_output_dtype_reinterpretation_is_named(out_dtype, other, style):
    import torch

    p = _problem("w4a16_gemm", style, group_size=32)
    y_other = _run("w4a16_gemm", p, "float16", other)
    t = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    actual = torch.from_numpy(y_other).to(t[other]).view(t[out_dtype]).double().numpy()  # the broken store
    found = diagnose("w4a16_gemm", p, actual, exact=style == "exact", compute_dtype="float16", out_dtype=out_dtype)
    assert [f.hypothesis for f in found] == ["output_dtype_reinterpreted"], found
    assert f"{other} bit patterns read as {out_dtype}" in found[0].sentence


def test_every_gemm_lists_the_shared_hypotheses_each_a_rewrite_or_an_output_rewrite():
    shared = {"scales_transposed", "weight_transposed", "scale_misapplied", "bias_dropped_or_spurious", "missing_tail", "output_dtype_reinterpreted"}
    for op in GEMMS:
        hyps = reference(op).hypotheses
        assert shared <= {h.name for h in hyps}, op
        for h in hyps:
            assert (h.rewrite is None) != (h.outputs is None), (op, h.name)
    assert "fn_fnuz_confused" not in {h.name for h in reference("w4a16_gemm").hypotheses}
    assert set(GEMMS) <= set(references())


def test_the_scale_nibble_and_weight_keys_name_problem_keys():
    """The record fields the shared hypotheses read are keys of the op's problems."""
    for op in GEMMS:
        ref = reference(op)
        keys = set(ref.required) | set(ref.optional)
        assert ref.weight_key in keys and {k for k, _ in ref.scale_keys} <= keys, op
        assert {k for k, _ in ref.nibble_keys} <= keys, op


def test_inapplicable_rewrites_yield_nothing():
    """fnuz swap needs fp8 codes, azp needs a zero point, a per-channel axis swap needs M <= N."""
    p = _problem("scaled_mm", "random", quant_dtype="int8")
    ref = reference("scaled_mm")
    from qkcheck.oracle.ops.scaled_mm import azp_off_by_one, fn_fnuz_confused, scale_vector_on_wrong_axis
    assert list(fn_fnuz_confused(ref, p, {})) == []
    assert list(azp_off_by_one(ref, p, {})) == []
    wide = make_problem("scaled_mm", np.random.default_rng(0), m=32, k=64, n=16, style="random", per_token=False)
    assert list(scale_vector_on_wrong_axis(ref, wide, {})) == []


def _w8a16_scales_along_k(p, c: str, o: str) -> np.ndarray:
    """What an FP8 W8A16 kernel handed the per-channel scale as [N, 1] computes: the scale
    broadcast along K, w[k, n] = code[k, n] * b_scale[k], rounded to the compute dtype as the
    kernel's dequantized tile is, then x @ w in float64 and the output rounding."""
    from qkcheck.oracle.numerics import round_to

    codes = FORMATS[p["quant_dtype"]].decode(np.asarray(p["b"]))
    k = codes.shape[0]
    w = round_to(codes * np.asarray(p["b_scale"], np.float64).reshape(k, 1), c)
    y = np.asarray(p["x"], np.float64) @ w
    if p.get("bias") is not None:
        y = y + np.asarray(p["bias"], np.float64)
    return round_to(y, o)


@pytest.mark.parametrize("quant_dtype", ["float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("style", ["coherent", "exact"])
def test_fp8_w8a16_scales_along_k_are_named_and_a_correct_output_is_not(quant_dtype, style):
    """The seed-004 mistake: an [N, 1] scale on a square weight scales the rows k. Its output is
    named as transposed scales (and as nothing else); a correct output on the same problem, and
    the same mistake on a problem whose scales are all equal (where it changes nothing), are not.
    Power-of-two scales (both styles): the hypothesis moves the scale onto x, which is exact only
    then (with arbitrary scales the kernel rounds code x scale, the alternative x x scale)."""
    p = _problem("fp8_w8a16_gemm", style, seed=5, shape=dict(m=4, k=32, n=32), quant_dtype=quant_dtype,
                 bias=True)
    c, o = "float16", "float32"
    actual = _w8a16_scales_along_k(p, c, o)
    e = expect("fp8_w8a16_gemm", p, exact=style == "exact", compute_dtype=c, out_dtype=o)
    from qkcheck.oracle.compare import compare
    assert compare(actual, e.expected, e.bound) is not None  # the mistake is visible
    found = diagnose("fp8_w8a16_gemm", p, actual, exact=style == "exact", compute_dtype=c, out_dtype=o)
    assert [f.hypothesis for f in found] == ["scales_transposed"], [f.sentence for f in found]
    assert found[0].sentence == (
        "the per-channel weight scales were applied along K (rows) instead of N (columns): the scale tensor "
        "reached the kernel transposed ([32, 1] where [1, 32] was expected)")

    correct = _run("fp8_w8a16_gemm", p, c, o)
    assert diagnose("fp8_w8a16_gemm", p, correct, exact=style == "exact", compute_dtype=c, out_dtype=o) == []

    uniform = dict(p, b_scale=np.full_like(p["b_scale"], p["b_scale"][0, 0]))
    found = diagnose("fp8_w8a16_gemm", uniform, _w8a16_scales_along_k(uniform, c, o), exact=style == "exact",
                     compute_dtype=c, out_dtype=o)
    assert found == [], [f.sentence for f in found]


def test_fp8_w8a16_scales_along_k_needs_a_square_per_channel_scale():
    from qkcheck.oracle.ops.scaled_mm import scales_along_k

    ref = reference("fp8_w8a16_gemm")
    wide = _problem("fp8_w8a16_gemm", "exact", shape=dict(m=4, k=32, n=16))
    assert list(scales_along_k(ref, wide, {})) == []  # [16, 1] cannot broadcast against K=32
    per_tensor = _problem("fp8_w8a16_gemm", "exact", shape=dict(m=4, k=32, n=32), per_channel=False)
    assert list(scales_along_k(ref, per_tensor, {})) == []
    square = _problem("fp8_w8a16_gemm", "exact", shape=dict(m=4, k=32, n=32))
    (alt, sentence), = scales_along_k(ref, square, {})
    assert np.array_equal(alt["x"], square["x"] * square["b_scale"].reshape(1, 32)) and np.all(alt["b_scale"] == 1)
