"""The compiler warm-up that a case-runner process runs while it waits for its first case."""
from __future__ import annotations

import pytest

from qkcheck.kernels.triton import warmup


@pytest.mark.gpu
def test_first_compile_compiles_and_runs_its_kernel_on_the_device(device):
    if device == "cpu":
        pytest.skip("the CPU interpreter compiles nothing: first_compile does nothing there")
    warmup.first_compile(device)  # raises unless the kernel ran and incremented its counter
    warmup.first_compile(device)  # the second time from the in-process cache
