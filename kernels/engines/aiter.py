"""AMD AITER's Triton quantization kernels as qkcheck adapters (``--kernels kernels.engines.aiter``).

Built only where ``aiter`` imports (a ROCm runner with AITER installed); elsewhere ``ADAPTERS`` is
empty and ``UNAVAILABLE`` says why. Signatures were read from AITER's public Python API: the
Triton GEMM ``gemm_a8w8`` (``aiter/ops/triton/gemm/basic/gemm_a8w8.py``, earlier
``aiter/ops/triton/gemm_a8w8.py``) and the Triton quant wrappers
(``aiter/ops/triton/quant/quant.py``, earlier ``aiter/ops/triton/quant.py``), 2025 - 2026 main.
AITER reorganises modules often; each adapter looks in every location listed and fails loudly
(EngineSymbolMissing) when none has the callable.

=====================================  ================  ========================================
adapter                                op                engine callable
=====================================  ================  ========================================
aiter:gemm_a8w8                        scaled_mm         gemm_a8w8 (w [N, K], preallocated y)
aiter:dynamic_per_token_quant_fp8_i8   per_token_quant   dynamic_per_token_quant_fp8_i8 (caller
                                                         allocates qx and scale_out)
aiter:static_per_tensor_quant_fp8_i8   static_quant      static_per_tensor_quant_fp8_i8
aiter:dynamic_mxfp4_quant              mx_quant          dynamic_mxfp4_quant (scaling_mode="even")
=====================================  ================  ========================================

The GEMM's caller-allocated ``y`` is the harness's sentinel-filled output (``out_param``), so
unwritten elements and out-of-bounds writes are caught. The quant wrappers' ``qx`` is allocated
here (the runner's output buffers are float16 / bfloat16 / float32 only). Not bound: the CK
``gemm_a8w8`` C++ entry points (their Python wrapper's parameters differ across releases and were
not confirmed), ``pertoken_quant`` (a torch reference, not a kernel), fused MoE.
"""
from __future__ import annotations

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.engines import build, register, require_supported

ENGINE = "aiter"
INSTALL_HINT = "install ROCm AITER (github.com/ROCm/aiter) on a ROCm GPU runner"
GEMM_A8W8 = ("aiter.ops.triton.gemm.basic.gemm_a8w8", "aiter.ops.triton.gemm_a8w8")
QUANT = ("aiter.ops.triton.quant.quant", "aiter.ops.triton.quant")


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# ------------------------------------------------------------------ gemm_a8w8


def _gemm_supports(p) -> str | None:
    if p["azp"]:
        return "azp: gemm_a8w8 has no activation zero points"
    if p["a_scale_shape"] != "[M,1]":
        return f"a_scale_shape={p['a_scale_shape']!r}: gemm_a8w8 takes x_scale of shape (M, 1)"
    if p["b_scale_shape"] not in ("[1,N]", "[N]"):
        return f"b_scale_shape={p['b_scale_shape']!r}: gemm_a8w8 takes w_scale of shape (1, N)"
    return None


def _gemm_pack(problem, params, device):
    import numpy as np

    from qkcheck.kernels.scaled_mm.adapter import code_tensor, scale_arrival
    from qkcheck.kernels.torch_io import float_tensor

    fmt = params["quant_dtype"]
    b = np.asarray(problem["b"])
    bias = problem.get("bias")
    return {
        "a": code_tensor(problem["a"], fmt, device),
        # "nk": w is the [N, K] storage itself; "kn": [K, N] storage, passed as its .t() view
        "b": code_tensor(b.T if params["b_storage"] == "nk" else b, fmt, device),
        "a_scale": scale_arrival(problem["a_scale"], params["a_scale_shape"], device),
        "b_scale": scale_arrival(problem["b_scale"], params["b_scale_shape"], device),
        "bias": None if bias is None else float_tensor(bias, "float32", device),
    }


def _gemm_call(fn):
    def call(t, params, config):
        require_supported("aiter:gemm_a8w8", params)
        w = t["b"] if params["b_storage"] == "nk" else t["b"].t()
        return fn(x=t["a"], w=w, x_scale=t["a_scale"], w_scale=t["b_scale"], bias=t["bias"],
                  dtype=_torch_dtype(params["out_dtype"]), y=t.get("y"), config=None)
    return call


# ------------------------------------------------------------------ per-token / static quant


def _per_token_supports(p) -> str | None:
    if p["scale_ub"]:
        return "scale_ub: dynamic_per_token_quant_fp8_i8 has no amax upper bound"
    return None


