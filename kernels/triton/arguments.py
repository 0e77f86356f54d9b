"""Small pieces every launcher's argument validation (and the weight loaders') uses to word its errors."""
from __future__ import annotations

import torch


def dtype_name(dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def dtype_names(dtypes) -> str:
    return ", ".join(dtype_name(d) for d in dtypes)


def require_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}; pass a tensor")
