"""The bundled MXFP4 GEMM as an adapter (``bundled:mxfp4_gemm``), through ``qkcheck::mxfp4_gemm``
(the op records the backend that ran).

Packing (canonical problem -> the kernel's storage, ``kernels.mxfp4.kernel``'s records):
``w`` e2m1 codes [K, N] -> uint8 [K // 2, N] (``WEIGHT_PACKING``: low nibble = even k),
``w_scale`` E8M0 codes [K / 32, N] -> uint8 as they are; W4A16: ``x`` [M, K] in ``act_dtype``;
W4A4: ``a`` e2m1 codes [M, K] -> uint8 [M, K // 2] (``ACT_PACKING``), ``a_scale`` [M, K / 32]
uint8, and the decoded operands meet in the dot in ``act_dtype`` (the op's ``compute_dtype``).
``bias`` [N] in ``act_dtype``.
"""
from __future__ import annotations

import numpy as np

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.torch_io import float_tensor, to_device, torch_dtype
from qkcheck.oracle.packing import pack

TUNABLES = {"block_m": (16, 32, 64, 128), "block_n": (16, 32, 64, 128), "block_k": (32, 64, 128, 256),
            "split_k": (1, 2, 4), "group_m": (1, 4, 8)}


def _codes(values, packing, device):
    import torch

    return to_device(torch.from_numpy(np.ascontiguousarray(pack(np.asarray(values).astype(np.uint8), packing))), device)


def _scale_codes(values, device):
    import torch

    return to_device(torch.from_numpy(np.ascontiguousarray(np.asarray(values).astype(np.uint8))), device)


def mxfp4_inputs(problem, params, device) -> dict:
    """x_or_a, w, w_scale, a_scale, bias for ``kernels.mxfp4.kernel.mxfp4_gemm`` from the
    canonical problem (``oracle.ops.mxfp4``' ``mxfp4_gemm`` keys)."""
    from qkcheck.kernels.mxfp4.kernel import ACT_PACKING, WEIGHT_PACKING

    act = problem["act"]
    if act != params["act"]:
        raise ValueError(f"the problem's act={act!r} differs from the case's act={params['act']!r}; "
                         "materialize the problem from the same case")
    bias = problem.get("bias")
    tensors = {
        "w": _codes(problem["w"], WEIGHT_PACKING, device),
        "w_scale": _scale_codes(problem["w_scale"], device),
        "bias": None if bias is None else float_tensor(bias, params["act_dtype"], device),
    }
    if act == "a16":
        tensors["x_or_a"] = float_tensor(problem["x"], params["act_dtype"], device)
        tensors["a_scale"] = None
    else:
        tensors["x_or_a"] = _codes(problem["a"], ACT_PACKING, device)
        tensors["a_scale"] = _scale_codes(problem["a_scale"], device)
    return tensors


def config_list(config) -> list[int] | None:
    """A case config (block_m, block_n, block_k[, split_k, group_m]) as the op's ``int[]``."""
    if not config:
        return None
    from qkcheck.kernels.mxfp4.kernel import MXFP4Config

    return MXFP4Config(**config).as_list()


def compute_dtype(params):
    """The op's ``compute_dtype``: None for W4A16 (the activation dtype), ``act_dtype`` for W4A4."""
    return None if params["act"] == "a16" else torch_dtype(params["act_dtype"])


def _call(t, params, config):
    import torch

    from qkcheck.kernels.mxfp4 import op  # noqa: F401 — registers qkcheck::mxfp4_gemm

    return torch.ops.qkcheck.mxfp4_gemm(
        x_or_a=t["x_or_a"], w=t["w"], w_scale=t["w_scale"], a_scale=t["a_scale"], bias=t["bias"],
        out_dtype=torch_dtype(params["out_dtype"]),
        compute_dtype=compute_dtype(params), config=config_list(config),
    )


def default_tiles(dims, params) -> dict:
    """The tiles the launcher picks for this shape (``kernels.mxfp4.kernel.default_config``)."""
    from qkcheck.kernels.mxfp4.kernel import default_config

    cfg = default_config(dims["m"], dims["n"], dims["k"])
    return {"block_m": cfg.block_m, "block_n": cfg.block_n, "block_k": cfg.block_k, "split_k": cfg.split_k,
            "group_m": cfg.group_m}


MXFP4 = KernelAdapter(
    name="bundled:mxfp4_gemm",
    op="mxfp4_gemm",
    pack=mxfp4_inputs,
    call=_call,
    tunables=TUNABLES,
    custom_op="qkcheck::mxfp4_gemm",
    default_config=default_tiles,
    description="Triton MXFP4 GEMM (e2m1 weights, E8M0 scales per 32 along K; W4A16 or W4A4, split-K)",
)


def adapters() -> tuple[KernelAdapter, ...]:
    return (MXFP4,)
