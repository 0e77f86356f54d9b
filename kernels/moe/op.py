"""torch.library custom ops for the fused MoE, with fake implementations.

Ops (namespace ``qkcheck``):

- ``qkcheck::fused_moe(Tensor x, Tensor router_logits, Tensor w13, Tensor w2, Tensor? w13_scales,
  Tensor? w2_scales, Tensor? w13_zeros, Tensor? w2_zeros, Tensor? correction_bias,
  Tensor? expert_map, str scheme, str? layout, int? group_size, int[]? block, int top_k,
  str scoring, bool renormalize, int? num_groups, int? topk_groups, str activation,
  float? swiglu_limit, bool apply_router_weight_on_input, ScalarType? out_dtype,
  int[]? config) -> Tensor`` — :func:`fused_moe_native` (``kernels.moe.kernel.fused_moe``);
  out ``[T, H]`` in ``out_dtype or x.dtype``. ``scheme`` is a key of
  ``kernels.moe.kernel.SCHEMES``; ``layout``/``group_size`` describe w4a16 experts, ``block`` the
  fp8 weight block ``[bk, bn]`` (default 128 x 128); ``config`` is ``MoEConfig.as_list()``.
- ``qkcheck::moe_route(Tensor router_logits, int top_k, str scoring, bool renormalize,
  int? num_groups, int? topk_groups, Tensor? correction_bias) -> (Tensor, Tensor)`` — ids int32
  ``[T, k]`` and weights float32 ``[T, k]``.
- ``qkcheck::moe_align_block_size(Tensor topk_ids, int block_m, int num_experts,
  Tensor? expert_map, int num_local_experts) -> (Tensor, Tensor, Tensor)`` — sorted ids int32
  ``[cap]``, expert ids int32 ``[cap // block_m]``, ``num_tokens_post_padded`` int32 ``[1]``
  with ``cap = aligned_capacity(T*k, num_local_experts, block_m)`` =
  ``floor((T*k + min(num_local_experts, T*k)*(block_m - 1)) / block_m) * block_m``
  (``kernels.moe.kernel.aligned_capacity``: the proof of the bound is there).

:func:`fused_moe_native` records ``backends.NATIVE`` (``kernels.backends``) after the launch; its
torch twin ``kernels.moe.emulation.fused_moe_emulation`` records ``backends.EMULATION``, so a
dispatcher's choice is visible to the harness. :func:`registered_ops` lists every op here.
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.library import NAMESPACE, RegisteredOp
from qkcheck.kernels.moe import kernel as _moe

__all__ = [
    "expert_weights",
    "fused_moe",
    "fused_moe_native",
    "moe_align_block_size",
    "moe_route",
    "registered_ops",
]

DEFAULT_FP8_BLOCK = (128, 128)


def expert_weights(scheme, weight, scales, zeros, layout, group_size, block) -> _moe.ExpertWeights:
    """The :class:`ExpertWeights` of one GEMM from the op's flat arguments."""
    if block is not None and len(block) != 2:
        raise ValueError(f"block={list(block)!r} must be [bk, bn] (two ints) or None for 128 x 128")
    return _moe.ExpertWeights(
        scheme, weight, scales, zeros, layout=layout, group_size=group_size,
        block=tuple(int(b) for b in block) if block is not None else DEFAULT_FP8_BLOCK,
    )


def _config(config):
    return None if config is None else _moe.MoEConfig.from_list(config)


def fused_moe_native(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    w13_scales: torch.Tensor | None,
    w2_scales: torch.Tensor | None,
    w13_zeros: torch.Tensor | None,
    w2_zeros: torch.Tensor | None,
    correction_bias: torch.Tensor | None,
    expert_map: torch.Tensor | None,
    scheme: str,
    layout: str | None,
    group_size: int | None,
    block: list[int] | None,
    top_k: int,
    scoring: str,
    renormalize: bool,
    num_groups: int | None,
    topk_groups: int | None,
    activation: str,
    swiglu_limit: float | None,
    apply_router_weight_on_input: bool,
    out_dtype: torch.dtype | None,
    config: list[int] | None,
) -> torch.Tensor:
    """The bundled Triton fused MoE (records ``backends.NATIVE``)."""
    out = _moe.fused_moe(
        x, router_logits,
        expert_weights(scheme, w13, w13_scales, w13_zeros, layout, group_size, block),
        expert_weights(scheme, w2, w2_scales, w2_zeros, layout, group_size, block),
        top_k=top_k, scoring=scoring, renormalize=renormalize, num_groups=num_groups, topk_groups=topk_groups,
        correction_bias=correction_bias, activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map,
        out_dtype=out_dtype, config=_config(config),
    )
    backends.record(backends.NATIVE)
    return out


