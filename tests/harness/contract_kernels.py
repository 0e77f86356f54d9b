"""Small foreign-style kernels (torch) that state contracts beyond an op's strict default, written
only against qkcheck's public adapter API, as a user's adapter file would be
(``--kernels tests/harness/contract_kernels.py``). Used by tests/harness/test_contracts.py; each
has a twin there that shows the check can fail.

- ``contract:w4a16_partial``: a W4A16 GEMM whose group size need not divide K (a partial last
  group with a scale row of its own): ``accepts=("partial_groups",)``.
- ``contract:group_quant_padded``: an int8 per-token-group quantizer returning its scales padded
  to a multiple of 4 columns, the padding left holding whatever it holds:
  ``output_layouts={"scales": padded(cols=4)}``.
- ``contract:group_quant_colmajor``: the same quantizer returning column-major scales (a
  ``[M, G]`` view of a ``[G, M rounded up to 4]`` buffer): nothing to declare.
- ``contract:token_quant_workspace``: an fp8 per-token quantizer that writes each row's amax
  into a scratch workspace it is given: ``workspace=Workspace("amax", ...)``.
- ``contract:moe_silu7``: a dense fused MoE (softmax top-k routing) with the clamped
  silu(min(gate, 7)) * clip(up, -7, 7): ``params={"act": ("silu", "silu7"), ...}``.
- ``contract:fp8_plus_zero``: an fp8 per-token quantizer that maps -0.0 to code +0 (it adds
  +0.0 before converting): ``conventions={"signed_zero": "either"}``.
"""
import numpy as np
import torch

from qkcheck.kernels.adapters import KernelAdapter, Workspace, multiple_of, padded
from qkcheck.kernels.torch_io import float_tensor, torch_dtype

# ------------------------------------------------------------------ W4A16, partial last group


