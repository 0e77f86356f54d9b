"""One-time compiler set-up, paid ahead: a process's first Triton compile costs about 1.7 s more
than the next ones (on an H100 host, Triton 3.6: 1.8 s for a one-line kernel, 0.04 s for the next
one-line kernels), the compiler back end's own initialisation. :func:`first_compile` compiles and
launches a one-line kernel so that a process with idle time (a case runner waiting for its first
case) pays it there instead of inside its first case."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _increment(x_ptr):
    tl.store(x_ptr, tl.load(x_ptr) + 1)


def first_compile(device: str) -> None:
    """Compile (or load from the Triton cache) and run a one-line kernel on ``device``; nothing on
    the CPU interpreter, which compiles nothing."""
    if device == "cpu":
        return
    x = torch.zeros(1, dtype=torch.int32, device=device)
    _increment[(1,)](x)
    if int(x.item()) != 1:
        raise RuntimeError(f"the one-line warm-up kernel on {device} left {int(x.item())}, expected 1")
