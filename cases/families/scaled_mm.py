"""W8A8 and FP8 GEMMs: ``scaled_mm`` (int8 / fp8 codes, per-token or per-tensor activation scales,
per-channel or per-tensor weight scales, int8 zero points), ``block_scaled_mm`` (fp8 codes with
``1 x bk`` activation and ``bk x bn`` weight block scales) and ``fp8_w8a16_gemm`` (fp16 / bf16
activations, fp8 weights arriving as a checkpoint delivers them and going through the weight
loader).

Parameters name *arrivals*, not the canonical problem: the problem (``oracle.ops.scaled_mm``) always
holds ``a_scale [M,1] | [1,1]``, ``b_scale [1,N] | [1,1]``, ``b [K,N]``; the adapter turns it into
the shapes and storage a param names (``b_scale_shape="[N,1]"``, ``weight_layout="nk"`` with
``weight_storage="transposed"``, ...).

Config: the tile tunables, and ``fp8_path="decode"`` (``FORCED_FP8_PATHS``), which makes the kernel load
fp8 operands as raw bytes and decode them in-kernel; a case without it runs the device's default
path (native on the CPU interpreter), so the grid gives a few fp8 cases a decode twin and the
strategies draw it for fp8 codes. It needs fp8 codes: an int8 case never names it.

Regimes (all draws from ``numpy.random.default_rng(case.seed)``):

- ``exact``: ``oracle.ops.exact_problem`` (small codes, power-of-two scales distinct per row /
  column / block, integer activations and bias): the only correct output is RNE(reference).
- ``realistic``: activations ``N(0, 1)`` with a few outlier channels x20, quantized the way a
  serving engine does it (per-token / per-tensor / per-block amax / qmax scales, RNE to the code
  format, saturating; int8 zero points from the row's min/max); weights ``N(0, 0.02)`` quantized
  per channel / per tensor / per block.
- ``adversarial``: scales ``2**(i mod 8)`` with random signs (per row, column, block), codes at
  the format's largest magnitude in some rows and columns, an all-zero activation row (only
  when M > 1: a single zero row would zero the whole output) and weight
  column, fp8 subnormal codes (e4m3 formats; e5m2 subnormal codes are left out: the interpreter's
  e5m2 ``tl.dot`` flushes them, see ``kernels.probes``/tests), int8 zero points at -128 / 127.
"""
from __future__ import annotations

import itertools

import numpy as np
from qkcheck.cases.hyp import st

from qkcheck.cases.case import REGIMES, Case
from qkcheck.cases.space import CaseSpace
from qkcheck.cases.spec import GEMM_CONFIG_COMPLETE, RELATIONS, OpSpec, block_k_relative, configs_for
from qkcheck.oracle.ops import exact_problem
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.numerics import round_to

FP8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz")
QUANT = ("int8",) + FP8
OUT = ("float16", "float32", "bfloat16")
A_SCALE_SHAPES = ("[M,1]", "[1]", "[]")
B_SCALE_SHAPES = ("[1,N]", "[N]", "[N,1]", "[1]", "[]")
PER_TENSOR = ("[1]", "[]")
TILES = (16, 32, 64, 128)
TILES_8BIT_K = (32, 64, 128, 256)  # 8-bit operand dots need K tiles >= 32
FORCED_FP8_PATHS = ("decode",)  # forced fp8 operand path; absent: the device's default (module docstring)


# ------------------------------------------------------------------------------------------ rules
_TILES = {"m": "block_m", "n": "block_n", "k": "block_k"}


def _block_k_vs_scale_block(case):
    """The grid's goal: BLOCK_K smaller than, equal to, larger than the scale block along K."""
    bk = case.cfg.get("block_k")
    if bk is None:
        return ()
    sb = case.p["scale_block_k"]
    return (("block_k_vs_scale_block", "lt" if bk < sb else "eq" if bk == sb else "gt"),)


