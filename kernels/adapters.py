"""The adapter protocol: how any kernel — bundled, from the zoo, from an engine, or a user's
own — is plugged into the harness.

An adapter declares the op it implements, the layouts and tunables it supports, how to turn the
canonical problem into its tensors (``pack``), and how to call it **by keyword** (``call``).
Where the kernel is an external callable, ``signature`` lists the parameter names the adapter
binds, in order; the harness checks them against the callable's real signature, so an API change
(a new positional parameter taking another's slot) fails loudly instead of binding silently.

Kernel specs (``--kernels``): ``bundled`` (every bundled kernel), ``bundled:<name>``,
``zoo:<name>``, an engine (``vllm``, ``aiter``: adapters for the engine's public kernels, skipped
with the reason when it is not installed), a path to a Python file defining ``ADAPTERS``, or a
module path defining it.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


class AdapterError(ValueError):
    """A kernel spec or adapter that cannot be used as given."""


class KernelsUnavailable(AdapterError):
    """A kernel spec naming kernels that cannot run here (an engine that is not installed): the
    gate reports it as skipped, with ``reason``, instead of failing or silently selecting nothing."""

    def __init__(self, spec: str, reason: str):
        super().__init__(f"--kernels {spec}: {reason}")
        self.spec, self.reason = spec, reason


@dataclass(frozen=True)
class KernelAdapter:
    name: str
    op: str
    pack: Callable[[Mapping, Mapping, str], dict]  # (problem, params, device) -> tensors
    call: Callable[[Mapping, Mapping, Mapping], Any]  # (tensors, params, config) -> output tensor
    layouts: tuple[str, ...] = ()
    tunables: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    deterministic: bool = True
    triton: bool = True  # runs Triton code: on cpu the interpreter's known defects apply to it
    custom_op: str | None = None  # torch.library op the call goes through (fake-vs-real is checked)
    # e.g. "native": anything else recorded fails the case; or (params, device) -> name | None
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
    description: str = ""

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


def _from_module_object(mod, where: str) -> list[KernelAdapter]:
    adapters = getattr(mod, "ADAPTERS", None)
    if adapters is None:
        raise AdapterError(f"{where}: defines no ADAPTERS (a list of kernels.adapters.KernelAdapter)")
    adapters = list(adapters)
    if not adapters and getattr(mod, "UNAVAILABLE", None):
        raise KernelsUnavailable(where, mod.UNAVAILABLE)
    for a in adapters:
        if not isinstance(a, KernelAdapter):
            raise AdapterError(f"{where}: ADAPTERS holds {type(a).__name__}, expected KernelAdapter records")
    return adapters


def _load_file(path: Path) -> list[KernelAdapter]:
    if not path.exists():
        raise AdapterError(f"--kernels {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"qkcheck_user_adapters_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:  # a user's file: report, don't traceback
        raise AdapterError(f"--kernels {path}: failed to import ({type(exc).__name__}: {exc})") from None
    return _from_module_object(mod, str(path))


def available() -> dict[str, KernelAdapter]:
    """Every kernel qkcheck ships: bundled and zoo, by name."""
    from qkcheck.kernels import bundled, zoo

    return {a.name: a for a in (*bundled.adapters(), *zoo.adapters())}


def resolve(spec: str) -> list[KernelAdapter]:
    """Adapters named by one ``--kernels`` value (see the module docstring)."""
    from qkcheck.kernels import bundled, engines, zoo

    spec = engines.ENGINES.get(spec, spec)  # "vllm", "aiter": the engines' adapter modules
    if spec == "bundled":
        return list(bundled.adapters())
    if spec == "zoo":
        return list(zoo.adapters())
    if spec.startswith(("bundled:", "zoo:")):
        known = available()
        if spec not in known:
            raise AdapterError(f"--kernels {spec}: unknown kernel (allowed: bundled, zoo, {', '.join(sorted(known))}, "
                               "a .py file defining ADAPTERS, or a module path)")
        return [known[spec]]
    if spec.endswith(".py") or "/" in spec:
        return _load_file(Path(spec))
    try:
        mod = importlib.import_module(spec)
    except Exception as exc:
        raise AdapterError(f"--kernels {spec}: not a known kernel, file or importable module "
                           f"({type(exc).__name__}: {exc}); allowed: bundled, zoo, zoo:<name>, path.py, module") from None
    return _from_module_object(mod, spec)
