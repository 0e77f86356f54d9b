"""torch.library custom ops wrapping the quantization kernels of ``kernels.quant.kernel``, each with
a fake (meta) implementation.

Ops (namespace ``qkcheck``; ``config`` is the kernel's config ``.as_list()`` or None for the
launcher's default):

- ``qkcheck::per_token_quant(Tensor x, ScalarType quant_dtype, float? scale_ub, int[]? config)
  -> (Tensor codes, Tensor scales)`` — codes ``[M, K]`` quant_dtype, scales ``[M, 1]`` float32;
  config: ``TileConfig`` (block_m, block_k[, num_warps, sw_fp8]).
- ``qkcheck::static_quant(Tensor x, Tensor scale, ScalarType quant_dtype, int[]? config)
  -> Tensor codes`` — codes ``[M, K]`` quant_dtype; scale float32 ``[]`` or ``[1]``;
  config: ``TileConfig``.
- ``qkcheck::per_token_group_quant(Tensor x, int group_size, ScalarType quant_dtype,
  bool column_major_scales, bool scale_ue8m0, int[]? config) -> (Tensor codes, Tensor scales)``
  — codes ``[M, K]`` quant_dtype, scales ``[M, K/G]`` float32 with strides ``(K/G, 1)``
  (row-major) or ``(1, M)`` (column-major); config: ``GroupConfig`` (block_m, block_g[,
  num_warps, sw_fp8]).
- ``qkcheck::mx_quant(Tensor x, str fmt, str scale_rule, int[]? config) -> (Tensor codes,
  Tensor scales)`` — fmt ``mxfp4``, ``mxfp6_e2m3``, ``mxfp6_e3m2``, ``mxfp8_e4m3``,
  ``mxfp8_e5m2``; codes uint8: mxfp4 ``[M, K/2]`` (two e2m1 codes per byte, low nibble = even
  k), the others ``[M, K]`` (one bit pattern per byte); scales ``[M, K/32]`` uint8 E8M0 codes;
  config: ``MXConfig`` (block_m, block_g[, num_warps]).
- ``qkcheck::nvfp4_quant(Tensor x, Tensor global_scale, int[]? config) -> (Tensor packed,
  Tensor scales)`` — global_scale float32 ``[]`` or ``[1]`` (the dequantization multiplier);
  packed ``[M, K/2]`` uint8 (two e2m1 codes per byte, low nibble = even k), scales ``[M, K/16]``
  uint8 E4M3 codes; config: ``NVFP4Config`` (block_m, block_g[, num_warps]).

quant_dtype: ``torch.int8``, ``torch.float8_e4m3fn``, ``torch.float8_e4m3fnuz``,
``torch.float8_e5m2``. Every output lives on x's device. MX and NVFP4 outputs are bytes (uint8
bit patterns; ``kernels.quant.kernel``'s docstring says why and how to view them as float8).

:data:`REGISTERED` (also returned by :func:`registered_ops`) maps each op name to a
``kernels.library.RegisteredOp`` with its real and fake callables and its OpOverload. Each real
implementation records ``backends.NATIVE`` (``kernels.backends``) after the launch. Each fake
validates its arguments like the real op and builds its outputs from the contract above, written
out here, never by calling the launcher's allocation code, so a wrong dtype, shape or stride in
either shows up when the two are compared.
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.library import NAMESPACE, RegisteredOp
from qkcheck.kernels.quant import kernel as _q

__all__ = [
    "REGISTERED",
    "mx_quant",
    "nvfp4_quant",
    "per_token_group_quant",
    "per_token_quant",
    "registered_ops",
    "static_quant",
]


def _config(cls, values):
    return None if values is None else cls.from_list(values)


# ------------------------------------------------------------------ per_token_quant


def _per_token_quant_real(
    x: torch.Tensor, quant_dtype: torch.dtype, scale_ub: float | None, config: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    out = _q.per_token_quant(x, quant_dtype, scale_ub=scale_ub, config=_config(_q.TileConfig, config))
    backends.record(backends.NATIVE)
    return out


def _per_token_quant_fake(
    x: torch.Tensor, quant_dtype: torch.dtype, scale_ub: float | None, config: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contract: codes ``[M, K]`` in quant_dtype, scales ``[M, 1]`` float32, on x's device."""
    M, K = _q.check_per_token_quant(x, quant_dtype, scale_ub=scale_ub)
    _config(_q.TileConfig, config)
    return (
        torch.empty((M, K), dtype=quant_dtype, device=x.device),
        torch.empty((M, 1), dtype=torch.float32, device=x.device),
    )


per_token_quant = torch.library.custom_op(f"{NAMESPACE}::per_token_quant", mutates_args=())(_per_token_quant_real)
per_token_quant.register_fake(_per_token_quant_fake)


# ------------------------------------------------------------------ static_quant


def _static_quant_real(
    x: torch.Tensor, scale: torch.Tensor, quant_dtype: torch.dtype, config: list[int] | None,
) -> torch.Tensor:
    out = _q.static_quant(x, scale, quant_dtype, config=_config(_q.TileConfig, config))
    backends.record(backends.NATIVE)
    return out


