"""Device selection, the Triton execution mode, and what the platform can do.

`--device auto` picks cuda if torch sees one (NVIDIA, or AMD where ``torch.version.hip`` is
set), then xpu (Intel), else cpu. On cpu every Triton kernel runs under the interpreter, which
Triton reads when a kernel is *decorated*: `activate()` must run before any module holding a
``@triton.jit`` function is imported, and refuses to switch modes after one has been.

Capabilities (:func:`platform`; the backend registry in ``kernels.backends`` picks by them):

- ``triton``: Triton kernels run here (compiled on cuda/rocm/xpu, or under the CPU interpreter).
- ``fp8``: FP8 tensors can be computed on natively (NVIDIA sm_89+, AMD gfx942/gfx950, Intel
  Xe2+; the interpreter computes FP8 loads and dots in software, so it counts).
- ``mx``: MX block-scaled formats (MXFP4 and friends) can be decoded in Triton. The bundled MX
  kernels decode e2m1 codes and E8M0 scales in software, so every Triton platform has it; a
  platform with native MX dot instructions (NVIDIA sm_100, AMD gfx950) has ``mx_dot`` as well.

The FP8 e4m3 variant the platform computes in natively is :func:`native_fp8_format`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda", "xpu")

# modules whose import decorates Triton kernels: every family's kernel.py
# (qkcheck.kernels.<family>.kernel), the shared helpers of kernels/triton/ and the zoo's kernel
# copies; activate() checks none is loaded yet
_KERNEL_MODULE_PREFIXES = ("qkcheck.kernels.triton.", "qkcheck.kernels.zoo.")
_KERNEL_MODULE_NAME = "kernel"


def _decorates_kernels(module: str) -> bool:
    parts = module.split(".")
    return module.startswith(_KERNEL_MODULE_PREFIXES) or (
        len(parts) == 4 and parts[:2] == ["qkcheck", "kernels"] and parts[3] == _KERNEL_MODULE_NAME)


def _torch():
    import torch

    return torch


def check_name(requested: str) -> None:
    """Raise unless ``requested`` is one of DEVICES (no torch needed)."""
    if requested not in DEVICES:
        raise ValueError(
            f"device={requested!r} is not a device qkcheck knows (allowed: {', '.join(DEVICES)}); "
            "pass --device auto to let qkcheck pick"
        )


def resolve(requested: str) -> str:
    """Map ``auto|cpu|cuda|xpu`` to a concrete device, raising if it is not available."""
    check_name(requested)
    torch = _torch()
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "xpu" if has_xpu else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch sees no CUDA/ROCm GPU; use --device cpu or auto")
    if requested == "xpu" and not has_xpu:
        raise ValueError("device='xpu' was requested but torch sees no Intel XPU; use --device cpu or auto")
    return requested


def activate(device: str) -> str:
    """Resolve ``device`` and set the Triton mode for it (interpreter on cpu, with qkcheck's bf16 /
    fp8 correction installed: ``kernels.interpreter``). Returns the device."""
    dev = resolve(device)
    want = "1" if dev == "cpu" else None
    loaded = [m for m in sys.modules if _decorates_kernels(m)]
    have = os.environ.get("TRITON_INTERPRET")
    if loaded and (have == "1") != (want == "1"):
        raise RuntimeError(
            f"Triton kernel modules {sorted(loaded)[:3]} were imported with TRITON_INTERPRET={have!r} "
            f"but device {dev!r} needs {want!r}; select the device before importing kernels"
        )
    if want:
        os.environ["TRITON_INTERPRET"] = want
        from qkcheck.kernels import interpreter

        interpreter.install()  # bf16 / fp8 numerics; a Triton it does not know keeps the probes' skips
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    return dev


def assign_worker_gpu(device: str, worker_id: str | None) -> int | None:
    """On a multi-GPU host, pytest-xdist worker ``gwN`` takes GPU ``N mod count`` (set as the
    current device before any kernel compiles), so ``-n <GPUs>`` spreads the cases over every GPU.
    Returns the index taken, or None (cpu, one GPU, or not a worker). A runner that pins GPUs
    itself (CUDA_VISIBLE_DEVICES / ZE_AFFINITY_MASK per job) sees one GPU and is left alone."""
    if device not in ("cuda", "xpu") or not worker_id or not worker_id.startswith("gw"):
        return None
    torch = _torch()
    mod = getattr(torch, device)
    count = mod.device_count()
    if count < 2:
        return None
    index = int(worker_id[2:]) % count
    mod.set_device(index)
    return index


def gpu_count(device: str) -> int:
    """How many GPUs of ``device`` (cuda or xpu) this process sees; 0 on cpu."""
    if device not in ("cuda", "xpu"):
        return 0
    return int(getattr(_torch(), device).device_count())


def interpreted() -> bool:
    """True when Triton kernels run under the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def platform_name(device: str) -> str:
    """'rocm', 'cuda', 'xpu' or 'cpu' — the platform behind a concrete device."""
    torch = _torch()
    if device == "cuda":
        return "rocm" if getattr(torch.version, "hip", None) else "cuda"
    return device


def gpu_arch(device: str) -> str | None:
    """The GPU architecture name (e.g. 'gfx942', 'sm_90'), or None on cpu."""
    torch = _torch()
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        arch = getattr(props, "gcnArchName", None)
        if arch:
            return arch.split(":")[0]
        return f"sm_{props.major}{props.minor}"
    if device == "xpu":
        return str(torch.xpu.get_device_name())
    return None


def native_fp8_format(device: str) -> str:
    """The FP8 e4m3 variant the platform computes in natively.

    AMD CDNA3 (gfx942, MI300) uses the 'fnuz' encoding (single NaN at 0x80, bias 8); every other
    platform (NVIDIA sm_89+, AMD gfx950, Intel, the CPU interpreter) uses OCP 'fn'.
    """
    arch = gpu_arch(device) if device != "cpu" else None
    if platform_name(device) == "rocm" and arch == "gfx942":
        return "float8_e4m3fnuz"
    return "float8_e4m3fn"


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
    """The capabilities of ``device`` ('cpu' = the Triton interpreter; module docstring)."""
    arch = gpu_arch(device) if device != "cpu" else None
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
