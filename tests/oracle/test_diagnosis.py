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
    if name == "fn_fnuz_confused" and np.isnan(actual).all():
        # -0 codes read as fnuz NaN poison every output: named only as one explanation of an all-NaN output
        assert names == ["ambiguous"] and "fn_fnuz_confused" in found[0].sentence, [f.sentence for f in found]
        return
    assert name in names, names
    assert any(words in f.sentence for f in found if f.hypothesis == name), [f.sentence for f in found]


@pytest.mark.parametrize("fill,what", [(0.0, "zeros"), (7.0, "prior contents")])
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


def test_a_nan_tail_is_not_called_unwritten():
    """NaN rows come from reads into poisoned padding (a wrong stride), not from an unwritten
    buffer (the runner's is sentinel-filled): no tail is named, and the failure says so plainly."""
    p = _problem("block_scaled_mm", "random", block=(32, 8))
    actual = _run("block_scaled_mm", p, "float8_e4m3fn", "bfloat16")
    actual[5:] = np.nan
    found = diagnose("block_scaled_mm", p, actual, exact=False, compute_dtype="float8_e4m3fn", out_dtype="bfloat16",
                     context={"block_n": 4, "block_m": 4})
    assert [f.hypothesis for f in found] == ["no_known_mechanism"], found
    assert found[0].sentence.startswith("no known mechanism matches")


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


# ---------------------------------------------------------------- hypotheses per bug class over the op's structure

PAD = 7  # the runner's poison padding between the rows of an input view (cases.runner.POISON_PAD)


def _padded_contiguous_read(a, poison):
    """What a kernel reading ``a`` [R, C] with row stride C sees when rows are PAD apart."""
    r, c = a.shape
    flat = np.full(r * (c + PAD), poison, dtype=np.float64)
    flat.reshape(r, c + PAD)[:, :c] = a
    return flat[:r * c].reshape(r, c)


def _per_k_w4a16(p, group_of_k):
    return dict(p, scales=p["scales"][group_of_k], group_size=1)


def _per_k_block(p, group_of_k):
    return dict(p, a_scale=p["a_scale"][:, group_of_k], b_scale=p["b_scale"][group_of_k], block=(1, 8))


def _split_first(key, k, per):
    def misread(p):
        a = np.array(p[key], copy=True)
        a[:, per:] = 0
        return dict(p, **{key: a})
    return misread


