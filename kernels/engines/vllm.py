"""vLLM's quantization kernels as qkcheck adapters (``--kernels kernels.engines.vllm``).

Built only where ``vllm`` imports (a GPU runner with ``pip install vllm``); elsewhere ``ADAPTERS``
is empty and ``UNAVAILABLE`` says why. Signatures were read from vLLM's public Python API
(``vllm/_custom_ops.py``, ``vllm/model_executor/layers/quantization/utils/fp8_utils.py``,
``vllm/model_executor/layers/quantization/awq_triton.py``) as of the v0.10 - v0.11 releases and
main after them; each adapter's description names what it binds and what is not confirmed.

=========================  ======================  ==============================================
adapter                    op                      engine callable
=========================  ======================  ==============================================
vllm:scaled_fp8_quant      per_token_quant         vllm._custom_ops.scaled_fp8_quant (dynamic
                                                   per-token: scale=None, use_per_token_if_dynamic)
vllm:scaled_int8_quant     per_token_quant         vllm._custom_ops.scaled_int8_quant (dynamic,
                                                   symmetric)
vllm:per_token_group_fp8   per_token_group_quant   fp8_utils.per_token_group_quant_fp8
vllm:cutlass_scaled_mm     scaled_mm               vllm._custom_ops.cutlass_scaled_mm
vllm:awq_gemm_triton       w4a16_gemm (awq)        awq_triton.awq_gemm_triton
=========================  ======================  ==============================================

Not bound (their APIs are not stable enough to pin from the public source): ``fused_experts``
(its parameters moved into a ``quant_config`` object and the activation into an enum across
recent releases, and routing is a separate call), ``gptq_marlin_gemm`` (needs Marlin repacking
and a workspace), ``cutlass_scaled_mm_azp`` (asymmetric int8).
"""
from __future__ import annotations

import numpy as np

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.engines import EngineUnsupported, build, register, require_supported

ENGINE = "vllm"
INSTALL_HINT = "pip install vllm on a GPU runner"
CUSTOM_OPS = ("vllm._custom_ops",)
FP8_UTILS = ("vllm.model_executor.layers.quantization.utils.fp8_utils",)
AWQ_TRITON = ("vllm.model_executor.layers.quantization.awq_triton",)
EPS = 1e-10  # the eps per_token_group_quant_fp8 defaults to; passed explicitly (= oracle default floor)
FP8_E4M3 = ("float8_e4m3fn", "float8_e4m3fnuz")


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# ------------------------------------------------------------------ scaled_fp8_quant


def _fp8_supports(p) -> str | None:
    if p["quant_dtype"] not in FP8_E4M3:
        return (f"quant_dtype={p['quant_dtype']!r}: scaled_fp8_quant produces the platform's e4m3 type "
                f"(float8_e4m3fn on CUDA, float8_e4m3fnuz on MI300), nothing else")
    return None


