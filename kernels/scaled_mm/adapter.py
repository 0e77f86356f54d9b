"""Adapters of the W8A8 / FP8 GEMMs (``kernels.scaled_mm.kernel``), each through its
torch.library op (``kernels.scaled_mm.op``, which records the backend that ran).

``pack`` builds what a caller hands the op from the canonical problem and the case's *arrival*
params (``cases.families.scaled_mm``): scale tensors in the named shape (``[]``, ``[1]``,
``[M,1]``, ``[1,N]``, ``[N]``, ``[N,1]``), ``b`` as the transposed view of ``[N, K]`` storage or
``[K, N]`` itself, a column-major block ``a_scale`` as the ``.t()`` view of its ``[K/bk, M]``
storage. ``call`` hands the case's tile config to the op as its ``config`` list and its
``fp8_path`` (``"decode"``, or absent for the device's default) as the op's ``fp8_path``.

``fp8_w8a16_gemm`` goes through the weight loader: ``pack`` produces the checkpoint's tensors
(the weight in its declared layout ``"nk"`` ``[N, K]`` / ``"kn"`` ``[K, N]`` and storage
``"contiguous"`` / ``"transposed"`` — a ``.t()`` view of the other orientation's contiguous
tensor — and ``weight_scale`` in its arrival shape) and ``call`` runs
``kernels.scaled_mm.loaders.prepare_weights`` and then the op, so the loader is tested end to
end. The weight travels as its flat storage (the runner places 1-D inputs in a poisoned buffer
without row padding, so a contiguous arrival stays contiguous and a transposed one is a true
``.t()`` view of contiguous storage) and ``call`` rebuilds the arrival view from it.
"""
from __future__ import annotations

import numpy as np

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.torch_io import float_tensor, to_device, torch_dtype

TILES = (16, 32, 64, 128)
# fp8_path: "decode" forces the in-kernel decoding of fp8 operands (kernel.py's module docstring);
# a case without it runs the device's default path, native wherever the device has fp8 dots (the
# CPU interpreter included), so the two reach both paths. "native" is not a value: where it is not
# the default, the device has no fp8 dot for the format and the kernel never takes it there.
FORCED_FP8_PATHS = ("decode",)
TUNABLES_8BIT = {"block_m": TILES, "block_n": TILES, "block_k": (32, 64, 128, 256),
                 "split_k": (1, 2, 4), "group_m": (1, 4, 8), "fp8_path": FORCED_FP8_PATHS}
TUNABLES_A16 = {"block_m": TILES, "block_n": TILES, "block_k": TILES + (256,),
                "split_k": (1, 2, 4), "group_m": (1, 4, 8), "fp8_path": FORCED_FP8_PATHS}


def code_tensor(codes, quant_dtype: str, device: str):
    """Canonical codes (int8 values, or fp8 bit patterns) as a torch tensor of the code dtype."""
    import torch

    arr = np.ascontiguousarray(codes)
    if quant_dtype == "int8":
        return to_device(torch.from_numpy(arr.astype(np.int8)), device)
    return to_device(torch.from_numpy(arr.astype(np.uint8)).view(getattr(torch, quant_dtype)), device)


def scale_arrival(values, shape: str, device: str):
    """A float32 scale from canonical ``[R, 1]`` / ``[1, C]`` / ``[1, 1]`` values, in the named shape."""
    v = np.asarray(values, np.float64)
    flat = float_tensor(v.reshape(-1), "float32", device)
    if shape == "[]":
        return flat.reshape(())
    if shape == "[1]":
        return flat.reshape(1)
    if shape == "[N]":
        return flat
    if shape in ("[M,1]", "[N,1]"):
        return flat.reshape(-1, 1)
    if shape == "[1,N]":
        return flat.reshape(1, -1)
    raise ValueError(f"scale shape {shape!r} is not an arrival shape (allowed: [], [1], [M,1], [N], [N,1], [1,N])")


