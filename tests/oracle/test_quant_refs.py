"""oracle.ops.quant: quantization references checked against independent float32 implementations
(torch CPU, ml_dtypes), the tie ambiguity (accepts only near-ties), saturation, all-zero rows,
scale_ub, UE8M0, MX floor vs rceil, NVFP4, diagnosis hypotheses, output decoding, exact inputs
and every input error."""
from __future__ import annotations

import math
import re

import ml_dtypes
import numpy as np
import pytest
import torch

from qkcheck.oracle.compare import Divergence
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.ops.quant import (
    CODE_REL_AMBIGUITY,
    LINEAR_QUANT_DTYPES,
    MX_FORMATS,
    QUANT_HYPOTHESES,
    QUANT_OPS,
    SCALE_REL_AMBIGUITY,
    codes_from_output,
    compare_quant,
    diagnose_quant,
    exact_quant_inputs,
    expect_quant,
)
from qkcheck.oracle.schemes import get_scheme, quantize

FP8 = [d for d in LINEAR_QUANT_DTYPES if d != "int8"]
TORCH_FP8 = {
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2": torch.float8_e5m2, "float8_e5m2fnuz": torch.float8_e5m2fnuz,
}
MX_ELEM = {f: get_scheme(s).elem for f, s in MX_FORMATS.items()}
F32 = np.float32


def qmax_of(dtype: str) -> float:
    return 127.0 if dtype == "int8" else FORMATS[dtype].max


