"""pytest wiring for qkcheck: options, device selection, hypothesis profiles.

The device is chosen in pytest_configure, before any test module (and so any Triton kernel
module) is imported: on cpu, TRITON_INTERPRET=1 must be set before kernels are decorated.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=100, print_blob=True)
settings.register_profile(
    "nightly", deadline=None, max_examples=2000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("QKCHECK_HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qkcheck", "qkcheck: quantized-kernel correctness harness")
    group.addoption(
        "--device", default="auto", metavar="auto|cpu|cuda|xpu",
        help="where kernels run: auto = cuda if available, then xpu, else cpu (Triton interpreter)",
    )


def pytest_configure(config: pytest.Config) -> None:
    from kernels import device as _device

    try:
        config.qkcheck_device = _device.activate(config.getoption("--device"))
    except ValueError as exc:
        raise pytest.UsageError(f"--device: {exc}") from None


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """The concrete device kernels run on: 'cpu' (interpreter), 'cuda' or 'xpu'."""
    return pytestconfig.qkcheck_device
