"""Zoo: per-token quantization whose codes are allocated as FP8 whatever quant_dtype is requested.

Seed 002 (../shared/seeds/002_a4511e6a0554137e.txt; a serving engine's ROCm per-token quant op,
fixed by allocating with the requested dtype): the op took ``quant_dtype`` (int8 or FP8) and
passed it on, but both its real implementation and its fake (meta) implementation allocated the
output tensor with a hard-coded FP8 dtype, so a caller asking for int8 got an FP8 tensor back —
and so did anything tracing the op through its fake. It went unnoticed because every caller at
the time asked for FP8.

This is a copy of the bundled launcher ``kernels.quant.kernel.per_token_quant`` and of its custom
op ``qkcheck::per_token_quant`` (registered here as ``qkcheck_zoo::per_token_quant``) with only
that mistake put back: the codes tensor is ``torch.empty(..., dtype=torch.float8_e4m3fn)`` in the
launcher and in the fake. Validation, scale computation and encoding are the bundled ones; the
kernel quantizes for the tensor it writes (its format read from ``codes.dtype``, which in the
bundled launcher is always quant_dtype), as the historical kernel, templated on its output's
dtype, did — so an int8 request gets float8_e4m3fn codes with FP8 scales. The adapter is the
bundled one's pack with a call through the zoo op.
"""
from __future__ import annotations

import torch
import triton

from qkcheck.kernels import backends
from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.quant import kernel as _q
from qkcheck.kernels.quant.adapter import PER_TOKEN_QUANT, _config_list, _float_of, _torch_quant_dtype

ZOO_NAMESPACE = "qkcheck_zoo"
HARD_CODED_FP8 = torch.float8_e4m3fn


def per_token_quant_fp8_alloc(x: torch.Tensor, quant_dtype: torch.dtype, *, scale_ub=None,
                              config: _q.TileConfig | None = None, kernel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled per_token_quant launcher, allocating the codes as float8_e4m3fn."""
    M, K = _q.check_per_token_quant(x, quant_dtype, scale_ub=scale_ub)
    if config is None:
        config = _q.default_config("per_token_quant", M, K, quant_dtype=quant_dtype, device=x.device)
    _q._check_config(config, _q.TileConfig, ("block_m", "block_k"))
    # THE BUG (seed 002): the output dtype is hard-coded instead of quant_dtype
    codes = torch.empty((M, K), dtype=HARD_CODED_FP8, device=x.device)
    scales = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M == 0:
        return codes, scales
    _q._check_launchable(x)
    # the codes' format is the output tensor's (the bundled launcher's codes.dtype is quant_dtype)
    encode = _q._check_encode(codes.dtype, config, x.device)
    params = _q._elem_params(_q._dtype_name(codes.dtype))
    target = codes.view(torch.uint8) if encode == _q._ENC_FLOAT_SW else codes
    if scale_ub is None:
        ub_mode, ub_scale, ub_arg = 0, 1.0, scales
    elif isinstance(scale_ub, torch.Tensor):
        ub_mode, ub_scale, ub_arg = 2, 1.0, scale_ub
    else:
        ub_mode, ub_scale, ub_arg = 1, _q._f32_div(scale_ub, params.qmax), scales
    (kernel or _q._per_token_quant_kernel)[(triton.cdiv(M, config.block_m),)](
        x, target, scales, ub_arg,
        M, K,
        x.stride(0), x.stride(1), target.stride(0), target.stride(1), scales.stride(0),
        _q._f32_div(_q.DEFAULT_AMAX_FLOOR, params.qmax), ub_scale,
        UB_MODE=ub_mode, ENCODE=encode, **_q._elem_constexprs(params),
        BLOCK_M=config.block_m, BLOCK_K=config.block_k,
        num_warps=config.num_warps,
    )
    return codes, scales


def _config(values):
    return None if values is None else _q.TileConfig.from_list(values)


def _real(x: torch.Tensor, quant_dtype: torch.dtype, scale_ub: float | None,
          config: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    out = per_token_quant_fp8_alloc(x, quant_dtype, scale_ub=scale_ub, config=_config(config))
    backends.record(backends.NATIVE)
    return out


def _fake(x: torch.Tensor, quant_dtype: torch.dtype, scale_ub: float | None,
          config: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = _q.check_per_token_quant(x, quant_dtype, scale_ub=scale_ub)
    _config(config)
    return (
        torch.empty((M, K), dtype=HARD_CODED_FP8, device=x.device),  # THE BUG, in the fake too
        torch.empty((M, 1), dtype=torch.float32, device=x.device),
    )


per_token_quant = torch.library.custom_op(f"{ZOO_NAMESPACE}::per_token_quant", mutates_args=())(_real)
per_token_quant.register_fake(_fake)


def _call(t, params, config):
    return torch.ops.qkcheck_zoo.per_token_quant(t["x"], _torch_quant_dtype(params["quant_dtype"]),
                                                 _float_of(t.get("scale_ub")), _config_list(_q.TileConfig, config))


ADAPTER = KernelAdapter(
    name="zoo:wrong_output_dtype",
    op="per_token_quant",
    pack=PER_TOKEN_QUANT.pack,
    call=_call,
    tunables=PER_TOKEN_QUANT.tunables,
    custom_op=f"{ZOO_NAMESPACE}::per_token_quant",
    default_config=PER_TOKEN_QUANT.default_config,
    description="seed 002: per-token quant output (and its fake) allocated as float8_e4m3fn whatever quant_dtype is",
)


def adapters():
    return (ADAPTER,)
