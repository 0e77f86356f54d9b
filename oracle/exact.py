"""What the GEMM families' input generators share: the exact regime, and random draws for the
bounded regime (``random`` and the sign-``coherent`` draws the tightness checks use).

Exact regime (``style='exact'``): small-integer activations, codes drawn from values with few
significand bits, power-of-two scales that differ between neighbouring groups / blocks / rows /
columns, an integer bias. Every operand is then exact in float16 *and* bfloat16 (at most 8
significand bits, inside float16's range), every product is exact in float32, and for every
output element ``(|X| @ |W| + |b|)[m, n] <= 2**24 * Q[m, n]`` where ``Q`` is the smallest
nonzero bit any term of that element can have. So *every* partial sum, in any order, split-K
included, is an exact float32 value, scale multiplies of fp32 partials are exact (powers of two),
and the only correct output is ``RNE(reference)`` in the output dtype: bound zero, for every op
here (no op legitimately rounds twice: the single rounding is float32 -> output dtype).
``regime_reason`` checks these conditions for any problem and says which one fails.

Each family draws its own problems (``OpReference.generate``, its parameters and defaults in
``OpReference.generator_params``; the family's docstring lists them) from the shared draws here;
``make`` / ``exact`` check the arguments and run a record's generator (by op name:
``oracle.ops.make_problem`` / ``exact_problem``).

All draws come from the ``numpy.random.Generator`` passed in: the same seed gives the same bytes.
"""
from __future__ import annotations

import numpy as np

from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.numerics import round_to
from qkcheck.oracle.reference import OpReference

STYLES = ("exact", "random", "coherent")
EXACT_DTYPES = ("float16", "bfloat16")
# e2m1 values with at most 2 significand bits
E2M1_VALUES = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def lsb(v: np.ndarray) -> np.ndarray:
    """The value of the lowest set bit of each nonzero float64 (inf where v == 0)."""
    v = np.abs(np.asarray(v, np.float64))
    m, e = np.frexp(v)
    mant = (m * 2.0**53).astype(np.int64)
    low = mant & -mant
    with np.errstate(divide="ignore"):
        out = np.where(v > 0, np.ldexp(low.astype(np.float64), e - 53), np.inf)
    return out


def regime_reason(ref: OpReference, problem, compute_dtypes=EXACT_DTYPES) -> str | None:
    """None when ``problem`` of ``ref``'s op is in the exact regime for every dot dtype of
    ``compute_dtypes`` (see the module docstring), else a sentence naming the first violated
    condition."""
    ref.check(problem)
    ops = ref.operands(problem)
    x, w = ops.x, ops.w
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w))):
        return "an operand is NaN or inf"
    for c in compute_dtypes:
        for name, v in (("activations", x), ("weights", w)):
            if not np.array_equal(round_to(v, c), v):
                return f"the dequantized {name} are not exact in {c}"
    qx = lsb(x).min(axis=1, keepdims=True) if x.size else np.ones((x.shape[0], 1))
    qw = lsb(w).min(axis=0, keepdims=True) if w.size else np.ones((1, w.shape[1]))
    q = qx * qw
    b = np.zeros((1, w.shape[1])) if ops.bias is None else np.abs(ops.bias)[None, :]
    if ops.bias is not None:
        q = np.minimum(q, lsb(ops.bias)[None, :])
    total = np.abs(x) @ np.abs(w) + b
    if problem.get("azp") is not None:
        # the int32 sums of a and of azp * sum(b) are converted to fp32 separately
        a = np.asarray(problem["a"], np.float64) * ops.xs
        total = np.maximum(total, np.abs(a) @ np.abs(w) + b)
    q = np.where(np.isfinite(q), q, 1.0)
    over = total > 2.0**24 * q
    if over.any():
        i, j = np.argwhere(over)[0]
        return (f"output [{i}, {j}]: the term magnitudes sum to {total[i, j]:.6g} > 2**24 * {q[i, j]:.3g} "
                "(its smallest term bit), so a float32 partial sum could round")
    return None


