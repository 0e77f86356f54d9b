"""The fuzzer: hypothesis explores each selected kernel's case space within ``--qkcheck-budget``
(the engine: ``qkcheck.cases.fuzz``); a failure is saved the moment it is found
(``<case>.found.json``), shrunk, saved as a replayable case file (replacing the found one) and
printed with its replay command. The plugin parametrizes ``fuzz_adapter, fuzz_stream`` (one
stream per xdist worker by default)."""
from __future__ import annotations

from qkcheck.cases.plugin import check_fuzz_stream


def test_fuzz(fuzz_adapter, fuzz_stream, qkcheck_device, pytestconfig, request):
    check_fuzz_stream(pytestconfig, request, fuzz_adapter, fuzz_stream)
