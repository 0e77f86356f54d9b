"""The MXFP4 GEMM family: ``mxfp4_gemm`` (OCP MX FP4 weights: e2m1 codes with one E8M0 scale per
32 elements along K; activations either fp16/bf16 values, W4A16, or MXFP4 codes too, W4A4).

Case space (``SPECS``): shape ``m, n, k`` (K a multiple of the 32-element scale block); params
``act`` ("a16" | "mxfp4"), ``act_dtype`` (the dtype the decoded operands meet in the dot: the
activation dtype for a16, the kernel's compute dtype for mxfp4), ``out_dtype``, ``bias``
(given in ``act_dtype``, the model dtype). Kernel tunables: ``block_m``, ``block_n``,
``block_k`` (a multiple of the scale block: BLOCK_K = 32 holds one scale block, larger tiles
span several), ``split_k``, ``group_m``.

Regimes (``MATERIALIZERS``):

- ``exact``: ``oracle.ops.exact_problem`` (small-integer a16 activations, e2m1 codes of few
  significand bits, E8M0 codes near 127 that change from block to block, integer bias): every
  partial sum is exact in float32, the only correct output is RNE(reference), bound 0.
- ``realistic``: checkpoint-like — normal weights with a per-column spread of magnitudes,
  quantized by the OCP MX rule (``oracle.schemes``, scheme "mxfp4"), so the E8M0 codes sit a few
  steps below 127; normal activations with a few large outlier channels (quantized by the same
  rule along K for W4A4).
- ``adversarial``: every scale block of a column (and of an activation row) has its own E8M0
  exponent, spread over 16 binades; e2m1 codes include whole blocks of the format maximum (+-6),
  all-zero blocks (codes +0 / -0) and random signs; the ranges keep every decoded operand and
  every output finite in float16.
"""
from __future__ import annotations

import numpy as np
from qkcheck.cases.hyp import st

from qkcheck.cases.case import REGIMES, Case
from qkcheck.cases.space import CaseSpace
from qkcheck.cases.spec import GEMM_CONFIG_COMPLETE, OpSpec, configs_for, k_multiple_of, tunables_for
from qkcheck.oracle.ops import exact_problem
from qkcheck.oracle.ops.mxfp4 import MX_BLOCK
from qkcheck.oracle.numerics import round_to
from qkcheck.oracle.schemes import get_scheme, quantize

OP = "mxfp4_gemm"
ACTS = ("a16", "mxfp4")
FLOAT16S = ("float16", "bfloat16")
OUT_DTYPES = ("float16", "bfloat16", "float32")
BLOCK_K = (32, 64, 128, 256)  # multiples of the 32-element scale block (the kernel needs whole blocks)
TILES = (16, 32, 64, 128)
E8M0_BIAS = 127
E2M1_MAX_CODE = 0x7  # +6; 0xF is -6
E2M1_NEG_ZERO = 0x8
ADVERSARIAL_EXPONENTS = (-14, 1)  # 2**-14 .. 2**1: 16 binades; e2m1 * scale stays exact in float16


def _compute_dtype(params) -> str:
    """The dtype of the kernel's tl.dot operands: the activation dtype (a16) or the dtype the
    decoded MXFP4 operands are rounded to (mxfp4); both given as ``act_dtype``."""
    return params["act_dtype"]


SPEC = OpSpec(
    OP,
    shape_keys=("m", "n", "k"),
    params={"act": ACTS, "act_dtype": FLOAT16S, "out_dtype": OUT_DTYPES, "bias": (False, True)},
    tunables={"block_m": TILES, "block_n": TILES, "block_k": BLOCK_K, "split_k": (1, 2, 4),
              "group_m": (1, 4, 8)},
    rules=(k_multiple_of(MX_BLOCK, f"the {MX_BLOCK}-element MX scale block (one E8M0 code per {MX_BLOCK} "
                                   "elements along K)"),
           GEMM_CONFIG_COMPLETE),
    compute_dtype=_compute_dtype,
    tiles={"m": "block_m", "n": "block_n", "k": "block_k"},
)  # outputs: one out [M, N] in out_dtype (the OpSpec default)
SPECS = (SPEC,)


# ------------------------------------------------------------------------------ materializers


def _signs(rng, shape) -> np.ndarray:
    return rng.choice([-1.0, 1.0], shape)


def _exact(case, rng) -> dict:
    d, p = case.dims, case.p
    return exact_problem(OP, rng, m=d["m"], k=d["k"], n=d["n"], act=p["act"], bias=p["bias"])


