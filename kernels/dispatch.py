"""Backends and dispatch: for each (op, scheme) the backends that can run it — the native Triton
kernel and an emulation backend (dequantize + torch matmul: slow, correct) — and a dispatcher
that picks by platform capability. What *must* happen is declared separately, as data
(``EXPECTATIONS``): "on a platform with capability X, scheme Y of op Z runs natively". The
harness checks every call's recorded backend (``kernels.backends``) against the expectation, so
a dispatcher that silently falls back to emulation fails the gate.

Capabilities (``Platform``):

- ``triton``: Triton kernels run here (compiled on cuda/rocm/xpu, or under the CPU interpreter).
- ``fp8``: FP8 tensors can be computed on natively (NVIDIA sm_89+, AMD gfx942/gfx950, Intel
  Xe2+; the interpreter computes FP8 loads and dots in software, so it counts).
- ``mx``: MX block-scaled formats (MXFP4 and friends) can be decoded in Triton. The bundled MX
  kernels decode e2m1 codes and E8M0 scales in software, so every Triton platform has it; a
  platform with native MX dot instructions (NVIDIA sm_100, AMD gfx950) has ``mx_dot`` as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from qkcheck.kernels import backends


@dataclass(frozen=True)
class Platform:
    device: str
    arch: str | None
    capabilities: frozenset[str]

    def has(self, capability: str) -> bool:
        return capability in self.capabilities


_FP8_ARCHS = ("gfx942", "gfx950")
_MX_DOT_ARCHS = ("gfx950",)


def platform(device: str) -> Platform:
    """The capabilities of ``device`` ('cpu' = the Triton interpreter)."""
    from qkcheck.kernels import device as _device

    arch = _device.gpu_arch(device) if device != "cpu" else None
    caps = {"triton", "mx"}
    if device == "cpu":
        caps.add("fp8")
    elif arch and arch.startswith("sm_"):
        major_minor = int(arch[3:])
        if major_minor >= 89:
            caps.add("fp8")
        if major_minor >= 100:
            caps.add("mx_dot")
    elif arch in _FP8_ARCHS or device == "xpu":
        caps.add("fp8")
        if arch in _MX_DOT_ARCHS:
            caps.add("mx_dot")
    return Platform(device, arch, frozenset(caps))


@dataclass(frozen=True)
class Backend:
    name: str  # backends.NATIVE or backends.EMULATION
    requires: frozenset[str]  # capabilities the platform must have
    run: Callable


@dataclass(frozen=True)
class Expectation:
    """On a platform with every capability in ``requires``, ``scheme`` of ``op`` runs on ``backend``."""

    op: str
    scheme: str
    requires: frozenset[str]
    backend: str = backends.NATIVE

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


def declare(op: str, scheme: str, requires: tuple[str, ...], backend: str = backends.NATIVE) -> None:
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
        if b.name == backends.NATIVE and native_schemes is not None and scheme not in native_schemes:
            continue
        if b.requires <= plat.capabilities:
            return b
    raise ValueError(f"no backend for {op} with scheme {scheme!r} runs on {plat.device} "
                     f"(capabilities: {', '.join(sorted(plat.capabilities))})")


def run(op: str, scheme: str, device: str, *args, native_schemes: frozenset[str] | None = None, **kwargs):
    """Dispatch one call: pick the backend, record it (the harness reads the record), run it."""
    b = pick(op, scheme, platform(device), native_schemes=native_schemes)
    backends.record(b.name)
    return b.run(*args, **kwargs)
