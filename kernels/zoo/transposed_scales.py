"""Zoo: an FP8 W8A16 weight loader whose ``weight_scale`` transpose is not tied to the weight's.

Seed 004 (an XPU FP8 W8A16 linear method in a serving engine, "fix weight scale shape"): the
kernel wants the weight as ``[in, out]`` (``[K, N]``) and the scale laid out like the weight. The
loader transposed the weight only when it was still ``[out, in]``, deciding that from the shape
and, for square matrices (where the shape says nothing), from contiguity ("checkpoint weights
are contiguous, ``.t()`` views are not"); the fix then added ``weight_scale.t().contiguous()`` —
*unconditionally*, outside the weight's ``if``. A review pointed out that the two decisions are
not in sync: whenever the weight is left as it is, the scale is still transposed. The change was
merged with that comment unresolved.

This entry is that loader step, ``process_weights_after_loading`` below, in place of the bundled
``kernels.scaled_mm.loaders.prepare_weights`` in the bundled FP8 W8A16 adapter's path (same
packing, same custom op, same kernel): the weight orientation is inferred from ``(out_features, in_features)``
and contiguity instead of the declared ``weight_layout``, and ``weight_scale`` is transposed
unconditionally, as the seed's code does (``.t()`` of a 0-D or 1-D scale is a no-op, as in
torch). The kernel broadcasts ``b_scale`` against the ``[K, N]`` weight like
``w.float() * b_scale``, so the scale's orientation matters, as in the seed's kernel:

- a per-channel scale that arrives ``[N, 1]`` (the ``[N, K]`` convention) becomes ``[1, N]``:
  right;
- one that arrives ``[1, N]`` (consistent with a ``[K, N]`` weight) becomes ``[N, 1]``: on a
  square weight the kernel silently applies it along K, row k scaled by the scale of channel k
  (scales transposed); on a non-square one the kernel rejects the shape (a loud failure);
- on square weights the orientation guess is also wrong wherever contiguity contradicts the
  "contiguous means ``[N, K]``" convention — a contiguous ``[K, N]`` checkpoint is transposed, a
  ``[N, K]`` transposed view is not — and every column mixes the wrong weights.

Per-tensor scales and ``[N]`` vectors come through unchanged, and non-square weights are decided
by shape, which is why the mistake survives tests on the usual ``[N, 1]``-scaled, non-square
layers.
"""
from __future__ import annotations

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.scaled_mm.adapter import FP8_W8A16, _config, _default, checkpoint_weight, fp8_path
from qkcheck.kernels.torch_io import torch_dtype


def process_weights_after_loading(weight, weight_scale, *, in_features: int, out_features: int):
    """The seed's loader step: returns (weight as ``[K, N]``, weight_scale) for the kernel."""
    # the kernel expects the weight as [in, out]: transpose if it is still [out, in]; for square
    # matrices contiguity breaks the tie (checkpoint weights are contiguous, .t() views are not)
    if tuple(weight.shape) == (out_features, in_features) and (
        in_features != out_features or weight.is_contiguous()
    ):
        weight = weight.t()
    # THE BUG (seed 004): the scale is transposed whatever was decided for the weight above
    # (a [1, N] scale becomes [N, 1]; .t() leaves 0-D and 1-D scales as they are)
    weight_scale = weight_scale.t().contiguous()
    return weight, weight_scale


def _call(t, params, config):
    import torch

    from qkcheck.kernels.scaled_mm import op  # noqa: F401 — registers qkcheck::fp8_w8a16_gemm

    k = t["x"].shape[1]
    weight = checkpoint_weight(t["weight"], k, params)
    b, b_scale = process_weights_after_loading(weight, t["weight_scale"], in_features=k,
                                               out_features=t["weight"].numel() // k)
    return torch.ops.qkcheck.fp8_w8a16_gemm(t["x"], b, b_scale.to(torch.float32),
                                            torch_dtype(params["out_dtype"]), t["bias"], _config(config),
                                            fp8_path=fp8_path(config))


ADAPTER = KernelAdapter(
    name="zoo:transposed_scales",
    op="fp8_w8a16_gemm",
    pack=FP8_W8A16.pack,
    call=_call,
    tunables=FP8_W8A16.tunables,
    custom_op=FP8_W8A16.custom_op,
    default_config=_default,
    description="seed 004: FP8 W8A16 loader guessing orientation by shape/contiguity, weight_scale transposed "
                "unconditionally ([1,N] scales reach the kernel as [N,1]; square weights misoriented)",
)


def adapters():
    return (ADAPTER,)
