"""torch.library custom ops for the W8A8 / FP8 GEMMs of ``kernels.scaled_mm.kernel``, each with a
fake (meta) implementation.

Ops (namespace ``qkcheck``):

- ``qkcheck::scaled_mm(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, ScalarType out_dtype,
  Tensor? bias, Tensor? azp, int[]? config, str? fp8_path=None) -> Tensor``
- ``qkcheck::block_scaled_mm(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, int[] block,
  ScalarType out_dtype, Tensor? bias, int[]? config, str? fp8_path=None) -> Tensor``
- ``qkcheck::fp8_w8a16_gemm(Tensor x, Tensor b, Tensor b_scale, ScalarType out_dtype,
  Tensor? bias, int[]? config, str? fp8_path=None) -> Tensor``; ``b_scale`` broadcasts against
  ``b [K, N]`` like ``b.float() * b_scale`` (``[1, N]`` / ``[N]`` per output channel, ``[K, 1]``
  per input row, ``[]`` / ``[1]`` / ``[1, 1]`` per tensor): an ``[N, 1]`` scale with N != K is
  rejected, by the fake too, and on a square weight scales the rows k

``config`` is ``ScaledMMConfig.as_list()`` (block_m, block_n, block_k[, split_k, group_m,
num_warps, num_stages]) or None for the default; ``block`` is ``[block_k, block_n]``.
``fp8_path`` is ``"native"``, ``"decode"`` or None for the device's default (the fp8 operand path
of ``kernels.scaled_mm.kernel``): a caller leaves it None; a harness forces ``"decode"`` to check
the in-kernel decoding on a device whose default is native (the CPU interpreter, sm_89+).

Fake contract (shared by all three): the output is ``[M, N]`` with ``M = a.shape[0]`` (``x``)
and ``N = b.shape[1]``, dtype ``out_dtype``, on the first operand's device; arguments are
validated exactly like the real op (metadata only). The fakes derive the shape from the
contract, not from the launchers' allocation code, so a bug there is not shared.

:func:`registered_ops` lists every op with its real and fake callables. Each real implementation
records ``backends.NATIVE`` (``kernels.backends``) after the launch.
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.library import NAMESPACE, RegisteredOp
from qkcheck.kernels.scaled_mm import kernel as _sm

__all__ = ["block_scaled_mm", "fp8_w8a16_gemm", "registered_ops", "scaled_mm"]


def _config(config: list[int] | None) -> _sm.ScaledMMConfig | None:
    return None if config is None else _sm.ScaledMMConfig.from_list(config)


def _block(block) -> tuple[int, int]:
    if len(block) != 2:
        raise ValueError(f"block={list(block)!r} must have 2 entries [block_k, block_n], e.g. [128, 128]")
    return int(block[0]), int(block[1])


def _contract_output(first: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return first.new_empty((first.shape[0], b.shape[1]), dtype=out_dtype)


# ---------------------------------------------------------------------------------- scaled_mm
def _scaled_mm_real(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    azp: torch.Tensor | None,
    config: list[int] | None,
    fp8_path: str | None = None,
) -> torch.Tensor:
    out = _sm.scaled_mm(a, b, a_scale, b_scale, out_dtype=out_dtype, bias=bias, azp=azp, config=_config(config),
                        fp8_path=fp8_path)
    backends.record(backends.NATIVE)
    return out


def _scaled_mm_fake(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    azp: torch.Tensor | None,
    config: list[int] | None,
    fp8_path: str | None = None,
) -> torch.Tensor:
    _sm.check_scaled_mm_arguments(a, b, a_scale, b_scale, out_dtype=out_dtype, bias=bias, azp=azp, fp8_path=fp8_path)
    _config(config)
    return _contract_output(a, b, out_dtype)


scaled_mm = torch.library.custom_op(f"{NAMESPACE}::scaled_mm", mutates_args=())(_scaled_mm_real)
scaled_mm.register_fake(_scaled_mm_fake)


# ---------------------------------------------------------------------------------- block_scaled_mm
def _block_scaled_mm_real(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    block: list[int],
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    config: list[int] | None,
    fp8_path: str | None = None,
) -> torch.Tensor:
    out = _sm.block_scaled_mm(
        a, b, a_scale, b_scale, block=_block(block), out_dtype=out_dtype, bias=bias, config=_config(config),
        fp8_path=fp8_path,
    )
    backends.record(backends.NATIVE)
    return out


def _block_scaled_mm_fake(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    block: list[int],
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    config: list[int] | None,
    fp8_path: str | None = None,
) -> torch.Tensor:
    _sm.check_block_scaled_mm_arguments(a, b, a_scale, b_scale, block=_block(block), out_dtype=out_dtype, bias=bias,
                                        fp8_path=fp8_path)
    _config(config)
    return _contract_output(a, b, out_dtype)


block_scaled_mm = torch.library.custom_op(f"{NAMESPACE}::block_scaled_mm", mutates_args=())(_block_scaled_mm_real)
block_scaled_mm.register_fake(_block_scaled_mm_fake)


# ---------------------------------------------------------------------------------- fp8_w8a16_gemm
def _fp8_w8a16_real(
    x: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    config: list[int] | None,
    fp8_path: str | None = None,
) -> torch.Tensor:
    out = _sm.fp8_w8a16_gemm(x, b, b_scale, out_dtype=out_dtype, bias=bias, config=_config(config), fp8_path=fp8_path)
    backends.record(backends.NATIVE)
    return out


def _fp8_w8a16_fake(
    x: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    config: list[int] | None,
    fp8_path: str | None = None,
) -> torch.Tensor:
    _sm.check_fp8_w8a16_arguments(x, b, b_scale, out_dtype=out_dtype, bias=bias, fp8_path=fp8_path)
    _config(config)
    return _contract_output(x, b, out_dtype)


fp8_w8a16_gemm = torch.library.custom_op(f"{NAMESPACE}::fp8_w8a16_gemm", mutates_args=())(_fp8_w8a16_real)
fp8_w8a16_gemm.register_fake(_fp8_w8a16_fake)


def registered_ops() -> dict[str, RegisteredOp]:
    """Every custom op of this module, by name (``kernels.library.RegisteredOp`` records)."""
    return {
        f"{NAMESPACE}::scaled_mm": RegisteredOp(
            f"{NAMESPACE}::scaled_mm", _scaled_mm_real, _scaled_mm_fake, torch.ops.qkcheck.scaled_mm.default,
        ),
        f"{NAMESPACE}::block_scaled_mm": RegisteredOp(
            f"{NAMESPACE}::block_scaled_mm", _block_scaled_mm_real, _block_scaled_mm_fake,
            torch.ops.qkcheck.block_scaled_mm.default,
        ),
        f"{NAMESPACE}::fp8_w8a16_gemm": RegisteredOp(
            f"{NAMESPACE}::fp8_w8a16_gemm", _fp8_w8a16_real, _fp8_w8a16_fake,
            torch.ops.qkcheck.fp8_w8a16_gemm.default,
        ),
    }