def _per_token_pack(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_x

    return pack_x(problem, params, device)


def _per_token_call(fn):
    def call(t, params, config):
        import torch

        require_supported("aiter:dynamic_per_token_quant_fp8_i8", params)
        x = t["x"]
        qx = t.get("qx")
        if qx is None:
            qx = torch.empty(x.shape, dtype=_torch_dtype(params["quant_dtype"]), device=x.device)
        scale = torch.empty((x.shape[0],), dtype=torch.float32, device=x.device)  # (M,), as documented
        qx, scale = fn(qx=qx, x_in=x, scale_out=scale)
        return qx, scale.view(-1, 1)
    return call


def _static_supports(p) -> str | None:
    return None


def _static_pack(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_static

    return pack_static(problem, params, device)


def _static_call(fn):
    def call(t, params, config):
        import torch

        require_supported("aiter:static_per_tensor_quant_fp8_i8", params)
        x = t["x"]
        qx = t.get("qx")
        if qx is None:
            qx = torch.empty(x.shape, dtype=_torch_dtype(params["quant_dtype"]), device=x.device)
        return fn(qx=qx, x_in=x, scale_in=t["scale"])
    return call


# ------------------------------------------------------------------ mxfp4


def _mx_supports(p) -> str | None:
    if p["fmt"] != "mxfp4":
        return f"fmt={p['fmt']!r}: dynamic_mxfp4_quant produces mxfp4 only"
    if p["scale_rule"] != "floor":
        return (f"scale_rule={p['scale_rule']!r}: dynamic_mxfp4_quant's 'even' mode is a floor-style rule "
                f"(amax rounded at its second mantissa bit, then floor(log2) - 2); it has no RCEIL mode")
    return None


def _mx_call(fn):
    def call(t, params, config):
        require_supported("aiter:dynamic_mxfp4_quant", params)
        return fn(x=t["x"], scaling_mode="even")
    return call


def _mx_unpack(outs, params):
    from qkcheck.kernels.quant.adapter import unpack_mx

    return unpack_mx(outs, params)


# ------------------------------------------------------------------ table

_SPECS = (
    dict(name="aiter:gemm_a8w8", op="scaled_mm", paths=GEMM_A8W8, symbol="gemm_a8w8",
         signature=("x", "w", "x_scale", "w_scale", "bias", "dtype", "y", "config"),
         pack=_gemm_pack, make_call=_gemm_call, fields=dict(triton=True, out_param="y"),
         supports=_gemm_supports, conventions={},
         description="AITER Triton gemm_a8w8 (int8 / fp8 codes, w as [N, K], per-token x_scale (M, 1), "
                     "per-channel w_scale (1, N), preallocated y, config left to AITER's tuned table); "
                     "signature read from aiter/ops/triton gemm_a8w8.py, 2025 - 2026 main. The bias dtype "
                     "AITER expects is not confirmed (passed as float32)"),
    dict(name="aiter:dynamic_per_token_quant_fp8_i8", op="per_token_quant", paths=QUANT,
         symbol="dynamic_per_token_quant_fp8_i8", signature=("qx", "x_in", "scale_out"),
         pack=_per_token_pack, make_call=_per_token_call, fields=dict(triton=True),
         supports=_per_token_supports, conventions={},
         description="AITER Triton dynamic_per_token_quant_fp8_i8 (caller-allocated qx in the case's quant "
                     "dtype and scale_out (M,) float32; scale = amax / dtype max, no amax floor documented); "
                     "signature read from aiter/ops/triton/quant/quant.py, 2025 - 2026 main (the 2024 name "
                     "was dynamic_per_token_fp8_quant)"),
    dict(name="aiter:static_per_tensor_quant_fp8_i8", op="static_quant", paths=QUANT,
         symbol="static_per_tensor_quant_fp8_i8", signature=("qx", "x_in", "scale_in"),
         pack=_static_pack, make_call=_static_call, fields=dict(triton=True),
         supports=_static_supports, conventions={},
         description="AITER Triton static_per_tensor_quant_fp8_i8 (caller-allocated qx, scale_in (1,) "
                     "float32); signature read from aiter/ops/triton/quant/quant.py, 2025 - 2026 main"),
    dict(name="aiter:dynamic_mxfp4_quant", op="mx_quant", paths=QUANT, symbol="dynamic_mxfp4_quant",
         signature=("x", "scaling_mode"), pack=_per_token_pack, make_call=_mx_call,
         fields=dict(triton=True, unpack=_mx_unpack), supports=_mx_supports, conventions={},
         description="AITER Triton dynamic_mxfp4_quant, scaling_mode='even' (codes packed two per byte, low "
                     "nibble = even k; E8M0 scales as the .T view of (K/32, M) storage); judged against the "
                     "OCP floor rule, which 'even' departs from where amax's mantissa rounds up to the next "
                     "power of two; signature read from aiter/ops/triton/quant/quant.py, 2025 - 2026 main"),
)

register(_SPECS)


def load() -> tuple[list[KernelAdapter], str | None]:
    """(adapters, None) where aiter imports; ([], reason) where it does not."""
    return build(_SPECS, ENGINE, INSTALL_HINT)


ADAPTERS, UNAVAILABLE = load()
