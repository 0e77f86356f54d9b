"""The fused MoE's emulation backend: the same computation as the native kernel in plain torch
(every local expert dequantized to float32, a loop over experts; slow, correct), and the torch
MXFP4 activation fake-quantization the W4A4 emulation uses.

:func:`fused_moe_emulation` has the flat signature of ``kernels.moe.op.fused_moe_native`` and
records ``backends.EMULATION`` (``kernels.backends``) when it has run, so a dispatcher's choice
(``kernels.moe.dispatch``) is visible to the harness.
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.moe import kernel as _moe
from qkcheck.kernels.moe.op import _config, expert_weights

__all__ = ["dequantize_experts", "fused_moe_emulation", "mx_fake_quant_torch"]

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


def dequantize_experts(ew: _moe.ExpertWeights, K: int, N: int) -> torch.Tensor:
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


def activate_torch(h: torch.Tensor, I: int, activation: str, limit: float | None) -> torch.Tensor:
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
    d13 = dequantize_experts(e13, H, 2 * I)
    d2 = dequantize_experts(e2, I, H)
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
        act = activate_torch(h, I, activation, swiglu_limit).to(x.dtype).float()
        if quantized:
            act = _fake_quant_fp8(act, bk, e13.weight.dtype)
        y = act @ d2[e]
        if not apply_router_weight_on_input:
            y = torch.where(r == 0, 0.0, y * r)
        slots[t_idx, j_idx] = y
    backends.record(backends.EMULATION)
    return slots.sum(dim=1).to(out_dtype if out_dtype is not None else x.dtype)


def mx_fake_quant_torch(v: torch.Tensor) -> torch.Tensor:
    """float32 ``v [R, K]`` quantized to MXFP4 (OCP floor rule, RNE, saturated) and dequantized,
    in float32 torch code."""
    R, K = v.shape
    blocks = v.float().reshape(R, K // _moe.MX_BLOCK, _moe.MX_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    _, ex = torch.frexp(amax)  # amax = m * 2**ex, 0.5 <= m < 1: floor(log2(amax)) = ex - 1
    e = torch.where(amax > 0, ex - 1 - 2, torch.full_like(ex, -127)).clamp(-127, 127)
    z = torch.ldexp(blocks, -e)  # exact
    mag = z.abs()
    # RNE onto the e2m1 grid: steps of 0.5 below 2, 1 below 4, 2 above; torch.round is half-to-even
    q = torch.where(mag < 2, torch.round(mag * 2) / 2, torch.where(mag < 4, torch.round(mag), torch.round(mag / 2) * 2))
    q = torch.copysign(q.clamp(max=6.0), z)
    return torch.ldexp(q, e).reshape(R, K)