def _bias(problem, dtype: str, device: str):
    b = problem.get("bias")
    return None if b is None else float_tensor(b, dtype, device)


def _config(config):
    """The tile config as the ops take it (``int[]``), or None; ``fp8_path`` travels apart
    (:func:`fp8_path`)."""
    tiles = {k: v for k, v in (config or {}).items() if k != "fp8_path"}
    if not tiles:
        return None
    from qkcheck.kernels.scaled_mm.kernel import ScaledMMConfig

    return ScaledMMConfig(**tiles).as_list()


def fp8_path(config) -> str | None:
    """The case's forced fp8 operand path, or None for the device's default."""
    return (config or {}).get("fp8_path")


def _default(dims, params):
    import dataclasses

    from qkcheck.kernels.scaled_mm.kernel import default_config

    return dataclasses.asdict(default_config(dims["m"], dims["n"], dims["k"]))


# ---------------------------------------------------------------------------------- scaled_mm
def pack_scaled_mm_operands(problem, params, device) -> dict:
    """A scaled_mm problem's codes, scales (as the case says they arrive) and a float32 bias (the
    only rounding stays at the output cast): what every scaled_mm adapter passes, engines' too.
    ``b`` is the [N, K] storage for ``b_storage == "nk"`` (a kernel takes its ``.t()`` view), else [K, N]."""
    fmt = params["quant_dtype"]
    b = np.asarray(problem["b"])
    return {
        "a": code_tensor(problem["a"], fmt, device),
        "b": code_tensor(b.T if params["b_storage"] == "nk" else b, fmt, device),
        "a_scale": scale_arrival(problem["a_scale"], params["a_scale_shape"], device),
        "b_scale": scale_arrival(problem["b_scale"], params["b_scale_shape"], device),
        "bias": _bias(problem, "float32", device),
    }


def _scaled_mm_pack(problem, params, device):
    import torch

    azp = problem.get("azp")
    return {**pack_scaled_mm_operands(problem, params, device),
            "azp": None if azp is None else to_device(torch.from_numpy(np.asarray(azp, np.int32).reshape(-1, 1)), device)}


def _scaled_mm_call(t, params, config):
    import torch

    from qkcheck.kernels.scaled_mm import op  # noqa: F401 — registers qkcheck::scaled_mm

    b = t["b"].t() if params["b_storage"] == "nk" else t["b"]
    return torch.ops.qkcheck.scaled_mm(t["a"], b, t["a_scale"], t["b_scale"], torch_dtype(params["out_dtype"]),
                                       t["bias"], t["azp"], _config(config), fp8_path=fp8_path(config))


SCALED_MM = KernelAdapter(
    name="bundled:scaled_mm",
    op="scaled_mm",
    pack=_scaled_mm_pack,
    call=_scaled_mm_call,
    tunables=TUNABLES_8BIT,
    custom_op="qkcheck::scaled_mm",
    default_config=_default,
    description="Triton W8A8 GEMM (int8 / fp8 codes, per-token / per-tensor a scales, per-channel / "
                "per-tensor b scales, int8 zero points, split-K)",
)


# ---------------------------------------------------------------------------------- block_scaled_mm
def _block_pack(problem, params, device):
    fmt = params["quant_dtype"]
    a_scale = np.asarray(problem["a_scale"], np.float64)
    return {
        "a": code_tensor(problem["a"], fmt, device),
        "b": code_tensor(np.asarray(problem["b"]).T, fmt, device),  # [N, K] storage, passed as .t()
        # column-major: the [ceil(K/bk), M] storage, passed as .t()
        "a_scale": float_tensor(a_scale.T if params["a_scale_major"] == "column" else a_scale, "float32", device),
        "b_scale": float_tensor(problem["b_scale"], "float32", device),
        "bias": _bias(problem, "float32", device),
    }


