"""torch.library custom op for the bundled W4A16 GEMM, with a fake (meta) implementation.

Op (namespace ``qkcheck``):

- ``qkcheck::w4a16_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, str layout,
  int group_size, Tensor? bias, ScalarType? out_dtype, int[]? config) -> Tensor``
  — ``kernels.w4a16.kernel.w4a16_gemm``; ``config`` is ``W4A16Config.as_list()``
  (block_m, block_n, block_k[, split_k, group_m, num_warps, num_stages]) or None for the default.
  The real implementation records ``backends.NATIVE`` (``kernels.backends``) after the launch.

:func:`registered_ops` lists it with its real and fake callables (``kernels.library.RegisteredOp``),
so a harness can run both on the same inputs and compare output metadata (the fake must not
share a bug with the real allocation: it derives shape and dtype from the op's contract, not
from the launcher).
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.library import NAMESPACE, RegisteredOp
from qkcheck.kernels.w4a16 import kernel as _w4a16

__all__ = ["registered_ops", "w4a16_gemm"]


def _w4a16_real(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    layout: str,
    group_size: int,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    config: list[int] | None,
) -> torch.Tensor:
    out = _w4a16.w4a16_gemm(
        x, qweight, scales, zeros, layout=layout, group_size=group_size, bias=bias,
        out_dtype=out_dtype, config=None if config is None else _w4a16.W4A16Config.from_list(config),
    )
    backends.record(backends.NATIVE)
    return out


def _w4a16_fake(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    layout: str,
    group_size: int,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    config: list[int] | None,
) -> torch.Tensor:
    """Contract: out is ``[M, N]`` with M = x.shape[0], N = scales.shape[1], dtype
    ``out_dtype or x.dtype``, on x's device. Arguments are validated like the real op."""
    _w4a16.check_arguments(
        x, qweight, scales, zeros, layout=layout, group_size=group_size, bias=bias, out_dtype=out_dtype,
    )
    if config is not None:
        _w4a16.W4A16Config.from_list(config)
    return x.new_empty((x.shape[0], scales.shape[1]), dtype=out_dtype if out_dtype is not None else x.dtype)


w4a16_gemm = torch.library.custom_op(f"{NAMESPACE}::w4a16_gemm", mutates_args=())(_w4a16_real)
w4a16_gemm.register_fake(_w4a16_fake)


def registered_ops() -> dict[str, RegisteredOp]:
    """The custom op of this module, by name."""
    return {
        f"{NAMESPACE}::w4a16_gemm": RegisteredOp(
            f"{NAMESPACE}::w4a16_gemm", _w4a16_real, _w4a16_fake, torch.ops.qkcheck.w4a16_gemm.default,
        ),
    }
