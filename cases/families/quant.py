"""Activation quantization ops (codes and scales): per_token_quant, static_quant,
per_token_group_quant, mx_quant and nvfp4_quant (``oracle.ops.quant`` judges codes and scales
code for code).

Case space
----------
Shape ``{"m", "k"}`` (x is ``[M, K]``). Params:

- ``in_dtype``: the activations' dtype (float16, bfloat16, float32); every input value is
  representable in it.
- ``quant_dtype`` (linear ops): int8 or an FP8 format; the codes' *requested* dtype, which the
  output contract holds the kernel (and its fake) to.
- ``scale_ub`` (per_token_quant): whether an amax upper bound is passed; its value is part of the
  problem (``oracle.ops.quant``: ``scale_ub``), drawn by the regime.
- ``group_size``, ``column_major_scales``, ``scale_ue8m0`` (per_token_group_quant).
- ``fmt`` and ``scale_rule`` (mx_quant): every MX format of ``oracle.ops.quant.MX_FORMATS``
  (mxfp4, mxfp6_e2m3, mxfp6_e3m2, mxfp8_e4m3, mxfp8_e5m2), OCP floor or RCEIL scales. The output
  contract is bytes: mxfp4 codes packed two per byte ``[M, K/2]``, the others one bit pattern per
  byte ``[M, K]``, E8M0 scale codes ``[M, K/32]``, all uint8.
- nvfp4_quant has only ``in_dtype``; its ``global_scale`` (the float32 dequantization multiplier,
  part of the problem) is drawn by the regime. Outputs: e2m1 codes packed ``[M, K/2]`` and E4M3
  scale codes ``[M, K/16]``, uint8.

Tunables are the kernels' config fields (``kernels.triton.quant``: TileConfig, GroupConfig,
MXConfig, NVFP4Config); ``sw_fp8`` is 0/1 (integer RNE instead of the hardware fp8 conversion). A config gives
block_m with block_k / block_g, or is empty for the launcher's default.

Regimes
-------
- ``exact``: ``oracle.ops.quant.exact_quant_inputs`` (every scale a power of two the kernel
  computes exactly, so the only correct codes are RNE of the exact quotient), rounded to in_dtype
  (a power-of-two scale keeps the quotient exact, so a tie that rounding creates has one correct
  answer: to even). scale_ub: a power of two times qmax, capping about half of the rows.
- ``realistic``: normal activations with per-row magnitudes spread like LLM hidden states and a
  few outlier channels 20x larger; static scales calibrated on 90% of the tensor's amax (so the
  outliers saturate); scale_ub at the rows' 75th amax percentile.
- ``adversarial``: groups (rows for per-token, 32-blocks for MX, 16-blocks for NVFP4) with scales
  2**(g mod 8) and random signs, each of one kind: all zero (with -0.0), exact rounding ties, amax
  on the format's max with the top codes and their midpoint next to it, amax just below a power of
  two times qmax (a scale that is not a power of two: the float32 ambiguity rules apply), subnormal
  codes, tiny inputs (the amax floor), in-dtype subnormals. static_quant: the kinds as stripes under
  one given scale (the stripes' power of two, or a value near it that is not one), with the near-max
  stripes twice too large so codes saturate (int8 down to -128). nvfp4_quant: the kinds per
  16-block, under one of three global scales (by seed mod 3): ``0.75 * 2**k`` below the blocks (E4M3
  scales that are not powers of two, the top blocks' scales saturating at 448 and their codes at
  ±6), the usual ``amax / (6 * 448)``, or ``2**k`` above them (E4M3 subnormal scales, the 2**-10 tie
  between 0 and the smallest one, and scales underflowing to 0).

nvfp4_quant's global scale: exact: a power of two (``exact_quant_inputs``); realistic:
``float32(amax(x) / (6 * 448))`` (1.0 for an all-zero x).
All draws come from ``numpy.random.default_rng(case.seed)``.
"""
from __future__ import annotations

import math

import numpy as np
from qkcheck.cases.hyp import st

from qkcheck.cases.case import REGIMES, Case
from qkcheck.cases.space import CaseSpace
from qkcheck.cases.spec import OpSpec, Output, config_complete, k_multiple_of
from qkcheck.oracle.formats import FORMATS, IntFormat
from qkcheck.oracle.numerics import round_to
from qkcheck.oracle.ops.quant import MX_FORMATS as _MX_SCHEMES
from qkcheck.oracle.ops.quant import exact_quant_inputs
from qkcheck.oracle.schemes import NVFP4_GLOBAL_DIVISOR, get_scheme

