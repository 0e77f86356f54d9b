"""Zoo: an MXFP4 GEMM adapter written for an engine API whose ``out`` slot now takes ``bias``.

Seed 000 (an engine's MXFP4 linear layer on ROCm, fixed by calling the GEMM library's new
signature): the GEMM library's FP4 GEMM used to take a preallocated output tensor as a
positional parameter; a release removed the need for it (the GEMM returns its result) and the
slot that ``out`` had occupied was now the ``bias`` parameter. The engine kept calling the old
way — allocate ``y = torch.empty(...)``, pass ``y`` positionally, return ``y`` — so ``y`` was
silently bound to ``bias``: added to a result that went to a fresh tensor nobody read, while the
layer returned the untouched buffer. Nothing raised; MXFP4 models produced garbage. The fix
dropped the buffer, passed the output dtype by keyword and used the return value.

Here :func:`mxfp4_gemm` stands for the engine's public API in its current release: a thin
wrapper around the bundled MXFP4 kernel (``qkcheck::mxfp4_gemm``) with the signature
``(x, w, w_scale, bias=None, out=None, *, x_scale=None, dtype=None, ...)``, where the previous
release had ``(x, w, w_scale, out=None, *, x_scale=None, dtype=None, ...)`` and no fused bias.
Like the library's, its ``bias`` broadcasts against the ``[M, N]`` output (``[N]`` or a full
``[M, N]`` tensor), so a misbound output buffer is accepted without complaint.

The adapter is the one written for the previous release, with only that mistake put back: it
preallocates its output buffer (holding stale contents, as ``torch.empty`` or a reused buffer
does — here a fixed non-zero pattern, so runs are reproducible), passes it positionally, adds
the model bias itself in float32 (the previous release had none) and returns its buffer. It
declares, as every external adapter does, ``target`` (the API) and ``signature`` (the parameter
names it binds positionally, in order), so the harness's signature check reports the drift:
parameter 3 is ``bias`` where the adapter binds ``out``. Without that declaration the numerics
check still fails: the output is the stale buffer, not the GEMM.
"""
from __future__ import annotations

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.mxfp4.adapter import MXFP4, config_list
from qkcheck.kernels.torch_io import torch_dtype

DEFAULT_DTYPE = "bfloat16"  # the API's dtype when neither out nor dtype is given


def mxfp4_gemm(x, w, w_scale, bias=None, out=None, *, x_scale=None, dtype=None, compute_dtype=None, config=None):
    """``x @ dequant(w, w_scale) (+ bias)`` (the engine API's current release).

    x: float16/bfloat16 ``[M, K]`` activations, or uint8 ``[M, K // 2]`` packed e2m1 codes with
    ``x_scale`` E8M0 codes ``[M, K // 32]``. w: uint8 ``[K // 2, N]`` packed e2m1 codes; w_scale:
    E8M0 codes ``[K // 32, N]``. bias: broadcast against the ``[M, N]`` output — ``[N]`` (fused in
    the kernel's epilogue) or ``[M, N]`` (added in float32 before the output rounding). out: an
    ``[M, N]`` tensor the result is written into and returned; else a new tensor of ``dtype``
    (default bfloat16). compute_dtype / config: passed to the kernel.
    """
    import torch

    from qkcheck.kernels.mxfp4 import op  # noqa: F401 — registers qkcheck::mxfp4_gemm

    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError(f"x and w must be tensors, got {type(x).__name__} and {type(w).__name__}")
    m, n = x.shape[0], w.shape[1]
    if out is not None:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (m, n):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"out={shape} must be a tensor of shape [M, N] = [{m}, {n}]; pass out=None for a new one")
        if dtype is not None and dtype != out.dtype:
            raise ValueError(f"dtype={dtype} differs from out.dtype={out.dtype}; pass one of them")
        dtype = out.dtype
    elif dtype is None:
        dtype = torch_dtype(DEFAULT_DTYPE)
    fused = bias is None or bias.dim() == 1
    if not fused and (bias.dim() != 2 or bias.shape[-1] != n or bias.shape[0] not in (1, m)):
        raise ValueError(f"bias.shape={tuple(bias.shape)} does not broadcast against the output [{m}, {n}]; "
                         f"pass [N], [1, N] or [M, N]")
    y = torch.ops.qkcheck.mxfp4_gemm(
        x_or_a=x, w=w, w_scale=w_scale, a_scale=x_scale, bias=bias if fused else None,
        out_dtype=dtype if fused else torch.float32, compute_dtype=compute_dtype, config=config,
    )
    if not fused:
        y = (y + bias.to(torch.float32)).to(dtype)
    if out is None:
        return y
    out.copy_(y)
    return out


def stale_buffer(shape, dtype, device):
    """An output buffer as a caller finds it before the GEMM writes it: not zeros, whatever was
    there (``torch.empty``, a reused activation buffer). A fixed pattern of the values
    -8.5 .. 7.5 (exact in every float dtype), so a run is reproducible."""
    import torch

    n = int(shape[0]) * int(shape[1])
    pattern = torch.arange(n, dtype=torch.float32, device=device) % 17 - 8.5
    return pattern.reshape(shape).to(dtype)


def _call(t, params, config):
    import torch

    x, w = t["x_or_a"], t["w"]
    out_dtype = torch_dtype(params["out_dtype"])
    bias = t["bias"]
    # the previous release had no bias: the model's bias is added here, in float32
    y = stale_buffer((x.shape[0], w.shape[1]), torch.float32 if bias is not None else out_dtype, x.device)
    compute = None if params["act"] == "a16" else torch_dtype(params["act_dtype"])
    # THE BUG (seed 000): the output buffer is passed positionally, into the slot that the
    # previous release's `out` had and the current one's `bias` has; the result is returned by
    # the API and dropped here, and the buffer is returned as if the GEMM had written it
    mxfp4_gemm(x, w, t["w_scale"], y, x_scale=t["a_scale"], compute_dtype=compute, config=config_list(config))
    if bias is not None:
        y = (y + bias.to(torch.float32)).to(out_dtype)
    return y


ADAPTER = KernelAdapter(
    name="zoo:api_misbinding",
    op="mxfp4_gemm",
    pack=MXFP4.pack,
    call=_call,
    tunables=MXFP4.tunables,
    default_config=MXFP4.default_config,
    target=mxfp4_gemm,
    signature=("x", "w", "w_scale", "out"),
    description="seed 000: preallocated output passed positionally into the API's new `bias` slot (result dropped)",
)


def adapters():
    return (ADAPTER,)
