"""The adapter protocol: how any kernel — bundled, from the zoo, from an engine, or a user's
own — is plugged into the harness.

An adapter declares the op it implements, the layouts and tunables it supports, how to turn the
canonical problem into its tensors (``pack``), and how to call it **by keyword** (``call``).
Where the kernel is an external callable, ``signature`` lists the parameter names the adapter
binds, in order; the harness checks them against the callable's real signature, so an API change
(a new positional parameter taking another's slot) fails loudly instead of binding silently.

The adapter also declares its kernel's *case space* once, as data and predicates, and the gate
grid, the fuzzer's strategies and shrinking all stay inside it:

- ``params``: the values it takes per op parameter (``{"quant_dtype": ("int8",)}``); a parameter
  not named takes every value the op has (``layouts`` narrows ``layout`` the same way);
- ``tunables``: the config keys it takes and their values; a key not declared is never drawn,
  and a grid case naming one runs without it;
- ``dims``: constraints per shape dimension, ``multiple_of(16)``, ``at_least(32)``,
  ``at_most(4096)``, ``between(1, 64)`` (combined with ``&``), or a function of the value that
  returns why it is refused (or None);
- ``constraint``: ``(params, dims, config) -> reason | None`` for anything else (a BLOCK_K that
  must divide the group, ...); ``supports(params)`` is kept and is one more such predicate.

Contracts beyond the op's strict default are stated too, and only where stated do they apply:

- ``accepts``: named cases of the op outside its strict default that the kernel takes, e.g.
  ``("partial_groups",)`` for a W4A16 whose group size need not divide K (each op lists its
  names: ``OpSpec.optional_contracts``); some op parameter values are likewise taken only when
  ``params`` names them (``OpSpec.opt_in``: fused_moe's clamped ``silu7``);
- ``output_layouts``: an output returned larger than the contract's shape, ``{"scales":
  padded(cols=4)}``: its shape is checked padded, and only the contract's region is read;
- ``workspace``: scratch tensors the runner allocates poisoned and passes by name
  (:class:`Workspace`); the output must not depend on their initial contents.

This module imports nothing of the project: a user's adapter file imports it without loading any
kernel. Turning a ``--kernels`` spec into adapters is ``kernels.catalog``'s job.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union


class AdapterError(ValueError):
    """A kernel spec or adapter that cannot be used as given."""


class KernelsUnavailable(AdapterError):
    """A kernel spec naming kernels that cannot run here (an engine that is not installed): the
    gate reports it as skipped, with ``reason``, instead of failing or silently selecting nothing."""

    def __init__(self, spec: str, reason: str):
        super().__init__(f"--kernels {spec}: {reason}")
        self.spec, self.reason = spec, reason


@dataclass(frozen=True)
class DimRule:
    """A constraint on one shape dimension: a multiple of ``multiple``, at least ``min``, at most
    ``max``. Build one with :func:`multiple_of`, :func:`at_least`, :func:`at_most`, :func:`between`
    and combine them with ``&`` (``multiple_of(16) & at_most(4096)``)."""

    multiple: int = 1
    min: int | None = None
    max: int | None = None

    def __post_init__(self):
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise AdapterError(f"multiple_of({self.multiple!r}): the step must be a positive integer")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise AdapterError(f"dimension rule with min {self.min} > max {self.max} admits nothing")

    def __and__(self, other: "DimRule") -> "DimRule":
        lo = max(x for x in (self.min, other.min, -1) if x is not None)
        hi = [x for x in (self.max, other.max) if x is not None]
        return DimRule(math.lcm(self.multiple, other.multiple), None if lo < 0 else lo, min(hi) if hi else None)

    def reason(self, name: str, value: int) -> str | None:
        """Why ``value`` is refused for dimension ``name``, or None."""
        if value % self.multiple:
            lo = value - value % self.multiple
            return f"{name}={value} must be a multiple of {self.multiple} (e.g. {max(lo, self.multiple)} or {lo + self.multiple})"
        if self.min is not None and value < self.min:
            return f"{name}={value} must be at least {self.min}"
        if self.max is not None and value > self.max:
            return f"{name}={value} must be at most {self.max}"
        return None

    def admits(self, value: int) -> bool:
        return self.reason("dim", value) is None

    def __str__(self) -> str:
        parts = [f"multiple_of({self.multiple})"] if self.multiple > 1 else []
        if self.min is not None:
            parts.append(f"at_least({self.min})")
        if self.max is not None:
            parts.append(f"at_most({self.max})")
        return " & ".join(parts) or "any"


def multiple_of(step: int) -> DimRule:
    """The dimension is a multiple of ``step`` (``dims={"k": multiple_of(128)}``)."""
    return DimRule(multiple=step)


def at_least(lo: int) -> DimRule:
    return DimRule(min=lo)


def at_most(hi: int) -> DimRule:
    return DimRule(max=hi)


def between(lo: int, hi: int) -> DimRule:
    """``lo <= dim <= hi``."""
    return DimRule(min=lo, max=hi)


@dataclass(frozen=True)
class Padded:
    """An output layout: the kernel returns the output with its rows rounded up to a multiple of
    ``rows`` and its columns to a multiple of ``cols`` (e.g. scales padded to 4 columns for
    16-byte aligned rows). The returned shape must be exactly that; the contract's region
    (``[:M, :C]``) is what is read and checked, the padding is never read."""

    rows: int = 1
    cols: int = 1

    def __post_init__(self):
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise AdapterError(f"padded({name}={v!r}): the multiple must be a positive integer")

    def shape(self, contract: tuple) -> tuple:
        """The shape the kernel returns for an output whose contract shape is ``contract`` (2-D)."""
        if len(contract) != 2:
            raise AdapterError(f"{self} applies to 2-D outputs; the contract's shape is {list(contract)}")
        r, c = contract
        return (-(-r // self.rows) * self.rows, -(-c // self.cols) * self.cols)

    def __str__(self) -> str:
        parts = ([f"rows={self.rows}"] if self.rows > 1 else []) + ([f"cols={self.cols}"] if self.cols > 1 else [])
        return f"padded({', '.join(parts)})"


def padded(rows: int = 1, cols: int = 1) -> Padded:
    """An output returned padded: rows to a multiple of ``rows``, columns to a multiple of ``cols``
    (``output_layouts={"scales": padded(cols=4)}``)."""
    return Padded(rows, cols)


@dataclass(frozen=True)
class Workspace:
    """A scratch tensor the kernel takes: passed under ``name`` in the tensors ``call`` gets, of
    ``shape`` (a tuple, or ``(dims, params, config) -> tuple``) and ``dtype`` (a torch dtype name,
    or ``(params) -> name``). The runner allocates it filled with poison (NaN for floats, all-ones
    for integers) inside a guard; a second run with other contents (a finite pattern) must return
    the same bits, and nothing around it may be written."""

    name: str
    shape: tuple | Callable[[Mapping, Mapping, Mapping], tuple]
    dtype: str | Callable[[Mapping], str] = "float32"

    def shape_for(self, dims: Mapping, params: Mapping, config: Mapping) -> tuple:
        shape = self.shape(dims, params, config) if callable(self.shape) else self.shape
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise AdapterError(f"workspace {self.name!r}: shape {list(shape)} has a negative size")
        return shape

    def dtype_for(self, params: Mapping) -> str:
        return self.dtype(params) if callable(self.dtype) else self.dtype


# a dimension's constraint: a DimRule, or (value) -> why it is refused | None (False also refuses)
DimConstraint = Union[DimRule, Callable[[int], Union[str, bool, None]]]


def _predicate_reason(what: str, got) -> str | None:
    """A predicate's answer as a reason: None / True accept, False or a string refuse."""
    if got is None or got is True:
        return None
    if got is False:
        return f"refused by {what}"
    return str(got)


