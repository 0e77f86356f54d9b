"""oracle.schemes: named schemes, quantize/dequantize round trips, scale rules, storage, errors."""
from __future__ import annotations

import dataclasses
import re

import ml_dtypes
import numpy as np
import pytest

from qkcheck.oracle.formats import FORMATS, FloatFormat
from qkcheck.oracle.packing import GPTQ_QWEIGHT, Packing, unpack
from qkcheck.oracle.schemes import (
    SCHEMES,
    QTensor,
    Scheme,
    Stored,
    _encoder,
    dequantize,
    get_scheme,
    pack_codes,
    quantize,
    scale_shape,
    unpack_codes,
)

NAMES = list(SCHEMES)
AXES = [pytest.param(0, id="weight-axis0"), pytest.param(1, id="activation-axis1")]


def data(shape=(256, 256), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp(rng.uniform(-3, 3, size=(1, shape[1])))
    return x.astype(dtype)


def broadcast_scales(qt: QTensor) -> np.ndarray:
    """Each element's effective scale, by repeating the scales over their groups."""
    rows = qt.codes.shape[0] // qt.scales.shape[0]
    cols = qt.codes.shape[1] // qt.scales.shape[1]
    s = np.repeat(np.repeat(qt.scales, rows, axis=0), cols, axis=1)
    return s * (qt.global_scale or 1.0)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", NAMES)
def test_quantize_shapes_and_dtypes(name, axis):
    scheme = SCHEMES[name]
    x = data()
    qt = quantize(x, scheme, axis=axis)
    assert qt.codes.shape == x.shape
    assert qt.codes.dtype == (np.uint8 if scheme.is_float else scheme.format.storage_dtype)
    assert qt.scales.shape == scale_shape(scheme, x.shape, axis=axis) and qt.scales.dtype == np.float64
    assert (qt.scale_codes is not None) == (scheme.scale_format.startswith("float8"))
    assert (qt.global_scale is not None) == scheme.global_scale


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", [n for n in NAMES if not SCHEMES[n].is_float])
def test_integer_error_is_at_most_half_a_step(name, axis):
    x = data(seed=1)
    qt = quantize(x, SCHEMES[name], axis=axis)
    err = np.abs(dequantize(qt) - x.astype(np.float64))
    # half a step; at the ends of the range the stored scale may be smaller than the exact one
    # by the scale format's unit roundoff u, which moves the largest element out by qmax * u steps
    scheme = SCHEMES[name]
    u = float(np.finfo(scheme.scale_format).eps) / 2
    assert (err <= broadcast_scales(qt) * (0.5 + scheme.format.max * u)).all()


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", [n for n in NAMES if not SCHEMES[n].is_float])
def test_integer_codes_lie_in_the_documented_range(name, axis):
    scheme = SCHEMES[name]
    qt = quantize(data(seed=2), scheme, axis=axis)
    fmt = scheme.format
    lo = -fmt.max if fmt.signed else 0  # symmetric signed codes never use -128 / -8
    assert qt.codes.min() >= lo and qt.codes.max() <= fmt.max
    if scheme.zero_point is None and not fmt.signed:
        assert (qt.zeros == (fmt.max + 1) // 2).all()  # GPTQ sym: implicit zero 8


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", NAMES)
def test_dequantized_values_requantize_to_themselves(name, axis):
    """dequantize(quantize(.)) is a projection for symmetric and float schemes; the codes are
    reproduced too, except under RCEIL (a group whose largest element rounds down to qmax/2
    requantizes with half the scale and twice the code, the same value)."""
    scheme = SCHEMES[name]
    if scheme.zero_point == "asym" or not (scheme.is_float or scheme.format.signed):
        pytest.skip("zero-point ranges change on requantization (GPTQ sym maps -amax to -7.5 steps, "
                    "which rounds to -8: the requantized amax is 8 steps, the scale grows by 16/15)")
    qt = quantize(data(seed=3), scheme, axis=axis)
    values = dequantize(qt)
    again = quantize(values, scheme, axis=axis)
    np.testing.assert_array_equal(dequantize(again), values)
    if scheme.scale_rule != "pow2_ceil":
        np.testing.assert_array_equal(again.codes, qt.codes)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", NAMES)
def test_pack_codes_then_unpack_codes_is_exact(name, axis):
    scheme = SCHEMES[name]
    qt = quantize(data(seed=4), scheme, axis=axis)
    stored = pack_codes(qt)
    back = unpack_codes(stored, scheme, axis=axis)
    np.testing.assert_array_equal(back.codes, qt.codes)
    np.testing.assert_array_equal(back.scales, qt.scales)
    assert (back.zeros is None) == (qt.zeros is None)
    if qt.zeros is not None:
        np.testing.assert_array_equal(back.zeros, qt.zeros)
    assert back.global_scale == qt.global_scale
    np.testing.assert_array_equal(dequantize(back), dequantize(qt))


def test_gptq_storage_shapes_and_zero_minus_one():
    K, N = 256, 64
    qt = quantize(data((K, N)), "gptq int4 g128", axis=0)
    stored = pack_codes(qt)
    assert stored.qweight.shape == (K // 8, N) and stored.qweight.dtype == np.int32
    assert stored.qzeros.shape == (K // 128, N // 8) and stored.qzeros.dtype == np.int32
    assert stored.scales.shape == (K // 128, N) and stored.scales.dtype == np.float16
    # symmetric GPTQ: zero 8 stored as 7 in every nibble (GPTQ's historical z - 1)
    assert (stored.qzeros.view(np.uint32) == 0x77777777).all()
    np.testing.assert_array_equal(unpack(stored.qweight, GPTQ_QWEIGHT, signed=False), qt.codes)


def test_gptq_zero_minus_one_wraps_a_zero_of_zero():
    """z = 0 is stored as 15 (the 4-bit field of -1) and loads back as 0."""
    scheme = get_scheme("gptq int4 g128 asym")
    x = np.abs(data((128, 8))) + 1.0  # all positive: lo = 0, so every zero point is 0
    qt = quantize(x, scheme, axis=0)
    assert (qt.zeros == 0).all()
    stored = pack_codes(qt)
    assert (stored.qzeros.view(np.uint32) == 0xFFFFFFFF).all()
    np.testing.assert_array_equal(unpack_codes(stored, scheme, axis=0).zeros, qt.zeros)


def test_awq_stores_zeros_without_offset_in_interleaved_order():
    scheme = get_scheme("awq int4 g128")
    x = data((128, 8), seed=5)
    qt = quantize(x, scheme, axis=0)
    word = int(pack_codes(qt).qzeros.view(np.uint32)[0, 0])
    fields = [(word >> (4 * i)) & 0xF for i in range(8)]
    assert fields == [int(qt.zeros[0, c]) for c in (0, 2, 4, 6, 1, 3, 5, 7)]


def test_activation_packing_runs_along_k():
    """Packings are written for [K, N]; for x[M, K] (axis=1) they still run along K."""
    x = data((4, 64))
    stored = pack_codes(quantize(x, "mxfp4", axis=1))
    assert stored.qweight.shape == (4, 32)
    assert stored.scales.shape == (4, 2)


# ---------------------------------------------------------------- scale rules: golden rows


# (element, amax, OCP floor exponent, RCEIL exponent). Source: OCP Microscaling Formats (MX)
# v1.0 §6.3 (shared_exp = floor(log2(amax)) - emax_elem; emax of E2M1 = 2, of E4M3 = 8) and the
# RCEIL rule 2**ceil(log2(amax / max_elem)) (max E2M1 = 6, E4M3 = 448).
MX_GOLDEN = [
    pytest.param("float4_e2m1fn", 6.0, 0, 0, id="fp4-amax6"),
    pytest.param("float4_e2m1fn", 7.0, 0, 1, id="fp4-amax7"),
    pytest.param("float4_e2m1fn", 4.0, 0, 0, id="fp4-amax4"),
    pytest.param("float4_e2m1fn", 3.99, -1, 0, id="fp4-amax3.99"),
    pytest.param("float4_e2m1fn", 1.0, -2, -2, id="fp4-amax1"),
    pytest.param("float4_e2m1fn", 12.0, 1, 1, id="fp4-amax12"),
    pytest.param("float4_e2m1fn", 12.5, 1, 2, id="fp4-amax12.5"),
    pytest.param("float8_e4m3fn", 448.0, 0, 0, id="e4m3-amax448"),
    pytest.param("float8_e4m3fn", 500.0, 0, 1, id="e4m3-amax500"),
    pytest.param("float8_e4m3fn", 255.0, -1, 0, id="e4m3-amax255"),
]


@pytest.mark.parametrize("elem, amax, floor_exp, rceil_exp", MX_GOLDEN)
def test_mx_scale_rules_golden(elem, amax, floor_exp, rceil_exp):
    x = np.zeros((1, 32), np.float32)
    x[0, 5] = amax
    x[0, 6] = -amax / 3
    for rule, exp in (("mx_floor", floor_exp), ("pow2_ceil", rceil_exp)):
        scheme = Scheme(elem, "group", 32, scale_format="float8_e8m0fnu", scale_rule=rule, amax_floor=0.0)
        qt = quantize(x, scheme, axis=1)
        assert qt.scales[0, 0] == 2.0**exp, rule
        assert qt.scale_codes[0, 0] == exp + 127, rule  # E8M0: value 2**(code - 127)


def test_mx_floor_saturates_and_rceil_does_not():
    """amax = 7 under OCP floor: scale 1, 7 saturates to 6; under RCEIL: scale 2, 7/2 = 3.5 -> 4
    (RNE tie between 3 and 4 goes to the even mantissa, 4)."""
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 7.0
    np.testing.assert_array_equal(dequantize(quantize(x, "mxfp4", axis=1))[0, 0], 6.0)
    np.testing.assert_array_equal(dequantize(quantize(x, "mxfp4 rceil", axis=1))[0, 0], 8.0)


def test_mxfp4_matches_an_independent_ml_dtypes_computation():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 256)) * np.exp(rng.uniform(-8, 8, size=(64, 1)))).astype(np.float32)
    x[3, :32] = 0.0  # an all-zero block
    x[5, 40] = 6.0 * 2.0**-3  # exact grid points and ties
    x[5, 41] = 5.0 * 2.0**-3
    qt = quantize(x, "mxfp4", axis=1)
    blocks = x.reshape(64, 8, 32)
    amax = np.abs(blocks).max(axis=-1)
    with np.errstate(divide="ignore"):
        exp = np.where(amax > 0, np.floor(np.log2(amax)) - 2, -127)  # emax(E2M1) = 2
    exp = np.clip(exp, -127, 127)
    scaled = (blocks / np.exp2(exp)[..., None].astype(np.float32)).astype(np.float32)
    codes = scaled.astype(ml_dtypes.float4_e2m1fn).view(np.uint8).reshape(64, 256)
    np.testing.assert_array_equal(qt.codes, codes)
    np.testing.assert_array_equal(qt.scale_codes, (exp + 127).astype(np.uint8))
    scales_ml = np.exp2(exp).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    np.testing.assert_array_equal(qt.scale_codes, scales_ml)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("elem", [n for n, f in FORMATS.items() if isinstance(f, FloatFormat) and f.signed])
def test_table_encoder_equals_format_encode(elem, dtype):
    """The lookup encoder used for speed is FORMATS[elem].encode(saturate=True), including ties
    (midpoints between neighbouring codes) and values just either side of them."""
    fmt = FORMATS[elem]
    grid = np.unique(np.abs(fmt.decode_table[np.isfinite(fmt.decode_table)]))
    mids = (grid[1:] + grid[:-1]) / 2
    rng = np.random.default_rng(8)
    y = np.concatenate([
        grid, mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf), mids * 1.5, [fmt.max * 4, 1e-30],
        rng.standard_normal(20000) * fmt.max / 3,
    ]).astype(dtype)
    y = np.concatenate([y, -y])
    np.testing.assert_array_equal(_encoder(elem).encode(y), fmt.encode(y, saturate=True))


def test_nvfp4_global_and_block_scales():
    x = np.zeros((2, 32), np.float32)
    x[0, :16] = np.linspace(-2688.0, 2688.0, 16)  # tensor amax 2688 = 6 * 448 -> global scale 1
    x[1, 16] = 6.0  # block amax 6 -> block scale e4m3(6 / 6 / 1) = 1
    qt = quantize(x, "nvfp4", axis=1)
    assert qt.global_scale == 1.0
    assert qt.scales[0, 0] == 448.0 and qt.scales[1, 1] == 1.0
    assert qt.scales[0, 1] == 0.0 and (qt.codes[0, 16:] == 0).all()  # zero block
    x2 = x / 1024
    qt2 = quantize(x2, "nvfp4", axis=1)
    assert qt2.global_scale == float(np.float32(2688.0 / 1024 / (6 * 448)))
    np.testing.assert_allclose(dequantize(qt2), dequantize(qt) / 1024, rtol=0, atol=0)


# ---------------------------------------------------------------- all-zero groups


def test_all_zero_group_linear_scheme_uses_the_amax_floor():
    x = data((4, 256))
    x[1] = 0.0
    qt = quantize(x, "int8 per-token", axis=1)
    assert qt.scales[1, 0] == float(np.float32(1e-10 / 127))
    assert (qt.codes[1] == 0).all() and (dequantize(qt)[1] == 0).all()


@pytest.mark.parametrize("name", ["mxfp4", "mxfp4 rceil", "mxfp8 e4m3"])
def test_all_zero_mx_block_gets_e8m0_code_0(name):
    x = data((2, 64))
    x[0, :32] = 0.0
    qt = quantize(x, name, axis=1)
    assert qt.scale_codes[0, 0] == 0 and qt.scales[0, 0] == 2.0**-127
    assert (qt.codes[0, :32] == 0).all()


def test_all_zero_tensor_nvfp4():
    qt = quantize(np.zeros((2, 32), np.float32), "nvfp4", axis=1)
    assert qt.global_scale == 1.0 and (qt.scales == 0).all() and (qt.codes == 0).all()
    assert (dequantize(qt) == 0).all()


@pytest.mark.parametrize("name, zero", [("gptq int4 g128", 8), ("gptq int4 g128 asym", 0)])
def test_all_zero_group_gptq(name, zero):
    x = data((256, 8))
    x[:128] = 0.0
    qt = quantize(x, name, axis=0)
    assert qt.zeros[0, 0] == zero and (qt.codes[:128] == zero).all()
    assert (dequantize(qt)[:128] == 0).all()


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", NAMES)
def test_names_parse_regardless_of_token_order_and_case(name):
    shuffled = " ".join(reversed(name.upper().split()))
    if "per-token-group" in name:
        shuffled = name.upper()  # its size token follows it
    a, b = SCHEMES[name], get_scheme(shuffled)
    assert dataclasses.replace(a, name="") == dataclasses.replace(b, name="")


SCALE_SHAPES = [
    pytest.param("int8 per-channel", 0, (1, 512), id="per-channel-weight"),
    pytest.param("int8 per-token", 1, (256, 1), id="per-token-activation"),
    pytest.param("gptq int4 g128", 0, (2, 512), id="group-weight"),
    pytest.param("fp8 per-token-group 128", 1, (256, 4), id="token-group-activation"),
    pytest.param("fp8 block128", 0, (2, 4), id="block-weight"),
    pytest.param("fp8 block128", 1, (2, 4), id="block-activation"),
    pytest.param("fp8 e4m3fn per-tensor", 0, (1, 1), id="tensor"),
]


@pytest.mark.parametrize("name, axis, expected", SCALE_SHAPES)
def test_scale_shape_convention(name, axis, expected):
    assert scale_shape(get_scheme(name), (256, 512), axis=axis) == expected


# ---------------------------------------------------------------- errors


def _qt(name="int4 g32", **changes):
    qt = quantize(data((64, 8)), name, axis=0)
    return dataclasses.replace(qt, **changes)


ERRORS = [
    pytest.param(lambda: get_scheme("int4 g128 foo"), ValueError,
                 "unknown token 'foo' in scheme name 'int4 g128 foo' (allowed tokens: gptq, awq, int4", id="unknown-token"),
    pytest.param(lambda: get_scheme("g128"), ValueError, "scheme name 'g128' names no element family", id="no-family"),
    pytest.param(lambda: get_scheme(""), ValueError, "name='' is empty", id="empty-name"),
    pytest.param(lambda: get_scheme(128), TypeError, "name=128 must be a str", id="name-type"),
    pytest.param(lambda: get_scheme("fp8 per-token-group"), ValueError,
                 "'per-token-group' in name='fp8 per-token-group' needs a group size", id="token-group-size"),
    pytest.param(lambda: get_scheme("gptq int8"), ValueError, "'gptq' checkpoints hold int4 weights", id="gptq-int8"),
    pytest.param(lambda: get_scheme("awq int4 g128 sym"), ValueError, "AWQ checkpoints are asymmetric", id="awq-sym"),
    pytest.param(lambda: Scheme("float8_e4m3"), ValueError,
                 "elem='float8_e4m3' is not a known format (allowed: 'float8_e4m3fn'", id="unknown-format"),
    pytest.param(lambda: Scheme("float8_e8m0fnu"), ValueError, "has no sign and cannot hold tensor elements",
                 id="e8m0-element"),
    pytest.param(lambda: Scheme("int8", "row"), ValueError, "granularity='row' is not known", id="granularity"),
    pytest.param(lambda: Scheme("int8", "group", 0), ValueError, "group_size=0 must be a positive int or -1",
                 id="group-size-zero"),
    pytest.param(lambda: Scheme("int8", "block", block=(128,)), ValueError,
                 "block=(128,) must be a pair of positive ints", id="block-shape"),
    pytest.param(lambda: Scheme("int8", "group", 32, block=(1, 2)), ValueError,
                 "block=(1, 2) is only meaningful with granularity='block'", id="block-without-block"),
    pytest.param(lambda: Scheme("int8", scale_format="bfloat16"), ValueError,
                 "scale_format='bfloat16' is not a scale format (allowed: 'float32', 'float16'", id="scale-format"),
    pytest.param(lambda: Scheme("int8", scale_rule="max"), ValueError, "scale_rule='max' is not known", id="scale-rule"),
    pytest.param(lambda: Scheme("int8", zero_point="affine"), ValueError, "zero_point='affine' is not known",
                 id="zero-point"),
    pytest.param(lambda: Scheme("int4", zero_point="asym"), ValueError,
                 "zero_point='asym' needs an unsigned integer element format, got elem='int4' (allowed: 'uint4', 'uint8')",
                 id="asym-signed"),
    pytest.param(lambda: Scheme("uint4", zero_point="asym", scale_rule="pow2_ceil"), ValueError,
                 "scale_rule='pow2_ceil' is not defined with zero_point='asym'", id="asym-pow2"),
    pytest.param(lambda: Scheme("int4", zeros_minus_one=True), ValueError,
                 "zeros_minus_one=True needs stored zero points", id="zeros-minus-one-signed"),
    pytest.param(lambda: Scheme("float4_e2m1fn", scale_format="float8_e8m0fnu"), ValueError,
                 "scale_rule='amax' gives scales that are not powers of two", id="e8m0-amax"),
    pytest.param(lambda: Scheme("int4", packing="gptq"), TypeError, "packing='gptq' must be a Packing", id="packing-type"),
    pytest.param(lambda: Scheme("int8", packing=GPTQ_QWEIGHT), ValueError,
                 "packing.bits=4 is narrower than elem='int8' (8 bits)", id="packing-bits"),
    pytest.param(lambda: Scheme("int8", packing=Packing(axis=2)), ValueError,
                 "packing.axis=2 must address a 2-D array", id="packing-axis"),
    pytest.param(lambda: Scheme("float4_e2m1fn", global_scale=True), ValueError,
                 "global_scale=True is NVFP4's two-level scaling", id="global-scale"),
    pytest.param(lambda: Scheme("int8", amax_floor=-1.0), ValueError, "amax_floor=-1.0 must be a finite float >= 0",
                 id="amax-floor"),
    pytest.param(lambda: quantize(np.zeros((4096, 8), np.float32), "int4 g48", axis=0), ValueError,
                 "group_size=48 must divide K=4096 (allowed: 16, 32, 64, 128, -1)", id="group-size-divides"),
    pytest.param(lambda: quantize(np.zeros((256, 64), np.float32), "fp8 block128", axis=0), ValueError,
                 "block=(128, 128) does not tile x.shape=(256, 64) along the other axis", id="block-tiles"),
    pytest.param(lambda: quantize(np.zeros((2, 8, 32)), "int8 per-token", axis=1), ValueError,
                 "x must be 2-D (w[K, N] or x[M, K]), got shape (2, 8, 32)", id="rank"),
    pytest.param(lambda: quantize(np.zeros((8, 32)), "int8 per-token", axis=2), ValueError,
                 "axis=2 is not an axis of a 2-D array (allowed: 0 for weights w[K, N], 1 for activations x[M, K])",
                 id="axis"),
    pytest.param(lambda: quantize(np.array([[1.0, np.nan]]), "int8 per-token", axis=1), ValueError,
                 "x holds nan at index (0, 1) (1 non-finite of 2)", id="nan-input"),
    pytest.param(lambda: quantize(np.array([["a"]]), "int8 per-token", axis=1), TypeError,
                 "x must be a real array, got dtype <U1", id="x-dtype"),
    pytest.param(lambda: quantize(np.zeros((8, 32)), 3, axis=1), TypeError, "scheme=3 must be a Scheme or a scheme name",
                 id="scheme-type"),
    pytest.param(lambda: quantize(np.full((1, 32), 1e9), "int8 per-token fp16-scales", axis=1), ValueError,
                 "a scale overflows float16", id="fp16-scale-overflow"),
    pytest.param(lambda: dequantize(_qt(scales=np.full((2, 8), np.nan))), ValueError,
                 "qt.scales must be finite floats", id="nan-scale"),
    pytest.param(lambda: dequantize(_qt(scales=np.ones((8, 2)))), ValueError,
                 "qt.scales has shape (8, 2), expected (2, 8)", id="scale-shape"),
    pytest.param(lambda: dequantize(_qt(codes=np.full((64, 8), 9, np.int8))), ValueError,
                 "qt.codes hold 9 (min 9, max 9), out of range for int4 codes (allowed: -8..7)", id="codes-range"),
    pytest.param(lambda: dequantize(_qt(codes=np.zeros((64, 8), np.float32))), ValueError,
                 "qt.codes must be a 2-D integer array, got dtype float32", id="codes-dtype"),
    pytest.param(lambda: dequantize(_qt(zeros=np.zeros((2, 8), np.int32))), ValueError,
                 "qt.zeros is set but int4 codes have no zero point", id="zeros-for-signed"),
    pytest.param(lambda: dequantize(_qt("gptq int4 g32", zeros=None)), ValueError,
                 "qt.zeros is None but uint4 codes need zero points", id="zeros-missing"),
    pytest.param(lambda: dequantize(_qt("gptq int4 g32", zeros=np.zeros((8, 2), np.int32))), ValueError,
                 "qt.zeros has shape (8, 2), expected (2, 8)", id="zeros-shape"),
    pytest.param(lambda: dequantize(np.zeros((2, 2))), TypeError, "qt must be a QTensor, got ndarray", id="qt-type"),
    pytest.param(lambda: unpack_codes(np.zeros(1), "gptq int4 g128", axis=0), TypeError,
                 "stored must be a Stored, got ndarray", id="stored-type"),
    pytest.param(lambda: unpack_codes(Stored(np.zeros((16, 8), np.int32), np.zeros((1, 8), np.float16), None, None,
                                             (64, 8)), "gptq int4 g128", axis=0), ValueError,
                 "stored.qweight unpacks to shape (128, 8), but stored.shape=(64, 8)", id="stored-shape"),
    pytest.param(lambda: unpack_codes(Stored(np.zeros((1, 16), np.uint8), np.ones((1, 1), np.float32), None, None,
                                             (1, 32)), "mxfp4", axis=1), ValueError,
                 "stored.scales.dtype=float32, but float8_e8m0fnu scales are stored as uint8 codes", id="stored-scales"),
]


@pytest.mark.parametrize("make, exc, message", ERRORS)
def test_bad_input_message(make, exc, message):
    with pytest.raises(exc, match=re.escape(message)) as info:
        make()
    # every message also says what to do about it
    assert re.search(
        r"; (pass|pick|use|write|start|drop|set|pad|replace|reshape|convert|scale|unpack|check|build|"
        r"per-token|RCEIL|a NaN|the packing|recompute)", str(info.value)), str(info.value)
