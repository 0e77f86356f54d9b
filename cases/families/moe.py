"""Fused MoE (op ``fused_moe``): case space, input regimes, gate grid and fuzzing strategy.

A case: shape ``t`` tokens, hidden ``h``, intermediate ``i``, ``e`` global experts; params: the
expert ``scheme`` (``SCHEME_VALUES``), ``top_k``, ``scoring``, ``renorm`` (renormalize the
selected weights), ``grouped`` (grouped top-k: two groups, one kept), ``bias``
(a correction bias), ``act`` (``silu``, ``swiglu``, ``swiglu7``: swiglu with limit 7;
``silu7``: silu(min(gate, 7)) * clip(up, -7, 7), taken only by an adapter whose ``params`` names it),
``weight_on_input`` (router weight applied to the input), ``ep`` (an expert map: about half of
the experts local, in a shuffled local order), ``routing`` (``spread``: random selections;
``one``: every token's first expert is expert 0; ``sparse``: every token picks the same k
experts, so the others get no token), ``layout`` / ``zp`` (zero points; w4a16 only),
``act_dtype``, ``out_dtype``. (Short names: a case's id, which names its failure file, lists
them all.) The weights are built so that the bundled MoE adapter's packing rule
recovers their storage exactly.

What a scheme makes of the problem is data here, the same for every kernel under test:
``fp8_block`` weights carry one scale per square block of ``fp8_weight_block(H, I)`` (the largest
of ``FP8_WEIGHT_BLOCKS`` dividing both H and I), and ``ACT_QUANT`` names how each scheme
re-quantizes every GEMM's input (an ``oracle.schemes`` name, the problem's ``act_quant``).

Regimes:

- ``exact`` (bound 0; not for fp8_block, whose dynamic amax / 448 activation scales are not
  powers of two). The kernel tests' construction, with a larger gate: x holds small integers,
  ``x[:, 0] = 1`` and the channels ``32 g + 1``, ``32 g + 2`` are 0; each gate column of w13 is
  64 or 0 on row 0 and 0 elsewhere (except those zero channels, where the packing's extreme
  codes sit), so every gate pre-activation is 0 or 64, where ``silu`` and gpt-oss ``swiglu`` are
  exactly the identity in float64 *and* float32 (``exp(-64)`` is far below half an ulp of 1). Up
  and down columns have at most 3 nonzero entries, small integers times powers of two, so the
  activation output has at most 6 significant bits (exact in bfloat16) and every partial sum is
  exact in float32. The gate columns ``32 b + 1``, ``32 b + 2`` are off, so those activation
  channels are 0 and w2 keeps its extreme codes there. Router weights are exact: softmax
  selections share one logit and the others sit 100 below (weights 1/k, k a power of two),
  sigmoid selections have logit 0 or 40 (weights 0.5 or 1; the same for all of a token's
  experts when renormalized; 1 with the weight on the input), the others -40. Correction biases
  are distinct multiples of 2**-10 below 0.0625, far from moving a selection. MXFP4 activation
  quantization of these values is exact for x and deterministic for the activation output, so
  RNE(reference) is still the only correct output.
- ``realistic``: normal activations with outlier channels, checkpoint-like weights (w4a16
  amax/7.5-like scales and zero points near 8, MXFP4 / fp8 block scales of small weights),
  normal router logits with the chosen experts raised by 4.
- ``adversarial``: distinct per-column / per-group / per-block power-of-two scales spanning 2**8,
  zero points 0 and 15, an all-zero group or block, one large activation channel, an all-zero
  token, router logits closer together and, without a correction bias or grouping, a genuine tie
  between token 0's last chosen expert and another (the oracle accepts either choice).

Grouped routing in both of those regimes: on the even tokens, one expert of the group not chosen
scores highest of all while the chosen group holds the next two, so ranking the groups by their
largest score alone keeps the other group, where the rule (the sum of the two largest) keeps the
chosen one (``group_rankings_split``; a token where the correction bias undoes it keeps its
logits).

fp8_block cases quantize activations to fp8 in-kernel: where the Triton interpreter's float32 ->
fp8 conversion is defective (``kernels.probes``) the grid's fp8_block cases are skipped with that
reason (``OpSpec.fp8_conversion``) and the fuzz strategy leaves them out; compiled Triton runs them.
"""
from __future__ import annotations

