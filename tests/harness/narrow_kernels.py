"""Small foreign-style narrow kernels, written only against qkcheck's public adapter API, as a
user's adapter file would be (``--kernels tests/harness/narrow_kernels.py``). Used by
tests/harness/test_case_space.py.

- ``narrow:int8_group128``: an int8-only per-token-group quantizer (torch) that takes group 128
  only, row-major float32 scales and K a multiple of 128; no tunables. ``rows_bug=True`` makes a
  twin whose rows past the first 8 reuse row 0's scales (only a grid with M > 8 catches it).
- ``narrow:int8_scaled_mm``: an int8-only W8A8 GEMM (torch) with per-token activation and
  per-channel weight scales, weights stored [N, K], no zero points, K a multiple of 16, tiles
  BLOCK_M / BLOCK_N / BLOCK_K it declares (no split-K).
- ``narrow:block_fp8_128``: a block-scaled FP8 GEMM (torch) with 128 x 128 weight blocks only, e4m3fn,
  BLOCK_K 64 / 128 / 256 and K a multiple of 64 (so BLOCK_K smaller than, equal to and larger
  than the scale block all exist).
"""
import torch

from qkcheck.kernels.adapters import KernelAdapter, at_least, multiple_of
from qkcheck.kernels.torch_io import float_tensor, torch_dtype

# ------------------------------------------------------------------ int8 per-token-group, g = 128

AMAX_FLOOR = 1e-10


def int8_group_quant(x, group_size=128, rows_bug=False):
    m, k = x.shape
    g = x.float().reshape(m, k // group_size, group_size)
    amax = g.abs().amax(dim=2).clamp_min(torch.tensor(AMAX_FLOOR, dtype=torch.float32))
    scales = (amax / 127.0).to(torch.float32)
    if rows_bug and m > 8:
        scales = scales.clone()
        scales[8:] = scales[0]
    codes = torch.round(g / scales[:, :, None]).clamp(-128, 127).to(torch.int8).reshape(m, k)
    return codes, scales


def _quant_pack(problem, params, device):
    return {"x": float_tensor(problem["x"], params["in_dtype"], device)}


def _quant_call(rows_bug):
    def call(t, params, config):
        return int8_group_quant(t["x"], group_size=params["group_size"], rows_bug=rows_bug)
    return call


def int8_group128(name="narrow:int8_group128", rows_bug=False):
    return KernelAdapter(
        name=name, op="per_token_group_quant", pack=_quant_pack, call=_quant_call(rows_bug), triton=False,
        params={"quant_dtype": ("int8",), "group_size": (128,), "column_major_scales": (False,),
                "scale_ue8m0": (False,)},
        dims={"k": multiple_of(128)},
        tunables={},
        target=int8_group_quant, signature=("x", "group_size"),
    )


# ------------------------------------------------------------------ int8 W8A8, per-token x per-channel


def int8_scaled_mm(a, b, a_scale, b_scale, bias=None, out_dtype=torch.float16, block_k=64):
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32)
    for k0 in range(0, a.shape[1], block_k):
        acc += a[:, k0:k0 + block_k].float() @ b[k0:k0 + block_k].float()
    out = acc * a_scale.float() * b_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def _mm_pack(problem, params, device):
    import numpy as np

    b_nk = torch.from_numpy(np.ascontiguousarray(np.asarray(problem["b"]).T))
    bias = problem.get("bias")
    return {"a": torch.from_numpy(np.asarray(problem["a"])), "b": b_nk.t(),
            "a_scale": torch.from_numpy(np.asarray(problem["a_scale"], np.float32)),
            "b_scale": torch.from_numpy(np.asarray(problem["b_scale"], np.float32)),
            "bias": None if bias is None else torch.from_numpy(np.asarray(bias, np.float32))}


def _mm_call(t, params, config):
    return int8_scaled_mm(t["a"], t["b"], t["a_scale"], t["b_scale"], bias=t["bias"],
                          out_dtype=torch_dtype(params["out_dtype"]), block_k=config.get("block_k", 64))


def int8_scaled_mm_adapter():
    return KernelAdapter(
        name="narrow:int8_scaled_mm", op="scaled_mm", pack=_mm_pack, call=_mm_call, triton=False,
        params={"quant_dtype": ("int8",), "a_scale_shape": ("[M,1]",), "b_scale_shape": ("[1,N]",),
                "b_storage": ("nk",), "azp": (False,), "out_dtype": ("float16", "float32")},
        tunables={"block_m": (16, 32), "block_n": (32, 64), "block_k": (32, 64)},
        dims={"k": multiple_of(16)},
        target=int8_scaled_mm, signature=("a", "b", "a_scale", "b_scale", "bias", "out_dtype", "block_k"),
    )


# ------------------------------------------------------------------ block-scaled fp8, 128 x 128 blocks


def _block_call(t, params, config):  # the grid test does not run it; a real kernel would go here
    raise NotImplementedError


def block_fp8_128():
    return KernelAdapter(
        name="narrow:block_fp8_128", op="block_scaled_mm", pack=lambda p, q, d: {}, call=_block_call, triton=False,
        params={"quant_dtype": ("float8_e4m3fn",), "scale_block_k": (128,), "scale_block_n": (128,)},
        tunables={"block_m": (16, 32), "block_n": (32, 64), "block_k": (64, 128, 256)},
        dims={"k": multiple_of(64) & at_least(128)},
    )


ADAPTERS = [int8_group128(), int8_scaled_mm_adapter()]
