"""The fused mixture-of-experts family: ``fused_moe``'s reference (router, expert GEMMs, gated
activations, expert maps, activation re-quantization), the per-element bound of a correct
kernel, and its bug hypotheses; the kernel twins are ``kernels/moe``.

Problem (a plain dict; unknown keys raise)
------------------------------------------
=============================  =================================================================
key                            meaning
=============================  =================================================================
x                              [T, H] activations (values of the kernel's compute dtype)
router_logits                  [T, E] router logits (finite)
scoring                        ``"softmax"`` or ``"sigmoid"``
top_k                          experts per token, 1 <= top_k <= E
renormalize                    bool: divide the k selected weights by their sum
num_groups, topk_groups        grouped top-k (both or neither): E experts in ``num_groups``
                               consecutive groups of E / num_groups; only experts of the
                               ``topk_groups`` best groups are eligible
group_score                    ``"top2_sum"`` (default; DeepSeek-V3) or ``"max"`` (DeepSeek-V2,
                               and what vLLM uses when there is no correction bias)
correction_bias                [E] or None: added to the scores for *selection only*
w13                            [E, H, 2I] float64, every (global) expert's dequantized gate-up
                               weight, canonical [K, N]; columns [:I] gate, [I:] up
w2                             [E, I, H] float64, the down projection
activation                     ``"silu"`` (default) or ``"swiglu"``
swiglu_limit                   None or a float > 0: the clamp limit, of either activation
swiglu_alpha, swiglu_up_offset swiglu's alpha (default 1.702) and up offset (default 1.0)
apply_router_weight_on_input   bool (default False); needs top_k == 1
expert_map                     [E] ints or None: global expert -> local index, -1 = not local
act_quant                      None / ``"none"``, or a scheme name / ``Scheme`` applied to the
                               input of *each* GEMM: ``"fp8 per-token-group 128"`` (any fp8
                               format: ``"fp8 e4m3fnuz per-token-group 128"``, UE8M0 scales:
                               ``"... ue8m0"``), ``"mxfp4"`` (1x32, E8M0, OCP floor rule)
topk_ids, topk_weights         [T, k] given routing (global ids, float weights) *instead of*
                               router_logits/scoring/renormalize/groups/bias
gather_rows, scatter_rows      [T, k] ints (diagnosis): the row of x slot (t, j) reads and the row
                               of y it is added to; default t for both
=============================  =================================================================

Weights are always given for all E global experts; with an ``expert_map`` only experts whose
entry is >= 0 contribute (the kernel adapter hands the local slice ``w13[expert_map >= 0]``,
ordered by local index, to the kernel). Local indices must be distinct and < E.

Router
------
``softmax``: ``s = exp(l - max(l)) / sum(exp(l - max(l)))`` over the E logits of a token;
``sigmoid``: ``s = 1 / (1 + exp(-l))``. Selection values ``v = s + correction_bias`` (``v = s``
without a bias). Grouped top-k (both ``num_groups`` and ``topk_groups`` given): group score =
the sum of the two largest ``v`` of the group (``"top2_sum"``, the DeepSeek-V3 rule) or the
largest (``"max"``); the ``topk_groups`` groups with the largest group scores are kept and every
expert of the other groups is excluded. Then the ``top_k`` eligible experts with the largest
``v`` are selected. Weights are the *uncorrected* scores ``s`` of the selected experts,
divided by their sum when ``renormalize``. Ties (in group scores and in ``v``): the lowest
index wins; ``topk_ids`` are ordered by decreasing ``v`` (ties by index).

Tie-ambiguous tokens. A kernel computes scores in float32 and may break ties another way, so
the selection is only determined where it is separated by more than the kernel's possible score
error. For each expert the interval ``[v - err, v + err]`` holds every value a correct kernel
may compute (``err`` = the score's relative error bound below times ``s``, plus the float32
rounding of ``s + bias``, plus 2**-126); groups get the intervals of their scores computed from
the expert intervals. A token is *tie-ambiguous* when the intervals of a selected and an
eligible unselected expert (or group) overlap: genuinely tied scores always are. For such
tokens ``routing_alternatives`` lists every selection a correct kernel may make,
``topk_ids_acceptable`` accepts any of them, and ``fused_moe_bound`` covers the output of
every one of them: a comparison must not fail because a kernel picked another of two tied
experts.

Experts, for each selected (token t, expert e) with weight w, in float64:

    x' = w * x[t] if apply_router_weight_on_input else x[t]
    xq = dequantize(quantize(x', act_quant)) if act_quant else x'        (per token, along H)
    h  = xq @ w13[e];  g = h[:I], u = h[I:]
    G = min(g, limit), U = clip(u, -limit, limit)            (no clamp when limit is None)
    silu:   a = silu(G) * U,  silu(G) = G * sigmoid(G)       (with a limit: the clamped silu*up
                                                              of several MoE kernels)
    swiglu: a = G * sigmoid(alpha * G) * (U + up_offset)    (OpenAI gpt-oss: alpha 1.702, +1)
    aq = dequantize(quantize(a, act_quant)) if act_quant else a          (per row, along I)
    o  = aq @ w2[e]
    y[t] += o if apply_router_weight_on_input else w * o

Bound of a correct kernel (``fused_moe_bound``)
-----------------------------------------------
u_c, u_32, u_o: unit roundoffs of the compute dtype, float32 and the output dtype; eta_c,
eta_o: their smallest subnormals; gamma(n) = n u_32 / (1 - n u_32) (``oracle.bounds.gamma``).
A correct kernel: router in float32, weights dequantized in float32 and rounded to the compute
dtype, GEMMs accumulated in float32, h rounded to the compute dtype, the activation evaluated in float32 and rounded to the
compute dtype, the same re-quantization (computed from its own values), router weight applied
in float32, each expert's output optionally rounded to the compute dtype, the k outputs summed
in float32 (``topk_sum_dtype``), the sum rounded to the output dtype. Every quantity below is a
non-negative per-element array, propagated from the GEMM-1 input to the output:

1. Router weight relative error R (``|w_kernel - w| <= R w``): softmax
   ``eps_i = expm1(2 |l_i - max l| u_32) + 4 u_32`` (argument rounding, twice with the
   ``exp2`` form, and a 4 u_32 ``exp``), ``rho_S = sum_i s_i ((1 + eps_i)(1 + gamma(E)) - 1) +
   E 2**-126``, ``R = (1 + eps)(1 + u_32) / (1 - rho_S) - 1``; sigmoid ``eps = expm1(2 |l| u_32)
   + 4 u_32``, ``R = (1 + eps)(1 + u_32)**2 - 1``; R = 1 where the score underflows float32
   (``l - max l < -80`` / ``l < -80``). Renormalized: ``rho = sum_sel (s_j / sum s)((1 + R_j)
   (1 + gamma(k)) - 1)``, ``R' = (1 + R)(1 + u_32) / (1 - rho) - 1``. Given routing: R = 0.
2. Operand deviations. ``rdev(v) = max(|fl_c(v (1 - 2 u_32)) - v|, |fl_c(v (1 + 2 u_32)) - v|)``
   is how far a value the kernel dequantizes in float32 and rounds to the compute dtype may be
   from v: exact per element (rounding is monotone), 0 for values of the compute dtype. GEMM-1
   operand deviation D_x: ``rdev(x)`` (0 for x given in the compute dtype); with the weight on the
   input ``E_x = w |x| (R + Theta_x (1 + R)) + eta_c / 2``, ``Theta_x = (1 + u_32)(1 + u_c)**2 -
   1``. With re-quantization, d = the requantization deviation (step 3) of x at error
   ``|fl_c(x) - x|`` (of w x at E_x), and ``D_x = d`` for a native dot (``requant_operand=
   "native"``: codes in the dot, scales on float32 partials) or, with code * scale formed in
   the compute dtype (``"compute"``), ``D_x = d + (u_c (|xq| + d) + eta_c / 2 where d > 0, else
   rdev(xq))``.
3. Requantization deviation of a value a_ref known to within err: per group,
   ``amax in [max(|a| - err) (1 - 2 u_32), max(|a| + err) (1 + 2 u_32)]`` (no 2 u_32 for the
   MX floor rule, whose exponent extraction is exact; amax / qmax in float32 for the others)
   gives, through the scheme's own scale rule (monotone), scales ``[s_lo, s_hi]``. RNE is
   monotone, so for scales in that range ``z = a / s`` lies in ``[min(a_lo / s_lo, a_lo /
   s_hi), max(a_hi / s_lo, a_hi / s_hi)]``, widened by 4 u_32 relative (float32 division, or
   multiplication by a reciprocal), the code decodes into ``[v_lo, v_hi] = [dec(enc(z_lo)),
   dec(enc(z_hi))]`` and the dequantized value lies in ``[min(s_lo v_lo, s_hi v_lo), max(s_lo
   v_hi, s_hi v_hi)]`` (float32 ``amax`` rule). Power-of-two rules (UE8M0, MX) take each power
   of two s_j in ``[s_lo, s_hi]`` with its own code interval ``s_j [v_lo(s_j), v_hi(s_j)]``, and
   the union; dividing by a power of two is exact, so no 4 u_32 there: an exactly tied element
   of an exact input is not ambiguous, RNE decides it (a kernel rounding ties away from zero
   is reported). The deviation is the
   distance from the reference's ``dequantize(quantize(a_ref))`` to the far end. Away from
   rounding ties (and scale-rule ties) it is 0 for exact inputs; at a tie it is one step.
4. GEMM over K with operand xq at deviation D and weight W at deviation ``dW = rdev(W)``:
   ``E = D @ |W| + (|xq| + D) @ dW + gamma(K + 4) P``, ``P = |xq| @ |W| + D @ |W| + (|xq| + D) @
   dW`` (products exact in float32 for fp16/bf16, one rounding for float32; K - 1 additions in
   any order, split-K included; two roundings applying per-group scales to float32 partials).
5. h rounded to the compute dtype: ``E_h = E_1 + u_c (|h| + E_1) + eta_c / 2``; E_g, E_u its
   gate and up halves.
6. Activation: with f(G) = G sigmoid(alpha G) (silu: alpha = 1, up_offset = 0, no clamp), whose
   derivative is bounded by L = 1.1 (max silu' = 1.0998...) and clamps being 1-Lipschitz:
   ``E_prop = L E_g (|U + up_offset| + E_u) + |f(G)| E_u``; float32 evaluation
   ``E_eval = (10 + 2 (|alpha G| + |alpha| E_g)) u_32 (|a| + E_prop) + F_0 (|U + up_offset| +
   E_u)`` with ``F_0 = (80 / |alpha|) e**-80 + 2**-126`` (sigmoid underflow); rounded to the
   compute dtype: ``E_a = E_pre + u_c (|a| + E_pre) + eta_c / 2``, ``E_pre = E_prop + E_eval``.
7. GEMM-2 operand deviation D_a: E_a; with re-quantization, d = the requantization deviation
   (step 3) of a at err = E_a and D_a from d as D_x is from d in step 2.
8. Down GEMM: step 4 over K = I with input aq, deviation D_a, weight w2[e] -> E_o.
9. Combination, per output element over the slots (j) added to it:
   ``T = sum_j w_j (E_oj (1 + R_j) + R_j |o_j|) + Theta sum_j w_j (1 + R_j)(|o_j| + E_oj) +
   k eta_c / 2`` with ``Theta = (1 + u_32)(1 + u_c)(1 + gamma_s(k)) - 1`` (weight multiply, the
   per-expert rounding to the compute dtype, the k-term sum: gamma_s for ``topk_sum_dtype``);
   with the weight on the input, w_j = 1 and R_j = 0 here.
10. Output rounding: ``bound = T + u_o (|y| + T) + eta_o / 2``.

Tie-ambiguous tokens: ``bound[t] = max over alternatives S of |y_S - y[t]| + bound_S``, with
``y_S`` the reference output of selection S and ``bound_S`` steps 1-10 for S; past
``MAX_ROUTING_ALTERNATIVES`` selections, an envelope over the union A of the candidate experts:
``sum_A wmax_j |o_j| + |y[t]|`` plus steps 9-10 over A at ``wmax_j`` (a selected weight's largest
possible value). With ``scatter_rows``, rows that an ambiguous token's slots are added to get an
infinite bound (not checked). Given ``topk_ids`` are never ambiguous.

Compute dtype float32 means an IEEE float32 dot; TF32 dots are outside this model.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from qkcheck.oracle.bounds import U32, gamma
from qkcheck.oracle.compare import compare
from qkcheck.oracle.formats import FORMATS, FloatFormat
from qkcheck.oracle.numerics import wide_float
from qkcheck.oracle.reference import VALUES, Finding, OpReference
from qkcheck.oracle.schemes import Scheme, dequantize, get_scheme, quantize

__all__ = [
    "Routing",
    "route",
    "routing_alternatives",
    "topk_ids_acceptable",
    "fused_moe",
    "fused_moe_bound",
    "MoeHypothesis",
    "MOE_HYPOTHESES",
    "diagnose_moe",
    "SCORINGS",
    "ACTIVATIONS",
    "GROUP_SCORES",
    "MAX_ROUTING_ALTERNATIVES",
]

SCORINGS = ("softmax", "sigmoid")
ACTIVATIONS = ("silu", "swiglu")
GROUP_SCORES = ("top2_sum", "max")
SWIGLU_ALPHA = 1.702  # OpenAI gpt-oss
SWIGLU_UP_OFFSET = 1.0  # gpt-oss multiplies by (up + 1)
ACT_LIPSCHITZ = 1.1  # max over x of d/dx (x sigmoid(x)) = 1.0998... at x = 2.3994
EXP_REL = 4 * U32  # relative error of a float32 exp (libdevice: 2 ulp; ex2.approx: 2**-22.5)
UNDERFLOW_ARG = 80.0  # exp(-80) ~ 1.8e-35: float32 scores below this may have lost all precision
TINY32 = 2.0**-126
MAX_ROUTING_ALTERNATIVES = 256
_MAX_GROUP_COMBOS = 4096

_REQUIRED = ("x", "w13", "w2")
_ROUTER_KEYS = ("router_logits", "scoring", "top_k", "renormalize", "num_groups", "topk_groups",
                "correction_bias", "group_score")
_GIVEN_ROUTING_KEYS = ("topk_ids", "topk_weights")
_OTHER_KEYS = ("activation", "swiglu_limit", "swiglu_alpha", "swiglu_up_offset",
               "apply_router_weight_on_input", "expert_map", "act_quant", "gather_rows", "scatter_rows")
_ALLOWED_KEYS = _REQUIRED + _ROUTER_KEYS + _GIVEN_ROUTING_KEYS + _OTHER_KEYS


# ---------------------------------------------------------------- problem parsing


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _float_array(name: str, value, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}; pass float values") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}; see the problem table in oracle/ops/moe.py")
    return np.asarray(arr, dtype=np.float64)


def _int_array(name: str, value, shape: tuple[int, ...], lo: int, hi: int, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(arr == np.rint(arr)):
            arr = arr.astype(np.int64)
        elif arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}; pass an int array")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {tuple(shape)} ({what})")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = int(arr.min()) if arr.min() < lo else int(arr.max())
        raise ValueError(f"{name} holds {bad}, out of range (allowed: {lo}..{hi}; {what})")
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    ok = np.isfinite(arr)
    if not ok.all():
        idx = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise ValueError(f"{name}{list(idx)} is {float(arr[idx])!r}; {name} must be finite (replace NaN/Inf first)")


def _act_scheme(value) -> Scheme | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str):
        scheme = get_scheme(value)
    elif isinstance(value, Scheme):
        scheme = value
    else:
        raise TypeError(f"act_quant={value!r} must be None, a scheme name or a Scheme; pass e.g. "
                        f"'fp8 per-token-group 128' or 'mxfp4'")
    if not (scheme.is_float and scheme.granularity in ("group", "channel") and not scheme.global_scale
            and scheme.zero_point is None):
        raise ValueError(
            f"act_quant={value!r} ({scheme.elem}, granularity {scheme.granularity!r}"
            f"{', global scale' if scheme.global_scale else ''}) is not a per-token dynamic float scheme "
            f"(allowed: float elements, per-token or per-token-group scales, no global scale); pass e.g. "
            f"'fp8 per-token-group 128', 'fp8 e4m3fnuz per-token-group 128', 'mxfp4'"
        )
    return scheme


@dataclass(frozen=True)
class _Spec:
    x: np.ndarray
    w13: np.ndarray
    w2: np.ndarray
    E: int
    I: int
    k: int
    logits: np.ndarray | None
    scoring: str | None
    renormalize: bool
    num_groups: int | None
    topk_groups: int | None
    group_score: str
    bias: np.ndarray | None
    given_ids: np.ndarray | None
    given_weights: np.ndarray | None
    activation: str
    limit: float | None
    alpha: float
    up_offset: float
    on_input: bool
    local: np.ndarray  # bool [E]: expert contributes
    act_quant: Scheme | None
    gather: np.ndarray | None
    scatter: np.ndarray | None

    @property
    def T(self) -> int:
        return self.x.shape[0]

    @property
    def H(self) -> int:
        return self.x.shape[1]


def _flag(p: Mapping, name: str, default=None) -> bool:
    v = p.get(name, default)
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}={v!r} must be a bool (True or False)")
    return bool(v)


def _parse(p: Mapping) -> _Spec:
    if not isinstance(p, Mapping):
        raise TypeError(f"problem must be a mapping of arrays and scalars, got {type(p).__name__}")
    unknown = sorted(set(p) - set(_ALLOWED_KEYS))
    if unknown:
        raise ValueError(f"unknown fused_moe problem key(s) {unknown} (allowed: {', '.join(_ALLOWED_KEYS)}); "
                         f"check the spelling")
    for key in _REQUIRED:
        if p.get(key) is None:
            raise ValueError(f"fused_moe problem lacks {key!r} (required: {', '.join(_REQUIRED)})")
    x = _float_array("x", p["x"], 2)
    _check_finite("x", x)
    w13 = _float_array("w13", p["w13"], 3)
    w2 = _float_array("w2", p["w2"], 3)
    T, H = x.shape
    given = p.get("topk_ids") is not None or p.get("topk_weights") is not None
    if given:
        if p.get("topk_ids") is None or p.get("topk_weights") is None:
            raise ValueError("give both topk_ids and topk_weights (a given routing), or neither (route "
                             "router_logits)")
        clash = [key for key in ("router_logits", "scoring", "renormalize", "num_groups", "topk_groups",
                                 "correction_bias", "group_score") if p.get(key) is not None]
        if clash:
            raise ValueError(f"a given routing (topk_ids, topk_weights) excludes the router keys {clash}; "
                             f"drop them or drop topk_ids/topk_weights")
        E = w13.shape[0]
        ids_arr = np.asarray(p["topk_ids"])
        if ids_arr.ndim != 2 or ids_arr.shape[0] != T:
            raise ValueError(f"topk_ids has shape {ids_arr.shape}, expected [T={T}, k] (one row per token)")
        k = ids_arr.shape[1]
        if p.get("top_k") is not None and p["top_k"] != k:
            raise ValueError(f"top_k={p['top_k']!r} but topk_ids has k={k} columns; make them agree")
        ids = _int_array("topk_ids", ids_arr, (T, k), 0, E - 1, f"global expert ids, E={E} experts in w13")
        if k > 1 and T:
            srt = np.sort(ids, axis=1)
            dup = np.argwhere(srt[:, 1:] == srt[:, :-1])
            if dup.size:
                t = int(dup[0, 0])
                raise ValueError(f"topk_ids[{t}] = {ids[t].tolist()} names expert {int(srt[t, dup[0, 1]])} twice; "
                                 f"each token selects distinct experts")
        tw = _float_array("topk_weights", p["topk_weights"], 2)
        if tw.shape != (T, k):
            raise ValueError(f"topk_weights has shape {tw.shape}, expected {(T, k)} (the shape of topk_ids)")
        _check_finite("topk_weights", tw)
        logits = scoring = bias = num_groups = topk_groups = None
        renormalize, group_score = False, "top2_sum"
    else:
        if p.get("router_logits") is None:
            raise ValueError("fused_moe problem needs router_logits [T, E] (or a given routing: topk_ids and "
                             "topk_weights)")
        logits = _float_array("router_logits", p["router_logits"], 2)
        _check_finite("router_logits", logits)
        if logits.shape[0] != T:
            raise ValueError(f"router_logits has {logits.shape[0]} rows but x has T={T}; one row of logits per token")
        E = logits.shape[1]
        if E < 1:
            raise ValueError("router_logits has no expert columns (E=0); at least one expert is needed")
        scoring = p.get("scoring")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring={scoring!r} is not known (allowed: {', '.join(map(repr, SCORINGS))})")
        k = p.get("top_k")
        if not _is_int(k) or k < 1:
            raise ValueError(f"top_k={k!r} must be a positive int; pass e.g. top_k=2")
        k = int(k)
        if k > E:
            raise ValueError(f"top_k={k} is larger than the number of experts E={E} (allowed: 1..{E}); "
                             f"lower top_k")
        renormalize = _flag(p, "renormalize")
        num_groups, topk_groups = p.get("num_groups"), p.get("topk_groups")
        group_score = p.get("group_score") or "top2_sum"
        if group_score not in GROUP_SCORES:
            raise ValueError(f"group_score={group_score!r} is not known (allowed: {', '.join(map(repr, GROUP_SCORES))})")
        if (num_groups is None) != (topk_groups is None):
            raise ValueError(f"num_groups={num_groups!r} and topk_groups={topk_groups!r}: give both (grouped "
                             f"top-k) or neither")
        if num_groups is not None:
            if not (_is_int(num_groups) and num_groups >= 1 and E % num_groups == 0):
                raise ValueError(f"num_groups={num_groups!r} must be a positive int dividing E={E}")
            if not (_is_int(topk_groups) and 1 <= topk_groups <= num_groups):
                raise ValueError(f"topk_groups={topk_groups!r} must be an int in 1..num_groups={num_groups}")
            num_groups, topk_groups = int(num_groups), int(topk_groups)
            per = E // num_groups
            if group_score == "top2_sum" and per < 2:
                raise ValueError(f"group_score='top2_sum' needs >= 2 experts per group, got E={E} / "
                                 f"num_groups={num_groups} = {per}; use group_score='max' or fewer groups")
            if k > topk_groups * per:
                raise ValueError(f"top_k={k} exceeds the {topk_groups * per} experts of topk_groups={topk_groups} "
                                 f"groups of {per} (allowed: top_k <= {topk_groups * per}); raise topk_groups")
        elif p.get("group_score") is not None:
            raise ValueError("group_score is only meaningful with num_groups/topk_groups; drop it")
        bias = p.get("correction_bias")
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float64)
            if bias.shape != (E,):
                raise ValueError(f"correction_bias has shape {bias.shape}, expected ({E},) (one per expert)")
            _check_finite("correction_bias", bias)
        ids = tw = None
    if w13.shape[0] != E:
        raise ValueError(f"w13 holds {w13.shape[0]} experts but the routing has E={E} (w13 is [E, H, 2I] for "
                         f"every global expert; with expert parallelism scatter the local experts into it)")
    if w13.shape[1] != H or w13.shape[2] % 2 or w13.shape[2] == 0:
        raise ValueError(f"w13 has shape {w13.shape}, expected [E={E}, H={H}, 2I] with columns [:I] gate and "
                         f"[I:] up")
    I = w13.shape[2] // 2
    if w2.shape != (E, I, H):
        raise ValueError(f"w2 has shape {w2.shape}, expected {(E, I, H)} ([E, I, H], I = w13.shape[2] / 2)")
    activation = p.get("activation") or "silu"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not known (allowed: {', '.join(map(repr, ACTIVATIONS))})")
    limit = p.get("swiglu_limit")
    alpha, up_offset = p.get("swiglu_alpha"), p.get("swiglu_up_offset")
    if limit is not None and not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0):
        raise ValueError(f"swiglu_limit={limit!r} must be None or a finite float > 0; gpt-oss uses 7.0")
    if activation == "silu":
        extra = [n for n, v in (("swiglu_alpha", alpha), ("swiglu_up_offset", up_offset)) if v is not None]
        if extra:
            raise ValueError(f"{extra} apply to activation='swiglu' only, got activation='silu'; drop them or "
                             f"use 'swiglu'")
        alpha, up_offset = 1.0, 0.0
    else:
        alpha = SWIGLU_ALPHA if alpha is None else alpha
        up_offset = SWIGLU_UP_OFFSET if up_offset is None else up_offset
        for n, v in (("swiglu_alpha", alpha), ("swiglu_up_offset", up_offset)):
            if not (isinstance(v, (int, float)) and math.isfinite(v)) or (n == "swiglu_alpha" and v == 0):
                raise ValueError(f"{n}={v!r} must be a finite float{' != 0' if n == 'swiglu_alpha' else ''}")
    on_input = _flag(p, "apply_router_weight_on_input", False)
    if on_input and k != 1:
        raise ValueError(f"apply_router_weight_on_input=True needs top_k == 1 (the input is scaled by one "
                         f"weight), got top_k={k}; set apply_router_weight_on_input=False")
    emap = p.get("expert_map")
    if emap is None:
        local = np.ones(E, dtype=bool)
    else:
        raw = np.asarray(emap)
        if raw.ndim != 1 or raw.shape[0] != E:
            raise ValueError(f"expert_map has shape {raw.shape}, expected ({E},) (one entry per global expert)")
        m = _int_array("expert_map", raw, (E,), -1, E - 1, "local index, or -1 for an expert not on this rank")
        loc = m[m >= 0]
        if np.unique(loc).size != loc.size:
            vals, counts = np.unique(loc, return_counts=True)
            raise ValueError(f"expert_map gives local index {int(vals[counts > 1][0])} to several experts; "
                             f"local indices must be distinct")
        local = m >= 0
    scheme = _act_scheme(p.get("act_quant"))
    if scheme is not None and scheme.granularity == "group" and scheme.group_size != -1:
        g = scheme.group_size
        for dim, n in (("H", H), ("I", I)):
            if n % g:
                raise ValueError(f"act_quant {scheme} quantizes groups of {g} along {dim}={n}, which {g} does not "
                                 f"divide; use H and I that are multiples of {g}")
    rows = {}
    for key in ("gather_rows", "scatter_rows"):
        v = p.get(key)
        rows[key] = None if v is None else _int_array(key, v, (T, k), 0, max(T - 1, 0), "a token row per slot")
    return _Spec(x=x, w13=w13, w2=w2, E=E, I=I, k=k, logits=logits, scoring=scoring, renormalize=renormalize,
                 num_groups=num_groups, topk_groups=topk_groups, group_score=group_score, bias=bias,
                 given_ids=ids, given_weights=tw, activation=activation, limit=None if limit is None else float(limit),
                 alpha=float(alpha), up_offset=float(up_offset), on_input=on_input, local=local,
                 act_quant=scheme, gather=rows["gather_rows"], scatter=rows["scatter_rows"])


# ---------------------------------------------------------------- router


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _scores_and_rel_err(s: _Spec) -> tuple[np.ndarray, np.ndarray]:
    """Scores [T, E] (float64) and R [T, E], the relative error bound of a float32 kernel's scores."""
    lg = s.logits
    E = lg.shape[1]
    if s.scoring == "softmax":
        d = lg - lg.max(axis=1, keepdims=True) if lg.size else lg
        e = np.exp(d)
        p = e / e.sum(axis=1, keepdims=True)
        eps = np.expm1(2 * np.abs(d) * U32) + EXP_REL
        rho = (p * ((1 + eps) * (1 + gamma(E)) - 1)).sum(axis=1, keepdims=True) + E * TINY32
        rel = np.where(rho < 1, (1 + eps) * (1 + U32) / np.maximum(1 - rho, 1e-300) - 1, np.inf)
        rel = np.where(d < -UNDERFLOW_ARG, np.maximum(rel, 1.0), rel)
        return p, rel
    p = _sigmoid(lg)
    eps = np.expm1(2 * np.abs(lg) * U32) + EXP_REL
    rel = (1 + eps) * (1 + U32) ** 2 - 1
    return p, np.where(lg < -UNDERFLOW_ARG, np.maximum(rel, 1.0), rel)


