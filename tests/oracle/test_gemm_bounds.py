"""GEMM bounds: soundness against straightforward torch (CPU) implementations of every op in the
kernel's compute dtype, accumulated in varied fp32 orders (BLAS, sequential, reversed, pairwise,
split-K, scales applied to partial sums); the exact regime (every such implementation returns
RNE(reference) bit for bit); tightness (each typical bug exceeds the bound tenfold on every
element it touches).

The torch implementations decode codes with torch's own float8 / e8m0 dtypes and a hand-written
e2m1 table, independently of oracle.formats.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from qkcheck.oracle.compare import compare
from qkcheck.oracle.ops import exact_regime_reason, expect, make_problem
from qkcheck.oracle.ops.w4a16 import w8a16_operands

TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FP8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e4m3fnuz": torch.float8_e4m3fnuz,
       "float8_e5m2": torch.float8_e5m2, "float8_e5m2fnuz": torch.float8_e5m2fnuz}
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
ORDERS = ("blas", "sequential", "reversed", "pairwise", "splitk")
WIDE = ("float16", "bfloat16", "float32")


def t32(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float64)).float()


def fp8(codes, fmt) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(codes, np.uint8)).view(FP8[fmt]).float()


def e2m1(codes) -> torch.Tensor:
    return E2M1[torch.from_numpy(np.asarray(codes, np.int64))]


def e8m0(codes) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(codes, np.uint8)).view(torch.float8_e8m0fnu).float()


def e4m3(codes) -> torch.Tensor:
    return fp8(codes, "float8_e4m3fn")


def accumulate(x: torch.Tensor, w: torch.Tensor, order: str, rng) -> torch.Tensor:
    """fp32 sum over k of x[:, k] * w[k, :] in the given order (x, w float32)."""
    m, k = x.shape
    n = w.shape[1]
    if k == 0:
        return torch.zeros(m, n)
    if order == "blas":
        return x @ w
    if order in ("sequential", "reversed"):
        ks = range(k) if order == "sequential" else range(k - 1, -1, -1)
        acc = torch.zeros(m, n)
        for i in ks:
            acc = acc + x[:, i:i + 1] * w[i:i + 1, :]
        return acc
    if order == "pairwise":
        terms = x[:, :, None] * w[None, :, :]  # [m, k, n] fp32 products
        while terms.shape[1] > 1:
            if terms.shape[1] % 2:
                terms = torch.cat([terms, torch.zeros(m, 1, n)], dim=1)
            terms = terms[:, 0::2] + terms[:, 1::2]
        return terms[:, 0]
    # split-K: random chunk boundaries, each chunk by BLAS, partials summed in random order
    cuts = sorted(set(rng.integers(1, k, size=min(3, k - 1)).tolist())) if k > 1 else []
    edges = [0] + cuts + [k]
    parts = [x[:, a:b] @ w[a:b] for a, b in zip(edges[:-1], edges[1:])]
    acc = torch.zeros(m, n)
    for i in rng.permutation(len(parts)):
        acc = acc + parts[i]
    return acc


def sum_parts(parts, rng) -> torch.Tensor:
    acc = torch.zeros_like(parts[0])
    for i in rng.permutation(len(parts)):
        acc = acc + parts[i]
    return acc


def finish(y32: torch.Tensor, bias, out_dtype: str) -> np.ndarray:
    if bias is not None:
        y32 = y32 + t32(bias)
    return y32.to(TORCH[out_dtype]).double().numpy()


# ------------------------------------------------------------------ torch implementations


def _a16_parts(op, p):
    """(code values [K,N] fp32, per-element scales [K,N] fp32, group size along K)."""
    if op in ("w4a16_gemm", "w8a16_gemm"):
        q = torch.from_numpy(np.asarray(p["q"], np.int64))
        k, n = q.shape
        g = k if p["group_size"] == -1 else p["group_size"]
        default = 8 if op == "w4a16_gemm" else 0
        z = torch.full((max(k // g, 1), n), default) if p["zeros"] is None else torch.from_numpy(np.asarray(p["zeros"], np.int64))
        cv = (q - z.repeat_interleave(g, 0)).float()
        sv = t32(p["scales"]).repeat_interleave(g, 0)
        return cv, sv, g
    if op == "fp8_w8a16_gemm":
        cv = fp8(p["b"], p["quant_dtype"])
        return cv, t32(p["b_scale"]).expand_as(cv), cv.shape[0]
    cv = e2m1(p["w"])  # mxfp4 a16
    return cv, e8m0(p["w_scale"]).repeat_interleave(32, 0), 32


def torch_a16(op, p, c, o, order, mode, rng):
    """x cast to c; weights dequantized 'fp32' (in fp32, then cast), 'direct' (in c) or
    'factored' (codes in c, the scale applied to each group's fp32 partial sum)."""
    ct = TORCH[c]
    x = t32(p["x"]).to(ct).float()
    cv, sv, g = _a16_parts(op, p)
    if mode == "fp32":
        w = (cv * sv).to(ct).float()
    elif mode == "direct":
        w = (cv.to(ct) * sv.to(ct)).float()
    else:
        w = cv.to(ct).float()
        k = w.shape[0]
        parts = [accumulate(x[:, a:a + g], w[a:a + g], order, rng) * sv[a:a + 1] for a in range(0, k, g)]
        return finish(sum_parts(parts, rng) if parts else torch.zeros(x.shape[0], w.shape[1]), p["bias"], o)
    return finish(accumulate(x, w, order, rng), p["bias"], o)


def torch_scaled_mm(p, c, o, order, mode, rng):
    qd = p["quant_dtype"]
    sa, sb = t32(p["a_scale"]), t32(p["b_scale"])
    if qd == "int8":
        a = torch.from_numpy(np.asarray(p["a"], np.int64))
        b = torch.from_numpy(np.asarray(p["b"], np.int64))
        av, bv = a.float(), b.float()
        if p["azp"] is not None:
            zp = torch.from_numpy(np.asarray(p["azp"], np.int64))
            av = (a - zp).float()
    else:
        av, bv = fp8(p["a"], qd), fp8(p["b"], qd)
    if c in WIDE:  # emulation: dequantize both operands in fp32, cast, dot
        ct = TORCH[c]
        y = accumulate((av * sa).to(ct).float(), (bv * sb).to(ct).float(), order, rng)
        return finish(y, p["bias"], o)
    if qd == "int8":
        acc = a @ b  # exact integer accumulation
        if p["azp"] is not None:
            corr = zp * b.sum(0, keepdim=True)
            y = acc.float() - corr.float() if mode != "int" else (acc - corr).float()
        else:
            y = acc.float()
    else:
        y = accumulate(av, bv, order, rng)
    y = y * (sa * sb) if mode == "product" else y * sa * sb
    return finish(y, p["bias"], o)


def torch_block(p, c, o, order, mode, rng):
    qd = p["quant_dtype"]
    bk, bn = p["block"]
    av, bv = fp8(p["a"], qd), fp8(p["b"], qd)
    m, k = av.shape
    n = bv.shape[1]
    sa = t32(p["a_scale"])
    sb = t32(p["b_scale"]).repeat_interleave(bn, 1)[:, :n]
    if c in WIDE:
        ct = TORCH[c]
        x = (av * sa.repeat_interleave(bk, 1)[:, :k]).to(ct).float()
        w = (bv * sb.repeat_interleave(bk, 0)[:k]).to(ct).float()
        return finish(accumulate(x, w, order, rng), p["bias"], o)
    parts = []
    for j, a0 in enumerate(range(0, k, bk)):
        part = accumulate(av[:, a0:a0 + bk], bv[a0:a0 + bk], order, rng)
        parts.append(part * (sa[:, j:j + 1] * sb[j:j + 1]) if mode == "product" else part * sa[:, j:j + 1] * sb[j:j + 1])
    return finish(sum_parts(parts, rng) if parts else torch.zeros(m, n), p["bias"], o)


def torch_mxfp4_a4(p, c, o, order, mode, rng):
    av, wv = e2m1(p["a"]), e2m1(p["w"])
    sa, sw = e8m0(p["a_scale"]), e8m0(p["w_scale"])
    k = av.shape[1]
    if c in WIDE:
        ct = TORCH[c]
        x = (av * sa.repeat_interleave(32, 1)).to(ct).float()
        w = (wv * sw.repeat_interleave(32, 0)).to(ct).float()
        return finish(accumulate(x, w, order, rng), p["bias"], o)
    parts = [accumulate(av[:, a:a + 32], wv[a:a + 32], order, rng) * sa[:, a // 32:a // 32 + 1] * sw[a // 32:a // 32 + 1]
             for a in range(0, k, 32)]
    return finish(sum_parts(parts, rng), p["bias"], o)


def torch_nvfp4(p, c, o, order, mode, rng):
    av, wv = e2m1(p["a"]), e2m1(p["w"])
    sa, sw = e4m3(p["a_scale"]), e4m3(p["w_scale"])
    ga, gw = torch.tensor(p["a_global"], dtype=torch.float32), torch.tensor(p["w_global"], dtype=torch.float32)
    k = av.shape[1]
    if c in WIDE:
        ct = TORCH[c]
        if mode == "product":  # block scale times global first, then the code
            x = (av * (sa * ga).repeat_interleave(16, 1)).to(ct).float()
            w = (wv * (sw * gw).repeat_interleave(16, 0)).to(ct).float()
        else:
            x = (av * sa.repeat_interleave(16, 1) * ga).to(ct).float()
            w = (wv * sw.repeat_interleave(16, 0) * gw).to(ct).float()
        return finish(accumulate(x, w, order, rng), p["bias"], o)
    parts = [accumulate(av[:, a:a + 16], wv[a:a + 16], order, rng) * (sa[:, a // 16:a // 16 + 1] * sw[a // 16:a // 16 + 1])
             for a in range(0, k, 16)]
    y = sum_parts(parts, rng)
    y = y * (ga * gw) if mode == "product" else y * ga * gw
    return finish(y, p["bias"], o)


def torch_impl(op, p, c, o, order, mode, rng) -> np.ndarray:
    if op in ("w4a16_gemm", "w8a16_gemm", "fp8_w8a16_gemm") or (op == "mxfp4_gemm" and p["act"] == "a16"):
        return torch_a16(op, p, c, o, order, mode, rng)
    fn = {"scaled_mm": torch_scaled_mm, "block_scaled_mm": torch_block, "mxfp4_gemm": torch_mxfp4_a4,
          "nvfp4_gemm": torch_nvfp4}[op]
    return fn(p, c, o, order, mode, rng)


# ------------------------------------------------------------------ the case space

A16_MODES = ("fp32", "direct", "factored")
CODE_MODES = ("separate", "product")


def variants():
    """(op, generator params, compute dtypes, modes) for every op / scheme."""
    out = []
    for g, z in itertools.product((32, 64, -1), (False, True)):
        out.append(("w4a16_gemm", dict(group_size=g, zeros=z), WIDE, A16_MODES))
        out.append(("w8a16_gemm", dict(group_size=g, zeros=z), WIDE, A16_MODES))
    for qd in ("int8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2"):
        for pt, pc in itertools.product((False, True), (False, True)):
            azps = (False, True) if qd == "int8" else (False,)
            for azp in azps:
                modes = CODE_MODES + (("int",) if azp else ())
                out.append(("scaled_mm", dict(quant_dtype=qd, per_token=pt, per_channel=pc, azp=azp),
                            (qd,) + WIDE, modes))
    for qd in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz"):
        for blk in ((128, 128), (32, 16), (64, 32)):
            out.append(("block_scaled_mm", dict(quant_dtype=qd, block=blk), (qd,) + WIDE, CODE_MODES))
    for qd in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2"):
        for pc in (False, True):
            out.append(("fp8_w8a16_gemm", dict(quant_dtype=qd, per_channel=pc), WIDE, A16_MODES))
    out.append(("mxfp4_gemm", dict(act="a16"), WIDE, A16_MODES))
    out.append(("mxfp4_gemm", dict(act="mxfp4"), ("float4_e2m1fn",) + WIDE, CODE_MODES))
    out.append(("nvfp4_gemm", {}, ("float4_e2m1fn",) + WIDE, CODE_MODES))
    return out


VARIANTS = variants()


def draw_case(i: int):
    """Case i of the sweep: a variant, a shape, a style, a compute/out dtype, an order, a mode."""
    rng = np.random.default_rng(1000 + i)
    op, params, computes, modes = VARIANTS[i % len(VARIANTS)]
    m = int(rng.choice([1, 3, 8]))
    n = int(rng.choice([8, 24, 40]))
    if op in ("w4a16_gemm", "w8a16_gemm"):
        g = params["group_size"]
        k = int(rng.choice([64, 128, 256])) if g in (64, -1) else int(rng.choice([32, 96, 256]))
    elif op == "block_scaled_mm":
        k = int(rng.integers(1, 300))
    elif op == "mxfp4_gemm":
        k = 32 * int(rng.integers(1, 9))
    elif op == "nvfp4_gemm":
        k = 16 * int(rng.integers(1, 17))
    else:
        k = int(rng.integers(1, 300))
    params = dict(params, bias=bool(rng.integers(2)))
    style = str(rng.choice(["random", "coherent"]))
    c = str(rng.choice(computes))
    o = str(rng.choice(WIDE))
    order = str(rng.choice(ORDERS))
    mode = str(rng.choice(modes))
    return op, params, (m, k, n), style, c, o, order, mode, rng


def _id(i):
    op, params, (m, k, n), style, c, o, order, mode, _ = draw_case(i)
    return f"{i}-{op}-m{m}k{k}n{n}-{style}-{c}-{o}-{order}-{mode}"


def check_sound(i: int) -> None:
    op, params, (m, k, n), style, c, o, order, mode, rng = draw_case(i)
    p = make_problem(op, rng, m=m, k=k, n=n, style=style, **params)
    e = expect(op, p, exact=False, compute_dtype=c, out_dtype=o)
    actual = torch_impl(op, p, c, o, order, mode, rng)
    d = compare(actual, e.expected, e.bound)
    assert d is None, f"case {_id(i)}:\n{d.summary()}"


CI_CASES = 300
SWEEP_CASES = 10_000


@pytest.mark.parametrize("i", range(CI_CASES), ids=_id)
def test_correct_implementation_within_bound(i):
    check_sound(i)


@pytest.mark.sweep
def test_correct_implementation_within_bound_sweep():
    failures = []
    for i in range(CI_CASES, CI_CASES + SWEEP_CASES):
        try:
            check_sound(i)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert not failures, f"{len(failures)} of {SWEEP_CASES} cases exceed the bound: {failures[:10]}"


def test_ci_subset_covers_every_variant_and_order():
    seen = {(VARIANTS[i % len(VARIANTS)][0], draw_case(i)[4] in WIDE) for i in range(CI_CASES)}
    ops = {v[0] for v in VARIANTS}
    assert {op for op, _ in seen} == ops
    assert {draw_case(i)[6] for i in range(CI_CASES)} == set(ORDERS)
    assert len(VARIANTS) <= CI_CASES


# ------------------------------------------------------------------ exact regime

def _exact_variants():
    """One variant per op and code format / activation kind / zero-point use, every scale shape
    of scaled_mm and two block shapes; the compute dtype alternates between the first two of
    the variant (the code format and float16 / float16 and bfloat16)."""
    seen, out = set(), []
    for op, params, computes, _ in VARIANTS:
        key = (op, params.get("quant_dtype"), params.get("act"), params.get("azp"), params.get("zeros"),
               params.get("per_token"), params.get("block"))
        if key in seen or (op == "scaled_mm" and params["quant_dtype"] in ("float8_e4m3fnuz", "float8_e5m2")
                           and not (params["per_token"] and params["per_channel"])):
            continue
        seen.add(key)
        out.append((op, params, computes[len(seen) % 2]))
    return out


EXACT = _exact_variants()


@pytest.mark.parametrize("op,params,c", EXACT, ids=[f"{op}-{'-'.join(f'{k}={v}' for k, v in p.items())}-{c}" for op, p, c in EXACT])
def test_exact_regime_every_implementation_returns_rne(op, params, c):
    rng = np.random.default_rng(7)
    k = 128 if op not in ("block_scaled_mm", "scaled_mm") else 150
    p = make_problem(op, rng, m=4, k=k, n=40, style="exact", bias=True, **params)
    assert exact_regime_reason(op, p) is None
    modes = A16_MODES if c in WIDE and op in ("w4a16_gemm", "w8a16_gemm", "fp8_w8a16_gemm") or (
        op == "mxfp4_gemm" and params.get("act") == "a16") else CODE_MODES
    for o in WIDE:
        e = expect(op, p, exact=True, compute_dtype=c, out_dtype=o)
        assert not e.bound.any()
        for order, mode in itertools.product(ORDERS, modes):
            actual = torch_impl(op, p, c, o, order, mode, rng)
            np.testing.assert_array_equal(actual, e.expected, err_msg=f"{o} {order} {mode}")


def test_exact_regime_output_is_not_trivially_representable():
    """The exact regime's outputs need the final rounding (else it would test nothing)."""
    p = make_problem("w4a16_gemm", np.random.default_rng(3), m=8, k=256, n=64, style="exact", bias=True)
    e = expect("w4a16_gemm", p, exact=True, compute_dtype="float16", out_dtype="bfloat16")
    assert np.mean(e.expected != e.exact_value) > 0.3


def test_exact_regime_reason_catches_an_inexact_problem():
    p = make_problem("scaled_mm", np.random.default_rng(0), m=2, k=64, n=8, style="exact")
    assert exact_regime_reason("scaled_mm", p) is None
    p["b_scale"] = np.full((1, 8), 1.0 + 2.0**-20)
    assert "not exact in float16" in exact_regime_reason("scaled_mm", p)
    p = make_problem("w4a16_gemm", np.random.default_rng(0), m=2, k=64, n=8, style="exact")
    p["x"][0, 0] = 1 + 2.0**-20  # exact in float32, but its low bit makes the sums too wide
    assert "partial sum could round" in exact_regime_reason("w4a16_gemm", p, compute_dtypes=("float32",))


# ------------------------------------------------------------------ tightness


def _touched_ratio(op, p, buggy, c, o):
    """(min ratio |buggy - y| / bound over the touched elements, number touched)."""
    e = expect(op, p, exact=False, compute_dtype=c, out_dtype=o)
    touched = buggy != e.exact_value
    assert touched.any()
    err = np.abs(buggy - e.exact_value)[touched]
    b = e.bound[touched]
    with np.errstate(divide="ignore"):
        ratio = np.where(b > 0, err / np.where(b > 0, b, 1.0), np.inf)
    return float(ratio.min()), int(touched.sum())


TIGHT_DTYPES = [("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "float32")]


def _coherent(op, seed, **params):
    shape = dict(m=8, k=256, n=16)
    return make_problem(op, np.random.default_rng(seed), style="coherent", **shape, **params)


WRONG_GROUP_SCALE = [
    ("w4a16_gemm", dict(group_size=32, zeros=True), "scales"),
    ("w8a16_gemm", dict(group_size=64), "scales"),
    ("scaled_mm", dict(quant_dtype="float8_e4m3fn"), "b_scale"),
    ("scaled_mm", dict(quant_dtype="int8"), "a_scale"),
    ("block_scaled_mm", dict(block=(32, 8)), "b_scale"),
    ("fp8_w8a16_gemm", dict(quant_dtype="float8_e5m2"), "b_scale"),
    ("mxfp4_gemm", dict(act="a16"), "w_scale"),
    ("mxfp4_gemm", dict(act="mxfp4"), "a_scale"),
    ("nvfp4_gemm", {}, "w_scale"),
]


@pytest.mark.parametrize("c,o", TIGHT_DTYPES)
@pytest.mark.parametrize("op,params,key", WRONG_GROUP_SCALE, ids=[f"{o}-{k}-{i}" for i, (o, _, k) in enumerate(WRONG_GROUP_SCALE)])
def test_single_wrong_group_scale_exceeds_bound_tenfold(op, params, key, c, o):
    for seed in range(3):
        p = _coherent(op, seed, **params)
        s = np.array(p[key])
        # the group that carries the most weight in its column: a group whose contribution is
        # lost in the output's own rounding cannot be seen by any check
        j = s.shape[1] // 2
        i = int(np.argmax(np.abs(s[:, j]))) if s.dtype != np.uint8 else int(np.argmax(s[:, j]))
        if s.dtype == np.uint8:  # E8M0 / E4M3 codes: the neighbouring power of two / code
            s[i, j] = s[i, j] + 1 if key != "w_scale" or op != "nvfp4_gemm" else s[i, j] + 8
        else:
            s[i, j] = s[i, j] * 2
        bug = dict(p, **{key: s})
        cc = c if op != "scaled_mm" or params["quant_dtype"] != "int8" or c != "float32" else "int8"
        ratio, touched = _touched_ratio(op, p, expect(op, bug, exact=False, compute_dtype=cc, out_dtype=o).exact_value, cc, o)
        assert ratio >= 10, f"{op} {key} seed {seed}: min ratio {ratio:.3g} over {touched} touched elements"


TRANSPOSED = [("w4a16_gemm", dict(group_size=32), "scales", 8), ("mxfp4_gemm", dict(act="a16"), "w_scale", 8),
              ("block_scaled_mm", dict(block=(16, 16)), "b_scale", 256)]


@pytest.mark.parametrize("op,params,key,n", TRANSPOSED, ids=[t[0] for t in TRANSPOSED])
def test_transposed_group_scales_exceed_bound_tenfold(op, params, key, n):
    """Square [K/G, N] scales read transposed. Every scale of a column changes, by factors of both
    signs, so an element's change can cancel between groups; the claim is made on the elements
    whose exact value moves by at least 1/16 (most of them, checked), the others are below what
    a bf16 output can resolve at ten times its rounding."""
    for seed in range(3):
        p = make_problem(op, np.random.default_rng(seed), m=4, k=256, n=n, style="coherent", **params)
        s = np.asarray(p[key])
        assert s.shape[0] == s.shape[1], s.shape
        bug = dict(p, **{key: s.T.copy()})
        for c, o in TIGHT_DTYPES:
            e = expect(op, p, exact=False, compute_dtype=c, out_dtype=o)
            y_bug = expect(op, bug, exact=False, compute_dtype=c, out_dtype=o).exact_value
            change = np.abs(y_bug - e.exact_value)
            changed = change > 0
            material = change >= np.abs(e.exact_value) / 16
            assert material.sum() >= 0.5 * changed.sum()
            with np.errstate(divide="ignore"):
                ratio = change[material] / e.bound[material]
            assert ratio.min() >= 10, f"{op} seed {seed} {c}/{o}: min ratio {ratio.min():.3g}"


def test_per_channel_scale_read_along_rows_exceeds_bound_tenfold():
    for qd in ("float8_e4m3fn", "int8"):
        p = make_problem("scaled_mm", np.random.default_rng(2), m=16, k=128, n=16, style="coherent",
                         quant_dtype=qd, per_token=False)
        # b_scale [1, N] applied along M (M == N): row m gets b_scale[m]
        bug = dict(p, a_scale=np.asarray(p["b_scale"]).reshape(-1, 1) * p["a_scale"], b_scale=np.ones((1, 1)))
        for c, o in TIGHT_DTYPES:
            cc = qd if c == "float32" else c
            ratio, _ = _touched_ratio("scaled_mm", p, expect("scaled_mm", bug, exact=False, compute_dtype=cc,
                                                                out_dtype=o).exact_value, cc, o)
            assert ratio >= 10, f"{qd} {c}/{o}: {ratio:.3g}"


FNUZ_SWAP = {"float8_e4m3fn": "float8_e4m3fnuz", "float8_e4m3fnuz": "float8_e4m3fn",
             "float8_e5m2": "float8_e5m2fnuz"}


@pytest.mark.parametrize("op,qd", [("scaled_mm", "float8_e4m3fn"), ("scaled_mm", "float8_e4m3fnuz"),
                                   ("block_scaled_mm", "float8_e4m3fn"), ("fp8_w8a16_gemm", "float8_e4m3fnuz"),
                                   ("fp8_w8a16_gemm", "float8_e5m2")])
def test_fn_fnuz_swap_exceeds_bound_tenfold(op, qd):
    p = _coherent(op, 4, quant_dtype=qd, **({"block": (32, 8)} if op == "block_scaled_mm" else {}))
    bug = dict(p, quant_dtype=FNUZ_SWAP[qd])
    for c, o in TIGHT_DTYPES:
        cc = qd if (c == "float32" and op != "fp8_w8a16_gemm") else c
        y_bug = expect(op, bug, exact=False, compute_dtype=FNUZ_SWAP[qd] if cc == qd else cc, out_dtype=o).exact_value
        ratio, touched = _touched_ratio(op, p, y_bug, cc, o)
        assert ratio >= 10 and touched == y_bug.size, f"{op} {qd} {c}/{o}: {ratio:.3g}"


@pytest.mark.parametrize("op,params,key", [("w4a16_gemm", dict(group_size=32, zeros=True), "zeros"),
                                           ("w8a16_gemm", dict(group_size=-1, zeros=True), "zeros"),
                                           ("scaled_mm", dict(quant_dtype="int8", azp=True), "azp")])
@pytest.mark.parametrize("delta", (-1, 1))
def test_zero_point_off_by_one_exceeds_bound_tenfold(op, params, key, delta):
    for seed in range(3):
        p = _coherent(op, seed, **params)
        bug = dict(p, **{key: np.asarray(p[key]) + delta})
        for c, o in TIGHT_DTYPES:
            cc = "int8" if op == "scaled_mm" and c == "float32" else c
            ratio, _ = _touched_ratio(op, p, expect(op, bug, exact=False, compute_dtype=cc, out_dtype=o).exact_value, cc, o)
            assert ratio >= 10, f"{op} seed {seed} {c}/{o} delta {delta}: {ratio:.3g}"


def test_bound_is_tighter_than_the_worst_case_formula():
    """The signed operand term and the exact output reach beat u_c P + gamma P + u_o |y| by far
    on random data (what makes the tenfold margins above possible)."""
    p = make_problem("w8a16_gemm", np.random.default_rng(0), m=8, k=512, n=32, style="random", group_size=64)
    e = expect("w8a16_gemm", p, exact=False, compute_dtype="bfloat16", out_dtype="bfloat16")
    ops = w8a16_operands(p["x"], p["q"], p["scales"], group_size=64)
    big_p = np.abs(ops.x) @ np.abs(ops.w)
    worst = (2.0**-8 + 2 * 2.0**-24) * big_p + 513 * 2.0**-24 * big_p + 2.0**-8 * np.abs(e.exact_value)
    assert np.median(e.bound / worst) < 0.5
