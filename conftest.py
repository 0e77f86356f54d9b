"""pytest wiring for qkcheck: the harness plugin (options, device, results), hypothesis profiles.

The device is chosen in pytest_configure, before any test module (and so any Triton kernel
module) is imported: on cpu, TRITON_INTERPRET=1 must be set before kernels are decorated.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["qkcheck.cases.plugin"]

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


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """The concrete device kernels run on: 'cpu' (interpreter), 'cuda' or 'xpu'."""
    return pytestconfig.qkcheck_device


# The tests that run qkcheck in processes of their own (seconds to a minute each) go first, so the
# two xdist workers end together instead of one finishing a long test alone at the end.
_END_TO_END_FIRST = ("tests/test_packaging.py", "tests/harness/", "tests/test_pytest_plugin.py", "tests/gate/")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.nodeid.startswith(_END_TO_END_FIRST))  # stable: order kept within each
