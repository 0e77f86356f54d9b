"""The bundled fused MoE (routing, alignment, grouped expert GEMMs) against a float64 reference.

Exact regime (bound 0): activations are small integers, expert weights small integer codes with
power-of-two scales, router weights powers of two, output float32. Every gate pre-activation is
0 or 32, where float32 ``silu`` is exact (``g / (1 + exp(-32))`` is ``g``: exp(-32) is far below
half an ulp of 1) and the float64 silu differs by 1e-14 relative, which no rounding of these
values can see; the up products, the activation output (checked representable in the
activation dtype) and both GEMMs' partial sums are then exact in float32, whatever the tile
order, and the only correct output is the reference itself. The regime's preconditions are
asserted when inputs are built, so a test cannot pass on inputs that left the regime.

Bounded regime: random data, compared within :func:`moe_bound`, a per-element bound derived from
the roundings a correct kernel performs (module text of that function).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from qkcheck.kernels import backends
from qkcheck.kernels.moe import emulation
from qkcheck.kernels.moe import kernel as moe
from qkcheck.kernels.moe import op as ops_moe
from qkcheck.kernels.moe.kernel import ExpertWeights, MoEConfig
from qkcheck.kernels.probes import skip_reason
from qkcheck.kernels.w4a16.kernel import LAYOUTS
from qkcheck.oracle.compare import compare
from qkcheck.oracle.formats import get_format
from qkcheck.oracle.numerics import wide_float
from qkcheck.oracle.ops import moe as oracle_moe
from qkcheck.oracle.packing import pack
from tests.tiers import sampled

U32 = wide_float("float32").unit_roundoff
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
E2M1 = get_format("float4_e2m1fn")
GATE_ON = 32.0  # gate pre-activation where float32 silu(g) == g exactly


# ---------------------------------------------------------------------------------------------
# float64 reference


def np_route(logits, top_k, *, scoring="softmax", renormalize=False, num_groups=None, topk_groups=None,
             correction_bias=None):
    """float64 routing with the documented rules: ties to the lower index (stable sort)."""
    logits = np.asarray(logits, np.float64)
    if scoring == "softmax":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = e / e.sum(axis=1, keepdims=True)
    else:
        scores = 1.0 / (1.0 + np.exp(-logits))
    select = scores if correction_bias is None else scores + np.asarray(correction_bias, np.float64)
    T, E = scores.shape
    if num_groups is not None:
        grouped = select.reshape(T, num_groups, E // num_groups)
        group_scores = -np.sort(-grouped, axis=2)[:, :, :2].sum(axis=2)
        keep = np.argsort(-group_scores, axis=1, kind="stable")[:, :topk_groups]
        mask = np.zeros((T, num_groups), bool)
        np.put_along_axis(mask, keep, True, axis=1)
        select = np.where(np.repeat(mask, E // num_groups, axis=1), select, -np.inf)
    ids = np.argsort(-select, axis=1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(scores, ids, axis=1)
    if renormalize:
        weights = weights / weights.sum(axis=1, keepdims=True)
    return ids, weights


def np_activation(h, I, activation, limit):
    gate, up = h[:, :I], h[:, I:]
    if limit is not None:
        gate = np.minimum(gate, limit)
        up = np.clip(up, -limit, limit)
    if activation == "silu":
        return gate / (1.0 + np.exp(-gate)) * up
    return gate / (1.0 + np.exp(-moe.SWIGLU_ALPHA * gate)) * (up + 1.0)


def fp8_quant_dequant(a, group, fp8_name="float8_e4m3fn"):
    """Per-row, per-group dynamic fp8 quantize-dequantize (scale = max(amax, 1e-10) / max)."""
    fmt = get_format(fp8_name)
    R, K = a.shape
    out = np.empty_like(a)
    for g0 in range(0, K, group):
        chunk = a[:, g0:g0 + group]
        scale = np.maximum(np.abs(chunk).max(axis=1, keepdims=True), moe.ACT_QUANT_FLOOR) / fmt.max
        out[:, g0:g0 + group] = fmt.decode(fmt.encode(np.clip(chunk / scale, -fmt.max, fmt.max), saturate=True)) * scale
    return out


def np_experts(x, ids, weights, d13, d2, *, activation="silu", limit=None, on_input=False, expert_map=None,
               act_dtype="float16", fp8_group=None):
    """float64 MoE over given routing: per slot, ``r * (round_act(act(x @ W13)) @ W2)``, summed.

    The activation output is rounded to the activation dtype (the kernel's contract: GEMM 2 reads
    it in that dtype); slots of non-local experts and zero router weights contribute 0. Also
    returns the per-slot intermediates the bound needs."""
    T, H = x.shape
    k = ids.shape[1]
    I = d13.shape[2] // 2
    rnd = wide_float(act_dtype).round
    y = np.zeros((T, H))
    parts = []
    for t in range(T):
        for j in range(k):
            e = int(ids[t, j]) if expert_map is None else int(expert_map[ids[t, j]])
            r = float(weights[t, j])
            if e < 0 or r == 0.0:
                continue
            a = x[t:t + 1]
            if fp8_group:
                a = fp8_quant_dequant(a, fp8_group)
            h = a @ d13[e]
            if on_input:
                h = h * r
            act = rnd(np_activation(h, I, activation, limit))
            a2 = fp8_quant_dequant(act, fp8_group) if fp8_group else act
            out = a2 @ d2[e]
            if not on_input:
                out = out * r
            y[t] += out[0]
            parts.append((t, e, r, x[t:t + 1], h, act))
    return y, parts


def moe_bound(parts, d13, d2, *, T, activation, act_dtype, out_dtype, on_input, fp8_group):
    """Per-element bound for a correct kernel vs :func:`np_experts` (same routing weights).

    Per slot, as error magnitudes propagated through each step (first order is not assumed:
    perturbed magnitudes are carried):
    - fp8 activations: each side's quantize-dequantize is within ``u8 |a| + eta8 * scale / 2``
      of a (RNE, no saturation since scale = amax / max), so the two differ by twice that;
    - GEMM 1 in float32 over H terms: ``da @ |W| + gamma_(H+1) (|a| + da) @ |W|`` (Higham 3.4);
      with the weight on the input, the product with r adds ``u32 |h|``;
    - activation (silu or swiglu; both gates have |d/dg| <= 1.1): ``1.1 dg (|u| + du [+1]) +
      |act_gate| du + 8 u32 |act|`` (exp, add, divide, multiplies in float32);
    - rounding to the activation dtype on both sides: ``|rnd(p) - rnd(q)| <= |p - q| + ulp``;
    - GEMM 2 as GEMM 1; the router weight multiply ``u32``; the sum over k slots ``gamma_k``;
    - output rounding: ``u_o (|y| + d) + eta_o / 2``.
    """
    H = d2.shape[2]
    I = d2.shape[1]
    act_f = wide_float(act_dtype)
    out_f = wide_float(out_dtype)
    gam1 = _gamma(H + 1)
    gam2 = _gamma(I + 1)
    u8 = 2.0 ** -4  # e4m3: 3 mantissa bits
    err = np.zeros((T, H))
    mag = np.zeros((T, H))
    for t, e, r, xrow, h, act in parts:
        ax = np.abs(xrow)
        dx = np.zeros_like(ax)
        if fp8_group:
            dx = 2 * (u8 * ax + 2.0 ** -9 * _group_scale(xrow, fp8_group))
        W1 = np.abs(d13[e])
        dh = dx @ W1 + gam1 * ((ax + dx) @ W1)
        if on_input:
            dh = abs(r) * dh + U32 * np.abs(h)
        g, u = np.abs(h[:, :I]), np.abs(h[:, I:])
        dg, du = dh[:, :I], dh[:, I:]
        plus = 1.0 if activation == "swiglu" else 0.0
        gate_val = g + dg  # |g * sigmoid(.)| <= |g|
        dact = 1.1 * dg * (u + du + plus) + gate_val * du + 8 * U32 * np.abs(act)
        dact = dact + act_f.ulp(np.abs(act) + dact) + act_f.min_subnormal
        aact = np.abs(act) + dact
        if fp8_group:
            dact = dact + 2 * (u8 * aact + 2.0 ** -9 * _group_scale(aact, fp8_group))
            aact = aact + dact
        W2 = np.abs(d2[e])
        rr = 1.0 if on_input else abs(r)
        dy = rr * (dact @ W2 + gam2 * (aact @ W2)) * (1 + U32)
        err[t] += dy[0] + U32 * rr * (np.abs(act) @ W2)[0]
        mag[t] += rr * (aact @ W2)[0]
    k_slots = max(1, max((sum(1 for p in parts if p[0] == t) for t in range(T)), default=1))
    err += _gamma(k_slots) * mag
    return err, out_f


def _group_scale(a, group):
    """The per-element fp8 scale (amax of its group / 448) for rows of a."""
    a = np.abs(a)
    s = np.empty_like(a)
    for g0 in range(0, a.shape[1], group):
        s[:, g0:g0 + group] = np.maximum(a[:, g0:g0 + group].max(axis=1, keepdims=True), 1e-10) / 448.0
    return s


def _gamma(n):
    return n * U32 / (1 - n * U32)


# ---------------------------------------------------------------------------------------------
# inputs: canonical experts in each scheme, packed for the kernel


@dataclass(frozen=True)
class Experts:
    d13: np.ndarray  # float64 [E, H, 2I], exact dequantized weights
    d2: np.ndarray  # float64 [E, I, H]
    w13: ExpertWeights
    w2: ExpertWeights


def _int4_experts(rng, E, K, N, G, asym, layout, gate_cols, device, act_dtype):
    groups = K // G
    q = rng.integers(0, 16, (E, K, N))
    lo = -3 if gate_cols is not None else -6  # bounded data: smaller weights keep fp16 in range
    s = 2.0 ** rng.integers(lo, lo + 2, (E, groups, N)) * rng.choice([-1.0, 1.0], (E, groups, N))
    z = rng.integers(0, 16, (E, groups, N)) if asym else np.full((E, groups, N), 8)
    if gate_cols is not None:  # gate columns: row 0 = GATE_ON or 0, every other row 0
        z[:, 0, gate_cols] = np.minimum(z[:, 0, gate_cols], 11)
        s[:, 0, gate_cols] = 8.0
        q[:, :, gate_cols] = np.repeat(z[:, :, gate_cols], G, axis=1)
        on = rng.integers(0, 2, (E, len(gate_cols)))
        q[:, 0, gate_cols] = z[:, 0, gate_cols] + 4 * on
    d = (q - np.repeat(z, G, axis=1)) * np.repeat(s, G, axis=1)
    rec = LAYOUTS[layout]
    qw = torch.from_numpy(np.stack([pack(q[e], rec.qweight) for e in range(E)])).to(device)
    zw = torch.from_numpy(np.stack([pack(z[e], rec.zeros) for e in range(E)])).to(device) if asym else None
    return d, ExpertWeights("w4a16", qw, torch.from_numpy(s).to(device, act_dtype), zw, layout=layout, group_size=G)


def _mxfp4_experts(rng, E, K, N, gate_cols, device):
    codes = rng.integers(0, 16, (E, K, N))
    lo = 124 if gate_cols is not None else 120
    sc = rng.integers(lo, lo + 4, (E, K // 32, N))
    if gate_cols is not None:
        codes[:, :, gate_cols] = 0
        sc[:, 0, gate_cols] = 130  # 4.0 (code 6) * 2**3 = 32
        codes[:, 0, gate_cols] = 6 * rng.integers(0, 2, (E, len(gate_cols)))
    d = E2M1.decode(codes) * 2.0 ** (np.repeat(sc, 32, axis=1) - 127)
    qw = torch.from_numpy(np.stack([pack(codes[e], LAYOUTS["nibble"].qweight) for e in range(E)])).to(device)
    return d, ExpertWeights("mxfp4", qw, torch.from_numpy(sc.astype(np.uint8)).to(device))


def _dense_experts(rng, E, K, N, gate_cols, device, act_dtype):
    lo = -3 if gate_cols is not None else -6
    d = rng.integers(-3, 4, (E, K, N)) * 2.0 ** rng.integers(lo, lo + 2, (E, 1, N))
    if gate_cols is not None:
        d[:, :, gate_cols] = 0
        d[:, 0, gate_cols] = GATE_ON * rng.integers(0, 2, (E, len(gate_cols)))
    return d, ExpertWeights("dense", torch.from_numpy(d).to(device, act_dtype))


def _fp8_experts(rng, E, K, N, device, block=(128, 128)):
    fmt = get_format("float8_e4m3fn")
    codes = fmt.encode(rng.standard_normal((E, K, N)) * 4, saturate=True)
    bk, bn = block
    s = 2.0 ** rng.integers(-8, -5, (E, -(-K // bk), -(-N // bn)))
    d = fmt.decode(codes) * np.repeat(np.repeat(s, bk, axis=1)[:, :K], bn, axis=2)[:, :, :N]
    w = torch.from_numpy(codes.astype(np.uint8)).view(torch.float8_e4m3fn).to(device)
    return d, ExpertWeights("fp8_block", w, torch.from_numpy(s).to(device, torch.float32), block=block)


def make_experts(scheme, *, E, H, I, device, seed, exact, act_dtype=torch.float16, G=32, asym=False,
                 layout="gptq", fp8_block=(128, 128)) -> Experts:
    rng = np.random.default_rng(seed)
    gate_cols = list(range(I)) if exact else None
    if scheme == "dense":
        d13, w13 = _dense_experts(rng, E, H, 2 * I, gate_cols, device, act_dtype)
        d2, w2 = _dense_experts(rng, E, I, H, None, device, act_dtype)
    elif scheme == "w4a16":
        d13, w13 = _int4_experts(rng, E, H, 2 * I, G, asym, layout, gate_cols, device, act_dtype)
        d2, w2 = _int4_experts(rng, E, I, H, G, asym, layout, None, device, act_dtype)
    elif scheme == "mxfp4":
        d13, w13 = _mxfp4_experts(rng, E, H, 2 * I, gate_cols, device)
        d2, w2 = _mxfp4_experts(rng, E, I, H, None, device)
    else:
        d13, w13 = _fp8_experts(rng, E, H, 2 * I, device, fp8_block)
        d2, w2 = _fp8_experts(rng, E, I, H, device, fp8_block)
    return Experts(d13, d2, w13, w2)


def exact_x(rng, T, H):
    x = rng.integers(-2, 3, (T, H)).astype(np.float64)
    x[:, 0] = 1.0  # the row that carries the gate constant
    return x


def assert_exact_regime(parts, y, act_dtype):
    """Preconditions of the exact regime: gates in {0, 32}, activation outputs representable in
    the activation dtype, output representable in float32."""
    rnd = wide_float(act_dtype).round
    for _, _, _, _, h, act in parts:
        I = act.shape[1]
        assert set(np.unique(h[:, :I])) <= {0.0, GATE_ON}, "gate left the exact regime"
        exact_act = h[:, :I] * h[:, I:]
        assert np.array_equal(rnd(exact_act), exact_act) and np.array_equal(act, exact_act), \
            "activation output not representable in the activation dtype"
    assert np.array_equal(wide_float("float32").round(y), y), "output not representable in float32"


def check_exact(out, y):
    __tracebackhide__ = True
    got = out.detach().cpu().double().numpy()
    if not np.array_equal(got, y):
        div = compare(got, y, 0.0)
        pytest.fail("output differs from the exact reference:\n" + (div.summary() if div else "NaN positions differ"))


def check_bounded(out, y, bound, out_f):
    __tracebackhide__ = True
    got = out.detach().cpu().double().numpy()
    assert np.isfinite(got).all(), "non-finite output"
    total = bound + out_f.unit_roundoff * (np.abs(y) + bound) + out_f.min_subnormal / 2
    div = compare(got, y, total)
    if div is not None:
        pytest.fail("output outside the derived bound:\n" + div.summary())


def pow2_weights(rng, T, k):
    return rng.choice([0.25, 0.5, 1.0, 2.0], (T, k))


def routing_ids(rng, T, k, E, pattern):
    """topk ids by pattern: 'random' (distinct per token), 'one' (every token's first slot on
    expert 0), 'sparse' (only expert 0 and the last k-1 experts get tokens: the others have none)."""
    if pattern == "sparse":
        pool = [0] + list(range(E - k + 1, E))
        return np.array([rng.permutation(pool)[:k] for _ in range(T)])
    ids = np.array([rng.permutation(E)[:k] for _ in range(T)])
    if pattern == "one":
        ids = np.array([[0] + [e for e in rng.permutation(np.arange(1, E))[: k - 1]] for _ in range(T)])
    return ids


def run_experts(x, ids, weights, ex: Experts, device, *, config, act_dtype=torch.float16, out_dtype=torch.float32,
                **kw):
    return moe.fused_experts(
        torch.from_numpy(x).to(device, act_dtype),
        torch.from_numpy(ids).to(device, torch.int32),
        torch.from_numpy(weights).to(device, torch.float32),
        ex.w13, ex.w2, out_dtype=out_dtype, config=config, **kw,
    )


# ---------------------------------------------------------------------------------------------
# exact regime: schemes x tile configs x routing patterns


@dataclass(frozen=True)
class ExactCase:
    scheme: str
    T: int = 7
    H: int = 64
    I: int = 32
    E: int = 4
    k: int = 2
    config: MoEConfig = MoEConfig(16, 16, 32)
    G: int = 32
    asym: bool = False
    layout: str = "gptq"
    pattern: str = "random"
    seed: int = 0

    @property
    def id(self):
        c = self.config
        parts = [self.scheme, f"T{self.T}H{self.H}I{self.I}E{self.E}k{self.k}",
                 f"bm{c.block_m}bn{c.block_n}bk{c.block_k}{'' if c.fuse_activation else '-split'}"
                 + (f"-sk{c.split_k}" if c.split_k > 1 else ""), self.pattern]
        if self.scheme == "w4a16":
            parts += [self.layout, f"g{self.G}", "asym" if self.asym else "sym"]
        return "-".join(parts)


def C(bm=16, bn=16, bk=32, fuse=True, split=1):
    return MoEConfig(bm, bn, bk, fuse_activation=fuse, split_k=split)


EXACT_CASES = [
    ExactCase("dense"),
    ExactCase("dense", config=C(bm=32, bn=32, bk=16, fuse=False), pattern="one", k=1),
    ExactCase("dense", T=16, E=8, k=3, pattern="sparse", config=C(bk=64)),
    # w4a16: BLOCK_K smaller than, equal to and larger than the group; layouts; zero points
    ExactCase("w4a16", G=32, config=C(bk=16), layout="gptq", asym=True),
    ExactCase("w4a16", G=32, config=C(bk=32, fuse=False), layout="awq"),
    ExactCase("w4a16", G=16, config=C(bk=64), layout="nibble", asym=True, pattern="sparse"),
    ExactCase("w4a16", G=32, T=5, E=1, k=1, config=C(bk=32, bn=32), layout="awq", asym=True),
    # G=12 (neither divides nor is divided by BLOCK_K) and I=36 (the up columns start mid-word
    # in AWQ's N packing): the per-k-row scale path and the per-element word gather
    ExactCase("w4a16", H=96, I=36, G=12, config=C(bk=16), layout="awq", asym=True),
    # one group per K tile, packed along K with BLOCK_K / PER_K >= 16: the per-field dots
    ExactCase("w4a16", H=128, I=128, G=128, config=C(bk=128, bn=32), layout="gptq", asym=True),
    ExactCase("w4a16", G=32, config=C(bk=32, fuse=False, split=2), layout="nibble", pattern="one"),
    ExactCase("mxfp4", config=C(bk=32)),
    # GEMM 2 split along K (I=64: 2 and 3 splits of 16-wide K tiles, the last split shorter)
    ExactCase("dense", I=64, config=C(bk=16, split=3), pattern="sparse"),
    ExactCase("w4a16", I=64, G=16, config=C(bk=32, split=2), layout="gptq", asym=True),
    # mxfp4 (groups of 32): BLOCK_K 16 / 32 / 64
    ExactCase("mxfp4", config=C(bk=16)),
    ExactCase("mxfp4", config=C(bk=64, fuse=False), pattern="one"),
]


@pytest.mark.parametrize("case", sampled([pytest.param(c, id=c.id) for c in EXACT_CASES], 3))
def test_exact(case, device):
    rng = np.random.default_rng(case.seed + 100)
    ex = make_experts(case.scheme, E=case.E, H=case.H, I=case.I, device=device, seed=case.seed, exact=True,
                      G=case.G, asym=case.asym, layout=case.layout)
    x = exact_x(rng, case.T, case.H)
    ids = routing_ids(rng, case.T, case.k, case.E, case.pattern)
    weights = pow2_weights(rng, case.T, case.k)
    y, parts = np_experts(x, ids, weights, ex.d13, ex.d2)
    assert_exact_regime(parts, y, "float16")
    out = run_experts(x, ids, weights, ex, device, config=case.config)
    check_exact(out, y)


def test_exact_expert_parallel_map(device):
    """8 global experts, 4 local (map [-1, 0, -1, 1, 2, -1, 3, -1]): slots on non-local experts
    contribute nothing; the kernel reads local weights only."""
    rng = np.random.default_rng(7)
    ex = make_experts("w4a16", E=4, H=64, I=32, device=device, seed=3, exact=True, asym=True, layout="awq")
    emap = np.array([-1, 0, -1, 1, 2, -1, 3, -1])
    x = exact_x(rng, 9, 64)
    ids = routing_ids(rng, 9, 3, 8, "random")
    weights = pow2_weights(rng, 9, 3)
    y, parts = np_experts(x, ids, weights, ex.d13, ex.d2, expert_map=emap)
    assert_exact_regime(parts, y, "float16")
    out = run_experts(x, ids, weights, ex, device, config=C(bk=64),
                      expert_map=torch.from_numpy(emap).to(device, torch.int32))
    check_exact(out, y)


def test_router_weight_on_input(device):
    rng = np.random.default_rng(11)
    ex = make_experts("dense", E=4, H=64, I=32, device=device, seed=5, exact=True)
    x = exact_x(rng, 6, 64)
    ids = routing_ids(rng, 6, 1, 4, "random")
    weights = np.ones((6, 1))  # a power of two other than 1 would move the gate off {0, 32}
    weights[::2] = 0.0
    y, parts = np_experts(x, ids, weights, ex.d13, ex.d2, on_input=True)
    assert_exact_regime(parts, y, "float16")
    out = run_experts(x, ids, weights, ex, device, config=C(fuse=False), apply_router_weight_on_input=True)
    check_exact(out, y)
    assert not out[::2].any()


def test_unused_expert_nan_weights_never_read(device):
    """Experts 1 and 2 get no tokens and hold NaN weights (and NaN scales): the output must be
    the reference over experts 0 and 3, with no NaN; T=5 leaves sentinel rows in every block."""
    rng = np.random.default_rng(2)
    ex = make_experts("w4a16", E=4, H=64, I=32, device=device, seed=9, exact=True, asym=True)
    for w in (ex.w13, ex.w2):
        w.scales[1:3] = float("nan")
        w.weight[1:3] = -1
    ex_dense = make_experts("dense", E=4, H=64, I=32, device=device, seed=9, exact=True)
    for w in (ex_dense.w13, ex_dense.w2):
        w.weight[1:3] = float("nan")
    x = exact_x(rng, 5, 64)
    ids = routing_ids(rng, 5, 2, 4, "sparse")
    weights = pow2_weights(rng, 5, 2)
    for e in (ex, ex_dense):
        y, parts = np_experts(x, ids, weights, e.d13, e.d2)
        out = run_experts(x, ids, weights, e, device, config=C(bm=16))
        assert torch.isfinite(out).all()
        check_exact(out, y)


def test_zero_weight_slot_with_overflowing_expert_is_zero(device):
    """A slot whose expert overflows to inf in the fp16 intermediate but whose router weight is
    0 contributes exactly 0 (not 0 * inf = NaN)."""
    rng = np.random.default_rng(4)
    ex = make_experts("dense", E=2, H=64, I=32, device=device, seed=1, exact=True)
    ex.w2.weight[1] = 60000.0
    ex.w13.weight[1, 0, :32] = GATE_ON
    ex.w13.weight[1, 1:, 32:] = 4000.0  # up ~ 4000 * sum(x): the intermediate overflows fp16
    x = exact_x(rng, 4, 64)
    x[:, 1:] = 2.0
    ids = np.array([[0, 1]] * 4)
    weights = np.array([[1.0, 0.0]] * 4)
    y, parts = np_experts(x, ids, weights, ex.d13, ex.d2)
    assert_exact_regime(parts, y, "float16")
    out = run_experts(x, ids, weights, ex, device, config=C())
    check_exact(out, y)


def test_broken_twin_swapped_expert_is_caught_in_its_rows(device):
    """Feed w2 with experts 0 and 1 swapped (what a kernel indexing the wrong expert computes):
    exactly the tokens with a slot on expert 0 or 1 must mismatch."""
    rng = np.random.default_rng(5)
    ex = make_experts("dense", E=4, H=64, I=32, device=device, seed=2, exact=True)
    x = exact_x(rng, 8, 64)
    ids = routing_ids(rng, 8, 2, 4, "random")
    weights = pow2_weights(rng, 8, 2)
    y, _ = np_experts(x, ids, weights, ex.d13, ex.d2)
    swapped = ex.w2.weight[[1, 0, 2, 3]].contiguous()
    broken = dataclasses.replace(ex, w2=ExpertWeights("dense", swapped))
    got = run_experts(x, ids, weights, broken, device, config=C()).cpu().double().numpy()
    bad_rows = np.flatnonzero((got != y).any(axis=1)).tolist()
    assert bad_rows == np.flatnonzero(np.isin(ids, [0, 1]).any(axis=1)).tolist()


# ---------------------------------------------------------------------------------------------
# bounded regime: random data, activations, routing end to end, fp16 output, fp8, bf16


@dataclass(frozen=True)
class BoundedCase:
    scheme: str
    activation: str = "silu"
    limit: float | None = None
    act_dtype: torch.dtype = torch.float16
    out_dtype: torch.dtype = torch.float16
    config: MoEConfig = MoEConfig(16, 32, 32)
    scoring: str = "softmax"
    k: int = 2
    T: int = 9
    H: int = 128
    I: int = 64
    E: int = 4
    fp8_block: tuple = (128, 128)

    @property
    def id(self):
        c = self.config
        return "-".join([
            self.scheme, self.activation + (f"{self.limit:g}" if self.limit else ""),
            DTYPE_NAMES[self.act_dtype], "to", DTYPE_NAMES[self.out_dtype], self.scoring, f"k{self.k}",
            f"bm{c.block_m}bn{c.block_n}bk{c.block_k}{'' if c.fuse_activation else '-split'}",
            *([f"blk{self.fp8_block[0]}x{self.fp8_block[1]}"] if self.scheme == "fp8_block" else []),
        ])


BOUNDED_CASES = [
    BoundedCase("dense"),
    BoundedCase("dense", activation="swiglu", limit=7.0, scoring="sigmoid", config=C(bm=16, bn=16, bk=64, fuse=False)),
    BoundedCase("w4a16", activation="swiglu", config=C(bk=128)),
    BoundedCase("mxfp4", activation="swiglu", limit=7.0, out_dtype=torch.float32),
    BoundedCase("dense", act_dtype=torch.bfloat16, out_dtype=torch.bfloat16),
    BoundedCase("w4a16", act_dtype=torch.bfloat16, out_dtype=torch.float32, config=C(bk=16)),
    # fp8 block: BLOCK_K below, equal to and above the 128 (or 32) activation/weight group
    BoundedCase("fp8_block", config=C(bk=64)),
    BoundedCase("fp8_block", config=C(bk=128, fuse=False), activation="swiglu", limit=7.0),
    BoundedCase("fp8_block", config=C(bk=64), fp8_block=(32, 32), out_dtype=torch.float32),
    BoundedCase("fp8_block", config=C(bk=32), fp8_block=(64, 32), I=48, k=3, E=8),
]


def bounded_skip(case: BoundedCase):
    return skip_reason(
        compute_dtype=DTYPE_NAMES[case.act_dtype], fp8_output=case.scheme == "fp8_block",
        output_dtype=DTYPE_NAMES[case.act_dtype],  # the activation output is stored in-kernel
    )


def _bounded_inputs(case: BoundedCase, device, seed=0):
    rng = np.random.default_rng(seed + 50)
    ex = make_experts(case.scheme, E=case.E, H=case.H, I=case.I, device=device, seed=seed, exact=False,
                      act_dtype=case.act_dtype, G=32, asym=True, layout="awq", fp8_block=case.fp8_block)
    x = wide_float(DTYPE_NAMES[case.act_dtype]).round(rng.standard_normal((case.T, case.H)) * 2)
    logits = rng.standard_normal((case.T, case.E))
    return ex, x, logits


def _check_bounded_case(case, out, x, ids, weights, ex, on_input=False):
    fp8_group = case.fp8_block[0] if case.scheme == "fp8_block" else None
    act_name = DTYPE_NAMES[case.act_dtype]
    y, parts = np_experts(x, ids, weights, ex.d13, ex.d2, activation=case.activation, limit=case.limit,
                          on_input=on_input, act_dtype=act_name, fp8_group=fp8_group)
    bound, out_f = moe_bound(parts, ex.d13, ex.d2, T=x.shape[0], activation=case.activation, act_dtype=act_name,
                             out_dtype=DTYPE_NAMES[case.out_dtype], on_input=on_input, fp8_group=fp8_group)
    check_bounded(out, y, bound, out_f)


@pytest.mark.parametrize("case", sampled([pytest.param(c, id=c.id) for c in BOUNDED_CASES], 3))
def test_bounded_end_to_end(case, device):
    reason = bounded_skip(case)
    if reason:
        pytest.skip(reason)
    ex, x, logits = _bounded_inputs(case, device)
    xt = torch.from_numpy(x).to(device, case.act_dtype)
    lt = torch.from_numpy(logits).to(device, torch.float32)
    out = moe.fused_moe(xt, lt, ex.w13, ex.w2, top_k=case.k, scoring=case.scoring, renormalize=True,
                        activation=case.activation, swiglu_limit=case.limit, out_dtype=case.out_dtype,
                        config=case.config)
    assert out.dtype == case.out_dtype and out.shape == (case.T, case.H)
    ids, weights = moe.route(lt, case.k, scoring=case.scoring, renormalize=True)
    _check_bounded_case(case, out, x, ids.cpu().numpy(), weights.cpu().double().numpy(), ex)


def test_default_config_and_emulation_agree_within_bound(device):
    """The op (default config) and the emulation backend: both within the bound of the reference,
    each records its backend."""
    case = BoundedCase("w4a16", activation="swiglu", limit=7.0, T=5, H=64, I=32)
    ex, x, logits = _bounded_inputs(case, device, seed=3)
    xt = torch.from_numpy(x).to(device, torch.float16)
    lt = torch.from_numpy(logits).to(device, torch.float32)
    args = (xt, lt, ex.w13.weight, ex.w2.weight, ex.w13.scales, ex.w2.scales, ex.w13.zeros, ex.w2.zeros,
            None, None, "w4a16", "awq", 32, None, 2, "softmax", True, None, None, "swiglu", 7.0, False, None, None)
    ids, weights = moe.route(lt, 2, renormalize=True)
    with backends.recording() as ran:
        native = ops_moe.fused_moe(*args)
        emulated = emulation.fused_moe_emulation(*args)
    assert ran == [backends.NATIVE, backends.EMULATION]
    for out in (native, emulated):
        _check_bounded_case(case, out, x, ids.cpu().numpy(), weights.cpu().double().numpy(), ex)


def test_bound_catches_swapped_gate_and_up(device):
    """A kernel reading gate and up swapped (w13 columns [I:] as gate) must fail the bound."""
    case = BoundedCase("dense", T=6, H=64, I=32)
    ex, x, logits = _bounded_inputs(case, device, seed=6)
    w = ex.w13.weight
    swapped = dataclasses.replace(ex, w13=ExpertWeights("dense", torch.cat([w[..., 32:], w[..., :32]], dim=-1)))
    lt = torch.from_numpy(logits).to(device, torch.float32)
    ids, weights = moe.route(lt, 2, renormalize=True)
    args = (x, ids.cpu().numpy(), weights.cpu().double().numpy())
    good = run_experts(*args, ex, device, config=C(), out_dtype=torch.float16)
    _check_bounded_case(case, good, *args, ex)
    bad = run_experts(*args, swapped, device, config=C(), out_dtype=torch.float16)
    with pytest.raises(pytest.fail.Exception, match="outside the derived bound"):
        _check_bounded_case(case, bad, *args, ex)


EMULATION_SCHEMES = ["dense", "w4a16", "mxfp4", "fp8_block"]


@pytest.mark.parametrize("scheme", EMULATION_SCHEMES)
def test_emulation_exact_or_bounded(scheme):
    """The emulation backend alone (torch only, CPU): exact-regime schemes bit-exact, fp8 within the bound."""
    rng = np.random.default_rng(8)
    exact = scheme != "fp8_block"
    ex = make_experts(scheme, E=4, H=128 if not exact else 64, I=32, device="cpu", seed=4, exact=exact,
                      asym=True, layout="nibble")
    x = exact_x(rng, 6, ex.d13.shape[1]) if exact else wide_float("float16").round(rng.standard_normal((6, 128)))
    logits = np.zeros((6, 4))
    logits[np.arange(6), rng.integers(0, 4, 6)] = 3.0  # top-1 renormalized: weight exactly 1
    args = (torch.from_numpy(x).half(), torch.from_numpy(logits).float(), ex.w13.weight, ex.w2.weight,
            ex.w13.scales, ex.w2.scales, ex.w13.zeros, ex.w2.zeros, None, None, scheme,
            ex.w13.layout, ex.w13.group_size, list(ex.w13.block), 1, "softmax", True, None, None, "silu", None,
            False, torch.float32, None)
    out = emulation.fused_moe_emulation(*args)
    ids, weights = np_route(logits, 1, renormalize=True)
    assert (weights == 1.0).all()
    if exact:
        y, parts = np_experts(x, ids, weights, ex.d13, ex.d2)
        assert_exact_regime(parts, y, "float16")
        check_exact(out, y)
    else:
        case = BoundedCase("fp8_block", k=1, out_dtype=torch.float32)
        _check_bounded_case(case, out, x, ids, weights, ex)


# ---------------------------------------------------------------------------------------------
# routing


ROUTE_CASES = [
    dict(scoring="softmax", renormalize=False, k=2, E=8),
    dict(scoring="softmax", renormalize=True, k=3, E=8),
    dict(scoring="sigmoid", renormalize=True, k=2, E=6),
    dict(scoring="sigmoid", renormalize=False, k=4, E=8, num_groups=4, topk_groups=2, bias=True),
    dict(scoring="softmax", renormalize=True, k=2, E=8, num_groups=2, topk_groups=1),
]


def route_on(device, logits, k, **kw):
    """``moe.route`` with its inputs on the session's device, results back on the host."""
    bias = kw.pop("correction_bias", None)
    ids, w = moe.route(logits.to(device), k, correction_bias=None if bias is None else bias.to(device), **kw)
    return ids.cpu(), w.cpu()