QUANT_DTYPES = ("int8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2")
IN_DTYPES = ("float16", "bfloat16", "float32")
GROUP_SIZES = (32, 64, 128)
MX_ELEM = {fmt: get_scheme(scheme).elem for fmt, scheme in _MX_SCHEMES.items()}
MX_FORMATS = tuple(MX_ELEM)
SCALE_RULES = ("floor", "rceil")
MX_BLOCK = 32
NVFP4_BLOCK = 16
NVFP4_ELEM = "float4_e2m1fn"

_POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_WARPS = (1, 2, 4, 8)
TILE_TUNABLES = {"block_m": _POW2[:6], "block_k": _POW2[4:], "num_warps": _WARPS, "sw_fp8": (0, 1)}
GROUP_TUNABLES = {"block_m": _POW2[:6], "block_g": _POW2[:6], "num_warps": _WARPS, "sw_fp8": (0, 1)}
MX_TUNABLES = {"block_m": _POW2[:6], "block_g": _POW2[:6], "num_warps": _WARPS}
NVFP4_TUNABLES = MX_TUNABLES
_DTYPE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38}


# ------------------------------------------------------------------ spec


def _k_positive(case) -> str | None:
    if case.dims["k"] < 1:
        return f"K={case.dims['k']} must be >= 1 (a row needs at least one element to have a scale)"
    return None


def _group_divides_k(case) -> str | None:
    g, k = case.p["group_size"], case.dims["k"]
    if k % g:
        return (f"group_size={g} must divide K={k} (allowed: {', '.join(map(str, GROUP_SIZES))}); "
                f"pick K a multiple of {g}")
    return None


_mx_block_divides_k = k_multiple_of(MX_BLOCK, f"{MX_BLOCK} (one E8M0 scale per {MX_BLOCK} elements)")
_nvfp4_block_divides_k = k_multiple_of(NVFP4_BLOCK, f"{NVFP4_BLOCK} (one E4M3 scale per {NVFP4_BLOCK} elements)")
_TILE_CONFIG_COMPLETE = config_complete("block_m", "block_k")
_GROUP_CONFIG_COMPLETE = config_complete("block_m", "block_g")


def _group_tail(case):
    """The grid's goal for grouped quantizers: more groups than a tile holds, the last tile partial."""
    bg = case.cfg.get("block_g")
    g = case.p.get("group_size") or (MX_BLOCK if "fmt" in case.p else NVFP4_BLOCK)
    groups = case.dims["k"] // g
    return (("group_tail",),) if bg and groups > bg and groups % bg else ()


_TILE_DIMS = {"m": "block_m", "k": "block_k"}
_GROUP_GOALS = dict(tiles={"m": "block_m"}, features=_group_tail, goals=(("group_tail",),))


def _codes(dims, params) -> Output:
    return Output("codes", (dims["m"], dims["k"]), params["quant_dtype"])


