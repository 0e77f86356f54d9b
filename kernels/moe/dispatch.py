"""The fused-MoE dispatcher: which backend runs each expert scheme, as data, and one entry point.

Schemes (``SCHEMES``; the names a model's quantization config uses):

==================== ================================================= ===========================
scheme               experts                                           activations
==================== ================================================= ===========================
``dense``            fp16/bf16 weights                                 as given
``w4a16``            packed uint4 codes, group scales (+ zero points)  as given
``fp8_block``        fp8 codes, float32 scales per bk x bn block       fp8, per token and bk group
``w_mxfp4``          MXFP4 (e2m1 codes, E8M0 scales per 32 along K)    as given (W4A16 MXFP4)
``w_mxfp4_a_mxfp4``  MXFP4 as ``w_mxfp4``                              MXFP4, per token and 32
==================== ================================================= ===========================

Each scheme has two backends in ``kernels.backends.REGISTRY`` (op ``"fused_moe"``): the native
one (the bundled Triton fused MoE, ``kernels.moe.kernel``) and an emulation
(``kernels.moe.emulation``: experts dequantized to float32, a torch loop over experts: slow,
correct). :func:`fused_moe` picks with
``kernels.backends.pick`` from the platform's capabilities and this module's
``NATIVE_SCHEMES`` (the schemes it sends to the native kernel), runs the choice and the backend
records itself (``kernels.backends``).

What must happen is declared separately (``EXPECTED_NATIVE``, registered with
``kernels.backends.declare``): on a platform with the listed capabilities the scheme runs
natively. ``kernels.backends.expected_backend("fused_moe", scheme, platform)`` reads it; the
harness compares it with what was recorded, so a dispatcher whose list forgets a scheme that the
native kernel handles fails loudly instead of silently emulating.

``w_mxfp4_a_mxfp4`` (W4A4 MXFP4). The native path is the Triton MXFP4 expert GEMM with its
activation operand quantized dynamically to MXFP4 right before each of the two GEMMs: rows of
the GEMM input split into blocks of 32 along K, each block's E8M0 scale by the OCP MX floor rule
(``2**(floor(log2(amax)) - 2)``, an all-zero block gets 2**-127), elements ``RNE(x / scale)``
saturated to +-6 (the Triton ``mx_quant`` kernel of ``kernels.quant.kernel``, whose reference
twin is ``oracle.schemes``' ``"mxfp4"``), then ``code * scale`` handed to the dot in the
activation dtype. That value is exact in bfloat16 always and in float16 whenever the block's
amax is at least 2**-21 (below that, float16 subnormals round it). With
``apply_router_weight_on_input`` the router weight multiplies the input *before* it is quantized
(``quantize(w x)``, as the model computes it), so GEMM 1 gets ``round(w x)`` and no weight later.
Its emulation does the same quantization in float32 torch code
(``kernels.moe.emulation.mx_fake_quant_torch``).
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.device import platform
from qkcheck.kernels.moe import emulation
from qkcheck.kernels.moe import kernel as _moe
from qkcheck.kernels.moe import op as moe_op
from qkcheck.kernels.moe.op import expert_weights
from qkcheck.kernels.quant import kernel as _quant

__all__ = [
    "EXPECTED_NATIVE",
    "KERNEL_SCHEMES",
    "NATIVE_SCHEMES",
    "OP",
    "SCHEMES",
    "activation_quant",
    "expected_backend",
    "fused_moe",
    "fused_moe_dispatch",
    "pick",
]

OP = "fused_moe"
SCHEMES = ("dense", "w4a16", "fp8_block", "w_mxfp4", "w_mxfp4_a_mxfp4")
# the kernels.moe.kernel expert scheme each dispatcher scheme's weights use
KERNEL_SCHEMES = {"dense": "dense", "w4a16": "w4a16", "fp8_block": "fp8_block", "w_mxfp4": "mxfp4",
                  "w_mxfp4_a_mxfp4": "mxfp4"}
# capabilities the native backend needs, per scheme (kernels.backends's capability list)
NATIVE_REQUIRES = {
    "dense": ("triton",),
    "w4a16": ("triton",),
    "fp8_block": ("triton", "fp8"),
    "w_mxfp4": ("triton", "mx"),
    "w_mxfp4_a_mxfp4": ("triton", "mx"),
}
# the schemes this dispatcher sends to the native kernel
NATIVE_SCHEMES = frozenset({"dense", "w4a16", "fp8_block", "w_mxfp4", "w_mxfp4_a_mxfp4"})
# declared expectations: on a platform with these capabilities, the scheme runs natively
EXPECTED_NATIVE = dict(NATIVE_REQUIRES)

_MX_BLOCK = _moe.MX_BLOCK
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def activation_quant(scheme: str, fp8_block: tuple[int, int] | None = None) -> str | None:
    """How ``scheme`` re-quantizes each GEMM's input, as an ``oracle.ops.moe`` ``act_quant`` name."""
    _check_scheme(scheme)
    if scheme == "fp8_block":
        bk = (fp8_block or moe_op.DEFAULT_FP8_BLOCK)[0]
        return f"fp8 per-token-group {bk}"
    if scheme == "w_mxfp4_a_mxfp4":
        return "mxfp4"
    return None


