"""Zoo: a fused-MoE dispatcher that silently runs W4A4 MXFP4 experts on the emulation backend.

Seed 001 (a serving engine's quantized MoE on MX-capable hardware, fixed by adding the scheme
back to the dispatcher's native list): the dispatcher kept a tuple of the OCP MX schemes it sends
to the native fused-MoE kernel, and a refactor left only the W4A16 MXFP4 scheme in it. From then
on, every W4A4 MXFP4 model (``w_mxfp4_a_mxfp4``: MXFP4 weights *and* activations) was marked for
emulation even on platforms whose capabilities and kernels support it natively: the outputs stayed
correct (the emulation dequantizes and computes in higher precision), only far slower, and
nothing failed. The fix restored ``("w_mxfp4", "w_mxfp4_a_mxfp4")``.

This is a copy of ``kernels.moe.dispatch``'s dispatch (its native-scheme list and entry point)
with only that mistake put back: ``NATIVE_SCHEMES`` lacks ``"w_mxfp4_a_mxfp4"``. The backends
are the registered ones (``kernels.backends.REGISTRY``), and the adapter declares the same
expectation as the bundled one (``kernels.backends.expected_backend``): on a platform with
``mx``, W4A4 MXFP4 runs native. Numerics are right, so only the harness's backend check can see it.
"""
from __future__ import annotations

import torch

from qkcheck.kernels import backends
from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.device import platform
from qkcheck.kernels.moe import adapter as _adapter
from qkcheck.kernels.moe import dispatch as _bundled

OP = _bundled.OP
# the schemes this dispatcher sends to the native kernel: W4A4 MXFP4 is missing
NATIVE_SCHEMES = frozenset({"dense", "w4a16", "fp8_block", "w_mxfp4"})


def pick(scheme: str, device: str) -> backends.Backend:
    """The backend this dispatcher runs ``scheme`` on, on ``device``."""
    _bundled._check_scheme(scheme)
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
    """Pick the backend for ``scheme`` on x's device and run it (it records itself)."""
    backend = pick(scheme, x.device.type)
    return backend.run(
        x, router_logits, w13, w2, w13_scales, w2_scales, w13_zeros, w2_zeros, correction_bias, expert_map,
        scheme, layout, group_size, block, top_k, scoring, renormalize, num_groups, topk_groups, activation,
        swiglu_limit, apply_router_weight_on_input, out_dtype, config,
    )


CUSTOM_OP = "qkcheck_zoo::fused_moe_dispatch_silent_emulation"
fused_moe = torch.library.custom_op(CUSTOM_OP, mutates_args=())(fused_moe_dispatch)
fused_moe.register_fake(_bundled._dispatch_fake)


ADAPTER = KernelAdapter(
    name="zoo:silent_emulation",
    op=OP,
    pack=_adapter.pack,
    call=_adapter.make_call(fused_moe),
    layouts=_adapter.LAYOUTS,
    tunables=_adapter.TUNABLES,
    custom_op=CUSTOM_OP,
    default_config=_adapter.default_config,
    expected_backend=_adapter.expected_backend,
    description="seed 001: W4A4 MXFP4 MoE left out of the dispatcher's native list, silently emulated on MX platforms",
)


def adapters():
    return (ADAPTER,)
