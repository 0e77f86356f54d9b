"""torch.library custom ops for the fused MoE, with fake implementations, and its emulation backend.

Ops (namespace ``qkcheck``):

- ``qkcheck::fused_moe(Tensor x, Tensor router_logits, Tensor w13, Tensor w2, Tensor? w13_scales,
  Tensor? w2_scales, Tensor? w13_zeros, Tensor? w2_zeros, Tensor? correction_bias,
  Tensor? expert_map, str scheme, str? layout, int? group_size, int[]? block, int top_k,
  str scoring, bool renormalize, int? num_groups, int? topk_groups, str activation,
  float? swiglu_limit, bool apply_router_weight_on_input, ScalarType? out_dtype,
  int[]? config) -> Tensor`` — :func:`fused_moe_native` (``kernels.triton.moe.fused_moe``);
  out ``[T, H]`` in ``out_dtype or x.dtype``. ``scheme`` is a key of
  ``kernels.triton.moe.SCHEMES``; ``layout``/``group_size`` describe w4a16 experts, ``block`` the
  fp8 weight block ``[bk, bn]`` (default 128 x 128); ``config`` is ``MoEConfig.as_list()``.
- ``qkcheck::moe_route(Tensor router_logits, int top_k, str scoring, bool renormalize,
  int? num_groups, int? topk_groups, Tensor? correction_bias) -> (Tensor, Tensor)`` — ids int32
  ``[T, k]`` and weights float32 ``[T, k]``.
- ``qkcheck::moe_align_block_size(Tensor topk_ids, int block_m, int num_experts,
  Tensor? expert_map, int num_local_experts) -> (Tensor, Tensor, Tensor)`` — sorted ids int32
  ``[cap]``, expert ids int32 ``[cap // block_m]``, ``num_tokens_post_padded`` int32 ``[1]``
  with ``cap = aligned_capacity(T*k, num_local_experts, block_m)`` =
  ``floor((T*k + min(num_local_experts, T*k)*(block_m - 1)) / block_m) * block_m``
  (``kernels.triton.moe.aligned_capacity``: the proof of the bound is there).

:func:`fused_moe_emulation` has the signature of :func:`fused_moe_native` and computes the same
thing in plain torch (every expert dequantized to float32, a loop over experts). The native path
records ``backends.NATIVE``, the emulation ``backends.EMULATION`` (``kernels.backends``), so a
dispatcher's choice is visible to the harness. :func:`registered_ops` lists every op here.
"""
from __future__ import annotations


import torch

from qkcheck.kernels import backends
from qkcheck.kernels.ops import RegisteredOp
from qkcheck.kernels.triton import moe as _moe

__all__ = [
    "expert_weights",
    "fused_moe",
    "fused_moe_emulation",
    "fused_moe_native",
    "moe_align_block_size",
    "moe_route",
    "registered_ops",
]

NAMESPACE = "qkcheck"
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


# ---------------------------------------------------------------------------------------------
# emulation

