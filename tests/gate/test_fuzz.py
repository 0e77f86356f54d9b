"""The fuzzer: hypothesis explores each selected kernel's case space within ``--budget``; a
failure is shrunk to a minimal case, saved as a replayable case file and printed with its
one-line replay command."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from cases.plugin import execute, record, selected_adapters
from cases.strategies import from_adapter

BATCH = 20  # examples per hypothesis run; runs repeat with new seeds until the budget is spent


def pytest_generate_tests(metafunc):
    if "fuzz_adapter" in metafunc.fixturenames:
        adapters = selected_adapters(metafunc.config)
        metafunc.parametrize("fuzz_adapter", adapters, ids=[a.name for a in adapters])


def test_fuzz(fuzz_adapter, device, pytestconfig):
    budget = pytestconfig.qkcheck_budget
    deadline = time.monotonic() + budget
    failing: dict = {}
    checked = {"n": 0}

    @settings(max_examples=BATCH, deadline=None, database=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(case=from_adapter(fuzz_adapter))
    def explore(case):
        result = execute(pytestconfig, case, fuzz_adapter, diagnose_failures=False)
        checked["n"] += 1
        if result.status == "fail":
            failing["case"] = case
            raise AssertionError(result.summary())

    batch = 0
    while time.monotonic() < deadline:
        try:
            seed(pytestconfig.getoption("--fuzz-seed") * 100_003 + batch)(explore)()
        except AssertionError:
            case = failing["case"]  # the last failing example hypothesis ran is the shrunk one
            result = execute(pytestconfig, case, fuzz_adapter)
            record(pytestconfig, result)
            pytest.fail(f"fuzz found a failure after {checked['n']} cases (shrunk):\n{result.summary()}", pytrace=False)
        batch += 1
    print(f"fuzz {fuzz_adapter.name}: {checked['n']} cases in {budget:.0f}s budget, no failure")
