"""Fused mixture-of-experts: routing, block alignment and a grouped expert GEMM over sorted blocks.

``y[t] = sum_j  r[t, j] * down_e( act( up_gate_e( x[t] ) ) )``,  ``e = topk_ids[t, j]``, ``r = topk_weights``

Pipeline (:func:`fused_moe` = :func:`route` + :func:`fused_experts`):

1. :func:`route` — router logits ``[T, E]`` -> ``topk_ids`` int32 ``[T, k]`` and ``topk_weights``
   float32 ``[T, k]`` (softmax or sigmoid scores, optional correction bias for selection only,
   optional grouped top-k, optional renormalization). Ties pick the lower expert id. One
   Triton kernel (a block of tokens per program); :func:`route_torch` is its torch twin.
2. :func:`align_block_size` — the ``T * k`` (token, slot) assignments, flattened as
   ``a = t * k + j``, sorted by (local) expert into runs padded to a multiple of ``BLOCK_M``;
   padding holds the sentinel ``T * k``; one expert id per block; assignments to experts that
   are not local (``expert_map[e] == -1``) are dropped; experts without tokens get no block.
   The buffers have :func:`aligned_capacity` slots (a tight bound from shapes only). At decode
   sizes :func:`fused_moe` runs steps 1 and 2 as one single-program kernel.
3. GEMM 1 (gate/up): for each block, rows ``x[a // k]`` times ``w13[e]`` (``[H, 2I]``: columns
   ``[:I]`` gate, ``[I:]`` up), accumulated in float32; then the activation in float32 —
   ``silu``: ``silu(g) * u``; ``swiglu``: ``g * sigmoid(1.702 g) * (u + 1)`` with
   ``g <- min(g, limit)`` and ``u <- clamp(u, -limit, limit)`` when a limit is given — stored in
   the activation dtype as ``[T * k, I]``.
4. GEMM 2 (down): rows ``a`` of that times ``w2[e]`` (``[I, H]``), float32, multiplied by the
   router weight ``r[a]`` (a zero weight gives exactly 0) into a float32 ``[T, k, H]`` buffer.
5. ``y = buffer.sum(dim=1)`` (a fixed-order reduction over the k slots), cast to ``out_dtype``.

With ``apply_router_weight_on_input`` (only for ``top_k == 1``) the weight multiplies GEMM 1's
float32 accumulator (``(r x) @ W = r (x @ W)``) instead of GEMM 2's.

Expert weight schemes (``SCHEMES``; each GEMM's weights are one :class:`ExpertWeights`):

- ``"dense"``: ``weight [E, K, N]`` float16/bfloat16 (any strides: a ``[E, N, K]`` tensor's
  ``.transpose(1, 2)`` works). Dot in the activation dtype.
- ``"w4a16"``: uint4 codes packed per expert as ``kernels.w4a16.kernel.LAYOUTS[layout]`` says
  (``qweight [E, *packed [K, N]]``), ``scales [E, K/G, N]`` (activation dtype or float32),
  optional ``zeros [E, *packed [K/G, N]]`` (true zero points; None = 8).
  ``w = (q - z[k // G]) * s[k // G]``, dequantized per k row, so any BLOCK_K vs G works.
- ``"fp8_block"``: ``weight [E, K, N]`` float8_e4m3fn (or e4m3fnuz), ``scales [E, ceil(K/bk),
  ceil(N/bn)]`` float32 per ``bk x bn`` weight block (default 128 x 128). Activations are
  quantized dynamically per token and per group of ``bk`` along K to the weight's fp8 dtype
  (``scale = max(amax, 1e-10) / fp8_max``, codes ``clamp(x / scale)``); the dot runs on fp8
  codes over sub-tiles of ``min(BLOCK_K, bk)`` and each partial is scaled by
  ``a_scale[row, g] * w_scale[g, n // bn]`` — so BLOCK_K smaller than, equal to or larger than bk
  is correct.
- ``"mxfp4"``: OCP MX FP4 weights with 16-bit activations: e2m1 codes in nibbles along K
  (``weight uint8 [E, K/2, N]``, the ``"nibble"`` layout's record: low nibble k = 2r, high
  k = 2r + 1), ``scales uint8 [E, K/32, N]`` E8M0 codes (``2**(s - 127)``, 255 = NaN).
  Dequantized per k row to the activation dtype, dot in the activation dtype.

Every tunable is in :class:`MoEConfig`; every argument is validated before anything is launched.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qkcheck.kernels.triton.arguments import dtype_name as _dtype_name, require_tensor as _require_tensor
from qkcheck.kernels.triton.config import ListConfig
from qkcheck.kernels.w4a16.kernel import LAYOUTS as W4A16_LAYOUTS
from qkcheck.kernels.w4a16.kernel import SYMMETRIC_ZERO, WeightLayout
from qkcheck.kernels.w4a16.kernel import _container_dtype, _field_code, _per_axis

__all__ = [
    "ACTIVATIONS",
    "ExpertScheme",
    "ExpertWeights",
    "MoEConfig",
    "SCHEMES",
    "SCORING",
    "align_block_size",
    "aligned_capacity",
    "check_fused_moe_arguments",
    "default_config",
    "fused_experts",
    "fused_moe",
    "quantize_activations_fp8",
    "route",
    "route_torch",
]

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
SCORING = ("softmax", "sigmoid")
ACTIVATIONS = ("silu", "swiglu")
SWIGLU_ALPHA = 1.702
MIN_DOT_BLOCK = 16
MIN_FP8_DOT_K = 32  # 8-bit MMA consumes K in steps of 32
ACT_QUANT_FLOOR = 1e-10  # amax floor of the dynamic fp8 activation quantization
MX_BLOCK = 32
MXFP4_LAYOUT = "nibble"  # e2m1 codes use the nibble-along-K record of the W4A16 layouts

# kernel constexpr codes
_KIND_DENSE, _KIND_INT4, _KIND_FP8_BLOCK, _KIND_MXFP4 = 0, 1, 2, 3
_ACT_CODES = {"silu": 0, "swiglu": 1}


@dataclass(frozen=True)
class ExpertScheme:
    """One expert weight scheme as data.

    kind: the kernel's constexpr; packed: codes are packed per a W4A16 layout record (the layout
    is the argument ``layout`` for w4a16, fixed ``"nibble"`` for mxfp4); scale_group: fixed K
    group of the scales (None: given by the weights); quantized_activations: activations are
    re-quantized (to the weight's fp8 dtype) before each GEMM.
    """

    name: str
    kind: int
    packed: bool
    scale_group: int | None
    quantized_activations: bool


SCHEMES: dict[str, ExpertScheme] = {
    s.name: s
    for s in (
        ExpertScheme("dense", _KIND_DENSE, packed=False, scale_group=None, quantized_activations=False),
        ExpertScheme("w4a16", _KIND_INT4, packed=True, scale_group=None, quantized_activations=False),
        ExpertScheme("fp8_block", _KIND_FP8_BLOCK, packed=False, scale_group=None, quantized_activations=True),
        ExpertScheme("mxfp4", _KIND_MXFP4, packed=True, scale_group=MX_BLOCK, quantized_activations=False),
    )
}


@dataclass(frozen=True)
class ExpertWeights:
    """The stacked weights of one GEMM (w13: K=H, N=2I; w2: K=I, N=H) in one scheme.

    scheme: a key of ``SCHEMES``; weight/scales/zeros: as the module docstring says per scheme;
    layout: the W4A16 layout name (w4a16 only); group_size: the W4A16 group G (a divisor of K,
    or -1 for one group); block: the fp8 weight block ``(bk, bn)``.
    """

    scheme: str
    weight: torch.Tensor
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    layout: str | None = None
    group_size: int | None = None
    block: tuple[int, int] = (128, 128)


@dataclass(frozen=True)
class MoEConfig(ListConfig):
    """Tunables of one fused MoE call.

    block_m: rows per aligned block (the alignment's BLOCK_M and both GEMMs' M tile);
    block_n / block_k: both GEMMs' N and K tiles (powers of two >= 16; block_k may be smaller
    than, equal to or larger than the weights' scale group); fuse_activation: the gate/up split —
    True: each GEMM 1 program computes a gate tile and the matching up tile (columns n and I + n)
    and applies the activation in its epilogue; False: GEMM 1 writes the float32 ``[T*k, 2I]``
    product and a separate kernel applies the activation. split_k: GEMM 2 splits its K (= I)
    into this many runs of K tiles, each program storing a float32 partial that the final
    reduction sums in a fixed order (more programs at decode sizes; deterministic, no atomics).
    """

    block_m: int
    block_n: int
    block_k: int
    fuse_activation: bool = True
    num_warps: int = 4
    num_stages: int = 2
    split_k: int = 1

def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (plain Python: cheaper per call than ``triton.cdiv``)."""
    return -(-a // b)


def _next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _next_pow2_at_least_16(n: int) -> int:
    return max(MIN_DOT_BLOCK, _next_pow2(max(int(n), 1)))


DECODE_TARGET_PROGRAMS = 256  # GEMM 2 programs wanted at decode sizes (about 2 per H100 SM)


@functools.lru_cache(maxsize=1024)
def default_config(num_tokens: int, top_k: int, hidden: int, intermediate: int, num_experts: int) -> MoEConfig:
    """BLOCK_M from the expected tokens per expert; N/K tiles clamped to the problem size.

    Decode sizes (at most 16 assignments per expert on average) are bound by reading the hit
    experts' weights once: BLOCK_M 16, long K tiles (128: one W4A16 g128 group per tile) and 4
    pipeline stages to keep many loads in flight, BLOCK_N 32 for narrow intermediates (more
    programs), and GEMM 2 split along K when ``hit experts x H / BLOCK_N`` is below
    ``DECODE_TARGET_PROGRAMS``.
    """
    per_expert = max(1, num_tokens * top_k // max(num_experts, 1))
    block_m = 16 if per_expert <= 16 else 32 if per_expert <= 64 else 64
    small = _next_pow2_at_least_16(min(hidden, intermediate))
    if block_m == 16:
        block_n = min(32 if intermediate <= 2048 else 64, small)
        block_k = min(128, small)
        hit = max(1, min(num_experts, num_tokens * top_k))
        programs = hit * _cdiv(hidden, block_n)
        k_tiles = _cdiv(intermediate, block_k)
        split_k = max(1, min(8, DECODE_TARGET_PROGRAMS // programs, k_tiles // 4))
        return MoEConfig(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=4, num_stages=4,
                         split_k=split_k)
    return MoEConfig(block_m=block_m, block_n=min(64, small), block_k=min(64, small), num_stages=3)


# ---------------------------------------------------------------------------------------------
# routing


def _names(values) -> str:
    return ", ".join(str(v) for v in values)


def _require_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _check_routing(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias):
    _require_tensor("router_logits", router_logits)
    if router_logits.dim() != 2:
        raise ValueError(
            f"router_logits.shape={tuple(router_logits.shape)} must be 2-D [T, E]; reshape with .reshape(-1, E)"
        )
    if not router_logits.dtype.is_floating_point:
        raise TypeError(f"router_logits.dtype={_dtype_name(router_logits.dtype)} must be a float dtype; cast it")
    E = router_logits.shape[1]
    _require_int("top_k", top_k, minimum=1)
    if top_k > E:
        raise ValueError(f"top_k={top_k} is larger than the number of experts E={E} (allowed: 1..{E}); lower top_k")
    if scoring not in SCORING:
        raise ValueError(f"scoring={scoring!r} is not known (allowed: {_names(SCORING)}); pick one of them")
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize={renormalize!r} must be a bool")
    if (num_groups is None) != (topk_groups is None):
        raise ValueError(
            f"num_groups={num_groups!r} and topk_groups={topk_groups!r} must be given together "
            "(grouped top-k) or both be None"
        )
    if num_groups is not None:
        _require_int("num_groups", num_groups, minimum=1)
        _require_int("topk_groups", topk_groups, minimum=1)
        if E % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide E={E}; pick a divisor of the expert count")
        per_group = E // num_groups
        if per_group < 2:
            raise ValueError(
                f"num_groups={num_groups} leaves {per_group} expert per group for E={E}; grouped top-k "
                "scores a group by its top-2 experts, so each group needs >= 2 (use fewer groups)"
            )
        if topk_groups > num_groups:
            raise ValueError(f"topk_groups={topk_groups} must be <= num_groups={num_groups}")
        if top_k > topk_groups * per_group:
            raise ValueError(
                f"top_k={top_k} is larger than the {topk_groups * per_group} experts in topk_groups={topk_groups} "
                f"groups of {per_group}; raise topk_groups or lower top_k"
            )
    if correction_bias is not None:
        _require_tensor("correction_bias", correction_bias)
        if tuple(correction_bias.shape) != (E,):
            raise ValueError(
                f"correction_bias.shape={tuple(correction_bias.shape)} must be [E] = [{E}]; one bias per expert"
            )
        if correction_bias.device != router_logits.device:
            raise ValueError(
                f"correction_bias is on {correction_bias.device} but router_logits on {router_logits.device}; "
                "move them to the same device"
            )


def _top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries per row; ties go to the lower index (a stable sort)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


ROUTE_TILE = 4096  # max (tokens x padded experts) elements one routing program holds


def _route_layout(E: int, num_groups: int | None) -> tuple[int, int, int, int]:
    """(groups, experts per group, their padded sizes) of the router's 3-D expert tile."""
    groups = 1 if num_groups is None else num_groups
    per = E // groups
    return groups, per, _next_pow2(groups), _next_pow2(per)


def _check_launch_device(t: torch.Tensor) -> None:
    """Compiled Triton kernels read GPU memory only; a CPU tensor runs them only under the
    interpreter (TRITON_INTERPRET=1)."""
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "router_logits is on cpu, but Triton kernels run compiled here (TRITON_INTERPRET is not 1); "
            "move the logits to the GPU, or call route_torch for a CPU tensor"
        )


def route(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = False,
    num_groups: int | None = None,
    topk_groups: int | None = None,
    correction_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: ``(topk_ids int32 [T, k], topk_weights float32 [T, k])``, one Triton launch.

    scores = softmax(logits) or sigmoid(logits), in float32 (logits of any float dtype are cast to
    float32 first). Selection uses ``scores + correction_bias`` (when given); with ``num_groups``,
    the experts are split into contiguous groups, each group is scored by the sum of its two
    largest selection scores, the ``topk_groups`` best groups are kept and the top-k is taken among
    their experts. The weights are the *uncorrected* scores of the selected experts, divided by
    their sum (summed in slot order) when ``renormalize``. Ties (in group or expert selection) go
    to the lower index; ids are ordered by decreasing selection score. :func:`route_torch` is the
    same in torch operations (the scores may differ from it in the last bits: another exp and
    another summation order; ids differ only where two scores are that close). Non-finite
    scores (a NaN or infinite logit) still give k distinct in-range ids, which ones unspecified.
    """
    _check_routing(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias)
    _check_launch_device(router_logits)
    T, E = router_logits.shape
    device = router_logits.device
    ids = torch.empty((T, top_k), dtype=torch.int32, device=device)
    weights = torch.empty((T, top_k), dtype=torch.float32, device=device)
    if T == 0:
        return ids, weights
    groups, per, g_pad, p_pad, block_t = _route_tiles(T, E, num_groups)
    bias = correction_bias if correction_bias is not None else router_logits
    _route_kernel[(_cdiv(T, block_t),)](
        router_logits, bias, ids, weights, T, E, per, groups, top_k,
        topk_groups if num_groups is not None else groups,
        router_logits.stride(0), router_logits.stride(1), bias.stride(0) if correction_bias is not None else 0,
        ids.stride(0), ids.stride(1), weights.stride(0), weights.stride(1),
        SIGMOID=scoring == "sigmoid", HAS_BIAS=correction_bias is not None, GROUPED=num_groups is not None,
        RENORMALIZE=renormalize, BLOCK_T=block_t, G_PAD=g_pad, P_PAD=p_pad, K_PAD=_next_pow2(top_k),
    )
    return ids, weights


@triton.jit
def _route_tile(
    logits_ptr, bias_ptr, ids_ptr, weights_ptr, t0, T, E, per, groups, top_k, topk_groups,
    stride_lt, stride_le, stride_b, stride_it, stride_ik, stride_wt, stride_wk,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, G_PAD: tl.constexpr, P_PAD: tl.constexpr, K_PAD: tl.constexpr,
):
    """Route tokens ``t0 .. t0 + BLOCK_T - 1``: experts held as a ``[BLOCK_T, G_PAD, P_PAD]`` tile,
    expert ``e = g * per + p`` (one group of all E experts without grouping). Padded experts
    (``p >= per`` or ``g >= groups``) are never candidates: their values are -inf and a separate
    mask excludes them, so even an expert whose selection value is -inf is preferred to them."""
    offs_t = t0 + tl.arange(0, BLOCK_T)
    g_idx = tl.arange(0, G_PAD)
    p_idx = tl.arange(0, P_PAD)
    e3 = g_idx[None, :, None] * per + p_idx[None, None, :]  # [1, G_PAD, P_PAD]
    real = (g_idx[None, :, None] < groups) & (p_idx[None, None, :] < per)
    t_ok = offs_t < T
    mask = t_ok[:, None, None] & real
    logits = tl.load(logits_ptr + offs_t.to(tl.int64)[:, None, None] * stride_lt + e3 * stride_le,
                     mask=mask, other=0.0).to(tl.float32)
    if SIGMOID:
        scores = 1.0 / (1.0 + tl.exp(-logits))
    else:
        shifted = tl.where(real, logits, float("-inf"))
        row_max = tl.max(tl.max(shifted, axis=2), axis=1)
        ex = tl.where(real, tl.exp(shifted - row_max[:, None, None]), 0.0)
        total = tl.sum(tl.sum(ex, axis=2), axis=1)
        scores = ex / total[:, None, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + e3 * stride_b, mask=real, other=0.0).to(tl.float32)
        select = scores + bias
    else:
        select = scores
    select = tl.where(real, select, float("-inf"))
    eligible = real & (offs_t[:, None, None] >= 0)  # broadcast to [BLOCK_T, G_PAD, P_PAD]
    if GROUPED:
        # group score: the two largest selection values of the group (the second may equal the first)
        first = tl.max(select, axis=2)
        first_p = tl.min(tl.where(select == first[:, :, None], p_idx[None, None, :], P_PAD), axis=2)
        second = tl.max(tl.where(p_idx[None, None, :] == first_p[:, :, None], float("-inf"), select), axis=2)
        group_score = first + second
        # rows past T are routed like real ones (from zero logits) and never stored
        g_left = (g_idx[None, :] < groups) & (offs_t[:, None] >= 0)  # [BLOCK_T, G_PAD]
        kept = (g_idx[None, :] < 0) & (offs_t[:, None] >= 0)  # all False, [BLOCK_T, G_PAD]
        for _ in range(0, topk_groups):
            best = tl.max(tl.where(g_left, group_score, float("-inf")), axis=1)
            pick = tl.min(tl.where(g_left & (group_score == best[:, None]), g_idx[None, :], G_PAD), axis=1)
            # a NaN score matches nothing: take the lowest group still left (ids stay distinct)
            pick = tl.where(pick < G_PAD, pick, tl.min(tl.where(g_left, g_idx[None, :], G_PAD), axis=1))
            chosen = g_idx[None, :] == pick[:, None]
            kept = kept | chosen
            g_left = g_left & ~chosen
        eligible = eligible & kept[:, :, None]

    k_idx = tl.arange(0, K_PAD)
    out_ids = tl.zeros((BLOCK_T, K_PAD), dtype=tl.int32)
    out_w = tl.zeros((BLOCK_T, K_PAD), dtype=tl.float32)
    w_sum = tl.zeros((BLOCK_T,), dtype=tl.float32)
    left = eligible
    for j in range(0, top_k):
        vals = tl.where(left, select, float("-inf"))
        best = tl.max(tl.max(vals, axis=2), axis=1)
        hit = left & (vals == best[:, None, None])
        pick = tl.min(tl.min(tl.where(hit, e3, E), axis=2), axis=1)
        pick = tl.where(pick < E, pick, tl.min(tl.min(tl.where(left, e3, E), axis=2), axis=1))
        chosen = e3 == pick[:, None, None]
        w = tl.sum(tl.sum(tl.where(chosen & real, scores, 0.0), axis=2), axis=1)
        left = left & ~chosen
        out_ids = tl.where(k_idx[None, :] == j, pick[:, None], out_ids)
        out_w = tl.where(k_idx[None, :] == j, w[:, None], out_w)
        w_sum += w
    if RENORMALIZE:
        out_w = out_w / w_sum[:, None]
    k_ok = t_ok[:, None] & (k_idx[None, :] < top_k)
    rows = offs_t.to(tl.int64)[:, None]
    tl.store(ids_ptr + rows * stride_it + k_idx[None, :] * stride_ik, out_ids, mask=k_ok)
    tl.store(weights_ptr + rows * stride_wt + k_idx[None, :] * stride_wk, out_w, mask=k_ok)


@triton.jit
def _route_kernel(
    logits_ptr, bias_ptr, ids_ptr, weights_ptr, T, E, per, groups, top_k, topk_groups,
    stride_lt, stride_le, stride_b, stride_it, stride_ik, stride_wt, stride_wk,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, G_PAD: tl.constexpr, P_PAD: tl.constexpr, K_PAD: tl.constexpr,
):
    """One program routes BLOCK_T tokens (``_route_tile``)."""
    _route_tile(
        logits_ptr, bias_ptr, ids_ptr, weights_ptr, tl.program_id(0) * BLOCK_T, T, E, per, groups, top_k,
        topk_groups, stride_lt, stride_le, stride_b, stride_it, stride_ik, stride_wt, stride_wk,
        SIGMOID, HAS_BIAS, GROUPED, RENORMALIZE, BLOCK_T, G_PAD, P_PAD, K_PAD,
    )


@triton.jit
def _route_align_kernel(
    logits_ptr, bias_ptr, ids_ptr, weights_ptr, map_ptr, sorted_ptr, expert_ids_ptr, num_post_ptr,
    T, E, per, groups, top_k, topk_groups, num_local, cap, block_m,
    stride_lt, stride_le, stride_b,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, G_PAD: tl.constexpr, P_PAD: tl.constexpr, K_PAD: tl.constexpr,
    HAS_MAP: tl.constexpr, E_PAD: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """One program: route every token (``_route_tile`` over blocks of BLOCK_T tokens, writing
    contiguous ``ids``/``weights [T, top_k]``), a block barrier (the program's global stores are
    then visible to all its threads), then the alignment of those ids (``_align_body``)."""
    for t0 in range(0, T, BLOCK_T):
        _route_tile(
            logits_ptr, bias_ptr, ids_ptr, weights_ptr, t0, T, E, per, groups, top_k, topk_groups,
            stride_lt, stride_le, stride_b, top_k, 1, top_k, 1,
            SIGMOID, HAS_BIAS, GROUPED, RENORMALIZE, BLOCK_T, G_PAD, P_PAD, K_PAD,
        )
    tl.debug_barrier()
    _align_body(ids_ptr, map_ptr, sorted_ptr, expert_ids_ptr, num_post_ptr, T * top_k, E, num_local, cap,
                block_m, HAS_MAP, E_PAD, BLOCK_A)


def _route_tiles(T: int, E: int, num_groups: int | None) -> tuple[int, int, int, int, int]:
    """(groups, per group, padded groups, padded per group, tokens per program) of the router."""
    groups, per, g_pad, p_pad = _route_layout(E, num_groups)
    return groups, per, g_pad, p_pad, max(1, min(_next_pow2(T), ROUTE_TILE // (g_pad * p_pad)))


def _route_and_align(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias,
                     block_m, expert_map, num_local):
    """:func:`route` and :func:`align_block_size` (``validate=False``) in one single-program
    launch, for the decode sizes where the tokens fit one routing tile (every argument already
    validated, T > 0): ``(topk_ids, topk_weights, (sorted_ids, expert_ids, num_post))``, the
    same values as the two separate launches. Returns None when the tokens need several routing
    programs (the separate launches then run in parallel over tokens)."""
    T, E = router_logits.shape
    groups, per, g_pad, p_pad, block_t = _route_tiles(T, E, num_groups)
    if T > block_t:
        return None
    device = router_logits.device
    ids = torch.empty((T, top_k), dtype=torch.int32, device=device)
    weights = torch.empty((T, top_k), dtype=torch.float32, device=device)
    cap = aligned_capacity(T * top_k, num_local, block_m)
    sorted_ids = torch.empty((cap,), dtype=torch.int32, device=device)
    expert_ids = torch.empty((cap // block_m,), dtype=torch.int32, device=device)
    num_post = torch.empty((1,), dtype=torch.int32, device=device)
    bias = correction_bias if correction_bias is not None else router_logits
    e_pad, block_a = _align_tiles(num_local)
    _route_align_kernel[(1,)](
        router_logits, bias, ids, weights, expert_map if expert_map is not None else ids,
        sorted_ids, expert_ids, num_post,
        T, E, per, groups, top_k, topk_groups if num_groups is not None else groups, num_local, cap, block_m,
        router_logits.stride(0), router_logits.stride(1), bias.stride(0) if correction_bias is not None else 0,
        SIGMOID=scoring == "sigmoid", HAS_BIAS=correction_bias is not None, GROUPED=num_groups is not None,
        RENORMALIZE=renormalize, BLOCK_T=block_t, G_PAD=g_pad, P_PAD=p_pad, K_PAD=_next_pow2(top_k),
        HAS_MAP=expert_map is not None, E_PAD=e_pad, BLOCK_A=block_a, num_warps=4,
    )
    return ids, weights, (sorted_ids, expert_ids, num_post)


def route_torch(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = False,
    num_groups: int | None = None,
    topk_groups: int | None = None,
    correction_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`route` in torch operations (about eight launches: softmax, sort, gather, ...), kept as
    its twin for comparison: ``(topk_ids int32 [T, k], topk_weights float32 [T, k])``.

    scores = softmax(logits) or sigmoid(logits), in float32. Selection uses
    ``scores + correction_bias`` (when given); with ``num_groups``, the experts are split into
    contiguous groups, each group is scored by the sum of its two largest selection scores, the
    ``topk_groups`` best groups are kept and the top-k is taken among their experts. The weights
    are the *uncorrected* scores of the selected experts, divided by their sum when
    ``renormalize``. Ties (in group or expert selection) go to the lower index.
    """
    _check_routing(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias)
    logits = router_logits.float()
    scores = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
    select = scores if correction_bias is None else scores + correction_bias.float()[None, :]
    if num_groups is not None:
        T, E = select.shape
        grouped = select.reshape(T, num_groups, E // num_groups)
        group_scores = torch.sort(grouped, dim=-1, descending=True).values[..., :2].sum(dim=-1)
        keep = _top_indices(group_scores, topk_groups)
        group_mask = torch.zeros((T, num_groups), dtype=torch.bool, device=select.device)
        group_mask.scatter_(1, keep, True)
        expert_mask = group_mask[:, :, None].expand(grouped.shape).reshape(T, E)
        select = select.masked_fill(~expert_mask, float("-inf"))
    ids = _top_indices(select, top_k)
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return ids.to(torch.int32), weights.to(torch.float32)


# ---------------------------------------------------------------------------------------------
# alignment


def _check_topk_ids_metadata(topk_ids) -> None:
    _require_tensor("topk_ids", topk_ids)
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids.shape={tuple(topk_ids.shape)} must be 2-D [T, top_k]")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids.dtype={_dtype_name(topk_ids.dtype)} must be int32 or int64")


def _check_topk_id_values(topk_ids, num_experts: int) -> None:
    """Every id in 0..num_experts-1 (reads the ids on the host: a device synchronization)."""
    if topk_ids.numel():
        lo, hi = torch.stack(torch.aminmax(topk_ids)).tolist()
        if lo < 0 or hi >= num_experts:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"topk_ids holds expert id {bad}, outside 0..{num_experts - 1} (num_experts={num_experts}); "
                "expert ids are global indices into the router's experts"
            )


def _check_topk_ids(topk_ids, num_experts: int) -> None:
    _check_topk_ids_metadata(topk_ids)
    _check_topk_id_values(topk_ids, num_experts)


def _check_expert_map_metadata(expert_map, num_experts: int) -> None:
    _require_tensor("expert_map", expert_map)
    if expert_map.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"expert_map.dtype={_dtype_name(expert_map.dtype)} must be int32 or int64")
    if tuple(expert_map.shape) != (num_experts,):
        raise ValueError(
            f"expert_map.shape={tuple(expert_map.shape)} must be [num_experts] = [{num_experts}] "
            "(one entry per global expert: its local index, or -1 when not local)"
        )


def _check_expert_map(expert_map, num_experts: int, num_local: int | None) -> int:
    """Validate the map; returns the number of local experts."""
    _require_tensor("expert_map", expert_map)
    if expert_map.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"expert_map.dtype={_dtype_name(expert_map.dtype)} must be int32 or int64")
    if tuple(expert_map.shape) != (num_experts,):
        raise ValueError(
            f"expert_map.shape={tuple(expert_map.shape)} must be [num_experts] = [{num_experts}] "
            "(one entry per global expert: its local index, or -1 when not local)"
        )
    local = expert_map[expert_map >= 0]
    if num_local is None:
        num_local = int(local.numel())
    if bool((expert_map < -1).any()) or (local.numel() and int(local.max()) >= num_local):
        raise ValueError(
            f"expert_map values must be -1 (not local) or a local index in 0..{num_local - 1}, got "
            f"{sorted(set(expert_map.tolist()))}; fix the map or the local expert count"
        )
    if local.numel() != torch.unique(local).numel():
        raise ValueError("expert_map maps two global experts to the same local index; each local expert once")
    return num_local


def aligned_capacity(num_assignments: int, num_local_experts: int, block_m: int) -> int:
    """Length of the padded sorted-assignment buffer: an upper bound, from shapes only, on the
    used length ``num_tokens_post_padded`` that :func:`align_block_size` computes on the device.

    ``cap = floor((n + min(E_local, n) * (block_m - 1)) / block_m) * block_m`` with ``n = T * k``.

    Proof. Let ``c_e`` be the assignments kept for local expert e and m the number of experts
    with ``c_e > 0``. The used length is ``sum_{c_e > 0} block_m * ceil(c_e / block_m)``, and
    ``block_m * ceil(c / block_m) <= c + block_m - 1``, so it is at most
    ``sum c_e + m (block_m - 1) <= n + m (block_m - 1)`` (dropped assignments only lower
    ``sum c_e``). Each non-empty expert holds at least one of the n assignments and is one of
    the E_local local experts, so ``m <= min(E_local, n)``: the used length is at most
    ``B = n + min(E_local, n) (block_m - 1)``. It is a multiple of block_m, so it is also at
    most B rounded *down* to a multiple of block_m. The bound is attained (``m - 1`` experts
    with one assignment each and one with the other ``n - m + 1``: ``m + floor((n - m) /
    block_m)`` blocks), so no smaller bound from (n, E_local, block_m) alone holds. At decode sizes this is what keeps the GEMM grids small: T = 1, k = 6,
    64 experts, block_m 16 gives 6 row blocks instead of 61 for the ``E_local`` form.
    """
    n, e, bm = int(num_assignments), int(num_local_experts), int(block_m)
    return (n + min(e, n) * (bm - 1)) // bm * bm


def align_block_size(
    topk_ids: torch.Tensor,
    block_m: int,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    *,
    num_local_experts: int | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the flattened assignments ``a = t * k + j`` by local expert into padded blocks.

    Returns ``sorted_token_ids`` int32 ``[cap]`` (assignment indices; padding = sentinel
    ``T * k``), ``expert_ids`` int32 ``[cap // block_m]`` (the local expert of each block; -1
    for blocks past the end) and ``num_tokens_post_padded`` int32 ``[1]`` (the used length, a
    multiple of block_m). ``cap = aligned_capacity(T*k, E_local, block_m)`` bounds the padded
    length from shapes only (no host read of the counts). Within an expert, assignments keep
    their flattened order, so the result is deterministic. expert_map: int ``[num_experts]``,
    global -> local index or -1 (those assignments are dropped: no block holds them).
    num_local_experts defaults to the number of mapped experts (``num_experts`` without a map;
    with a map and ``validate=False`` it must be given).

    One single-program kernel (``_align_kernel``) computes everything on the device, so nothing
    is read back to the host. validate: check the *values* of ``topk_ids`` and ``expert_map`` on
    the host first (a device-to-host read, the one synchronization of this function). With
    ``validate=False`` the caller promises valid values; the kernel still never reads or writes
    out of bounds (an id outside ``0..num_experts-1``, or a map entry outside
    ``-1..num_local_experts-1``, is dropped like a non-local expert).
    """
    _require_int("block_m", block_m, minimum=1)
    _require_int("num_experts", num_experts, minimum=1)
    if not isinstance(validate, bool):
        raise TypeError(f"validate={validate!r} must be a bool")
    _check_topk_ids_metadata(topk_ids)
    if validate:
        _check_topk_id_values(topk_ids, num_experts)
    device = topk_ids.device
    if expert_map is not None:
        _require_tensor("expert_map", expert_map)
        if expert_map.device != device:
            raise ValueError(f"expert_map is on {expert_map.device} but topk_ids on {device}; move it")
        _check_expert_map_metadata(expert_map, num_experts)
        if validate:
            num_local = _check_expert_map(expert_map, num_experts, num_local_experts)
        elif num_local_experts is None:
            raise ValueError(
                "num_local_experts is None with an expert_map and validate=False; pass the local expert "
                "count (counting the map's entries would read it on the host)"
            )
        else:
            num_local = _require_int("num_local_experts", num_local_experts, minimum=1)
    else:
        num_local = num_experts if num_local_experts is None else num_local_experts
        if num_local != num_experts:
            raise ValueError(
                f"num_local_experts={num_local} differs from num_experts={num_experts} without an expert_map; "
                "pass the expert_map that maps global to local experts"
            )
    n = topk_ids.numel()
    cap = aligned_capacity(n, num_local, block_m)
    sorted_ids = torch.empty((cap,), dtype=torch.int32, device=device)
    expert_ids = torch.empty((cap // block_m,), dtype=torch.int32, device=device)
    num_post = torch.empty((1,), dtype=torch.int32, device=device)
    flat = topk_ids.reshape(-1)
    e_pad, block_a = _align_tiles(num_local)
    _align_kernel[(1,)](
        flat, expert_map if expert_map is not None else flat, sorted_ids, expert_ids, num_post,
        n, num_experts, num_local, cap, block_m,
        HAS_MAP=expert_map is not None, E_PAD=e_pad, BLOCK_A=block_a, num_warps=4,
    )
    return sorted_ids, expert_ids, num_post


def _align_tiles(num_local: int) -> tuple[int, int]:
    """(padded local expert count, assignments per step) of the alignment's one program."""
    e_pad = max(16, _next_pow2(num_local))
    return e_pad, max(16, min(256, 8192 // e_pad))


@triton.jit
def _align_kernel(
    ids_ptr, map_ptr, sorted_ptr, expert_ids_ptr, num_post_ptr,
    n, num_experts, num_local, cap, block_m,
    HAS_MAP: tl.constexpr, E_PAD: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """One program: the whole alignment (``_align_body``)."""
    _align_body(ids_ptr, map_ptr, sorted_ptr, expert_ids_ptr, num_post_ptr, n, num_experts, num_local, cap,
                block_m, HAS_MAP, E_PAD, BLOCK_A)


@triton.jit
def _align_body(
    ids_ptr, map_ptr, sorted_ptr, expert_ids_ptr, num_post_ptr,
    n, num_experts, num_local, cap, block_m,
    HAS_MAP: tl.constexpr, E_PAD: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """Counts per local expert, padded run starts (a prefix sum), then every assignment's slot
    ``start[e] + rank within e`` (ranks in flattened order) and every padding slot (the sentinel
    ``n``) and block expert id written once each, at disjoint positions. Run by one program."""
    cols = tl.arange(0, E_PAD)
    col_ok = cols < num_local

    # pass 1: assignments per local expert
    counts = tl.zeros((E_PAD,), dtype=tl.int32)
    for a0 in range(0, n, BLOCK_A):
        offs = a0 + tl.arange(0, BLOCK_A)
        e = _local_expert(ids_ptr, map_ptr, offs, n, num_experts, num_local, HAS_MAP)
        onehot = (e[:, None] == cols[None, :]).to(tl.int32)
        counts += tl.sum(onehot, axis=0)
    padded = (counts + block_m - 1) // block_m * block_m
    padded = tl.where(col_ok, padded, 0)
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    num_post = tl.sum(padded, axis=0)
    tl.store(num_post_ptr, num_post)

    # pass 2: each assignment to start[e] + (earlier assignments of e)
    running = tl.zeros((E_PAD,), dtype=tl.int32)
    for a0 in range(0, n, BLOCK_A):
        offs = a0 + tl.arange(0, BLOCK_A)
        e = _local_expert(ids_ptr, map_ptr, offs, n, num_experts, num_local, HAS_MAP)
        onehot = (e[:, None] == cols[None, :]).to(tl.int32)
        before = tl.cumsum(onehot, axis=0) - onehot + running[None, :] + starts[None, :]
        pos = tl.sum(onehot * before, axis=1)
        tl.store(sorted_ptr + pos, offs, mask=e >= 0)
        running += tl.sum(onehot, axis=0)

    # pass 3: padding slots and the expert of each block; position p lies in the run of the
    # expert counted by #{e : ends[e] <= p} (empty experts have ends == starts and are skipped)
    for p0 in range(0, cap, BLOCK_A):
        p = p0 + tl.arange(0, BLOCK_A)
        in_cap = p < cap
        owner = tl.sum(((ends[None, :] <= p[:, None]) & col_ok[None, :]).to(tl.int32), axis=1)
        sel = owner[:, None] == cols[None, :]
        run_start = tl.sum(tl.where(sel, starts[None, :], 0), axis=1)
        run_count = tl.sum(tl.where(sel, counts[None, :], 0), axis=1)
        pad = (p >= num_post) | (p - run_start >= run_count)
        tl.store(sorted_ptr + p, tl.zeros_like(p) + n, mask=in_cap & pad)
        is_first = (p % block_m) == 0
        block_expert = tl.where(p < num_post, owner, -1)
        tl.store(expert_ids_ptr + p // block_m, block_expert, mask=in_cap & is_first)


@triton.jit
def _local_expert(ids_ptr, map_ptr, offs, n, num_experts, num_local, HAS_MAP: tl.constexpr):
    """Local expert of assignments ``offs`` (-1: past the end, not local, or out of range)."""
    mask = offs < n
    e = tl.load(ids_ptr + offs, mask=mask, other=-1).to(tl.int32)
    e = tl.where((e >= 0) & (e < num_experts), e, -1)
    if HAS_MAP:
        e = tl.load(map_ptr + e, mask=e >= 0, other=-1).to(tl.int32)
    return tl.where((e >= 0) & (e < num_local), e, -1)


# ---------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _activate(gate, up, limit, ACT: tl.constexpr, HAS_LIMIT: tl.constexpr, ALPHA: tl.constexpr):
    """float32 gated activation: silu(g) * u, or g * sigmoid(ALPHA g) * (u + 1) (swiglu)."""
    if HAS_LIMIT:
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
    if ACT == 0:
        out = gate / (1.0 + tl.exp(-gate)) * up
    else:
        out = gate / (1.0 + tl.exp(-ALPHA * gate)) * (up + 1.0)
    return out


@triton.jit
def _e2m1_value(q):
    """e2m1 code -> float32: sign bit 3, exponent bits 1-2 (bias 1), mantissa bit 0;
    |v| = m/2 for e == 0, (2 + m) * 2**e / 4 otherwise (0, .5, 1, 1.5, 2, 3, 4, 6)."""
    e = (q >> 1) & 3
    m = q & 1
    quarters = tl.where(e == 0, 2 * m, (2 + m) << e)
    value = quarters.to(tl.float32) * 0.25
    return tl.where((q & 8) != 0, -value, value)


@triton.jit
def _e8m0_scale(s):
    """E8M0 code -> float32 2**(s - 127) from its bits; s = 0 is the subnormal 2**-127, 255 NaN."""
    s = s.to(tl.int32)
    bits = tl.where(s == 0, 0x00400000, s << 23)
    bits = tl.where(s == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _zero_points(z_ptr, z_rows, offs_n, mask, stride_zk, stride_zn,
                 Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr):
    """Zero points of groups ``z_rows`` (any shape broadcasting with offs_n) for columns offs_n."""
    z_col = offs_n // Z_PER_N
    z_shift = ((Z_FIELD_CODE >> (4 * (offs_n % Z_PER_N))) & 0xF) * Z_BITS
    z_words = tl.load(z_ptr + (z_rows // Z_PER_G) * stride_zk + z_col * stride_zn, mask=mask, other=0).to(tl.int32)
    return (z_words >> z_shift) & ((1 << Z_BITS) - 1)


@triton.jit
def _weight_tile(
    w_ptr, s_ptr, z_ptr, k_start, n_start, mask_n, n_shift, n_limit, K,
    stride_wk, stride_wn, stride_sk, stride_sn, stride_zk, stride_zn,
    group_k,
    KIND: tl.constexpr,
    QW_PER_K: tl.constexpr, QW_PER_N: tl.constexpr, QW_FIELD_CODE: tl.constexpr, QW_BITS: tl.constexpr,
    Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
    UNPACK: tl.constexpr, SCALE_MODE: tl.constexpr, G_TILE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The ``[BLOCK_K, BLOCK_N]`` weight tile of one expert at rows ``k_start + arange(BLOCK_K)``
    and (stored) columns ``offs_n = n_start + arange(BLOCK_N)`` (logical columns ``offs_n - n_shift``;
    mask_n marks those below n_limit):
    as stored (dense: the activation dtype; fp8_block: raw codes, scales applied by the caller) or
    dequantized to float32 (int4, mxfp4; the caller casts it to the activation dtype for the dot).

    UNPACK (packed schemes): 0 — gather the word of every element (any layout, any alignment);
    1 — codes packed along K: load the ``[BLOCK_K / PER_K, BLOCK_N]`` words once and expand them
    to ``[BLOCK_K, BLOCK_N]`` by a shift per field and a reshape; 2 — packed along N likewise
    (the tile's first column is word-aligned). SCALE_MODE: 0 — scale and zero point per k row
    (any BLOCK_K vs G); 1 — the tile lies in one group (G % BLOCK_K == 0): one ``[BLOCK_N]``
    scale row; 2 — G_TILE = G divides BLOCK_K: ``[BLOCK_K / G, BLOCK_N]`` scales broadcast over
    a ``[BLOCK_K / G, G, BLOCK_N]`` view of the codes.
    """
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    offs_n = n_start + tl.arange(0, BLOCK_N)
    if KIND == 0 or KIND == 2:
        tile = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                       mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    else:
        if UNPACK == 1:
            w_rows = k_start // QW_PER_K + tl.arange(0, BLOCK_K // QW_PER_K)
            fields = tl.arange(0, QW_PER_K)
            shifts = ((QW_FIELD_CODE >> (4 * fields)) & 0xF) * QW_BITS
            words = tl.load(w_ptr + w_rows[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                            mask=(w_rows * QW_PER_K < K)[:, None] & mask_n[None, :], other=0).to(tl.int32)
            q = (words[:, None, :] >> shifts[None, :, None]) & ((1 << QW_BITS) - 1)
            q = tl.reshape(q, (BLOCK_K, BLOCK_N))
        elif UNPACK == 2:
            w_cols = n_start // QW_PER_N + tl.arange(0, BLOCK_N // QW_PER_N)
            fields = tl.arange(0, QW_PER_N)
            shifts = ((QW_FIELD_CODE >> (4 * fields)) & 0xF) * QW_BITS
            words = tl.load(w_ptr + offs_k[:, None] * stride_wk + w_cols[None, :] * stride_wn,
                            mask=mask_k[:, None] & (w_cols * QW_PER_N - n_shift < n_limit)[None, :],
                            other=0).to(tl.int32)
            q = (words[:, :, None] >> shifts[None, None, :]) & ((1 << QW_BITS) - 1)
            q = tl.reshape(q, (BLOCK_K, BLOCK_N))
        else:
            qw_row = offs_k // QW_PER_K
            qw_col = offs_n // QW_PER_N
            qw_offset = (offs_k % QW_PER_K)[:, None] + (offs_n % QW_PER_N)[None, :]
            qw_shift = ((QW_FIELD_CODE >> (4 * qw_offset)) & 0xF) * QW_BITS
            words = tl.load(w_ptr + qw_row[:, None] * stride_wk + qw_col[None, :] * stride_wn,
                            mask=mask_k[:, None] & mask_n[None, :], other=0).to(tl.int32)
            q = (words >> qw_shift) & ((1 << QW_BITS) - 1)

        if SCALE_MODE == 1:
            g = k_start // group_k
            if KIND == 1:
                s = tl.load(s_ptr + g * stride_sk + offs_n * stride_sn, mask=mask_n, other=0.0).to(tl.float32)
                if HAS_ZEROS:
                    z = _zero_points(z_ptr, g, offs_n, mask_n, stride_zk, stride_zn,
                                     Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
                    tile = (q - z[None, :]).to(tl.float32) * s[None, :]
                else:
                    tile = (q - SYM_ZERO).to(tl.float32) * s[None, :]
            else:
                s = tl.load(s_ptr + g * stride_sk + offs_n * stride_sn, mask=mask_n, other=127)
                tile = _e2m1_value(q) * _e8m0_scale(s)[None, :]
        elif SCALE_MODE == 2:
            groups = k_start // G_TILE + tl.arange(0, BLOCK_K // G_TILE)
            g_mask = (groups * G_TILE < K)[:, None] & mask_n[None, :]
            q3 = tl.reshape(q, (BLOCK_K // G_TILE, G_TILE, BLOCK_N))
            if KIND == 1:
                s = tl.load(s_ptr + groups[:, None] * stride_sk + offs_n[None, :] * stride_sn,
                            mask=g_mask, other=0.0).to(tl.float32)
                if HAS_ZEROS:
                    z = _zero_points(z_ptr, groups[:, None], offs_n[None, :], g_mask, stride_zk, stride_zn,
                                     Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
                    tile3 = (q3 - z[:, None, :]).to(tl.float32) * s[:, None, :]
                else:
                    tile3 = (q3 - SYM_ZERO).to(tl.float32) * s[:, None, :]
            else:
                s = tl.load(s_ptr + groups[:, None] * stride_sk + offs_n[None, :] * stride_sn,
                            mask=g_mask, other=127)
                tile3 = _e2m1_value(q3) * _e8m0_scale(s)[:, None, :]
            tile = tl.reshape(tile3, (BLOCK_K, BLOCK_N))
        else:
            group = offs_k // group_k
            mask = mask_k[:, None] & mask_n[None, :]
            if KIND == 1:
                s = tl.load(s_ptr + group[:, None] * stride_sk + offs_n[None, :] * stride_sn, mask=mask, other=0.0)
                if HAS_ZEROS:
                    z = _zero_points(z_ptr, group[:, None], offs_n[None, :], mask, stride_zk, stride_zn,
                                     Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
                else:
                    z = SYM_ZERO
                tile = (q - z).to(tl.float32) * s.to(tl.float32)
            else:
                s = tl.load(s_ptr + group[:, None] * stride_sk + offs_n[None, :] * stride_sn, mask=mask, other=127)
                tile = _e2m1_value(q) * _e8m0_scale(s)
    return tile


@triton.jit
def _row_scales(s_ptr, z_ptr, g, offs_n, mask_n, stride_sk, stride_sn, stride_zk, stride_zn,
                KIND: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
                Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr):
    """Group g's float32 scale row and zero-point row over columns offs_n (int4), or its decoded
    E8M0 scale row and a dummy zero row (mxfp4)."""
    if KIND == 1:
        s = tl.load(s_ptr + g * stride_sk + offs_n * stride_sn, mask=mask_n, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = _zero_points(z_ptr, g, offs_n, mask_n, stride_zk, stride_zn, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
        else:
            z = tl.zeros_like(offs_n) + SYM_ZERO
    else:
        s = _e8m0_scale(tl.load(s_ptr + g * stride_sk + offs_n * stride_sn, mask=mask_n, other=127))
        z = tl.zeros_like(offs_n)
    return s, z


@triton.jit
def _part_tile(words, shift, s, z, KIND: tl.constexpr, QW_BITS: tl.constexpr):
    """The codes at bit ``shift`` of every word, dequantized with per-column rows s, z (float32)."""
    q = (words >> shift) & ((1 << QW_BITS) - 1)
    if KIND == 1:
        tile = (q - z[None, :]).to(tl.float32) * s[None, :]
    else:
        tile = _e2m1_value(q) * s[None, :]
    return tile


@triton.jit
def _moe_gemm_kernel(
    a_ptr, a_scale_ptr, w_ptr, s_ptr, z_ptr, c_ptr, topk_w_ptr,
    sorted_ptr, expert_ids_ptr, num_post_ptr,
    num_valid, N, K, up_offset, a_row_div, group_k, group_n, limit,
    stride_am, stride_ak, stride_asm, stride_asg,
    stride_we, stride_wk, stride_wn,
    stride_se, stride_sk, stride_sn,
    stride_ze, stride_zk, stride_zn,
    stride_cs, stride_cm, stride_cn,
    KIND: tl.constexpr,
    QW_PER_K: tl.constexpr, QW_PER_N: tl.constexpr, QW_FIELD_CODE: tl.constexpr, QW_BITS: tl.constexpr,
    Z_PER_G: tl.constexpr, Z_PER_N: tl.constexpr, Z_FIELD_CODE: tl.constexpr, Z_BITS: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
    FUSE_ACT: tl.constexpr, ACT: tl.constexpr, HAS_LIMIT: tl.constexpr, ALPHA: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB_K: tl.constexpr,
    UNPACK: tl.constexpr = 0, SCALE_MODE: tl.constexpr = 0, G_TILE: tl.constexpr = 1,
    SPLIT_K: tl.constexpr = 1, PART_DOT: tl.constexpr = False,
):
    """One (block of sorted assignments, N tile, K split): ``c[split, a, n] = sum_k a_rows[k] * W_e[k, n]``
    over the split's run of K tiles.

    Rows: ``a = sorted_ids[block]``; the A row read is ``a // a_row_div`` (tokens for GEMM 1,
    assignments for GEMM 2); rows holding the sentinel (``a >= num_valid``) are masked on load and
    store. Blocks past ``num_post`` or of expert -1 return at once, so experts without blocks are
    never read. FUSE_ACT: also accumulate columns ``up_offset + n`` and store the activation
    (SPLIT_K must be 1 then). With SPLIT_K > 1 each split stores its own float32 partial at
    ``c + split * stride_cs``; the caller sums the splits in a fixed order.

    PART_DOT (packed along K, one scale group per K tile, BLOCK_K / PER_K >= 16): the K tile's
    words are loaded once and never expanded; field p of every word holds rows
    ``k0 + PER_K * r + p``, so the tile's product is PER_K dots of those A columns with the
    codes of field p (no reshape of the codes).
    """
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_k = pid % SPLIT_K
    pid_mn = pid // SPLIT_K
    pid_m = pid_mn // num_pid_n
    pid_n = pid_mn % num_pid_n
    # the first loads, independent of each other (one memory latency): a block past num_post
    # (expert id -1 there too) or of no local expert exits before anything else is read
    num_post = tl.load(num_post_ptr)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if (pid_m * BLOCK_M >= num_post) | (expert < 0):
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_ptr + offs_m)
    mask_m = rows < num_valid
    a_rows = (rows // a_row_div).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N

    w_e = w_ptr + expert * stride_we
    s_e = s_ptr + expert * stride_se
    z_e = z_ptr + expert * stride_ze

    k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_begin = pid_k * tiles_per_split * BLOCK_K
    k_end = tl.minimum((pid_k + 1) * tiles_per_split, k_tiles) * BLOCK_K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PART_DOT:
        for k0 in range(k_begin, k_end, BLOCK_K):
            w_rows = k0 // QW_PER_K + tl.arange(0, BLOCK_K // QW_PER_K)
            w_mask = (w_rows * QW_PER_K < K)[:, None] & mask_n[None, :]
            words = tl.load(w_e + w_rows[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                            mask=w_mask, other=0).to(tl.int32)
            g = k0 // group_k
            s_row, z_row = _row_scales(s_e, z_e, g, offs_n, mask_n, stride_sk, stride_sn, stride_zk, stride_zn,
                                       KIND, HAS_ZEROS, SYM_ZERO, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
            if FUSE_ACT:
                words_up = tl.load(w_e + w_rows[:, None] * stride_wk + (offs_n + up_offset)[None, :] * stride_wn,
                                   mask=w_mask, other=0).to(tl.int32)
                s_up, z_up = _row_scales(s_e, z_e, g, offs_n + up_offset, mask_n, stride_sk, stride_sn,
                                         stride_zk, stride_zn, KIND, HAS_ZEROS, SYM_ZERO,
                                         Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS)
            for p in tl.static_range(QW_PER_K):
                shift = ((QW_FIELD_CODE >> (4 * p)) & 0xF) * QW_BITS
                offs_kp = w_rows * QW_PER_K + p
                a = tl.load(a_ptr + a_rows[:, None] * stride_am + offs_kp[None, :] * stride_ak,
                            mask=mask_m[:, None] & (offs_kp < K)[None, :], other=0.0)
                w = _part_tile(words, shift, s_row, z_row, KIND, QW_BITS).to(a.dtype)
                acc = tl.dot(a, w, acc=acc, out_dtype=tl.float32)
                if FUSE_ACT:
                    w_up = _part_tile(words_up, shift, s_up, z_up, KIND, QW_BITS).to(a.dtype)
                    acc_up = tl.dot(a, w_up, acc=acc_up, out_dtype=tl.float32)
    else:
        for k0 in range(k_begin, k_end, BLOCK_K):
            for sub in tl.static_range(BLOCK_K // SUB_K):
                k_start = k0 + sub * SUB_K
                offs_k = k_start + tl.arange(0, SUB_K)
                mask_k = offs_k < K
                a = tl.load(
                    a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0,
                )
                w = _weight_tile(
                    w_e, s_e, z_e, k_start, pid_n * BLOCK_N, mask_n, 0, N, K,
                    stride_wk, stride_wn, stride_sk, stride_sn, stride_zk, stride_zn, group_k,
                    KIND, QW_PER_K, QW_PER_N, QW_FIELD_CODE, QW_BITS, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS,
                    HAS_ZEROS, SYM_ZERO, UNPACK, SCALE_MODE, G_TILE, SUB_K, BLOCK_N,
                )
                if KIND == 1 or KIND == 3:
                    w = w.to(a.dtype)
                if FUSE_ACT:
                    w_up = _weight_tile(
                        w_e, s_e, z_e, k_start, pid_n * BLOCK_N + up_offset, mask_n, up_offset, N, K,
                        stride_wk, stride_wn, stride_sk, stride_sn, stride_zk, stride_zn, group_k,
                        KIND, QW_PER_K, QW_PER_N, QW_FIELD_CODE, QW_BITS, Z_PER_G, Z_PER_N, Z_FIELD_CODE, Z_BITS,
                        HAS_ZEROS, SYM_ZERO, UNPACK, SCALE_MODE, G_TILE, SUB_K, BLOCK_N,
                    )
                    if KIND == 1 or KIND == 3:
                        w_up = w_up.to(a.dtype)
                if KIND == 2:
                    # one K group per sub-tile (SUB_K divides the group): scale the fp8 partial product.
                    # A sub-tile may start at or past K (BLOCK_K > K): its group does not exist, so its
                    # scales are not loaded (0; its masked product is 0 too, and 0 x memory past the
                    # scales could be NaN)
                    g = k_start // group_k
                    m_in_k = mask_m & ((a_rows * 0 + k_start) < K)  # the group exists, as a row mask
                    n_in_k = mask_n & ((offs_n * 0 + k_start) < K)
                    a_s = tl.load(a_scale_ptr + a_rows * stride_asm + g * stride_asg, mask=m_in_k, other=0.0)
                    w_s = tl.load(s_e + g * stride_sk + (offs_n // group_n) * stride_sn, mask=n_in_k, other=0.0)
                    acc += tl.dot(a, w, out_dtype=tl.float32) * (a_s[:, None] * w_s[None, :])
                    if FUSE_ACT:
                        w_s_up = tl.load(
                            s_e + g * stride_sk + ((offs_n + up_offset) // group_n) * stride_sn, mask=n_in_k,
                            other=0.0,
                        )
                        acc_up += tl.dot(a, w_up, out_dtype=tl.float32) * (a_s[:, None] * w_s_up[None, :])
                else:
                    acc = tl.dot(a, w, acc=acc, out_dtype=tl.float32)
                    if FUSE_ACT:
                        acc_up = tl.dot(a, w_up, acc=acc_up, out_dtype=tl.float32)

    if MUL_WEIGHT:
        r = tl.load(topk_w_ptr + rows, mask=mask_m, other=0.0).to(tl.float32)
        acc = tl.where(r[:, None] == 0.0, 0.0, acc * r[:, None])
        if FUSE_ACT:
            acc_up = tl.where(r[:, None] == 0.0, 0.0, acc_up * r[:, None])
    if FUSE_ACT:
        acc = _activate(acc, acc_up, limit, ACT, HAS_LIMIT, ALPHA)
    c_ptrs = c_ptr + pid_k * stride_cs + rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _sum_slots_kernel(
    src_ptr, out_ptr, ids_ptr, map_ptr, H, top_k, splits, num_experts, num_local,
    stride_ss, stride_sa, stride_sh, stride_ot, stride_oh,
    HAS_MAP: tl.constexpr, BLOCK: tl.constexpr, K_PAD: tl.constexpr,
):
    """out[t, h] = sum over slots j (outer) and splits s (inner), in that fixed order, of
    src[s, t * top_k + j, h] (float32), cast to out's dtype. Slots whose expert is not local (or
    out of range) have no block, so their rows of src were never written: they are skipped."""
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    slot = tl.arange(0, K_PAD)
    local = _local_expert(ids_ptr, map_ptr, t * top_k + slot, (t + 1) * top_k, num_experts, num_local, HAS_MAP)
    for j in range(0, top_k):
        a = t * top_k + j
        kept = tl.sum(tl.where((slot == j) & (local >= 0), 1, 0), axis=0)
        row_mask = mask & ((offs * 0 + kept) > 0)
        for s in range(0, splits):
            acc += tl.load(src_ptr + s * stride_ss + a * stride_sa + offs * stride_sh, mask=row_mask, other=0.0)
    tl.store(out_ptr + t * stride_ot + offs * stride_oh, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation_kernel(
    src_ptr, out_ptr, I, limit,
    stride_sm, stride_sn, stride_om, stride_on,
    ACT: tl.constexpr, HAS_LIMIT: tl.constexpr, ALPHA: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[r, n] = act(src[r, n], src[r, I + n]) for one row and one BLOCK of columns."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(src_ptr + row * stride_sm + offs * stride_sn, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(src_ptr + row * stride_sm + (offs + I) * stride_sn, mask=mask, other=0.0).to(tl.float32)
    out = _activate(gate, up, limit, ACT, HAS_LIMIT, ALPHA)
    tl.store(out_ptr + row * stride_om + offs * stride_on, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _group_quant_fp8_kernel(
    x_ptr, q_ptr, s_ptr, K,
    stride_xm, stride_xk, stride_qm, stride_qk, stride_sm, stride_sg,
    fp8_max, floor,
    GROUP: tl.constexpr,
):
    """Dynamic 1 x GROUP quantization of one (row, group): scale = max(amax, floor) / fp8_max,
    codes = clamp(x / scale, -fp8_max, fp8_max) in the fp8 dtype of q."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    offs = g * GROUP + tl.arange(0, GROUP)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs * stride_xk, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=0)
    scale = tl.maximum(amax, floor) / fp8_max
    q = tl.minimum(tl.maximum(x / scale, -fp8_max), fp8_max)
    tl.store(q_ptr + row * stride_qm + offs * stride_qk, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row * stride_sm + g * stride_sg, scale)


def quantize_activations_fp8(x: torch.Tensor, group: int, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group fp8 quantization of ``x [R, K]``: codes ``[R, K]`` (fp8_dtype) and float32
    scales ``[R, ceil(K / group)]`` (see ``_group_quant_fp8_kernel``)."""
    R, K = x.shape
    codes = torch.empty((R, K), dtype=fp8_dtype, device=x.device)
    scales = torch.empty((R, _cdiv(K, group)), dtype=torch.float32, device=x.device)
    if R:
        _group_quant_fp8_kernel[(R, _cdiv(K, group))](
            x, codes, scales, K, x.stride(0), x.stride(1), codes.stride(0), codes.stride(1),
            scales.stride(0), scales.stride(1), float(torch.finfo(fp8_dtype).max), ACT_QUANT_FLOOR, GROUP=group,
        )
    return codes, scales


# ---------------------------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class _Gemm:
    """Validated launch facts of one expert GEMM."""

    weights: ExpertWeights
    scheme: ExpertScheme
    E: int
    K: int
    N: int
    group_k: int  # K group of the scales (K for dense)
    group_n: int  # fp8 weight block along N (1 otherwise)
    packing: WeightLayout | None


def _check_pow2(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value & (value - 1):
        raise ValueError(
            f"{name}={value!r} must be a power of two >= {minimum} (allowed: {minimum}, {2 * minimum}, ...)"
        )


def _validate_config(config) -> None:
    if not isinstance(config, MoEConfig):
        raise TypeError(
            f"config must be a MoEConfig, got {type(config).__name__}; "
            "build one with MoEConfig(block_m=..., block_n=..., block_k=...)"
        )
    for name in ("block_m", "block_n", "block_k"):
        _check_pow2(f"config.{name}", getattr(config, name), MIN_DOT_BLOCK)
    if not isinstance(config.fuse_activation, bool):
        raise TypeError(f"config.fuse_activation={config.fuse_activation!r} must be a bool")
    if not isinstance(config.num_stages, int) or config.num_stages < 1:
        raise ValueError(f"config.num_stages={config.num_stages!r} must be an integer >= 1")
    _check_pow2("config.num_warps", config.num_warps, 1)
    if isinstance(config.split_k, bool) or not isinstance(config.split_k, int) or config.split_k < 1:
        raise ValueError(f"config.split_k={config.split_k!r} must be an integer >= 1 (1: no split of GEMM 2's K)")


def _check_weights(name: str, ew, E: int | None, K: int, N: int | None, act_dtype, device) -> _Gemm:
    """Validate one GEMM's stacked weights for logical shape [E, K, N] (N None: take it from the
    weights). E None: take the expert count from the weights."""
    if not isinstance(ew, ExpertWeights):
        raise TypeError(f"{name} must be an ExpertWeights, got {type(ew).__name__}; wrap the tensors in ExpertWeights(...)")
    if ew.scheme not in SCHEMES:
        raise ValueError(f"{name}.scheme={ew.scheme!r} is not known (allowed: {_names(SCHEMES)})")
    scheme = SCHEMES[ew.scheme]
    _require_tensor(f"{name}.weight", ew.weight)
    for part in ("scales", "zeros"):
        if getattr(ew, part) is not None:
            _require_tensor(f"{name}.{part}", getattr(ew, part))
            if getattr(ew, part).device != device:
                raise ValueError(f"{name}.{part} is on {getattr(ew, part).device} but x on {device}; move it")
    if ew.weight.device != device:
        raise ValueError(f"{name}.weight is on {ew.weight.device} but x on {device}; move it")
    w = ew.weight
    if w.dim() != 3:
        raise ValueError(f"{name}.weight.shape={tuple(w.shape)} must be 3-D [E, ...] (one matrix per expert)")
    if E is not None and w.shape[0] != E:
        raise ValueError(
            f"{name}.weight has {w.shape[0]} experts but {E} were expected (the other GEMM's weights / the "
            "expert map's local experts); stack the same experts for w13 and w2"
        )
    E = w.shape[0]
    packing = None
    group_n = 1
    if scheme.kind in (_KIND_DENSE, _KIND_FP8_BLOCK):
        allowed = ACTIVATION_DTYPES if scheme.kind == _KIND_DENSE else FP8_DTYPES
        if w.dtype not in allowed:
            raise TypeError(
                f"{name}.weight.dtype={_dtype_name(w.dtype)} does not fit scheme={ew.scheme!r} "
                f"(allowed: {_names(_dtype_name(d) for d in allowed)})"
            )
        if scheme.kind == _KIND_DENSE and w.dtype != act_dtype:
            raise TypeError(
                f"{name}.weight.dtype={_dtype_name(w.dtype)} must equal x.dtype={_dtype_name(act_dtype)} "
                "for dense experts; cast the weights"
            )
        if w.shape[1] != K or (N is not None and w.shape[2] != N):
            raise ValueError(
                f"{name}.weight.shape={tuple(w.shape)} must be [E, K, N] = [{E}, {K}, {N if N is not None else 'N'}]; "
                "a [E, N, K] tensor can be passed as .transpose(1, 2)"
            )
        N = w.shape[2]
        group_k = K
        if scheme.kind == _KIND_FP8_BLOCK:
            block = tuple(ew.block) if isinstance(ew.block, (tuple, list)) else ew.block
            if not (isinstance(block, tuple) and len(block) == 2):
                raise ValueError(f"{name}.block={ew.block!r} must be a pair (bk, bn)")
            _check_pow2(f"{name}.block[0]", block[0], MIN_DOT_BLOCK)
            _check_pow2(f"{name}.block[1]", block[1], 1)
            group_k, group_n = block
            s = ew.scales
            if s is None:
                raise ValueError(f"{name}.scales is None; scheme 'fp8_block' needs float32 scales [E, K/bk, N/bn]")
            expected = (E, _cdiv(K, group_k), _cdiv(N, group_n))
            if s.dtype != torch.float32 or tuple(s.shape) != expected:
                raise ValueError(
                    f"{name}.scales is {_dtype_name(s.dtype)} {tuple(s.shape)}; scheme 'fp8_block' needs float32 "
                    f"{list(expected)} (one per {group_k} x {group_n} weight block)"
                )
        if ew.zeros is not None:
            raise ValueError(f"{name}.zeros must be None for scheme={ew.scheme!r} (no zero points)")
    else:
        if scheme.kind == _KIND_INT4:
            if ew.layout not in W4A16_LAYOUTS:
                raise ValueError(
                    f"{name}.layout={ew.layout!r} is not a W4A16 layout (allowed: {_names(W4A16_LAYOUTS)})"
                )
            packing = W4A16_LAYOUTS[ew.layout]
            gs = ew.group_size
            if isinstance(gs, bool) or not isinstance(gs, int):
                raise TypeError(f"{name}.group_size={gs!r} must be an int (a divisor of K={K}, or -1)")
            group_k = K if gs == -1 else gs
            if group_k < 1 or K % group_k:
                raise ValueError(f"{name}.group_size={gs} must divide K={K} (or be -1 for one group)")
        else:
            packing = W4A16_LAYOUTS[MXFP4_LAYOUT]
            group_k = scheme.scale_group
            if K % group_k:
                raise ValueError(f"K={K} must be a multiple of {group_k} for {name} (MX blocks of {group_k} along K)")
            if ew.zeros is not None:
                raise ValueError(f"{name}.zeros must be None for scheme='mxfp4' (E8M0 scales only)")
        qpack = packing.qweight
        if w.dtype != _container_dtype(qpack):
            raise TypeError(
                f"{name}.weight.dtype={_dtype_name(w.dtype)} does not fit the packing "
                f"(allowed: {qpack.container}); pack the codes as the layout says"
            )
        if K % _per_axis(qpack, 0):
            raise ValueError(f"K={K} must be a multiple of {_per_axis(qpack, 0)} for {name}'s packing; pad K")
        s = ew.scales
        if s is None:
            raise ValueError(f"{name}.scales is None; scheme={ew.scheme!r} needs scales [E, K/G, N]")
        if s.dim() != 3 or s.shape[0] != E or s.shape[1] != K // group_k:
            raise ValueError(
                f"{name}.scales.shape={tuple(s.shape)} must be [E, K/G, N] = [{E}, {K // group_k}, N]"
            )
        if N is not None and s.shape[2] != N:
            raise ValueError(f"{name}.scales.shape={tuple(s.shape)} must have N={N} columns")
        N = s.shape[2]
        allowed_s = (act_dtype, torch.float32) if scheme.kind == _KIND_INT4 else (torch.uint8,)
        if s.dtype not in allowed_s:
            raise TypeError(
                f"{name}.scales.dtype={_dtype_name(s.dtype)} is not allowed for scheme={ew.scheme!r} "
                f"(allowed: {_names(_dtype_name(d) for d in allowed_s)})"
            )
        if N % _per_axis(qpack, 1):
            raise ValueError(f"N={N} must be a multiple of {_per_axis(qpack, 1)} for {name}'s packing; pad N")
        expected_q = (E, K // _per_axis(qpack, 0), N // _per_axis(qpack, 1))
        if tuple(w.shape) != expected_q:
            raise ValueError(f"{name}.weight.shape={tuple(w.shape)} does not match the packing (expected {list(expected_q)})")
        if ew.zeros is not None:
            zpack = packing.zeros
            z = ew.zeros
            if z.dtype != _container_dtype(zpack):
                raise TypeError(f"{name}.zeros.dtype={_dtype_name(z.dtype)} must be {zpack.container} for this layout")
            expected_z = (E, K // group_k // _per_axis(zpack, 0), N // _per_axis(zpack, 1))
            if N % _per_axis(zpack, 1) or tuple(z.shape) != expected_z:
                raise ValueError(f"{name}.zeros.shape={tuple(z.shape)} does not match the layout (expected {list(expected_z)})")
    return _Gemm(ew, scheme, E, K, N, group_k, group_n, packing)


def _check_activation(activation, swiglu_limit) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not known (allowed: {_names(ACTIVATIONS)})")
    if swiglu_limit is not None:
        if activation != "swiglu":
            raise ValueError(f"swiglu_limit={swiglu_limit!r} applies to activation='swiglu' only; pass None")
        if isinstance(swiglu_limit, bool) or not isinstance(swiglu_limit, (int, float)) or not swiglu_limit > 0:
            raise ValueError(f"swiglu_limit={swiglu_limit!r} must be a positive number (e.g. 7.0) or None")


def _validate_experts(x, topk_ids, topk_weights, w13, w2, activation, swiglu_limit, apply_on_input,
                      expert_map, num_experts, out_dtype, config, *, check_ids=True, check_map=True):
    _require_tensor("x", x)
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(
            f"x.dtype={_dtype_name(x.dtype)} is not an activation dtype (allowed: float16, bfloat16); cast x"
        )
    if x.dim() != 2:
        raise ValueError(f"x.shape={tuple(x.shape)} must be 2-D [T, H]")
    T, H = x.shape
    _require_tensor("topk_weights", topk_weights)
    _require_tensor("topk_ids", topk_ids)
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T:
        raise ValueError(f"topk_ids.shape={tuple(topk_ids.shape)} must be [T, top_k] with T={T}")
    top_k = topk_ids.shape[1]
    if tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(f"topk_weights.shape={tuple(topk_weights.shape)} must equal topk_ids.shape={tuple(topk_ids.shape)}")
    if topk_weights.dtype != torch.float32:
        raise TypeError(f"topk_weights.dtype={_dtype_name(topk_weights.dtype)} must be float32")
    for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x on {x.device}; move it")
    _check_activation(activation, swiglu_limit)
    if not isinstance(apply_on_input, bool):
        raise TypeError(f"apply_router_weight_on_input={apply_on_input!r} must be a bool")
    if apply_on_input and top_k != 1:
        raise ValueError(
            f"apply_router_weight_on_input=True needs top_k == 1 (got top_k={top_k}); the weight of one "
            "expert cannot scale an input shared by several"
        )
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype!r} is not supported (allowed: float16, bfloat16, float32)")

    g13 = _check_weights("w13", w13, None, H, None, x.dtype, x.device)
    if g13.N % 2:
        raise ValueError(f"w13 has N={g13.N} columns; it must be 2I (gate [:I], up [I:]), an even number")
    I = g13.N // 2
    g2 = _check_weights("w2", w2, g13.E, I, H, x.dtype, x.device)
    if g13.scheme is not g2.scheme:
        raise ValueError(f"w13.scheme={w13.scheme!r} and w2.scheme={w2.scheme!r} must be the same scheme")
    if g13.scheme.kind == _KIND_FP8_BLOCK:
        if w13.weight.dtype != w2.weight.dtype:
            raise TypeError("w13 and w2 must hold the same fp8 dtype")
    E_local = g13.E

    if expert_map is not None:
        _require_tensor("expert_map", expert_map)
    if num_experts is None:
        num_experts = E_local if expert_map is None else expert_map.shape[0]
    _require_int("num_experts", num_experts, minimum=1)
    if top_k > num_experts:
        raise ValueError(f"top_k={top_k} is larger than the number of experts {num_experts}; lower top_k")
    if expert_map is not None:
        if expert_map.device != x.device:
            raise ValueError(f"expert_map is on {expert_map.device} but x on {x.device}; move it")
        _check_expert_map_metadata(expert_map, num_experts)
        if check_map:
            _check_expert_map(expert_map, num_experts, E_local)
    elif num_experts != E_local:
        raise ValueError(
            f"the weights hold {E_local} experts but the router has {num_experts}; without an expert_map "
            "they must be equal (pass expert_map for expert parallelism)"
        )
    _check_topk_ids_metadata(topk_ids)
    if check_ids:
        _check_topk_id_values(topk_ids, num_experts)

    if config is None:
        config = default_config(T, top_k, H, I, E_local)
    _validate_config(config)
    if g13.scheme.kind == _KIND_FP8_BLOCK:
        bk = g13.group_k
        if min(config.block_k, bk) < MIN_FP8_DOT_K:
            raise ValueError(
                f"config.block_k={config.block_k} with fp8 blocks of bk={bk}: the fp8 dot runs over "
                f"min(block_k, bk) = {min(config.block_k, bk)} columns, it needs >= {MIN_FP8_DOT_K} "
                f"(8-bit tensor-core MMA); use block_k >= {MIN_FP8_DOT_K} and bk >= {MIN_FP8_DOT_K}"
            )
        if g2.group_k != bk:
            raise ValueError(f"w13.block[0]={bk} and w2.block[0]={g2.group_k} must match (one activation group size)")
    return T, H, I, top_k, E_local, g13, g2, config, out_dtype or x.dtype


def check_fused_moe_arguments(
    x, router_logits, w13, w2, *, top_k, scoring="softmax", renormalize=False, num_groups=None,
    topk_groups=None, correction_bias=None, activation="silu", swiglu_limit=None,
    apply_router_weight_on_input=False, expert_map=None, out_dtype=None, config=None,
) -> None:
    """Raise the error :func:`fused_moe` would raise for these arguments, from metadata only
    (shapes, dtypes, devices; the values of ids and maps are not read): usable on fake tensors."""
    _check_routing(router_logits, top_k, scoring, renormalize, num_groups, topk_groups, correction_bias)
    _validate_metadata_only(x, top_k, w13, w2, activation, swiglu_limit, apply_router_weight_on_input,
                            expert_map, router_logits.shape[1], out_dtype, config)
    if router_logits.shape[0] != x.shape[0]:
        raise ValueError(
            f"router_logits has {router_logits.shape[0]} rows but x has {x.shape[0]} tokens; one row of logits per token"
        )
    if router_logits.device != x.device:
        raise ValueError(f"router_logits is on {router_logits.device} but x on {x.device}; move it")


def _validate_metadata_only(x, top_k, w13, w2, activation, swiglu_limit, apply_on_input, expert_map,
                            num_experts, out_dtype, config):
    _require_tensor("x", x)
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"x.dtype={_dtype_name(x.dtype)} is not an activation dtype (allowed: float16, bfloat16); cast x")
    if x.dim() != 2:
        raise ValueError(f"x.shape={tuple(x.shape)} must be 2-D [T, H]")
    T, H = x.shape
    _check_activation(activation, swiglu_limit)
    if not isinstance(apply_on_input, bool):
        raise TypeError(f"apply_router_weight_on_input={apply_on_input!r} must be a bool")
    if apply_on_input and top_k != 1:
        raise ValueError(
            f"apply_router_weight_on_input=True needs top_k == 1 (got top_k={top_k}); the weight of one "
            "expert cannot scale an input shared by several"
        )
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype!r} is not supported (allowed: float16, bfloat16, float32)")
    g13 = _check_weights("w13", w13, None, H, None, x.dtype, x.device)
    if g13.N % 2:
        raise ValueError(f"w13 has N={g13.N} columns; it must be 2I (gate [:I], up [I:]), an even number")
    _check_weights("w2", w2, g13.E, g13.N // 2, H, x.dtype, x.device)
    if expert_map is not None:
        _require_tensor("expert_map", expert_map)
        if tuple(expert_map.shape) != (num_experts,):
            raise ValueError(
                f"expert_map.shape={tuple(expert_map.shape)} must be [num_experts] = [{num_experts}]"
            )
    elif num_experts != g13.E:
        raise ValueError(
            f"the weights hold {g13.E} experts but the router has {num_experts}; without an expert_map "
            "they must be equal (pass expert_map for expert parallelism)"
        )
    if config is not None:
        _validate_config(config)


# ---------------------------------------------------------------------------------------------
# launch


def _gemm_constexprs(g: _Gemm) -> dict:
    if g.packing is None:
        return dict(QW_PER_K=1, QW_PER_N=1, QW_FIELD_CODE=0, QW_BITS=0, Z_PER_G=1, Z_PER_N=1, Z_FIELD_CODE=0, Z_BITS=0)
    q, z = g.packing.qweight, g.packing.zeros
    return dict(
        QW_PER_K=_per_axis(q, 0), QW_PER_N=_per_axis(q, 1), QW_FIELD_CODE=_field_code(q), QW_BITS=q.bits,
        Z_PER_G=_per_axis(z, 0), Z_PER_N=_per_axis(z, 1), Z_FIELD_CODE=_field_code(z), Z_BITS=z.bits,
    )


def _tile_modes(g: _Gemm, config: MoEConfig, up_offset: int) -> dict:
    """The packed-weight constexpr paths of one GEMM (see ``_weight_tile``)."""
    if g.packing is None:
        return dict(UNPACK=0, SCALE_MODE=0, G_TILE=1)
    q = g.packing.qweight
    per_k, per_n = _per_axis(q, 0), _per_axis(q, 1)
    bk, bn, G = config.block_k, config.block_n, g.group_k
    unpack = 0
    if per_n == 1 and per_k > 1 and bk % per_k == 0:
        unpack = 1
    elif per_k == 1 and per_n > 1 and bn % per_n == 0 and up_offset % per_n == 0:
        unpack = 2
    scale_mode, g_tile = 0, 1
    if G % bk == 0:
        scale_mode = 1
    elif bk % G == 0 and G & (G - 1) == 0:
        scale_mode, g_tile = 2, G
    modes = dict(UNPACK=unpack, SCALE_MODE=scale_mode, G_TILE=g_tile)
    if unpack == 1 and scale_mode == 1 and bk // per_k >= MIN_DOT_BLOCK:
        modes["PART_DOT"] = True
    return modes


def _launch_gemm(g: _Gemm, a, a_scale, c, topk_weights, sorted_ids, expert_ids, num_post, *,
                 num_valid, n_cols, up_offset, a_row_div, fuse_act, act, limit, mul_weight, config, kernel,
                 split_k=1):
    ew = g.weights
    w = ew.weight
    s = ew.scales if ew.scales is not None else w
    z = ew.zeros if ew.zeros is not None else w
    s_strides = ew.scales.stride() if ew.scales is not None else (0, 0, 0)
    z_strides = ew.zeros.stride() if ew.zeros is not None else (0, 0, 0)
    a_s = a_scale if a_scale is not None else a
    as_strides = a_scale.stride() if a_scale is not None else (0, 0)
    sub_k = min(config.block_k, g.group_k) if g.scheme.kind == _KIND_FP8_BLOCK else config.block_k
    c_strides = c.stride() if c.dim() == 3 else (0, *c.stride())
    grid = (expert_ids.numel() * _cdiv(n_cols, config.block_n) * split_k,)
    extra = _tile_modes(g, config, up_offset)
    if split_k != 1:
        extra["SPLIT_K"] = split_k
    kernel[grid](
        a, a_s, w, s, z, c, topk_weights,
        sorted_ids, expert_ids, num_post,
        num_valid, n_cols, g.K, up_offset, a_row_div, g.group_k, g.group_n, float(limit or 0.0),
        a.stride(0), a.stride(1), as_strides[0], as_strides[1],
        w.stride(0), w.stride(1), w.stride(2),
        s_strides[0], s_strides[1], s_strides[2],
        z_strides[0], z_strides[1], z_strides[2],
        c_strides[0], c_strides[1], c_strides[2],
        KIND=g.scheme.kind, **_gemm_constexprs(g),
        HAS_ZEROS=ew.zeros is not None, SYM_ZERO=SYMMETRIC_ZERO,
        FUSE_ACT=fuse_act, ACT=_ACT_CODES[act], HAS_LIMIT=limit is not None, ALPHA=SWIGLU_ALPHA,
        MUL_WEIGHT=mul_weight,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, SUB_K=sub_k,
        num_warps=config.num_warps, num_stages=config.num_stages, **extra,
    )


def fused_experts(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w13: ExpertWeights,
    w2: ExpertWeights,
    *,
    activation: str = "silu",
    swiglu_limit: float | None = None,
    apply_router_weight_on_input: bool = False,
    expert_map: torch.Tensor | None = None,
    num_experts: int | None = None,
    out_dtype: torch.dtype | None = None,
    config: MoEConfig | None = None,
    kernel=None,
    validate: bool = True,
) -> torch.Tensor:
    """The expert part of the MoE for given routing: ``y [T, H]`` (module docstring, steps 2-5).

    x: fp16/bf16 ``[T, H]``; topk_ids: int ``[T, k]`` global expert ids; topk_weights: float32
    ``[T, k]``; w13 / w2: :class:`ExpertWeights` with logical shapes ``[E_local, H, 2I]`` and
    ``[E_local, I, H]``; expert_map: int ``[num_experts]`` (global -> local, -1 not local);
    num_experts: global expert count (default: the map's length, or E_local).
    kernel: the ``@triton.jit`` grouped GEMM launched (default ``_moe_gemm_kernel``).
    validate: also check the *values* of topk_ids and expert_map before any launch (reads them
    on the host: a device synchronization). ``validate=False`` is the fast path for callers that
    guarantee them (serving, benchmarks): shapes, dtypes and devices are still checked, and the
    kernels never access memory out of bounds, but an out-of-range id or map entry is then
    silently dropped (its slot contributes 0) instead of raising.
    """
    if not isinstance(validate, bool):
        raise TypeError(f"validate={validate!r} must be a bool")
    return _fused_experts(
        x, topk_ids, topk_weights, w13, w2, activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map,
        num_experts=num_experts, out_dtype=out_dtype, config=config, kernel=kernel,
        check_ids=validate, check_map=validate,
    )


def _fused_experts(x, topk_ids, topk_weights, w13, w2, *, activation, swiglu_limit, apply_router_weight_on_input,
                   expert_map, num_experts, out_dtype, config, kernel, check_ids, check_map, aligned=None):
    """aligned: the ``align_block_size`` result of these ids at ``config.block_m`` when the
    caller computed it already (``_route_and_align``); None: aligned here."""
    T, H, I, top_k, E_local, g13, g2, config, out_dtype = _validate_experts(
        x, topk_ids, topk_weights, w13, w2, activation, swiglu_limit, apply_router_weight_on_input,
        expert_map, num_experts, out_dtype, config, check_ids=check_ids, check_map=check_map,
    )
    kernel = kernel or _moe_gemm_kernel
    device = x.device
    if T == 0:
        return torch.zeros((0, H), dtype=out_dtype, device=device)
    global_experts = expert_map.shape[0] if expert_map is not None else E_local
    if aligned is None:
        aligned = align_block_size(
            topk_ids, config.block_m, global_experts, expert_map, num_local_experts=E_local, validate=False,
        )
    sorted_ids, expert_ids, num_post = aligned
    n_assign = T * top_k
    weights_flat = topk_weights.reshape(-1)
    if not weights_flat.is_contiguous():
        weights_flat = weights_flat.contiguous()
    quantized = g13.scheme.quantized_activations
    fp8_dtype = w13.weight.dtype if quantized else None
    # without a map (and with valid ids) every assignment has a block, so every row of GEMM 1's
    # output is written; with one, rows of dropped assignments stay 0 (GEMM 2 never reads them,
    # but a launcher wrapping the kernel may process all of A)
    alloc = torch.empty if expert_map is None else torch.zeros

    if quantized:
        a1, a1_scale = quantize_activations_fp8(x, g13.group_k, fp8_dtype)
    else:
        a1, a1_scale = x, None

    # GEMM 1 + activation -> [T*k, I] in the activation dtype
    act_out = alloc((n_assign, I), dtype=x.dtype, device=device)
    common = dict(sorted_ids=sorted_ids, expert_ids=expert_ids, num_post=num_post, num_valid=n_assign,
                  config=config, kernel=kernel)
    if config.fuse_activation:
        _launch_gemm(g13, a1, a1_scale, act_out, weights_flat, n_cols=I, up_offset=I, a_row_div=top_k,
                     fuse_act=True, act=activation, limit=swiglu_limit,
                     mul_weight=apply_router_weight_on_input, **common)
    else:
        gate_up = alloc((n_assign, 2 * I), dtype=torch.float32, device=device)
        _launch_gemm(g13, a1, a1_scale, gate_up, weights_flat, n_cols=2 * I, up_offset=0, a_row_div=top_k,
                     fuse_act=False, act=activation, limit=swiglu_limit,
                     mul_weight=apply_router_weight_on_input, **common)
        block = min(128, _next_pow2(I))
        _activation_kernel[(n_assign, _cdiv(I, block))](
            gate_up, act_out, I, float(swiglu_limit or 0.0),
            gate_up.stride(0), gate_up.stride(1), act_out.stride(0), act_out.stride(1),
            ACT=_ACT_CODES[activation], HAS_LIMIT=swiglu_limit is not None, ALPHA=SWIGLU_ALPHA, BLOCK=block,
        )

    if quantized:
        a2, a2_scale = quantize_activations_fp8(act_out, g2.group_k, fp8_dtype)
    else:
        a2, a2_scale = act_out, None

    # GEMM 2 -> float32 [split_k, T*k, H] partials, router weight applied on the output (rows of
    # dropped slots are never written: the reduction skips them)
    split_k = config.split_k
    slots = torch.empty((split_k, n_assign, H), dtype=torch.float32, device=device)
    _launch_gemm(g2, a2, a2_scale, slots, weights_flat, n_cols=H, up_offset=0, a_row_div=1,
                 fuse_act=False, act=activation, limit=None,
                 mul_weight=not apply_router_weight_on_input, split_k=split_k, **common)
    # y[t] = sum over splits, then slots, in a fixed order (deterministic), cast to out_dtype
    out = torch.empty((T, H), dtype=out_dtype, device=device)
    block = min(1024, _next_pow2(H))
    flat_ids = topk_ids.reshape(-1)
    _sum_slots_kernel[(T, _cdiv(H, block))](
        slots, out, flat_ids, expert_map if expert_map is not None else flat_ids, H, top_k, split_k,
        global_experts, E_local, slots.stride(0), slots.stride(1), slots.stride(2),
        out.stride(0), out.stride(1), HAS_MAP=expert_map is not None, BLOCK=block,
        K_PAD=_next_pow2(top_k),
    )
    return out


def fused_moe(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: ExpertWeights,
    w2: ExpertWeights,
    *,
    top_k: int,
    scoring: str = "softmax",
    renormalize: bool = False,
    num_groups: int | None = None,
    topk_groups: int | None = None,
    correction_bias: torch.Tensor | None = None,
    activation: str = "silu",
    swiglu_limit: float | None = None,
    apply_router_weight_on_input: bool = False,
    expert_map: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: MoEConfig | None = None,
    kernel=None,
    validate: bool = True,
) -> torch.Tensor:
    """Routing + experts: ``y [T, H]``; see :func:`route` and :func:`fused_experts`.

    router_logits: ``[T, E]`` over the *global* experts; the weights hold the local experts
    (``E`` of them without an expert_map). Everything is validated before any launch. The expert
    ids come from :func:`route`, in range by construction, so they are never read back; with
    ``validate`` (the default) an expert_map's values are checked on the host (a synchronization
    only when a map is given); ``validate=False`` skips that (see :func:`fused_experts`). Nothing
    else is read on the host: the call can be captured in a CUDA graph.

    Launches: routing and alignment are one single-program kernel when the tokens fit one
    routing tile (``T <= ROUTE_TILE / padded E``: every decode size), else the routing kernel
    (parallel over tokens) and the alignment kernel; then GEMM 1 (+ the activation kernel when
    ``config.fuse_activation`` is False), GEMM 2 and the slot reduction (plus the activation
    quantization kernels of fp8_block).
    """
    if not isinstance(validate, bool):
        raise TypeError(f"validate={validate!r} must be a bool")
    check_fused_moe_arguments(
        x, router_logits, w13, w2, top_k=top_k, scoring=scoring, renormalize=renormalize,
        num_groups=num_groups, topk_groups=topk_groups, correction_bias=correction_bias,
        activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map,
        out_dtype=out_dtype, config=config,
    )
    T, E = router_logits.shape
    E_local = w13.weight.shape[0]
    if validate and expert_map is not None:
        _check_expert_map(expert_map, E, E_local)
    if config is None:
        I = _check_weights("w13", w13, None, x.shape[1], None, x.dtype, x.device).N // 2
        config = default_config(T, top_k, x.shape[1], I, E_local)
    fused = None
    if T > 0:
        fused = _route_and_align(router_logits, top_k, scoring, renormalize, num_groups, topk_groups,
                                 correction_bias, config.block_m, expert_map, E_local)
    if fused is None:
        topk_ids, topk_weights = route(
            router_logits, top_k, scoring=scoring, renormalize=renormalize, num_groups=num_groups,
            topk_groups=topk_groups, correction_bias=correction_bias,
        )
        aligned = None
    else:
        topk_ids, topk_weights, aligned = fused
    return _fused_experts(
        x, topk_ids, topk_weights, w13, w2, activation=activation, swiglu_limit=swiglu_limit,
        apply_router_weight_on_input=apply_router_weight_on_input, expert_map=expert_map,
        num_experts=E, out_dtype=out_dtype, config=config, kernel=kernel,
        check_ids=False, check_map=False, aligned=aligned,
    )
