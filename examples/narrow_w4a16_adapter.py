"""A worked example of a *narrow* kernel (README, "Your kernel"): it declares its case space once,
and the gate grid, the fuzzer and shrinking all stay inside it.

The kernel is a torch W4A16 GEMM over GPTQ-packed weights that walks K in tiles of ``BLOCK_K``
(its one tunable), like a Triton kernel does. It takes GPTQ only, group sizes 32, 64 and 128
(not -1), fp16 activations, fp16 or fp32 outputs, K a multiple of 32, and a BLOCK_K no larger
than K. Run:

    qkcheck gate --kernels examples/narrow_w4a16_adapter.py
    qkcheck fuzz --kernels examples/narrow_w4a16_adapter.py::example:narrow_w4a16 --budget 30s

The grid covers every group size, BLOCK_K and output dtype it declares, BLOCK_K smaller than,
equal to and larger than the group, and tails in M, N and K (K % BLOCK_K != 0); the fuzzer
draws only such cases, and never a block_m, block_n or split_k (it declares none).
"""
import torch

from qkcheck.kernels.adapters import KernelAdapter, multiple_of
from qkcheck.kernels.torch_io import torch_dtype
from qkcheck.kernels.w4a16.adapter import w4a16_inputs

DEFAULT_BLOCK_K = 64


def _unpack_gptq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R/8, C] (eight 4-bit codes per word along rows, low nibble first) -> codes [R, C]."""
    shifts = torch.arange(8, device=packed.device) * 4
    return ((packed.unsqueeze(1) >> shifts[None, :, None]) & 0xF).reshape(-1, packed.shape[1])


def narrow_w4a16(x, qweight, scales, qzeros, group_size, bias=None, out_dtype=torch.float16, block_k=DEFAULT_BLOCK_K,
                 drop_k_tail=False):
    """x [M, K] fp16, qweight int32 [K/8, N] (GPTQ), scales [K/G, N], qzeros int32 [K/G, N/8] or None.
    ``drop_k_tail`` is a deliberate bug for the tests: the last, partial K tile is skipped."""
    q = _unpack_gptq(qweight)
    if qzeros is None:  # symmetric: the implicit zero point 8
        z = torch.full_like(scales, 8, dtype=torch.int64)
    else:
        shifts = torch.arange(8, device=x.device) * 4
        z = ((qzeros.unsqueeze(2) >> shifts[None, None, :]) & 0xF).reshape(qzeros.shape[0], -1)
    k = x.shape[1]
    acc = torch.zeros(x.shape[0], qweight.shape[1], dtype=torch.float32, device=x.device)
    end = k - k % block_k if drop_k_tail else k
    for k0 in range(0, end, block_k):
        rows = torch.arange(k0, min(k0 + block_k, k), device=x.device)
        g = rows // group_size
        w = ((q[rows] - z[g]) * scales.float()[g]).to(x.dtype)  # the dequantized tile, in the activation dtype
        acc += x[:, rows].float() @ w.float()
    if bias is not None:
        acc += bias.float()
    return acc.to(out_dtype)


def pack(problem, params, device):
    return w4a16_inputs(problem, layout="gptq", act_dtype=params["act_dtype"], device=device)


def make_call(**bug):
    def call(t, params, config):
        return narrow_w4a16(x=t["x"], qweight=t["qweight"], scales=t["scales"], qzeros=t["zeros"],
                            group_size=params["group_size"], bias=t["bias"],
                            out_dtype=torch_dtype(params["out_dtype"]),
                            block_k=config.get("block_k", DEFAULT_BLOCK_K), **bug)
    return call


def block_k_fits(params, dims, config):
    """The general predicate: (params, dims, config) -> why the kernel cannot take it, or None."""
    if config.get("block_k", DEFAULT_BLOCK_K) > dims["k"]:
        return f"BLOCK_K={config.get('block_k', DEFAULT_BLOCK_K)} is larger than K={dims['k']}"
    return None


def narrow_adapter(name="example:narrow_w4a16", **bug):
    return KernelAdapter(
        name=name,
        op="w4a16_gemm",
        pack=pack,
        call=make_call(**bug),
        # the case space, declared once
        layouts=("gptq",),
        params={"group_size": (32, 64, 128), "act_dtype": ("float16",), "out_dtype": ("float16", "float32")},
        tunables={"block_k": (32, 64, 128)},          # its only tunable: no block_m, block_n or split_k is drawn
        dims={"k": multiple_of(32)},                  # also at_least(n), at_most(n), between(a, b), combined with &
        constraint=block_k_fits,
        default_config=lambda dims, params: {"block_k": DEFAULT_BLOCK_K},
        triton=False,                                 # plain torch: Triton-interpreter defects do not apply
        target=narrow_w4a16,
        signature=("x", "qweight", "scales", "qzeros", "group_size", "bias", "out_dtype", "block_k"),
        description="narrow torch W4A16 (GPTQ, fp16, K % 32 == 0, BLOCK_K tunable): README's worked example",
    )


ADAPTERS = [narrow_adapter()]
