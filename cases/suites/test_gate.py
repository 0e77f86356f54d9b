"""The gate: the regression corpus plus the deterministic grid, for every selected kernel
(``--qkcheck-kernels``, default ``bundled``, or a ``qkcheck(kernels=...)`` marker). A case fails
when any check fails; the exit code gates. The plugin parametrizes ``adapter, gate_case``."""
from __future__ import annotations

import pytest

from qkcheck.cases.plugin import check_gate_case


def test_gate(adapter, gate_case, qkcheck_device, pytestconfig):
    check_gate_case(pytestconfig, adapter, gate_case)


def test_unavailable_kernels(unavailable_spec, reason):
    """A selected kernel spec that cannot run here (an engine not installed) is a visible skip."""
    pytest.skip(f"{unavailable_spec}: {reason}")