@dataclass(frozen=True)
class KernelAdapter:
    name: str
    op: str
    pack: Callable[[Mapping, Mapping, str], dict]  # (problem, params, device) -> tensors
    call: Callable[[Mapping, Mapping, Mapping], Any]  # (tensors, params, config) -> output tensor
    layouts: tuple[str, ...] = ()
    tunables: Mapping[str, tuple[int | str, ...]] = field(default_factory=dict)
    deterministic: bool = True
    triton: bool = True  # runs Triton code: on cpu the interpreter's known defects apply to it
    custom_op: str | None = None  # torch.library op the call goes through (fake-vs-real is checked)
    # for a kernel that can run on more than one backend (a dispatcher): the backend the case must
    # run on, e.g. "native" (anything else recorded fails the case), or (params, device) -> name |
    # None. The code that runs records the backend (kernels.backends.record), never ``call``: a
    # single-backend kernel leaves this None and its backend check is not run.
    expected_backend: str | Callable[[Mapping, str], str | None] | None = None
    target: Callable | None = None  # the external callable, for the signature check
    signature: tuple[str, ...] = ()  # the parameter names `call` binds on `target`, in order
    default_config: Callable[[Mapping, Mapping], Mapping] | None = None  # (dims, params) -> config it picks
    # quant ops: (outputs, params) -> (canonical codes [M, K], scales) where the kernel stores them
    # its own way (packed codes, transposed scales); None = codes one per element, plain scales.
    # It receives host (CPU) copies of the outputs.
    unpack: Callable[[tuple, Mapping], tuple] | None = None
    # the tensors key under which the runner passes a preallocated output (sentinel-filled, with
    # canaries around it: unwritten elements and out-of-bounds writes are detected); None = the
    # kernel allocates its output
    out_param: str | None = None
    # (params) -> why this kernel cannot take such a case (outside its API), or None: the case is
    # skipped with that reason instead of failing
    supports: Callable[[Mapping], str | None] | None = None
    # --- the case space, beside ``layouts`` and ``tunables`` (module docstring) -------------
    # the values the kernel takes per op parameter, e.g. {"quant_dtype": ("int8",), "group_size": (128,)};
    # a parameter not named takes every value of the op
    params: Mapping[str, tuple] = field(default_factory=dict)
    # per shape dimension: a DimRule (multiple_of(16), at_least(32), at_most(4096), combined with &)
    # or (value) -> why it is refused | None
    dims: Mapping[str, DimConstraint] = field(default_factory=dict)
    # (params, dims, config) -> why the kernel cannot take the case | None; config is the case's
    # own ({} for the kernel's default choice)
    constraint: Callable[[Mapping, Mapping, Mapping], str | None] | None = None
    # documented choices of the kernel that the oracle should answer for instead of its strict
    # default (e.g. ``{"qmax": 224.0}`` for an fp8 e4m3fnuz quantizer, ``{"amax_floor": 1 / 512}``):
    # a mapping of the op's convention keys (``qkcheck list --ops`` / the oracle family's
    # docstring), or (params) -> such a mapping, or (params, dims, config) -> one (a convention that
    # depends on the shape or the config that runs, e.g. a number of split-K partials). The runner
    # sets them on every problem it checks and records them with the result; what is not declared
    # stays strict.
    conventions: Mapping[str, Any] | Callable[..., Mapping[str, Any]] = field(default_factory=dict)
    # --- contracts beyond the strict default (module docstring) ------------------------------
    # named cases outside the op's strict default the kernel takes (``OpSpec.optional_contracts``),
    # e.g. ("partial_groups",): a W4A16 whose group size need not divide K
    accepts: tuple[str, ...] = ()
    # output name -> layout it is returned in (``padded(cols=4)``); the contract region is checked
    output_layouts: Mapping[str, Padded] = field(default_factory=dict)
    # scratch tensors the runner allocates poisoned and passes (a Workspace, or a tuple of them)
    workspace: Workspace | tuple[Workspace, ...] = ()
    description: str = ""

    def __post_init__(self):
        if isinstance(self.workspace, Workspace):
            object.__setattr__(self, "workspace", (self.workspace,))
        if isinstance(self.accepts, str):
            object.__setattr__(self, "accepts", (self.accepts,))
        for w in self.workspace:
            if not isinstance(w, Workspace):
                raise AdapterError(f"adapter {self.name!r}: workspace must be Workspace records, got {type(w).__name__}")
        for name, layout in self.output_layouts.items():
            if not isinstance(layout, Padded):
                raise AdapterError(f"adapter {self.name!r}: output_layouts[{name!r}] must be a layout such as "
                                   f"padded(cols=4), got {layout!r}")

    def conventions_for(self, params: Mapping, dims: Mapping | None = None, config: Mapping | None = None) -> dict:
        """The conventions that apply to a case with ``params`` (a copy; empty when none). A function
        taking three arguments is called with (params, dims, config): the case's shape and the config
        that runs (the case's own, or the kernel's default choice), for a convention that depends on
        them (the number of split-K partials); a one-argument function with params alone."""
        conv = self.conventions
        if callable(conv):
            try:
                inspect.signature(conv).bind(params, dims, config)
                takes_three = True
            except (TypeError, ValueError):
                takes_three = False
            conv = conv(params, dict(dims or {}), dict(config or {})) if takes_three else conv(params)
        if not isinstance(conv, Mapping):
            raise AdapterError(f"adapter {self.name!r}: conventions must be a mapping (or a function of params "
                               f"returning one), got {type(conv).__name__}")
        return dict(conv)

    def param_values(self, name: str, values: tuple) -> tuple:
        """The values of op parameter ``name`` (the op's ``values``) this kernel takes, in the op's order."""
        keep = tuple(values)
        if name in self.params:
            keep = tuple(v for v in keep if any(v == w and type(v) is type(w) for w in self.params[name]))
        if name == "layout" and self.layouts:
            keep = tuple(v for v in keep if v in self.layouts)
        return keep

    def dim_reason(self, name: str, value: int) -> str | None:
        """Why dimension ``name`` = ``value`` is outside what the kernel takes, or None."""
        rule = self.dims.get(name)
        if rule is None:
            return None
        if isinstance(rule, DimRule):
            return rule.reason(name, value)
        return _predicate_reason(f"the adapter's dims[{name!r}] predicate", rule(value))

    def outside(self, params: Mapping, dims: Mapping | None = None, config: Mapping | None = None) -> str | None:
        """Why a case (``params``, and where given ``dims`` and ``config``) lies outside the case
        space this adapter declares, or None: its parameter values (``params``, ``layouts``), the
        values of the tunables it declares, its dimension rules, ``supports`` and ``constraint``.
        Config keys it does not declare are not its business here (it never receives them)."""
        for name, allowed in self.params.items():
            if name in params and not any(params[name] == w and type(params[name]) is type(w) for w in allowed):
                return f"{self.name} takes {name} in ({', '.join(map(repr, allowed))}), not {params[name]!r}"
        layout = params.get("layout")
        if self.layouts and layout is not None and layout not in self.layouts:
            return f"{self.name} takes layout in ({', '.join(map(repr, self.layouts))}), not {layout!r}"
        for key, value in (config or {}).items():
            if key in self.tunables and value not in self.tunables[key]:
                return f"{self.name} takes {key} in ({', '.join(map(str, self.tunables[key]))}), not {value!r}"
        for name, value in (dims or {}).items():
            msg = self.dim_reason(name, value)
            if msg:
                return f"{self.name}: {msg}"
        if self.supports is not None:
            msg = _predicate_reason("the adapter's supports()", self.supports(params))
            if msg:
                return msg
        if self.constraint is not None and dims is not None:
            msg = _predicate_reason("the adapter's constraint", self.constraint(params, dims, config or {}))
            if msg:
                return msg
        return None

    def check_signature(self) -> str | None:
        """None when ``target``'s parameters start with ``signature``; otherwise what drifted."""
        if self.target is None or not self.signature:
            return None
        try:
            params = list(inspect.signature(self.target).parameters)
        except (TypeError, ValueError):
            return None
        have = tuple(params[: len(self.signature)])
        if have == self.signature:
            return None
        for i, (want, got) in enumerate(zip(self.signature, have)):
            if want != got:
                return (f"signature drift in {getattr(self.target, '__qualname__', self.target)}: parameter {i} is "
                        f"{got!r} where the adapter binds {want!r} (callee: ({', '.join(params)}); "
                        f"adapter expects: ({', '.join(self.signature)}))")
        return f"signature drift: callee has parameters ({', '.join(params)}), adapter expects ({', '.join(self.signature)})"
