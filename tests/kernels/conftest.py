"""Helpers shared by the kernel tests (test modules import them from here).

The exact regime: every product and partial sum of the inputs is exact in float32, whatever the
accumulation order, so the only correct output is RNE(reference) in the output dtype, and outputs
are compared bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qkcheck.oracle.compare import compare


def expected_output(ref: np.ndarray, out_dtype: torch.dtype) -> torch.Tensor:
    """The only correct output in the exact regime: RNE of the exact value in the output dtype."""
    return torch.from_numpy(ref).to(out_dtype)


def assert_exact(out: torch.Tensor, ref: np.ndarray, out_dtype: torch.dtype, *, nan_equal: bool = False) -> None:
    """``out`` (on any device) has ``out_dtype``, the reference's shape and the bits of RNE(``ref``).
    A NaN fails, also where ``ref`` has one, unless ``nan_equal`` (NaN then matches NaN)."""
    __tracebackhide__ = True
    out = out.cpu()
    expected = expected_output(ref, out_dtype)
    assert out.dtype == out_dtype and out.shape == expected.shape, (out.dtype, out.shape, expected.shape)
    if torch.equal(out, expected):
        return
    divergence = compare(out.double().numpy(), expected.double().numpy(), 0.0)
    if divergence is None and nan_equal:
        return
    pytest.fail("kernel output is not RNE(reference):\n" + (divergence.summary() if divergence else "NaN mismatch"))
