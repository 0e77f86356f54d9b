"""The op registry: every family's specs, materializers, grids and strategies, merged once on first
use from the explicit ``cases.families.FAMILIES`` tuple (nothing is registered at import time).

    op_spec(op) -> OpSpec              specs() -> {op: OpSpec}  (also ``OP_SPECS``)
    materialize(case) -> problem       grid(adapter) -> [Case]
    from_adapter(adapter) -> hypothesis strategy of the cases ``adapter`` can run
    validate_adapter(adapter)          its op exists, its layouts and tunables are the op's

This module sits above the families: they never import it, and ``cases.case`` / ``cases.spec``
import it only inside the functions that look an op up.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any, Callable, Mapping

from qkcheck.cases.case import Case, CaseError
from qkcheck.cases.spec import OpSpec

_TABLES = ("MATERIALIZERS", "GRIDS", "STRATEGIES")


@dataclass(frozen=True)
class _Registry:
    specs: Mapping[str, OpSpec]
    materializers: Mapping[str, Callable[[Case], dict]]
    grids: Mapping[str, Callable[[Any], list]]
    strategies: Mapping[str, Callable[[Any], Any]]


def build(families) -> _Registry:
    """Merge ``families`` (modules with ``SPECS`` and the ``_TABLES`` dicts): an op defined twice,
    an entry for an op no family specifies, or an op without a materializer is an error."""
    specs: dict[str, OpSpec] = {}
    tables: dict[str, dict] = {name: {} for name in _TABLES}
    for fam in families:
        for spec in fam.SPECS:
            if spec.op in specs:
                raise RuntimeError(f"{fam.__name__}.SPECS defines op {spec.op!r} again")
            specs[spec.op] = spec
        for name, merged in tables.items():
            for op, entry in getattr(fam, name, {}).items():
                if op in merged:
                    raise RuntimeError(f"{fam.__name__}.{name} defines {op!r} again")
                merged[op] = entry
    for name, merged in tables.items():
        stray = sorted(set(merged) - set(specs))
        if stray:
            raise RuntimeError(f"{name} has entries for {stray}, which no family's SPECS declares")
    unmade = sorted(set(specs) - set(tables["MATERIALIZERS"]))
    if unmade:
        raise RuntimeError(f"ops {unmade} have no materializer; add them to their family's MATERIALIZERS")
    return _Registry(*(MappingProxyType(t) for t in (specs, *tables.values())))


@cache
def _registry() -> _Registry:
    from qkcheck.cases.families import FAMILIES

    return build(FAMILIES)


def specs() -> Mapping[str, OpSpec]:
    """Every op's spec, by op name (read-only), in ``FAMILIES`` order."""
    return _registry().specs


def op_spec(op: str) -> OpSpec:
    try:
        return _registry().specs[op]
    except KeyError:
        raise CaseError(f"unknown op {op!r} (allowed: {', '.join(sorted(specs()))})") from None


def materialize(case: Case) -> dict:
    """Canonical NumPy inputs for ``case`` (the problem its op's reference takes)."""
    op_spec(case.op)  # an unknown op raises CaseError naming the known ones
    return _registry().materializers[case.op](case)


def case_space(adapter):
    """``adapter``'s case space (``cases.space.CaseSpace``) over its op's spec."""
    from qkcheck.cases.space import CaseSpace

    return CaseSpace(op_spec(adapter.op), adapter)


def grid(adapter) -> list[Case]:
    """The deterministic gate grid of ``adapter``'s op, generated inside the case space ``adapter``
    declares: the family's grid moved inside it, then covered (every declared parameter and
    tunable value, a tail in every tiled dimension, the op's goals; ``cases.space``). [] if none."""
    make = _registry().grids.get(adapter.op)
    return case_space(adapter).grid(make(adapter)) if make else []


def from_adapter(adapter):
    """A hypothesis strategy of the cases ``adapter`` can run: its family's strategy, drawing
    inside the case space the adapter declares (``cases.space``)."""
    strategies = _registry().strategies
    try:
        make = strategies[adapter.op]
    except KeyError:
        raise ValueError(f"no case strategy for op {adapter.op!r} (have: {', '.join(strategies)})") from None
    return case_space(adapter).strategy(make(adapter))


def validate_adapter(adapter) -> None:
    """An adapter must declare an op that exists and only layouts/tunables that op has."""
    from qkcheck.kernels.adapters import AdapterError

    known = specs()
    if adapter.op not in known:
        raise AdapterError(f"adapter {adapter.name!r}: op {adapter.op!r} is unknown (allowed: {', '.join(sorted(known))})")
    spec = known[adapter.op]
    layouts = spec.params.get("layout", ())
    bad = sorted(set(adapter.layouts) - set(layouts))
    if bad:
        raise AdapterError(f"adapter {adapter.name!r}: declares layouts {bad} that {adapter.op} does not have "
                           f"(allowed: {', '.join(layouts)})")
    bad = sorted(set(adapter.tunables) - set(spec.tunables))
    if bad:
        raise AdapterError(f"adapter {adapter.name!r}: declares tunables {bad} that {adapter.op} does not have "
                           f"(allowed: {', '.join(spec.tunables)})")
    for name, values in adapter.params.items():
        if name not in spec.params:
            raise AdapterError(f"adapter {adapter.name!r}: declares params[{name!r}], which {adapter.op} does not have "
                               f"(allowed: {', '.join(spec.params)})")
        if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list, frozenset, set)):
            raise AdapterError(f"adapter {adapter.name!r}: params[{name!r}] must be a tuple of values, got {values!r}")
        bad = [v for v in values if not any(v == w and type(v) is type(w) for w in spec.params[name])]
        if bad:
            raise AdapterError(f"adapter {adapter.name!r}: params[{name!r}] names {bad}, which {adapter.op} does not "
                               f"have (allowed: {', '.join(map(repr, spec.params[name]))})")
        if not adapter.param_values(name, spec.params[name]):
            raise AdapterError(f"adapter {adapter.name!r}: takes no value of {name!r} (params and layouts exclude each other)")
    bad = sorted(set(adapter.accepts) - set(spec.optional_contracts))
    if bad:
        raise AdapterError(f"adapter {adapter.name!r}: accepts {bad}, which {adapter.op} does not have (allowed: "
                           f"{', '.join(spec.optional_contracts) or 'none: the op has no optional contracts'})")
    bad = sorted(set(adapter.dims) - set(spec.shape_keys))
    if bad:
        raise AdapterError(f"adapter {adapter.name!r}: declares dims {bad} that {adapter.op} does not have "
                           f"(allowed: {', '.join(spec.shape_keys)})")
    for key, values in adapter.tunables.items():
        bad = [v for v in values if v not in spec.tunables.get(key, ())]
        if key in spec.tunables and bad:
            raise AdapterError(f"adapter {adapter.name!r}: tunables[{key!r}] names {bad}, which {adapter.op} does not "
                               f"allow (allowed: {', '.join(map(str, spec.tunables[key]))})")
    if not callable(adapter.conventions):
        from qkcheck.oracle.ops import reference

        try:
            reference(adapter.op).check_conventions(adapter.conventions_for({}))
        except ValueError as exc:
            raise AdapterError(f"adapter {adapter.name!r}: {exc}") from None


def __getattr__(name: str):
    if name == "OP_SPECS":  # the read-only mapping of specs(), built on first access
        return specs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