def _check_scheme(scheme) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not a fused MoE scheme (allowed: {', '.join(SCHEMES)}); "
                         f"pick one of them")


# ---------------------------------------------------------------------------------------------
# MXFP4 activations


def _decode_mx(packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``code * 2**(s - 127)`` of ``mx_quant``'s packed codes ``[R, K/2]`` and E8M0 scales, in ``dtype``."""
    R = packed.shape[0]
    codes = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(R, -1).long()
    values = torch.tensor(_E2M1, dtype=torch.float32, device=packed.device)[codes]
    exps = scales.to(torch.int32) - 127
    scale = torch.ldexp(torch.ones_like(exps, dtype=torch.float32), exps)
    return (values * scale.repeat_interleave(_MX_BLOCK, dim=1)).to(dtype)


def mx_fake_quant_triton(a: torch.Tensor) -> torch.Tensor:
    """``a [R, K]`` quantized to MXFP4 by the Triton ``mx_quant`` kernel (floor rule) and
    dequantized to a's dtype."""
    if a.shape[0] == 0:
        return a.clone()
    packed, scales = _quant.mx_quant(a, scale_rule="floor")
    return _decode_mx(packed, scales, a.dtype)


class _MXPrologue:
    """Launches the grouped expert GEMM with its A operand quantized to MXFP4 first (the
    launcher of ``kernels.moe.kernel.fused_experts`` passes A as the first argument and its
    strides further on, so the quantized copy keeps A's strides)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(a, *args, **kwargs):
            # the launcher passes a's strides as later arguments: keep them
            aq = torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
            aq.copy_(mx_fake_quant_triton(a))
            return launch(aq, *args, **kwargs)

        return run


# ---------------------------------------------------------------------------------------------
# backends (each has moe.op.fused_moe_native's flat signature, ``scheme`` a dispatcher scheme)


def _native(x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
            scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups, activation,
            swiglu_limit, apply_router_weight_on_input, out_dtype, config):
    """The Triton fused MoE through its custom op (records ``native``)."""
    return torch.ops.qkcheck.fused_moe(
        x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
        KERNEL_SCHEMES[scheme], layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups,
        activation, swiglu_limit, apply_router_weight_on_input, out_dtype, config,
    )


def _emulation(x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
               scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups, activation,
               swiglu_limit, apply_router_weight_on_input, out_dtype, config):
    """``kernels.moe.emulation.fused_moe_emulation`` (records ``emulation``)."""
    return emulation.fused_moe_emulation(
        x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
        KERNEL_SCHEMES[scheme], layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups,
        activation, swiglu_limit, apply_router_weight_on_input, out_dtype, config,
    )


def _w4a4_routing(x, router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias,
                  on_input, router=_moe.route):
    """Routing (``router``: the Triton ``route`` natively, its torch twin ``route_torch`` in
    emulation), and the GEMM-1 input: x, or ``round(w x)`` with the weight on the input (then the
    weights the experts see are 1)."""
    ids, weights = router(router_logits, top_k, scoring=scoring, renormalize=renormalize,
                          num_groups=num_groups, topk_groups=topk_groups, correction_bias=correction_bias)
    if on_input:
        return ids, torch.ones_like(weights), (x.float() * weights).to(x.dtype)
    return ids, weights, x


def _w4a4_native(x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias,
                 expert_map, scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups,
                 topk_groups, activation, swiglu_limit, apply_router_weight_on_input, out_dtype, config):
    """W4A4 MXFP4: the Triton MXFP4 expert GEMMs, each input quantized to MXFP4 by the Triton
    ``mx_quant`` kernel first (module docstring; records ``native``)."""
    e13 = expert_weights("mxfp4", w13, w13_scales, w13_zeros, layout, group_size, block)
    e2 = expert_weights("mxfp4", w2, w2_scales, w2_zeros, layout, group_size, block)
    cfg = None if config is None else _moe.MoEConfig.from_list(config)
    _moe.check_fused_moe_arguments(
        x, router_logits, e13, e2, top_k=top_k, scoring=scoring, renormalize=renormalize, num_groups=num_groups,
        topk_groups=topk_groups, correction_bias=correction_bias, activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map, out_dtype=out_dtype,
        config=cfg,
    )
    ids, weights, a = _w4a4_routing(x, router_logits, top_k, scoring, renormalize, num_groups, topk_groups,
                                    correction_bias, apply_router_weight_on_input)
    out = _moe.fused_experts(
        a, ids, weights, e13, e2, activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=False, expert_map=expert_map, num_experts=router_logits.shape[1],
        out_dtype=out_dtype, config=cfg, kernel=_MXPrologue(_moe._moe_gemm_kernel),
    )
    backends.record(backends.NATIVE)
    return out


def _w4a4_emulation(x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias,
                    expert_map, scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups,
                    topk_groups, activation, swiglu_limit, apply_router_weight_on_input, out_dtype, config):
    """W4A4 MXFP4 in torch: experts dequantized to float32, each GEMM input quantized to MXFP4
    and dequantized in float32 (records ``emulation``)."""
    e13 = expert_weights("mxfp4", w13, w13_scales, w13_zeros, layout, group_size, block)
    e2 = expert_weights("mxfp4", w2, w2_scales, w2_zeros, layout, group_size, block)
    _moe.check_fused_moe_arguments(
        x, router_logits, e13, e2, top_k=top_k, scoring=scoring, renormalize=renormalize, num_groups=num_groups,
        topk_groups=topk_groups, correction_bias=correction_bias, activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map, out_dtype=out_dtype,
        config=None if config is None else _moe.MoEConfig.from_list(config),
    )
    T, H = x.shape
    E_local = w13_scales.shape[0]
    I = w13_scales.shape[2] // 2
    if expert_map is not None:
        _moe._check_expert_map(expert_map, router_logits.shape[1], E_local)
    ids, weights, a_in = _w4a4_routing(x, router_logits, top_k, scoring, renormalize, num_groups, topk_groups,
                                       correction_bias, apply_router_weight_on_input, router=_moe.route_torch)
    local = ids.long() if expert_map is None else expert_map.long()[ids.long()]
    d13 = emulation.dequantize_experts(e13, H, 2 * I)
    d2 = emulation.dequantize_experts(e2, I, H)
    slots = torch.zeros((T, top_k, H), dtype=torch.float32, device=x.device)
    for e in range(E_local):
        t_idx, j_idx = torch.nonzero(local == e, as_tuple=True)
        if t_idx.numel() == 0:
            continue
        r = weights[t_idx, j_idx][:, None]
        h = emulation.mx_fake_quant_torch(a_in[t_idx].float()) @ d13[e]
        act = emulation.activate_torch(h, I, activation, swiglu_limit).to(x.dtype).float()
        y = emulation.mx_fake_quant_torch(act) @ d2[e]
        slots[t_idx, j_idx] = torch.where(r == 0, 0.0, y * r)
    backends.record(backends.EMULATION)
    return slots.sum(dim=1).to(out_dtype if out_dtype is not None else x.dtype)


_RUNNERS = {
    scheme: ((_w4a4_native, _w4a4_emulation) if scheme == "w_mxfp4_a_mxfp4" else (_native, _emulation))
    for scheme in SCHEMES
}


def _register() -> None:
    """Register both backends of every scheme (once) and declare the expectations."""
    for scheme in SCHEMES:
        have = {b.name for b in backends.REGISTRY.backends.get((OP, scheme), [])}
        native_run, emulation_run = _RUNNERS[scheme]
        if backends.NATIVE not in have:
            backends.REGISTRY.register(OP, scheme, backends.Backend(
                backends.NATIVE, frozenset(NATIVE_REQUIRES[scheme]), native_run))
        if backends.EMULATION not in have:
            backends.REGISTRY.register(OP, scheme, backends.Backend(backends.EMULATION, frozenset(), emulation_run))
    declared = {(e.op, e.scheme) for e in backends.EXPECTATIONS}
    for scheme, requires in EXPECTED_NATIVE.items():
        if (OP, scheme) not in declared:
            backends.declare(OP, scheme, requires)


_register()


def expected_backend(scheme: str, device: str) -> str | None:
    """The backend the declared expectations demand for ``scheme`` on ``device``."""
    _check_scheme(scheme)
    return backends.expected_backend(OP, scheme, platform(device))


def pick(scheme: str, device: str) -> backends.Backend:
    """The backend this dispatcher runs ``scheme`` on, on ``device``."""
    _check_scheme(scheme)
    return backends.pick(OP, scheme, platform(device), native_schemes=NATIVE_SCHEMES)


def fused_moe_dispatch(
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
    """Pick the backend for ``scheme`` on x's device and run it (it records itself). Arguments
    as ``kernels.moe.op.fused_moe_native``, with ``scheme`` one of ``SCHEMES``."""
    backend = pick(scheme, x.device.type)
    return backend.run(
        x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
        scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups, activation,
        swiglu_limit, apply_router_weight_on_input, out_dtype, config,
    )


def _dispatch_fake(x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias,
                   expert_map, scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups,
                   topk_groups, activation, swiglu_limit, apply_router_weight_on_input, out_dtype, config):
    """Contract: y is ``[T, H]``, dtype ``out_dtype or x.dtype``, on x's device; arguments are
    validated from metadata like every backend does."""
    _check_scheme(scheme)
    return moe_op._fused_moe_fake(
        x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
        KERNEL_SCHEMES[scheme], layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups,
        activation, swiglu_limit, apply_router_weight_on_input, out_dtype, config,
    )


CUSTOM_OP = "qkcheck::fused_moe_dispatch"
fused_moe = torch.library.custom_op(CUSTOM_OP, mutates_args=())(fused_moe_dispatch)
fused_moe.register_fake(_dispatch_fake)