@pytest.mark.parametrize("spec", ROUTE_CASES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_route_matches_float64(spec, device):
    rng = np.random.default_rng(1)
    T, E, k = 16, spec["E"], spec["k"]
    logits = rng.standard_normal((T, E)).astype(np.float32).astype(np.float64)
    bias = rng.standard_normal(E).astype(np.float32).astype(np.float64) * 0.1 if spec.get("bias") else None
    kw = dict(scoring=spec["scoring"], renormalize=spec["renormalize"], num_groups=spec.get("num_groups"),
              topk_groups=spec.get("topk_groups"))
    ids, weights = route_on(device, torch.from_numpy(logits).float(), k,
                             correction_bias=None if bias is None else torch.from_numpy(bias).float(), **kw)
    ref_ids, ref_w = np_route(logits, k, correction_bias=bias, **kw)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32 and ids.shape == (T, k)
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    # float32 softmax/sigmoid: exp (<= 2 ulp), E-term sum (gamma_E), divide, renormalize (k-term sum,
    # divide): relative error <= (2E + 2k + 10) u32
    bound = (2 * E + 2 * k + 10) * U32 * np.abs(ref_w)
    assert (np.abs(weights.double().numpy() - ref_w) <= bound).all()


def test_route_ties_grouping_and_correction_bias(device):
    # equal logits: the lower expert ids win
    ids, w = route_on(device, torch.zeros(2, 8), 3)
    assert ids.tolist() == [[0, 1, 2]] * 2 and torch.equal(w, torch.full((2, 3), 0.125))
    # groups of 2: the single best expert (7) sits in a group whose top-2 sum is low; group 0 wins
    logits = torch.tensor([[2.0, 2.0, -5, -5, -5, -5, -5, 3.0]])
    ids, _ = route_on(device, logits, 2, scoring="sigmoid", num_groups=4, topk_groups=1)
    assert ids.tolist() == [[0, 1]]
    ids, _ = route_on(device, logits, 2, scoring="sigmoid")
    assert ids.tolist() == [[7, 0]]
    # correction bias: changes the selection, not the weights (uncorrected sigmoid scores)
    bias = torch.tensor([0, 0, 0, 0, 0, 0, 10.0, 0])
    ids, w = route_on(device, logits, 2, scoring="sigmoid", correction_bias=bias)
    assert ids.tolist() == [[6, 7]]
    # the kernel's float32 sigmoid may differ from torch's by an ulp or two compiled; a weight taken
    # from the corrected score (+10) would be off by far more
    torch.testing.assert_close(w, torch.sigmoid(logits)[:, [6, 7]], rtol=4 * 2.0**-24, atol=0)


# ---------------------------------------------------------------------------------------------
# the Triton router against the oracle router and against its torch twin


def _oracle_routing(logits, top_k, *, scoring, renormalize=False, num_groups=None, topk_groups=None, bias=None):
    """``oracle.moe.route`` of a problem holding only the routing (tiny zero experts)."""
    T, E = logits.shape
    problem = dict(x=np.zeros((T, 2)), w13=np.zeros((E, 2, 2)), w2=np.zeros((E, 1, 2)),
                   router_logits=np.asarray(logits, np.float64), scoring=scoring, top_k=top_k,
                   renormalize=renormalize, num_groups=num_groups, topk_groups=topk_groups,
                   correction_bias=None if bias is None else np.asarray(bias, np.float64))
    return oracle_moe.route(problem)


def check_routing(ids, weights, ref) -> None:
    """Exactly the oracle's ids, in its order (decreasing selection score, ties to the lower id),
    and weights within the oracle's relative bound of a float32 router. The inputs of the router
    tests hold exact ties or scores far apart (logits on a grid of 1/4), so the ids are
    determined even for tie-ambiguous tokens: the documented tie rule decides them."""
    ids = np.asarray(ids)
    np.testing.assert_array_equal(ids, ref.topk_ids, err_msg="selected expert ids differ from the oracle router")
    w = np.asarray(weights, np.float64)
    assert (np.abs(w - ref.topk_weights) <= ref.weight_rel_err * np.abs(ref.topk_weights)).all(), (
        f"weights off by {np.abs(w - ref.topk_weights).max()} (bound {ref.weight_rel_err.max()} relative)"
    )


@dataclass(frozen=True)
class RouteCase:
    why: str
    E: int
    k: int
    scoring: str = "softmax"
    renormalize: bool = False
    num_groups: int | None = None
    topk_groups: int | None = None
    bias: bool = False
    dtype: torch.dtype = torch.float32
    T: int = 9
    grid: float = 0.25  # logits are multiples of this in [-2, 2]: exact ties, or scores far apart

    @property
    def id(self):
        return "-".join([f"E{self.E}k{self.k}", self.scoring] + (["renorm"] if self.renormalize else [])
                        + ([f"g{self.num_groups}of{self.topk_groups}"] if self.num_groups else [])
                        + (["bias"] if self.bias else []) + [DTYPE_NAMES[self.dtype]])


ROUTER_CASES = [
    RouteCase("plain softmax top-2 over a power-of-two expert count", E=8, k=2),
    RouteCase("renormalized softmax, E not a power of two (padded experts must never win)", E=6, k=3,
              renormalize=True),
    RouteCase("sigmoid with renormalization", E=8, k=2, scoring="sigmoid", renormalize=True),
    RouteCase("k = E: every expert, ordered by score, ties by id", E=5, k=5),
    RouteCase("grouped top-k with a correction bias (selection only), DeepSeek-V3 style", E=16, k=4,
              scoring="sigmoid", num_groups=4, topk_groups=2, bias=True, renormalize=True),
    RouteCase("groups of 3 (padded to 4) and 3 groups (padded to 4)", E=9, k=2, num_groups=3, topk_groups=2,
              bias=True),
    RouteCase("bfloat16 logits are cast to float32 before anything", E=8, k=2, dtype=torch.bfloat16,
              renormalize=True),
    RouteCase("float16 logits, sigmoid, grouped without bias", E=8, k=3, scoring="sigmoid", num_groups=2,
              topk_groups=1, dtype=torch.float16),
    RouteCase("many tokens: several programs of a block of tokens", E=4, k=1, T=70),
]


def _route_inputs(case: RouteCase, seed=5):
    rng = np.random.default_rng(seed)
    steps = int(round(2 / case.grid))
    logits = rng.integers(-steps, steps + 1, (case.T, case.E)) * case.grid
    logits[0] = 0.0  # all experts tied
    logits[1, : case.E // 2] = 1.0  # a tie at the top
    bias = rng.integers(-2, 3, case.E) * 0.125 if case.bias else None
    return logits, bias


def _route_kw(case: RouteCase):
    return dict(scoring=case.scoring, renormalize=case.renormalize, num_groups=case.num_groups,
                topk_groups=case.topk_groups)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in ROUTER_CASES])
