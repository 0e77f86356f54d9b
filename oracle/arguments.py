"""Argument checkers shared by the oracle: every bad input raises ValueError/TypeError whose
message names the argument, the value received, what is allowed and how to fix it."""
from __future__ import annotations

import numpy as np


def as_2d(name: str, value, *, dtype=np.float64) -> np.ndarray:
    """``value`` as a 2-D array of ``dtype``; anything else raises naming ``name``."""
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}; reshape it to [rows, cols]")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def check_shape(name: str, arr: np.ndarray, want: tuple[int, ...], hint: str) -> None:
    if tuple(arr.shape) != tuple(want):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {tuple(want)} ({hint})")


def check_group_size(group_size: int, k: int, allowed=(32, 64, 128, -1)) -> int:
    """Return the effective group size (K for -1); raise when it does not divide K."""
    if not isinstance(group_size, (int, np.integer)) or isinstance(group_size, bool):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__} {group_size!r}")
    if group_size == -1:
        return k
    if group_size <= 0 or k % group_size:
        raise ValueError(
            f"group_size={group_size} must divide K={k} "
            f"(allowed: {', '.join(str(a) for a in allowed)}, or any positive divisor of K)"
        )
    return int(group_size)


def check_choice(name: str, value, allowed: tuple, *, fix: str = "", op: str = "") -> str:
    """``value`` when it is one of the strings ``allowed``, else ValueError naming ``name``, the
    value and what is allowed (``op``: prefixed as ``op: ...``; ``fix``: appended after ``; ``)."""
    if not isinstance(value, str) or value not in allowed:
        where = f"{op}: " if op else ""
        tail = f"; {fix}" if fix else ""
        raise ValueError(f"{where}{name}={value!r} is not allowed (allowed: {', '.join(map(repr, allowed))}){tail}")
    return value
