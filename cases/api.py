"""The scripting API, for those who drive qkcheck from Python instead of the CLI or pytest:

    import qkcheck

    adapters = qkcheck.resolve_kernels("my_adapters.py")           # or "bundled", "zoo:<name>", a module
    results = qkcheck.run_cases(qkcheck.gate_cases(adapters[0]), adapters[0], device="cpu")
    failed = [r for r in results if r.status == "fail"]
    outcomes = qkcheck.fuzz(adapters, budget="30s", device="cpu")   # one FuzzOutcome per adapter

Results are ``qkcheck.cases.runner.Result`` records (``status``: pass / fail / skip; ``summary()``;
``to_dict()`` is a line of the results file, ``qkcheck.reports.store.write_results`` writes them
and ``qkcheck report`` renders them). The device is activated on first use: on ``cpu`` that sets
``TRITON_INTERPRET=1``, which must happen before any Triton kernel module is imported, so call
these before importing your kernels (or set the variable yourself).
"""
from __future__ import annotations

from typing import Iterable

from qkcheck.cases.case import Case
from qkcheck.cases.gate import gate_cases as _gate_cases
from qkcheck.kernels.adapters import KernelAdapter

__all__ = ["Case", "KernelAdapter", "resolve_kernels", "gate_cases", "run_cases", "fuzz"]


def _activate(device: str) -> str:
    from qkcheck.kernels import device as _device

    return _device.activate(device)


def _duration(budget) -> float:
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if budget <= 0:
            raise ValueError(f"budget={budget!r} must be positive (seconds, or a string such as '30s', '5m')")
        return float(budget)
    from qkcheck.cases.plugin import parse_duration

    return parse_duration(budget, "budget")


def resolve_kernels(specs: str | KernelAdapter | Iterable[str | KernelAdapter], *, device: str = "auto") -> list[KernelAdapter]:
    """The adapters named by one spec or several (as ``--kernels`` takes them: ``bundled``, ``zoo``,
    ``zoo:<name>``, ``bundled:<name>``, an engine name, ``path/to/adapters.py``, a module path) or
    given as adapters, each validated against its op. Activates ``device`` first (the bundled and
    zoo kernels are Triton modules)."""
    from qkcheck.cases.registry import validate_adapter
    from qkcheck.kernels.catalog import resolve

    _activate(device)
    if isinstance(specs, (str, KernelAdapter)):
        specs = [specs]
    adapters = []
    for spec in specs:
        found = [spec] if isinstance(spec, KernelAdapter) else resolve(spec)
        for a in found:
            validate_adapter(a)
            adapters.append(a)
    return adapters


def gate_cases(adapter: KernelAdapter, shard: tuple[int, int] | None = None) -> list[Case]:
    """The gate's cases for ``adapter``: the regression corpus of its op, then its grid, as the
    adapter runs them (``shard``: (i, n), 1-based, a deterministic part of them)."""
    return _gate_cases(adapter, shard)


def run_cases(cases: Iterable[Case], adapters: KernelAdapter | Iterable[KernelAdapter], *, device: str = "auto",
              timeout: float | None = None, diagnose: bool = True) -> list:
    """Run every case against every adapter of its op, in this process; one Result per
    (case, adapter), in order. ``timeout``: seconds per case (None: none). For crash isolation run
    the CLI or the pytest plugin with ``--isolate on`` (their case runner is a child process)."""
    from qkcheck.cases import isolation

    dev = _activate(device)
    adapters = [adapters] if isinstance(adapters, KernelAdapter) else list(adapters)
    return [isolation.run_in_process(c, a, dev, timeout=timeout, diagnose_failures=diagnose)
            for c in cases for a in adapters if a.op == c.op]


def fuzz(adapters: KernelAdapter | Iterable[KernelAdapter], budget="60s", *, device: str = "auto", seed: int = 0,
         siblings: int = 1, shrink_budget: float | None = None, timeout: float | None = None) -> list:
    """Fuzz each adapter for ``budget`` (seconds or '30s', '5m') in this process; one
    ``qkcheck.cases.fuzz.FuzzOutcome`` per adapter (``failure``: the shrunk failing Case or None).
    Save a failure with ``outcome.failure.save(path)``; it replays with ``qkcheck replay``."""
    from qkcheck.cases import isolation
    from qkcheck.cases.fuzz import fuzz_adapter

    dev = _activate(device)
    seconds = _duration(budget)
    adapters = [adapters] if isinstance(adapters, KernelAdapter) else list(adapters)

    def execute(case, adapter, *, diagnose_failures=True):
        return isolation.run_in_process(case, adapter, dev, timeout=timeout, diagnose_failures=diagnose_failures)

    return [fuzz_adapter(a, execute, budget=seconds, siblings_per_draw=siblings, shrink_budget=shrink_budget,
                         first_seed=seed) for a in adapters]