def test_router_matches_oracle_and_torch_twin(case, device):
    logits, bias = _route_inputs(case)
    t_logits = torch.from_numpy(logits).to(case.dtype)  # grid values are exact in every float dtype
    t_bias = None if bias is None else torch.from_numpy(bias).float()
    ids, weights = route_on(device, t_logits, case.k, correction_bias=t_bias, **_route_kw(case))
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32 and ids.shape == (case.T, case.k)
    ref = _oracle_routing(logits, case.k, bias=bias, **_route_kw(case))
    check_routing(ids.numpy(), weights.numpy(), ref)
    twin_ids, twin_w = moe.route_torch(t_logits, case.k, correction_bias=t_bias, **_route_kw(case))
    assert torch.equal(ids, twin_ids)
    check_routing(twin_ids.numpy(), twin_w.numpy(), ref)


def _route_ties_high(logits, k, **kw):
    """A broken twin: ties go to the *higher* expert id (reverses the experts, routes, maps back)."""
    E = logits.shape[1]
    bias = kw.pop("correction_bias", None)
    ids, w = moe.route_torch(logits.flip(1), k, correction_bias=None if bias is None else bias.flip(0), **kw)
    return (E - 1 - ids).to(torch.int32), w


def test_broken_tie_rule_is_caught():
    case = ROUTER_CASES[0]
    logits, _ = _route_inputs(case)
    ref = _oracle_routing(logits, case.k, **_route_kw(case))
    ids, w = _route_ties_high(torch.from_numpy(logits).float(), case.k, **_route_kw(case))
    with pytest.raises(AssertionError, match="selected expert ids differ"):
        check_routing(ids.numpy(), w.numpy(), ref)
    # the twin only differs on ties: with distinct scores it agrees (so the check keys on the rule)
    distinct = np.arange(case.E, dtype=np.float64)[None, :] * np.array([[1.0], [-1.0]])
    ids, w = _route_ties_high(torch.from_numpy(distinct).float(), case.k)
    check_routing(ids.numpy(), w.numpy(), _oracle_routing(distinct, case.k, scoring="softmax"))


