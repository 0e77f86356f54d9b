"""Wide float rounding agrees with numpy (float16/float32) and ml_dtypes (bfloat16) bit for bit."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from qkcheck.oracle.numerics import WIDE_FLOATS, round_to, wide_float

INDEPENDENT = {"float16": np.float16, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def _samples(rng):
    x = rng.standard_normal(20000) * np.exp2(rng.integers(-140, 140, 20000))
    # exact ties of every format: midpoints between neighbours
    edges = np.array([0.0, -0.0, np.inf, -np.inf, 1 + 2**-11, 1 + 2**-8, 65519.99, 65520.0, 3.4e38, 1e-45, 6e-8])
    return np.concatenate([x, edges])


@pytest.mark.parametrize("name", sorted(WIDE_FLOATS))
def test_round_matches_independent_conversion(name):
    x = _samples(np.random.default_rng(0))
    with np.errstate(over="ignore"):
        want = x.astype(INDEPENDENT[name]).astype(np.float64)
    # the arithmetic path (the format's parameters only) against the libraries' conversions
    np.testing.assert_array_equal(wide_float(name).round_arithmetic(x), want)
    np.testing.assert_array_equal(round_to(x, name), want)


@pytest.mark.parametrize("name", ["float16", "float32"])
def test_native_rounding_equals_the_arithmetic_path_at_float64_ties(name):
    """float16/float32 round through NumPy's cast: it must round float64 once, like the arithmetic
    path, also just off the midpoints (a cast through a narrower float first would round twice)."""
    f = wide_float(name)
    rng = np.random.default_rng(1)
    base = f.round_arithmetic(rng.standard_normal(5000) * np.exp2(rng.integers(-30, 16, 5000)))
    half_ulp = f.ulp(base) / 2
    x = np.concatenate([base + half_ulp, base - half_ulp, base + half_ulp * (1 + 2.0**-40),
                        base + half_ulp * (1 - 2.0**-40), [f.max + f.ulp(f.max) / 2, f.min_subnormal / 2]])
    np.testing.assert_array_equal(f.round(x), f.round_arithmetic(x))


@pytest.mark.parametrize("name", sorted(WIDE_FLOATS))
def test_max_matches_finfo(name):
    finfo = ml_dtypes.finfo(INDEPENDENT[name])
    assert wide_float(name).max == float(finfo.max)
    assert wide_float(name).min_subnormal == float(finfo.smallest_subnormal)


def test_unknown_dtype_names_allowed_ones():
    with pytest.raises(ValueError, match=r"dtype 'half'.*allowed: float16, bfloat16, float32"):
        round_to(1.0, "half")
