"""torch.library custom op for the bundled MXFP4 GEMM, with a fake (meta) implementation.

Op (namespace ``qkcheck``):

- ``qkcheck::mxfp4_gemm(Tensor x_or_a, Tensor w, Tensor w_scale, Tensor? a_scale, Tensor? bias,
  ScalarType out_dtype, ScalarType? compute_dtype, int[]? config) -> Tensor``
  -- ``kernels.mxfp4.kernel.mxfp4_gemm``. ``a_scale`` None: W4A16 (x_or_a fp16/bf16 ``[M, K]``);
  given: W4A4 (x_or_a uint8 ``[M, K // 2]`` packed e2m1). ``config`` is ``MXFP4Config.as_list()``
  (block_m, block_n, block_k[, split_k, group_m, num_warps, num_stages, dot_scaled]) or None.
  The real implementation records ``backends.NATIVE`` (``kernels.backends``) after the launch.

:func:`registered_ops` lists it as a ``kernels.library.RegisteredOp`` record, so a harness can
run real and fake on the same inputs and compare output metadata. The fake derives shape and
dtype from the contract, not from the launcher.
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.library import NAMESPACE, RegisteredOp
from qkcheck.kernels.mxfp4 import kernel as _mxfp4

__all__ = ["mxfp4_gemm", "registered_ops"]

OP_NAME = f"{NAMESPACE}::mxfp4_gemm"


def _config(config: list[int] | None) -> _mxfp4.MXFP4Config | None:
    return None if config is None else _mxfp4.MXFP4Config.from_list(config)


def _mxfp4_real(
    x_or_a: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    a_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    compute_dtype: torch.dtype | None,
    config: list[int] | None,
) -> torch.Tensor:
    out = _mxfp4.mxfp4_gemm(
        x_or_a, w, w_scale, a_scale=a_scale, bias=bias, out_dtype=out_dtype, compute_dtype=compute_dtype,
        config=_config(config),
    )
    backends.record(backends.NATIVE)
    return out


def _mxfp4_fake(
    x_or_a: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    a_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    compute_dtype: torch.dtype | None,
    config: list[int] | None,
) -> torch.Tensor:
    """Contract: out is ``[M, N]`` with M = x_or_a.shape[0] and N = w_scale.shape[1] (one E8M0
    code per output column and K block), dtype ``out_dtype``, on x_or_a's device. Arguments are
    validated like the real op."""
    _mxfp4.check_arguments(
        x_or_a, w, w_scale, a_scale=a_scale, bias=bias, out_dtype=out_dtype, compute_dtype=compute_dtype,
        config=_config(config),
    )
    return x_or_a.new_empty((x_or_a.shape[0], w_scale.shape[1]), dtype=out_dtype)


mxfp4_gemm = torch.library.custom_op(OP_NAME, mutates_args=())(_mxfp4_real)
mxfp4_gemm.register_fake(_mxfp4_fake)


def registered_ops() -> dict[str, RegisteredOp]:
    """Every custom op of this module, by name."""
    return {OP_NAME: RegisteredOp(OP_NAME, _mxfp4_real, _mxfp4_fake, torch.ops.qkcheck.mxfp4_gemm.default)}