def test_router_never_selects_padded_experts(device):
    """E = 6 padded to 8, every selection score negative (sigmoid minus a bias of 2): an expert
    padded with 0 instead of -inf would outrank all of them."""
    logits = torch.tensor([[-1.0, 0.5, -0.25, 2.0, 0.0, 1.0]] * 3)
    bias = torch.full((6,), -2.0)
    ids, w = route_on(device, logits, 6, scoring="sigmoid", correction_bias=bias)
    assert ids.tolist() == [[3, 5, 1, 4, 2, 0]] * 3
    check_routing(ids.numpy(), w.numpy(), _oracle_routing(logits.double().numpy(), 6, scoring="sigmoid",
                                                          bias=bias.double().numpy()))
    ids, _ = route_on(device, logits, 2, scoring="sigmoid", correction_bias=bias, num_groups=3, topk_groups=1)
    assert ids.tolist() == [[3, 2]] * 3  # group {2, 3} scores 0.88 + 0.44 - 4: the best group


def test_router_empty_and_validation(device):
    ids, w = route_on(device, torch.zeros((0, 4)), 2)
    assert ids.shape == (0, 2) and w.shape == (0, 2) and ids.dtype == torch.int32
    with pytest.raises(ValueError, match=r"top_k=5 is larger than the number of experts E=4"):
        route_on(device, torch.zeros((2, 4)), 5)


