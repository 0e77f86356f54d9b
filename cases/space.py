"""An adapter's case space: the cases of an op its kernel takes, as the adapter declares them
(``kernels.adapters.KernelAdapter``: ``params`` and ``layouts``, ``tunables``, ``dims``,
``constraint``, ``supports``), over the op's own space (``cases.spec.OpSpec``).

Everything that makes cases for an adapter goes through it:

- the gate grid (:meth:`CaseSpace.grid`): the family's grid moved inside the space (a parameter
  value the kernel does not take replaced by one it takes, a tunable it does not declare dropped,
  a dimension moved to the nearest size its rules allow; duplicates dropped), then covered: every
  parameter value and tunable value it declares, a tail in every tiled dimension (dim > tile and
  dim % tile != 0, as K % BLOCK_K != 0) and the op's own coverage goals (BLOCK_K against a
  scale block or group), each wherever some case inside the space can have it;
- the fuzz strategies (:meth:`CaseSpace.strategy`): the family draws parameter values from
  :meth:`CaseSpace.values` (inside by construction); what still falls outside is moved in with
  drawn choices, and only a draw that cannot be is rejected (hypothesis ``assume``), so shrinking
  never leaves the space either;
- the gate's corpus filter (:meth:`CaseSpace.reason`).

This module imports only ``cases.case`` of the project (and hypothesis).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from qkcheck.cases.hyp import assume
from qkcheck.cases.hyp import st

from qkcheck.cases.case import REGIMES, Case, CaseError

Pick = Callable[[str, tuple, Any], Any]  # (name, allowed values, current value) -> the value to take

MAX_BASES = 16  # grid cases tried as the base of a coverage case, per goal


def _member(value, values) -> bool:
    return any(value == v and type(value) is type(v) for v in values)


def undeclared(spec, adapter, case: Case) -> str | None:
    """Why ``case`` needs a contract ``adapter`` does not state, or None: an optional contract of
    the op (``spec.optional_contracts``) the adapter does not list in ``accepts``, or an opt-in
    parameter value (``spec.opt_in``) its ``params`` does not name."""
    accepts = tuple(getattr(adapter, "accepts", ()) or ())
    for name, needs in spec.optional_contracts.items():
        if name not in accepts:
            why = needs(case)
            if why:
                return f"{why}: {adapter.name} does not declare accepts=({name!r},)"
    declared = getattr(adapter, "params", {}) or {}
    for name, values in spec.opt_in.items():
        v = case.p.get(name)
        if _member(v, values) and not _member(v, tuple(declared.get(name, ()))):
            return f"{name}={v!r} is taken only where declared: {adapter.name} does not name it in params[{name!r}]"
    return None


def _first(name: str, values: tuple, current) -> Any:
    return values[0]


def _nearest(name: str, values: tuple, current) -> Any:
    """The value closest to ``current`` (numbers; ties: the smaller), else the first."""
    if isinstance(current, (int, float)) and not isinstance(current, bool) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return min(values, key=lambda v: (abs(v - current), v))
    return values[0]


def _rotating(index: int) -> Pick:
    def pick(name: str, values: tuple, current) -> Any:
        if isinstance(current, (int, float)) and not isinstance(current, bool) and name.startswith("block_"):
            return _nearest(name, values, current)
        return values[index % len(values)]
    return pick


class CaseSpace:
    """The cases of ``spec``'s op that ``adapter`` takes."""

    def __init__(self, spec, adapter):
        self.spec, self.adapter = spec, adapter
        self.params = {k: adapter.param_values(k, v) for k, v in spec.params.items()}
        for k, opt in spec.opt_in.items():  # opt-in values: only those the adapter names
            named = tuple(adapter.params.get(k, ()))
            self.params[k] = tuple(v for v in self.params[k] if not _member(v, opt) or _member(v, named))
        self.accepts = tuple(n for n in adapter.accepts if n in spec.optional_contracts)
        self.tunables = {k: tuple(v for v in vals if v in spec.tunables[k])
                         for k, vals in adapter.tunables.items() if k in spec.tunables}
        self._complete = [k for rule in spec.rules for k in getattr(rule, "config_keys", ()) if k in self.tunables]

    # ------------------------------------------------------------------ membership
    def values(self, name: str, among: Iterable | None = None) -> tuple:
        """The values of parameter ``name`` the kernel takes (those of ``among`` when given and
        any of them is taken)."""
        vals = self.params[name]
        if among is not None:
            narrowed = tuple(v for v in vals if _member(v, tuple(among)))
            return narrowed or vals
        return vals

    def sample(self, name: str, among: Iterable | None = None) -> st.SearchStrategy:
        """A strategy over :meth:`values` (nothing, when the kernel takes no value of ``name``)."""
        vals = self.values(name, among)
        return st.sampled_from(vals) if vals else st.nothing()

    def config_reason(self, cfg: dict) -> str | None:
        for key, value in cfg.items():
            if key not in self.tunables:
                return f"config names {key}, which {self.adapter.name} does not declare as a tunable"
            if value not in self.tunables[key]:
                return (f"{self.adapter.name} takes {key} in ({', '.join(map(str, self.tunables[key]))}), "
                        f"not {value!r}")
        return None

    def reason(self, case: Case) -> str | None:
        """Why ``case`` lies outside this space, or None."""
        if case.op != self.spec.op:
            return f"a {case.op} case is not a case of {self.adapter.name} ({self.spec.op})"
        try:
            self.spec.validate(case, declared=self.tunables)
        except CaseError as exc:
            return str(exc)
        return (self.config_reason(case.cfg) or undeclared(self.spec, self.adapter, case)
                or self.adapter.outside(case.p, case.dims, case.cfg))

    def contains(self, case: Case) -> bool:
        return self.reason(case) is None

    # ------------------------------------------------------------------ moving a case inside
    def _dim_steps(self, name: str, params: dict) -> list[int]:
        rule = self.adapter.dims.get(name)
        base = getattr(rule, "multiple", 1)
        extra = {8, 16, 32} | {v for v in params.values() if isinstance(v, int) and not isinstance(v, bool) and v > 1}
        return sorted({base} | {math.lcm(base, e) for e in extra})

    def _admit(self, name: str, value: int, step: int = 1) -> int | None:
        """The smallest size >= ``value`` (a multiple of ``step``) the adapter's rule for ``name``
        admits; the largest below when there is none above; None when it admits none near."""
        rule = self.adapter.dims.get(name)
        lo = getattr(rule, "min", None)
        v = max(value, lo or 0, step)
        v = -(-v // step) * step
        for _ in range(256):
            if self.adapter.dim_reason(name, v) is None:
                return v
            v += step
        v = -(-value // step) * step
        for _ in range(256):
            v -= step
            if v < 1:
                break
            if self.adapter.dim_reason(name, v) is None:
                return v
        return None

    def _case(self, **kw) -> Case:
        """``spec.case``, refusing (CaseError) a case that needs a contract the adapter does not
        state, as the op's own rules refuse what no adapter takes."""
        return self._declared(self.spec.case(**kw))

    def _declared(self, case: Case) -> Case:
        why = undeclared(self.spec, self.adapter, case)
        if why:
            raise CaseError(why)
        return case

    def _build(self, shape: dict, params: dict, cfg: dict, regime: str, seed: int, why: str) -> Case | None:
        for reg in [regime] + [r for r in REGIMES if r != regime]:
            try:
                case = self._case(shape=shape, params=params, config=cfg, regime=reg, seed=seed, why=why)
            except CaseError as exc:
                if "regime" in str(exc) or reg == regime:
                    continue
                return None
            if self.contains(case):
                return case
        return None

    def fit(self, case: Case, pick: Pick | None = None, *, keep_values: bool = False) -> Case | None:
        """``case`` moved inside the space (``case`` itself when it is inside), or None. Parameter
        values the kernel does not take are replaced (``pick`` chooses among those it takes), config
        keys it does not declare are dropped (a kernel without tunables runs the case with its own
        default), a value of a declared tunable it does not take is replaced (or, ``keep_values``,
        the case is given up), dimensions are moved to sizes its rules and the op's rules allow."""
        if self.contains(case):
            return case
        pick = pick or _first
        params = case.p
        for name, vals in self.params.items():
            if not vals:
                return None
            if not _member(params[name], vals):
                params[name] = pick(name, vals, params[name])
        cfg = {k: v for k, v in case.cfg.items() if k in self.tunables}
        for key, value in list(cfg.items()):
            if value not in self.tunables[key]:
                if keep_values:
                    return None
                cfg[key] = pick(key, self.tunables[key], value)
        if cfg:
            for key in self._complete:
                if key not in cfg:
                    cfg[key] = pick(key, self.tunables[key], None)
        dims = case.dims
        for name, value in dims.items():
            if self.adapter.dim_reason(name, value):
                moved = self._admit(name, value)
                if moved is None:
                    return None
                dims[name] = moved
        made = self._build(dims, params, cfg, case.regime, case.seed, case.why)
        if made is not None:
            return made
        for shape in self._repairs(dims, params):
            made = self._build(shape, params, cfg, case.regime, case.seed, case.why)
            if made is not None:
                return made
        return None

    def _repairs(self, dims: dict, params: dict) -> Iterable[dict]:
        """Shapes near ``dims``: one dimension moved up to a multiple of a step the op's or the
        kernel's rules may want, then every dimension moved so at once."""
        steps = {name: self._dim_steps(name, params) for name in dims}
        for name in reversed(list(dims)):
            for step in steps[name]:
                moved = self._admit(name, dims[name], step)
                if moved is not None and moved != dims[name]:
                    yield {**dims, name: moved}
        for i in range(max(len(s) for s in steps.values())):
            shape = {}
            for name, value in dims.items():
                s = steps[name][min(i, len(steps[name]) - 1)]
                shape[name] = self._admit(name, value, s) or value
            yield shape

    # ------------------------------------------------------------------ strategies
    def strategy(self, base: st.SearchStrategy) -> st.SearchStrategy:
        """``base``'s cases, each moved inside the space with drawn choices; one that cannot be is
        rejected (the fallback: families draw parameter values from :meth:`values` already)."""

        @st.composite
        def inside(draw) -> Case:
            case = draw(base)
            if self.contains(case):
                return case
            fitted = self.fit(case, lambda name, vals, cur: draw(st.sampled_from(vals)))
            assume(fitted is not None)
            return fitted

        return inside()

    # ------------------------------------------------------------------ grid and coverage
    def features(self, case: Case) -> set:
        """What ``case`` covers: its parameter and tunable values, its tails, the op's goals."""
        out = {("param", k, v) for k, v in case.params if len(self.params.get(k, ())) > 1}
        out |= {("tunable", k, v) for k, v in case.config}
        cfg, dims = case.cfg, case.dims
        for dim, tile in self.spec.tiles.items():
            t = cfg.get(tile)
            if t and dims[dim] > t and dims[dim] % t:
                out.add(("tail", dim, tile))
        out |= set(self.spec.features(case))
        out |= {("accepts", name) for name in self.accepts if self.spec.optional_contracts[name](case)}
        return out

    def goals(self) -> list[tuple]:
        """Every feature the grid should cover (those no case inside can have are left out)."""
        goals = [("param", k, v) for k, vals in self.params.items() if len(vals) > 1 for v in vals]
        goals += [("tunable", k, v) for k, vals in self.tunables.items() for v in vals]
        goals += [("tail", dim, tile) for dim, tile in self.spec.tiles.items() if tile in self.tunables]
        goals += list(getattr(self.spec, "goals", ()) or ())
        goals += [("accepts", name) for name in self.accepts]
        return goals

    def grid(self, raw: Iterable[Case]) -> list[Case]:
        """The family grid ``raw`` moved inside the space, distinct, then :meth:`cover`'s cases."""
        cases = []
        for i, case in enumerate(raw):
            fitted = self.fit(case, _rotating(i), keep_values=True)
            if fitted is not None:
                cases.append(fitted)
        cases = list(dict.fromkeys(cases))
        return cases + self.cover(cases)

    def _tail_sizes(self, dim: str, tile: int, params: dict) -> list[int]:
        sizes = set()
        for step in self._dim_steps(dim, params):
            if step % tile == 0:
                continue
            v = (tile // step + 1) * step
            for _ in range(3):
                if v % tile:
                    sizes.add(v)
                v += step
        return sorted(sizes)[:12]

    def _candidates(self, base: Case, goal: tuple) -> Iterable[Case | tuple]:
        kind = goal[0]
        if kind == "param":
            yield base.replace, {"params": {**base.p, goal[1]: goal[2]}}
        elif kind == "tunable":
            if base.cfg:
                yield base.replace, {"config": {**base.cfg, goal[1]: goal[2]}}
        elif kind == "tail":
            dim, tile = goal[1], goal[2]
            for t in sorted(self.tunables[tile], key=lambda v: v != base.cfg.get(tile)):
                for size in self._tail_sizes(dim, t, base.p):
                    yield base.replace, {"shape": {**base.dims, dim: size}, "config": {**base.cfg, tile: t}}
        elif kind == "accepts":  # a stated contract: one dimension moved off the op's strict rules
            for dim, value in base.dims.items():
                for step in (8, 16, 24, 32, 48):
                    yield base.replace, {"shape": {**base.dims, dim: value + step}}
        else:  # an op goal: any one parameter or tunable changed
            for key, vals in self.tunables.items():
                for v in vals:
                    if base.cfg:
                        yield base.replace, {"config": {**base.cfg, key: v}}
            for key, vals in self.params.items():
                for v in vals:
                    yield base.replace, {"params": {**base.p, key: v}}

    def cover(self, cases: list[Case]) -> list[Case]:
        """Cases that reach the :meth:`goals` ``cases`` miss, in goal order: first the tunable
        values no case has, several at once (the i-th case takes every tunable's i-th missing
        value), then each goal left, a grid case with one parameter, tunable or dimension changed
        (and moved inside)."""
        have = set().union(*(self.features(c) for c in cases)) if cases else set()
        seen = set(cases)
        added: list[Case] = []

        def take(case: Case) -> None:
            added.append(case)
            seen.add(case)
            have.update(self.features(case))

        with_cfg = [c for c in cases if c.cfg]
        missing = {k: [v for v in vals if ("tunable", k, v) not in have] for k, vals in self.tunables.items()}
        for i in range(max((len(v) for v in missing.values()), default=0)):
            if not with_cfg:
                break
            base = with_cfg[i % len(with_cfg)]
            cfg = {**base.cfg, **{k: vals[i] for k, vals in missing.items() if i < len(vals)}}
            try:
                candidate = base.replace(config=cfg, why="covers the declared tunable values")
            except CaseError:
                continue
            fitted = self.fit(candidate, _nearest, keep_values=True)
            if fitted is not None and fitted not in seen:
                take(fitted)
        for goal in self.goals():
            if goal in have:
                continue
            pool = with_cfg if goal[0] in ("tunable", "tail") else cases
            for base in pool[:MAX_BASES]:
                found = None
                for make, changes in self._candidates(base, goal):
                    try:
                        candidate = self._declared(make(**changes, why=f"covers {' '.join(map(str, goal))}"))
                    except CaseError:
                        candidate = self._loose(base, changes)
                        if candidate is None:
                            continue
                    fitted = self.fit(candidate, _nearest, keep_values=True)
                    if fitted is not None and fitted not in seen and goal in self.features(fitted):
                        found = fitted
                        break
                if found is not None:
                    take(found)
                    break
        return added

    def _loose(self, base: Case, changes: dict) -> Case | None:
        """A candidate the op's rules refuse as it stands: handed to :meth:`fit`'s repairs."""
        shape = changes.get("shape", base.dims)
        params = changes.get("params", base.p)
        cfg = changes.get("config", base.cfg)
        for dims in [shape, *self._repairs(shape, params)]:
            try:
                return self._case(shape=dims, params=params, config=cfg, regime=base.regime, seed=base.seed,
                                  why=base.why)
            except CaseError:
                continue
        return None


def space(adapter) -> CaseSpace:
    """``adapter``'s case space over its op's spec (looked up in the registry)."""
    from qkcheck.cases.registry import op_spec

    return CaseSpace(op_spec(adapter.op), adapter)
