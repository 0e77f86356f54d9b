"""The harness's own tests drive the runner, the CLI and the fuzzer with small kernels on the CPU
interpreter (the configuration this repository's CI runs). On a GPU session (``--device cuda``)
they are skipped, with this reason: there the gate and fuzz suites (tests/gate) and the kernel
tests (tests/kernels) are what run compiled."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if getattr(config, "qkcheck_device", "cpu") == "cpu":
        return
    here = __file__.rsplit("/", 1)[0]
    skip = pytest.mark.skip(reason=f"harness self-tests run on the CPU interpreter; this session runs on "
                                   f"{config.qkcheck_device} (tests/gate and tests/kernels run compiled)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)