def half16(v):
    """Values exact in both float16 and bfloat16 (what an A16 kernel may receive scales in)."""
    return round_to(round_to(v, "bfloat16"), "float16")


def f32(v):
    return np.asarray(v, np.float32).astype(np.float64)


def ints(rng, lo, hi, shape):
    return rng.integers(lo, hi + 1, shape)


def signs(rng, shape):
    return rng.choice([-1.0, 1.0], shape)


def encode(fmt: str, values) -> np.ndarray:
    return FORMATS[fmt].encode(np.asarray(values, np.float64), saturate=True)


def xmax(k: int, budget: float) -> int:
    """Largest integer activation magnitude (<= 4) keeping K * xmax * budget_per_term exact."""
    xm = int(min(4.0, 2.0**24 / max(k * budget, 1.0)))
    if xm < 1:
        raise ValueError(f"K={k} is too long for the exact regime with these codes (K * max term > 2**24 "
                         "quanta); use K <= 4096 or the bounded regime")
    return xm


def scale_span(k: int, per_term: float, most: int = 3) -> int:
    """Power-of-two scale span (exponent range size - 1) that keeps the sums exact."""
    room = 2.0**24 / max(k * per_term, 1.0)
    span = int(min(most, np.floor(np.log2(room)) if room >= 1 else -1))
    if span < 1:
        raise ValueError(f"K={k} is too long for the exact regime (no room for distinct power-of-two scales); "
                         "use a smaller K or the bounded regime")
    return span


def draw_bias(rng, style, n, enabled, scale=1.0):
    if not enabled:
        return None
    if style == "exact":
        return ints(rng, -8, 8, n).astype(np.float64)
    if style == "coherent":
        return np.abs(rng.standard_normal(n)) * scale
    return rng.standard_normal(n) * scale


def x16(rng, style, m, k, xm=4):
    if style == "exact":
        return ints(rng, -xm, xm, (m, k)).astype(np.float64)
    if style == "coherent":
        return half16(rng.uniform(0.5, 2.0, (m, k)))
    x = rng.standard_normal((m, k))
    if k:
        x[:, rng.integers(k)] *= 30.0  # one outlier channel
    return half16(x)


def e2m1_codes(rng, style, shape, sign=None):
    if style == "random":
        return rng.integers(0, 16, shape).astype(np.uint8)
    v = rng.choice(E2M1_VALUES, shape)
    if style == "exact":
        v = v * signs(rng, shape) * (rng.random(shape) > 0.1)
    elif sign is not None:
        v = v * sign
    return encode("float4_e2m1fn", v)


def make(ref: OpReference, rng: np.random.Generator, *, m: int, k: int, n: int, style: str = "exact", **params) -> dict:
    """A problem for ``ref``'s op of shape (m, k, n) drawn in ``style``: ``'exact'`` (see the module
    docstring), ``'random'`` (codes over the whole finite range, realistic-to-wide scales, an
    outlier activation channel) or ``'coherent'`` (positive activations, codes of one sign per
    scale group and column, integer codes within 8 steps of their zero point, scales differing
    by powers of two: no term of a group cancels another, so a wrong scale or zero point changes
    every element it touches by a definite amount)."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not allowed (allowed: {', '.join(STYLES)})")
    defaults = ref.generator_params
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"{ref.op} generator has no parameter(s) {unknown} (allowed: {', '.join(defaults)})")
    kw = {**defaults, **params}
    for name, v in (("m", m), ("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative int")
    return ref.generate(rng, style, m, k, n, **kw)


def exact(ref: OpReference, rng: np.random.Generator, *, m: int, k: int, n: int, **params) -> dict:
    """``make(..., style='exact')``, checked with ``regime_reason`` (raises ValueError naming the
    violated condition if the shape is out of the regime's reach)."""
    p = make(ref, rng, m=m, k=k, n=n, style="exact", **params)
    why = regime_reason(ref, p)
    if why:
        raise ValueError(f"{ref.op} at m={m}, k={k}, n={n}, {params}: not exact: {why}; use a smaller K")
    return p