import os

import numpy as np
from qkcheck.cases.hyp import st

from qkcheck.cases.case import Case
from qkcheck.cases.spec import GEMM_CONFIG_COMPLETE, OpSpec, Output
from qkcheck.oracle.formats import get_format
from qkcheck.oracle.numerics import round_to

OP = "fused_moe"
SCHEME_VALUES = ("dense", "w4a16", "w_mxfp4", "w_mxfp4_a_mxfp4", "fp8_block")
GATE_ON = 64.0  # gate pre-activation where silu / swiglu are exactly the identity in float64 and float32
SWIGLU_LIMIT = 7.0
CLAMPED = ("swiglu7", "silu7")  # the activations clamped at SWIGLU_LIMIT
_E2M1 = get_format("float4_e2m1fn")
_E4M3 = get_format("float8_e4m3fn")

FP8_WEIGHT_BLOCKS = (128, 64, 32)  # fp8_block: square weight blocks, the largest dividing both H and I
# scheme -> each GEMM's input re-quantization (``oracle.ops.moe`` act_quant; {bk}: the fp8 weight block's K side)
ACT_QUANT = {"w_mxfp4_a_mxfp4": "mxfp4", "fp8_block": "fp8 per-token-group {bk}"}

PARAMS = {
    "scheme": SCHEME_VALUES,
    "top_k": (1, 2, 3, 4),
    "scoring": ("softmax", "sigmoid"),
    "renorm": (False, True),
    "grouped": (False, True),
    "bias": (False, True),
    "act": ("silu", "swiglu", "swiglu7", "silu7"),
    "weight_on_input": (False, True),
    "ep": (False, True),
    "routing": ("spread", "one", "sparse"),
    "layout": ("gptq", "awq", "nibble"),
    "zp": (False, True),
    "act_dtype": ("float16", "bfloat16"),
    "out_dtype": ("float32", "float16", "bfloat16"),
}
TUNABLES = {"block_m": (16, 32, 64), "block_n": (16, 32, 64), "block_k": (16, 32, 64, 128), "fuse_activation": (1, 0)}


# ------------------------------------------------------------------ rules


def _dims_fit(case):
    d = case.dims
    if d["t"] < 1:
        return f"t={d['t']} must be >= 1 (at least one token)"
    for key in ("h", "i"):
        if d[key] < 32 or d[key] % 32:
            return f"{key}={d[key]} must be a positive multiple of 32 (MXFP4 and w4a16 groups of 32 along K)"
    if d["e"] < 1 or d["e"] > 64:
        return f"e={d['e']} must be in 1..64 experts"
    return None


