"""The torch side of every packer: dtype names -> torch dtypes, and host values -> device tensors.

Each family's packer (``kernels/<family>/adapter.py``) turns a canonical NumPy problem
(``oracle.ops``) into its kernel's tensors with these, so dtype naming and host-to-device
copies are written once.
"""
from __future__ import annotations

import numpy as np
import torch

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32,
                "float8_e4m3fn": torch.float8_e4m3fn, "float8_e4m3fnuz": torch.float8_e4m3fnuz,
                "float8_e5m2": torch.float8_e5m2, "float8_e5m2fnuz": torch.float8_e5m2fnuz}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} has no torch counterpart here (allowed: {', '.join(TORCH_DTYPES)})") from None


def to_device(t: torch.Tensor, device: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host tensor on ``device`` (converted to ``dtype`` on the host first, if given). On a CUDA
    or ROCm GPU the copy goes through pinned memory without blocking the host: a case's inputs
    queue up behind one another and the kernel instead of each waiting for the device (a copy
    from pageable memory synchronizes with the device before it starts)."""
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.contiguous().pin_memory().to(device, non_blocking=True)


def float_tensor(values: np.ndarray, dtype: str, device: str) -> torch.Tensor:
    """Float64 values (already representable in ``dtype``) as a torch tensor of ``dtype``."""
    return to_device(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)), device, torch_dtype(dtype))
