"""The bundled kernels as adapters (``--kernels bundled``): each goes through its torch.library
op, so fake-vs-real metadata is checked, and records the backend that ran."""
from __future__ import annotations

from qkcheck.kernels import backends
from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.packers import torch_dtype, w4a16_inputs


def _w4a16_pack(problem, params, device):
    return w4a16_inputs(problem, layout=params["layout"], act_dtype=params["act_dtype"], device=device)


def _w4a16_call(t, params, config):
    import torch

    from qkcheck.kernels import ops  # registers qkcheck::w4a16_gemm

    cfg = None
    if config:
        from qkcheck.kernels.triton.w4a16 import W4A16Config

        cfg = W4A16Config(**config).as_list()
    backends.record(backends.NATIVE)
    return torch.ops.qkcheck.w4a16_gemm(
        t["x"], t["qweight"], t["scales"], t["zeros"], layout=params["layout"], group_size=params["group_size"],
        bias=t["bias"], out_dtype=torch_dtype(params["out_dtype"]), config=cfg,
    )


def _w4a16_default(dims, params):
    import dataclasses

    from qkcheck.kernels.triton.w4a16 import default_config

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
    expected_backend=backends.NATIVE,
    description="Triton W4A16 GEMM (GPTQ/AWQ/nibble int4, per-row group scales, split-K)",
)


def adapters() -> tuple[KernelAdapter, ...]:
    from qkcheck.kernels import bundled_ops

    return (W4A16, *bundled_ops.adapters())
