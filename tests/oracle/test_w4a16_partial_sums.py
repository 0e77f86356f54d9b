"""The declared reduction conventions of w4a16_gemm (``dequant="fma_zs_rounded"``, ``partial_sums`` /
``partial_block_k``; ``oracle.bounds.partial_sums_bound``): sound against an independent torch model of a
kernel that dequantizes with ``fma(q, s, RNE(-z*s))``, accumulates each split's tiles in float32 and adds
the split partials into a zeroed output of the output dtype in every order; strict without the
declaration; and a kernel that loses a partial or takes another group's scale still fails under it."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from qkcheck.oracle.compare import compare
from qkcheck.oracle.ops import expect, make_problem

TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _kernel(p, dt, splits, block_k, *, order, lose=None, first_group=False):
    """A torch model of gemlite's split-K W4A16 (fma_mode) with fp16/bf16 atomics, independent of the oracle."""
    t = TORCH[dt]
    x = torch.from_numpy(np.asarray(p["x"], np.float64)).to(t)
    q = torch.from_numpy(np.asarray(p["q"], np.float64))
    k, n = q.shape
    g = k if p["group_size"] == -1 else p["group_size"]
    s = torch.from_numpy(np.asarray(p["scales"], np.float64)).to(t)
    z = torch.full(s.shape, 8.0) if p.get("zeros") is None else torch.from_numpy(np.asarray(p["zeros"], np.float64))
    zs = (-z.to(t).float() * s.float()).to(t)  # core.py: (-zeros.float() * scales.float()).to(dtype)
    rows = torch.arange(k) // g
    if first_group:
        rows = torch.zeros_like(rows)
    # fma in the compute dtype: one rounding of the exact q*s + zs (float64 holds it exactly here)
    w = (q * s.double()[rows] + zs.double()[rows]).to(t)
    tiles = torch.arange(k) // block_k
    parts = []
    for i in range(splits):
        sel = (tiles % splits) == i
        acc = torch.zeros(x.shape[0], n, dtype=torch.float32)
        for tile in sorted(set(tiles[sel].tolist())):  # tile by tile in float32
            r = tiles == tile
            acc = acc + x[:, r].float() @ w[r].float()
        parts.append(None if i == lose else acc.to(t))
    out = torch.zeros(x.shape[0], n, dtype=t)
    for i in order:
        if parts[i] is not None:
            out = out + parts[i]  # atomic_add in the output dtype
    return out.double().numpy()


CASES = [(dt, style, splits, gs, zeros, seed)
         for seed, (dt, style, splits, gs, zeros) in enumerate(itertools.product(
             ("float16", "bfloat16"), ("random", "coherent"), (2, 4, 8), (32, 128), (False, True)))]


@pytest.mark.parametrize("dt,style,splits,gs,zeros,seed", CASES)
def test_declared_bound_is_sound_strict_otherwise_and_catches_wrong_kernels(dt, style, splits, gs, zeros, seed):
    rng = np.random.default_rng(100 + seed)
    k = 256
    p = make_problem("w4a16_gemm", rng, m=3, k=k, n=24, style=style, group_size=gs, zeros=zeros)
    conv = {"dequant": "fma_zs_rounded", "partial_sums": splits, "partial_block_k": 32}
    e = expect("w4a16_gemm", {**p, **conv}, exact=False, compute_dtype=dt, out_dtype=dt)
    orders = [tuple(range(splits)), tuple(reversed(range(splits)))] + [tuple(rng.permutation(splits)) for _ in range(2)]
    worst = 0.0
    for order in orders:
        out = _kernel(p, dt, splits, 32, order=order)
        div = compare(out, e.expected, e.bound, unit=e.unit)
        assert div is None, (order, div)
        worst = max(worst, float(np.max(np.abs(out - e.exact_value) / np.where(e.bound > 0, e.bound, np.inf))))
    assert worst > 0.02  # the bound is within a small factor of what the model actually errs
    for bad in (_kernel(p, dt, splits, 32, order=range(splits), lose=splits - 1),
                _kernel(p, dt, splits, 32, order=range(splits), first_group=True)):
        assert compare(bad, e.expected, e.bound, unit=e.unit) is not None


def test_without_the_declaration_the_bound_is_unchanged():
    rng = np.random.default_rng(7)
    p = make_problem("w4a16_gemm", rng, m=3, k=256, n=24, style="random", group_size=32, zeros=True)
    from qkcheck.oracle.bounds import gemm_bound
    from qkcheck.oracle.ops.w4a16 import w4a16_operands

    e = expect("w4a16_gemm", p, exact=False, compute_dtype="float16", out_dtype="float16")
    ops = w4a16_operands(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=32, bias=p.get("bias"))
    assert np.array_equal(e.bound, gemm_bound(ops.x, ops.w, e.exact_value, bias=ops.bias, compute_dtype="float16",
                                              out_dtype="float16"))
    ex = expect("w4a16_gemm", p, exact=True, compute_dtype="float16", out_dtype="float16")
    assert not ex.bound.any()  # the exact regime stays exact without a declaration


def test_an_unknown_dequant_convention_is_refused():
    p = make_problem("w4a16_gemm", np.random.default_rng(1), m=2, k=64, n=8, style="random")
    with pytest.raises(ValueError, match="dequant"):
        expect("w4a16_gemm", {**p, "dequant": "something"}, exact=False, compute_dtype="float16",
               out_dtype="float16")
