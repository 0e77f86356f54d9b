"""Which backend ran, which may run, and which must: so a silent fallback (emulation where the
native kernel was expected) is visible to the harness and fails the gate.

**Recording.** The code that actually runs a computation records it: each bundled torch.library
op's real implementation records ``NATIVE`` after launching its Triton kernel, an emulation
records ``EMULATION``, a dispatcher's choice records itself when it runs. An adapter's ``call``
never records (it would only repeat what it declares). The harness wraps a call in
:func:`recording` and reads the names recorded during it.

**Registry.** For each (op, scheme) the backends that can run it — the native Triton kernel and
an emulation (dequantize + torch matmul: slow, correct) — each with the platform capabilities it
needs (``kernels.device.Platform``); :func:`pick` takes the first whose needs the platform meets.

**Expectations.** What *must* happen is declared separately, as data (``EXPECTATIONS``): "on a
platform with capability X, scheme Y of op Z runs natively". An adapter whose kernel dispatches
declares ``expected_backend`` from them; the harness checks every call's recorded backend
against it, so a dispatcher that silently falls back to emulation fails the gate. A
single-backend kernel declares no expectation: there is nothing it could fall back to.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable

from qkcheck.kernels.device import Platform, platform

NATIVE = "native"
EMULATION = "emulation"

_state = threading.local()


def record(backend: str) -> None:
    """Note that ``backend`` ran (called by the code that launched it)."""
    stack = getattr(_state, "stack", None)
    if stack:
        stack[-1].append(backend)


@contextlib.contextmanager
def recording():
    """Collect the backends recorded inside the ``with`` block into the yielded list."""
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    ran: list[str] = []
    stack.append(ran)
    try:
        yield ran
    finally:
        stack.pop()


# ---------------------------------------------------------------------------------------------
# registry and expectations


@dataclass(frozen=True)
class Backend:
    name: str  # NATIVE or EMULATION
    requires: frozenset[str]  # capabilities the platform must have
    run: Callable


@dataclass(frozen=True)
class Expectation:
    """On a platform with every capability in ``requires``, ``scheme`` of ``op`` runs on ``backend``."""

    op: str
    scheme: str
    requires: frozenset[str]
    backend: str = NATIVE

    def sentence(self) -> str:
        caps = " and ".join(sorted(self.requires)) or "any capability"
        return f"on a platform with {caps}, {self.op} with scheme {self.scheme} runs {self.backend}"


@dataclass
class Registry:
    backends: dict[tuple[str, str], list[Backend]] = field(default_factory=dict)

    def register(self, op: str, scheme: str, backend: Backend) -> None:
        self.backends.setdefault((op, scheme), []).append(backend)

    def choices(self, op: str, scheme: str) -> list[Backend]:
        try:
            return self.backends[(op, scheme)]
        except KeyError:
            known = sorted(s for o, s in self.backends if o == op)
            raise ValueError(f"no backend is registered for {op} with scheme {scheme!r} "
                             f"(registered schemes: {', '.join(known) or 'none'})") from None


REGISTRY = Registry()

EXPECTATIONS: list[Expectation] = []


def declare(op: str, scheme: str, requires: tuple[str, ...], backend: str = NATIVE) -> None:
    EXPECTATIONS.append(Expectation(op, scheme, frozenset(requires), backend))


def expected_backend(op: str, scheme: str, plat: Platform) -> str | None:
    """The backend the declared expectations demand for (op, scheme) here, or None when free."""
    for e in EXPECTATIONS:
        if e.op == op and e.scheme == scheme and e.requires <= plat.capabilities:
            return e.backend
    return None


def pick(op: str, scheme: str, plat: Platform, *, native_schemes: frozenset[str] | None = None) -> Backend:
    """The first registered backend for (op, scheme) whose requirements the platform meets.

    ``native_schemes``: where a dispatcher keeps its own list of schemes it sends to the native
    kernel, a scheme outside it skips the native backends.
    """
    for b in REGISTRY.choices(op, scheme):
        if b.name == NATIVE and native_schemes is not None and scheme not in native_schemes:
            continue
        if b.requires <= plat.capabilities:
            return b
    raise ValueError(f"no backend for {op} with scheme {scheme!r} runs on {plat.device} "
                     f"(capabilities: {', '.join(sorted(plat.capabilities))})")

