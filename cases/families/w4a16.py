"""The W4A16 GEMM family: ``w4a16_gemm`` (int4 weight codes, GPTQ / AWQ / nibble packing, one
fp16 / bf16 scale per ``group_size`` rows of K and per column, optional zero points and bias;
fp16 / bf16 activations).

Case space (``SPECS``): shape ``m, n, k``; params ``group_size`` (32, 64, 128, or -1 for one
group spanning K), ``zero_points``, ``layout``, ``act_dtype``, ``out_dtype``, ``bias``. Kernel
tunables: ``block_m``, ``block_n``, ``block_k`` (``TILE_SIZES``), ``split_k``, ``group_m``.
Optional contract ``partial_groups``: a group size that does not divide K (a shorter last group
with its own scale row) is a valid case, but only in the space of an adapter that declares
``accepts=("partial_groups",)``; the strategy draws such K only for those.

Regimes (``MATERIALIZERS``; all draws from ``numpy.random.default_rng(case.seed)``, so the same
case gives the same bytes):

- ``exact``: small-integer activations, power-of-two scales distinct per group (2**(g mod 8)
  times a random sign), integer bias — every partial sum is exact in float32, so the only correct
  output is RNE(reference) and the tolerance is zero.
- ``realistic``: GPTQ/AWQ-checkpoint-like scales (amax/7.5 of normal weights, fp16), zero points
  near 8, normal activations with a few large outlier channels.
- ``adversarial``: per-group scales spanning 2**(g mod 8) with random signs, zero points at the
  extremes 0 and 15, an all-zero group, activations with values near the dtype's large end.

Grid (``GRIDS``): group sizes x BLOCK_K smaller than / equal to / larger than the group x layouts
x zero points x bias, at M=1 and at M, N off the tile grid; then the kernel's own default tiles
at decode and prefill sizes. Strategy (``STRATEGIES``): the same axes drawn, shrinking toward
small cases (M=1, one group, square N == K).
"""
from __future__ import annotations

import itertools

import numpy as np
from qkcheck.cases.hyp import st

from qkcheck.cases.case import REGIMES, Case
from qkcheck.cases.space import CaseSpace
from qkcheck.cases.spec import GEMM_CONFIG_COMPLETE, RELATIONS, OpSpec, block_k_relative, configs_for, tunables_for
from qkcheck.oracle.numerics import round_to

OP = "w4a16_gemm"
TILE_SIZES = (16, 32, 64, 128, 256)
GROUP_SIZES = (32, 64, 128, -1)  # -1: one group spanning K


# ------------------------------------------------------------------------------------ rules


def _partial_group(case) -> str | None:
    """The optional contract ``partial_groups``: a group size that does not divide K (the last
    group holds K % G rows; scales and zero points have ceil(K / G) rows)."""
    g, k = case.p["group_size"], case.dims["k"]
    if g != -1 and k % g:
        return f"group_size={g} does not divide K={k} (a partial last group of {k % g} rows)"
    return None


def _packing_fits(case) -> str | None:
    k, n, layout = case.dims["k"], case.dims["n"], case.p["layout"]
    if layout == "awq" and n % 8:
        return f"layout 'awq' packs 8 columns per int32 word: N={n} must be a multiple of 8"
    if k % 8:
        return f"K={k} must be a multiple of 8 (int4 codes are packed 8 per int32 word / 2 per byte along K)"
    return None


def _block_k_vs_group(case):
    """The grid's goal: BLOCK_K smaller than, equal to, larger than the quantization group."""
    bk = case.cfg.get("block_k")
    if bk is None:
        return ()
    g = case.dims["k"] if case.p["group_size"] == -1 else case.p["group_size"]
    return (("block_k_vs_group", "lt" if bk < g else "eq" if bk == g else "gt"),)