def _fp8_pack(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_per_token

    return pack_per_token(problem, params, device)


def _fp8_call(fn):
    def call(t, params, config):
        require_supported("vllm:scaled_fp8_quant", params)
        codes, scales = fn(input=t["x"], scale=None, num_token_padding=None, scale_ub=t.get("scale_ub"),
                           use_per_token_if_dynamic=True)
        if str(codes.dtype).removeprefix("torch.") != params["quant_dtype"]:
            raise EngineUnsupported(f"vllm:scaled_fp8_quant: this platform's fp8 type is {codes.dtype}; "
                                    f"the case asks for {params['quant_dtype']}")
        return codes, scales
    return call


# ------------------------------------------------------------------ scaled_int8_quant


def _int8_supports(p) -> str | None:
    if p["quant_dtype"] != "int8":
        return f"quant_dtype={p['quant_dtype']!r}: scaled_int8_quant produces int8 only"
    if p["scale_ub"]:
        return "scale_ub: scaled_int8_quant has no amax upper bound"
    return None


def _int8_call(fn):
    def call(t, params, config):
        require_supported("vllm:scaled_int8_quant", params)
        codes, scales, azp = fn(input=t["x"], scale=None, azp=None, symmetric=True)
        if azp is not None:
            raise RuntimeError(f"vllm:scaled_int8_quant returned zero points {tuple(azp.shape)} for symmetric=True")
        return codes, scales
    return call


# ------------------------------------------------------------------ per_token_group_quant_fp8


def _group_supports(p) -> str | None:
    if p["quant_dtype"] not in FP8_E4M3:
        return (f"quant_dtype={p['quant_dtype']!r}: per_token_group_quant_fp8 clamps to the e4m3 range "
                f"(allowed: {', '.join(FP8_E4M3)}; vLLM has a separate int8 function)")
    return None


def _group_call(fn):
    def call(t, params, config):
        require_supported("vllm:per_token_group_fp8", params)
        return fn(x=t["x"], group_size=params["group_size"], eps=EPS, dtype=_torch_dtype(params["quant_dtype"]),
                  column_major_scales=params["column_major_scales"], tma_aligned_scales=False, out_q=None,
                  use_ue8m0=params["scale_ue8m0"])
    return call


# ------------------------------------------------------------------ cutlass_scaled_mm


def _mm_supports(p) -> str | None:
    if p["out_dtype"] not in ("float16", "bfloat16"):
        return f"out_dtype={p['out_dtype']!r}: cutlass_scaled_mm writes float16 or bfloat16 only"
    if p["azp"]:
        return "azp: asymmetric int8 goes through cutlass_scaled_mm_azp, which this adapter does not bind"
    if p["b_storage"] != "nk":
        return "b_storage='kn': cutlass_scaled_mm takes b column-major (the .t() view of [N, K] storage)"
    return None


def _mm_pack(problem, params, device):
    from qkcheck.kernels.scaled_mm.adapter import code_tensor, scale_arrival
    from qkcheck.kernels.torch_io import float_tensor

    fmt = params["quant_dtype"]
    bias = problem.get("bias")
    return {
        "a": code_tensor(problem["a"], fmt, device),
        "b": code_tensor(np.asarray(problem["b"]).T, fmt, device),  # [N, K] storage, passed as .t()
        "a_scale": scale_arrival(problem["a_scale"], params["a_scale_shape"], device),
        "b_scale": scale_arrival(problem["b_scale"], params["b_scale_shape"], device),
        # float32 (exact); call hands the engine out_dtype, refusing a bias that would round
        "bias": None if bias is None else float_tensor(bias, "float32", device),
    }


def bias_in(bias, dtype, name: str):
    """``bias`` converted to ``dtype`` for an engine that requires it there; EngineUnsupported where
    that would round a value (the case's problem would no longer be the one judged)."""
    if bias is None:
        return None
    out = bias.to(dtype)
    if not bool((out.float() == bias.float()).all()):
        raise EngineUnsupported(f"{name}: the engine takes the bias in {str(dtype).removeprefix('torch.')}, and this "
                                f"problem's bias is not representable in it")
    return out


def _mm_call(fn):
    def call(t, params, config):
        require_supported("vllm:cutlass_scaled_mm", params)
        return fn(a=t["a"], b=t["b"].t(), scale_a=t["a_scale"], scale_b=t["b_scale"],
                  out_dtype=_torch_dtype(params["out_dtype"]),
                  bias=bias_in(t["bias"], _torch_dtype(params["out_dtype"]), "vllm:cutlass_scaled_mm"))
    return call


# ------------------------------------------------------------------ awq_gemm_triton

AWQ_DEFAULT = {"block_m": 32, "block_n": 32, "block_k": 32, "split_k": 1}


def _awq_supports(p) -> str | None:
    if p["layout"] != "awq":
        return f"layout={p['layout']!r}: awq_gemm_triton reads the AWQ packing only"
    if p["out_dtype"] != p["act_dtype"]:
        return (f"out_dtype={p['out_dtype']!r}: awq_gemm_triton returns the scales' dtype, which is the "
                f"activations' ({p['act_dtype']})")
    if p["bias"]:
        return "bias: awq_gemm_triton takes no bias (vLLM's AWQ layer adds it afterwards)"
    return None


def _awq_pack(problem, params, device):
    from qkcheck.kernels.w4a16.adapter import w4a16_inputs

    if problem.get("zeros") is None:  # symmetric: the implicit zero point 8, which AWQ stores explicitly
        problem = {**problem, "zeros": np.full(np.asarray(problem["scales"]).shape, 8, dtype=np.uint8)}
    return w4a16_inputs(problem, layout="awq", act_dtype=params["act_dtype"], device=device)


def _awq_call(fn):
    def call(t, params, config):
        require_supported("vllm:awq_gemm_triton", params)
        cfg = {**AWQ_DEFAULT, **(config or {})}
        unknown = sorted(set(cfg) - set(AWQ_DEFAULT))
        if unknown:
            raise ValueError(f"vllm:awq_gemm_triton: config keys {unknown} are not tunable "
                             f"(allowed: {', '.join(AWQ_DEFAULT)})")
        return fn(input=t["x"], qweight=t["qweight"], scales=t["scales"], qzeros=t["zeros"],
                  split_k_iters=cfg["split_k"], block_size_m=cfg["block_m"], block_size_n=cfg["block_n"],
                  block_size_k=cfg["block_k"])
    return call


# ------------------------------------------------------------------ table

# name, op, module paths, symbol, signature, pack, call factory, fields, supports, conventions, description
_SPECS = (
    dict(name="vllm:scaled_fp8_quant", op="per_token_quant", paths=CUSTOM_OPS, symbol="scaled_fp8_quant",
         signature=("input", "scale", "num_token_padding", "scale_ub", "use_per_token_if_dynamic"),
         pack=_fp8_pack, make_call=_fp8_call, fields=dict(triton=False), supports=_fp8_supports,
         # CUDA/ROCm dynamic per-token kernels floor the scale at 1 / (qmax * 512); ROCm fnuz uses qmax 224
         conventions={"amax_floor": 1.0 / 512, "qmax": {"float8_e4m3fnuz": 224.0}},
         description="vLLM scaled_fp8_quant, dynamic per-token (scale=None, use_per_token_if_dynamic=True, "
                     "scale_ub as a float32 tensor); signature read from vllm/_custom_ops.py, v0.6 - main "
                     "(later releases append output= and group_shape=, which this binding leaves at their "
                     "defaults)"),
    dict(name="vllm:scaled_int8_quant", op="per_token_quant", paths=CUSTOM_OPS, symbol="scaled_int8_quant",
         signature=("input", "scale", "azp", "symmetric"),
         pack=_fp8_pack, make_call=_int8_call, fields=dict(triton=False), supports=_int8_supports,
         conventions={},
         description="vLLM scaled_int8_quant, dynamic per-token symmetric (scale=None, azp=None, symmetric=True); "
                     "signature read from vllm/_custom_ops.py, v0.6 - main. The kernel's amax floor for an "
                     "all-zero row is not confirmed from the public source"),
    dict(name="vllm:per_token_group_fp8", op="per_token_group_quant", paths=FP8_UTILS,
         symbol="per_token_group_quant_fp8",
         signature=("x", "group_size", "eps", "dtype", "column_major_scales", "tma_aligned_scales", "out_q",
                    "use_ue8m0"),
         pack=lambda problem, params, device: _fp8_pack({**problem, "scale_ub": None}, params, device),
         make_call=_group_call, fields=dict(triton=True), supports=_group_supports,
         conventions={"qmax": {"float8_e4m3fnuz": 224.0}},
         description="vLLM per_token_group_quant_fp8 (CUDA op where x is contiguous, Triton otherwise; eps=1e-10, "
                     "row- or column-major scales, use_ue8m0); signature read from fp8_utils.py on main after "
                     "v0.10 (tma_aligned_scales / use_ue8m0 are recent: older releases fail the signature check)"),
    dict(name="vllm:cutlass_scaled_mm", op="scaled_mm", paths=CUSTOM_OPS, symbol="cutlass_scaled_mm",
         signature=("a", "b", "scale_a", "scale_b", "out_dtype", "bias"),
         pack=_mm_pack, make_call=_mm_call, fields=dict(triton=False), supports=_mm_supports, conventions={},
         description="vLLM cutlass_scaled_mm (CUTLASS; Triton fallback on ROCm or when N, K are not multiples "
                     "of 16), b column-major, bias in out_dtype; signature read from vllm/_custom_ops.py, "
                     "v0.6 - main"),
    dict(name="vllm:awq_gemm_triton", op="w4a16_gemm", paths=AWQ_TRITON, symbol="awq_gemm_triton",
         signature=("input", "qweight", "scales", "qzeros", "split_k_iters", "block_size_m", "block_size_n",
                    "block_size_k"),
         pack=_awq_pack, make_call=_awq_call,
         fields=dict(triton=True, layouts=("awq",),
                     tunables={"block_m": (16, 32, 64), "block_n": (16, 32, 64, 128), "block_k": (16, 32, 64, 128),
                               "split_k": (1, 2, 4)},
                     default_config=lambda dims, params: dict(AWQ_DEFAULT)),
         supports=_awq_supports, conventions={},
         description="vLLM awq_gemm_triton (AWQ-packed int4, explicit zero points, split-K); block sizes and "
                     "split_k_iters are its tunables; signature read from awq_triton.py, v0.6 - main"),
)

register(_SPECS)


def load() -> tuple[list[KernelAdapter], str | None]:
    """(adapters, None) where vllm imports; ([], reason) where it does not."""
    return build(_SPECS, ENGINE, INSTALL_HINT)


ADAPTERS, UNAVAILABLE = load()
