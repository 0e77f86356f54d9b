"""Per-element error bounds for a *correct* kernel, derived from the op, never pulled from the air.

Notation: u_c, u_32, u_o are the unit roundoffs (2**-p) of the compute dtype, float32 and the
output dtype; eta_c, eta_o their smallest subnormals. For a GEMM ``y = x @ W + b`` over K with
exact operands (x given in the compute dtype, W the exactly dequantized weights):

- ``P[i, j] = sum_k |x[i,k]| |W[k,j]|`` (the absolute product sum).
- operand rounding: W is dequantized (in float32), then rounded to the compute dtype for the
  tensor-core dot: ``|fl_c(fl_32(W)) - W| <= (u_c + u_32 (1 + u_c)) |W| + eta_c / 2``, so the
  weight term is ``T_w = (u_c + 2 u_32) P + (eta_c / 2) sum_k |x[i,k]|``. Activations that must be
  re-quantized add their own term (given by the op's reference).
- products of two compute-dtype values are exact in float32 (fp16: 11+11 <= 24 significand
  bits; bf16: 8+8), so only accumulation remains.
- float32 accumulation of n = K + 1 terms (the bias included) in *any* order — sequential, tree,
  split-K partials summed afterwards: ``T_acc = gamma_n (P' + |b|)`` with
  ``gamma_n = n u_32 / (1 - n u_32)`` (Higham, Accuracy and Stability of Numerical Algorithms,
  2nd ed., §3.1, eq. 3.4) and ``P' = (1 + u_c + 2 u_32) P`` the perturbed product sum.
- output rounding: ``T_o = u_o (|y| + T_w + T_acc) + eta_o / 2``.

``bound = T_w + T_acc + T_o``. In the *exact regime* none of these roundings happens (every
partial sum is exact), the only correct output is RNE(y) and the bound is zero.
"""
from __future__ import annotations

import numpy as np

from oracle.numerics import wide_float

U32 = wide_float("float32").unit_roundoff


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u) for float32 accumulation of n terms."""
    nu = n * U32
    if nu >= 1:
        raise ValueError(f"K={n} is too long for a float32 accumulation bound (n*u >= 1)")
    return nu / (1 - nu)


def gemm_bound(
    x: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    *,
    bias: np.ndarray | None,
    compute_dtype: str,
    out_dtype: str,
) -> np.ndarray:
    """Per-element bound for ``y = x @ w (+ bias)`` computed as the module docstring states.

    x: float64 [M, K] (values exact in ``compute_dtype``); w: float64 [K, N] exact dequantized
    weights; y: float64 [M, N] the exact result. Returns float64 [M, N].
    """
    c, o = wide_float(compute_dtype), wide_float(out_dtype)
    ax, aw = np.abs(x), np.abs(w)
    p = ax @ aw
    t_w = (c.unit_roundoff + 2 * U32) * p + (c.min_subnormal / 2) * ax.sum(axis=1, keepdims=True)
    b = np.zeros((1, w.shape[1])) if bias is None else np.abs(np.asarray(bias, np.float64)).reshape(1, -1)
    k = x.shape[1]
    t_acc = gamma(k + 1) * ((1 + c.unit_roundoff + 2 * U32) * p + b)
    t_o = o.unit_roundoff * (np.abs(y) + t_w + t_acc) + o.min_subnormal / 2
    return t_w + t_acc + t_o
