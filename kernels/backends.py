"""Which backend actually ran: every call records it, so a silent fallback (emulation where the
native kernel was expected) is visible to the harness and can fail the gate.

Kernels and dispatchers call ``record(name)``; the harness wraps a call in ``recording()`` and
reads the names recorded during it.
"""
from __future__ import annotations

import contextlib
import threading

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
