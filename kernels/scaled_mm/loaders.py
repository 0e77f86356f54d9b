"""Weight loaders: checkpoint tensors -> the layouts the W8A8 / FP8 kernels read.

This is the step a serving engine runs once after loading a layer's weights: the checkpoint
holds a quantized weight and its scales in whatever orientation it was saved in; the kernels of
``kernels.scaled_mm.kernel`` read ``b [K, N]`` (any strides) and a scale in the kernel's own
orientation. :func:`prepare_weights` returns exactly the kernel keyword arguments.

Orientation comes from the *declared* layout, ``weight_layout``, never from the tensor's
contiguity or from comparing dimensions (a square weight, or a transposed view, makes both
guesses wrong):

- ``"nk"``: weight is ``[N, K]`` (out_features x in_features, the usual checkpoint layout);
  the kernel operand is the view ``weight.t()``, no copy.
- ``"kn"``: weight is ``[K, N]``; used as it is (contiguous or a transposed view alike).

Scales (float32, float16 or bfloat16 in; float32 out):

- per-tensor / per-channel schemes (``fp8_w8a16``, ``fp8_w8a8``, ``int8_w8a8``): a scalar,
  ``[1]`` or ``[1, 1]`` (per-tensor) -> ``b_scale [1, 1]``; ``[N]``, ``[N, 1]`` or ``[1, N]``
  (one scale per output channel n) -> ``b_scale [1, N]``. A per-channel vector is indexed by n
  whatever the weight's orientation, so it is reshaped, never transposed. The output is always
  in the kernel's orientation: ``fp8_w8a16_gemm`` broadcasts ``b_scale`` against ``b [K, N]``,
  so an ``[N, 1]`` scale handed to it as it arrived would be rejected (N != K) or would scale
  the rows k of a square weight.
- block scheme (``fp8_block``, ``block=(bk, bn)``): the scale grid follows the weight's
  orientation: ``[ceil(N/bn), ceil(K/bk)]`` for ``"nk"`` and ``[ceil(K/bk), ceil(N/bn)]`` for
  ``"kn"``; it is transposed exactly when the weight is, giving ``b_scale [ceil(K/bk), ceil(N/bn)]``.
  With ``bn = 1`` this is the ``[N, K/G]`` / ``[K/G, N]`` group-scale case.

Every shape that fits no declared case raises a ValueError naming the shapes received, the ones
allowed for the declared layout, and (when the other orientation would fit) that it does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qkcheck.kernels.triton.arguments import dtype_name as _dtype_name

__all__ = ["SCHEMES", "WEIGHT_LAYOUTS", "WeightScheme", "prepare_weights"]

WEIGHT_LAYOUTS = ("nk", "kn")
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)


@dataclass(frozen=True)
class WeightScheme:
    """name: scheme id; weight_dtypes: allowed code dtypes; block_scaled: scales per (bk, bn)
    block (else per-tensor or per-channel); kernel: the ``kernels.scaled_mm.kernel`` launcher
    the returned dict is for."""

    name: str
    weight_dtypes: tuple[torch.dtype, ...]
    block_scaled: bool
    kernel: str


SCHEMES: dict[str, WeightScheme] = {
    s.name: s
    for s in (
        WeightScheme("fp8_w8a16", _FP8, False, "fp8_w8a16_gemm"),
        WeightScheme("fp8_w8a8", _FP8, False, "scaled_mm"),
        WeightScheme("int8_w8a8", (torch.int8,), False, "scaled_mm"),
        WeightScheme("fp8_block", _FP8, True, "block_scaled_mm"),
    )
}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_scheme(scheme) -> WeightScheme:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not known (allowed: {', '.join(SCHEMES)}); pick the checkpoint's scheme")
    return SCHEMES[scheme]


def _check_weight(spec: WeightScheme, weight, weight_layout, in_features, out_features) -> tuple[int, int, torch.Tensor]:
    """(N, K, b) with b the ``[K, N]`` kernel operand (a view of weight)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(
            f"weight_layout={weight_layout!r} is not known (allowed: 'nk' for [out_features, in_features], "
            "'kn' for [in_features, out_features]); declare how the checkpoint stores the weight"
        )
    if weight.dtype not in spec.weight_dtypes:
        raise TypeError(
            f"weight.dtype={_dtype_name(weight.dtype)} does not fit scheme={spec.name!r} "
            f"(allowed: {', '.join(_dtype_name(d) for d in spec.weight_dtypes)})"
        )
    if weight.dim() != 2:
        raise ValueError(f"weight.shape={list(weight.shape)} must be 2-D ([N, K] for 'nk', [K, N] for 'kn')")
    if weight_layout == "nk":
        N, K = weight.shape
        b = weight.t()
    else:
        K, N = weight.shape
        b = weight
    for name, declared, got in (("in_features", in_features, K), ("out_features", out_features, N)):
        if declared is not None and declared != got:
            other = "kn" if weight_layout == "nk" else "nk"
            flipped = (in_features, out_features) == (N, K)
            hint = f"; the shape fits weight_layout={other!r}: check the declared layout" if flipped else ""
            raise ValueError(
                f"weight.shape={list(weight.shape)} with weight_layout={weight_layout!r} gives {name}={got}, "
                f"but {name}={declared} was declared{hint}"
            )
    return N, K, b