def _static_quant_fake(
    x: torch.Tensor, scale: torch.Tensor, quant_dtype: torch.dtype, config: list[int] | None,
) -> torch.Tensor:
    """Contract: codes ``[M, K]`` in quant_dtype on x's device."""
    M, K = _q.check_static_quant(x, scale, quant_dtype)
    _config(_q.TileConfig, config)
    return torch.empty((M, K), dtype=quant_dtype, device=x.device)


static_quant = torch.library.custom_op(f"{NAMESPACE}::static_quant", mutates_args=())(_static_quant_real)
static_quant.register_fake(_static_quant_fake)


# ------------------------------------------------------------------ per_token_group_quant


def _per_token_group_quant_real(
    x: torch.Tensor, group_size: int, quant_dtype: torch.dtype, column_major_scales: bool, scale_ue8m0: bool,
    config: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    out = _q.per_token_group_quant(
        x, group_size, quant_dtype, column_major_scales=column_major_scales, scale_ue8m0=scale_ue8m0,
        config=_config(_q.GroupConfig, config),
    )
    backends.record(backends.NATIVE)
    return out


def _per_token_group_quant_fake(
    x: torch.Tensor, group_size: int, quant_dtype: torch.dtype, column_major_scales: bool, scale_ue8m0: bool,
    config: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contract: codes ``[M, K]`` in quant_dtype; scales ``[M, K/G]`` float32 with strides
    ``(K/G, 1)``, or ``(1, M)`` when column_major_scales; on x's device."""
    M, K, groups = _q.check_per_token_group_quant(x, group_size, quant_dtype)
    _config(_q.GroupConfig, config)
    strides = (1, M) if column_major_scales else (groups, 1)
    return (
        torch.empty((M, K), dtype=quant_dtype, device=x.device),
        torch.empty_strided((M, groups), strides, dtype=torch.float32, device=x.device),
    )


per_token_group_quant = torch.library.custom_op(
    f"{NAMESPACE}::per_token_group_quant", mutates_args=(),
)(_per_token_group_quant_real)
per_token_group_quant.register_fake(_per_token_group_quant_fake)


# ------------------------------------------------------------------ mx_quant


def _mx_quant_real(x: torch.Tensor, fmt: str, scale_rule: str,
                   config: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    out = _q.mx_quant(x, fmt=fmt, scale_rule=scale_rule, config=_config(_q.MXConfig, config))
    backends.record(backends.NATIVE)
    return out


def _mx_quant_fake(x: torch.Tensor, fmt: str, scale_rule: str,
                   config: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Contract: codes uint8 ``[M, K/2]`` (mxfp4, packed) or ``[M, K]`` (every other fmt),
    scales ``[M, K/32]`` uint8, on x's device."""
    M, K = _q.check_mx_quant(x, scale_rule, fmt)
    _config(_q.MXConfig, config)
    return (
        torch.empty((M, K // 2) if fmt == "mxfp4" else (M, K), dtype=torch.uint8, device=x.device),
        torch.empty((M, K // 32), dtype=torch.uint8, device=x.device),
    )


mx_quant = torch.library.custom_op(f"{NAMESPACE}::mx_quant", mutates_args=())(_mx_quant_real)
mx_quant.register_fake(_mx_quant_fake)


# ------------------------------------------------------------------ nvfp4_quant


def _nvfp4_quant_real(x: torch.Tensor, global_scale: torch.Tensor,
                      config: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    out = _q.nvfp4_quant(x, global_scale, config=_config(_q.NVFP4Config, config))
    backends.record(backends.NATIVE)
    return out


def _nvfp4_quant_fake(x: torch.Tensor, global_scale: torch.Tensor,
                      config: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Contract: packed ``[M, K/2]`` uint8, scales ``[M, K/16]`` uint8, on x's device."""
    M, K = _q.check_nvfp4_quant(x, global_scale)
    _config(_q.NVFP4Config, config)
    return (
        torch.empty((M, K // 2), dtype=torch.uint8, device=x.device),
        torch.empty((M, K // 16), dtype=torch.uint8, device=x.device),
    )


nvfp4_quant = torch.library.custom_op(f"{NAMESPACE}::nvfp4_quant", mutates_args=())(_nvfp4_quant_real)
nvfp4_quant.register_fake(_nvfp4_quant_fake)


# ------------------------------------------------------------------ registry


def registered_ops() -> dict[str, RegisteredOp]:
    """Every custom op of this module, by name (``qkcheck::<op>``)."""
    ops = torch.ops.qkcheck
    return {
        f"{NAMESPACE}::{name}": RegisteredOp(f"{NAMESPACE}::{name}", real, fake, getattr(ops, name).default)
        for name, real, fake in (
            ("per_token_quant", _per_token_quant_real, _per_token_quant_fake),
            ("static_quant", _static_quant_real, _static_quant_fake),
            ("per_token_group_quant", _per_token_group_quant_real, _per_token_group_quant_fake),
            ("mx_quant", _mx_quant_real, _mx_quant_fake),
            ("nvfp4_quant", _nvfp4_quant_real, _nvfp4_quant_fake),
        )
    }


REGISTERED: dict[str, RegisteredOp] = registered_ops()