def activations(shape=(16, 256), seed=0, near_ties=True, dtype="float8_e4m3fn", group=None) -> np.ndarray:
    """Random float32 rows of very different magnitudes; with near_ties, a quarter of each row's
    elements are placed at float32(tie * scale): the quotient lands within a float32 ulp of a tie."""
    rng = np.random.default_rng(seed)
    m, k = shape
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-4, 4, size=(m, 1)))).astype(F32)
    if not near_ties:
        return x
    g = group or k
    xg = x.reshape(m, k // g, g).astype(np.float64)
    scale = (np.abs(xg).max(axis=2, keepdims=True).astype(F32) / F32(qmax_of(dtype))).astype(np.float64)
    if dtype == "int8":
        ties = np.arange(-20, 20) + 0.5
    else:
        t = FORMATS[dtype].decode_table
        vals = np.unique(t[np.isfinite(t) & (t >= 0) & (t <= qmax_of(dtype))])
        ties = (vals[1:] + vals[:-1]) / 2
    pick = rng.choice(ties, size=(m, k // g, g // 4)) * np.where(rng.integers(0, 2, (m, k // g, g // 4)), -1, 1)
    pos = rng.permuted(np.tile(np.arange(g), (m, k // g, 1)), axis=2)[..., : g // 4]
    amax_pos = np.abs(xg).argmax(axis=2)[..., None]
    pos = np.where(pos == amax_pos, (pos + 1) % g, pos)  # keep each group's amax element
    np.put_along_axis(xg, pos, pick * scale, axis=2)
    # the planted values never exceed the amax (|tie| < qmax)
    return xg.reshape(m, k).astype(F32)


# ---------------------------------------------------------------- independent implementations


def torch_codes(y: torch.Tensor, dtype: str, qmax: float, int_range=(-128, 127)) -> np.ndarray:
    if dtype == "int8":
        return torch.round(y).clamp(*int_range).to(torch.int8).numpy()  # torch.round: half to even
    return y.clamp(-qmax, qmax).to(TORCH_FP8[dtype]).view(torch.uint8).numpy()


def torch_linear(x, dtype, group=None, *, ub=None, floor=1e-10, qmax=None, ue8m0=False, how="div"):
    """What a float32 kernel computes: amax, scale = amax / qmax in float32, then x / scale
    ("div"), x * (1 / scale) ("recip") or x * (qmax / amax) ("qmax_over_amax")."""
    t = torch.from_numpy(np.asarray(x, F32))
    m, k = t.shape
    g = group or k
    qmax = qmax or qmax_of(dtype)
    tg = t.reshape(m, k // g, g)
    amax = tg.abs().amax(-1, keepdim=True)
    if ub is not None:
        amax = amax.clamp(max=ub)
    amax = amax.clamp(min=floor)  # the float32 constant
    scale = amax / qmax
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    y = {"div": lambda: tg / scale, "recip": lambda: tg * (1.0 / scale),
         "qmax_over_amax": lambda: tg * (qmax / amax)}[how]()
    return torch_codes(y.reshape(m, k), dtype, qmax), scale.reshape(m, k // g).numpy()


def torch_mx(x, fmt, rule):
    """OCP MX v1.0 §6.3 (floor: exponent bits of amax) and RCEIL (Triton's bit trick on the float32
    quotient), elements rounded by ml_dtypes."""
    elem = MX_ELEM[fmt]
    qmax = FORMATS[elem].max
    emax = math.floor(math.log2(qmax))
    t = torch.from_numpy(np.asarray(x, F32))
    m, k = t.shape
    tb = t.reshape(m, k // 32, 32)
    amax = tb.abs().amax(-1, keepdim=True)
    if rule == "floor":
        _, e = torch.frexp(amax)
        exp = torch.where(amax == 0, torch.full_like(e, -127), e - 1 - emax)
    else:
        bits = (amax / qmax).view(torch.int32)
        exp = (((bits + 0x7FFFFF) & 0x7F800000) >> 23) - 127
    exp = exp.clamp(-127, 127)
    scale = torch.exp2(exp.float())
    y = (tb / scale).clamp(-qmax, qmax).reshape(m, k).numpy()
    codes = y.astype(getattr(ml_dtypes, elem)).view(np.uint8)
    return codes, (exp + 127).reshape(m, k // 32).numpy().astype(np.uint8)


def torch_nvfp4(x, global_scale):
    """NVFP4 as the CUDA quantizers compute it: the quantization-side global 1 / global_scale,
    SF = gs * (amax * (1/6)), E4M3 block scale, output scale 1 / (SF * (1 / gs)), e2m1 codes."""
    t = torch.from_numpy(np.asarray(x, F32))
    m, k = t.shape
    tb = t.reshape(m, k // 16, 16)
    gs = torch.tensor(1.0 / global_scale, dtype=torch.float32)
    amax = tb.abs().amax(-1, keepdim=True)
    sf = gs * (amax * torch.tensor(1.0 / 6.0, dtype=torch.float32))
    sf8 = sf.to(torch.float8_e4m3fn)  # saturates finite overflow to 448
    sfd = sf8.float()
    out_scale = torch.where(sfd != 0, 1.0 / (sfd * (1.0 / gs)), torch.zeros_like(sfd))
    y = (tb * out_scale).clamp(-6, 6).reshape(m, k).numpy()
    codes = y.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    return codes, sf8.view(torch.uint8).reshape(m, k // 16).numpy()


# ---------------------------------------------------------------- registry


def test_registry_holds_the_contract_ops():
    assert set(QUANT_OPS) == {"per_token_quant", "static_quant", "per_token_group_quant", "mx_quant", "nvfp4_quant"}
    for name, rec in QUANT_OPS.items():
        assert rec.name == name and callable(rec.compute)


# ---------------------------------------------------------------- cross-checks vs float32 kernels


@pytest.mark.parametrize("how", ["div", "recip", "qmax_over_amax"])
@pytest.mark.parametrize("dtype", LINEAR_QUANT_DTYPES)
def test_per_token_matches_float32_kernels(dtype, how):
    x = activations(dtype=dtype, seed=1)
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": dtype, "scale_ub": None})
    codes, scales = torch_linear(x, dtype, how=how)
    assert compare_quant("per_token_quant", exp, codes, scales) is None
    # the planted near-ties do create ambiguity, and wherever torch differs it is one of them
    assert (exp.codes_alt != exp.codes).sum() > 16
    assert np.all((codes == exp.codes) | (codes == exp.codes_alt))
    if how == "div":  # IEEE division: the scale is the correctly rounded quotient itself
        np.testing.assert_array_equal(scales, exp.scales)


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn"])
def test_a_kernel_computing_in_float16_is_caught(dtype):
    """The ambiguity covers float32 arithmetic only: x / scale in float16 (error 2**-11) crosses
    ties that float32 never reaches, and those codes are rejected."""
    x = activations((64, 512), seed=2, near_ties=False)
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": dtype})
    codes, scales = torch_linear(x, dtype)
    assert compare_quant("per_token_quant", exp, codes, scales) is None
    t = torch.from_numpy(x)
    y = (t.half() / torch.from_numpy(scales).half()).float()
    d = compare_quant("per_token_quant", exp, torch_codes(y, dtype, qmax_of(dtype)), scales)
    assert d is not None and d.max_abs_error == 1.0 and 0 < d.count < d.total // 50


@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32-scales", "ue8m0"])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2"])
def test_per_token_group_matches_float32_kernel(dtype, group, ue8m0):
    x = activations((8, 256), seed=group, dtype=dtype, group=group)
    p = {"x": x, "group_size": group, "quant_dtype": dtype, "scale_ue8m0": ue8m0}
    exp = expect_quant("per_token_group_quant", p)
    codes, scales = torch_linear(x, dtype, group, ue8m0=ue8m0, how="recip")
    assert compare_quant("per_token_group_quant", exp, codes, scales) is None
    if ue8m0:
        assert np.all(exp.scales >= exp.scale_exact) and np.all(exp.scales < 2 * exp.scale_exact)
        np.testing.assert_array_equal(FORMATS["float8_e8m0fnu"].decode(exp.scale_codes), exp.scales)
        assert compare_quant("per_token_group_quant", exp, codes, exp.scale_codes) is None  # E8M0 codes too


@pytest.mark.parametrize("dtype", LINEAR_QUANT_DTYPES)
def test_static_matches_float32_kernel(dtype):
    x = activations(seed=3, near_ties=False)
    s = float(F32(np.abs(x).max() / qmax_of(dtype) / 3))  # a third of the range: some elements saturate
    exp = expect_quant("static_quant", {"x": x, "scale": s, "quant_dtype": dtype})
    y = torch.from_numpy(x) * (1.0 / torch.tensor(s, dtype=torch.float32))
    assert compare_quant("static_quant", exp, torch_codes(y, dtype, qmax_of(dtype)), None) is None
    assert (np.abs(exp.pre_round) > qmax_of(dtype) + 1).any()


@pytest.mark.parametrize("dtype", FP8)
def test_codes_agree_with_ml_dtypes_wherever_unambiguous(dtype):
    x = activations(seed=4, dtype=dtype)
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": dtype})
    q = FORMATS[dtype].max
    ref = np.clip(exp.pre_round, -q, q).astype(F32).astype(getattr(ml_dtypes, dtype)).view(np.uint8)
    sure = exp.codes == exp.codes_alt
    np.testing.assert_array_equal(ref[sure], exp.codes[sure])


def test_per_token_agrees_with_schemes_quantize_for_fp8():
    x = activations(seed=5, near_ties=False)
    x[3] = 0.0
    for dtype in ("float8_e4m3fn", "float8_e5m2"):
        exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": dtype})
        qt = quantize(x, get_scheme(f"fp8 {dtype.split('_')[1]} per-token"), axis=1)
        np.testing.assert_array_equal(exp.codes, qt.codes)
        np.testing.assert_array_equal(exp.scales, qt.scales)


def test_int8_zero_row_floor_is_the_kernels_float32_constant():
    """float32(1e-10) / 127 and 1e-10 / 127 round to different float32 values; kernels hold the
    float32 constant (oracle.schemes applies the float64 one)."""
    x = np.zeros((2, 64), F32)
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": "int8"})
    want = F32(F32(1e-10) / F32(127))
    assert want != F32(1e-10 / 127)
    np.testing.assert_array_equal(exp.scales, np.full((2, 1), float(want)))
    codes, scales = torch_linear(x, "int8")
    assert compare_quant("per_token_quant", exp, codes, scales) is None
    assert not exp.codes.any()


@pytest.mark.parametrize("dtype", LINEAR_QUANT_DTYPES)
def test_all_zero_rows_get_the_floored_scale_and_zero_codes(dtype):
    x = activations((4, 64), seed=6, near_ties=False)
    x[1] = 0.0
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": dtype})
    assert exp.scales[1, 0] == float(F32(F32(1e-10) / F32(qmax_of(dtype))))
    assert not exp.codes[1].any()
    assert compare_quant("per_token_quant", exp, *torch_linear(x, dtype)) is None


def test_vllm_cuda_scale_floor_as_amax_floor():
    """vLLM's CUDA floor scale >= 1 / (448 * 512) is amax_floor = 1 / 512."""
    x = np.full((1, 32), 1e-4, F32)
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": "float8_e4m3fn", "amax_floor": 1 / 512})
    assert exp.scales[0, 0] == float(F32(1 / (448 * 512)))


# ---------------------------------------------------------------- saturation, scale_ub, qmax


@pytest.mark.parametrize("clamp,lo", [("full", -128), ("symmetric", -127)])
def test_static_int8_saturation_range(clamp, lo):
    x = np.array([[-300.0, -128.0, -127.4, 127.5, 300.0, 2.5]], F32)
    p = {"x": x, "scale": 1.0, "quant_dtype": "int8", "int8_clamp": clamp}
    exp = expect_quant("static_quant", p)
    np.testing.assert_array_equal(exp.codes, [[lo, lo, -127, 127, 127, 2]])
    wrong = exp.codes.copy()
    wrong[0, 0] = -127 if lo == -128 else -128
    assert compare_quant("static_quant", exp, wrong, None).first_indices == [(0, 0)]


def test_int_ties_away_rounds_exact_ties_away_from_zero_and_nothing_else():
    """int_ties="away" (libdevice.round): exact ties go away from zero, every other value as before; the
    even codes fail under it and the away codes fail without it (each is the other's broken twin)."""
    x = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 3.4, -3.6, 126.5]], F32)
    even = expect_quant("static_quant", {"x": x, "scale": 1.0, "quant_dtype": "int8"})
    away = expect_quant("static_quant", {"x": x, "scale": 1.0, "quant_dtype": "int8", "int_ties": "away"})
    np.testing.assert_array_equal(even.codes, [[0, 2, 2, 0, -2, 3, -4, 126]])
    np.testing.assert_array_equal(away.codes, [[1, 2, 3, -1, -3, 3, -4, 127]])
    assert compare_quant("static_quant", away, away.codes, None) is None
    assert compare_quant("static_quant", away, even.codes, None).first_indices == [(0, 0), (0, 2), (0, 3), (0, 4), (0, 7)]
    assert compare_quant("static_quant", even, away.codes, None) is not None


def test_int_ties_is_int8_only_and_checked():
    x = np.array([[0.5]], F32)
    with pytest.raises(ValueError, match="int_ties='away' applies to int8 codes only"):
        expect_quant("static_quant", {"x": x, "scale": 1.0, "quant_dtype": "float8_e4m3fn", "int_ties": "away"})
    with pytest.raises(ValueError, match="int_ties"):
        expect_quant("static_quant", {"x": x, "scale": 1.0, "quant_dtype": "int8", "int_ties": "up"})


@pytest.mark.parametrize("dtype,code", [
    pytest.param("float8_e4m3fn", 0b0_1111_110, id="e4m3fn-448"),
    pytest.param("float8_e4m3fnuz", 0b0_1111_111, id="e4m3fnuz-240"),
    pytest.param("float8_e5m2", 0b0_11110_11, id="e5m2-57344-not-inf"),
])
def test_fp8_saturates_to_max_code(dtype, code):
    x = np.array([[1e6, -1e6]], F32)
    exp = expect_quant("static_quant", {"x": x, "scale": 1.0, "quant_dtype": dtype})
    np.testing.assert_array_equal(exp.codes, [[code, code | 0x80]])


def test_fnuz_qmax_224_as_vllm_rocm():
    x = np.array([[-1000.0, 224.0, 100.0]], F32)
    p = {"x": x, "quant_dtype": "float8_e4m3fnuz", "qmax": 224.0}
    exp = expect_quant("per_token_quant", p)
    assert exp.scales[0, 0] == float(F32(F32(1000) / F32(224)))
    assert FORMATS["float8_e4m3fnuz"].decode(exp.codes)[0, 0] == -224.0
    assert compare_quant("per_token_quant", exp, *torch_linear(x, "float8_e4m3fnuz", qmax=224.0)) is None


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "int8"])
def test_scale_ub_caps_the_scale_and_saturates(dtype):
    x = (np.random.default_rng(7).standard_normal((4, 64)) * 100).astype(F32)
    ub = 50.0
    assert np.all(np.abs(x).max(axis=1) > ub)
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": dtype, "scale_ub": ub})
    assert np.all(exp.scales <= float(F32(F32(ub) / F32(qmax_of(dtype)))))
    assert np.all(exp.scales[:, 0] == float(F32(F32(ub) / F32(qmax_of(dtype)))))
    big = np.abs(x) > ub * 1.01
    assert big.any()
    top = exp.rounding.encode(np.array([qmax_of(dtype)]))[0]
    np.testing.assert_array_equal(np.where(x > 0, exp.codes, top)[big], top)
    assert compare_quant("per_token_quant", exp, *torch_linear(x, dtype, ub=ub)) is None
    # a kernel that ignores scale_ub returns other scales: caught
    d = compare_quant("per_token_quant", exp, *torch_linear(x, dtype))
    assert d is not None and "scales" in d.notes[0]


# ---------------------------------------------------------------- tie ambiguity


def near_tie_int8_problem():
    """Row amax 100 (scale float32(100/127), not a power of two); elements float32((n + 1/2) * s)
    sit within float32 rounding of a tie, the rest at n + 0.2."""
    s = float(F32(F32(100) / F32(127)))
    n = np.arange(-30, 30)
    x = np.concatenate([[100.0], (n + 0.5) * s, (n + 0.2) * s]).astype(F32)[None, :]
    return {"x": x, "quant_dtype": "int8"}, 1, 1 + len(n)


def test_other_code_accepted_only_at_a_near_tie():
    p, ties, far = near_tie_int8_problem()
    exp = expect_quant("per_token_quant", p)
    v, a = exp.pre_round[0], exp.ambiguity[0]
    assert np.all(np.abs(np.abs(v[ties:far] - np.floor(v[ties:far])) - 0.5) <= a[ties:far])
    assert np.all(exp.codes_alt[0, ties:far] != exp.codes[0, ties:far])
    assert np.all(exp.codes_alt[0, far:] == exp.codes[0, far:])
    near = exp.codes.copy()
    near[0, ties:far] = exp.codes_alt[0, ties:far]  # every near-tie rounded the other way
    assert compare_quant("per_token_quant", exp, near, exp.scales.astype(F32)) is None
    off = exp.codes.copy()
    off[0, far + 3] += 1  # one off away from a tie
    d = compare_quant("per_token_quant", exp, off, exp.scales.astype(F32))
    assert isinstance(d, Divergence) and d.count == 1 and d.first_indices == [(0, far + 3)]
    assert d.max_abs_error == 1.0 and d.bound_kind == "exact"
    assert "codes" in d.notes[0]


def test_ambiguity_is_the_documented_relative_bound():
    p, _, _ = near_tie_int8_problem()
    exp = expect_quant("per_token_quant", p)
    np.testing.assert_array_equal(exp.ambiguity, np.abs(exp.pre_round) * CODE_REL_AMBIGUITY)
    assert exp.ambiguity.max() < 2e-4  # tiny against the code step of 1


def test_exact_tie_with_power_of_two_scale_must_round_to_even():
    x = np.array([[1.25, -1.25, 0.75, 3.0]], F32)  # scale 0.5: 2.5, -2.5, 1.5, 6 exactly
    p = {"x": x, "scale": 0.5, "quant_dtype": "int8"}
    exp = expect_quant("static_quant", p)
    np.testing.assert_array_equal(exp.codes, [[2, -2, 2, 6]])
    assert not exp.ambiguity.any()
    away = np.array([[3, -3, 2, 6]], np.int8)
    d = compare_quant("static_quant", exp, away, None)
    assert d.count == 2 and d.first_indices == [(0, 0), (0, 1)]
    assert [f.hypothesis for f in diagnose_quant("static_quant", p, away)] == ["ties_away_from_zero"]
    assert diagnose_quant("static_quant", p, exp.codes) == []


def test_scale_within_float32_ambiguity_accepted_beyond_rejected():
    x = activations((4, 64), seed=8, near_ties=False)
    exp = expect_quant("per_token_quant", {"x": x, "quant_dtype": "float8_e4m3fn"})
    one_ulp = np.nextafter(exp.scales.astype(F32), F32(np.inf)).astype(np.float64)
    # |one_ulp - q| <= 1.5 ulp <= 1.5 * 2**-23 q < 2**-21 q: within the ambiguity of div.full.f32
    assert np.all(np.abs(one_ulp - exp.scale_exact) <= exp.scale_exact * SCALE_REL_AMBIGUITY)
    assert compare_quant("per_token_quant", exp, exp.codes, one_ulp) is None
    far = (exp.scales * (1 + 2.0**-18)).astype(F32)
    d = compare_quant("per_token_quant", exp, exp.codes, far)
    assert d.count == 4 and d.shape == (4, 1) and "float32 ulps" in d.notes[0]


def test_ue8m0_near_power_of_two_accepts_both_neighbours_only():
    """amax / 448 = 2**-3 (1 + 2**-23): float32 keeps it above 2**-3, so UE8M0 gives 2**-2, but a
    kernel whose quotient lands on 2**-3 (log2 / division rounding) returns 2**-3: both fine."""
    amax = float(F32(448 * 2.0**-3 * (1 + 2.0**-23)))
    x = np.full((1, 32), 1.0, F32)
    x[0, 0] = amax
    p = {"x": x, "group_size": 32, "quant_dtype": "float8_e4m3fn", "scale_ue8m0": True}
    exp = expect_quant("per_token_group_quant", p)
    assert exp.scales[0, 0] == 2.0**-2
    lower = np.array([[2.0**-3]], F32)
    codes_lower = FORMATS["float8_e4m3fn"].encode(np.clip(x / 2.0**-3, -448, 448), saturate=True)
    assert compare_quant("per_token_group_quant", exp, codes_lower, lower) is None
    assert compare_quant("per_token_group_quant", exp, exp.codes, lower) is not None  # codes of the other scale
    assert compare_quant("per_token_group_quant", exp, exp.codes, np.array([[2.0**-1]], F32)) is not None


# ---------------------------------------------------------------- MX


def mx_data(seed=9):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((8, 128)) * np.exp(rng.uniform(-6, 6, size=(8, 4))).repeat(32, axis=1)).astype(F32)
    x[0, :32] = 0.0  # an all-zero block: E8M0 0x00
    x[1, 32:64] *= F32(6.0) / np.abs(x[1, 32:64]).max()  # amax exactly qmax (mxfp4): rceil at a power of two
    return x


@pytest.mark.parametrize("rule", ["floor", "rceil"])
@pytest.mark.parametrize("fmt", list(MX_FORMATS))
def test_mx_matches_independent_reference(fmt, rule):
    x = mx_data()
    exp = expect_quant("mx_quant", {"x": x, "fmt": fmt, "scale_rule": rule})
    codes, scale_codes = torch_mx(x, fmt, rule)
    assert compare_quant("mx_quant", exp, codes, scale_codes) is None
    np.testing.assert_array_equal(codes, exp.codes)  # power-of-two scales: no ambiguity at all
    assert not exp.ambiguity.any()
    assert exp.scale_codes[0, 0] == 0


def test_mx_floor_and_rceil_differ_on_a_block():
    """amax 7 in mxfp4: floor gives 2**(2 - 2) = 1 (7 saturates to 6); rceil 2**ceil(log2(7/6)) = 2
    (7/2 = 3.5 ties to even, 4)."""
    x = np.zeros((1, 32), F32)
    x[0, :3] = [7.0, 1.0, -2.5]
    floor = expect_quant("mx_quant", {"x": x, "fmt": "mxfp4", "scale_rule": "floor"})
    rceil = expect_quant("mx_quant", {"x": x, "fmt": "mxfp4", "scale_rule": "rceil"})
    assert (floor.scale_codes[0, 0], rceil.scale_codes[0, 0]) == (127, 128)
    dec = FORMATS["float4_e2m1fn"].decode
    np.testing.assert_array_equal(dec(floor.codes[0, :3]), [6.0, 1.0, -2.5 + 0.5])  # -2.5: tie -> -2
    np.testing.assert_array_equal(dec(rceil.codes[0, :3]), [4.0, 0.5, -1.0])  # -1.25 -> -1
    d = compare_quant("mx_quant", floor, rceil.codes, rceil.scale_codes)
    assert d is not None and d.shape == (1, 1) and "float8_e8m0fnu code steps" in d.notes[0]
    assert compare_quant("mx_quant", rceil, rceil.codes, rceil.scale_codes) is None


@pytest.mark.parametrize("amax,even_code", [(7.0, 128), (6.99, 127), (7.5, 128), (3.5, 127), (6.0, 127)])
def test_mx_even_takes_the_next_exponent_from_a_mantissa_of_1_75(amax, even_code):
    """scale_rule="even": amax rounded at its second mantissa bit, then floor. 7 = 1.75 * 4 and 7.5 go to 8
    (scale 2: code 128) where floor keeps 4 (code 127); 6.99 (mantissa < 1.75) and 6 stay; 3.5 = 1.75 * 2
    goes to 4, floor(log2 4) - 2 = 0 (code 127)."""
    x = np.zeros((1, 32), F32)
    x[0, 0] = amax
    floor = expect_quant("mx_quant", {"x": x, "fmt": "mxfp4", "scale_rule": "floor"})
    even = expect_quant("mx_quant", {"x": x, "fmt": "mxfp4", "scale_rule": "even"})
    assert even.scale_codes[0, 0] == even_code
    assert floor.scale_codes[0, 0] == (127 if amax >= 4 else 126)
    if even_code != floor.scale_codes[0, 0]:  # each rule's output fails the other's judgement
        assert compare_quant("mx_quant", floor, even.codes, even.scale_codes) is not None
        assert compare_quant("mx_quant", even, floor.codes, floor.scale_codes) is not None
    assert compare_quant("mx_quant", even, even.codes, even.scale_codes) is None


def test_mx_rceil_near_power_of_two_accepts_both_scales():
    x = np.zeros((1, 32), F32)
    x[0, 0] = F32(6.0 * (1 + 2.0**-23))  # amax / 6 a hair above 1
    exp = expect_quant("mx_quant", {"x": x, "fmt": "mxfp4", "scale_rule": "rceil"})
    lo, hi = exp.scale_candidates
    assert {int(lo[0, 0]), int(hi[0, 0])} == {127, 128}
    codes127 = FORMATS["float4_e2m1fn"].encode(np.clip(x, -6, 6), saturate=True)
    assert compare_quant("mx_quant", exp, codes127, np.array([[127]], np.uint8)) is None
    assert compare_quant("mx_quant", exp, codes127, np.array([[126]], np.uint8)) is not None


# ---------------------------------------------------------------- NVFP4


def test_nvfp4_matches_cuda_style_float32_kernel():
    x = mx_data(10)
    x[2, 16:32] = F32(-1e-30)  # a block whose E4M3 scale underflows: x * 0 = -0 codes
    g = float(F32(np.abs(x).max() / (6 * 448)))
    exp = expect_quant("nvfp4_quant", {"x": x, "global_scale": g})
    codes, scale_codes = torch_nvfp4(x, g)
    assert compare_quant("nvfp4_quant", exp, codes, scale_codes) is None
    assert exp.scale_codes[0, 0] == 0 and exp.scale_codes[2, 1] == 0
    assert np.all(codes[2, 16:32] == 0b1000)  # -0, accepted
    wrong = codes.copy()
    wrong[2, 16] = 0b0001
    assert compare_quant("nvfp4_quant", exp, wrong, scale_codes).first_indices == [(2, 16)]


def test_nvfp4_agrees_with_schemes_quantize():
    x = mx_data(11)
    qt = quantize(x, get_scheme("nvfp4"), axis=1)
    exp = expect_quant("nvfp4_quant", {"x": x, "global_scale": qt.global_scale})
    np.testing.assert_array_equal(exp.scale_codes, qt.scale_codes)
    np.testing.assert_array_equal(exp.codes, qt.codes)
    np.testing.assert_allclose(exp.values(), qt.dequantize())


def test_nvfp4_scale_saturates_at_448():
    x = np.full((1, 16), 1000.0, F32)
    exp = expect_quant("nvfp4_quant", {"x": x, "global_scale": 0.125})
    assert FORMATS["float8_e4m3fn"].decode(exp.scale_codes)[0, 0] == 448.0
    assert np.all(FORMATS["float4_e2m1fn"].decode(exp.codes) == 6.0)


# ---------------------------------------------------------------- diagnosis hypotheses


def test_hypotheses_have_the_documented_shape():
    for h in QUANT_HYPOTHESES:
        name, sentence, fn = h
        assert name and callable(fn) and sentence.format(op="o", requested="r", other="q")


@pytest.mark.parametrize("requested,other", [("float8_e4m3fn", "float8_e4m3fnuz"), ("float8_e4m3fnuz", "float8_e4m3fn")])
def test_fn_fnuz_swap_caught_and_named(requested, other):
    x = activations((8, 128), seed=12, near_ties=False)
    p = {"x": x, "quant_dtype": requested}
    exp = expect_quant("per_token_quant", p)
    # the kernel computed the requested scale but converted with the other convention
    swapped = FORMATS[other].encode(np.clip(exp.pre_round, -FORMATS[other].max, FORMATS[other].max), saturate=True)
    d = compare_quant("per_token_quant", exp, swapped, exp.scales.astype(F32))
    assert d is not None and d.fraction > 0.5
    names = [f.hypothesis for f in diagnose_quant("per_token_quant", p, swapped)]
    assert "fn_fnuz_swapped" in names and "ties_away_from_zero" not in names
    sentence = next(f.sentence for f in diagnose_quant("per_token_quant", p, swapped) if f.hypothesis == "fn_fnuz_swapped")
    assert requested in sentence and other in sentence
    assert diagnose_quant("per_token_quant", p, exp.codes) == []


def test_int8_requested_fp8_written_is_named():
    """A per-token quant that allocated its output as FP8 whatever quant_dtype said."""
    x = activations((8, 128), seed=13, near_ties=False)
    p = {"x": x, "quant_dtype": "int8"}
    fp8 = expect_quant("per_token_quant", {**p, "quant_dtype": "float8_e4m3fnuz"}).codes
    as_int8 = fp8.view(np.int8)  # the harness reads the bytes as the requested int8
    exp = expect_quant("per_token_quant", p)
    assert compare_quant("per_token_quant", exp, as_int8, exp.scales.astype(F32)) is not None
    names = [f.hypothesis for f in diagnose_quant("per_token_quant", p, as_int8)]
    assert names == ["output_is_float8_e4m3fnuz"]
    with pytest.raises(TypeError, match="output-dtype contract"):
        codes_from_output(fp8.view(ml_dtypes.float8_e4m3fnuz), "float8_e4m3fnuz", "int8")


def test_unrelated_wrong_output_matches_no_hypothesis():
    x = activations((8, 128), seed=14, near_ties=False)
    p = {"x": x, "quant_dtype": "float8_e4m3fn"}
    exp = expect_quant("per_token_quant", p)
    trunc = FORMATS["float8_e4m3fn"].encode(np.trunc(exp.pre_round), saturate=True)  # a broken rounding
    assert compare_quant("per_token_quant", exp, trunc, exp.scales.astype(F32)) is not None
    assert diagnose_quant("per_token_quant", p, trunc) == []


# ---------------------------------------------------------------- decoding kernel output


@pytest.mark.parametrize("dtype", FP8)
def test_codes_from_output_fp8(dtype):
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    as_ml = codes.view(getattr(ml_dtypes, dtype))
    np.testing.assert_array_equal(codes_from_output(as_ml, dtype, dtype), codes)
    np.testing.assert_array_equal(codes_from_output(codes.view(np.int8), dtype, dtype), codes)
    finite = np.isfinite(FORMATS[dtype].decode(codes))
    vals = FORMATS[dtype].decode(codes).astype(F32)
    got = codes_from_output(np.where(finite, vals, 0), "float32", dtype)
    np.testing.assert_array_equal(FORMATS[dtype].decode(got), np.where(finite, vals, 0))


def test_codes_from_output_int8_fp4_and_errors():
    raw = np.array([[-128, -1, 0, 127]], np.int8)
    np.testing.assert_array_equal(codes_from_output(raw.view(np.uint8), "uint8", "int8"), raw)
    np.testing.assert_array_equal(codes_from_output(raw.astype(F32), "float32", "int8"), raw)
    fp4 = np.arange(16, dtype=np.uint8)[None]
    np.testing.assert_array_equal(codes_from_output(fp4, "uint8", "float4_e2m1fn"), fp4)
    with pytest.raises(ValueError, match="unpack packed codes"):
        codes_from_output(np.array([[0x21]], np.uint8), "uint8", "float4_e2m1fn")
    with pytest.raises(ValueError, match="not a float8_e4m3fn value"):
        codes_from_output(np.array([[1.1]], F32), "float32", "float8_e4m3fn")
    with pytest.raises(TypeError, match="not the stated float8_e4m3fn"):
        codes_from_output(np.zeros(3, ml_dtypes.float8_e5m2), "float8_e4m3fn", "float8_e4m3fn")
    with pytest.raises(ValueError, match="dtype='fp8' is not known"):
        codes_from_output(np.zeros(3, np.uint8), "fp8", "float8_e4m3fn")


# ---------------------------------------------------------------- exact regime


def _exact_cases():
    for op in ("per_token_quant", "static_quant", "per_token_group_quant"):
        for dtype in LINEAR_QUANT_DTYPES:
            yield pytest.param(op, dtype, {}, id=f"{op}-{dtype}")
    yield pytest.param("per_token_group_quant", "float8_e4m3fn", {"scale_ue8m0": True, "group_size": 64}, id="group-ue8m0")
    for fmt in MX_FORMATS:
        for rule in ("floor", "rceil"):
            yield pytest.param("mx_quant", fmt, {"scale_rule": rule}, id=f"mx-{fmt}-{rule}")
    yield pytest.param("nvfp4_quant", "nvfp4", {}, id="nvfp4")


def _torch_for(op, p):
    x = p["x"]
    if op == "static_quant":
        y = torch.from_numpy(x) * (1.0 / torch.tensor(p["scale"], dtype=torch.float32))
        return torch_codes(y, p["quant_dtype"], qmax_of(p["quant_dtype"])), None
    if op == "per_token_quant":
        return torch_linear(x, p["quant_dtype"], how="qmax_over_amax")
    if op == "per_token_group_quant":
        return torch_linear(x, p["quant_dtype"], p["group_size"], ue8m0=p["scale_ue8m0"], how="div")
    if op == "mx_quant":
        return torch_mx(x, p["fmt"], p["scale_rule"])
    return torch_nvfp4(x, p["global_scale"])


@pytest.mark.parametrize("op,dtype,opts", list(_exact_cases()))
def test_exact_inputs_give_unique_codes_reproduced_bit_for_bit(op, dtype, opts):
    p = exact_quant_inputs(op, (6, 128), dtype, np.random.default_rng(15), **opts)
    exp = expect_quant(op, p)
    np.testing.assert_array_equal(exp.codes_alt, exp.codes)  # no element near a tie
    assert not exp.ambiguity.any() and np.all(np.isfinite(exp.pre_round))
    assert np.all(_is_pow2(exp.scales))
    codes, scales = _torch_for(op, p)
    np.testing.assert_array_equal(codes, exp.codes)
    assert compare_quant(op, exp, codes, scales) is None


def _is_pow2(a):
    return np.abs(np.frexp(a)[0]) == 0.5


def test_exact_inputs_distance_from_ties():
    p = exact_quant_inputs("per_token_quant", (8, 256), "int8", np.random.default_rng(16))
    exp = expect_quant("per_token_quant", p)
    frac = np.abs(exp.pre_round - np.round(exp.pre_round))
    assert frac.max() <= 3 / 16 and np.all(np.abs(exp.pre_round).max(axis=1) == 127)


# ---------------------------------------------------------------- M = 0 and divergence shape


@pytest.mark.parametrize("op", list(QUANT_OPS))
def test_m_zero_is_valid(op):
    p = exact_quant_inputs(op, (0, 64), {"mx_quant": "mxfp4", "nvfp4_quant": "nvfp4"}.get(op, "int8"),
                           np.random.default_rng(0), group_size=32)
    exp = expect_quant(op, p)
    assert exp.codes.shape == (0, 64) and exp.scales.shape[0] in (0, 1)
    scales = None if op == "static_quant" else (exp.scale_codes if exp.scale_format != "float32" else exp.scales)
    assert compare_quant(op, exp, exp.codes, scales) is None


def test_divergence_locates_a_column_band():
    x = activations((8, 64), seed=17, near_ties=False)
    p = {"x": x, "quant_dtype": "float8_e4m3fn"}
    exp = expect_quant("per_token_quant", p)
    bad = exp.codes.copy()
    bad[:, 5::16] ^= 0x01  # flip the last mantissa bit in columns 5, 21, 37, 53
    d = compare_quant("per_token_quant", exp, bad, exp.scales.astype(F32))
    assert d.count == 32 and d.max_abs_error == 1.0
    assert d.pattern == "all 8 rows; columns with column mod 16 in 5 (4 of 64)"
    assert "scales: all accepted" in d.notes


# ---------------------------------------------------------------- bad input


X = np.ones((2, 128), F32)
BAD = [
    ("op", "per_token", {"x": X, "quant_dtype": "int8"}, ValueError, "not a quantization op"),
    ("dtype", "per_token_quant", {"x": X, "quant_dtype": "float8_e4m3"}, ValueError, "quant_dtype='float8_e4m3' is not allowed"),
    ("unknown-key", "per_token_quant", {"x": X, "quant_dtype": "int8", "scale_ubb": 1.0}, ValueError, "unknown key"),
    ("missing-key", "static_quant", {"x": X, "quant_dtype": "int8"}, ValueError, "lacks required key"),
    ("x-1d", "per_token_quant", {"x": np.ones(4, F32), "quant_dtype": "int8"}, ValueError, "2-D"),
    ("x-int", "per_token_quant", {"x": np.ones((2, 4), np.int32), "quant_dtype": "int8"}, TypeError, "float array"),
    ("x-nan", "per_token_quant", {"x": np.array([[1.0, np.nan]], F32), "quant_dtype": "int8"}, ValueError, "non-finite"),
    ("x-not-f32", "per_token_quant", {"x": np.array([[0.1]]), "quant_dtype": "int8"}, ValueError, "float32 cannot represent"),
    ("k-zero", "per_token_quant", {"x": np.ones((2, 0), F32), "quant_dtype": "int8"}, ValueError, "K=0"),
    ("group-48", "per_token_group_quant", {"x": X, "group_size": 48, "quant_dtype": "int8"}, ValueError, "group_size=48 must be a positive divisor of K=128"),
    ("group-str", "per_token_group_quant", {"x": X, "group_size": "128", "quant_dtype": "int8"}, TypeError, "group_size must be an int"),
    ("ue8m0-str", "per_token_group_quant", {"x": X, "group_size": 32, "quant_dtype": "int8", "scale_ue8m0": "yes"}, TypeError, "scale_ue8m0 must be a bool"),
    ("scale-zero", "static_quant", {"x": X, "scale": 0.0, "quant_dtype": "int8"}, ValueError, "scale=0.0 must be finite and > 0"),
    ("scale-not-f32", "static_quant", {"x": X, "scale": 0.1, "quant_dtype": "int8"}, ValueError, "not exactly representable in float32"),
    ("ub-neg", "per_token_quant", {"x": X, "quant_dtype": "float8_e4m3fn", "scale_ub": -1.0}, ValueError, "scale_ub=-1.0"),
    ("qmax-500", "per_token_quant", {"x": X, "quant_dtype": "float8_e4m3fn", "qmax": 500.0}, ValueError, "no larger than its max 448.0"),
    ("qmax-int8", "per_token_quant", {"x": X, "quant_dtype": "int8", "qmax": 100.0}, ValueError, "fixed at 127"),
    ("clamp", "static_quant", {"x": X, "scale": 1.0, "quant_dtype": "int8", "int8_clamp": "sym"}, ValueError, "int8_clamp='sym'"),
    ("floor-zero", "per_token_quant", {"x": X, "quant_dtype": "int8", "amax_floor": 0.0}, ValueError, "amax_floor=0.0"),
    ("mx-fmt", "mx_quant", {"x": X, "fmt": "mxfp5", "scale_rule": "floor"}, ValueError, "fmt='mxfp5' is not allowed"),
    ("mx-rule", "mx_quant", {"x": X, "fmt": "mxfp4", "scale_rule": "ceil"}, ValueError, "scale_rule='ceil'"),
    ("mx-k", "mx_quant", {"x": np.ones((2, 48), F32), "fmt": "mxfp4", "scale_rule": "floor"}, ValueError, "multiple of the MX block size 32"),
    ("nvfp4-k", "nvfp4_quant", {"x": np.ones((2, 24), F32), "global_scale": 1.0}, ValueError, "multiple of the NVFP4 block size 16"),
    ("nvfp4-g", "nvfp4_quant", {"x": X, "global_scale": float("nan")}, ValueError, "global_scale=nan"),
]


@pytest.mark.parametrize("op,problem,exc,msg", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_problem_raises(op, problem, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        expect_quant(op, problem)


def test_bad_compare_arguments_raise():
    exp = expect_quant("per_token_quant", {"x": X, "quant_dtype": "float8_e4m3fn"})
    s = exp.scales.astype(F32)
    with pytest.raises(TypeError, match="integer codes"):
        compare_quant("per_token_quant", exp, exp.codes.astype(F32), s)
    with pytest.raises(ValueError, match=re.escape("shape (128, 2), expected (2, 128)")):
        compare_quant("per_token_quant", exp, exp.codes.T, s)
    with pytest.raises(ValueError, match="pass them as actual_scales"):
        compare_quant("per_token_quant", exp, exp.codes, None)
    with pytest.raises(ValueError, match="is for op 'per_token_quant'"):
        compare_quant("static_quant", exp, exp.codes, None)
    with pytest.raises(ValueError, match=re.escape("actual_scales has shape (2,)")):
        compare_quant("per_token_quant", exp, exp.codes, s.ravel())
    mx = expect_quant("mx_quant", {"x": X, "fmt": "mxfp4", "scale_rule": "floor"})
    with pytest.raises(TypeError, match="view\\(torch.uint8\\)"):
        compare_quant("mx_quant", mx, mx.codes, mx.scales)
    st = expect_quant("static_quant", {"x": X, "scale": 1.0, "quant_dtype": "int8"})
    with pytest.raises(ValueError, match="returns no scales"):
        compare_quant("static_quant", st, st.codes, st.scales)