def _positive_dims(case) -> str | None:
    bad = [k for k, v in case.dims.items() if v < 1]
    if bad:
        return f"shape {case.dims}: {', '.join(bad)} must be >= 1 (these kernels' cases need a non-empty problem)"
    return None


def _fp8_path_needs_fp8(case) -> str | None:
    fmt = case.p["quant_dtype"]
    if "fp8_path" in case.cfg and fmt not in FP8:
        return (f"config fp8_path={case.cfg['fp8_path']!r} names how fp8 operands are read; {fmt!r} codes have "
                "no fp8 path: drop it")
    return None


def _azp_int8(case) -> str | None:
    p = case.p
    if p["azp"] and p["quant_dtype"] != "int8":
        return f"azp=True needs quant_dtype='int8' (zero points are for int8 activations), got {p['quant_dtype']!r}"
    return None


SPECS = (
    OpSpec(
        "scaled_mm",
        shape_keys=("m", "n", "k"),
        params={
            "quant_dtype": QUANT,
            "a_scale_shape": A_SCALE_SHAPES,
            "b_scale_shape": B_SCALE_SHAPES,
            "b_storage": ("nk", "kn"),  # "nk": b is the .t() view of an [N, K] tensor (the usual storage)
            "azp": (False, True),
            "bias": (False, True),
            "out_dtype": OUT,
        },
        tunables={"block_m": TILES, "block_n": TILES, "block_k": TILES_8BIT_K,
                  "split_k": (1, 2, 4), "group_m": (1, 4, 8), "fp8_path": FORCED_FP8_PATHS},
        rules=(_positive_dims, GEMM_CONFIG_COMPLETE, _azp_int8, _fp8_path_needs_fp8),
        compute_dtype=lambda p: p["quant_dtype"],  # the dot runs on the codes themselves
        tiles=_TILES,
    ),
    OpSpec(
        "block_scaled_mm",
        shape_keys=("m", "n", "k"),
        params={
            "quant_dtype": FP8,
            "scale_block_k": (32, 64, 128),
            "scale_block_n": (32, 64, 128),
            "a_scale_major": ("row", "column"),
            "bias": (False, True),
            "out_dtype": OUT,
        },
        tunables={"block_m": TILES, "block_n": TILES, "block_k": TILES_8BIT_K,
                  "split_k": (1, 2, 4), "group_m": (1, 4, 8), "fp8_path": FORCED_FP8_PATHS},
        rules=(_positive_dims, GEMM_CONFIG_COMPLETE),
        compute_dtype=lambda p: p["quant_dtype"],
        tiles=_TILES,
        features=_block_k_vs_scale_block,
        goals=tuple(("block_k_vs_scale_block", r) for r in RELATIONS),
    ),
    OpSpec(
        "fp8_w8a16_gemm",
        shape_keys=("m", "n", "k"),
        params={
            "quant_dtype": FP8,
            "weight_layout": ("nk", "kn"),
            "weight_storage": ("contiguous", "transposed"),
            "scale_shape": ("[N,1]", "[1,N]", "[N]", "[1]", "[]"),
            "act_dtype": ("float16", "bfloat16"),
            "bias": (False, True),
            "out_dtype": OUT,
        },
        tunables={"block_m": TILES, "block_n": TILES, "block_k": TILES + (256,),
                  "split_k": (1, 2, 4), "group_m": (1, 4, 8), "fp8_path": FORCED_FP8_PATHS},
        rules=(_positive_dims, GEMM_CONFIG_COMPLETE),
        compute_dtype=lambda p: p["act_dtype"],  # the dequantized weight tile is cast to x.dtype for tl.dot
        tiles=_TILES,
    ),
)
_SPEC = {s.op: s for s in SPECS}


# ------------------------------------------------------------------------------------------ regimes
def _qmax(fmt: str) -> float:
    return 127.0 if fmt == "int8" else float(FORMATS[fmt].max)


def _quantize(values: np.ndarray, fmt: str) -> np.ndarray:
    """RNE to the code format, saturating: int8 values, or fp8 bit patterns (uint8)."""
    if fmt == "int8":
        return np.clip(np.rint(values), -128, 127).astype(np.int8)
    return FORMATS[fmt].encode(np.asarray(values, np.float64), saturate=True)


