"""The fused MoE through its dispatcher (``bundled:fused_moe``): the recorded backend is the one
``kernels.moe.dispatch`` chose, and the declared expectation (``kernels.backends``) says which
one that must be on the case's platform.

Packing. The canonical ``fused_moe`` problem holds every global expert's *dequantized* weights
(``w13 [E, H, 2I]``, ``w2 [E, I, H]`` float64; ``oracle.ops.moe``). The kernel's storage is derived
from them by one deterministic rule per scheme, which the ``fused_moe`` materializers
(``cases.families.moe``) build their weights to satisfy; a problem that breaks the rule raises a
ValueError naming the block:

- ``dense``: the values themselves, in the activation dtype (they must be representable).
- ``w4a16`` (groups of ``GROUP_SIZE`` along K): per (group, column), ``s = (max - min) / 15``
  and ``z = -min / s`` (zero points), or ``s = -min / 8`` and z = 8 (symmetric) — so every
  nonzero group holds the codes 0 and 15 (0 when symmetric); ``q = d / s + z``. An all-zero group
  is stored as q = z = 8, s = 1.
- ``w_mxfp4`` / ``w_mxfp4_a_mxfp4`` (blocks of 32 along K): E8M0 exponent
  ``floor(log2(amax)) - 2``, so every nonzero block's largest code is 4 or 6; an all-zero block
  gets 2**0.
- ``fp8_block`` (``bk x bn`` blocks, :func:`fp8_block` of the shape): ``s = amax / 448``, so every
  nonzero block holds a code of magnitude 448 (as a checkpoint's amax scaling does); zero blocks
  get s = 1.

With an ``expert_map`` the kernel gets the local experts only, ordered by local index.
"""
from __future__ import annotations

import numpy as np

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.torch_io import to_device, torch_dtype
from qkcheck.oracle.formats import get_format
from qkcheck.oracle.packing import pack as pack_codes

GROUP_SIZE = 32  # w4a16 expert group size along K
MX_BLOCK = 32
SWIGLU_LIMIT = 7.0  # the clamp of the case param act="swiglu7" (gpt-oss)
TUNABLES = {"block_m": (16, 32, 64), "block_n": (16, 32, 64), "block_k": (16, 32, 64, 128),
            "fuse_activation": (1, 0)}
LAYOUTS = ("gptq", "awq", "nibble")
_E2M1 = get_format("float4_e2m1fn")
_E4M3 = get_format("float8_e4m3fn")


def fp8_block(h: int, i: int) -> tuple[int, int]:
    """The fp8 weight block (bk, bn) used for an H x I MoE: the largest of 128, 64, 32 dividing both."""
    for b in (128, 64, 32):
        if h % b == 0 and i % b == 0:
            return (b, b)
    raise ValueError(f"fp8_block experts need H and I multiples of 32, got H={h}, I={i}")


def _blocks(d: np.ndarray, bk: int, bn: int) -> np.ndarray:
    """[K, N] -> [K/bk, N/bn, bk*bn] (K, N multiples of the block)."""
    K, N = d.shape
    return d.reshape(K // bk, bk, N // bn, bn).transpose(0, 2, 1, 3).reshape(K // bk, N // bn, bk * bn)


def _exact_codes(name: str, values: np.ndarray, fmt) -> np.ndarray:
    codes = fmt.encode(values, saturate=False)
    back = fmt.decode(codes)
    bad = np.argwhere(back != values)
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name}: value {values[idx]!r} at {list(idx)} is not a {fmt.name} code times its block "
                         f"scale; the fused_moe packing rule is in kernels.moe.adapter's docstring")
    return codes


