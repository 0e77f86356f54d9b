"""The oracle's op families, one module each, and the records they define:

    w4a16       w4a16_gemm, w8a16_gemm
    scaled_mm   scaled_mm, block_scaled_mm, fp8_w8a16_gemm
    mxfp4       mxfp4_gemm
    nvfp4       nvfp4_gemm
    quant       per_token_quant, static_quant, per_token_group_quant, mx_quant, nvfp4_quant
    moe         fused_moe

Each family module holds ``REFERENCES``, a tuple of ``oracle.reference.OpReference``. They are
merged once, on first lookup, from the explicit ``FAMILIES`` tuple (a new family is one module
and one entry there). By op name:

    reference(op) -> OpReference          references() -> {op: OpReference}
    expect(op, problem, *, exact, compute_dtype, out_dtype)
    diagnose(op, problem, actual, *, exact, compute_dtype, out_dtype, context=None)
    make_problem(op, rng, *, m, k, n, style="exact", **params)      (oracle.exact)
    exact_problem(op, rng, *, m, k, n, **params)
    exact_regime_reason(op, problem, compute_dtypes=("float16", "bfloat16"))
"""
from __future__ import annotations

from functools import cache
from types import MappingProxyType
from typing import Mapping

import numpy as np

from qkcheck.oracle import exact as _exact
from qkcheck.oracle.ops import moe, mxfp4, nvfp4, quant, scaled_mm, w4a16
from qkcheck.oracle.reference import Finding, OpReference, Problem

FAMILIES = (w4a16, scaled_mm, mxfp4, nvfp4, quant, moe)


@cache
def references() -> Mapping[str, OpReference]:
    """Every family's records by op name; an op defined twice is an error."""
    found: dict[str, OpReference] = {}
    for family in FAMILIES:
        for ref in family.REFERENCES:
            if ref.op in found:
                raise RuntimeError(f"{family.__name__}.REFERENCES defines op {ref.op!r} again")
            found[ref.op] = ref
    return MappingProxyType(found)


def reference(op: str) -> OpReference:
    try:
        return references()[op]
    except (KeyError, TypeError):
        raise ValueError(f"op {op!r} has no reference (allowed: {', '.join(sorted(references()))})") from None


def expect(op: str, problem: Problem, *, exact: bool, compute_dtype: str, out_dtype: str):
    """``reference(op).expect(...)``: an ``Expectation`` (a ``QuantExpectation`` for quant ops)."""
    return reference(op).expect(problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)


def diagnose(op: str, problem: Problem, actual, *, exact: bool, compute_dtype: str, out_dtype: str,
             context: Mapping | None = None) -> list[Finding]:
    """``reference(op).diagnose(...)``."""
    return reference(op).diagnose(problem, actual, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype,
                                  context=context)


def _generating(op: str) -> OpReference:
    ref = references().get(op) if isinstance(op, str) else None
    if ref is None or ref.generate is None:
        allowed = [r.op for r in references().values() if r.generate is not None]
        raise ValueError(f"op {op!r} has no generator (allowed: {', '.join(allowed)})")
    return ref


def make_problem(op: str, rng: np.random.Generator, *, m: int, k: int, n: int, style: str = "exact", **params) -> dict:
    """``oracle.exact.make`` for ``op``'s record."""
    return _exact.make(_generating(op), rng, m=m, k=k, n=n, style=style, **params)


def exact_problem(op: str, rng: np.random.Generator, *, m: int, k: int, n: int, **params) -> dict:
    """``oracle.exact.exact`` for ``op``'s record."""
    return _exact.exact(_generating(op), rng, m=m, k=k, n=n, **params)


def exact_regime_reason(op: str, problem, compute_dtypes=_exact.EXACT_DTYPES) -> str | None:
    """``oracle.exact.regime_reason`` for ``op``'s record."""
    return _exact.regime_reason(reference(op), problem, compute_dtypes)
