"""Source text of a correct tiny W4A16 kernel in torch (``good``: dequantize, weights in the
activation dtype, float32 accumulate) with the imports an adapter file needs; tests append their
own kernels and ``ADAPTERS`` list and write the result as an adapter file (``--kernels FILE``)."""

GOOD_W4A16 = '''
import os, time
import torch
from qkcheck.kernels import backends
from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.w4a16.adapter import W4A16
from qkcheck.oracle.packing import unpack
from qkcheck.kernels.w4a16.kernel import LAYOUTS


def good(t, params, config):
    backends.record(backends.NATIVE)
    rec = LAYOUTS["gptq"]
    q = torch.from_numpy(unpack(t["qweight"].numpy(), rec.qweight, signed=False).astype("int64"))
    g = q.shape[0] if params["group_size"] == -1 else params["group_size"]
    z = 8
    if t["zeros"] is not None:
        z = torch.from_numpy(unpack(t["zeros"].numpy(), rec.zeros, signed=False).astype("int64"))
        z = z.repeat_interleave(g, 0)
    w = ((q - z) * t["scales"].float().repeat_interleave(g, 0)).to(t["x"].dtype).float()
    y = t["x"].float() @ w
    if t["bias"] is not None:
        y = y + t["bias"].float()
    return y.to(getattr(torch, params["out_dtype"]))
'''
