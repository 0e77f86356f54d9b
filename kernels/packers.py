"""Layout packers: canonical NumPy problems (``oracle.references``) -> the tensors a kernel takes.

Each packer is the forward direction of one kernel layout, built on ``oracle.packing`` (the
same records the kernels read their layout facts from), so a packer and the kernel it feeds
cannot disagree silently about field order or axis.
"""
from __future__ import annotations

import numpy as np
import torch

from qkcheck.oracle.packing import pack

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


def w4a16_inputs(problem, *, layout: str, act_dtype: str, device: str) -> dict[str, torch.Tensor | None]:
    """x, qweight, scales, zeros, bias for ``kernels.triton.w4a16`` in ``layout``.

    problem: ``x [M,K]``, ``q [K,N]`` uint4 codes, ``scales [K/G,N]``, ``zeros [K/G,N] | None``,
    ``bias [N] | None`` (``oracle.references``). Scales and bias are given in ``act_dtype``.
    """
    from qkcheck.kernels.triton.w4a16 import LAYOUTS

    rec = LAYOUTS[layout]
    q = np.asarray(problem["q"]).astype(np.uint8)
    qweight = to_device(torch.from_numpy(pack(q, rec.qweight)), device)
    zeros = None
    if problem.get("zeros") is not None:
        zeros = to_device(torch.from_numpy(pack(np.asarray(problem["zeros"]).astype(np.uint8), rec.zeros)), device)
    bias = problem.get("bias")
    return {
        "x": float_tensor(problem["x"], act_dtype, device),
        "qweight": qweight,
        "scales": float_tensor(problem["scales"], act_dtype, device),
        "zeros": zeros,
        "bias": None if bias is None else float_tensor(bias, act_dtype, device),
    }