def _fused_moe_fake(
    x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
    scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups, activation,
    swiglu_limit, apply_router_weight_on_input, out_dtype, config,
):
    """Contract: y is ``[T, H]`` = x's shape, dtype ``out_dtype or x.dtype``, on x's device.
    Arguments are validated from metadata like the real op."""
    _moe.check_fused_moe_arguments(
        x, router_logits,
        expert_weights(scheme, w13, w13_scales, w13_zeros, layout, group_size, block),
        expert_weights(scheme, w2, w2_scales, w2_zeros, layout, group_size, block),
        top_k=top_k, scoring=scoring, renormalize=renormalize, num_groups=num_groups, topk_groups=topk_groups,
        correction_bias=correction_bias, activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map,
        out_dtype=out_dtype, config=_config(config),
    )
    return x.new_empty(tuple(x.shape), dtype=out_dtype if out_dtype is not None else x.dtype)


fused_moe = torch.library.custom_op(f"{NAMESPACE}::fused_moe", mutates_args=())(fused_moe_native)
fused_moe.register_fake(_fused_moe_fake)


def _route_real(
    router_logits: torch.Tensor, top_k: int, scoring: str, renormalize: bool,
    num_groups: int | None, topk_groups: int | None, correction_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _moe.route(
        router_logits, top_k, scoring=scoring, renormalize=renormalize, num_groups=num_groups,
        topk_groups=topk_groups, correction_bias=correction_bias,
    )


def _route_fake(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias):
    """Contract: ids int32 ``[T, top_k]``, weights float32 ``[T, top_k]``."""
    _moe._check_routing(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias)
    T = router_logits.shape[0]
    return (router_logits.new_empty((T, top_k), dtype=torch.int32),
            router_logits.new_empty((T, top_k), dtype=torch.float32))


moe_route = torch.library.custom_op(f"{NAMESPACE}::moe_route", mutates_args=())(_route_real)
moe_route.register_fake(_route_fake)


def _align_real(
    topk_ids: torch.Tensor, block_m: int, num_experts: int, expert_map: torch.Tensor | None,
    num_local_experts: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _moe.align_block_size(topk_ids, block_m, num_experts, expert_map, num_local_experts=num_local_experts)


def _align_fake(topk_ids, block_m, num_experts, expert_map, num_local_experts):
    """Contract: the lengths depend on shapes only (module docstring)."""
    for name, value in (("block_m", block_m), ("num_experts", num_experts), ("num_local_experts", num_local_experts)):
        _moe._require_int(name, value, minimum=1)
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids.shape={tuple(topk_ids.shape)} must be 2-D [T, top_k]")
    if expert_map is not None and tuple(expert_map.shape) != (num_experts,):
        raise ValueError(f"expert_map.shape={tuple(expert_map.shape)} must be [num_experts] = [{num_experts}]")
    n = topk_ids.shape[0] * topk_ids.shape[1]
    cap = _moe.aligned_capacity(n, num_local_experts, block_m)
    return (topk_ids.new_empty((cap,), dtype=torch.int32),
            topk_ids.new_empty((cap // block_m,), dtype=torch.int32),
            topk_ids.new_empty((1,), dtype=torch.int32))


moe_align_block_size = torch.library.custom_op(f"{NAMESPACE}::moe_align_block_size", mutates_args=())(_align_real)
moe_align_block_size.register_fake(_align_fake)


def registered_ops() -> dict[str, RegisteredOp]:
    """Every custom op of this module, by name (real and fake callables and the OpOverload)."""
    return {
        f"{NAMESPACE}::fused_moe": RegisteredOp(
            f"{NAMESPACE}::fused_moe", fused_moe_native, _fused_moe_fake, torch.ops.qkcheck.fused_moe.default,
        ),
        f"{NAMESPACE}::moe_route": RegisteredOp(
            f"{NAMESPACE}::moe_route", _route_real, _route_fake, torch.ops.qkcheck.moe_route.default,
        ),
        f"{NAMESPACE}::moe_align_block_size": RegisteredOp(
            f"{NAMESPACE}::moe_align_block_size", _align_real, _align_fake,
            torch.ops.qkcheck.moe_align_block_size.default,
        ),
    }