def w4a16_partial(x, q, scales, zeros, group_size, bias=None, out_dtype=torch.float16, whole_groups_only=False):
    """``x @ ((q - z) * s) + bias``; k row r takes group r // group_size (a partial last group has
    its own row). ``whole_groups_only``: the classic bug, rows past the last whole group reuse it."""
    k = q.shape[0]
    g = torch.arange(k) // group_size
    if whole_groups_only:
        g = g.clamp(max=k // group_size - 1)
    z = 8.0 if zeros is None else zeros.float()[g]
    w = (q.float() - z) * scales.float()[g]
    out = x.float() @ w
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def _w4a16_pack(problem, params, device):
    act = params["act_dtype"]
    z = problem["zeros"]
    return {"x": float_tensor(problem["x"], act, device),
            "q": torch.from_numpy(np.asarray(problem["q"], np.int32)).to(device),
            "scales": float_tensor(problem["scales"], act, device),
            "zeros": None if z is None else torch.from_numpy(np.asarray(z, np.int32)).to(device),
            "bias": None if problem["bias"] is None else float_tensor(problem["bias"], act, device)}


def _w4a16_call(whole_groups_only):
    def call(t, params, config):
        return w4a16_partial(t["x"], t["q"], t["scales"], t["zeros"], params["group_size"], bias=t["bias"],
                             out_dtype=torch_dtype(params["out_dtype"]), whole_groups_only=whole_groups_only)
    return call


def w4a16_partial_adapter(name="contract:w4a16_partial", accepts=("partial_groups",), whole_groups_only=False):
    return KernelAdapter(
        name=name, op="w4a16_gemm", pack=_w4a16_pack, call=_w4a16_call(whole_groups_only), triton=False,
        layouts=("gptq",), params={"group_size": (32, 64), "act_dtype": ("float16",)},
        accepts=accepts, target=w4a16_partial, signature=("x", "q", "scales", "zeros", "group_size"),
    )


# ------------------------------------------------------------------ per-token-group int8, padded scales


def group_quant_int8(x, group_size, pad_cols=4, shift=False, column_major=False):
    """int8 codes [M, K] and float32 scales amax / 127 per group. Scales come back [M, G] padded
    to a multiple of ``pad_cols`` columns (the padding holds whatever torch.empty left there,
    different from call to call), or column-major (``column_major``: a [M, G] view of a
    [G, M padded to 4] buffer). ``shift``: a bug, every scale stored one column to the right."""
    m, k = x.shape
    groups = k // group_size
    xg = x.float().reshape(m, groups, group_size)
    scales = (xg.abs().amax(dim=2).clamp_min(1e-10) / 127.0).float()
    codes = torch.round(xg / scales[:, :, None]).clamp(-128, 127).to(torch.int8).reshape(m, k)
    if column_major:
        m_pad = -(-m // 4) * 4
        buf = torch.empty((groups, m_pad), dtype=torch.float32, device=x.device)
        buf[:, :m] = scales.T
        return codes, buf.T[:m]
    cols = -(-groups // pad_cols) * pad_cols
    out = torch.empty((m, cols), dtype=torch.float32, device=x.device)
    out[:, groups:] = torch.randn((m, cols - groups)) * 1e6  # the padding: anything at all
    if shift:
        n = min(groups, cols - 1)
        out[:, 1:1 + n] = scales[:, :n]
    else:
        out[:, :groups] = scales
    return codes, out


def _quant_pack(problem, params, device):
    return {"x": float_tensor(problem["x"], params["in_dtype"], device)}


def _group_quant_call(**kw):
    def call(t, params, config):
        return group_quant_int8(t["x"], params["group_size"], **kw)
    return call


def group_quant_padded_adapter(name="contract:group_quant_padded", output_layouts=None, **kw):
    return KernelAdapter(
        name=name, op="per_token_group_quant", pack=_quant_pack, call=_group_quant_call(**kw), triton=False,
        params={"quant_dtype": ("int8",), "group_size": (32,), "column_major_scales": (False,),
                "scale_ue8m0": (False,)},
        dims={"k": multiple_of(32)},
        output_layouts={"scales": padded(cols=4)} if output_layouts is None else output_layouts,
        target=group_quant_int8, signature=("x", "group_size"),
    )


# ------------------------------------------------------------------ per-token fp8 with an amax workspace

FP8 = "float8_e4m3fn"


def token_quant_ws(x, amax, *, stale_max=False, spill=False):
    """fp8 e4m3fn per-token quantization; each row's amax goes through the scratch ``amax`` [M].
    ``stale_max``: a bug, the row max is folded into what the workspace held (fmax: NaN ignored),
    as if it started zeroed. ``spill``: a bug, one element written past the workspace's end."""
    row = x.float().abs().amax(dim=1)
    if stale_max:
        amax.copy_(torch.fmax(amax, row))
    else:
        amax.copy_(row)
    if spill:
        torch.as_strided(amax, (amax.numel() + 1,), (1,))[-1] = 0.0
    scale = (amax.clamp_min(1e-10) / 448.0)[:, None]
    codes = (x.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return codes, scale


def _token_quant_call(**kw):
    def call(t, params, config):
        return token_quant_ws(t["x"], t["amax"], **kw)
    return call


def token_quant_workspace_adapter(name="contract:token_quant_workspace", workspace=True, **kw):
    return KernelAdapter(
        name=name, op="per_token_quant", pack=_quant_pack, call=_token_quant_call(**kw), triton=False,
        params={"quant_dtype": (FP8,), "scale_ub": (False,), "in_dtype": ("float32", "float16")},
        workspace=Workspace("amax", shape=lambda dims, params, config: (dims["m"],), dtype="float32")
        if workspace else (),
        target=token_quant_ws, signature=("x", "amax"),
    )


# ------------------------------------------------------------------ per-token fp8, -0.0 -> +0


def token_quant_plus_zero(x):
    """fp8 e4m3fn per-token quantization whose quotient has +0.0 added (-0.0 becomes +0)."""
    scale = (x.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-10) / 448.0)
    codes = (x.float() / scale + 0.0).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return codes, scale


def _plus_zero_call(off_by_one_code):
    def call(t, params, config):
        codes, scale = token_quant_plus_zero(t["x"])
        if off_by_one_code:  # a bug: the first nonzero code of row 0 one step up
            bits = codes.view(torch.uint8).clone()
            j = int((bits[0] & 0x7F).nonzero()[0])
            bits[0, j] += 1
            codes = bits.view(torch.float8_e4m3fn)
        return codes, scale
    return call


def fp8_plus_zero_adapter(name="contract:fp8_plus_zero", conventions=None, off_by_one_code=False):
    return KernelAdapter(
        name=name, op="per_token_quant", pack=_quant_pack, call=_plus_zero_call(off_by_one_code), triton=False,
        params={"quant_dtype": (FP8,), "scale_ub": (False,)},
        conventions={"signed_zero": "either"} if conventions is None else conventions,
        target=token_quant_plus_zero, signature=("x",),
    )


# ------------------------------------------------------------------ dense fused MoE, clamped silu*up

LIMIT = 7.0


def moe_dense(x, router_logits, w13, w2, top_k, renormalize, activation="silu", limit=None, out_dtype=torch.float32):
    """Softmax top-k routing, per expert ``act(x @ w13[e]) @ w2[e]`` in float32, weighted and summed.
    ``activation="silu"``: silu(g) * u, with ``limit``: silu(min(g, limit)) * clip(u, -limit, limit)."""
    scores = torch.softmax(router_logits.float(), dim=1)
    weights, ids = torch.topk(scores, top_k, dim=1)
    if renormalize:
        weights = weights / weights.sum(dim=1, keepdim=True)
    out = torch.zeros((x.shape[0], w2.shape[2]), dtype=torch.float32)
    inter = w2.shape[1]
    for j in range(top_k):
        for e in ids[:, j].unique().tolist():
            rows = (ids[:, j] == e).nonzero().flatten()
            h = (x[rows].float() @ w13[e].float()).to(x.dtype).float()
            g, u = h[:, :inter], h[:, inter:]
            if limit is not None:
                g, u = g.clamp(max=limit), u.clamp(-limit, limit)
            a = (torch.nn.functional.silu(g) * u).to(x.dtype).float()
            out[rows] += weights[rows, j:j + 1] * (a @ w2[e].float())
    return out.to(out_dtype)


def _moe_pack(problem, params, device):
    act = params["act_dtype"]
    return {"x": float_tensor(problem["x"], act, device),
            "router_logits": torch.from_numpy(np.asarray(problem["router_logits"], np.float32)).to(device),
            "w13": float_tensor(problem["w13"], act, device), "w2": float_tensor(problem["w2"], act, device)}


def _moe_call(clamp):
    def call(t, params, config):
        limit = LIMIT if clamp and params["act"] == "silu7" else None
        return moe_dense(t["x"], t["router_logits"], t["w13"], t["w2"], params["top_k"], params["renorm"],
                         limit=limit, out_dtype=torch_dtype(params["out_dtype"]))
    return call


def moe_silu7_adapter(name="contract:moe_silu7", acts=("silu", "silu7"), clamp=True):
    return KernelAdapter(
        name=name, op="fused_moe", pack=_moe_pack, call=_moe_call(clamp), triton=False,
        params={"scheme": ("dense",), "scoring": ("softmax",), "top_k": (1, 2), "grouped": (False,),
                "bias": (False,), "weight_on_input": (False,), "ep": (False,), "act": acts,
                "act_dtype": ("float16",), "out_dtype": ("float32",)},
        target=moe_dense, signature=("x", "router_logits", "w13", "w2", "top_k", "renormalize"),
    )


ADAPTERS = [w4a16_partial_adapter(), group_quant_padded_adapter(),
            group_quant_padded_adapter("contract:group_quant_colmajor", output_layouts={}, column_major=True),
            token_quant_workspace_adapter(), moe_silu7_adapter(), fp8_plus_zero_adapter()]
