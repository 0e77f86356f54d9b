"""The one comparison engine: ``compare(actual, expected, bound) -> Divergence | None``.

NaN/Inf *positions* are checked before values (a NaN where a number is expected is a violation
whatever the bound). A value violates when ``|actual - expected| > bound``. Everything a report
needs to show where and how the output diverges is computed here, once, and carried by the
``Divergence``: nothing downstream recomputes it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

HEATMAP_MAX = 64  # heatmaps are max-pooled to at most this many rows/columns
FIRST_INDICES = 10
PERIODS = (2, 4, 8, 16, 32, 64, 128, 256)


def _residue_pattern(hit: np.ndarray, name: str) -> str:
    """Describe which positions along one axis are hit: all, a few, a periodic band, or a count."""
    n = hit.size
    idx = np.flatnonzero(hit)
    if idx.size == 0:
        return f"no {name}s"
    if idx.size == n:
        return f"all {n} {name}s"
    for p in PERIODS:
        if p >= n:
            break
        res = np.zeros(p, dtype=bool)
        res[idx % p] = True
        # periodic: every position with a hit residue is hit, and at least two periods are seen
        if res.all() or n < 2 * p:
            continue
        if np.array_equal(hit, res[np.arange(n) % p]):
            r = np.flatnonzero(res)
            if r.size == r[-1] - r[0] + 1:
                band = f"{r[0]}" if r.size == 1 else f"{r[0]}..{r[-1]}"
            else:
                band = "{" + ", ".join(map(str, r)) + "}"
            return f"{name}s with {name} mod {p} in {band} ({idx.size} of {n})"
    if idx.size <= 8:
        return f"{name}s {', '.join(map(str, idx))} ({idx.size} of {n})"
    if idx.size == idx[-1] - idx[0] + 1:
        return f"{name}s {idx[0]}..{idx[-1]} ({idx.size} of {n})"
    return f"{idx.size} of {n} {name}s"


def describe_pattern(mask: np.ndarray, axis_names: tuple[str, ...] = ("row", "column")) -> str:
    """A sentence naming which rows/columns of a 2-D violation mask are hit (periodic bands too)."""
    if mask.ndim == 1:
        return _residue_pattern(mask, axis_names[0])
    rows = _residue_pattern(mask.any(axis=1), axis_names[0])
    cols = _residue_pattern(mask.any(axis=0), axis_names[1])
    return f"{rows}; {cols}"


def _pool_max(a: np.ndarray, limit: int = HEATMAP_MAX) -> np.ndarray:
    """Max-pool a 2-D array so neither side exceeds ``limit`` (ceil-sized bins)."""
    if a.ndim == 1:
        a = a[None, :]
    out = a
    for axis in (0, 1):
        n = out.shape[axis]
        if n > limit:
            edges = np.linspace(0, n, limit + 1).astype(int)
            out = np.maximum.reduceat(out, edges[:-1], axis=axis)
    return out


@dataclass
class Divergence:
    """How an output violates its bound. ``ratio`` is |error| / bound; where the bound is zero
    (exact regime) it is |error| in units of ``unit`` (the output ULP at the expected value)."""

    shape: tuple[int, ...]
    count: int
    total: int
    nonfinite_mismatches: int
    first_indices: list[tuple[int, ...]]
    max_abs_error: float
    max_ratio: float
    worst_index: tuple[int, ...]
    pattern: str
    heatmap: list[list[float]]  # max-pooled ratio, at most HEATMAP_MAX x HEATMAP_MAX
    row_max_ratio: list[float]  # max-pooled along columns
    col_max_ratio: list[float]
    bound_kind: str  # "exact" (bound 0, ratio in ULPs) or "bounded"
    notes: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0

    def summary(self) -> str:
        """numpy-style failure text: header, mismatch count, first indices, max errors, pattern."""
        unit = "output ULPs (bound 0, exact regime)" if self.bound_kind == "exact" else "x bound"
        lines = [
            f"Mismatched elements: {self.count} / {self.total} ({100 * self.fraction:.3g}%)",
            f"Max abs error: {self.max_abs_error:.6g} at {list(self.worst_index)}",
            f"Max error/bound: {self.max_ratio:.4g} {unit}",
            f"First mismatches at: {', '.join(str(list(i)) for i in self.first_indices)}",
            f"Pattern: {self.pattern}",
        ]
        if self.nonfinite_mismatches:
            lines.insert(1, f"NaN/Inf positions differ at {self.nonfinite_mismatches} elements")
        lines += self.notes
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Divergence":
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        d["worst_index"] = tuple(d["worst_index"])
        d["first_indices"] = [tuple(i) for i in d["first_indices"]]
        return cls(**d)


def _finite_or_none(v: float) -> float:
    return float(v) if np.isfinite(v) else float("inf")


def compare(actual, expected, bound, *, unit=None, axis_names=("row", "column")) -> Divergence | None:
    """Compare ``actual`` with ``expected`` element-wise against ``bound`` (scalar or array).

    actual, expected: same shape, any float dtype (compared in float64). bound: >= 0. unit: the
    denominator used for the error ratio where the bound is 0 (default: 1). Returns None when
    every element is within bound and NaN/Inf positions agree; otherwise a ``Divergence``.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"actual has shape {a.shape} but expected has shape {e.shape}; compare equal shapes")
    b = np.broadcast_to(np.asarray(bound, dtype=np.float64), e.shape)
    if np.any(b < 0) or np.any(np.isnan(b)):
        raise ValueError("bound must be >= 0 and not NaN everywhere")
    if a.size == 0:
        return None
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    nonfinite_bad = (nan_a != nan_e) | (inf_a != inf_e) | (inf_a & inf_e & (np.sign(a) != np.sign(e)))
    both_finite = np.isfinite(a) & np.isfinite(e)
    with np.errstate(invalid="ignore"):
        err = np.where(both_finite, np.abs(a - e), 0.0)
    value_bad = both_finite & (err > b)
    bad = nonfinite_bad | value_bad
    count = int(bad.sum())
    if count == 0:
        return None
    den = np.where(b > 0, b, 1.0 if unit is None else np.broadcast_to(np.asarray(unit, np.float64), e.shape))
    ratio = np.where(both_finite, err / den, 0.0)
    ratio = np.where(nonfinite_bad, np.inf, ratio)
    ratio = np.where(bad | both_finite, ratio, 0.0)
    worst = np.unravel_index(int(np.argmax(np.where(bad, ratio, -1.0))), e.shape)
    first = [tuple(int(i) for i in ix) for ix in np.argwhere(bad)[:FIRST_INDICES]]
    view = ratio if ratio.ndim == 2 else ratio.reshape(1, -1) if ratio.ndim == 1 else ratio.reshape(-1, ratio.shape[-1])
    finite_view = np.where(np.isinf(view), np.nan, view)
    cap = np.nanmax(finite_view) if np.any(np.isfinite(finite_view)) else 1.0
    view = np.where(np.isinf(view), cap if cap > 0 else 1.0, view)
    mask2d = bad if bad.ndim == 2 else bad.reshape(view.shape)
    return Divergence(
        shape=tuple(int(s) for s in e.shape),
        count=count,
        total=int(e.size),
        nonfinite_mismatches=int(nonfinite_bad.sum()),
        first_indices=first,
        max_abs_error=float(err[bad].max()) if value_bad.any() else float("nan"),
        max_ratio=_finite_or_none(ratio[bad].max()),
        worst_index=tuple(int(i) for i in worst),
        pattern=describe_pattern(mask2d, axis_names),
        heatmap=_pool_max(view).tolist(),
        row_max_ratio=_pool_max(view.max(axis=1)[None, :], 256)[0].tolist(),
        col_max_ratio=_pool_max(view.max(axis=0)[None, :], 256)[0].tolist(),
        bound_kind="exact" if not np.any(b > 0) else "bounded",
    )
