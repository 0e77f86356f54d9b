"""The adapter protocol: how any kernel — bundled, from the zoo, from an engine, or a user's
own — is plugged into the harness.

An adapter declares the op it implements, the layouts and tunables it supports, how to turn the
canonical problem into its tensors (``pack``), and how to call it **by keyword** (``call``).
Where the kernel is an external callable, ``signature`` lists the parameter names the adapter
binds, in order; the harness checks them against the callable's real signature, so an API change
(a new positional parameter taking another's slot) fails loudly instead of binding silently.

This module imports nothing of the project: a user's adapter file imports it without loading any
kernel. Turning a ``--kernels`` spec into adapters is ``kernels.catalog``'s job.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
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
    # documented choices of the kernel that the oracle should answer for instead of its strict
    # default (e.g. ``{"qmax": 224.0}`` for an fp8 e4m3fnuz quantizer, ``{"amax_floor": 1 / 512}``):
    # a mapping of the op's convention keys (``qkcheck list --ops`` / the oracle family's
    # docstring), or (params) -> such a mapping. The runner sets them on every problem it checks
    # and records them with the result; what is not declared stays strict.
    conventions: Mapping[str, Any] | Callable[[Mapping], Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""

    def conventions_for(self, params: Mapping) -> dict:
        """The conventions that apply to a case with ``params`` (a copy; empty when none)."""
        conv = self.conventions(params) if callable(self.conventions) else self.conventions
        if not isinstance(conv, Mapping):
            raise AdapterError(f"adapter {self.name!r}: conventions must be a mapping (or a function of params "
                               f"returning one), got {type(conv).__name__}")
        return dict(conv)

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