SPECS = (
    OpSpec(
        "per_token_quant",
        shape_keys=("m", "k"),
        params={"quant_dtype": QUANT_DTYPES, "in_dtype": IN_DTYPES, "scale_ub": (False, True)},
        tunables=TILE_TUNABLES,
        rules=(_k_positive, _TILE_CONFIG_COMPLETE),
        compute_dtype=lambda p: "float32",
        out_dtype=lambda p: p["quant_dtype"],
        outputs=lambda d, p: (_codes(d, p), Output("scales", (d["m"], 1), "float32")),
        tiles=_TILE_DIMS,
    ),
    OpSpec(
        "static_quant",
        shape_keys=("m", "k"),
        params={"quant_dtype": QUANT_DTYPES, "in_dtype": IN_DTYPES},
        tunables=TILE_TUNABLES,
        rules=(_k_positive, _TILE_CONFIG_COMPLETE),
        compute_dtype=lambda p: "float32",
        out_dtype=lambda p: p["quant_dtype"],
        outputs=lambda d, p: (_codes(d, p),),
        tiles=_TILE_DIMS,
    ),
    OpSpec(
        "per_token_group_quant",
        shape_keys=("m", "k"),
        params={"quant_dtype": QUANT_DTYPES, "in_dtype": IN_DTYPES, "group_size": GROUP_SIZES,
                "column_major_scales": (False, True), "scale_ue8m0": (False, True)},
        tunables=GROUP_TUNABLES,
        rules=(_k_positive, _group_divides_k, _GROUP_CONFIG_COMPLETE),
        compute_dtype=lambda p: "float32",
        out_dtype=lambda p: p["quant_dtype"],
        outputs=lambda d, p: (_codes(d, p), Output("scales", (d["m"], d["k"] // p["group_size"]), "float32")),
        **_GROUP_GOALS,
    ),
    OpSpec(
        "mx_quant",
        shape_keys=("m", "k"),
        params={"fmt": MX_FORMATS, "in_dtype": IN_DTYPES, "scale_rule": SCALE_RULES},
        tunables=MX_TUNABLES,
        rules=(_k_positive, _mx_block_divides_k, _GROUP_CONFIG_COMPLETE),
        compute_dtype=lambda p: "float32",
        out_dtype=lambda p: "uint8",
        # bytes: mxfp4 packed two e2m1 codes per byte along K, the others one code per byte; E8M0 scale codes
        outputs=lambda d, p: (Output("codes", (d["m"], d["k"] // 2 if p["fmt"] == "mxfp4" else d["k"]), "uint8"),
                              Output("scales", (d["m"], d["k"] // MX_BLOCK), "uint8")),
        **_GROUP_GOALS,
    ),
    OpSpec(
        "nvfp4_quant",
        shape_keys=("m", "k"),
        params={"in_dtype": IN_DTYPES},
        tunables=NVFP4_TUNABLES,
        rules=(_k_positive, _nvfp4_block_divides_k, _GROUP_CONFIG_COMPLETE),
        compute_dtype=lambda p: "float32",
        out_dtype=lambda p: "uint8",
        # two e2m1 codes per byte along K, E4M3 scale codes
        outputs=lambda d, p: (Output("codes", (d["m"], d["k"] // 2), "uint8"),
                              Output("scales", (d["m"], d["k"] // NVFP4_BLOCK), "uint8")),
        **_GROUP_GOALS,
    ),
)
_SPEC = {s.op: s for s in SPECS}


# ------------------------------------------------------------------ materializers


def _elem(op: str, p: dict) -> str:
    if op == "nvfp4_quant":
        return NVFP4_ELEM
    return MX_ELEM[p["fmt"]] if op == "mx_quant" else p["quant_dtype"]


def _qmax(elem: str) -> float:
    return float(FORMATS[elem].max)


def _grid(elem: str) -> np.ndarray:
    """The format's non-negative finite values (int8: 0..127), ascending."""
    fmt = FORMATS[elem]
    if isinstance(fmt, IntFormat):
        return np.arange(0, int(fmt.max) + 1, dtype=np.float64)
    t = fmt.decode_table
    return np.unique(t[np.isfinite(t) & (t >= 0)])


def _group_size(op: str, case) -> int:
    k = case.dims["k"]
    return {"per_token_quant": k, "static_quant": k, "mx_quant": MX_BLOCK,
            "nvfp4_quant": NVFP4_BLOCK}.get(op) or case.p["group_size"]


def _exp_base(elem: str, in_dtype: str) -> int:
    """Exponent of the smallest group scale: 2**(base + 7) * qmax stays inside in_dtype."""
    top = math.floor(math.log2(_DTYPE_MAX[in_dtype] / (_qmax(elem) * 2.0**8)))
    return min(-3, top)


def _problem(op: str, p: dict, x: np.ndarray, *, scale=None, scale_ub=None, global_scale=None) -> dict:
    x = round_to(np.asarray(x, np.float64), p["in_dtype"])
    if op == "nvfp4_quant":
        if global_scale is None:  # the usual calibration, on the values the kernel reads
            amax = float(np.abs(x).max()) if x.size else 0.0
            global_scale = _f32(amax / NVFP4_GLOBAL_DIVISOR) if amax > 0 else 1.0
        return {"x": x, "global_scale": global_scale}
    if op == "per_token_quant":
        return {"x": x, "quant_dtype": p["quant_dtype"], "scale_ub": scale_ub}
    if op == "static_quant":
        return {"x": x, "scale": scale, "quant_dtype": p["quant_dtype"]}
    if op == "per_token_group_quant":
        return {"x": x, "group_size": p["group_size"], "quant_dtype": p["quant_dtype"], "scale_ue8m0": p["scale_ue8m0"]}
    return {"x": x, "fmt": p["fmt"], "scale_rule": p["scale_rule"]}


def _f32(v: float) -> float:
    return float(np.float32(v))


def _exact(op: str, case) -> dict:
    d, p = case.dims, case.p
    rng = np.random.default_rng(case.seed)
    if op == "mx_quant":
        prob = exact_quant_inputs(op, (d["m"], d["k"]), p["fmt"], rng, scale_rule=p["scale_rule"])
    elif op == "nvfp4_quant":
        prob = exact_quant_inputs(op, (d["m"], d["k"]), "nvfp4", rng)
        return _problem(op, p, prob["x"], global_scale=prob["global_scale"])
    else:
        prob = exact_quant_inputs(op, (d["m"], d["k"]), p["quant_dtype"], rng,
                                  group_size=p.get("group_size"), scale_ue8m0=p.get("scale_ue8m0", False))
    ub = None
    if op == "per_token_quant" and p["scale_ub"]:
        # row amax is qmax * 2**e_row; a cap at qmax * 2**e keeps the scale a power of two
        qmax = _qmax(p["quant_dtype"])
        e_rows = np.round(np.log2(np.abs(prob["x"]).max(axis=1) / qmax))
        ub = qmax * 2.0 ** float(np.median(e_rows) // 1) if len(e_rows) else qmax
    return _problem(op, p, prob["x"], scale=prob.get("scale"), scale_ub=ub)


def _realistic(op: str, case) -> dict:
    d, p = case.dims, case.p
    m, k = d["m"], d["k"]
    rng = np.random.default_rng(case.seed)
    x = rng.standard_normal((m, k)) * np.exp(rng.normal(0.0, 1.0, (m, 1)))  # row magnitudes spread
    outliers = rng.choice(k, size=max(1, k // 64), replace=False)
    x[:, outliers] *= 20.0
    x = round_to(x, p["in_dtype"])
    scale = ub = None
    if op == "static_quant":
        amax = float(np.abs(x).max()) if x.size else 1.0
        scale = _f32(max(0.9 * amax, 1e-6) / _qmax(p["quant_dtype"]))  # calibrated on a smaller sample
    if op == "per_token_quant" and p["scale_ub"]:
        ub = _f32(float(np.percentile(np.abs(x).max(axis=1), 75)) if m else 1.0)
    return _problem(op, p, x, scale=scale, scale_ub=ub)


_KINDS = ("zero", "ties", "at_max", "below_pow2", "subnormal_codes", "tiny", "dense")


def _adversarial_units(kind: str, elem: str, n: int, rng, in_dtype: str) -> tuple[np.ndarray, bool]:
    """n values in units of the group's scale (the group's amax is qmax unless said otherwise);
    returns (values, scale_is_absolute) — absolute: the values are final inputs, not units."""
    fmt, grid = FORMATS[elem], _grid(elem)
    qmax = _qmax(elem)
    sign = np.where(rng.integers(0, 2, n) == 1, -1.0, 1.0)
    mids = (grid[:-1] + grid[1:]) / 2
    if kind == "zero":
        return np.where(rng.integers(0, 2, n) == 1, -0.0, 0.0), False
    if kind == "ties":  # exact midpoints between adjacent codes (even and odd lower neighbours)
        v = sign * mids[rng.integers(0, len(mids), n)]
    elif kind == "at_max":  # the top codes, their midpoint, just below the max, the max itself
        top = np.array([grid[-1], grid[-2], mids[-1], grid[-1] - (grid[-1] - grid[-2]) / 4, grid[-3]])
        v = sign * top[rng.integers(0, len(top), n)]
    elif kind == "below_pow2":  # amax a hair below qmax * 2**e: the scale is not a power of two
        v = sign * rng.uniform(0, qmax, n)
        v[rng.integers(n)] = qmax * (1 - 2.0**-7)
        return v, False
    elif kind == "subnormal_codes":
        if isinstance(fmt, IntFormat):
            small = np.array([0.0, 0.5, 1.0, 1.5, 2.5, 0.25, 0.75])
        else:
            sub = grid[(grid > 0) & (grid < 2.0**fmt.emin)]
            small = np.concatenate([sub, (sub[:-1] + sub[1:]) / 2, [sub[0] / 2, sub[0] / 4, 2.0**fmt.emin]])
        v = sign * small[rng.integers(0, len(small), n)]
    elif kind == "tiny":  # amax below the floor (1e-10) where in_dtype reaches; else its subnormals
        lo = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149}[in_dtype]
        tiny = lo * rng.integers(1, 64, n) if in_dtype == "float16" else rng.uniform(0, 1e-11, n)
        return sign * tiny, True
    else:  # dense: uniform over the range, random off-grid values
        v = sign * rng.uniform(0, qmax, n)
    v[rng.integers(n)] = qmax * (1.0 if rng.integers(2) else -1.0)
    return v, False


def _adversarial(op: str, case) -> dict:
    d, p = case.dims, case.p
    m, k = d["m"], d["k"]
    rng = np.random.default_rng(case.seed)
    elem = _elem(op, p)
    in_dtype = p["in_dtype"]
    qmax = _qmax(elem)
    base = _exp_base(elem, in_dtype)
    g = _group_size(op, case)
    groups = k // g
    x = np.zeros((m, k))
    for r in range(m):
        for gi in range(groups):
            kind = _KINDS[(r * groups + gi + int(rng.integers(len(_KINDS)))) % len(_KINDS)]
            if op == "static_quant":  # one scale for everything: the kinds become stripes
                kind = _KINDS[1 + (r + gi) % (len(_KINDS) - 1)]
            v, absolute = _adversarial_units(kind, elem, g, rng, in_dtype)
            scale = 1.0 if absolute else 2.0 ** (base + (r * groups + gi) % 8)
            if op == "static_quant" and not absolute:  # near-max stripes twice too large: saturate
                scale = 2.0 ** (base + 4) * (2 if kind == "at_max" else 1)
            x[r, gi * g:(gi + 1) * g] = v * scale
    scale = ub = global_scale = None
    if op == "nvfp4_quant":  # block scales below, around (None: amax / 2688) or above E4M3's range
        global_scale = {0: 0.75 * 2.0 ** (base - 2), 1: None, 2: 2.0 ** (base + 12)}[case.seed % 3]
    if op == "static_quant":
        # the given scale: the stripes' power of two (their ties are exact ties) or a nearby value
        # that is not a power of two; the near-max stripes saturate (int8 down to -128)
        s = 2.0 ** (base + 4)
        scale = s if rng.integers(2) else _f32(s * (1 - 2.0**-5) / (1 + 2.0**-3))
    if op == "per_token_quant" and p["scale_ub"]:
        amax = np.sort(np.abs(round_to(x, in_dtype)).max(axis=1))
        ub = _f32(amax[len(amax) // 2]) if m and amax[len(amax) // 2] > 0 else qmax  # equal to one row's amax
    return _problem(op, p, x, scale=scale, scale_ub=ub, global_scale=global_scale)


def _materializer(op: str):
    def materialize(case) -> dict:
        return {"exact": _exact, "realistic": _realistic, "adversarial": _adversarial}[case.regime](op, case)
    materialize.__name__ = f"materialize_{op}"
    return materialize


MATERIALIZERS = {s.op: _materializer(s.op) for s in SPECS}


# ------------------------------------------------------------------ grids


def _supported(adapter, cfg: dict) -> dict | None:
    """cfg restricted to the adapter's tunables (a key it does not declare is dropped: a kernel
    without tunables runs the case with its own choice); None when a value is not one it declares."""
    out = {}
    for key, value in cfg.items():
        if key not in adapter.tunables:
            continue
        if value not in adapter.tunables[key]:
            return None
        out[key] = value
    return out


def _add(cases: list, adapter, op: str, m: int, k: int, params: dict, cfg: dict | None, regime: str, seed: int,
         why: str = "") -> None:
    if cfg:
        if params.get("quant_dtype") == "float8_e4m3fnuz":  # no hardware conversion on NVIDIA GPUs
            cfg = {**cfg, "sw_fp8": 1}
        cfg = _supported(adapter, cfg)
        if cfg is None:
            return
    cases.append(_SPEC[op].case(shape={"m": m, "k": k}, params=params, config=cfg or {}, regime=regime,
                           seed=seed, why=why))


def _grid_per_token(adapter) -> list[Case]:
    op, cases = "per_token_quant", []
    # int8 (runs everywhere): every regime, scale_ub on and off, each input dtype, tile tails
    for i, (m, k, in_dtype, ub, regime, cfg) in enumerate((
        (1, 64, "float16", False, "exact", None),
        (5, 200, "float32", True, "exact", {"block_m": 2, "block_k": 64}),
        (9, 96, "bfloat16", False, "exact", {"block_m": 4, "block_k": 32}),
        (3, 128, "bfloat16", True, "realistic", None),
        (17, 80, "float16", False, "realistic", {"block_m": 16, "block_k": 16}),
        (7, 64, "float32", False, "adversarial", {"block_m": 4, "block_k": 64}),
        (8, 160, "bfloat16", True, "adversarial", None),
        (6, 48, "float16", True, "adversarial", {"block_m": 8, "block_k": 256, "num_warps": 2}),
    )):
        _add(cases, adapter, op, m, k, {"quant_dtype": "int8", "in_dtype": in_dtype, "scale_ub": ub}, cfg, regime, i)
    # fp8 outputs (skip under the interpreter; run compiled): each format x regime, hw and sw codes
    for j, (q, regime, in_dtype, ub, cfg) in enumerate((
        ("float8_e4m3fn", "exact", "float16", False, None),
        ("float8_e4m3fn", "adversarial", "bfloat16", True, {"block_m": 4, "block_k": 64, "sw_fp8": 1}),
        ("float8_e4m3fn", "realistic", "float32", True, {"block_m": 2, "block_k": 32}),
        ("float8_e4m3fnuz", "exact", "bfloat16", True, {"block_m": 4, "block_k": 64}),
        ("float8_e4m3fnuz", "adversarial", "float16", False, None),
        ("float8_e5m2", "exact", "float32", False, {"block_m": 4, "block_k": 32, "sw_fp8": 1}),
        ("float8_e5m2", "adversarial", "float16", True, None),
        ("float8_e5m2", "realistic", "bfloat16", False, {"block_m": 8, "block_k": 128}),
    )):
        _add(cases, adapter, op, 5 + 4 * (j % 3), 96 + 32 * (j % 2), {"quant_dtype": q, "in_dtype": in_dtype,
             "scale_ub": ub}, cfg, regime, 100 + j)
    return cases


def _grid_static(adapter) -> list[Case]:
    op, cases = "static_quant", []
    for i, (m, k, in_dtype, regime, cfg) in enumerate((
        (1, 64, "float32", "exact", None),
        (6, 100, "float16", "exact", {"block_m": 4, "block_k": 32}),
        (5, 128, "bfloat16", "realistic", {"block_m": 2, "block_k": 64}),
        (18, 48, "float16", "realistic", None),
        (4, 96, "float32", "adversarial", {"block_m": 4, "block_k": 64}),
        (9, 64, "bfloat16", "adversarial", {"block_m": 8, "block_k": 16}),
    )):
        _add(cases, adapter, op, m, k, {"quant_dtype": "int8", "in_dtype": in_dtype}, cfg, regime, i)
    for j, (q, regime, in_dtype, cfg) in enumerate((
        ("float8_e4m3fn", "exact", "bfloat16", {"block_m": 4, "block_k": 64}),
        ("float8_e4m3fn", "adversarial", "float16", {"block_m": 2, "block_k": 32, "sw_fp8": 1}),
        ("float8_e4m3fnuz", "adversarial", "float32", None),
        ("float8_e5m2", "exact", "float16", None),
        ("float8_e5m2", "realistic", "float32", {"block_m": 8, "block_k": 128, "sw_fp8": 1}),
    )):
        _add(cases, adapter, op, 3 + 4 * j, 64 + 32 * (j % 2), {"quant_dtype": q, "in_dtype": in_dtype}, cfg,
             regime, 100 + j)
    return cases


def _grid_group(adapter) -> list[Case]:
    op, cases = "per_token_group_quant", []
    # int8: each group size, row/column-major scales, UE8M0 on/off, group tails of block_g, regimes
    for i, (m, k, g, col, ue, in_dtype, regime, cfg) in enumerate((
        (1, 128, 32, False, False, "float16", "exact", None),
        (5, 192, 64, True, False, "bfloat16", "exact", {"block_m": 4, "block_g": 2}),
        (3, 256, 128, False, True, "float32", "exact", {"block_m": 2, "block_g": 1}),
        (9, 96, 32, True, True, "float16", "exact", {"block_m": 8, "block_g": 2}),
        (6, 128, 64, False, False, "float32", "realistic", {"block_m": 4, "block_g": 1}),
        (17, 160, 32, True, False, "bfloat16", "realistic", None),
        (4, 256, 128, True, True, "float16", "realistic", {"block_m": 2, "block_g": 2}),
        (7, 160, 32, False, False, "float32", "adversarial", {"block_m": 4, "block_g": 4}),
        (5, 128, 64, True, True, "bfloat16", "adversarial", {"block_m": 8, "block_g": 1}),
        (3, 384, 128, False, False, "float16", "adversarial", None),
    )):
        _add(cases, adapter, op, m, k, {"quant_dtype": "int8", "in_dtype": in_dtype, "group_size": g,
             "column_major_scales": col, "scale_ue8m0": ue}, cfg, regime, i)
    # fp8 (DeepSeek-style 1x128 with UE8M0, and the others)
    for j, (q, g, col, ue, regime, in_dtype, cfg) in enumerate((
        ("float8_e4m3fn", 128, True, True, "exact", "bfloat16", None),
        ("float8_e4m3fn", 128, False, False, "adversarial", "float16", {"block_m": 4, "block_g": 2, "sw_fp8": 1}),
        ("float8_e4m3fn", 64, True, False, "realistic", "bfloat16", {"block_m": 2, "block_g": 2}),
        ("float8_e4m3fnuz", 128, False, True, "adversarial", "float32", {"block_m": 4, "block_g": 1}),
        ("float8_e4m3fnuz", 32, True, False, "exact", "float16", None),
        ("float8_e5m2", 32, False, False, "exact", "float32", {"block_m": 8, "block_g": 4, "sw_fp8": 1}),
        ("float8_e5m2", 64, True, True, "adversarial", "bfloat16", None),
    )):
        _add(cases, adapter, op, 3 + 2 * j, 4 * g if j % 2 else 2 * g, {"quant_dtype": q, "in_dtype": in_dtype,
             "group_size": g, "column_major_scales": col, "scale_ue8m0": ue}, cfg, regime, 100 + j)
    return cases


def _grid_mx(adapter) -> list[Case]:
    op, cases = "mx_quant", []
    for i, (m, k, rule, in_dtype, regime, cfg) in enumerate((
        (1, 32, "floor", "float16", "exact", None),
        (5, 96, "rceil", "bfloat16", "exact", {"block_m": 4, "block_g": 2}),
        (9, 64, "floor", "float32", "exact", {"block_m": 8, "block_g": 1}),
        (3, 128, "floor", "bfloat16", "realistic", {"block_m": 2, "block_g": 4}),
        (17, 64, "rceil", "float16", "realistic", None),
        (6, 160, "floor", "float32", "adversarial", {"block_m": 4, "block_g": 2}),
        (4, 96, "rceil", "float16", "adversarial", {"block_m": 2, "block_g": 8, "num_warps": 2}),
        (7, 64, "rceil", "float32", "adversarial", None),
        (5, 224, "floor", "bfloat16", "adversarial", {"block_m": 8, "block_g": 4}),
    )):
        _add(cases, adapter, op, m, k, {"fmt": "mxfp4", "in_dtype": in_dtype, "scale_rule": rule}, cfg, regime, i)
    # MXFP6 / MXFP8 (one code per byte): each format meets both rules, every regime and input dtype
    for j, (fmt, m, k, rule, in_dtype, regime, cfg) in enumerate((
        ("mxfp6_e2m3", 5, 96, "floor", "bfloat16", "exact", {"block_m": 4, "block_g": 2}),
        ("mxfp6_e2m3", 1, 64, "rceil", "float32", "realistic", None),
        ("mxfp6_e2m3", 7, 160, "rceil", "float16", "adversarial", {"block_m": 4, "block_g": 4}),
        ("mxfp6_e3m2", 3, 64, "rceil", "float16", "exact", None),
        ("mxfp6_e3m2", 6, 128, "floor", "bfloat16", "adversarial", {"block_m": 2, "block_g": 2}),
        ("mxfp6_e3m2", 9, 96, "floor", "float32", "realistic", {"block_m": 8, "block_g": 1}),
        ("mxfp8_e4m3", 4, 128, "floor", "float32", "exact", {"block_m": 2, "block_g": 4, "num_warps": 2}),
        ("mxfp8_e4m3", 9, 64, "rceil", "bfloat16", "adversarial", None),
        ("mxfp8_e4m3", 5, 96, "rceil", "float16", "realistic", {"block_m": 4, "block_g": 1}),
        ("mxfp8_e5m2", 6, 96, "rceil", "bfloat16", "exact", {"block_m": 8, "block_g": 2}),
        ("mxfp8_e5m2", 3, 192, "floor", "float16", "adversarial", {"block_m": 2, "block_g": 8}),
        ("mxfp8_e5m2", 2, 64, "floor", "float32", "realistic", None),
    )):
        _add(cases, adapter, op, m, k, {"fmt": fmt, "in_dtype": in_dtype, "scale_rule": rule}, cfg, regime, 100 + j)
    return cases


def _grid_nvfp4(adapter) -> list[Case]:
    op, cases = "nvfp4_quant", []
    # adversarial seeds cover the three global-scale modes (seed mod 3: saturating, amax, underflowing)
    for i, (m, k, in_dtype, regime, cfg, seed) in enumerate((
        (1, 16, "float16", "exact", None, 0),
        (5, 96, "bfloat16", "exact", {"block_m": 4, "block_g": 2}, 1),
        (9, 64, "float32", "exact", {"block_m": 8, "block_g": 4, "num_warps": 2}, 2),
        (3, 128, "bfloat16", "realistic", {"block_m": 2, "block_g": 4}, 3),
        (17, 48, "float16", "realistic", None, 4),
        (6, 160, "float32", "adversarial", {"block_m": 4, "block_g": 2}, 6),
        (4, 112, "float16", "adversarial", {"block_m": 2, "block_g": 8}, 7),
        (7, 64, "bfloat16", "adversarial", None, 8),
        (5, 224, "float32", "adversarial", {"block_m": 8, "block_g": 4}, 9),
    )):
        _add(cases, adapter, op, m, k, {"in_dtype": in_dtype}, cfg, regime, seed)
    return cases


GRIDS = {"per_token_quant": _grid_per_token, "static_quant": _grid_static,
         "per_token_group_quant": _grid_group, "mx_quant": _grid_mx, "nvfp4_quant": _grid_nvfp4}


# ------------------------------------------------------------------ strategies


def _draw_config(draw, adapter, op: str, m: int, k: int, quant_dtype: str | None) -> dict:
    """A config of the tunables ``adapter`` declares only (none: the kernel's default)."""
    t = {key: vals for key, vals in adapter.tunables.items() if key in _SPEC[op].tunables}
    if not t or not draw(st.booleans()):  # shrinks toward the kernel's default config
        return {}
    other = "block_k" if op in ("per_token_quant", "static_quant") else "block_g"
    cfg = {}
    if "block_m" in t:
        cfg["block_m"] = draw(st.sampled_from([b for b in t["block_m"] if b <= 16] or t["block_m"]))
    if other in t:
        cfg[other] = draw(st.sampled_from([b for b in t[other] if b <= 256] or t[other]))
    if "num_warps" in t and draw(st.booleans()):
        cfg["num_warps"] = draw(st.sampled_from(t["num_warps"]))
    if "sw_fp8" in t and quant_dtype not in (None, "int8"):
        sw = 1 if quant_dtype == "float8_e4m3fnuz" else draw(st.sampled_from(t["sw_fp8"]))
        if sw:
            cfg["sw_fp8"] = sw
    return cfg


def _strategy(op: str):
    @st.composite
    def draw_case(draw, adapter) -> Case:
        space = CaseSpace(_SPEC[op], adapter)
        m = draw(st.integers(1, 24))
        in_dtype = draw(space.sample("in_dtype"))
        if op == "mx_quant":
            k = MX_BLOCK * draw(st.integers(1, 8))
            params = {"fmt": draw(space.sample("fmt")), "in_dtype": in_dtype,
                      "scale_rule": draw(space.sample("scale_rule"))}
            q = None
        elif op == "nvfp4_quant":
            k = NVFP4_BLOCK * draw(st.integers(1, 16))
            params = {"in_dtype": in_dtype}
            q = None
        else:
            q = draw(space.sample("quant_dtype"))
            params = {"quant_dtype": q, "in_dtype": in_dtype}
            if op == "per_token_group_quant":
                g = draw(space.sample("group_size"))
                k = g * draw(st.integers(1, 4))
                params.update(group_size=g, column_major_scales=draw(space.sample("column_major_scales")),
                              scale_ue8m0=draw(space.sample("scale_ue8m0")))
            else:
                k = draw(st.one_of(st.integers(1, 16), st.integers(16, 300)))
                if op == "per_token_quant":
                    params["scale_ub"] = draw(space.sample("scale_ub"))
        cfg = _draw_config(draw, adapter, op, m, k, q)
        regime = draw(st.sampled_from(REGIMES))
        seed = draw(st.integers(0, 2**16))
        return _SPEC[op].case(shape={"m": m, "k": k}, params=params, config=cfg, regime=regime, seed=seed)

    return draw_case


STRATEGIES = {s.op: _strategy(s.op) for s in SPECS}