def w4a16_storage(d: np.ndarray, zero_points: bool, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Codes [K, N], scales [K/G, N], zeros [K/G, N] | None of dequantized ``d [K, N]``."""
    K, N = d.shape
    g = d.reshape(K // GROUP_SIZE, GROUP_SIZE, N)
    lo, hi = g.min(axis=1), g.max(axis=1)
    zero = (lo == 0) & (hi == 0)
    if zero_points:
        s = np.where(zero, 1.0, (hi - lo) / 15)
        z = np.where(zero, 8.0, -lo / s)
    else:
        s = np.where(zero, 1.0, -lo / 8)
        z = np.full_like(s, 8.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = g / s[:, None, :] + z[:, None, :]
    ok = (np.isfinite(q) & (q == np.round(q)) & (q >= 0) & (q <= 15)).all(axis=1) & (z == np.round(z)) & (s > 0)
    if not ok.all():
        gi, n = (int(v) for v in np.argwhere(~ok)[0])
        raise ValueError(f"{name}: group {gi} of column {n} is not (q - z) * s with codes 0..15 holding "
                         f"{'0 and 15' if zero_points else '0 with z = 8'}; the fused_moe packing rule is in "
                         f"kernels.moe.adapter's docstring")
    return q.reshape(K, N).astype(np.int64), s, (z.astype(np.int64) if zero_points else None)


def mxfp4_storage(d: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """e2m1 codes [K, N] and E8M0 scale codes [K/32, N] of dequantized ``d [K, N]``."""
    K, N = d.shape
    g = d.reshape(K // MX_BLOCK, MX_BLOCK, N)
    amax = np.abs(g).max(axis=1)
    _, ex = np.frexp(np.where(amax > 0, amax, 1.0))
    e = np.where(amax > 0, ex - 1 - 2, 0)
    if (e < -127).any() or (e > 127).any():
        raise ValueError(f"{name}: a block's scale 2**e with e outside E8M0's [-127, 127]")
    codes = _exact_codes(name, (g / np.exp2(e)[:, None, :]).reshape(K, N), _E2M1)
    return codes, (e + 127).astype(np.uint8)


def fp8_storage(d: np.ndarray, block: tuple[int, int], name: str) -> tuple[np.ndarray, np.ndarray]:
    """e4m3fn codes [K, N] and float32 scales [K/bk, N/bn] of dequantized ``d [K, N]``."""
    bk, bn = block
    b = _blocks(d, bk, bn)
    amax = np.abs(b).max(axis=2)
    s = np.where(amax > 0, amax / _E4M3.max, 1.0)
    if not np.array_equal(s.astype(np.float32).astype(np.float64), s):
        raise ValueError(f"{name}: a block scale amax / 448 is not a float32 value")
    full = np.repeat(np.repeat(s, bk, axis=0), bn, axis=1)
    return _exact_codes(name, d / full, _E4M3), s


def local_experts(problem) -> list[int]:
    """Global expert ids of the kernel's experts, in local-index order."""
    E = np.asarray(problem["w13"]).shape[0]
    emap = problem.get("expert_map")
    if emap is None:
        return list(range(E))
    emap = np.asarray(emap)
    return [int(g) for g in np.argsort(np.where(emap >= 0, emap, E + np.arange(E)))[: int((emap >= 0).sum())]]


def pack(problem, params, device) -> dict:
    """The dispatcher's tensors from a canonical ``fused_moe`` problem (module docstring)."""
    import torch

    from qkcheck.kernels.w4a16.kernel import LAYOUTS as W4A16_LAYOUTS

    scheme, act = params["scheme"], torch_dtype(params["act_dtype"])
    experts = local_experts(problem)
    t = {"x": to_device(torch.from_numpy(np.asarray(problem["x"], np.float64)), device, act),
         "router_logits": to_device(torch.from_numpy(np.asarray(problem["router_logits"], np.float64)), device, torch.float32)}
    bias = problem.get("correction_bias")
    t["correction_bias"] = None if bias is None else to_device(torch.from_numpy(np.asarray(bias)), device, torch.float32)
    emap = problem.get("expert_map")
    t["expert_map"] = None if emap is None else to_device(torch.from_numpy(np.asarray(emap, np.int64)), device, torch.int32)
    h, i2 = np.asarray(problem["w13"]).shape[1:]
    for key in ("w13", "w2"):
        ws = [np.asarray(problem[key], np.float64)[e] for e in experts]
        name = lambda e: f"{key}[expert {experts[e]}]"  # noqa: E731
        scales = zeros = None
        if scheme == "dense":
            weight = to_device(torch.from_numpy(np.stack(ws)), device, act)
        elif scheme == "w4a16":
            rec = W4A16_LAYOUTS[params["layout"]]
            parts = [w4a16_storage(w, params["zp"], name(e)) for e, w in enumerate(ws)]
            weight = to_device(torch.from_numpy(np.stack([pack_codes(q, rec.qweight) for q, _, _ in parts])), device)
            scales = to_device(torch.from_numpy(np.stack([s for _, s, _ in parts])), device, act)
            if params["zp"]:
                zeros = to_device(torch.from_numpy(np.stack([pack_codes(z, rec.zeros) for _, _, z in parts])), device)
        elif scheme in ("w_mxfp4", "w_mxfp4_a_mxfp4"):
            parts = [mxfp4_storage(w, name(e)) for e, w in enumerate(ws)]
            weight = to_device(torch.from_numpy(np.stack([pack_codes(c, W4A16_LAYOUTS["nibble"].qweight)
                                                          for c, _ in parts])), device)
            scales = to_device(torch.from_numpy(np.stack([s for _, s in parts])), device)
        else:
            parts = [fp8_storage(w, fp8_block(h, i2 // 2), name(e)) for e, w in enumerate(ws)]
            codes = np.stack([c for c, _ in parts]).astype(np.uint8)
            weight = to_device(torch.from_numpy(codes).view(torch.float8_e4m3fn), device)
            scales = to_device(torch.from_numpy(np.stack([s for _, s in parts])), device, torch.float32)
        t[key], t[f"{key}_scales"], t[f"{key}_zeros"] = weight, scales, zeros
    return t


def kernel_args(params, dims) -> dict:
    """The op's scalar arguments of a case (everything but tensors and routing)."""
    scheme = params["scheme"]
    return {
        "layout": params["layout"] if scheme == "w4a16" else None,
        "group_size": GROUP_SIZE if scheme == "w4a16" else None,
        "block": list(fp8_block(dims["h"], dims["i"])) if scheme == "fp8_block" else None,
    }


def grouping(params, e: int) -> tuple[int | None, int | None]:
    """(num_groups, topk_groups) of a case: two groups, one kept, when grouped top-k is on."""
    return (2, 1) if params["grouped"] else (None, None)


def config_list(config) -> list[int] | None:
    if not config:
        return None
    from qkcheck.kernels.moe.kernel import MoEConfig

    return MoEConfig(block_m=config["block_m"], block_n=config["block_n"], block_k=config["block_k"],
                     fuse_activation=bool(config.get("fuse_activation", 1))).as_list()


def make_call(entry):
    """A ``call`` running ``entry`` (a fused_moe op with the dispatcher's flat signature)."""

    def call(t, params, config):
        x = t["x"]
        kargs = kernel_args(params, {"h": x.shape[1], "i": _intermediate(t, params)})
        num_groups, topk_groups = grouping(params, t["router_logits"].shape[1])
        act = params["act"]
        return entry(
            x, t["router_logits"], t["w13"], t["w2"], t["w13_scales"], t["w2_scales"], t["w13_zeros"], t["w2_zeros"],
            t["correction_bias"], t["expert_map"], params["scheme"], kargs["layout"], kargs["group_size"],
            kargs["block"], params["top_k"], params["scoring"], params["renorm"], num_groups, topk_groups,
            "silu" if act == "silu" else "swiglu", SWIGLU_LIMIT if act == "swiglu7" else None,
            params["weight_on_input"], torch_dtype(params["out_dtype"]), config_list(config),
        )

    return call


def _intermediate(t, params) -> int:
    """I from the packed w2 ([E, I, H] logical)."""
    scheme = params["scheme"]
    if scheme == "dense" or scheme == "fp8_block":
        return t["w2"].shape[1]
    if scheme == "w4a16":
        return t["w2_scales"].shape[1] * GROUP_SIZE
    return t["w2_scales"].shape[1] * MX_BLOCK


def default_config(dims, params) -> dict:
    from qkcheck.kernels.moe.kernel import default_config as moe_default

    e_local = max(1, dims["e"] // 2) if params["ep"] else dims["e"]
    c = moe_default(dims["t"], params["top_k"], dims["h"], dims["i"], e_local)
    return {"block_m": c.block_m, "block_n": c.block_n, "block_k": c.block_k, "fuse_activation": int(c.fuse_activation)}


def expected_backend(params, device) -> str | None:
    """The declared expectation for the case's scheme on ``device`` (kernels.moe.dispatch)."""
    from qkcheck.kernels.moe import dispatch as moe_dispatch

    return moe_dispatch.expected_backend(params["scheme"], device)


def _call_dispatcher(t, params, config):
    from qkcheck.kernels.moe import dispatch as moe_dispatch

    return make_call(moe_dispatch.fused_moe)(t, params, config)


FUSED_MOE = KernelAdapter(
    name="bundled:fused_moe",
    op="fused_moe",
    pack=pack,
    call=_call_dispatcher,
    layouts=LAYOUTS,
    tunables=TUNABLES,
    custom_op="qkcheck::fused_moe_dispatch",
    default_config=default_config,
    expected_backend=expected_backend,
    description="fused MoE through its dispatcher (Triton native or torch emulation per scheme and platform): "
                "dense, W4A16, FP8 block, W4A16 MXFP4, W4A4 MXFP4 experts",
)


def adapters() -> tuple[KernelAdapter, ...]:
    return (FUSED_MOE,)