def _check_scale_tensor(weight_scale, device) -> torch.Tensor:
    if isinstance(weight_scale, (int, float)) and not isinstance(weight_scale, bool):
        return torch.tensor(float(weight_scale), dtype=torch.float32, device=device)
    if not isinstance(weight_scale, torch.Tensor):
        raise TypeError(f"weight_scale must be a torch.Tensor or a float, got {type(weight_scale).__name__}")
    if weight_scale.dtype not in SCALE_DTYPES:
        raise TypeError(
            f"weight_scale.dtype={_dtype_name(weight_scale.dtype)} is not a scale dtype "
            f"(allowed: {', '.join(_dtype_name(d) for d in SCALE_DTYPES)})"
        )
    return weight_scale


def _channel_scale(scale: torch.Tensor, N: int, K: int) -> torch.Tensor:
    shape = tuple(scale.shape)
    if scale.dim() <= 2 and scale.numel() == 1:
        return scale.reshape(1, 1).to(torch.float32)
    if shape in ((N,), (N, 1), (1, N)):
        return scale.reshape(1, N).to(torch.float32)
    hint = ""
    if shape in ((K,), (K, 1), (1, K)):
        hint = f"; it has K={K} entries (one per input channel): scales here are per output channel"
    raise ValueError(
        f"weight_scale.shape={list(shape)} fits no per-tensor or per-channel case for N={N}, K={K} "
        f"(allowed: [], [1], [1, 1], [{N}], [{N}, 1], [1, {N}]){hint}"
    )


def _block_scale(scale: torch.Tensor, N: int, K: int, weight_layout: str, block) -> torch.Tensor:
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in block)):
        raise ValueError(f"block={block!r} must be a pair of positive ints (block_k, block_n), e.g. (128, 128)")
    bk, bn = block
    gk, gn = _cdiv(K, bk), _cdiv(N, bn)
    expected = {"nk": (gn, gk), "kn": (gk, gn)}
    shape = tuple(scale.shape)
    if shape != expected[weight_layout]:
        other = "kn" if weight_layout == "nk" else "nk"
        hint = (
            f"; it fits weight_layout={other!r}'s {list(expected[other])}: the scale grid must follow "
            "the weight's declared orientation"
            if shape == expected[other] else ""
        )
        raise ValueError(
            f"weight_scale.shape={list(shape)} does not fit block={tuple(block)} scales of a weight with "
            f"N={N}, K={K} declared {weight_layout!r} (expected {list(expected[weight_layout])} = "
            f"{'[ceil(N/bn), ceil(K/bk)]' if weight_layout == 'nk' else '[ceil(K/bk), ceil(N/bn)]'}){hint}"
        )
    # transposed exactly when the weight is
    grid = scale.t() if weight_layout == "nk" else scale
    return grid.to(torch.float32)


def prepare_weights(
    scheme: str,
    weight: torch.Tensor,
    weight_scale,
    *,
    weight_layout: str,
    block: tuple[int, int] | None = None,
    in_features: int | None = None,
    out_features: int | None = None,
) -> dict:
    """Kernel-layout tensors for one quantized linear layer.

    scheme: one of ``SCHEMES`` (``fp8_w8a16``, ``fp8_w8a8``, ``int8_w8a8``, ``fp8_block``).
    weight: codes, ``[N, K]`` (``weight_layout="nk"``) or ``[K, N]`` (``"kn"``), any strides.
    weight_scale: as the module docstring lists for the scheme (a Python float is per-tensor).
    block: ``(bk, bn)``, required for ``fp8_block`` only. in_features / out_features: K and N,
    optional cross-checks of the declared layout.

    Returns ``{"b": [K, N] view of weight, "b_scale": float32 [1, 1] / [1, N] /
    [ceil(K/bk), ceil(N/bn)]}`` plus ``"block": (bk, bn)`` for ``fp8_block`` — the keyword
    arguments of ``SCHEMES[scheme].kernel``.
    """
    spec = _check_scheme(scheme)
    N, K, b = _check_weight(spec, weight, weight_layout, in_features, out_features)
    scale = _check_scale_tensor(weight_scale, weight.device)
    if scale.device != weight.device:
        raise ValueError(f"weight_scale is on {scale.device} but weight is on {weight.device}; move it with .to()")
    if spec.block_scaled:
        if block is None:
            raise ValueError(f"scheme={scheme!r} needs block=(block_k, block_n), e.g. block=(128, 128)")
        return {"b": b, "b_scale": _block_scale(scale, N, K, weight_layout, block), "block": tuple(block)}
    if block is not None:
        raise ValueError(f"block={block!r} was given but scheme={scheme!r} is not block-scaled; drop block")
    return {"b": b, "b_scale": _channel_scale(scale, N, K)}