# (name, op, generator params, compute dtype, misread, context, expected hypothesis, words)
CLASSES = [
    ("w4a16 first group per tile", "w4a16_gemm", dict(group_size=32), "float16",
     lambda p: _per_k_w4a16(p, (np.arange(128) // 64) * 64 // 32), {"block_k": 64},
     "first_group_scale_per_tile", "BLOCK_K=64"),
    ("block-scaled first group per tile", "block_scaled_mm", dict(block=(32, 8)), "float8_e4m3fn",
     lambda p: _per_k_block(p, (np.arange(128) // 64) * 64 // 32), {"block_k": 64},
     "first_group_scale_per_tile", "BLOCK_K=64"),
    ("w4a16 group 0 forever", "w4a16_gemm", dict(group_size=64), "float16",
     lambda p: _per_k_w4a16(p, np.zeros(128, dtype=int)), {"block_k": 32},
     "group_index_not_advancing", "never advances"),
    ("w4a16 group from the tile index", "w4a16_gemm", dict(group_size=32), "float16",
     lambda p: _per_k_w4a16(p, np.arange(128) // 64), {"block_k": 64},
     "group_index_not_advancing", "K-tile index"),
    ("block-scaled group 0 forever", "block_scaled_mm", dict(block=(32, 8)), "float8_e4m3fn",
     lambda p: _per_k_block(p, np.zeros(128, dtype=int)), {"block_k": 32},
     "group_index_not_advancing", "never advances"),
    ("w4a16 x read as contiguous", "w4a16_gemm", dict(group_size=32), "float16",
     lambda p: dict(p, x=_padded_contiguous_read(p["x"], np.nan)), {"input_row_pad": PAD},
     "strides_assumed_contiguous", "read as if contiguous"),
    ("scaled_mm int8 a read as contiguous", "scaled_mm", dict(quant_dtype="int8"), "int8",
     lambda p: dict(p, a=_padded_contiguous_read(p["a"], -1).astype(np.asarray(p["a"]).dtype)), {"input_row_pad": PAD},
     "strides_assumed_contiguous", "row stride 128"),
    ("w4a16 split-K partial lost", "w4a16_gemm", dict(group_size=32), "float16", _split_first("x", 128, 64),
     {"block_k": 32, "split_k": 2}, "split_k_reduction_wrong", "only the first"),
    ("scaled_mm per-token scale as per-tensor", "scaled_mm", dict(quant_dtype="float8_e4m3fn"), "float8_e4m3fn",
     lambda p: dict(p, a_scale=np.full_like(p["a_scale"], p["a_scale"].flat[0])), {},
     "scale_granularity_confused", "per-token"),
    ("w8a16 per-channel scale as per-tensor", "w8a16_gemm", dict(group_size=-1), "float16",
     lambda p: dict(p, scales=np.full_like(p["scales"], p["scales"].flat[0])), {},
     "scale_granularity_confused", "per-channel"),
]
ALL_CONTEXT = {"block_k": 64, "split_k": 2, "input_row_pad": PAD}


@pytest.mark.parametrize("label,op,params,c,misread,ctx,name,words", CLASSES, ids=[x[0] for x in CLASSES])
@pytest.mark.parametrize("style", ["random", "exact"])
def test_each_bug_class_names_its_own_mutation_alone(label, op, params, c, misread, ctx, name, words, style):
    p = _problem(op, style, seed=5, **params)
    o = "float16"
    actual = _run(op, misread(p), c, o)
    found = diagnose(op, p, actual, exact=style == "exact", compute_dtype=c, out_dtype=o, context=ctx)
    assert [f.hypothesis for f in found] == [name] * len(found) and found, [(f.hypothesis, f.sentence) for f in found]
    assert any(words in f.sentence for f in found), [f.sentence for f in found]
    # the correct output, diagnosed with every context the new classes read, names nothing
    correct = _run(op, p, c, o)
    assert diagnose(op, p, correct, exact=style == "exact", compute_dtype=c, out_dtype=o,
                    context={**ALL_CONTEXT, **ctx}) == []


@pytest.mark.parametrize("label,op,params,c,misread,ctx,name,words", CLASSES, ids=[x[0] for x in CLASSES])
def test_a_bug_class_does_not_fire_on_another_class_mutation(label, op, params, c, misread, ctx, name, words):
    """Each mutation diagnosed with the context every class reads: only its own class is named."""
    p = _problem(op, "random", seed=6, **params)
    actual = _run(op, misread(p), c, "float16")
    found = diagnose(op, p, actual, exact=False, compute_dtype=c, out_dtype="float16", context={**ALL_CONTEXT, **ctx})
    assert {f.hypothesis for f in found} <= {name, "ambiguous", "no_known_mechanism"}, [(f.hypothesis, f.sentence) for f in found]


def test_k_tail_unmasked_names_an_all_nan_output_only_with_a_k_tail():
    p = _problem("w4a16_gemm", "random", shape=dict(m=8, k=96, n=16), group_size=32)
    nan = np.full((8, 16), np.nan)
    found = diagnose("w4a16_gemm", p, nan, exact=False, compute_dtype="float16", out_dtype="float16",
                     context={"block_k": 64})
    assert [f.hypothesis for f in found] == ["k_tail_unmasked"] and "K=96" in found[0].sentence
    found = diagnose("w4a16_gemm", p, nan, exact=False, compute_dtype="float16", out_dtype="float16",
                     context={"block_k": 32})  # 96 = 3 x 32: no partial tile
    assert [f.hypothesis for f in found] == ["no_known_mechanism"]


def test_nan_rows_from_a_strided_read_are_not_called_unwritten():
    """The foreign-kernel report of issue 24: rows read through a wrong stride were called 'never
    written'. M = 2: row 1 reads the padding (NaN) and is NaN throughout."""
    p = _problem("w4a16_gemm", "random", shape=dict(m=2, k=64, n=16), group_size=32)
    actual = _run("w4a16_gemm", dict(p, x=_padded_contiguous_read(p["x"], np.nan)), "float16", "float16")
    assert np.isnan(actual[1]).all() and not np.isnan(actual[0]).any()
    found = diagnose("w4a16_gemm", p, actual, exact=False, compute_dtype="float16", out_dtype="float16",
                     context={"block_m": 1, "input_row_pad": PAD})
    assert [f.hypothesis for f in found] == ["strides_assumed_contiguous"], found


@pytest.mark.parametrize("op,params,c", [
    ("scaled_mm", dict(quant_dtype="float8_e4m3fn"), "float8_e4m3fn"),
    ("block_scaled_mm", dict(quant_dtype="float8_e4m3fn", block=(32, 8)), "float8_e4m3fn"),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e4m3fn"), "float16"),
])
def test_fn_decoded_with_the_fnuz_exponent_bias_is_named_where_zero_codes_are_negative(op, params, c):
    """A decoder taking fnuz's exponent bias for e4m3fn codes, fn's special codes kept, halves
    every finite value and keeps -0 (0x80) a zero; read as fnuz, 0x80 is a NaN, so on the exact
    regime's -0 codes only the bias-alone variant reproduces it."""
    p = _problem(op, "exact", seed=3, **params)
    codes = [np.asarray(p[k]) for k in ("a", "b") if k in p]
    assert any((v == 0x80).any() for v in codes)
    halved = dict(p, **{s: np.asarray(p[s], np.float64) * 0.5 for k, s in (("a", "a_scale"), ("b", "b_scale"))
                        if k in p})
    actual = _run(op, halved, c, "float16")
    found = diagnose(op, p, actual, exact=True, compute_dtype=c, out_dtype="float16")
    assert [f.hypothesis for f in found] == ["fn_fnuz_confused"], [(f.hypothesis, f.sentence) for f in found]
    assert "exponent bias of float8_e4m3fnuz" in found[0].sentence


def test_fn_read_as_fnuz_is_not_named_a_scale_applied_twice():
    """e4m3fn bytes read as fnuz halve every value: with a_scale 0.25 'a_scale applied twice'
    (0.0625 = 0.25 / 4) reproduces it exactly too; the two are reported as indistinguishable on
    this case, never the wrong one alone."""
    p = _problem("scaled_mm", "random", quant_dtype="float8_e4m3fn", per_token=False)
    p = dict(p, a_scale=np.full((1, 1), 0.25))
    actual = _run("scaled_mm", _swap_fnuz(p), "float8_e4m3fn", "float16")
    found = diagnose("scaled_mm", p, actual, exact=False, compute_dtype="float8_e4m3fn", out_dtype="float16")
    names = [f.hypothesis for f in found]
    assert names in (["fn_fnuz_confused"], ["ambiguous"]), found
    if names == ["ambiguous"]:
        assert "fn_fnuz_confused" in found[0].sentence


def test_an_all_nan_output_is_not_pinned_on_a_hypothesis_that_predicts_nan_everywhere():
    """With a -0 code (0x80) in every row of a, reading the e4m3fn codes as fnuz (where 0x80 is NaN) predicts
    NaN everywhere: an all-NaN output (a poisoned read, a NaN scale) agreeing with that says nothing of the
    mechanism, so fn_fnuz_confused is named only as one explanation among others (ambiguous). The finite misread
    is still named alone (MISREADS)."""
    p = _problem("block_scaled_mm", "exact", quant_dtype="float8_e4m3fn", block=(32, 8))
    a = np.array(p["a"], copy=True)
    a[:, 0] = -0.0
    p = dict(p, a=a)
    e = expect("block_scaled_mm", p, exact=True, compute_dtype="float8_e4m3fn", out_dtype="float16")
    assert np.isfinite(e.expected).all()
    swapped = expect("block_scaled_mm", _swap_fnuz(p), exact=True, compute_dtype="float8_e4m3fnuz", out_dtype="float16")
    assert np.isnan(swapped.expected).all()  # the premise: the hypothesis predicts NaN everywhere
    found = diagnose("block_scaled_mm", p, np.full(e.expected.shape, np.nan), exact=True,
                     compute_dtype="float8_e4m3fn", out_dtype="float16")
    assert [f.hypothesis for f in found] == ["ambiguous"], [f.sentence for f in found]
    assert "fn_fnuz_confused would give that" in found[0].sentence and "poisoned memory" in found[0].sentence
