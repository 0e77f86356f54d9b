"""The wide float dtypes kernels compute and write in (float16, bfloat16, float32), as data,
with exact round-to-nearest-even from float64.

These are not storage formats of quantized values (those live in ``oracle.formats``); they are
what activations are given in and what outputs are rounded to. Each is an IEEE-754-style binary
format: ``mantissa_bits`` explicit fraction bits, ``min_exp`` the exponent of the smallest normal
(2**min_exp), ``max_exp`` that of the largest binade; overflow rounds to ±inf as IEEE does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WideFloat:
    name: str
    mantissa_bits: int
    min_exp: int
    max_exp: int

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-(p) with p = mantissa_bits + 1 significand bits: |fl(x) - x| <= u |x| for normal x."""
        return 2.0 ** -(self.mantissa_bits + 1)

    @property
    def max(self) -> float:
        return (2.0 - 2.0 ** -self.mantissa_bits) * 2.0**self.max_exp

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exp - self.mantissa_bits)

    @property
    def native(self):
        """NumPy's own dtype of this format where it has one (float16, float32), else None."""
        return {"float16": np.float16, "float32": np.float32}.get(self.name)

    def round(self, x) -> np.ndarray:
        """RNE of float64 values to this format, returned as float64 (no double rounding).

        float16 and float32 use NumPy's conversion, which rounds float64 straight to the format
        (round-to-nearest-even, overflow to inf, subnormals); the tests check it against
        :meth:`round_arithmetic` bit for bit. bfloat16 has no NumPy dtype: arithmetic path."""
        native = self.native
        if native is None:
            return self.round_arithmetic(x)
        with np.errstate(over="ignore"):
            return np.asarray(x, dtype=np.float64).astype(native).astype(np.float64)

    def round_arithmetic(self, x) -> np.ndarray:
        """RNE of float64 values to this format computed from the format's parameters alone."""
        x = np.asarray(x, dtype=np.float64)
        finite = np.isfinite(x)
        xf = np.where(finite, x, 0.0)
        _, e = np.frexp(xf)  # xf = m * 2**e, 0.5 <= |m| < 1
        # spacing of representable values around x: 2**(exp - mantissa_bits), exp = e - 1,
        # floored at the subnormal spacing
        exp = np.maximum(e - 1, self.min_exp)
        step = np.ldexp(1.0, exp - self.mantissa_bits)
        r = np.rint(xf / step) * step  # np.rint is round-half-to-even; xf/step is exact
        over = np.abs(r) > self.max
        r = np.where(over, np.copysign(np.inf, xf), r)
        return np.where(finite, r, x)

    def ulp(self, x) -> np.ndarray:
        """Spacing of this format at |x| (the gap to the next value away from zero)."""
        x = np.abs(np.asarray(x, dtype=np.float64))
        _, e = np.frexp(np.where(np.isfinite(x), x, self.max))
        exp = np.maximum(e - 1, self.min_exp)
        return np.ldexp(1.0, exp - self.mantissa_bits)


WIDE_FLOATS: dict[str, WideFloat] = {
    f.name: f
    for f in (
        WideFloat("float16", mantissa_bits=10, min_exp=-14, max_exp=15),
        WideFloat("bfloat16", mantissa_bits=7, min_exp=-126, max_exp=127),
        WideFloat("float32", mantissa_bits=23, min_exp=-126, max_exp=127),
    )
}


def wide_float(name: str) -> WideFloat:
    """The record for ``float16``, ``bfloat16`` or ``float32``; anything else raises."""
    try:
        return WIDE_FLOATS[name]
    except KeyError:
        raise ValueError(
            f"dtype {name!r} is not a compute/output dtype qkcheck models "
            f"(allowed: {', '.join(WIDE_FLOATS)}); pass the torch dtype's name without 'torch.'"
        ) from None


def round_to(x, dtype: str) -> np.ndarray:
    """RNE of ``x`` (float64) to ``dtype`` (float16/bfloat16/float32), as float64."""
    return wide_float(dtype).round(x)
