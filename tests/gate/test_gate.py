"""The gate: the regression corpus plus the deterministic grid, for every selected kernel
(``--kernels``, default ``bundled``). A case fails when any check fails; the exit code gates."""
from __future__ import annotations

import pytest

from cases.corpus import load_corpus
from cases.grid import grid
from cases.plugin import execute, in_shard, record, selected_adapters, unavailable


def supports(adapter, case) -> bool:
    layout = case.p.get("layout")
    if adapter.layouts and layout is not None and layout not in adapter.layouts:
        return False
    return all(k in adapter.tunables and v in adapter.tunables[k] for k, v in case.config)


def for_adapter(adapter, case):
    """The case as this adapter runs it: a kernel without tunables runs it with no config."""
    return case if adapter.tunables or not case.config else case.replace(config={})


def compile_group(adapter, case) -> str:
    """Cases that share a kernel, its params and its config share compiled kernel variants (the
    shape changes no constexpr but a few of Triton's integer specializations): under
    ``--dist loadgroup`` (the CLI's choice with ``-n``) such a group runs on one xdist worker, so a
    variant is compiled once per run instead of once per worker."""
    return f"{adapter.name}|{sorted(case.p.items())}|{sorted(case.cfg.items())}"


def pytest_generate_tests(metafunc):
    if "unavailable_spec" in metafunc.fixturenames:
        items = unavailable(metafunc.config)
        metafunc.parametrize("unavailable_spec,reason", items or [pytest.param(None, None, marks=pytest.mark.unused)],
                             ids=[s for s, _ in items] or ["none"])
        return
    if "gate_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    corpus = load_corpus()
    params = []
    for adapter in selected_adapters(config):
        cases = [for_adapter(adapter, c) for c in [c for c in corpus if c.op == adapter.op] + grid(adapter)]
        for case in dict.fromkeys(cases):  # distinct, in order
            if supports(adapter, case) and in_shard(case.id, config.qkcheck_shard):
                params.append(pytest.param(adapter, case, id=f"{adapter.name}::{case.id}",
                                           marks=pytest.mark.xdist_group(compile_group(adapter, case))))
    metafunc.parametrize("adapter,gate_case", params or [pytest.param(None, None, marks=pytest.mark.unused)])


def test_gate(adapter, gate_case, device, pytestconfig):
    result = execute(pytestconfig, gate_case, adapter)
    record(pytestconfig, result)
    if result.status == "skip":
        pytest.skip(result.skip_reason)
    if result.status == "fail":
        pytest.fail(result.summary(), pytrace=False)


def test_unavailable_kernels(unavailable_spec, reason):
    """A selected kernel spec that cannot run here (an engine not installed) is a visible skip."""
    pytest.skip(f"{unavailable_spec}: {reason}")