def _weights(scores: np.ndarray, rel: np.ndarray, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weights and their relative error bound from the selected scores [..., k]."""
    if not renormalize:
        return scores, rel
    k = scores.shape[-1]
    tot = scores.sum(axis=-1, keepdims=True)
    safe = np.where(tot > 0, tot, 1.0)
    w = scores / safe
    rho = (w * ((1 + rel) * (1 + gamma(k)) - 1)).sum(axis=-1, keepdims=True)
    r = np.where(rho < 1, (1 + rel) * (1 + U32) / np.maximum(1 - rho, 1e-300) - 1, np.inf)
    return w, r


def _top2_sum(a: np.ndarray) -> np.ndarray:
    """Sum of the two largest along the last axis."""
    part = np.partition(a, a.shape[-1] - 2, axis=-1)
    return part[..., -2] + part[..., -1]


@dataclass(frozen=True)
class Routing:
    """The router's result.

    topk_ids: int64 [T, k] global expert ids, by decreasing selection value (ties: lowest id).
    topk_weights: float64 [T, k] their weights (uncorrected scores, renormalized if asked).
    tie_ambiguous: bool [T]: tokens whose selection a correct float32 kernel may make otherwise
        (see the module docstring); never set for a given routing.
    weight_rel_err: float64 [T, k]: bound on a correct kernel's relative weight error.
    """

    topk_ids: np.ndarray
    topk_weights: np.ndarray
    tie_ambiguous: np.ndarray
    weight_rel_err: np.ndarray


@dataclass(frozen=True)
class _RouterState:
    scores: np.ndarray  # [T, E]
    rel: np.ndarray  # [T, E]
    lo: np.ndarray  # selection value intervals [T, E]
    hi: np.ndarray
    v: np.ndarray


def _router_state(s: _Spec) -> _RouterState:
    scores, rel = _scores_and_rel_err(s)
    v = scores if s.bias is None else scores + s.bias
    err = rel * scores + U32 * np.abs(v) + TINY32
    return _RouterState(scores, rel, v - err, v + err, v)


def _group_intervals(s: _Spec, lo: np.ndarray, hi: np.ndarray, v: np.ndarray):
    n = lo.shape[0]
    shape = (n, s.num_groups, s.E // s.num_groups)
    if s.group_score == "top2_sum":
        glo, ghi, gv = (_top2_sum(a.reshape(shape)) for a in (lo, hi, v))
        return glo - U32 * np.abs(glo), ghi + U32 * np.abs(ghi), gv
    return lo.reshape(shape).max(-1), hi.reshape(shape).max(-1), v.reshape(shape).max(-1)


def _route(s: _Spec) -> tuple[Routing, _RouterState | None]:
    T, k = s.T, s.k
    if s.given_ids is not None:
        return Routing(s.given_ids, s.given_weights, np.zeros(T, dtype=bool), np.zeros((T, k))), None
    st = _router_state(s)
    rows = np.arange(T)[:, None]
    eligible = np.ones((T, s.E), dtype=bool)
    amb = np.zeros(T, dtype=bool)
    if s.num_groups is not None and s.topk_groups < s.num_groups:
        glo, ghi, gv = _group_intervals(s, st.lo, st.hi, st.v)
        order = np.argsort(-gv, axis=1, kind="stable")
        chosen = np.zeros_like(gv, dtype=bool)
        chosen[rows, order[:, : s.topk_groups]] = True
        if T:
            amb |= np.where(chosen, glo, np.inf).min(1) <= np.where(chosen, -np.inf, ghi).max(1)
        eligible = np.repeat(chosen, s.E // s.num_groups, axis=1)
    vm = np.where(eligible, st.v, -np.inf)
    ids = np.argsort(-vm, axis=1, kind="stable")[:, :k]
    sel = np.zeros((T, s.E), dtype=bool)
    sel[rows, ids] = True
    if T:
        other = eligible & ~sel
        amb |= np.where(sel, st.lo, np.inf).min(1) <= np.where(other, st.hi, -np.inf).max(1)
    w, r = _weights(np.take_along_axis(st.scores, ids, 1), np.take_along_axis(st.rel, ids, 1), s.renormalize)
    return Routing(ids.astype(np.int64), w, amb, r), st


def route(problem: Mapping) -> Routing:
    """The reference router's selection for a fused_moe problem (see the module docstring)."""
    return _route(_parse(problem))[0]


def _band(lo: np.ndarray, hi: np.ndarray, cand: np.ndarray, k: int):
    """(surely selected, ambiguous band, how many of the band are selected) among ``cand``
    (indices) when the top ``k`` by a value in [lo, hi] are selected."""
    l, h = lo[cand], hi[cand]
    above = (h[None, :] >= l[:, None]).sum(1) - 1  # others that may reach my value
    below = (l[None, :] > h[:, None]).sum(1)  # others surely above me
    sure = cand[above < k]
    out = below >= k
    band = cand[~out & ~(above < k)]
    return sure, band, k - sure.size


def _token_options(s: _Spec, st: _RouterState, t: int):
    """For one token, a list of (sure experts, band experts, m) per admissible group choice,
    or None when the group choices are too many to list."""
    lo, hi = st.lo[t], st.hi[t]
    if s.num_groups is None or s.topk_groups == s.num_groups:
        group_sets = [np.arange(s.E)]
    else:
        glo, ghi, _ = _group_intervals(s, lo[None], hi[None], st.v[t][None])
        gsure, gband, gm = _band(glo[0], ghi[0], np.arange(s.num_groups), s.topk_groups)
        if math.comb(gband.size, gm) > _MAX_GROUP_COMBOS:
            return None
        per = s.E // s.num_groups
        group_sets = []
        for extra in itertools.combinations(gband.tolist(), gm):
            gs = np.sort(np.concatenate([gsure, np.array(extra, dtype=np.int64)]))
            group_sets.append((gs[:, None] * per + np.arange(per)).ravel())
    return [_band(lo, hi, cand, s.k) for cand in group_sets]


def _alternatives_of(options, k: int, cap: int):
    """Distinct sorted selections, or None past ``cap``."""
    total = sum(math.comb(b.size, m) for _, b, m in options)
    if total > cap:
        return None
    seen = set()
    for sure, band, m in options:
        for extra in itertools.combinations(band.tolist(), m):
            seen.add(tuple(sorted(sure.tolist() + list(extra))))
    return sorted(seen)


def routing_alternatives(problem: Mapping, token: int, *, cap: int = MAX_ROUTING_ALTERNATIVES):
    """Every expert set (sorted tuples) a correct kernel may select for ``token``; a single set
    for tokens that are not tie-ambiguous; None when there are more than ``cap``."""
    s = _parse(problem)
    if not (_is_int(token) and 0 <= token < s.T):
        raise ValueError(f"token={token!r} is not a token index (allowed: 0..{s.T - 1})")
    routing, st = _route(s)
    if st is None or not routing.tie_ambiguous[token]:
        return [tuple(sorted(routing.topk_ids[token].tolist()))]
    options = _token_options(s, st, int(token))
    return None if options is None else _alternatives_of(options, s.k, cap)


def topk_ids_acceptable(problem: Mapping, topk_ids) -> np.ndarray:
    """bool [T]: whether each token's kernel selection (any order) is one a correct kernel may
    make: the reference's set, or for a tie-ambiguous token any admissible alternative."""
    s = _parse(problem)
    routing, st = _route(s)
    ids = _int_array("topk_ids", topk_ids, (s.T, s.k), 0, s.E - 1, "the kernel's selected expert ids")
    ok = (np.sort(ids, 1) == np.sort(routing.topk_ids, 1)).all(1)
    for t in np.flatnonzero(~ok & routing.tie_ambiguous):
        chosen = set(ids[t].tolist())
        if len(chosen) != s.k:
            continue
        options = _token_options(s, st, int(t))
        if options is None:  # too many group choices to list: any experts not surely beaten by k others
            kth_lo = np.sort(st.lo[t])[-s.k]
            ok[t] = all(st.hi[t, e] >= kth_lo for e in chosen)
            continue
        ok[t] = any(set(sure.tolist()) <= chosen <= set(sure.tolist()) | set(band.tolist())
                    for sure, band, _ in options)
    return ok


# ---------------------------------------------------------------- experts


def _act(s: _Spec, g: np.ndarray, u: np.ndarray):
    """(a, G, U + offset, f(G)) for the gated activation."""
    if s.limit is not None:
        g = np.minimum(g, s.limit)
        u = np.clip(u, -s.limit, s.limit)
    f = g * _sigmoid(s.alpha * g)
    up = u + s.up_offset
    return f * up, g, up, f


def _requant(a: np.ndarray, scheme: Scheme, err: np.ndarray | None):
    """(dequantize(quantize(a)), deviation bound or None) -- module docstring, step 3."""
    q = dequantize(quantize(a, scheme, axis=1))
    if err is None:
        return q, None
    n, K = a.shape
    G = K if scheme.granularity == "channel" or scheme.group_size == -1 else scheme.group_size
    ng = K // G
    absa = np.abs(a)
    widen = 0.0 if scheme.scale_rule == "mx_floor" else 2 * U32  # exponent extraction is exact
    amax_lo = np.maximum(absa - err, 0).reshape(n, ng, G).max(-1) * (1 - widen)
    amax_hi = (absa + err).reshape(n, ng, G).max(-1) * (1 + widen)

    def scale_of(amax):  # the scheme's own scale rule, read off a group holding amax and zeros
        probe = np.zeros((n, ng, G))
        probe[:, :, 0] = amax
        sc = quantize(probe.reshape(n, K), scheme, axis=1).scales
        return np.repeat(sc, K // sc.shape[1], axis=1)

    s_lo, s_hi = scale_of(amax_lo), scale_of(amax_hi)
    a_lo, a_hi = a - err, a + err
    fmt: FloatFormat = FORMATS[scheme.elem]

    def values(z_lo, z_hi, slack):  # decoded code interval
        z_lo = z_lo - slack * np.abs(z_lo)
        z_hi = z_hi + slack * np.abs(z_hi)
        return fmt.decode_table[fmt.encode(z_lo, saturate=True)], fmt.decode_table[fmt.encode(z_hi, saturate=True)]

    if scheme.scale_rule == "amax":  # float32 scales in a narrow range: codes and scales bounded apart
        # x / s, x * (1 / s) or x * (qmax / amax) in float32: 4 u_32
        v_lo, v_hi = values(np.minimum(a_lo / s_lo, a_lo / s_hi), np.maximum(a_hi / s_lo, a_hi / s_hi), 4 * U32)
        q_lo = np.minimum(s_lo * v_lo, s_hi * v_lo)
        q_hi = np.maximum(s_lo * v_hi, s_hi * v_hi)
    else:  # power-of-two scales: each possible scale with the codes it gives
        steps = int(np.max(np.log2(s_hi / s_lo))) if s_lo.size else 0
        q_lo, q_hi = np.full_like(a, np.inf), np.full_like(a, -np.inf)
        for j in range(steps + 1):
            sj = np.minimum(s_lo * 2.0**j, s_hi)
            v_lo, v_hi = values(a_lo / sj, a_hi / sj, 0.0)  # dividing by 2**e is exact
            q_lo, q_hi = np.minimum(q_lo, sj * v_lo), np.maximum(q_hi, sj * v_hi)
    return q, np.maximum(np.maximum(q_hi - q, q - q_lo), 0.0)


@dataclass(frozen=True)
class _Dtypes:
    uc: float
    ec: float  # smallest subnormal of the compute dtype
    uo: float
    eo: float
    usum: float  # unit roundoff of the top-k sum's dtype
    name_c: str
    requant_in_compute: bool  # re-quantized operands are formed as code * scale in the compute dtype


def _rounding_dev(v: np.ndarray, dt: _Dtypes) -> np.ndarray:
    """max |fl_c(v') - v| over v' within 2 u_32 of v (a float32 dequantization, then the
    compute dtype): exact per element by monotonicity of rounding; 0 where v is a value of the
    compute dtype (fp16/bf16)."""
    c = wide_float(dt.name_c)
    return np.maximum(np.abs(c.round(v * (1 - 2 * U32)) - v), np.abs(c.round(v * (1 + 2 * U32)) - v))


def _operand_dev(v: np.ndarray, d: np.ndarray | None, dt: _Dtypes) -> np.ndarray:
    """Deviation of a kernel's GEMM operand from the reference's ``v`` when its value before
    any rounding to the compute dtype is within ``d`` of v (module docstring, step 2); ``d`` is
    given for re-quantized operands, which a native dot uses as they are."""
    if d is not None and not dt.requant_in_compute:
        return d
    r = _rounding_dev(v, dt)
    if d is None:
        return r
    return d + np.where(d > 0, dt.uc * (np.abs(v) + d) + dt.ec / 2, r)


def _gemm_err(xin: np.ndarray, dev: np.ndarray, w: np.ndarray, dw: np.ndarray, dt: _Dtypes) -> np.ndarray:
    """Step 4 of the module docstring: ``D @ |W| + (|x| + D) @ dW + gamma(K + 4) P``."""
    wa = np.abs(w)
    p = np.abs(xin) @ wa
    e = np.zeros_like(p)
    if dev.any():
        dd = dev @ wa
        e += dd
        p += dd
    if dw.any():
        dd = (np.abs(xin) + dev) @ dw
        e += dd
        p += dd
    return e + gamma(w.shape[0] + 4) * p


def _run_experts(s: _Spec, tok: np.ndarray, exp: np.ndarray, win: np.ndarray | None,
                 win_rel: np.ndarray | None, xq_tok, dt: _Dtypes | None, wdev: dict | None = None):
    """Exact outputs o [n, H] of the (token row, expert) pairs, and their error bounds E_o
    (None when ``dt`` is None). ``win``: weights applied on the input (or None); ``xq_tok``:
    (xq [T, H], operand deviation [T, H] or None) for inputs without the weight; ``wdev``: a
    cache of the weights' rounding deviations per expert."""
    n, H = tok.size, s.H
    o = np.zeros((n, H))
    eo = None if dt is None else np.zeros((n, H))
    wdev = {} if wdev is None else wdev
    order = np.argsort(exp, kind="stable")
    bounds = np.flatnonzero(np.diff(exp[order])) + 1
    sq = s.act_quant
    for idx in np.split(order, bounds) if n else []:
        e = int(exp[idx[0]])
        rows = tok[idx]
        if win is None:
            xin = xq_tok[0][rows]
            dx = None if xq_tok[1] is None else xq_tok[1][rows]
        else:
            xw = win[idx, None] * s.x[rows]
            ex = None
            if dt is not None:
                theta = (1 + U32) * (1 + dt.uc) ** 2 - 1
                r = win_rel[idx, None]
                ex = np.abs(xw) * (r + theta * (1 + r)) + dt.ec / 2
            if sq is None:
                xin, dx = xw, ex
            else:
                xin, dq = _requant(xw, sq, ex)
                dx = None if dt is None else _operand_dev(xin, dq, dt)
        h = xin @ s.w13[e]
        a, G, up, f = _act(s, h[:, : s.I], h[:, s.I:])
        if dt is None:
            aq = a if sq is None else _requant(a, sq, None)[0]
            o[idx] = aq @ s.w2[e]
            continue
        if e not in wdev:
            wdev[e] = (_rounding_dev(s.w13[e], dt), _rounding_dev(s.w2[e], dt))
        dw13, dw2 = wdev[e]
        e1 = _gemm_err(xin, dx, s.w13[e], dw13, dt)
        eh = e1 + dt.uc * (np.abs(h) + e1) + dt.ec / 2
        eg, eu = eh[:, : s.I], eh[:, s.I:]
        e_prop = ACT_LIPSCHITZ * eg * (np.abs(up) + eu) + np.abs(f) * eu
        f0 = (UNDERFLOW_ARG / abs(s.alpha)) * math.exp(-UNDERFLOW_ARG) + TINY32
        e_eval = ((10 + 2 * (np.abs(s.alpha * G) + abs(s.alpha) * eg)) * U32 * (np.abs(a) + e_prop)
                  + f0 * (np.abs(up) + eu))
        e_pre = e_prop + e_eval
        ea = e_pre + dt.uc * (np.abs(a) + e_pre) + dt.ec / 2
        if sq is None:
            aq, da = a, ea
        else:
            aq, dq = _requant(a, sq, ea)
            da = _operand_dev(aq, dq, dt)
        o[idx] = aq @ s.w2[e]
        eo[idx] = _gemm_err(aq, da, s.w2[e], dw2, dt)
    return o, eo


def _input_quant(s: _Spec, dt: _Dtypes | None):
    """(xq [T, H], its operand deviation [T, H] or None) for GEMM-1 inputs without the weight."""
    if s.act_quant is None or s.on_input:
        return s.x, None if dt is None else _operand_dev(s.x, None, dt)
    if dt is None:
        return _requant(s.x, s.act_quant, None)[0], None
    xdev = np.abs(wide_float(dt.name_c).round(s.x) - s.x)  # the kernel quantizes fl_c(x)
    q, dq = _requant(s.x, s.act_quant, xdev)
    return q, _operand_dev(q, dq, dt)


def _pairs(s: _Spec, rt: Routing):
    """Flattened slots (t * k + j) of the local experts: (slot, token row read, expert)."""
    T, k = s.T, s.k
    slot = np.arange(T * k)
    ids = rt.topk_ids.reshape(-1)
    gather = np.repeat(np.arange(T), k) if s.gather is None else s.gather.reshape(-1)
    keep = s.local[ids]
    return slot[keep], gather[keep], ids[keep]


def _scatter_sum(s: _Spec, contrib: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Sum per-slot rows [n, H] into [T, H] by the slots' destination rows."""
    T, k, H = s.T, s.k, s.H
    if s.scatter is None:
        full = np.zeros((T * k, H))
        full[slots] = contrib
        return full.reshape(T, k, H).sum(axis=1)
    y = np.zeros((T, H))
    np.add.at(y, s.scatter.reshape(-1)[slots], contrib)
    return y


def fused_moe(problem: Mapping) -> np.ndarray:
    """The exact float64 fused-MoE output y [T, H] (module docstring). T = 0 gives [0, H]."""
    s = _parse(problem)
    rt, _ = _route(s)
    slots, tok, exp = _pairs(s, rt)
    w = rt.topk_weights.reshape(-1)[slots]
    xq = _input_quant(s, None)
    o, _ = _run_experts(s, tok, exp, w if s.on_input else None, None, xq, None)
    return _scatter_sum(s, o if s.on_input else w[:, None] * o, slots)


REQUANT_OPERANDS = ("native", "compute")


def _dtypes(compute_dtype: str, out_dtype: str, topk_sum_dtype: str, requant_operand: str) -> _Dtypes:
    if requant_operand not in REQUANT_OPERANDS:
        raise ValueError(f"requant_operand={requant_operand!r} is not known (allowed: 'native': codes in the dot, "
                         f"scales on float32 partial sums; 'compute': code * scale rounded to the compute dtype)")
    try:
        c, o, sm = wide_float(compute_dtype), wide_float(out_dtype), wide_float(topk_sum_dtype)
    except ValueError as err:
        raise ValueError(f"{err}; for an fp8 MoE kernel pass the activation dtype as compute_dtype and describe "
                         f"the fp8 activations with the problem's act_quant") from None
    return _Dtypes(c.unit_roundoff, c.min_subnormal, o.unit_roundoff, o.min_subnormal, sm.unit_roundoff,
                   compute_dtype, requant_operand == "compute")


def _combine_terms(w, r, o_abs, e_o, dt: _Dtypes, k: int):
    """Per-slot rows of step 9 (before summing): returns the [.., H] contribution."""
    nk = k - 1
    gs = nk * dt.usum / (1 - nk * dt.usum)
    theta = (1 + U32) * (1 + dt.uc) * (1 + gs) - 1
    return w * (e_o * (1 + r) + r * o_abs) + theta * w * (1 + r) * (o_abs + e_o) + dt.ec / 2


def fused_moe_bound(problem: Mapping, y, compute_dtype: str, out_dtype: str, *,
                    topk_sum_dtype: str = "float32", requant_operand: str = "native") -> np.ndarray:
    """Per-element bound [T, H] on |kernel - y| for a correct kernel (module docstring, steps
    1-10 and the tie-ambiguous tokens). ``y``: the reference output ``fused_moe(problem)``.
    ``topk_sum_dtype``: the dtype the k expert outputs are summed in. ``requant_operand``
    (with act_quant): ``"native"`` -- the dot takes the codes and the scales multiply float32
    partial sums (fp8 / MX tensor-core kernels); ``"compute"`` -- code * scale is formed in the
    compute dtype first (an emulation that dequantizes to fp16/bf16)."""
    s = _parse(problem)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (s.T, s.H):
        raise ValueError(f"y has shape {y.shape}, expected {(s.T, s.H)} (the fused_moe reference output)")
    dt = _dtypes(compute_dtype, out_dtype, topk_sum_dtype, requant_operand)
    rt, st = _route(s)
    slots, tok, exp = _pairs(s, rt)
    w = rt.topk_weights.reshape(-1)[slots]
    r = rt.weight_rel_err.reshape(-1)[slots]
    xq = _input_quant(s, dt)
    wdev: dict = {}
    o, eo = _run_experts(s, tok, exp, w if s.on_input else None, r if s.on_input else None, xq, dt, wdev)
    if s.on_input:
        w, r = np.ones_like(w), np.zeros_like(r)
    t_sum = _scatter_sum(s, _combine_terms(w[:, None], r[:, None], np.abs(o), eo, dt, s.k), slots)
    bound = t_sum + dt.uo * (np.abs(y) + t_sum) + dt.eo / 2
    amb = np.flatnonzero(rt.tie_ambiguous)
    if amb.size:
        if s.scatter is not None or s.gather is not None:
            hit = s.scatter[amb].ravel() if s.scatter is not None else amb
            bound[hit] = np.inf
        else:
            _ambiguous_bounds(s, st, amb, y, xq, dt, bound, wdev)
    return bound


def _weight_envelope(s: _Spec, st: _RouterState, t: int, cand: np.ndarray, cand_all: np.ndarray):
    """Largest weight and relative weight error any admissible selection from ``cand_all``
    gives each of ``cand`` (weights on the output; 1 and 0 with the weight on the input)."""
    sc, rel = st.scores[t][cand], st.rel[t][cand]
    if s.on_input:
        return np.ones_like(sc), np.zeros_like(sc)
    if not s.renormalize:
        return sc, rel
    den = np.sort(st.scores[t][cand_all])[: s.k].sum()  # smallest possible sum of k selected scores
    if den <= 0:
        return np.ones_like(sc), np.full_like(sc, np.inf)
    rho = (1 + st.rel[t][cand_all].max()) * (1 + gamma(s.k)) - 1  # the renormalized weights sum to 1
    r = (1 + rel) * (1 + U32) / (1 - rho) - 1 if rho < 1 else np.full_like(sc, np.inf)
    return np.minimum(1.0, sc / den), r


def _ambiguous_bounds(s: _Spec, st: _RouterState, amb, y, xq, dt: _Dtypes, bound, wdev: dict) -> None:
    """Overwrite bound rows of tie-ambiguous tokens with the max over their alternatives."""
    plans = []
    for t in amb.tolist():
        options = _token_options(s, st, t)
        alts = None if options is None else _alternatives_of(options, s.k, MAX_ROUTING_ALTERNATIVES)
        if options is None:  # too many group choices to list: every expert is a candidate
            cand = np.arange(s.E)
        else:
            cand = np.unique(np.concatenate([np.concatenate([a, b]) for a, b, _ in options]))
        plans.append((t, cand[s.local[cand]], cand, alts))
    tok = np.concatenate([np.full(c.size, t) for t, c, _, _ in plans])
    exp = np.concatenate([c for _, c, _, _ in plans])
    win = win_rel = None
    if s.on_input:  # top_k == 1: the input weight of expert j does not depend on the rest
        sc, rl = st.scores[tok, exp], st.rel[tok, exp]
        win, win_rel = _weights(sc[:, None], rl[:, None], s.renormalize)
        win, win_rel = win[:, 0], win_rel[:, 0]
    o, eo = _run_experts(s, tok, exp, win, win_rel, xq, dt, wdev)
    start = 0
    for t, cand, cand_all, alts in plans:
        oc, ec = o[start:start + cand.size], eo[start:start + cand.size]
        start += cand.size
        if cand.size == 0:  # no local candidate: every alternative gives 0, as the reference does
            continue
        pos = {int(e): i for i, e in enumerate(cand)}
        if alts is not None:
            ids = np.array(alts, dtype=np.int64)  # [nS, k] global ids
            w, r = _weights(st.scores[t][ids], st.rel[t][ids], s.renormalize)
            if s.on_input:
                w, r = np.ones_like(w), np.zeros_like(r)
            loc = s.local[ids]
            li = np.array([[pos.get(int(e), 0) for e in row] for row in ids])
            w, r = np.where(loc, w, 0.0), np.where(loc, r, 0.0)
            oa, ea = oc[li], ec[li]  # [nS, k, H]
            y_s = (w[..., None] * oa).sum(1)
            t_s = _combine_terms(w[..., None], r[..., None], np.abs(oa), ea, dt, s.k).sum(1)
            b_s = np.abs(y_s - y[t]) + t_s + dt.uo * (np.abs(y_s) + t_s) + dt.eo / 2
            bound[t] = np.maximum(bound[t], b_s.max(0))
        else:
            wmax, rmax = _weight_envelope(s, st, t, cand, cand_all)
            y_env = (wmax[:, None] * np.abs(oc)).sum(0)
            t_env = _combine_terms(wmax[:, None], rmax[:, None], np.abs(oc), ec, dt, s.k).sum(0)
            b = y_env + np.abs(y[t]) + t_env + dt.uo * (y_env + t_env) + dt.eo / 2
            bound[t] = np.maximum(bound[t], b)


# ---------------------------------------------------------------- diagnosis


@dataclass(frozen=True)
class MoeHypothesis:
    """Same shape as ``oracle.diagnosis.Hypothesis``: ``rewrite(problem, context)`` yields
    (rewritten problem, sentence) pairs whose ``fused_moe`` reproduces a class of bug."""

    name: str
    ops: tuple[str, ...]
    rewrite: Callable[[Mapping, Mapping], Iterator[tuple[dict, str]]]


def _with_routing(p: Mapping, ids: np.ndarray, weights: np.ndarray) -> dict:
    out = {key: v for key, v in p.items() if key not in _ROUTER_KEYS}
    out["topk_ids"], out["topk_weights"] = ids, weights
    return out


def token_rows_misplaced(p, ctx):
    s = _parse(p)
    T, k = s.T, s.k
    if T < 2 or s.gather is not None or s.scatter is not None:
        return
    own = np.repeat(np.arange(T)[:, None], k, axis=1)
    for d in (1, -1):
        yield dict(p, gather_rows=(own + d) % T), (
            f"each token's expert inputs are gathered from row t{d:+d}: the token index used to read "
            f"the activations is off by one")
        yield dict(p, scatter_rows=(own + d) % T), (
            f"each token's expert outputs are added into row t{d:+d}: the output row index is off by one")
    rt = route(p)
    flat = rt.topk_ids.reshape(-1)
    order = np.argsort(flat, kind="stable")  # slots sorted by expert, as a MoE kernel processes them
    dest = np.empty(T * k, dtype=np.int64)
    dest[order] = np.arange(T * k) // k
    if not np.array_equal(dest, own.reshape(-1)):
        yield dict(p, scatter_rows=dest.reshape(T, k)), (
            "the expert-sorted order of the (token, expert) pairs is not undone: the pair at sorted "
            "position i is added into row i // top_k")


def weights_of_another_expert(p, ctx):
    w13, w2 = np.asarray(p["w13"]), np.asarray(p["w2"])
    if w13.shape[0] < 2:
        return
    for d in (1, -1):
        yield dict(p, w13=np.roll(w13, -d, axis=0), w2=np.roll(w2, -d, axis=0)), (
            f"expert e computes with the weights of expert e{d:+d} (expert stride or id off by one)")
    yield dict(p, w2=np.roll(w2, -1, axis=0)), "the down projection of expert e+1 is used for expert e"


def router_weight_misapplied(p, ctx):
    s = _parse(p)
    rt = route(p)
    if s.on_input:
        yield dict(p, apply_router_weight_on_input=False), (
            "the router weight is applied to the output instead of the input")
        yield _with_routing(p, rt.topk_ids, np.ones_like(rt.topk_weights)), "the router weight is not applied"
        return
    yield _with_routing(p, rt.topk_ids, rt.topk_weights ** 2), "the router weight is applied twice"
    yield _with_routing(p, rt.topk_ids, np.ones_like(rt.topk_weights)), "the router weight is not applied"


def expert_map_ignored(p, ctx):
    emap = p.get("expert_map")
    if emap is None:
        return
    m = np.asarray(emap)
    if not (m < 0).any():
        return
    yield dict(p, expert_map=None), (
        "the expert map is ignored: experts that are not local (expert_map -1) contribute too")
    if (m >= 0).any():
        last = int(np.flatnonzero(m == m.max())[0])
        w13, w2 = np.array(p["w13"], np.float64), np.array(p["w2"], np.float64)
        w13[m < 0], w2[m < 0] = w13[last], w2[last]
        yield dict(p, expert_map=None, w13=w13, w2=w2), (
            "non-local experts (expert_map -1) are not skipped: index -1 reads the last local expert's weights")


def renormalization_wrong(p, ctx):
    if p.get("topk_ids") is not None:
        return
    if p.get("renormalize"):
        yield dict(p, renormalize=False), "the top-k weights are not renormalized although renormalize=True"
    else:
        yield dict(p, renormalize=True), "the top-k weights are renormalized although renormalize=False"


def routing_group_scoring(p, ctx):
    """Grouped top-k with the groups scored the other way (sum of the top two scores <-> the
    largest score)."""
    if p.get("topk_ids") is not None or p.get("num_groups") is None or p.get("topk_groups") is None:
        return
    mine = p.get("group_score") or "top2_sum"
    other = "max" if mine == "top2_sum" else "top2_sum"
    words = {"top2_sum": "the sum of its two largest scores", "max": "its largest score"}
    yield dict(p, group_score=other), (
        f"grouped top-k scores each expert group by {words[other]} instead of {words[mine]}: other "
        "groups are kept, so other experts are routed to")


MOE_HYPOTHESES: tuple[MoeHypothesis, ...] = (
    MoeHypothesis("token_rows_misplaced", ("fused_moe",), token_rows_misplaced),
    MoeHypothesis("weights_of_another_expert", ("fused_moe",), weights_of_another_expert),
    MoeHypothesis("router_weight_misapplied", ("fused_moe",), router_weight_misapplied),
    MoeHypothesis("expert_map_ignored", ("fused_moe",), expert_map_ignored),
    MoeHypothesis("renormalization_wrong", ("fused_moe",), renormalization_wrong),
    MoeHypothesis("routing_group_scoring", ("fused_moe",), routing_group_scoring),
)


def diagnose_moe(problem: Mapping, actual, *, compute_dtype: str, out_dtype: str,
                 context: Mapping | None = None) -> list[Finding]:
    """Every hypothesis variant whose alternative output (within its own bound) ``actual`` matches."""
    ctx = dict(context or {})
    found: list[Finding] = []
    for hyp in MOE_HYPOTHESES:
        for alt_problem, sentence in hyp.rewrite(problem, ctx):
            try:
                alt = fused_moe(alt_problem)
            except ValueError:
                continue
            bound = fused_moe_bound(alt_problem, alt, compute_dtype, out_dtype)
            if compare(actual, alt, bound) is None:
                found.append(Finding(hyp.name, sentence))
    return found


def _diagnose(ref, problem, actual, *, exact, compute_dtype, out_dtype, context=None) -> list[Finding]:
    del ref, exact  # the hypotheses are judged within their own bound in either regime
    return diagnose_moe(problem, actual, compute_dtype=compute_dtype, out_dtype=out_dtype, context=context)


REFERENCES: tuple[OpReference, ...] = (
    OpReference("fused_moe", fused_moe, bound=fused_moe_bound, axis_names=("token (t)", "hidden (h)"),
                required=_REQUIRED, optional=_ROUTER_KEYS + _GIVEN_ROUTING_KEYS + _OTHER_KEYS,
                judge=VALUES, diagnoser=_diagnose),
)
