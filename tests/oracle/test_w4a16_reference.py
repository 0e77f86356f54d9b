"""W4A16 reference, its bound (soundness and tightness) and the diagnosis catalogue."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qkcheck.oracle.compare import compare
from qkcheck.oracle.ops import diagnose, expect
from qkcheck.oracle.ops import w4a16


def _problem(rng, m, k, n, g, *, asym, bias, adversarial=True):
    gs = k if g == -1 else g
    groups = k // gs
    x = rng.standard_normal((m, k)).astype(np.float16).astype(np.float64)
    q = rng.integers(0, 16, (k, n))
    if adversarial:  # distinct per-group scales 2^(g mod 8) with random signs
        s = np.exp2(np.arange(groups) % 8)[:, None] * rng.choice([-1, 1], (groups, n)) * 2.0**-6
        s = s * (1 + rng.random((groups, n)))
    else:
        s = rng.uniform(0.001, 0.02, (groups, n))
    s = s.astype(np.float16).astype(np.float64)
    z = rng.integers(0, 16, (groups, n)) if asym else None
    b = rng.standard_normal(n).astype(np.float16).astype(np.float64) if bias else None
    return {"x": x, "q": q, "scales": s, "zeros": z, "group_size": g, "bias": b}


def _torch_fp16_kernel(p):
    """A straightforward torch implementation in the kernel's compute dtype: dequantize in fp32,
    round weights to fp16, multiply with fp32 accumulation, add bias, round to fp16."""
    w = w4a16.dequant_int_grouped(p["q"], p["scales"], p["zeros"], group_size=p["group_size"])
    w16 = torch.from_numpy(w).float().half().float()
    y = torch.from_numpy(p["x"]).float() @ w16
    if p["bias"] is not None:
        y = y + torch.from_numpy(p["bias"]).float()
    return y.half().double().numpy()


SOUNDNESS = [(m, k, n, g, asym, bias, adv)
             for m, k, n, g in [(1, 64, 16, 32), (5, 256, 24, 64), (16, 512, 8, 128), (3, 128, 40, -1)]
             for asym in (False, True) for bias in (False, True) for adv in (False, True)]


@pytest.mark.parametrize("m,k,n,g,asym,bias,adv", SOUNDNESS,
                         ids=[f"m{m}k{k}n{n}g{g}-{'asym' if a else 'sym'}-{'bias' if b else 'nobias'}-{'adv' if v else 'real'}"
                              for m, k, n, g, a, b, v in SOUNDNESS])
def test_correct_fp16_implementation_stays_within_bound(m, k, n, g, asym, bias, adv):
    p = _problem(np.random.default_rng(k * 7 + m), m, k, n, g, asym=asym, bias=bias, adversarial=adv)
    e = expect("w4a16_gemm", p, exact=False, compute_dtype="float16", out_dtype="float16")
    d = compare(_torch_fp16_kernel(p), e.expected, e.bound)
    assert d is None, d.summary()


@pytest.mark.parametrize("g,bk", [(32, 64), (32, 128), (64, 128)])
def test_one_wrong_group_scale_per_tile_exceeds_bound_tenfold(g, bk):
    p = _problem(np.random.default_rng(1), 8, 256, 16, g, asym=True, bias=False)
    ks = np.arange(256)
    wrong = dict(p, scales=p["scales"][((ks // bk) * bk) // g], zeros=p["zeros"][((ks // bk) * bk) // g], group_size=1)
    buggy = w4a16.w4a16_gemm(wrong["x"], wrong["q"], wrong["scales"], wrong["zeros"], group_size=1)
    e = expect("w4a16_gemm", p, exact=False, compute_dtype="float16", out_dtype="float16")
    d = compare(buggy, e.expected, e.bound)
    assert d is not None and d.max_ratio >= 10 and d.count / d.total > 0.9


def test_zero_point_off_by_one_exceeds_bound_tenfold():
    p = _problem(np.random.default_rng(2), 4, 128, 16, 32, asym=True, bias=False)
    buggy = w4a16.w4a16_gemm(p["x"], p["q"], p["scales"], p["zeros"] - 1, group_size=32)
    e = expect("w4a16_gemm", p, exact=False, compute_dtype="float16", out_dtype="float16")
    assert compare(buggy, e.expected, e.bound).max_ratio >= 10


def test_diagnosis_names_first_group_scale_per_tile():
    p = _problem(np.random.default_rng(3), 4, 256, 16, 32, asym=False, bias=False)
    ks = np.arange(256)
    s_bug = p["scales"][((ks // 64) * 64) // 32]
    actual = w4a16.w4a16_gemm(p["x"], p["q"], s_bug, None, group_size=1)
    found = diagnose("w4a16_gemm", p, actual, exact=False, compute_dtype="float16", out_dtype="float16",
                     context={"block_k": 64})
    assert [f.hypothesis for f in found] == ["first_group_scale_per_tile"]
    assert "BLOCK_K=64" in found[0].sentence and "group_size=32" in found[0].sentence


def test_diagnosis_finds_nothing_for_a_correct_output():
    p = _problem(np.random.default_rng(4), 4, 128, 16, 32, asym=True, bias=True)
    actual = w4a16.w4a16_gemm(p["x"], p["q"], p["scales"], p["zeros"], group_size=32, bias=p["bias"])
    # a correct output is no bug's output, except where a hypothesis is a no-op (none here)
    assert diagnose("w4a16_gemm", p, actual, exact=False, compute_dtype="float16", out_dtype="float16",
                    context={"block_k": 128}) == []


def test_exact_regime_expected_is_rne_in_output_dtype():
    p = {"x": np.array([[1.0, 1.0]]), "q": np.array([[9], [9]]), "scales": np.array([[2.0**-11 + 2.0**-13]]),
         "zeros": None, "group_size": -1, "bias": np.array([1.0])}
    e = expect("w4a16_gemm", p, exact=True, compute_dtype="float16", out_dtype="float16")
    assert e.exact_value[0, 0] == 1 + 2 * (2.0**-11 + 2.0**-13)
    assert e.expected[0, 0] == np.float64(np.float16(e.exact_value[0, 0])) and not e.bound.any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param(dict(group_size=0), r"group_size=0 must divide K=128", id="group-size"),
        pytest.param(dict(group_size=48), r"scales has shape \(4, 8\), expected \(3, 8\) \(one row per group of 48 "
                     r"along K \(the last one partial: 32 rows\)", id="partial-group-scale-shape"),
        pytest.param(dict(q=np.zeros((64, 8))), r"x has K=128 columns but q has K=64 rows", id="k-mismatch"),
        pytest.param(dict(q=np.full((128, 8), 16)), r"codes in \[16, 16\], uint4 codes are 0..15", id="code-range"),
        pytest.param(dict(scales=np.ones((2, 8))), r"scales has shape \(2, 8\), expected \(4, 8\)", id="scale-shape"),
        pytest.param(dict(scales=np.full((4, 8), np.nan)), r"scales\[0, 0\] is nan; scales must be finite", id="nan-scale"),
        pytest.param(dict(bias=np.ones(3)), r"bias has shape \(3,\), expected \(8,\)", id="bias-shape"),
        pytest.param(dict(x=np.ones(128)), r"x must be 2-D, got shape \(128,\)", id="x-rank"),
    ],
)
def test_bad_input_messages(kwargs, match):
    args = dict(x=np.ones((2, 128)), q=np.zeros((128, 8)), scales=np.ones((4, 8)), zeros=None, group_size=32, bias=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        w4a16.w4a16_gemm(args["x"], args["q"], args["scales"], args["zeros"], group_size=args["group_size"], bias=args["bias"])


def test_zero_m_returns_empty():
    y = w4a16.w4a16_gemm(np.zeros((0, 64)), np.zeros((64, 8)), np.ones((2, 8)), group_size=32)
    assert y.shape == (0, 8)