def _outlier_activations(rng, m: int, k: int) -> np.ndarray:
    x = rng.standard_normal((m, k))
    outliers = rng.choice(k, size=max(1, k // 64), replace=False)
    x[:, outliers] *= 20.0
    return x


def _realistic(case, rng) -> dict:
    d, p = case.dims, case.p
    m, n, k = d["m"], d["n"], d["k"]
    scheme = get_scheme("mxfp4")
    # per-column weight spreads of a trained layer: std 2**-6 .. 1 -> E8M0 codes ~118 .. 127
    std = np.exp2(rng.uniform(-6.0, 0.0, (1, n)))
    wq = quantize(rng.standard_normal((k, n)) * std, scheme, axis=0)
    problem = {"w": wq.codes, "w_scale": wq.scale_codes, "act": p["act"]}
    x = _outlier_activations(rng, m, k)
    if p["act"] == "a16":
        problem["x"] = round_to(x, p["act_dtype"])
    else:
        aq = quantize(x, scheme, axis=1)
        problem["a"], problem["a_scale"] = aq.codes, aq.scale_codes
    problem["bias"] = round_to(rng.standard_normal(n) * 0.5, p["act_dtype"]) if p["bias"] else None
    return problem


def _adversarial_codes(rng, shape, blocks_axis: int) -> np.ndarray:
    """Random e2m1 codes with one block of the format maximum (+-6, random signs) and one
    all-zero block (+0 and -0 codes) along K, wherever there are enough blocks."""
    codes = rng.integers(0, 16, shape).astype(np.uint8)
    k = shape[blocks_axis]
    blocks = k // MX_BLOCK
    full = rng.integers(blocks)
    zero = (full + 1 + rng.integers(max(blocks - 1, 1))) % blocks if blocks > 1 else None

    def block(b):
        sl = [slice(None), slice(None)]
        sl[blocks_axis] = slice(b * MX_BLOCK, (b + 1) * MX_BLOCK)
        return tuple(sl)

    sub = codes[block(full)]
    codes[block(full)] = np.where(rng.random(sub.shape) < 0.5, E2M1_MAX_CODE, E2M1_MAX_CODE | E2M1_NEG_ZERO)
    if zero is not None:
        sub = codes[block(zero)]
        codes[block(zero)] = np.where(rng.random(sub.shape) < 0.5, 0, E2M1_NEG_ZERO)
    return codes


def _spread_exponents(rng, shape, offset_axis: int) -> np.ndarray:
    """E8M0 codes: distinct exponents along K (a stride that visits all 16 binades), shifted per
    row / column, so neighbouring blocks never share a scale."""
    lo, hi = ADVERSARIAL_EXPONENTS
    span = hi - lo + 1
    g = np.arange(shape[1 - offset_axis])
    other = rng.integers(0, span, shape[offset_axis])
    if offset_axis == 1:  # weights: [K/32, N], blocks along axis 0
        e = (5 * g[:, None] + other[None, :]) % span
    else:  # activations: [M, K/32], blocks along axis 1
        e = (5 * g[None, :] + other[:, None]) % span
    return (E8M0_BIAS + lo + e).astype(np.uint8)


def _adversarial(case, rng) -> dict:
    d, p = case.dims, case.p
    m, n, k = d["m"], d["n"], d["k"]
    blocks = k // MX_BLOCK
    problem = {"w": _adversarial_codes(rng, (k, n), 0), "w_scale": _spread_exponents(rng, (blocks, n), 1),
               "act": p["act"]}
    if p["act"] == "a16":
        # large activations (|x| up to 8): the block at 2**1 * 6 gives terms of 96; K <= 256 keeps
        # every output below float16's largest finite value
        x = rng.uniform(0.5, 8.0, (m, k)) * _signs(rng, (m, k))
        x[:, rng.integers(k)] = 0.0
        problem["x"] = round_to(x, p["act_dtype"])
    else:
        problem["a"] = _adversarial_codes(rng, (m, k), 1)
        problem["a_scale"] = _spread_exponents(rng, (m, blocks), 0)
    problem["bias"] = round_to(rng.standard_normal(n) * 100.0, p["act_dtype"]) if p["bias"] else None
    return problem


_REGIMES = {"exact": _exact, "realistic": _realistic, "adversarial": _adversarial}


def materialize(case) -> dict:
    """The canonical ``mxfp4_gemm`` problem of ``case`` (``oracle.ops.mxfp4`` keys): ``w``
    [K, N] e2m1 codes, ``w_scale`` [K/32, N] E8M0 codes, ``act``, then ``x`` [M, K] values
    (a16) or ``a`` [M, K] e2m1 codes + ``a_scale`` [M, K/32] E8M0 codes (mxfp4), ``bias`` [N]
    in ``act_dtype`` or None. Drawn from ``numpy.random.default_rng(case.seed)``."""
    rng = np.random.default_rng(case.seed)
    return _REGIMES[case.regime](case, rng)


MATERIALIZERS = {OP: materialize}


# --------------------------------------------------------------------------------------- grid


def _fits(adapter, config: dict) -> bool:
    return all(v in adapter.tunables.get(key, (v,)) for key, v in config.items())


def _grid(adapter) -> list[Case]:
    """34 cases. float16 dots: both activation kinds x BLOCK_K equal to and larger than the scale
    block (tiles of 1, 2 and 4 blocks) x four shapes (M=1 with an N tail; M and N off the tile
    grid with K not a multiple of BLOCK_K; M=17, K=256; a single scale block, K=32, smaller than
    the tile), with the regime, bias, output dtype, split-K and group_m taking turns; bfloat16
    dots (compiled only: the interpreter's bf16 dot is wrong) once per shape and activation kind;
    and the kernel's own default tiles at decode and prefill sizes."""
    cases: list[Case] = []

    def add(m, n, k, act, act_dtype, out, bias, cfg, regime, seed, why):
        if _fits(adapter, cfg):
            cases.append(SPEC.case(
                shape={"m": m, "n": n, "k": k},
                params={"act": act, "act_dtype": act_dtype, "out_dtype": out, "bias": bias},
                config=cfg, regime=regime, seed=seed, why=why,
            ))

    def tiles(m, block_k, j):
        cfg = {"block_m": 16 if m <= 16 else 32, "block_n": 32, "block_k": block_k}
        if j % 5 == 2:
            cfg["split_k"] = 2
        if j % 7 == 3:
            cfg["group_m"] = 1
        return cfg

    def why(block_k):
        return f"BLOCK_K={block_k} {'=' if block_k == MX_BLOCK else '>'} the {MX_BLOCK}-element scale block"

    shapes = ((1, 40, 128), (33, 48, 96), (17, 64, 256), (5, 16, 32))
    j = 0
    for (m, n, k) in shapes:
        for block_k in (32, 64, 128):
            for act in ACTS:
                out = "bfloat16" if j % 9 == 4 else ("float16", "float32")[(j // 2) % 2]
                add(m, n, k, act, "float16", out, bool((j // 3) % 2), tiles(m, block_k, j), REGIMES[j % 3], j,
                    why(block_k))
                j += 1
    for i, ((m, n, k), act) in enumerate((s, a) for s in shapes[:3] for a in ACTS):
        block_k = (32, 64, 128)[i % 3]
        add(m, n, k, act, "bfloat16", ("bfloat16", "float32")[i % 2], bool(i % 2), tiles(m, block_k, i),
            REGIMES[i % 3], 100 + i, why(block_k))
    # the kernel's own default tile choice, at decode and prefill sizes, both activation kinds
    for m, act, bias in ((1, "a16", True), (1, "mxfp4", False), (20, "a16", False), (20, "mxfp4", True)):
        cases.append(SPEC.case(
            shape={"m": m, "n": 64, "k": 256},
            params={"act": act, "act_dtype": "float16", "out_dtype": "float16", "bias": bias},
            regime=("exact", "adversarial")[m > 1], seed=m, why="the launcher's default tiles",
        ))
    return cases


GRIDS = {OP: _grid}


# --------------------------------------------------------------------------------- strategies


@st.composite
def _strategy(draw, adapter) -> Case:
    blocks = draw(st.integers(1, 6))
    k = MX_BLOCK * blocks
    m = draw(st.one_of(st.just(1), st.integers(1, 40)))
    n = draw(st.sampled_from((16, 24, 32, 40, 48, 64)))
    space = CaseSpace(SPEC, adapter)
    block_ks = sorted(b for b in tunables_for(SPEC, adapter).get("block_k", ()) if b <= 128)
    config = draw(configs_for(SPEC, adapter, block_k=block_ks))
    params = {
        "act": draw(space.sample("act")),
        "act_dtype": draw(space.sample("act_dtype")),
        "out_dtype": draw(space.sample("out_dtype")),
        "bias": draw(space.sample("bias")),
    }
    regime = draw(st.sampled_from(REGIMES))
    seed = draw(st.integers(0, 2**16))
    return SPEC.case(shape={"m": m, "n": n, "k": k}, params=params, config=config, regime=regime, seed=seed)


STRATEGIES = {OP: _strategy}
