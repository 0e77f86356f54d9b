"""The bundled W4A16 GEMM as an adapter (``bundled:w4a16_gemm``), through ``qkcheck::w4a16_gemm``
(fake-vs-real metadata is checked; the op records the backend that ran), and its packer.

Packing (:func:`w4a16_inputs`): the canonical problem's uint4 codes and zero points are packed
per the layout's ``oracle.packing`` records (``kernels.w4a16.kernel.LAYOUTS``, the same records
the kernel reads its layout facts from, so the packer and the kernel cannot disagree silently
about field order or axis); x, scales and bias are given in the activation dtype.
"""
from __future__ import annotations

import numpy as np
import torch

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.torch_io import float_tensor, to_device, torch_dtype
from qkcheck.oracle.packing import pack


def w4a16_inputs(problem, *, layout: str, act_dtype: str, device: str) -> dict[str, torch.Tensor | None]:
    """x, qweight, scales, zeros, bias for ``kernels.w4a16.kernel`` in ``layout``.

    problem: ``x [M,K]``, ``q [K,N]`` uint4 codes, ``scales [K/G,N]``, ``zeros [K/G,N] | None``,
    ``bias [N] | None`` (``oracle.ops.w4a16``). Scales and bias are given in ``act_dtype``.
    """
    from qkcheck.kernels.w4a16.kernel import LAYOUTS

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


def _w4a16_pack(problem, params, device):
    return w4a16_inputs(problem, layout=params["layout"], act_dtype=params["act_dtype"], device=device)


def _w4a16_call(t, params, config):
    from qkcheck.kernels.w4a16 import op  # noqa: F401 — registers qkcheck::w4a16_gemm

    cfg = None
    if config:
        from qkcheck.kernels.w4a16.kernel import W4A16Config

        cfg = W4A16Config(**config).as_list()
    return torch.ops.qkcheck.w4a16_gemm(
        t["x"], t["qweight"], t["scales"], t["zeros"], layout=params["layout"], group_size=params["group_size"],
        bias=t["bias"], out_dtype=torch_dtype(params["out_dtype"]), config=cfg,
    )


def _w4a16_default(dims, params):
    import dataclasses

    from qkcheck.kernels.w4a16.kernel import default_config

    return dataclasses.asdict(default_config(dims["m"], dims["n"], dims["k"], params["group_size"]))


W4A16 = KernelAdapter(
    name="bundled:w4a16_gemm",
    op="w4a16_gemm",
    pack=_w4a16_pack,
    call=_w4a16_call,
    layouts=("gptq", "awq", "nibble"),
    tunables={"block_m": (16, 32, 64, 128), "block_n": (16, 32, 64, 128), "block_k": (16, 32, 64, 128, 256),
              "split_k": (1, 2, 4), "group_m": (1, 4, 8)},
    custom_op="qkcheck::w4a16_gemm",
    default_config=_w4a16_default,
    description="Triton W4A16 GEMM (GPTQ/AWQ/nibble int4, per-row group scales, split-K)",
)


def adapters() -> tuple[KernelAdapter, ...]:
    return (W4A16,)