_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _unpack_torch(words: torch.Tensor, packing, K: int, N: int) -> torch.Tensor:
    """Codes ``[E, K, N]`` (int64) from packed ``[E, ...]`` words per an ``oracle.packing.Packing``."""
    per_k = _moe._per_axis(packing, 0)
    per_n = _moe._per_axis(packing, 1)
    w = words.to(torch.int64) & ((1 << packing.container_bits) - 1)
    k = torch.arange(K, device=words.device)
    n = torch.arange(N, device=words.device)
    # the field holding element p of a word's run (inverse of field_order)
    field_of = torch.tensor(
        [packing.field_order.index(p) for p in range(packing.per_word)], device=words.device,
    )
    gathered = w[:, k // per_k][:, :, n // per_n]
    element = (k % per_k)[:, None] + (n % per_n)[None, :]
    shift = field_of[element] * packing.bits
    return (gathered >> shift) & ((1 << packing.bits) - 1)


def _dequantize_experts(ew: _moe.ExpertWeights, K: int, N: int) -> torch.Tensor:
    """Every expert's exact weights as float32 ``[E, K, N]``."""
    scheme = _moe.SCHEMES[ew.scheme]
    w = ew.weight
    if scheme.name == "dense":
        return w.float()
    if scheme.name == "fp8_block":
        bk, bn = ew.block
        s = ew.scales.repeat_interleave(bk, dim=1)[:, :K].repeat_interleave(bn, dim=2)[:, :, :N]
        return w.float() * s
    if scheme.name == "w4a16":
        record = _moe.W4A16_LAYOUTS[ew.layout]
        G = K if ew.group_size == -1 else ew.group_size
        q = _unpack_torch(w, record.qweight, K, N)
        if ew.zeros is None:
            z = torch.full_like(q[:, :: G], _moe.SYMMETRIC_ZERO)
        else:
            z = _unpack_torch(ew.zeros, record.zeros, K // G, N)
        return (q - z.repeat_interleave(G, dim=1)).float() * ew.scales.float().repeat_interleave(G, dim=1)
    # mxfp4
    q = _unpack_torch(w, _moe.W4A16_LAYOUTS[_moe.MXFP4_LAYOUT].qweight, K, N)
    values = torch.tensor(_E2M1_VALUES, dtype=torch.float32, device=w.device)[q]
    s = ew.scales.to(torch.int32)
    scale = torch.where(s == 255, torch.nan, torch.exp2((s - 127).double())).float()
    return values * scale.repeat_interleave(_moe.MX_BLOCK, dim=1)


def _fake_quant_fp8(v: torch.Tensor, group: int, fp8_dtype: torch.dtype) -> torch.Tensor:
    """Per-row, per-``group`` dynamic fp8 quantize-dequantize of float32 ``v [R, K]``."""
    R, K = v.shape
    pad = (-K) % group
    vp = torch.nn.functional.pad(v, (0, pad)).reshape(R, -1, group)
    fp8_max = torch.finfo(fp8_dtype).max
    scale = vp.abs().amax(dim=-1, keepdim=True).clamp(min=_moe.ACT_QUANT_FLOOR) / fp8_max
    codes = (vp / scale).clamp(-fp8_max, fp8_max).to(fp8_dtype)
    return (codes.float() * scale).reshape(R, -1)[:, :K]


def _activate_torch(h: torch.Tensor, I: int, activation: str, limit: float | None) -> torch.Tensor:
    gate, up = h[:, :I], h[:, I:]
    if limit is not None:
        gate = gate.clamp(max=limit)
        up = up.clamp(-limit, limit)
    if activation == "silu":
        return torch.nn.functional.silu(gate) * up
    return gate * torch.sigmoid(_moe.SWIGLU_ALPHA * gate) * (up + 1.0)


def fused_moe_emulation(
    x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
    scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups, activation,
    swiglu_limit, apply_router_weight_on_input, out_dtype, config,
) -> torch.Tensor:
    """Same signature and meaning as :func:`fused_moe_native`, in plain torch (records
    ``backends.EMULATION``): dequantize every local expert to float32, then per expert a float32
    matmul over its tokens; the activation output is rounded to x.dtype (and fp8 schemes
    quantize-dequantize activations per token and group of bk) like the native path. ``config``
    is validated and otherwise ignored."""
    e13 = expert_weights(scheme, w13, w13_scales, w13_zeros, layout, group_size, block)
    e2 = expert_weights(scheme, w2, w2_scales, w2_zeros, layout, group_size, block)
    _moe.check_fused_moe_arguments(
        x, router_logits, e13, e2, top_k=top_k, scoring=scoring, renormalize=renormalize,
        num_groups=num_groups, topk_groups=topk_groups, correction_bias=correction_bias,
        activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map,
        out_dtype=out_dtype, config=_config(config),
    )
    T, H = x.shape
    E_local = e13.weight.shape[0]
    I = (e13.scales.shape[2] if _moe.SCHEMES[scheme].packed else e13.weight.shape[2]) // 2
    if expert_map is not None:
        _moe._check_expert_map(expert_map, router_logits.shape[1], E_local)
    ids, weights = _moe.route_torch(
        router_logits, top_k, scoring=scoring, renormalize=renormalize, num_groups=num_groups,
        topk_groups=topk_groups, correction_bias=correction_bias,
    )
    local = ids.long() if expert_map is None else expert_map.long()[ids.long()]
    d13 = _dequantize_experts(e13, H, 2 * I)
    d2 = _dequantize_experts(e2, I, H)
    quantized = _moe.SCHEMES[scheme].quantized_activations
    bk = e13.block[0]
    slots = torch.zeros((T, top_k, H), dtype=torch.float32, device=x.device)
    for e in range(E_local):
        t_idx, j_idx = torch.nonzero(local == e, as_tuple=True)
        if t_idx.numel() == 0:
            continue
        r = weights[t_idx, j_idx][:, None]
        a = x[t_idx].float()
        if quantized:
            a = _fake_quant_fp8(a, bk, e13.weight.dtype)
        h = a @ d13[e]
        if apply_router_weight_on_input:
            h = torch.where(r == 0, 0.0, h * r)
        act = _activate_torch(h, I, activation, swiglu_limit).to(x.dtype).float()
        if quantized:
            act = _fake_quant_fp8(act, bk, e13.weight.dtype)
        y = act @ d2[e]
        if not apply_router_weight_on_input:
            y = torch.where(r == 0, 0.0, y * r)
        slots[t_idx, j_idx] = y
    backends.record(backends.EMULATION)
    return slots.sum(dim=1).to(out_dtype if out_dtype is not None else x.dtype)


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