@pytest.mark.parametrize("tile", [moe.ROUTE_TILE, 16], ids=["one-launch", "separate-launches"])
def test_fused_moe_routing_paths_match_route_then_experts(tile, device, monkeypatch):
    """fused_moe routes and aligns in one single-program launch when the tokens fit one routing
    tile, else in two launches; both give the bits of route() followed by fused_experts()
    (grouped sigmoid routing with a bias, an expert map dropping and skipping experts)."""
    monkeypatch.setattr(moe, "ROUTE_TILE", tile)
    rng = np.random.default_rng(21)
    T, E, k = 5, 8, 2
    emap = torch.tensor([0, -1, 1, 2, -1, 3, 4, 5], dtype=torch.int32, device=device)
    ex = make_experts("dense", E=6, H=32, I=16, device=device, seed=4, exact=False)
    x = torch.from_numpy(rng.standard_normal((T, 32))).to(device, torch.float16)
    logits = torch.from_numpy(rng.standard_normal((T, E))).to(device, torch.float32)
    kw = dict(scoring="sigmoid", renormalize=True, num_groups=4, topk_groups=3,
              correction_bias=torch.from_numpy(rng.standard_normal(E) * 0.1).to(device, torch.float32))
    one_launch = moe._route_and_align(logits, k, "sigmoid", True, 4, 3, kw["correction_bias"], 16, emap, 6)
    assert (one_launch is not None) == (tile != 16)  # 16 / 8 experts: 2 tokens per routing program
    out = moe.fused_moe(x, logits, ex.w13, ex.w2, top_k=k, expert_map=emap, config=C(), **kw)
    ids, weights = moe.route(logits, k, **kw)
    ref = moe.fused_experts(x, ids, weights, ex.w13, ex.w2, expert_map=emap, config=C())
    assert torch.equal(out, ref)
    if one_launch is not None:
        sep = moe.align_block_size(ids, 16, E, emap, num_local_experts=6, validate=False)
        assert torch.equal(one_launch[0], ids) and torch.equal(one_launch[1], weights)
        assert all(torch.equal(a, b) for a, b in zip(one_launch[2], sep))