def _block_call(t, params, config):
    import torch

    from qkcheck.kernels.scaled_mm import op  # noqa: F401 — registers qkcheck::block_scaled_mm

    a_scale = t["a_scale"].t() if params["a_scale_major"] == "column" else t["a_scale"]
    return torch.ops.qkcheck.block_scaled_mm(
        t["a"], t["b"].t(), a_scale, t["b_scale"], [params["scale_block_k"], params["scale_block_n"]],
        torch_dtype(params["out_dtype"]), t["bias"], _config(config), fp8_path=fp8_path(config),
    )


BLOCK_SCALED_MM = KernelAdapter(
    name="bundled:block_scaled_mm",
    op="block_scaled_mm",
    pack=_block_pack,
    call=_block_call,
    tunables=TUNABLES_8BIT,
    custom_op="qkcheck::block_scaled_mm",
    default_config=_default,
    description="Triton block-scaled FP8 GEMM (1 x bk activation groups, bk x bn weight blocks, "
                "BLOCK_K independent of bk, row- or column-major activation scales)",
)


# ---------------------------------------------------------------------------------- fp8_w8a16_gemm
def _weight_storage(b_kn: np.ndarray, layout: str, storage: str) -> np.ndarray:
    """The contiguous array behind the checkpoint weight (arrival = it, or its transpose view)."""
    arrival = b_kn.T if layout == "nk" else b_kn  # [N, K] or [K, N]
    return np.ascontiguousarray(arrival if storage == "contiguous" else arrival.T)


def checkpoint_weight(flat, k: int, params):
    """The weight as the checkpoint delivers it, rebuilt from its flat contiguous storage."""
    n = flat.numel() // k
    layout, storage = params["weight_layout"], params["weight_storage"]
    rows, cols = (n, k) if layout == "nk" else (k, n)  # the arrival's shape
    if storage == "contiguous":
        return flat.view(rows, cols)
    return flat.view(cols, rows).t()


def _fp8_w8a16_pack(problem, params, device):
    fmt, act = params["quant_dtype"], params["act_dtype"]
    storage = _weight_storage(np.asarray(problem["b"]), params["weight_layout"], params["weight_storage"])
    return {
        "x": float_tensor(problem["x"], act, device),
        "weight": code_tensor(storage.reshape(-1), fmt, device),
        "weight_scale": scale_arrival(problem["b_scale"], params["scale_shape"], device),
        "bias": _bias(problem, act, device),
    }


def _fp8_w8a16_call(t, params, config):
    import torch

    from qkcheck.kernels.scaled_mm import op  # noqa: F401 — registers qkcheck::fp8_w8a16_gemm
    from qkcheck.kernels.scaled_mm.loaders import prepare_weights

    k = t["x"].shape[1]
    weight = checkpoint_weight(t["weight"], k, params)
    prepared = prepare_weights("fp8_w8a16", weight, t["weight_scale"], weight_layout=params["weight_layout"],
                               in_features=k, out_features=t["weight"].numel() // k)
    return torch.ops.qkcheck.fp8_w8a16_gemm(t["x"], prepared["b"], prepared["b_scale"],
                                            torch_dtype(params["out_dtype"]), t["bias"], _config(config),
                                            fp8_path=fp8_path(config))


FP8_W8A16 = KernelAdapter(
    name="bundled:fp8_w8a16_gemm",
    op="fp8_w8a16_gemm",
    pack=_fp8_w8a16_pack,
    call=_fp8_w8a16_call,
    tunables=TUNABLES_A16,
    custom_op="qkcheck::fp8_w8a16_gemm",
    default_config=_default,
    description="weight loader (prepare_weights, declared [N,K]/[K,N] layout, any scale arrival) + Triton "
                "FP8 W8A16 GEMM",
)


def adapters() -> tuple[KernelAdapter, ...]:
    return (SCALED_MM, BLOCK_SCALED_MM, FP8_W8A16)
