"""A worked example of plugging your own kernel into qkcheck (see README, "Your kernel").

The kernel here is a plain torch W4A16 GEMM over GPTQ-packed weights; replace ``my_w4a16`` with
your kernel. Run:  qkcheck gate --kernels examples/torch_w4a16_adapter.py

It runs on one backend, so it declares no ``expected_backend`` and records nothing. A kernel that
dispatches between backends (a native kernel and an emulation fallback, say) records which one
ran in the code that runs it (``qkcheck.kernels.backends.record("native")``), never in ``call``,
and its adapter declares ``expected_backend``: a case that ran anything else fails.
"""
import torch

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.torch_io import torch_dtype
from qkcheck.kernels.w4a16.adapter import w4a16_inputs


def my_w4a16(x, qweight, scales, qzeros, group_size, bias=None, out_dtype=torch.float16):
    """Your kernel: x [M, K] fp16, qweight int32 [K/8, N] (GPTQ), scales [K/G, N], qzeros int32 [K/G, N/8] or None."""
    shifts = torch.arange(8, device=x.device) * 4
    q = ((qweight.unsqueeze(1) >> shifts[None, :, None]) & 0xF).reshape(-1, qweight.shape[1])
    g = q.shape[0] if group_size == -1 else group_size
    if qzeros is None:  # symmetric: the implicit zero point 8
        z = torch.full_like(scales, 8, dtype=torch.int64)
    else:
        z = ((qzeros.unsqueeze(2) >> shifts[None, None, :]) & 0xF).reshape(qzeros.shape[0], -1)
    w = ((q - z.repeat_interleave(g, 0)) * scales.float().repeat_interleave(g, 0)).to(x.dtype)
    y = x.float() @ w.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def pack(problem, params, device):
    # canonical NumPy problem -> your kernel's tensors (here: the GPTQ layout qkcheck already knows)
    return w4a16_inputs(problem, layout="gptq", act_dtype=params["act_dtype"], device=device)


def call(t, params, config):
    return my_w4a16(x=t["x"], qweight=t["qweight"], scales=t["scales"], qzeros=t["zeros"],
                    group_size=params["group_size"], bias=t["bias"], out_dtype=torch_dtype(params["out_dtype"]))


ADAPTERS = [
    KernelAdapter(
        name="example:torch_w4a16",
        op="w4a16_gemm",
        pack=pack,
        call=call,                      # binds the kernel by keyword
        layouts=("gptq",),              # the layouts this kernel accepts
        tunables={},                    # no tile config: cases run with the config left out
        triton=False,                   # plain torch: Triton-interpreter defects do not apply
        target=my_w4a16,                # checked against `signature` on every case
        signature=("x", "qweight", "scales", "qzeros", "group_size", "bias", "out_dtype"),
        description="torch reference-style W4A16 (README example)",
    )
]