# ---------------------------------------------------------------------------------------------
# the padded length: tight, and never short


def _max_used_length(n, e, bm):
    """Largest used length over every way of giving n assignments to at most e experts (each
    expert's count padded to a multiple of bm), by enumerating count vectors."""
    best = 0

    def walk(left, experts, used):
        nonlocal best
        if left == 0 or experts == 0:
            if left == 0:
                best = max(best, used)
            return
        for c in range(0, left + 1):
            walk(left - c, experts - 1, used + -(-c // bm) * bm)

    walk(n, e, 0)
    return best


@pytest.mark.parametrize("bm", [1, 2, 3, 4])
def test_aligned_capacity_is_the_tight_bound(bm):
    """For every small (n, E_local): the capacity equals the largest used length any routing
    can produce (assignments dropped by a map only lower it): never short, never loose."""
    for n in range(0, 9):
        for e in range(1, 5):
            assert moe.aligned_capacity(n, e, bm) == _max_used_length(n, e, bm), (n, e, bm)


def test_capacity_check_catches_a_short_bound():
    """A broken twin that forgets the per-expert padding (``roundup(n, bm)``) is short as soon
    as two experts get tokens."""
    short = lambda n, e, bm: -(-n // bm) * bm  # noqa: E731
    assert any(short(n, e, 16) < _max_used_length(n, e, 16) for n in range(1, 5) for e in range(1, 4))


# routings at the edges of the bound: all on one expert, every assignment on its own expert,
# T*k below and above E, the bound attained exactly, maps dropping assignments, empty experts
TIGHT_ROUTINGS = {
    "all-on-one-expert": (np.zeros((17, 1), np.int64), 4, None),
    "each-assignment-its-own-expert": (np.arange(6).reshape(3, 2), 8, None),
    "Tk-below-E": (np.array([[5, 1]]), 8, None),
    "Tk-above-E-attained": (np.array([[1], [2], [3]] + [[0]] * 17), 4, None),
    "map-drops-most": (np.array([[0, 1], [2, 3], [1, 0]]), 4, [-1, 0, -1, -1]),
    "map-and-empty-local-experts": (np.array([[4, 5], [5, 4], [4, 6]]), 8, [0, -1, 1, 2, 3, -1, 4, 5]),
}


@pytest.mark.parametrize("name", sorted(TIGHT_ROUTINGS))
def test_align_tight_capacity_holds_every_block(name, device):
    ids, E, emap_list = TIGHT_ROUTINGS[name]
    bm = 16
    T, k = ids.shape
    emap = None if emap_list is None else torch.tensor(emap_list, dtype=torch.int32, device=device)
    n_local = E if emap_list is None else sum(v >= 0 for v in emap_list)
    s, b, n = moe.align_block_size(torch.from_numpy(ids).to(device, torch.int32), bm, E, emap)
    cap = moe.aligned_capacity(T * k, n_local, bm)
    assert s.numel() == cap and b.numel() == cap // bm
    local = ids.reshape(-1) if emap_list is None else np.array(emap_list)[ids.reshape(-1)]
    counts = np.bincount(local[local >= 0], minlength=n_local)
    used = int(sum(-(-c // bm) * bm for c in counts))
    assert int(n.item()) == used <= cap  # every block the GEMMs need has a slot in the grid
    if name == "Tk-above-E-attained":
        assert used == cap == 80  # 3 experts x 1 block + 17 rows in 2 blocks


@pytest.mark.parametrize("name", ["all-on-one-expert", "each-assignment-its-own-expert", "Tk-above-E-attained",
                                  "map-and-empty-local-experts"])
def test_exact_at_tight_capacity(name, device):
    """End to end in the exact regime where the used length equals (or nearly) the capacity: a
    capacity one block short would leave rows unwritten."""
    ids, E, emap_list = TIGHT_ROUTINGS[name]
    T, k = ids.shape
    rng = np.random.default_rng(7)
    n_local = E if emap_list is None else sum(v >= 0 for v in emap_list)
    ex = make_experts("dense", E=n_local, H=32, I=16, device=device, seed=3, exact=True)
    x = exact_x(rng, T, 32)
    weights = pow2_weights(rng, T, k)
    emap = None if emap_list is None else np.array(emap_list)
    y, parts = np_experts(x, ids, weights, ex.d13, ex.d2, expert_map=emap)
    assert_exact_regime(parts, y, "float16")
    kw = {} if emap is None else dict(expert_map=torch.from_numpy(emap).to(device, torch.int32))
    out = run_experts(x, ids, weights, ex, device, config=C(), **kw)
    check_exact(out, y)


# ---------------------------------------------------------------------------------------------
# alignment


ALIGN_CASES = [
    dict(T=7, k=2, E=4, bm=16, map=None),
    dict(T=16, k=3, E=8, bm=16, map=None, pattern="sparse"),
    dict(T=9, k=1, E=4, bm=32, map=None, pattern="one"),
    dict(T=12, k=2, E=8, bm=16, map=[-1, 0, -1, 1, 2, -1, 3, -1]),
    dict(T=5, k=2, E=4, bm=16, map=[-1, -1, -1, 0]),
    dict(T=0, k=2, E=4, bm=16, map=None),
]


@pytest.mark.parametrize("spec", ALIGN_CASES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_align_block_size_invariants(spec, device):
    rng = np.random.default_rng(3)
    T, k, E, bm = spec["T"], spec["k"], spec["E"], spec["bm"]
    ids = routing_ids(rng, T, k, E, spec.get("pattern", "random")).reshape(T, k).astype(np.int64)
    emap = None if spec["map"] is None else torch.tensor(spec["map"], dtype=torch.int32, device=device)
    tid = torch.from_numpy(ids).to(device, torch.int32)
    sorted_ids, expert_ids, num_post = moe.align_block_size(tid, bm, E, emap)
    again = moe.align_block_size(tid, bm, E, emap)
    assert all(torch.equal(a, b) for a, b in zip((sorted_ids, expert_ids, num_post), again))  # deterministic
    s, b, n = sorted_ids.cpu().numpy(), expert_ids.cpu().numpy(), int(num_post.item())
    local = ids.reshape(-1) if emap is None else np.array(spec["map"])[ids.reshape(-1)]
    n_local = E if emap is None else sum(v >= 0 for v in spec["map"])
    counts = np.bincount(local[local >= 0], minlength=n_local)
    assert n == int(sum(-(-c // bm) * bm for c in counts))
    assert len(s) % bm == 0 and len(b) == len(s) // bm and len(s) >= n
    sentinel = T * k
    seen = []
    for blk in range(len(b)):
        rows = s[blk * bm:(blk + 1) * bm]
        if blk * bm >= n:
            assert b[blk] == -1 and (rows == sentinel).all()
            continue
        real = rows[rows != sentinel]
        assert len(real) and (local[real] == b[blk]).all()  # no empty block, every row its expert's
        assert (rows[: len(real)] == real).all()  # padding only at the end of a run
        seen.extend(real.tolist())
    assert sorted(seen) == np.flatnonzero(local >= 0).tolist()  # every local assignment exactly once
    assert seen == sorted(seen, key=lambda a: (local[a], a))  # experts ascending, flattened order within
    assert set(b[: n // bm].tolist()) == set(np.flatnonzero(counts).tolist())  # no blocks for empty experts


def test_align_fast_path_drops_out_of_range_ids(device):
    """validate=False: no host read; ids outside 0..E-1 (and map entries outside the local range)
    are dropped, never used as addresses; valid ones are placed as with validation."""
    ids = torch.tensor([[0, 5], [-3, 2], [1, 0]], dtype=torch.int32, device=device)
    s, b, n = moe.align_block_size(ids, 16, 4, validate=False)
    assert int(n.item()) == 48 and b.tolist()[:3] == [0, 1, 2]
    assert s[:16].tolist()[:2] == [0, 5] and s[16] == 4 and s[32] == 3
    assert (s[2:16] == 6).all() and (s[17:32] == 6).all() and (s[33:] == 6).all()
    emap = torch.tensor([0, 7, -1, 1], dtype=torch.int32, device=device)  # 7: beyond 2 local experts
    s, b, n = moe.align_block_size(ids.clamp(0, 3), 16, 4, emap, num_local_experts=2, validate=False)
    # local: [[0, 1], [0, dropped (-1)], [dropped (7), 0]]
    assert int(n.item()) == 32 and b.tolist() == [0, 1]  # cap (6 + 2 * 15) // 16 * 16 = 32: no spare block
    assert s[:4].tolist() == [0, 2, 5, 6] and s[16] == 1 and (s[17:] == 6).all() and (s[3:16] == 6).all()


def test_fast_path_is_bitwise_equal_and_repeatable(device):
    """validate=False computes the same bits as the validated call; repeats are bitwise equal
    (split-K partials are summed in a fixed order, no atomics)."""
    rng = np.random.default_rng(12)
    ex = make_experts("w4a16", E=4, H=64, I=64, device=device, seed=2, exact=False, G=16, asym=True)
    x = torch.from_numpy(wide_float("float16").round(rng.standard_normal((6, 64)))).to(device, torch.float16)
    ids = torch.from_numpy(routing_ids(rng, 6, 2, 4, "random")).to(device, torch.int32)
    w = torch.from_numpy(rng.random((6, 2))).to(device, torch.float32)
    cfg = C(bk=32, split=2)
    ref = moe.fused_experts(x, ids, w, ex.w13, ex.w2, config=cfg)
    for _ in range(2):
        assert torch.equal(moe.fused_experts(x, ids, w, ex.w13, ex.w2, config=cfg, validate=False), ref)
    bad = ids.clone()
    bad[0, 1] = 9  # fast path: an out-of-range id contributes nothing (validated path raises)
    got = moe.fused_experts(x, bad, w, ex.w13, ex.w2, config=cfg, validate=False)
    single = moe.fused_experts(x[:1], ids[:1, :1], w[:1, :1], ex.w13, ex.w2, config=cfg)
    assert torch.equal(got[1:], ref[1:]) and torch.equal(got[:1], single)
    with pytest.raises(ValueError, match=r"topk_ids holds expert id 9"):
        moe.fused_experts(x, bad, w, ex.w13, ex.w2, config=cfg)
    with pytest.raises(TypeError, match=r"validate=1 must be a bool"):
        moe.fused_experts(x, ids, w, ex.w13, ex.w2, validate=1)


@pytest.mark.parametrize("shape", [(1, 2, 4096, 14336, 8), (8, 6, 2048, 1408, 64), (32, 2, 4096, 14336, 8),
                                   (512, 6, 2048, 1408, 64), (5, 2, 64, 32, 4)])
def test_default_config_is_valid_and_decode_shaped(shape):
    T, k, H, I, E = shape
    cfg = moe.default_config(T, k, H, I, E)
    moe._validate_config(cfg)
    assert moe.MoEConfig.from_list(cfg.as_list()) == cfg
    assert cfg.block_n <= max(16, I) and cfg.block_k <= max(16, min(H, I))
    if T * k <= 16 * E:
        assert cfg.block_m == 16
    if shape == (1, 2, 4096, 14336, 8):  # 2 hit experts x 4096 / BLOCK_N programs: GEMM 2 is split
        assert cfg.split_k > 1 and 2 * (H // cfg.block_n) * cfg.split_k <= 2 * moe.DECODE_TARGET_PROGRAMS


# ---------------------------------------------------------------------------------------------
# bad input: clear errors before any launch


def _valid(device):
    ex = make_experts("w4a16", E=4, H=64, I=32, device=device, seed=0, exact=False, asym=True)
    x = torch.ones((3, 64), dtype=torch.float16, device=device)
    logits = torch.zeros((3, 4), device=device)
    return ex, x, logits


def _expert_count_mismatch(ex):
    w2 = ex.w2
    return dict(w2=dataclasses.replace(w2, weight=w2.weight[:3], scales=w2.scales[:3], zeros=w2.zeros[:3]))


BAD_INPUTS = [
    pytest.param(lambda ex, x, lg: dict(top_k=5), ValueError, r"top_k=5 is larger than the number of experts E=4",
                 id="top_k-above-E"),
    pytest.param(lambda ex, x, lg: _expert_count_mismatch(ex), ValueError,
                 r"w2\.weight has 3 experts but 4 were expected", id="expert-count"),
    pytest.param(lambda ex, x, lg: dict(w2=dataclasses.replace(ex.w2, scales=ex.w2.scales[:, :, :32])), ValueError,
                 r"w2\.scales\.shape=\(4, 1, 32\) must have N=64 columns", id="w2-shape"),
    pytest.param(lambda ex, x, lg: dict(expert_map=torch.tensor([0, 1, 2], dtype=torch.int32, device=x.device)),
                 ValueError, r"expert_map\.shape=\(3,\) must be \[num_experts\] = \[4\]", id="expert-map-length"),
    pytest.param(lambda ex, x, lg: dict(router_logits=torch.zeros((3, 8), device=x.device)), ValueError,
                 r"the weights hold 4 experts but the router has 8", id="router-vs-weights"),
    pytest.param(lambda ex, x, lg: dict(apply_router_weight_on_input=True), ValueError,
                 r"apply_router_weight_on_input=True needs top_k == 1 \(got top_k=2\)", id="on-input-top_k"),
    pytest.param(lambda ex, x, lg: dict(config=MoEConfig(24, 16, 16)), ValueError,
                 r"config\.block_m=24 must be a power of two >= 16", id="config-block_m"),
    pytest.param(lambda ex, x, lg: dict(config=MoEConfig(16, 16, 16, split_k=0)), ValueError,
                 r"config\.split_k=0 must be an integer >= 1", id="config-split_k"),
    pytest.param(lambda ex, x, lg: dict(activation="gelu"), ValueError,
                 r"activation='gelu' is not known \(allowed: silu, swiglu\)", id="activation"),
    pytest.param(lambda ex, x, lg: dict(swiglu_limit=7.0), ValueError,
                 r"swiglu_limit=7\.0 applies to activation='swiglu' only", id="limit-with-silu"),
    pytest.param(lambda ex, x, lg: dict(x=x.float()), TypeError, r"x\.dtype=float32 is not an activation dtype",
                 id="x-dtype"),
    pytest.param(lambda ex, x, lg: dict(num_groups=3, topk_groups=1), ValueError, r"num_groups=3 must divide E=4",
                 id="groups-divide"),
    pytest.param(lambda ex, x, lg: dict(w13=dataclasses.replace(ex.w13, layout="marlin")), ValueError,
                 r"w13\.layout='marlin' is not a W4A16 layout", id="layout"),
]


def test_fp8_block_k_below_32_is_refused(device):
    ex = make_experts("fp8_block", E=2, H=64, I=32, device=device, seed=0, exact=False, fp8_block=(32, 32))
    x = torch.ones((2, 64), dtype=torch.float16, device=device)
    ids = torch.tensor([[0], [1]], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"config\.block_k=16 with fp8 blocks of bk=32: .* needs >= 32"):
        moe.fused_experts(x, ids, torch.ones((2, 1), device=device), ex.w13, ex.w2, config=C(bk=16))


@pytest.mark.parametrize("change, error, message", BAD_INPUTS)
def test_fused_moe_bad_input(change, error, message, device):
    ex, x, logits = _valid(device)
    kw = dict(x=x, router_logits=logits, w13=ex.w13, w2=ex.w2, top_k=2)
    kw.update(change(ex, x, logits))
    with pytest.raises(error, match=message):
        moe.fused_moe(**kw)


def test_expert_ids_out_of_range_and_bad_map_values(device):
    ex, x, _ = _valid(device)
    ids = torch.tensor([[0, 4], [1, 2], [3, 0]], dtype=torch.int32, device=device)
    w = torch.ones((3, 2), device=device)
    with pytest.raises(ValueError, match=r"topk_ids holds expert id 4, outside 0\.\.3"):
        moe.fused_experts(x, ids, w, ex.w13, ex.w2)
    with pytest.raises(ValueError, match=r"topk_ids holds expert id -1"):
        moe.align_block_size(ids - 1, 16, 4)
    bad_map = torch.tensor([0, 1, 2, 4], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"expert_map values must be -1 \(not local\) or a local index in 0\.\.3"):
        moe.fused_experts(x, ids.clamp(max=3), w, ex.w13, ex.w2, expert_map=bad_map)


# ---------------------------------------------------------------------------------------------
# custom ops: fake vs real metadata, opcheck


def _op_inputs(device):
    ex = make_experts("mxfp4", E=4, H=64, I=32, device=device, seed=0, exact=False)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((5, 64))).to(device, torch.float16)
    logits = torch.from_numpy(rng.standard_normal((5, 4))).to(device, torch.float32)
    ids, _ = moe.route(logits, 2)
    return {
        "qkcheck::fused_moe": (x, logits, ex.w13.weight, ex.w2.weight, ex.w13.scales, ex.w2.scales, None, None,
                               None, None, "mxfp4", None, None, None, 2, "softmax", True, None, None, "silu",
                               None, False, torch.float32, [16, 32, 32]),
        "qkcheck::moe_route": (logits, 2, "sigmoid", True, 2, 1, torch.zeros(4, device=device)),
        "qkcheck::moe_align_block_size": (ids, 16, 4, torch.tensor([1, 0, -1, 2], dtype=torch.int32,
                                                                     device=device), 3),
    }


@pytest.mark.parametrize("name", sorted(ops_moe.registered_ops()))
def test_fake_matches_real_metadata(name, device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = ops_moe.registered_ops()[name].op
    args = _op_inputs(device)[name]
    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    real_t = real if isinstance(real, tuple) else (real,)
    fake_t = fake if isinstance(fake, tuple) else (fake,)
    assert [(f.shape, f.dtype, f.device) for f in fake_t] == [(r.shape, r.dtype, r.device) for r in real_t]


def test_opcheck_fused_moe(device):
    torch.library.opcheck(ops_moe.fused_moe, _op_inputs(device)["qkcheck::fused_moe"])
