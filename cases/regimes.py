"""Input regimes: turn a Case into canonical NumPy inputs (a *problem* for ``oracle.references``).

- ``exact``: small-integer activations, power-of-two scales distinct per group (2**(g mod 8)
  times a random sign), integer bias — every partial sum is exact in float32, so the only correct
  output is RNE(reference) and the tolerance is zero.
- ``realistic``: GPTQ/AWQ-checkpoint-like scales (amax/7.5 of normal weights, fp16), zero points
  near 8, normal activations with a few large outlier channels.
- ``adversarial``: per-group scales spanning 2**(g mod 8) with random signs, zero points at the
  extremes 0 and 15, an all-zero group, activations with values near the dtype's large end.
All draws come from ``numpy.random.default_rng(seed)``: the same case gives the same bytes.
"""
from __future__ import annotations

import numpy as np

from qkcheck.oracle.numerics import round_to


def _w4a16(case) -> dict:
    d, p = case.dims, case.p
    m, n, k = d["m"], d["n"], d["k"]
    g = k if p["group_size"] == -1 else p["group_size"]
    groups = k // g
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
        q[zero_group * g:(zero_group + 1) * g] = 8 if z is None else np.repeat(z[zero_group:zero_group + 1], g, axis=0)
        x = rng.standard_normal((m, k)) * 4
        x[:, rng.integers(k)] = 60000.0 / (16 * g * 2.0**7 * max(groups, 1))  # a large, still finite, channel
        bias = rng.standard_normal(n) * 100 if p["bias"] else None
    # values must be representable in the dtypes the kernel receives them in
    x = round_to(x, act)
    s = round_to(s, act)
    if bias is not None:
        bias = round_to(bias, act)
    return {"x": x, "q": q, "scales": s, "zeros": z, "group_size": p["group_size"], "bias": bias}


MATERIALIZERS = {"w4a16_gemm": _w4a16}


def _with_families() -> None:
    from qkcheck.cases import families

    MATERIALIZERS.update(families.collect("MATERIALIZERS"))


_with_families()


def materialize(case) -> dict:
    """Canonical NumPy inputs for ``case`` (the problem its op's reference takes)."""
    return MATERIALIZERS[case.op](case)
