"""GEMM references, float64, from exactly dequantized operands.

Orientation everywhere: activations ``x[M, K]``, weights ``w[K, N]``, output ``y[M, N] = x @ w
(+ bias[N])``. References return the exact (unrounded) float64 result; rounding to the output
dtype and the legitimate error of a real kernel are ``oracle.bounds``' business. Each reference
has a bundled kernel twin of the same name in ``kernels/`` with the same argument meaning.
"""
from __future__ import annotations

import numpy as np

from oracle.errors import as_2d, check_group_size, check_shape

UINT4_SYMMETRIC_ZERO = 8  # "uint4b8": codes 0..15 with the implicit zero point 8


def dequant_int_grouped(q, scales, zeros=None, *, group_size: int) -> np.ndarray:
    """Dequantize integer codes grouped along K: ``w[k, n] = (q[k, n] - z[g, n]) * s[g, n]``
    with ``g = k // group_size``.

    q: ints [K, N] (uint4 codes 0..15); scales: float [K/G, N]; zeros: ints [K/G, N] (true zero
    points) or None for the symmetric uint4 convention (z = 8). group_size=-1: one group over K.
    ``group_size=1`` with per-k scales [K, N] expresses any per-row scale assignment (used by
    diagnosis hypotheses). Returns float64 [K, N].
    """
    q = as_2d("q", q)
    k, n = q.shape
    g = check_group_size(group_size, k)
    s = as_2d("scales", scales)
    check_shape("scales", s, (k // g, n), f"one row per group of {g} along K, one column per N")
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"scales[{bad[0]}, {bad[1]}] is {s[tuple(bad)]}; scales must be finite")
    if zeros is None:
        z = np.full_like(s, UINT4_SYMMETRIC_ZERO)
    else:
        z = as_2d("zeros", zeros)
        check_shape("zeros", z, s.shape, "zero points have the same shape as scales")
    w = (q.reshape(k // g, g, n) - z[:, None, :]) * s[:, None, :]
    return w.reshape(k, n)


def w4a16_gemm(x, q, scales, zeros=None, *, group_size: int, bias=None) -> np.ndarray:
    """Reference W4A16 GEMM: ``x @ dequant(q, scales, zeros) + bias``, exact in float64.

    x: float [M, K] (the activation values, already representable in fp16/bf16); q: uint4
    codes [K, N] in 0..15; scales: [K/G, N]; zeros: true zero points [K/G, N] or None (= 8);
    bias: [N] or None. M = 0 is valid and returns an empty [0, N] array.
    """
    x = as_2d("x", x)
    q = as_2d("q", q)
    if x.shape[1] != q.shape[0]:
        raise ValueError(
            f"x has K={x.shape[1]} columns but q has K={q.shape[0]} rows; "
            "x is [M, K] and q is [K, N] (transpose a [N, K] weight first)"
        )
    if q.size and (q.min() < 0 or q.max() > 15):
        raise ValueError(f"q holds codes in [{int(q.min())}, {int(q.max())}], uint4 codes are 0..15")
    w = dequant_int_grouped(q, scales, zeros, group_size=group_size)
    y = x @ w
    if bias is not None:
        b = np.asarray(bias, dtype=np.float64)
        if b.shape != (q.shape[1],):
            raise ValueError(f"bias has shape {b.shape}, expected ({q.shape[1]},) (one value per output column)")
        y = y + b
    return y