SPEC = OpSpec(
    OP,
    shape_keys=("m", "n", "k"),
    params={
        "group_size": GROUP_SIZES,
        "zero_points": (False, True),
        "layout": ("gptq", "awq", "nibble"),
        "act_dtype": ("float16", "bfloat16"),
        "out_dtype": ("float16", "bfloat16", "float32"),
        "bias": (False, True),
    },
    tunables={"block_m": TILE_SIZES, "block_n": TILE_SIZES, "block_k": TILE_SIZES,
              "split_k": (1, 2, 4), "group_m": (1, 4, 8)},
    rules=(_packing_fits, GEMM_CONFIG_COMPLETE),
    optional_contracts={"partial_groups": _partial_group},
    tiles={"m": "block_m", "n": "block_n", "k": "block_k"},
    features=_block_k_vs_group,
    goals=tuple(("block_k_vs_group", r) for r in RELATIONS),
)
SPECS = (SPEC,)


# ------------------------------------------------------------------------------ materializer


def materialize(case) -> dict:
    """The canonical ``w4a16_gemm`` problem of ``case`` (``oracle.ops.w4a16`` keys): ``x`` [M, K],
    ``q`` [K, N] codes 0..15, ``scales`` [ceil(K/G), N], ``zeros`` [ceil(K/G), N] or None,
    ``group_size``, ``bias`` [N] or None; values representable in ``act_dtype`` (module docstring)."""
    d, p = case.dims, case.p
    m, n, k = d["m"], d["n"], d["k"]
    g = k if p["group_size"] == -1 else p["group_size"]
    groups = -(-k // g)  # a partial last group (partial_groups) has a row of its own
    rng = np.random.default_rng(case.seed)
    act = p["act_dtype"]
    q = rng.integers(0, 16, (k, n))
    z = rng.integers(0, 16, (groups, n)) if p["zero_points"] else None
    if case.regime == "exact":
        # |x| <= xmax, |q - z| <= 15, |s| <= 2**(emax); every product is a multiple of 2**emin and
        # the largest possible |sum| stays below 2**24 multiples of it -> exact in float32
        span = 7
        xmax = max(1, min(4, int(2**23 // (15 * 2**span * max(k, 1)))))
        emin = -4
        s = np.exp2(emin + np.arange(groups) % (span + 1))[:, None] * rng.choice([-1.0, 1.0], (groups, n))
        x = rng.integers(-xmax, xmax + 1, (m, k)).astype(np.float64)
        bias = rng.integers(-8, 9, n).astype(np.float64) if p["bias"] else None
    elif case.regime == "realistic":
        w = rng.standard_normal((groups, g, n))
        s = np.abs(w).max(axis=1) / 7.5
        x = rng.standard_normal((m, k))
        outliers = rng.choice(k, size=max(1, k // 64), replace=False)
        x[:, outliers] *= 20
        bias = rng.standard_normal(n) if p["bias"] else None
    else:  # adversarial
        s = np.exp2(np.arange(groups) % 8)[:, None] * rng.choice([-1.0, 1.0], (groups, n))
        s = s * rng.uniform(1, 2, (groups, n)) * 2.0**-7
        if z is not None:
            z = rng.choice([0, 15], (groups, n))
        zero_group = rng.integers(groups)
        rows = slice(zero_group * g, min((zero_group + 1) * g, k))  # a partial last group is shorter
        q[rows] = 8 if z is None else np.repeat(z[zero_group:zero_group + 1], rows.stop - rows.start, axis=0)
        x = rng.standard_normal((m, k)) * 4
        x[:, rng.integers(k)] = 60000.0 / (16 * g * 2.0**7 * max(groups, 1))  # a large, still finite, channel
        bias = rng.standard_normal(n) * 100 if p["bias"] else None
    # values must be representable in the dtypes the kernel receives them in
    x = round_to(x, act)
    s = round_to(s, act)
    if bias is not None:
        bias = round_to(bias, act)
    return {"x": x, "q": q, "scales": s, "zeros": z, "group_size": p["group_size"], "bias": bias}


MATERIALIZERS = {OP: materialize}


# -------------------------------------------------------------------------------------- grid


def block_k_for(relation: str, group_size: int, k: int) -> int | None:
    """BLOCK_K smaller than, equal to, or larger than the group (None when no tile size is, or
    when "larger" would not span two groups)."""
    g = k if group_size == -1 else group_size
    bk = block_k_relative(relation, g)
    if bk < 16 or bk > 256 or (relation == "gt" and g >= k):
        return None
    return bk


def grid(adapter) -> list[Case]:
    cases = []
    shapes = [(1, 64, 256), (33, 40, 512)]
    for (m, n, k), g, rel, layout, zp, bias in itertools.product(
        shapes, GROUP_SIZES, RELATIONS, adapter.layouts or ("gptq",), (False, True), (False, True)
    ):
        bk = block_k_for(rel, g, k)
        if bk is None or bk not in adapter.tunables.get("block_k", (bk,)):
            continue
        idx = len(cases)
        act = "bfloat16" if idx % 7 == 3 else "float16"
        out = ("float16", "float32", "bfloat16")[idx % 3] if act == "float16" else "bfloat16"
        cfg = {"block_m": 16, "block_n": 32, "block_k": bk}
        if idx % 5 == 0 and "split_k" in adapter.tunables:
            cfg["split_k"] = 2
        regime = ("exact", "exact", "adversarial", "realistic")[idx % 4]
        cases.append(SPEC.case(
            shape={"m": m, "n": n, "k": k},
            params={"group_size": g, "zero_points": zp, "layout": layout, "act_dtype": act, "out_dtype": out, "bias": bias},
            config=cfg, regime=regime, seed=idx,
        ))
    # the kernel's own default tile choice, at decode and prefill sizes
    for m, g in ((1, 32), (16, 32), (64, 64)):
        cases.append(SPEC.case(
            shape={"m": m, "n": 64, "k": 512},
            params={"group_size": g, "zero_points": True, "layout": (adapter.layouts or ("gptq",))[0],
                    "act_dtype": "float16", "out_dtype": "float16", "bias": False},
            regime="exact", seed=m,
        ))
    return cases


GRIDS = {OP: grid}


# ---------------------------------------------------------------------------------- strategy


@st.composite
def from_adapter(draw, adapter) -> Case:
    """Cases ``adapter`` can run: BLOCK_K smaller than / equal to / larger than the group, every
    layout it declares; shrinks toward M=1, one group, square N == K."""
    tun = tunables_for(SPEC, adapter)
    space = CaseSpace(SPEC, adapter)
    layout = draw(space.sample("layout"))
    group_size = draw(space.sample("group_size"))
    g = 32 if group_size == -1 else group_size
    relation = draw(st.sampled_from(("gt", "eq", "lt")))
    # BLOCK_K larger than the group only means a tile spanning groups when K has two or more
    # (with one group the tile is merely wider than K): "gt" draws at least two
    groups = draw(st.integers(2 if relation == "gt" and group_size != -1 else 1, 4 if g >= 64 else 6))
    k = g * groups
    if "partial_groups" in adapter.accepts and group_size != -1:  # drawn only where stated
        k -= 8 * draw(st.integers(0, g // 8 - 1))  # the last group short by a multiple of 8 rows (or whole)
    bk = block_k_relative(relation, k if group_size == -1 else g)
    bk = min(max(bk, 16), max(tun.get("block_k", (256,))))
    m = draw(st.one_of(st.just(1), st.integers(1, 40)))
    square = draw(st.booleans())
    n = k if square and k <= 256 else draw(st.sampled_from((16, 24, 32, 40, 64)))
    if layout == "awq" and n % 8:
        n = 8 * max(1, n // 8)
    config = draw(configs_for(SPEC, adapter, block_k=(bk,)))
    act = draw(space.sample("act_dtype"))
    params = {
        "group_size": group_size,
        "zero_points": draw(space.sample("zero_points")),
        "layout": layout,
        "act_dtype": act,
        "out_dtype": draw(space.sample("out_dtype")),
        "bias": draw(space.sample("bias")),
    }
    regime = draw(st.sampled_from(tuple(REGIMES)))
    seed = draw(st.integers(0, 2**16))
    return SPEC.case(shape={"m": m, "n": n, "k": k}, params=params, config=config, regime=regime, seed=seed)


STRATEGIES = {OP: from_adapter}
