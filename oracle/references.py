"""Per-op references as data: how to compute an op's exact output from a *problem* (a mapping of
canonical NumPy inputs and parameters), and the bound a correct kernel stays within.

A problem for ``w4a16_gemm`` holds ``x [M,K]``, ``q [K,N]`` (uint4 codes), ``scales [K/G,N]``,
``zeros [K/G,N] | None``, ``group_size``, ``bias [N] | None``. Diagnosis hypotheses rewrite a
problem and run the same reference, so a reference must depend on nothing but its problem.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from oracle import gemm
from oracle.bounds import gemm_bound
from oracle.numerics import round_to, wide_float

Problem = Mapping[str, object]


@dataclass(frozen=True)
class Reference:
    op: str
    compute: Callable[[Problem], np.ndarray]
    bound: Callable[[Problem, np.ndarray, str, str], np.ndarray]
    axis_names: tuple[str, str] = ("row", "column")


def _w4a16(p: Problem) -> np.ndarray:
    return gemm.w4a16_gemm(p["x"], p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"], bias=p.get("bias"))


def _w4a16_bound(p: Problem, y: np.ndarray, compute_dtype: str, out_dtype: str) -> np.ndarray:
    w = gemm.dequant_int_grouped(p["q"], p["scales"], p.get("zeros"), group_size=p["group_size"])
    return gemm_bound(np.asarray(p["x"], np.float64), w, y, bias=p.get("bias"),
                      compute_dtype=compute_dtype, out_dtype=out_dtype)


REFERENCES: dict[str, Reference] = {
    r.op: r
    for r in (
        Reference("w4a16_gemm", _w4a16, _w4a16_bound, ("row (m)", "column (n)")),
    )
}


def reference(op: str) -> Reference:
    try:
        return REFERENCES[op]
    except KeyError:
        raise ValueError(f"op {op!r} has no reference (allowed: {', '.join(sorted(REFERENCES))})") from None


@dataclass(frozen=True)
class Expectation:
    """What a correct kernel must return: ``expected`` within ``bound``; ``unit`` is the output
    ULP at the expected value (the ratio unit where the bound is zero)."""

    exact_value: np.ndarray  # unrounded float64 result
    expected: np.ndarray
    bound: np.ndarray
    unit: np.ndarray
    exact_regime: bool


def expect(op: str, problem: Problem, *, exact: bool, compute_dtype: str, out_dtype: str) -> Expectation:
    """Expected output and per-element bound. Exact regime: RNE(y) in the output dtype, bound 0.
    Bounded regime: y itself with the op's derived bound."""
    ref = reference(op)
    y = ref.compute(problem)
    unit = wide_float(out_dtype).ulp(y)
    if exact:
        return Expectation(y, round_to(y, out_dtype), np.zeros_like(y), unit, True)
    return Expectation(y, y, ref.bound(problem, y, compute_dtype, out_dtype), unit, False)