def _routing_fits(case):
    p, e = case.p, case.dims["e"]
    k = p["top_k"]
    if k > e:
        return f"top_k={k} is larger than e={e} experts; lower top_k"
    if p["grouped"] and (e % 2 or e // 2 < max(2, k)):
        return f"grouped top-k (2 groups, 1 kept) needs e even with e/2 >= max(2, top_k), got e={e}, top_k={k}"
    if p["routing"] == "sparse" and e <= k:
        return f"routing 'sparse' leaves experts without tokens only when e > top_k (e={e}, top_k={k})"
    if p["weight_on_input"] and k != 1:
        return f"weight_on_input needs top_k == 1, got top_k={k}"
    return None


def _scheme_params(case):
    p = case.p
    if p["scheme"] != "w4a16" and (p["layout"] != "gptq" or p["zp"]):
        return f"layout/zp describe w4a16 experts only; scheme {p['scheme']!r} takes layout='gptq', zp=False"
    if p["scheme"] == "fp8_block" and case.cfg.get("block_k", 32) < 32:
        return f"fp8_block needs block_k >= 32 (the fp8 dot consumes K in steps of 32), got {case.cfg['block_k']}"
    return None


def _exact_fits(case):
    if case.regime != "exact":
        return None
    p = case.p
    if p["scheme"] == "fp8_block":
        return "fp8_block has no exact regime (dynamic amax / 448 activation scales); use realistic or adversarial"
    if p["act"] in CLAMPED:
        return (f"the exact regime's gate (64) is clamped by {p['act']}'s limit 7, where the activation is not exact; "
                "use silu or swiglu")
    if p["top_k"] == 3 and (p["scoring"] == "softmax" or p["renorm"]):
        return "the exact regime's router weights are 1/top_k there: top_k must be 1, 2 or 4"
    return None


def _outputs(dims, params):
    return (Output("out", (dims["t"], dims["h"]), params["out_dtype"]),)


SPEC = OpSpec(
    OP,
    shape_keys=("t", "h", "i", "e"),
    params=PARAMS,
    tunables=TUNABLES,
    rules=(_dims_fit, _routing_fits, _scheme_params, _exact_fits, GEMM_CONFIG_COMPLETE),
    compute_dtype=lambda p: p["act_dtype"],
    out_dtype=lambda p: p["out_dtype"],
    outputs=_outputs,
    fp8_conversion=lambda p: p["scheme"] == "fp8_block",  # activations quantized to fp8 in-kernel
    tiles={"h": "block_k", "i": "block_n"},  # K of the first GEMM; N of its gate / up halves
    opt_in={"act": ("silu7",)},  # the clamped silu*up: only for kernels that state it
)
SPECS = (SPEC,)


# ------------------------------------------------------------------ materializer


def fp8_runs_here() -> bool:
    """False under a Triton interpreter whose float32 -> fp8 conversion is defective."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return True
    from qkcheck.kernels import probes

    return probes.skip_reason(compute_dtype="float32", fp8_output=True) is None


def _grouping(p):
    return (2, 1) if p["grouped"] else (None, None)


def _selections(rng, T, E, k, routing, grouped):
    groups = [list(range(E // 2)), list(range(E // 2, E))] if grouped else [list(range(E))]
    out = []
    for _ in range(T):
        if routing == "sparse":
            pool = groups[0]
            out.append([pool[0]] + pool[len(pool) - (k - 1):] if k > 1 else [pool[0]])
        elif routing == "one":
            pool = groups[0]
            out.append([0] + [int(v) for v in rng.permutation(pool[1:])[: k - 1]])
        else:
            pool = groups[int(rng.integers(len(groups)))]
            out.append([int(v) for v in rng.permutation(pool)[:k]])
    return np.array(out, dtype=np.int64).reshape(T, k)


def _router(rng, sel, E, p, regime):
    T, k = sel.shape
    rows = np.arange(T)[:, None]
    bias = None
    if regime == "exact":
        if p["scoring"] == "softmax":
            logits = np.full((T, E), -100.0)
            logits[rows, sel] = 0.0
        else:
            logits = np.full((T, E), -40.0)
            if p["weight_on_input"]:
                on = np.full((T, k), 40.0)
            elif p["renorm"]:
                on = np.repeat(rng.choice([0.0, 40.0], (T, 1)), k, axis=1)
            else:
                on = rng.choice([0.0, 40.0], (T, k))
            logits[rows, sel] = on
        if p["bias"]:
            bias = rng.permutation(E) * 2.0**-10
        return logits, bias
    spread, boost = (1.0, 4.0) if regime == "realistic" else (3.0, 2.0)
    logits = rng.standard_normal((T, E)) * spread
    logits[rows, sel] += boost
    if p["bias"]:
        bias = round_to(rng.standard_normal(E) * (0.05 if regime == "realistic" else 0.5), "float32")
    logits = round_to(logits, "float32")
    if regime == "adversarial" and bias is None and not p["grouped"] and k < E:
        chosen = sel[0]
        last = chosen[np.argmin(logits[0, chosen])]
        others = [e for e in range(E) if e not in set(chosen.tolist())]
        logits[0, others[0]] = logits[0, last]  # a genuine tie at the selection boundary
    if p["grouped"]:
        _split_group_rankings(rng, logits, bias, sel, p["scoring"])
    return logits, bias


GROUP_MARGIN = 1e-3  # far above the float32 rounding of a group score


def group_rankings_split(logits_row, bias, scoring: str, kept: int) -> bool:
    """Whether, for one token of a grouped (two groups) routing, ranking the groups by the sum of
    their two largest selection values keeps group ``kept`` while ranking them by their largest
    value keeps the other, both by ``GROUP_MARGIN`` (float64 scores, as the oracle computes them)."""
    z = np.asarray(logits_row, np.float64)
    if scoring == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
    else:
        s = np.exp(z - z.max())
        s = s / s.sum()
    v = (s + (0.0 if bias is None else np.asarray(bias, np.float64))).reshape(2, -1)
    top = -np.sort(-v, axis=1)
    top2, largest = top[:, :2].sum(axis=1), top[:, 0]
    other = 1 - kept
    return bool(top2[kept] - top2[other] > GROUP_MARGIN and largest[other] - largest[kept] > GROUP_MARGIN)


def _split_group_rankings(rng, logits, bias, sel, scoring):
    """Grouped routing (two groups, one kept), the even tokens: logits under which the group of the
    token's selected experts wins by the sum of its two largest scores (the rule) while the other
    group holds the single largest score, so ranking groups by their largest score alone keeps the
    wrong one. Scores (before softmax normalization): one decoy expert of the other group 0.95, the
    selected experts 0.68-0.76 (with top_k = 1 another expert of their group 0.58 as its second),
    the rest 0.02-0.08. Each decoy of the other group is tried in a drawn order; a token where the
    correction bias undoes the split for every one keeps its logits."""
    T, k = sel.shape
    per = logits.shape[1] // 2
    for t in range(0, T, 2):
        chosen = [int(e) for e in sel[t]]
        kept = chosen[0] // per
        home = [e for e in range(kept * per, (kept + 1) * per) if e not in chosen]
        w = rng.uniform(0.02, 0.08, logits.shape[1])
        w[chosen] = rng.uniform(0.68, 0.76, k)
        if k == 1:
            w[int(rng.choice(home))] = 0.58
        for decoy in rng.permutation(np.arange((1 - kept) * per, (2 - kept) * per)):
            trial = w.copy()
            trial[decoy] = 0.95
            row = round_to(np.log(trial / (1.0 - trial)) if scoring == "sigmoid" else np.log(trial), "float32")
            if group_rankings_split(row, bias, scoring, kept):
                logits[t] = row
                break


def _expert_map(rng, E):
    n_local = max(1, E // 2)
    local = rng.choice(E, size=n_local, replace=False)
    emap = np.full(E, -1, dtype=np.int64)
    emap[local] = rng.permutation(n_local)
    return emap


def _dead(n):
    """Rows (channels) that are zero in the exact regime: 32 g + 1 and 32 g + 2."""
    return np.array([r for r in range(n) if r % 32 in (1, 2)], dtype=np.int64)


def _exact_x(rng, T, H):
    x = rng.integers(-2, 3, (T, H)).astype(np.float64)
    x[:, 0] = 1.0
    x[:, _dead(H)] = 0.0
    return x


def _exact_weights(rng, scheme, zero_points, E, K, N, gate_cols):
    """Exact-regime weights [E, K, N] (module docstring); gate_cols: the first gate_cols columns
    are gate columns (w13), else 0."""
    G = 32
    groups = K // G
    s = 2.0 ** (-2 + (np.arange(groups) % 3))  # per row group
    live = np.array([r for r in range(K) if r % 32 not in (1, 2)])
    w = np.zeros((E, K, N))
    scale = np.repeat(s[None, :, None], N, axis=2).repeat(E, axis=0)  # [E, groups, N]
    for e in range(E):
        for n in range(N):
            if n < gate_cols:
                on = n % 32 not in (1, 2) and rng.integers(2)
                w[e, 0, n] = GATE_ON if on else 0.0
                scale[e, 0, n] = 16.0
                continue
            rows = rng.choice(live, size=int(rng.integers(0, 4)), replace=False)
            w[e, rows, n] = rng.choice([-2.0, -1.0, 1.0, 2.0], rows.size) * s[rows // G]
    if scheme == "w4a16":  # extreme codes on the zero channels: q = 0 and 15 (or 0 with z = 8)
        lo_z, hi_z = (2, 11) if gate_cols else (2, 13)
        z = rng.integers(lo_z, hi_z + 1, (E, groups, N)) if zero_points else np.full((E, groups, N), 8)
        for g in range(groups):
            w[:, 32 * g + 1, :] = -z[:, g, :] * scale[:, g, :]
            w[:, 32 * g + 2, :] = (15 - z[:, g, :]) * scale[:, g, :] if zero_points else 0.0
    elif scheme in ("w_mxfp4", "w_mxfp4_a_mxfp4"):  # block scale s / 2 (gate: 16): a code 6 on a zero channel
        for g in range(groups):
            block_scale = np.where(scale[:, g, :] == 16.0, 16.0, scale[:, g, :] / 2)
            w[:, 32 * g + 1, :] = 6.0 * block_scale * rng.choice([-1.0, 1.0], (E, N))
    return w


def _bounded_weights(rng, scheme, zero_points, E, K, N, regime, act, fp8_block):
    adv = regime == "adversarial"
    if scheme == "dense":
        if adv:
            col = 2.0 ** (np.arange(N) % 8) * 2.0**-10 * rng.choice([-1.0, 1.0], N)
            return round_to(rng.standard_normal((E, K, N)) * col, act)
        return round_to(rng.standard_normal((E, K, N)) * 0.05, act)
    if scheme == "w4a16":
        G = 32
        groups = K // G
        q = rng.integers(0, 16, (E, K, N))
        for e in range(E):
            for g in range(groups):
                rows = 32 * g + rng.choice(G, size=2, replace=False)
                q[e, rows[0], :] = 0
                if zero_points:
                    q[e, rows[1], :] = 15
        if zero_points:
            z = rng.choice([0, 15], (E, groups, N)) if adv else rng.integers(6, 11, (E, groups, N))
        else:
            z = np.full((E, groups, N), 8)
        if adv:
            s = 2.0 ** (np.arange(groups) % 8)[None, :, None] * rng.uniform(1, 2, (E, groups, N)) * 2.0**-12
            ze, zg = int(rng.integers(E)), int(rng.integers(groups))
            q[ze, 32 * zg:32 * (zg + 1), :] = z[ze, zg][None, :]  # an all-zero group
        else:
            s = rng.uniform(0.003, 0.008, (E, groups, N))
        s = round_to(s, act)
        return (q - np.repeat(z, G, axis=1)) * np.repeat(s, G, axis=1)
    if scheme in ("w_mxfp4", "w_mxfp4_a_mxfp4"):
        blocks = K // 32
        codes = rng.integers(0, 16, (E, K, N))
        for e in range(E):
            for b in range(blocks):
                rows = 32 * b + rng.integers(0, 32, N)
                codes[e, rows, np.arange(N)] = rng.choice([7, 15], N)  # +-6 in every block
        if adv:
            sc = 127 - 14 + (np.arange(blocks) % 8)[None, :, None] + np.zeros((E, blocks, N), dtype=np.int64)
            ze, zb = int(rng.integers(E)), int(rng.integers(blocks))
            codes[ze, 32 * zb:32 * (zb + 1), :] = 0  # an all-zero block
        else:
            sc = rng.integers(120, 123, (E, blocks, N))
        return _E2M1.decode(codes) * 2.0 ** (np.repeat(sc, 32, axis=1) - 127)
    bk, bn = fp8_block
    codes = _E4M3.encode(rng.standard_normal((E, K, N)) * 120, saturate=True)
    for e in range(E):
        for kb in range(K // bk):
            for nb in range(N // bn):
                r, c = kb * bk + int(rng.integers(bk)), nb * bn + int(rng.integers(bn))
                codes[e, r, c] = 0x7E if rng.integers(2) else 0xFE  # +-448 in every block
    nkb, nnb = K // bk, N // bn
    if adv:
        s = 2.0 ** (np.arange(nkb * nnb).reshape(nkb, nnb) % 8)[None] * rng.uniform(1, 2, (E, nkb, nnb)) * 2.0**-16
    else:
        s = rng.uniform(2.0**-12, 2.0**-11, (E, nkb, nnb))
    s = round_to(s, "float32")
    return _E4M3.decode(codes) * np.repeat(np.repeat(s, bk, axis=1), bn, axis=2)


def _x(rng, T, H, regime, act):
    if regime == "exact":
        return _exact_x(rng, T, H)
    if regime == "realistic":
        x = rng.standard_normal((T, H))
        x[:, rng.choice(H, size=max(1, H // 32), replace=False)] *= 8
    else:
        x = rng.standard_normal((T, H)) * 4
        x[:, int(rng.integers(H))] = 40.0
        if T > 1:
            x[int(rng.integers(T))] = 0.0
    return round_to(x, act)


def fp8_weight_block(h: int, i: int) -> tuple[int, int]:
    """The (bk, bn) block of an H x I MoE's fp8_block weights: the largest of ``FP8_WEIGHT_BLOCKS``
    dividing both (the case rules keep H and I multiples of 32)."""
    for b in FP8_WEIGHT_BLOCKS:
        if h % b == 0 and i % b == 0:
            return (b, b)
    raise ValueError(f"fp8_block experts need H and I multiples of {FP8_WEIGHT_BLOCKS[-1]}, got H={h}, I={i}")


def act_quant(scheme: str, block: tuple[int, int] | None) -> str | None:
    """How ``scheme`` re-quantizes each GEMM's input (``ACT_QUANT``; None: not at all), for fp8_block
    with the weight ``block``'s K side as the activation group."""
    name = ACT_QUANT.get(scheme)
    return None if name is None else name.format(bk=block and block[0])


def materialize(case) -> dict:
    """The canonical ``oracle.ops.moe`` problem of a case (module docstring)."""
    d, p = case.dims, case.p
    T, H, I, E, k = d["t"], d["h"], d["i"], d["e"], p["top_k"]
    rng = np.random.default_rng(case.seed)
    regime, act, scheme = case.regime, p["act_dtype"], p["scheme"]
    num_groups, topk_groups = _grouping(p)
    emap = _expert_map(rng, E) if p["ep"] else None
    sel = _selections(rng, T, E, k, p["routing"], p["grouped"])
    logits, bias = _router(rng, sel, E, p, regime)
    x = _x(rng, T, H, regime, act)
    block = fp8_weight_block(H, I) if scheme == "fp8_block" else None
    if regime == "exact":
        w13 = _exact_weights(rng, scheme, p["zp"], E, H, 2 * I, I)
        w2 = _exact_weights(rng, scheme, p["zp"], E, I, H, 0)
    else:
        w13 = _bounded_weights(rng, scheme, p["zp"], E, H, 2 * I, regime, act, block)
        w2 = _bounded_weights(rng, scheme, p["zp"], E, I, H, regime, act, block)
    act_name = p["act"]
    return {
        "x": x, "router_logits": logits, "scoring": p["scoring"], "top_k": k, "renormalize": p["renorm"],
        "num_groups": num_groups, "topk_groups": topk_groups, "correction_bias": bias,
        "w13": w13, "w2": w2,
        "activation": "silu" if act_name in ("silu", "silu7") else "swiglu",
        "swiglu_limit": SWIGLU_LIMIT if act_name in CLAMPED else None,
        "apply_router_weight_on_input": p["weight_on_input"],
        "expert_map": emap,
        "act_quant": act_quant(scheme, block),
    }


MATERIALIZERS = {OP: materialize}


# ------------------------------------------------------------------ grid

_BASE = {
    "scheme": "dense", "top_k": 2, "scoring": "softmax", "renorm": False, "grouped": False,
    "bias": False, "act": "silu", "weight_on_input": False, "ep": False,
    "routing": "spread", "layout": "gptq", "zp": False, "act_dtype": "float16", "out_dtype": "float32",
}


def _cfg(bm=16, bn=16, bk=32, fuse=1):
    return {"block_m": bm, "block_n": bn, "block_k": bk, "fuse_activation": fuse}


# (scheme, regime, shape overrides, param overrides, config or None for the default)
_GRID = [
    ("dense", "exact", {}, {}, _cfg()),
    ("dense", "exact", {"t": 9}, {"top_k": 1, "routing": "one"}, _cfg(32, 32, 16, 0)),
    ("dense", "exact", {"e": 8, "t": 5}, {"top_k": 4, "routing": "sparse", "out_dtype": "float16"}, _cfg(bk=64)),
    ("dense", "exact", {}, {"top_k": 1, "scoring": "sigmoid", "weight_on_input": True}, _cfg(fuse=0)),
    ("dense", "exact", {"e": 8}, {"top_k": 3, "scoring": "sigmoid", "ep": True, "bias": True},
     _cfg()),
    ("dense", "realistic", {"e": 8, "t": 17}, {"scoring": "sigmoid", "renorm": True, "grouped": True,
                                               "bias": True}, _cfg(bn=32)),
    ("dense", "adversarial", {"t": 17}, {"act": "swiglu7", "renorm": True}, _cfg(bk=16)),
    ("dense", "realistic", {}, {"act_dtype": "bfloat16", "out_dtype": "bfloat16"}, _cfg()),
    ("w4a16", "exact", {}, {"layout": "gptq"}, _cfg(bk=16)),
    ("w4a16", "exact", {}, {"layout": "awq", "zp": True, "act": "swiglu"}, _cfg(bk=32, fuse=0)),
    ("w4a16", "exact", {"e": 6}, {"layout": "nibble", "zp": True, "routing": "sparse"}, _cfg(bk=64)),
    ("w4a16", "realistic", {}, {"layout": "awq", "zp": True, "scoring": "sigmoid", "renorm": True},
     _cfg()),
    ("w4a16", "adversarial", {"t": 33, "e": 8}, {"layout": "gptq", "ep": True}, _cfg(bm=32)),
    ("w4a16", "realistic", {"t": 40}, {"layout": "nibble", "zp": True}, None),
    ("w_mxfp4", "exact", {}, {}, _cfg(bk=16)),
    ("w_mxfp4", "exact", {}, {"top_k": 1, "routing": "one", "renorm": True}, _cfg(bk=64, fuse=0)),
    ("w_mxfp4", "realistic", {"e": 8}, {"grouped": True, "bias": True}, _cfg()),
    ("w_mxfp4", "adversarial", {}, {"act": "swiglu7"}, _cfg()),
    ("w_mxfp4_a_mxfp4", "exact", {}, {}, _cfg()),
    ("w_mxfp4_a_mxfp4", "exact", {"e": 8}, {"ep": True, "routing": "sparse", "act": "swiglu"},
     _cfg(bk=64)),
    ("w_mxfp4_a_mxfp4", "exact", {"t": 1}, {"top_k": 1}, None),
    ("w_mxfp4_a_mxfp4", "realistic", {}, {"scoring": "sigmoid", "renorm": True}, _cfg(fuse=0)),
    ("w_mxfp4_a_mxfp4", "adversarial", {}, {"top_k": 1, "scoring": "sigmoid", "weight_on_input": True},
     _cfg()),
    ("w_mxfp4_a_mxfp4", "realistic", {"i": 64}, {"act": "swiglu7", "out_dtype": "float16"}, None),
    ("fp8_block", "realistic", {}, {}, _cfg(bk=32)),
    ("fp8_block", "adversarial", {"e": 8}, {"act": "swiglu7", "ep": True}, _cfg(bk=64, fuse=0)),
    ("fp8_block", "realistic", {"h": 128, "i": 128}, {"scoring": "sigmoid", "renorm": True}, _cfg(bk=128)),
    ("dense", "exact", {"t": 1}, {"top_k": 1}, None),
]


def grid(adapter) -> list[Case]:
    cases = []
    for idx, (scheme, regime, shape, params, cfg) in enumerate(_GRID):
        if cfg is not None and any(v not in adapter.tunables.get(k, (v,)) for k, v in cfg.items()):
            continue
        layout = params.get("layout", "gptq")
        if scheme == "w4a16" and adapter.layouts and layout not in adapter.layouts:
            continue
        dims = {"t": 7, "h": 64, "i": 32, "e": 4, **shape}
        cases.append(SPEC.case(shape=dims, params={**_BASE, "scheme": scheme, **params}, config=cfg or {},
                               regime=regime, seed=idx))
    return cases


GRIDS = {OP: grid}


# ------------------------------------------------------------------ strategy


@st.composite
def _cases(draw, adapter) -> Case:
    from qkcheck.cases.space import CaseSpace

    space = CaseSpace(SPEC, adapter)
    schemes = [s for s in space.values("scheme") if s != "fp8_block" or fp8_runs_here()]
    scheme = draw(st.sampled_from(schemes) if schemes else st.nothing())
    k = draw(space.sample("top_k"))
    # grouped top-k draws an expert count it takes (even, two groups of at least max(2, top_k)),
    # so it is drawn as often as the space says rather than only where e happens to fit
    grouped = draw(space.sample("grouped"))
    e = 2 * draw(st.integers(max(2, k), 4)) if grouped else draw(st.integers(k, 8))
    routing = draw(space.sample("routing"))
    if routing == "sparse" and e <= k:
        routing = "spread"
    on_input = k == 1 and draw(space.sample("weight_on_input"))
    params = {
        "scheme": scheme, "top_k": k, "scoring": draw(space.sample("scoring")),
        "renorm": draw(space.sample("renorm")), "grouped": grouped, "bias": draw(space.sample("bias")),
        "act": draw(space.sample("act")), "weight_on_input": on_input,
        "ep": draw(space.sample("ep")), "routing": routing,
        "layout": draw(space.sample("layout")) if scheme == "w4a16" else "gptq",
        "zp": draw(space.sample("zp")) if scheme == "w4a16" else False,
        "act_dtype": draw(space.sample("act_dtype")),
        "out_dtype": draw(space.sample("out_dtype")),
    }
    regimes = ["exact", "realistic", "adversarial"]
    if scheme == "fp8_block" or params["act"] in CLAMPED or (
            k == 3 and (params["scoring"] == "softmax" or params["renorm"])):
        regimes.remove("exact")
    regime = draw(st.sampled_from(regimes))
    dims = {"t": draw(st.integers(1, 24)), "h": draw(st.sampled_from((32, 64, 96))),
            "i": draw(st.sampled_from((32, 64))), "e": e}
    config = {}
    tun = {key: tuple(vals) for key, vals in adapter.tunables.items() if key in TUNABLES}  # declared only
    if tun and draw(st.booleans()):
        for key, vals in tun.items():
            if key == "block_k":
                vals = [b for b in vals if b <= 64 and (scheme != "fp8_block" or b >= 32)] or list(vals)
            config[key] = draw(st.sampled_from(vals))
    return SPEC.case(shape=dims, params=params, config=config, regime=regime, seed=draw(st.integers(0, 2**16)))


STRATEGIES = {OP: _cases}
