"""What an op's cases may hold, as data: ``OpSpec`` (shape dimensions, parameter domains, kernel
config tunables, cross-field rules, the output contract) and ``Output``; the rules several
families share (``config_complete``, ``k_multiple_of``); the BLOCK_K-to-block relation
(``block_k_relative``); and the strategy building blocks (``tunables_for``, ``configs_for``).

A family builds its cases with ``SPEC.case(...)``, which validates against that spec: no family
touches the registry (``cases.registry``). This module imports only ``cases.case`` of the project.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from qkcheck.cases.hyp import st

from qkcheck.cases.case import Case, CaseError, freeze

RELATIONS = ("lt", "eq", "gt")  # BLOCK_K smaller than, equal to, larger than a block along K


@dataclass(frozen=True)
class Output:
    """One output of an op, as its contract promises it: name, shape, dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def gemm_outputs(dims, params) -> tuple[Output, ...]:
    """One ``out [M, N]`` in ``params["out_dtype"]``."""
    return (Output("out", (dims["m"], dims["n"]), params["out_dtype"]),)


@dataclass(frozen=True)
class OpSpec:
    """An op's case space and contract.

    ``compute_dtype`` and ``out_dtype`` name the dtypes the interpreter probes and the oracle's
    bound need; ``outputs`` is the output contract (dtype, shape) the runner checks. How the
    outputs are judged and diagnosed is the op's oracle record's business (``oracle.ops``).
    """

    op: str
    shape_keys: tuple[str, ...]
    params: dict[str, tuple[Any, ...]]  # name -> allowed values
    tunables: dict[str, tuple[int | str, ...]]  # config name -> allowed values (sizes, counts, or path names)
    rules: tuple[Callable[[Case], str | None], ...] = ()  # each returns an error or None
    compute_dtype: Callable[[dict], str] = lambda p: p["act_dtype"]
    out_dtype: Callable[[dict], str] = lambda p: p["out_dtype"]
    outputs: Callable[[dict, dict], tuple[Output, ...]] = gemm_outputs
    # True where the kernel converts values to fp8 inside (in-kernel activation quantization):
    # the interpreter's fp8-conversion defect applies even though no output is fp8
    fp8_conversion: Callable[[dict], bool] = lambda p: False
    # shape dimension -> the config tile along it ({"m": "block_m", "k": "block_k"}): the grid
    # covers a tail (dim > tile, dim % tile != 0) in each wherever the adapter's space allows one
    tiles: Mapping[str, str] = field(default_factory=dict)
    # (case) -> coverage features the grid should reach beyond params, tunables and tails, e.g.
    # ("block_k_vs_scale_block", "lt"): each one some case inside an adapter's space can have is
    # covered by its grid (``cases.space``)
    features: Callable[[Case], Iterable[tuple]] = lambda case: ()
    goals: tuple[tuple, ...] = ()  # every feature ``features`` can name, for the grid to cover
    # contracts beyond the strict default an adapter may state (``KernelAdapter.accepts``): name ->
    # (case) -> why the case needs it (None: it does not). Such cases are valid cases of the op
    # (a case file replays them), but lie outside every adapter's space that does not accept it.
    optional_contracts: Mapping[str, Callable[[Case], str | None]] = field(default_factory=dict)
    # parameter values an adapter takes only when its ``params`` names them (not by default)
    opt_in: Mapping[str, tuple] = field(default_factory=dict)

    def case(self, *, shape: Mapping[str, int], params: Mapping[str, Any], config: Mapping[str, int] | None = None,
             regime: str = "exact", seed: int = 0, why: str = "") -> Case:
        """A validated case of this op. The shape is frozen in ``shape_keys`` order (the case id
        lists it so), params and config sorted by name."""
        order = {k: i for i, k in enumerate(self.shape_keys)}
        dims = tuple(sorted(shape.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        case = Case(self.op, dims, freeze(params), freeze(config), regime, int(seed), why)
        case.validate(self)
        return case

    def validate(self, case: Case, declared: Mapping | None = None) -> None:
        """Raise ``CaseError`` naming the field, the value, what is allowed and a fix. ``declared``:
        the tunables of the kernel the case is for (config-completeness rules apply against them)."""
        if case.op != self.op:
            raise CaseError(f"a {case.op!r} case checked against the spec of {self.op!r}")
        dims, params, cfg = case.dims, case.p, case.cfg
        if set(dims) != set(self.shape_keys):
            raise CaseError(f"{self.op}: shape has keys {sorted(dims)}, expected {list(self.shape_keys)}")
        for k, v in dims.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise CaseError(f"{self.op}: shape[{k!r}]={v!r} must be a non-negative integer")
        missing = sorted(set(self.params) - set(params))
        if missing:
            raise CaseError(f"{self.op}: params is missing {missing} (each of {sorted(self.params)} is required)")
        for k, v in params.items():
            if k not in self.params:
                raise CaseError(f"{self.op}: unknown param {k!r} (allowed: {sorted(self.params)})")
            allowed = self.params[k]
            if v not in allowed or type(v) is not type(allowed[0]):
                raise CaseError(f"{self.op}: params[{k!r}]={v!r} is not allowed (allowed: {', '.join(map(repr, allowed))})")
        for k, v in cfg.items():
            if k not in self.tunables:
                raise CaseError(f"{self.op}: unknown config key {k!r} (tunables: {sorted(self.tunables)})")
            if v not in self.tunables[k] or isinstance(v, bool):
                raise CaseError(f"{self.op}: config[{k!r}]={v!r} is not allowed (allowed: {', '.join(map(str, self.tunables[k]))})")
        for rule in self.rules:
            msg = rule(case, declared) if hasattr(rule, "config_keys") else rule(case)
            if msg:
                raise CaseError(f"{self.op}: {msg}")


# ------------------------------------------------------------------------------ shared rules


def config_complete(*required: str) -> Callable[..., str | None]:
    """A rule: a non-empty config gives every one of ``required`` that the kernel declares as a
    tunable (an empty config is the kernel's own default choice; the other tunables stay
    optional). Checked against an adapter (``rule(case, declared=adapter.tunables)``, as
    ``cases.space`` does); without one (a case on its own, e.g. read from a file) a config that
    gives only some of them is a valid case, for a kernel that takes only those."""
    names = ", ".join(required[:-1]) + f" and {required[-1]}" if len(required) > 1 else required[0]

    def rule(case: Case, declared: Mapping | None = None) -> str | None:
        cfg = case.cfg
        if declared is None or not cfg:
            return None
        missing = [k for k in required if k in declared and k not in cfg]
        if missing:
            return (f"config {cfg} lacks {', '.join(missing)}: give {names} together (those declared), "
                    "or an empty config for the kernel's default")
        return None

    rule.__name__ = "config_gives_" + "_and_".join(required)
    rule.config_keys = required
    return rule


GEMM_CONFIG_COMPLETE = config_complete("block_m", "block_n", "block_k")


def k_multiple_of(step: int, what: str | None = None) -> Callable[[Case], str | None]:
    """A rule: shape K is a multiple of ``step`` (``what`` says why, e.g. the scale block)."""

    def rule(case: Case) -> str | None:
        k = case.dims["k"]
        if k % step:
            lo = k - k % step
            return f"K={k} must be a multiple of {what or step}; pick K = {max(step, lo)} or {lo + step}"
        return None

    rule.__name__ = f"k_multiple_of_{step}"
    return rule


# ------------------------------------------------------------------- BLOCK_K against a block


def block_k_relative(relation: str, block: int) -> int:
    """BLOCK_K half of (``"lt"``), equal to (``"eq"``) or twice (``"gt"``) a block of ``block``
    elements along K: a quantization group, a scale block."""
    if relation not in RELATIONS:
        raise ValueError(f"relation={relation!r} is not a BLOCK_K relation (allowed: {', '.join(RELATIONS)})")
    return {"lt": block // 2, "eq": block, "gt": block * 2}[relation]


# ------------------------------------------------------------------------ strategy builders


def tunables_for(spec: OpSpec, adapter) -> dict[str, tuple[int, ...]]:
    """The tunables ``adapter`` declares, with the values it declares that ``spec`` allows: only
    these are ever drawn (a tunable the adapter does not declare is not its kernel's)."""
    return {k: tuple(v for v in vals if v in spec.tunables.get(k, ())) for k, vals in adapter.tunables.items()
            if k in spec.tunables}


def configs_for(spec: OpSpec, adapter, *, block_k: Iterable[int], max_tile: int = 64) -> st.SearchStrategy[dict]:
    """GEMM tile configs ``adapter`` accepts, from the tunables it declares only: ``block_m`` and
    ``block_n`` among its tiles up to ``max_tile`` (its smallest where none is), ``block_k`` among
    the ``block_k`` candidates it allows (any of its BLOCK_Ks when none is), ``split_k`` (given
    only when not 1) among its split factors. An adapter without tunables gets the empty config
    (its kernel's own choice)."""
    tun = tunables_for(spec, adapter)
    if not tun:
        return st.just({})
    block_ks = [b for b in block_k if b in tun.get("block_k", ())] or list(tun.get("block_k", ()))

    def tiles(key):
        vals = tun.get(key, ())
        return [b for b in vals if b <= max_tile] or ([min(vals)] if vals else [])

    @st.composite
    def draw_config(draw) -> dict:
        config = {}
        for key, vals in (("block_m", tiles("block_m")), ("block_n", tiles("block_n")), ("block_k", block_ks)):
            if vals:
                config[key] = draw(st.sampled_from(vals))
        split = draw(st.sampled_from(tun.get("split_k", (1,))))
        if split != 1:
            config["split_k"] = split
        return config

    return draw_config()