def _f32(v) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float64)


def _amax_scale(v: np.ndarray, axis, qmax: float) -> np.ndarray:
    amax = np.abs(v).max(axis=axis, keepdims=True) if v.size else np.ones((1, 1))
    return _f32(np.maximum(amax, 1e-6) / qmax)


def _outlier_activations(rng, m: int, k: int) -> np.ndarray:
    x = rng.standard_normal((m, k))
    x[:, rng.choice(k, size=max(1, k // 32), replace=False)] *= 20.0
    return x


def _pow2_signed(rng, idx: np.ndarray, base: float) -> np.ndarray:
    """Adversarial scales: 2**(i mod 8) times a random sign, times ``base``."""
    return np.exp2(idx % 8) * rng.choice([-1.0, 1.0], idx.shape) * base


def _adversarial_codes(rng, fmt: str, shape, *, extreme_rows=(), extreme_cols=()) -> np.ndarray:
    """Codes over the whole finite range, the format's largest magnitude in the given rows /
    columns, and (e4m3 formats) a sprinkling of subnormals."""
    qmax = _qmax(fmt)
    vals = rng.uniform(-qmax, qmax, shape) * rng.choice([1.0, 2.0**-4, 2.0**-8], shape)
    if fmt not in ("int8", "float8_e5m2"):
        f = FORMATS[fmt]
        smallest = float(f.decode_table[1])  # the smallest subnormal
        sub = rng.random(shape) < 0.1
        vals[sub] = rng.integers(1, 1 << f.mantissa_bits, sub.sum()) * smallest * rng.choice([-1.0, 1.0], sub.sum())
    for r in extreme_rows:
        vals[r, :] = qmax * rng.choice([-1.0, 1.0], shape[1])
    for c in extreme_cols:
        vals[:, c] = qmax * rng.choice([-1.0, 1.0], shape[0])
    if fmt == "float8_e5m2":  # no e5m2 subnormal codes (see the module docstring)
        smallest_normal = float(FORMATS[fmt].decode_table[1 << FORMATS[fmt].mantissa_bits])
        vals[np.abs(vals) < smallest_normal] = 0.0
    return _quantize(vals, fmt)


def _canon_scale(shape_name: str, per_axis: np.ndarray, orient: str) -> np.ndarray:
    """Canonical [M,1] / [1,N] (or [1,1] for a per-tensor arrival) from per-row/column values."""
    if shape_name in PER_TENSOR:
        return per_axis.reshape(-1)[:1].reshape(1, 1)
    return per_axis.reshape(-1, 1) if orient == "row" else per_axis.reshape(1, -1)


def _scaled_mm(case) -> dict:
    d, p = case.dims, case.p
    m, n, k = d["m"], d["n"], d["k"]
    fmt = p["quant_dtype"]
    per_token = p["a_scale_shape"] not in PER_TENSOR
    per_channel = p["b_scale_shape"] not in PER_TENSOR
    rng = np.random.default_rng(case.seed)
    if case.regime == "exact":
        return exact_problem("scaled_mm", rng, m=m, k=k, n=n, quant_dtype=fmt, per_token=per_token,
                             per_channel=per_channel, azp=p["azp"], bias=p["bias"])
    qmax = _qmax(fmt)
    azp = None
    if case.regime == "realistic":
        x = _outlier_activations(rng, m, k)
        w = rng.standard_normal((k, n)) * 0.02
        if p["azp"]:  # asymmetric: each row's [min, max] onto [-128, 127]
            x = x + rng.uniform(0.0, 3.0, (m, 1))  # shifted (post-activation-like) rows
            axes = 1 if per_token else None
            lo = np.minimum(x.min(axis=axes, keepdims=True), 0.0)
            hi = np.maximum(x.max(axis=axes, keepdims=True), 0.0)
            sa = _f32(np.maximum(hi - lo, 1e-6) / 255.0).reshape(-1, 1)
            azp = np.clip(np.rint(-128.0 - lo.reshape(-1, 1) / sa), -128, 127).astype(np.int64)
            a = np.clip(np.rint(x / sa) + azp, -128, 127).astype(np.int8)
        else:
            sa = _amax_scale(x, 1 if per_token else None, qmax).reshape(-1, 1)
            a = _quantize(x / sa, fmt)
        sb = _amax_scale(w, 0 if per_channel else None, qmax).reshape(1, -1)
        b = _quantize(w / sb, fmt)
        bias = _f32(rng.standard_normal(n) * 0.1) if p["bias"] else None
    else:  # adversarial
        a = _adversarial_codes(rng, fmt, (m, k), extreme_rows=(m - 1,))
        b = _adversarial_codes(rng, fmt, (k, n), extreme_cols=(0,))
        if m > 1:  # an all-zero row (int8 0 and fp8 code 0 are both +0); with M = 1 it would hide every bug
            a[0, :] = 0
        b[:, n - 1] = 0
        # |y| <= K * 2**14 * base_a * base_b * qmax**2 stays far below the fp16 range
        sa = _pow2_signed(rng, np.arange(m if per_token else 1), 2.0**-7 / qmax).reshape(-1, 1)
        sb = _pow2_signed(rng, np.arange(n if per_channel else 1), 2.0**-7 / qmax).reshape(1, -1)
        if p["azp"]:
            azp = rng.choice([-128, 127, 0], (m, 1) if per_token else (1, 1))
        bias = _f32(rng.standard_normal(n) * 100.0) if p["bias"] else None
    return {"a": a, "b": b, "quant_dtype": fmt, "a_scale": _canon_scale(p["a_scale_shape"], sa, "row"),
            "b_scale": _canon_scale(p["b_scale_shape"], sb, "col"),
            "azp": None if azp is None else (azp if per_token else azp.reshape(-1)[:1].reshape(1, 1)),
            "bias": bias}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _block(case) -> dict:
    d, p = case.dims, case.p
    m, n, k = d["m"], d["n"], d["k"]
    fmt = p["quant_dtype"]
    bk, bn = p["scale_block_k"], p["scale_block_n"]
    kb, nb = _cdiv(k, bk), _cdiv(n, bn)
    rng = np.random.default_rng(case.seed)
    if case.regime == "exact":
        return exact_problem("block_scaled_mm", rng, m=m, k=k, n=n, quant_dtype=fmt, block=(bk, bn), bias=p["bias"])
    qmax = _qmax(fmt)
    if case.regime == "realistic":
        x = _outlier_activations(rng, m, k)
        w = rng.standard_normal((k, n)) * 0.02
        xp = np.pad(x, ((0, 0), (0, kb * bk - k))).reshape(m, kb, bk)
        sa = _f32(np.maximum(np.abs(xp).max(axis=2), 1e-6) / qmax)
        wp = np.pad(w, ((0, kb * bk - k), (0, nb * bn - n))).reshape(kb, bk, nb, bn)
        sb = _f32(np.maximum(np.abs(wp).max(axis=(1, 3)), 1e-6) / qmax)
        a = _quantize(x / np.repeat(sa, bk, axis=1)[:, :k], fmt)
        b = _quantize(w / np.repeat(np.repeat(sb, bk, axis=0), bn, axis=1)[:k, :n], fmt)
        bias = _f32(rng.standard_normal(n) * 0.1) if p["bias"] else None
    else:
        a = _adversarial_codes(rng, fmt, (m, k), extreme_rows=(m - 1,))
        b = _adversarial_codes(rng, fmt, (k, n), extreme_cols=(0,))
        if m > 1:  # with M = 1 an all-zero activation row would zero the whole output
            a[0, :] = 0
        b[:min(bk, k), :] = 0  # an all-zero weight block row
        sa = _pow2_signed(rng, np.add.outer(np.arange(m), np.arange(kb)), 2.0**-7 / qmax)
        sb = _pow2_signed(rng, np.add.outer(np.arange(kb), 3 * np.arange(nb)), 2.0**-7 / qmax)
        bias = _f32(rng.standard_normal(n) * 100.0) if p["bias"] else None
    return {"a": a, "a_scale": sa, "b": b, "b_scale": sb, "block": (bk, bn), "quant_dtype": fmt, "bias": bias}


def _fp8_w8a16(case) -> dict:
    d, p = case.dims, case.p
    m, n, k = d["m"], d["n"], d["k"]
    fmt, act = p["quant_dtype"], p["act_dtype"]
    per_channel = p["scale_shape"] not in PER_TENSOR
    rng = np.random.default_rng(case.seed)
    if case.regime == "exact":
        return exact_problem("fp8_w8a16_gemm", rng, m=m, k=k, n=n, quant_dtype=fmt, per_channel=per_channel,
                             bias=p["bias"])
    qmax = _qmax(fmt)
    if case.regime == "realistic":
        x = round_to(_outlier_activations(rng, m, k), act)
        w = rng.standard_normal((k, n)) * 0.02
        # checkpoint scales stored in bf16 (8 significand bits): the kernel's float32 dequantization
        # of code x scale is then exact and rounds once, to the activation dtype
        sb = round_to(_amax_scale(w, 0 if per_channel else None, qmax), "bfloat16").reshape(1, -1)
        b = _quantize(w / sb, fmt)
        bias = round_to(rng.standard_normal(n) * 0.1, act) if p["bias"] else None
    else:
        x = rng.integers(-4, 5, (m, k)) * rng.choice([1.0, 0.5, 0.25], (m, k))
        x[:, rng.integers(k)] = 64.0  # one large channel
        if m > 1:  # an all-zero row; with M = 1 it would zero the whole output and hide every weight/scale bug
            x[0, :] = 0.0
        b = _adversarial_codes(rng, fmt, (k, n), extreme_cols=(0,))
        b[:, n - 1] = 0
        # dequantized weights |code x scale| <= 2: fp16-exact products, no overflow anywhere
        sb = _pow2_signed(rng, np.arange(n if per_channel else 1), 2.0 ** (1 - 7) / qmax)
        sb = round_to(sb, "bfloat16").reshape(1, -1)
        bias = round_to(rng.standard_normal(n) * 100.0, act) if p["bias"] else None
    return {"x": x, "b": b, "b_scale": sb.reshape(1, -1) if per_channel else sb.reshape(1, 1),
            "quant_dtype": fmt, "bias": bias}


MATERIALIZERS = {"scaled_mm": _scaled_mm, "block_scaled_mm": _block, "fp8_w8a16_gemm": _fp8_w8a16}


# ------------------------------------------------------------------------------------------ grids
def _allowed(adapter, key: str, value: int) -> bool:
    return value in adapter.tunables.get(key, (value,))


def _cfg(adapter, bm: int, bn: int, bk: int, split: int = 1) -> dict:
    cfg = {"block_m": bm, "block_n": bn, "block_k": bk}
    if split != 1 and "split_k" in adapter.tunables:
        cfg["split_k"] = split
    return cfg if all(_allowed(adapter, k, v) for k, v in cfg.items()) else {}


def _decode_twins(adapter, cases: list[Case], extra=()) -> list[Case]:
    """``fp8_path="decode"`` twins of a few grid cases (the same data through the in-kernel fp8
    decoding): the first case of each fp8 format, then ``extra``. The other cases run
    the device's default path (native on the CPU), so each format reaches both paths without the
    grid doubling. None where the adapter does not declare the decode path."""
    if "decode" not in adapter.tunables.get("fp8_path", ()):
        return []
    fp8 = [c for c in cases if c.cfg and c.p["quant_dtype"] in FP8]
    firsts = [next(c for c in fp8 if c.p["quant_dtype"] == fmt) for fmt in FP8
              if any(c.p["quant_dtype"] == fmt for c in fp8)]
    picks = dict.fromkeys(firsts + [c for c in extra if c in fp8])
    return [c.replace(config={**c.cfg, "fp8_path": "decode"}, why="the in-kernel fp8 decode path") for c in picks]


def _grid_scaled_mm(adapter) -> list[Case]:
    cases = []
    shapes = ((1, 48, 64), (33, 40, 96), (20, 64, 64))
    # every b_scale shape with every quant dtype; a_scale shapes, azp, storage, bias, dtypes cycle
    for i, (fmt, b_shape) in enumerate(itertools.product(QUANT, B_SCALE_SHAPES)):
        m, n, k = shapes[i % 3]
        azp = fmt == "int8" and i % 2 == 1
        out = "bfloat16" if i % 9 == 4 else ("float16", "float32")[i % 2]
        cfg = _cfg(adapter, 16, 32, (32, 64)[i % 2], split=2 if i % 7 == 3 else 1)
        cases.append(_SPEC["scaled_mm"].case(
            shape={"m": m, "n": n, "k": k},
            params={"quant_dtype": fmt, "a_scale_shape": A_SCALE_SHAPES[i % 3], "b_scale_shape": b_shape,
                    "b_storage": ("nk", "kn")[(i // 2) % 2], "azp": azp, "bias": i % 3 == 1, "out_dtype": out},
            config=cfg, regime=("exact", "exact", "adversarial", "realistic")[i % 4], seed=i,
        ))
    # the decode path: one case per fp8 format, and e4m3fn's first adversarial case (subnormal codes)
    # and first realistic one (the exact regime's per-tensor a_scale 0.25 makes a decode that halves
    # every value look like a_scale applied twice; a realistic scale tells the two apart)
    e4m3fn = [c for c in cases if c.p["quant_dtype"] == "float8_e4m3fn"]
    cases += _decode_twins(adapter, cases, extra=[next(c for c in e4m3fn if c.regime == r)
                                                  for r in ("adversarial", "realistic")
                                                  if any(c.regime == r for c in e4m3fn)])
    # the kernel's own tile choice, decode and prefill sizes
    for m, fmt in ((1, "float8_e4m3fn"), (40, "int8")):
        cases.append(_SPEC["scaled_mm"].case(
            shape={"m": m, "n": 64, "k": 128},
            params={"quant_dtype": fmt, "a_scale_shape": "[M,1]", "b_scale_shape": "[1,N]", "b_storage": "nk",
                    "azp": fmt == "int8", "bias": True, "out_dtype": "float16"},
            regime="exact", seed=100 + m,
        ))
    return cases


def _grid_block(adapter) -> list[Case]:
    # (scale block bk, bn, BLOCK_K): BLOCK_K < bk, = bk, > bk; several block sizes
    combos = ((64, 32, 32), (128, 64, 64), (32, 32, 32), (64, 64, 64), (128, 128, 128),
              (32, 64, 64), (32, 128, 128), (64, 32, 128))
    shapes = ((1, 40, 128), (17, 64, 192), (32, 64, 64))
    cases = []
    for i, ((bk, bn, block_k), fmt) in enumerate(itertools.product(combos, FP8[:2])):
        m, n, k = shapes[i % 3]
        if k < bk:
            k = 2 * bk
        if fmt == "float8_e5m2" and i % 4 == 1:
            fmt = "float8_e4m3fnuz"
        cfg = _cfg(adapter, 16, 32, block_k, split=2 if i % 5 == 2 else 1)
        cases.append(_SPEC["block_scaled_mm"].case(
            shape={"m": m, "n": n, "k": k},
            params={"quant_dtype": fmt, "scale_block_k": bk, "scale_block_n": bn,
                    "a_scale_major": ("row", "column")[(i // 2) % 2], "bias": i % 3 == 0,
                    "out_dtype": "bfloat16" if i == 5 else ("float16", "float32")[i % 2]},
            config=cfg, regime=("exact", "adversarial", "exact", "realistic")[i % 4], seed=i,
        ))
    cases += _decode_twins(adapter, cases)
    cases.append(_SPEC["block_scaled_mm"].case(
        shape={"m": 24, "n": 64, "k": 256},
        params={"quant_dtype": "float8_e4m3fn", "scale_block_k": 128, "scale_block_n": 128, "a_scale_major": "column",
                "bias": False, "out_dtype": "float16"},
        regime="exact", seed=200,
    ))
    return cases


def _grid_fp8_w8a16(adapter) -> list[Case]:
    cases = []
    arrivals = list(itertools.product(("nk", "kn"), ("contiguous", "transposed")))
    scale_shapes = SPECS[2].params["scale_shape"]
    # every arrival x scale shape on a square weight (orientation cannot be read off the shape)
    for i, ((layout, storage), sshape) in enumerate(itertools.product(arrivals, scale_shapes)):
        act = "bfloat16" if i % 10 == 7 else "float16"
        cases.append(_SPEC["fp8_w8a16_gemm"].case(
            shape={"m": (1, 19, 32)[i % 3], "n": 64, "k": 64},
            params={"quant_dtype": FP8[i % 3], "weight_layout": layout, "weight_storage": storage,
                    "scale_shape": sshape, "act_dtype": act, "bias": i % 3 == 2,
                    "out_dtype": ("float16", "float32")[i % 2] if act == "float16" else "bfloat16"},
            config=_cfg(adapter, 16, 32, (16, 32, 64)[i % 3], split=2 if i % 6 == 5 else 1),
            regime=("exact", "exact", "adversarial", "realistic")[i % 4], seed=i,
        ))
    cases += _decode_twins(adapter, cases)
    # non-square: each arrival twice, tails in M and N
    for j, ((layout, storage), sshape) in enumerate(zip(arrivals * 2, ("[N,1]", "[1,N]", "[N]", "[]", "[1]",
                                                                        "[N,1]", "[1,N]", "[N]"))):
        m, n, k = ((1, 40, 96), (33, 72, 64))[j % 2]
        cases.append(_SPEC["fp8_w8a16_gemm"].case(
            shape={"m": m, "n": n, "k": k},
            params={"quant_dtype": FP8[j % 3], "weight_layout": layout, "weight_storage": storage,
                    "scale_shape": sshape, "act_dtype": "float16", "bias": j % 2 == 0,
                    "out_dtype": ("float32", "float16")[j % 2]},
            config=_cfg(adapter, 16, 16, (32, 64)[j % 2]),
            regime=("exact", "realistic", "adversarial", "exact")[j % 4], seed=50 + j,
        ))
    cases.append(_SPEC["fp8_w8a16_gemm"].case(
        shape={"m": 4, "n": 48, "k": 128},
        params={"quant_dtype": "float8_e4m3fn", "weight_layout": "nk", "weight_storage": "contiguous",
                "scale_shape": "[N,1]", "act_dtype": "float16", "bias": True, "out_dtype": "float16"},
        regime="exact", seed=300,
    ))
    return cases


GRIDS = {"scaled_mm": _grid_scaled_mm, "block_scaled_mm": _grid_block, "fp8_w8a16_gemm": _grid_fp8_w8a16}


# ------------------------------------------------------------------------------------------ strategies
def _dims(draw, *, k_step: int, k_max: int) -> tuple[int, int, int]:
    m = draw(st.one_of(st.just(1), st.integers(1, 40)))
    k = k_step * draw(st.integers(1, k_max // k_step))
    square = draw(st.booleans())
    n = k if square else draw(st.sampled_from((16, 24, 32, 40, 64, 72)))
    return m, n, k


def _with_fp8_path(draw, space: CaseSpace, config: dict, fmt: str) -> dict:
    """``config`` with a drawn ``fp8_path`` (absent, the device's default, or one the kernel
    declares) where the codes are fp8 and the config names tiles (an empty config is the kernel's
    own choice, which fp8_path cannot join)."""
    paths = space.tunables.get("fp8_path", ())
    if not (config and paths and fmt in FP8):
        return config
    path = draw(st.sampled_from((None,) + paths))
    return config if path is None else {**config, "fp8_path": path}


@st.composite
def _st_scaled_mm(draw, adapter) -> Case:
    space = CaseSpace(_SPEC["scaled_mm"], adapter)
    fmt = draw(space.sample("quant_dtype"))
    m, n, k = _dims(draw, k_step=16, k_max=192)
    params = {
        "quant_dtype": fmt,
        "a_scale_shape": draw(space.sample("a_scale_shape")),
        "b_scale_shape": draw(space.sample("b_scale_shape")),
        "b_storage": draw(space.sample("b_storage")),
        "azp": draw(space.sample("azp")) if fmt == "int8" else draw(space.sample("azp", (False,))),
        "bias": draw(space.sample("bias")),
        "out_dtype": draw(space.sample("out_dtype")),
    }
    config = _with_fp8_path(draw, space, draw(configs_for(_SPEC["scaled_mm"], adapter, block_k=(32, 64, 128))), fmt)
    return _SPEC["scaled_mm"].case(shape={"m": m, "n": n, "k": k}, params=params, config=config,
                                   regime=draw(st.sampled_from(REGIMES)), seed=draw(st.integers(0, 2**16)))


@st.composite
def _st_block(draw, adapter) -> Case:
    space = CaseSpace(_SPEC["block_scaled_mm"], adapter)
    bk = draw(space.sample("scale_block_k"))
    bn = draw(space.sample("scale_block_n"))
    relation = draw(st.sampled_from(("eq", "gt", "lt")))
    block_k = block_k_relative(relation, bk)
    m = draw(st.one_of(st.just(1), st.integers(1, 40)))
    k = draw(st.sampled_from((bk, 2 * bk, 2 * bk + 32, 3 * bk)))
    n = k if draw(st.booleans()) and k <= 256 else draw(st.sampled_from((16, 40, 64, 72, 128)))
    params = {
        "quant_dtype": draw(space.sample("quant_dtype")),
        "scale_block_k": bk,
        "scale_block_n": bn,
        "a_scale_major": draw(space.sample("a_scale_major")),
        "bias": draw(space.sample("bias")),
        "out_dtype": draw(space.sample("out_dtype")),
    }
    config = draw(configs_for(_SPEC["block_scaled_mm"], adapter, block_k=(max(32, block_k),)))
    return _SPEC["block_scaled_mm"].case(shape={"m": m, "n": n, "k": k}, params=params,
                                         config=_with_fp8_path(draw, space, config, params["quant_dtype"]),
                                         regime=draw(st.sampled_from(REGIMES)), seed=draw(st.integers(0, 2**16)))


@st.composite
def _st_fp8_w8a16(draw, adapter) -> Case:
    space = CaseSpace(_SPEC["fp8_w8a16_gemm"], adapter)
    m, n, k = _dims(draw, k_step=16, k_max=192)
    act = draw(space.sample("act_dtype"))
    params = {
        "quant_dtype": draw(space.sample("quant_dtype")),
        "weight_layout": draw(space.sample("weight_layout")),
        "weight_storage": draw(space.sample("weight_storage")),
        "scale_shape": draw(space.sample("scale_shape")),
        "act_dtype": act,
        "bias": draw(space.sample("bias")),
        "out_dtype": draw(space.sample("out_dtype")),
    }
    config = draw(configs_for(_SPEC["fp8_w8a16_gemm"], adapter, block_k=(16, 32, 64, 128)))
    return _SPEC["fp8_w8a16_gemm"].case(shape={"m": m, "n": n, "k": k}, params=params,
                                        config=_with_fp8_path(draw, space, config, params["quant_dtype"]),
                                        regime=draw(st.sampled_from(REGIMES)), seed=draw(st.integers(0, 2**16)))


STRATEGIES = {"scaled_mm": _st_scaled_mm, "block_scaled_mm": _st_block, "fp8_w8a16_gemm": _st_fp8_w8a16}
