"""The bundled MXFP4 Triton GEMM (W4A16 and W4A4) against a float64 oracle, in the exact regime.

Exact regime: e2m1 codes cover all 16 values, E8M0 scale codes sit near 127 (powers of two
2**-2 .. 2**1), W4A16 activations are small integers (-4..4), bias is a small integer. Every
decoded operand is then exact in fp16 and bf16, every product a multiple of 2**-5 below 2**8 and
every partial sum below 2**16, so fp32 accumulation is exact in any order and the only correct
output is RNE(reference) in the output dtype: outputs are compared bit-exactly (bound 0).

Scale codes change from one 32-element block to the next along K in every row / column
(``125 + (g + n) % 4`` for weights, ``126 + (m + g) % 3`` for activations), so a kernel that
applies a neighbouring block's scale to a k changes the output.

The reference decodes with ``oracle.schemes`` (the "mxfp4" scheme: e2m1 codes, E8M0 scales,
blocks of 32) and packs with ``oracle.schemes.pack_codes`` -- the kernel and the test read the
same storage records, and the kernel's are checked to be the scheme's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from qkcheck.kernels.mxfp4 import kernel as mx
from qkcheck.kernels.mxfp4 import op as ops_mxfp4
from qkcheck.kernels.mxfp4.kernel import MXFP4Config, default_config, mxfp4_gemm
from qkcheck.kernels.probes import skip_reason
from qkcheck.oracle.compare import compare
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.packing import NIBBLES_K_ACTIVATION, NIBBLES_K_WEIGHT, pack
from qkcheck.oracle.schemes import QTensor, dequantize, get_scheme, pack_codes
from tests.kernels.conftest import assert_exact as exact
from tests.kernels.conftest import expected_output

SCHEME = get_scheme("mxfp4")
E2M1 = FORMATS["float4_e2m1fn"]
E8M0 = FORMATS["float8_e8m0fnu"]
BLOCK = 32
ACT_EXACT_RANGE = (-4, 4)
BIAS_EXACT_RANGE = (-8, 8)
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def test_kernel_reads_the_mxfp4_scheme_storage():
    """The kernel's layout facts are the oracle's MX records (no parallel definitions)."""
    assert mx.WEIGHT_PACKING == SCHEME.packing == NIBBLES_K_WEIGHT
    assert mx.ACT_PACKING == NIBBLES_K_ACTIVATION
    assert mx.SCALE_BLOCK == SCHEME.group_size == BLOCK
    assert (mx.W_LOW_ELEMENT, mx.A_LOW_ELEMENT) == (0, 0)  # low nibble = even k
    assert E8M0.decode_table[mx.SCALE_NEUTRAL_CODE] == 1.0 and np.isnan(E8M0.decode_table[mx.SCALE_NAN_CODE])


# ------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class MxCase:
    act: str  # "a16": fp16/bf16 activations; "mxfp4": packed e2m1 activations with E8M0 scales
    M: int
    N: int
    K: int
    config: MXFP4Config | None
    bias: bool = False
    act_dtype: torch.dtype = torch.float16  # a16 only
    compute_dtype: torch.dtype | None = None  # mxfp4 only (None: the launcher's default, bf16)
    out_dtype: torch.dtype = torch.float16
    scale_dtype: torch.dtype = torch.uint8
    seed: int = 0

    @property
    def dot_dtype(self) -> torch.dtype | None:
        """The dtype the decoded operands meet in tl.dot (None: tl.dot_scaled)."""
        if self.config is not None and self.config.dot_scaled:
            return None
        if self.act == "a16":
            return self.act_dtype
        return self.compute_dtype or mx.DEFAULT_W4A4_COMPUTE

    @property
    def id(self) -> str:
        cfg = self.config
        tiles = "default" if cfg is None else (
            f"bm{cfg.block_m}-bn{cfg.block_n}-bk{cfg.block_k}-sk{cfg.split_k}" + ("-dotscaled" if cfg.dot_scaled else "")
        )
        act = f"a16-{DTYPE_NAMES[self.act_dtype]}" if self.act == "a16" else (
            "mxfp4-" + ("dot_scaled" if self.dot_dtype is None else DTYPE_NAMES[self.dot_dtype])
        )
        parts = [act, f"{self.M}x{self.N}x{self.K}", tiles, "bias" if self.bias else "nobias",
                 f"to-{DTYPE_NAMES[self.out_dtype]}"]
        if self.scale_dtype != torch.uint8:
            parts.append("scales-e8m0fnu")
        return "-".join(parts)


@dataclass
class Materialized:
    """Canonical inputs (NumPy, for the oracle) and their packed torch twins (for the kernel)."""

    w: QTensor  # e2m1 codes [K, N], E8M0 scales [K/32, N]
    act: np.ndarray  # float64 [M, K]: x (a16) or dequantized a (mxfp4)
    a: QTensor | None
    bias: np.ndarray | None
    args: tuple
    kwargs: dict


def mx_qtensor(codes: np.ndarray, scale_codes: np.ndarray, axis: int) -> QTensor:
    """Canonical e2m1 codes and E8M0 scale codes as an ``oracle.schemes`` QTensor."""
    return QTensor(codes=codes.astype(np.uint8), scales=E8M0.decode_table[scale_codes],
                   scale_codes=scale_codes.astype(np.uint8), zeros=None, global_scale=None,
                   scheme=SCHEME, axis=axis)


def exact_weight(rng, K: int, N: int) -> QTensor:
    codes = rng.integers(0, 16, (K, N))
    g = np.arange(K // BLOCK)[:, None]
    scale_codes = 125 + (g + np.arange(N)[None, :]) % 4  # 2**-2 .. 2**1, differs block to block
    return mx_qtensor(codes, scale_codes, axis=0)


def exact_activation(rng, M: int, K: int) -> QTensor:
    codes = rng.integers(0, 16, (M, K))
    scale_codes = 126 + (np.arange(M)[:, None] + np.arange(K // BLOCK)[None, :]) % 3  # 2**-1 .. 2**1
    return mx_qtensor(codes, scale_codes, axis=1)


def to_torch_scales(codes: np.ndarray, dtype: torch.dtype, device: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.uint8)).to(device)
    return t if dtype == torch.uint8 else t.view(dtype)


def materialize(case: MxCase, device: str = "cpu") -> Materialized:
    rng = np.random.default_rng(case.seed)
    w = exact_weight(rng, case.K, case.N)
    stored_w = pack_codes(w)
    a = None
    if case.act == "a16":
        act = rng.integers(ACT_EXACT_RANGE[0], ACT_EXACT_RANGE[1] + 1, (case.M, case.K)).astype(np.float64)
        first = torch.from_numpy(act).to(device, case.act_dtype)
        a_scale = None
        bias_dtype = case.act_dtype
    else:
        a = exact_activation(rng, case.M, case.K)
        act = dequantize(a)
        stored_a = pack_codes(a)
        first = torch.from_numpy(stored_a.qweight).to(device)
        a_scale = to_torch_scales(stored_a.scales, case.scale_dtype, device)
        bias_dtype = torch.float32
    bias = rng.integers(BIAS_EXACT_RANGE[0], BIAS_EXACT_RANGE[1] + 1, case.N).astype(np.float64) if case.bias else None
    args = (first, torch.from_numpy(stored_w.qweight).to(device), to_torch_scales(stored_w.scales, case.scale_dtype, device))
    kwargs = dict(
        a_scale=a_scale, bias=None if bias is None else torch.from_numpy(bias).to(device, bias_dtype),
        out_dtype=case.out_dtype, compute_dtype=case.compute_dtype, config=case.config,
    )
    return Materialized(w, act, a, bias, args, kwargs)


def reference(m: Materialized, w_values: np.ndarray | None = None, act_values: np.ndarray | None = None) -> np.ndarray:
    """float64 ``act @ dequant(w) (+ bias)`` (elementwise products and sums: IEEE for inf/NaN)."""
    w = dequantize(m.w) if w_values is None else w_values
    act = m.act if act_values is None else act_values
    out = (act[:, :, None] * w[None, :, :]).sum(axis=1)
    return out if m.bias is None else out + m.bias


def assert_exact(out: torch.Tensor, ref: np.ndarray, out_dtype: torch.dtype) -> None:
    """``tests.kernels.conftest.assert_exact`` with NaN matching NaN (the decode tests' NaN blocks)."""
    __tracebackhide__ = True
    exact(out, ref, out_dtype, nan_equal=True)


def uncheckable_reason(case: MxCase) -> str | None:
    """Why this machine cannot check the case (an interpreter probe found a defect), or None."""
    # tl.dot_scaled is emulated by the interpreter in float32 NumPy (no bf16 arithmetic involved)
    compute = "fp32" if case.dot_dtype is None else DTYPE_NAMES[case.dot_dtype]
    # with split_k > 1 the launcher (torch) casts the fp32 sum; only split_k == 1 converts in-kernel
    in_kernel_cast = case.config is None or case.config.split_k == 1
    return skip_reason(compute_dtype=compute, fp8_output=False,
                       output_dtype=DTYPE_NAMES[case.out_dtype] if in_kernel_cast else None)


def skip_if_uncheckable(case: MxCase) -> None:
    reason = uncheckable_reason(case)
    if reason:
        pytest.skip(reason)


def run_case(case: MxCase, device: str) -> None:
    skip_if_uncheckable(case)
    m = materialize(case, device)
    out = mxfp4_gemm(*m.args, **m.kwargs)
    assert_exact(out, reference(m), case.out_dtype)


def cfg(block_m=16, block_n=32, block_k=32, split_k=1, **kw) -> MXFP4Config:
    return MXFP4Config(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k, **kw)


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


W4A4_FP16 = dict(act="mxfp4", compute_dtype=torch.float16)  # the W4A4 dot dtype the interpreter computes right
ACTS = (dict(act="a16"), W4A4_FP16)


# --- BLOCK_K equal to and larger than the 32-element scale block --------------------------------------
# M=5 and N=40 leave tails in both tile dimensions (block_m=16, block_n=32).
BLOCK_K_CASES = [MxCase(M=5, N=40, K=256, config=cfg(block_k=bk), **act) for act in ACTS for bk in (32, 64, 128, 256)]


@pytest.mark.parametrize("case", params(BLOCK_K_CASES))
def test_block_k_vs_scale_block(case, device):
    run_case(case, device)


# --- bias, output dtype, split-K -------------------------------------------------------------------------
EPILOGUE_CASES = [
    MxCase(M=7, N=48, K=128, config=cfg(block_k=64, split_k=sk), bias=bias, out_dtype=out, **act)
    for act in ACTS
    for bias, out in ((True, torch.float16), (True, torch.float32), (False, torch.float32), (True, torch.bfloat16))
    for sk in (1, 2)
]


@pytest.mark.parametrize("case", params(EPILOGUE_CASES))
def test_bias_out_dtype_split_k(case, device):
    run_case(case, device)


# --- M / N / K tails relative to the tiles ------------------------------------------------------------------
TAIL_CASES = [
    MxCase(M=m, N=n, K=k, config=cfg(block_m=bm, block_n=bn, block_k=bk, split_k=sk), bias=True,
           out_dtype=torch.float32, **act)
    for act in ACTS
    for m, n, k, bm, bn, bk, sk in (
        (1, 8, 64, 16, 32, 32, 1),  # M=1, N smaller than one tile
        (17, 72, 192, 16, 32, 128, 1),  # M, N and K tails (K = 1.5 tiles: half the last tile's blocks)
        (33, 40, 96, 32, 16, 64, 2),  # K tail inside the second split
        (20, 24, 192, 16, 16, 32, 4),  # 6 K tiles over 4 splits: the last split is empty
    )
]


@pytest.mark.parametrize("case", params(TAIL_CASES))
def test_tails(case, device):
    run_case(case, device)


# --- bf16: checkable only where the probes say the interpreter computes bf16 right -------------------------
BF16_CASES = [
    MxCase("a16", M=5, N=40, K=128, config=cfg(block_k=64), bias=True, act_dtype=torch.bfloat16, out_dtype=out)
    for out in (torch.bfloat16, torch.float32)
] + [
    MxCase("mxfp4", M=5, N=40, K=128, config=cfg(block_k=bk), bias=True, compute_dtype=ct, out_dtype=torch.float32)
    for bk, ct in ((64, torch.bfloat16), (128, None))  # None: the W4A4 default compute dtype (bf16)
]


@pytest.mark.parametrize("case", params(BF16_CASES))
def test_bf16_compute(case, device):
    run_case(case, device)


# --- the launcher's own choices, scale dtype, strided operands ----------------------------------------------
DEFAULT_CONFIG_CASES = [
    MxCase("a16", M=m, N=64, K=256, config=None, bias=True) for m in (3, 40, 100)
] + [
    MxCase("mxfp4", M=20, N=64, K=256, config=None, compute_dtype=torch.float16, out_dtype=torch.float32),
    MxCase("mxfp4", M=20, N=64, K=256, config=None, out_dtype=torch.float32),  # bf16 compute
]


@pytest.mark.parametrize("case", params(DEFAULT_CONFIG_CASES))
def test_default_config(case, device):
    run_case(case, device)


def test_default_config_spans_scale_blocks():
    """The tile table picks BLOCK_K above the scale block (the kernel loads a scale per k)."""
    config = default_config(16, 4096, 4096)
    assert config.block_k > BLOCK and config.block_k % BLOCK == 0
    assert default_config(1, 8, 32).block_k == BLOCK  # clamped to K, never below one scale block


@pytest.mark.parametrize("case", params([
    MxCase("a16", M=6, N=40, K=128, config=cfg(block_k=64), scale_dtype=torch.float8_e8m0fnu),
    MxCase("mxfp4", M=6, N=40, K=128, config=cfg(block_k=128), compute_dtype=torch.float16,
           out_dtype=torch.float32, scale_dtype=torch.float8_e8m0fnu),
]))
def test_float8_e8m0fnu_scales(case, device):
    """E8M0 scales may come as torch.float8_e8m0fnu: the same bytes as the uint8 codes."""
    run_case(case, device)


@pytest.mark.parametrize("act", [pytest.param(a, id=a["act"]) for a in ACTS])
def test_strided_operands(act, device):
    """Every operand read through its strides: column slices of wider tensors, a transposed x."""
    case = MxCase(M=9, N=24, K=128, config=cfg(block_k=64), bias=True, out_dtype=torch.float32, **act)
    skip_if_uncheckable(case)
    m = materialize(case, device)

    def widened(t: torch.Tensor, axis: int) -> torch.Tensor:
        wide = torch.zeros([s * 2 if i == axis else s for i, s in enumerate(t.shape)], dtype=t.dtype, device=t.device)
        view = wide[:, ::2] if axis == 1 else wide[::2]
        view.copy_(t)
        return view

    first, w, w_scale = m.args
    first = first.t().contiguous().t() if case.act == "a16" else widened(first, 1)
    kwargs = dict(m.kwargs)
    if kwargs["a_scale"] is not None:
        kwargs["a_scale"] = widened(kwargs["a_scale"], 0)
    args = (first, widened(w, 1), widened(w_scale, 0))
    assert not all(t.is_contiguous() for t in args)
    assert_exact(mxfp4_gemm(*args, **kwargs), reference(m), case.out_dtype)


def test_empty_m_and_zero_k(device):
    case = MxCase("a16", M=0, N=40, K=64, config=cfg(), bias=True)
    m = materialize(case, device)
    out = mxfp4_gemm(*m.args, **m.kwargs)
    assert out.shape == (0, 40) and out.dtype == torch.float16 and out.device == m.args[0].device
    # K = 0: an empty reduction, so the output is the bias
    x = torch.zeros((3, 0), dtype=torch.float16, device=device)
    w = torch.zeros((0, 8), dtype=torch.uint8, device=device)
    s = torch.zeros((0, 8), dtype=torch.uint8, device=device)
    bias = torch.arange(8, dtype=torch.float32, device=device)
    out = mxfp4_gemm(x, w, s, bias=bias, out_dtype=torch.float32)
    assert torch.equal(out.cpu(), bias.cpu().expand(3, 8))


@settings(max_examples=8)
@given(
    data=st.data(),
    act=st.sampled_from(["a16", "mxfp4"]),
    M=st.integers(1, 40),
    N=st.integers(1, 72),
    k_blocks=st.integers(1, 8),
    block_k=st.sampled_from([32, 64, 128, 256]),
)
def test_exact_regime_property(data, act, M, N, k_blocks, block_k, device):
    """Any shape with K a multiple of 32, any BLOCK_K >= 32, both activation kinds: RNE(reference)."""
    split_k = data.draw(st.sampled_from([1, 2]), label="split_k")
    case = MxCase(act, M=M, N=N, K=BLOCK * k_blocks, config=cfg(block_k=block_k, split_k=split_k), bias=True,
                  out_dtype=torch.float32, compute_dtype=torch.float16 if act == "mxfp4" else None,
                  seed=M * 1000 + N)
    run_case(case, device)


# --- broken twin: one scale per BLOCK_K tile -----------------------------------------------------------------
@triton.jit
def _mxfp4_kernel_one_scale_per_tile(
    a_ptr, as_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_asm, stride_asg,
    stride_wr, stride_wn,
    stride_wsg, stride_wsn,
    stride_os, stride_om, stride_on,
    ACT_MX: tl.constexpr, DOT_SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr,
    W_LOW_ELEMENT: tl.constexpr, A_LOW_ELEMENT: tl.constexpr,
    SCALE_BLOCK: tl.constexpr, NAN_CODE: tl.constexpr, NEUTRAL_CODE: tl.constexpr,
    EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SUBNORMAL_UNIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
):
    """The bundled kernel's decode path with one mistake: each K tile applies the scale of its
    *first* 32-element block to every k of the tile (weights and activations), as if BLOCK_K
    were the scale block. Right when BLOCK_K == 32, wrong whenever a tile spans several blocks.
    (Single-program grid along M/N, no split-K, no dot_scaled: the cases below need no more.)"""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    HALF_K: tl.constexpr = BLOCK_K // 2
    GROUPS_K: tl.constexpr = BLOCK_K // SCALE_BLOCK
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(0, tl.cdiv(K, BLOCK_K)):
        offs_r = tile * HALF_K + tl.arange(0, HALF_K)
        mask_r = offs_r < K // 2
        first_g = tile * GROUPS_K  # BUG: one scale row for the whole tile
        w_bytes = tl.load(w_ptr + offs_r[:, None] * stride_wr + offs_n[None, :] * stride_wn,
                          mask=mask_r[:, None] & mask_n[None, :], other=0)
        w_first = tl.load(ws_ptr + first_g * stride_wsg + offs_n * stride_wsn, mask=mask_n, other=NEUTRAL_CODE)
        w_scale = tl.broadcast_to(w_first[None, :], (GROUPS_K, BLOCK_N))
        w = mx._dequant_weight_tile(w_bytes, w_scale, HALF_K, GROUPS_K, BLOCK_N, COMPUTE, W_LOW_ELEMENT,
                                    NAN_CODE, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT)
        if ACT_MX:
            a_bytes = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_r[None, :] * stride_ak,
                              mask=mask_m[:, None] & mask_r[None, :], other=0)
            a_first = tl.load(as_ptr + offs_m * stride_asm + first_g * stride_asg, mask=mask_m, other=NEUTRAL_CODE)
            a_scale = tl.broadcast_to(a_first[:, None], (BLOCK_M, GROUPS_K))
            a = mx._dequant_act_tile(a_bytes, a_scale, BLOCK_M, HALF_K, GROUPS_K, COMPUTE, A_LOW_ELEMENT,
                                     NAN_CODE, EXP_BITS, MAN_BITS, BIAS, SUBNORMAL_UNIT)
        else:
            offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                        mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        acc = tl.dot(a, w, acc=acc, out_dtype=tl.float32)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _first_block_per_tile(scale_codes: np.ndarray, block_k: int, axis: int) -> np.ndarray:
    """The scale codes the twin applies: block g gets the code of its tile's first block."""
    per_tile = block_k // BLOCK
    g = np.arange(scale_codes.shape[axis])
    return np.take(scale_codes, g // per_tile * per_tile, axis=axis)


@pytest.mark.parametrize("block_k", [32, 64, 128, 256])
@pytest.mark.parametrize("act", [pytest.param(a, id=a["act"]) for a in ACTS])
def test_broken_twin_one_scale_per_tile_is_caught(act, block_k, device):
    """The twin passes the exact check only where it is right (BLOCK_K == 32) and fails it for
    every BLOCK_K > 32; its output is exactly the reference with the first block's scales."""
    case = MxCase(M=8, N=32, K=256, config=cfg(block_k=block_k), out_dtype=torch.float32, **act)
    skip_if_uncheckable(case)
    m = materialize(case, device)
    out = mxfp4_gemm(*m.args, **m.kwargs, kernel=_mxfp4_kernel_one_scale_per_tile).cpu()
    truth = expected_output(reference(m), case.out_dtype)

    w_codes = _first_block_per_tile(m.w.scale_codes, block_k, axis=0)
    twin_w = dequantize(dataclasses.replace(m.w, scales=E8M0.decode_table[w_codes], scale_codes=w_codes))
    twin_act = None
    if m.a is not None:
        a_codes = _first_block_per_tile(m.a.scale_codes, block_k, axis=1)
        twin_act = dequantize(dataclasses.replace(m.a, scales=E8M0.decode_table[a_codes], scale_codes=a_codes))
    assert torch.equal(out, expected_output(reference(m, twin_w, twin_act), case.out_dtype))

    divergence = compare(out.double().numpy(), truth.double().numpy(), 0.0)
    if block_k == BLOCK:
        assert divergence is None
    else:
        assert divergence is not None and divergence.count > divergence.total // 2


# --- validation: every message names the argument, the value, what is allowed, and a fix -------------------
def _base(device, act="a16", M=4, N=32, K=64):
    case = MxCase(act, M=M, N=N, K=K, config=cfg(), bias=True, out_dtype=torch.float32)
    m = materialize(case, device)
    first, w, w_scale = m.args
    return dict(x_or_a=first, w=w, w_scale=w_scale, **m.kwargs)


def _with(**changes):
    def build(device):
        kwargs = _base(device, **changes.pop("base", {}))
        for key, value in changes.items():
            kwargs[key] = value(kwargs) if callable(value) else value
        return kwargs
    return build


def _config(**fields):
    return lambda kw: dataclasses.replace(kw["config"], **fields)


MX = dict(base=dict(act="mxfp4"))
VALIDATION_ERRORS = [
    pytest.param(_with(config=_config(block_k=16)), ValueError,
                 r"config\.block_k=16 must be a power of two and a multiple of the 32-element MX scale block "
                 r"\(allowed: 32, 64, 128, 256.*use 32", id="block_k-below-scale-block"),
    pytest.param(_with(config=_config(block_k=96)), ValueError, r"config\.block_k=96 must be a power of two",
                 id="block_k-not-pow2"),
    pytest.param(_with(config=_config(block_m=24)), ValueError,
                 r"config\.block_m=24 must be a power of two >= 16 .*round it to 32", id="block_m-not-pow2"),
    pytest.param(_with(config=_config(split_k=0)), ValueError, r"config\.split_k=0 must be an integer >= 1",
                 id="split_k-zero"),
    pytest.param(_with(config=_config(num_warps=3)), ValueError, r"config\.num_warps=3 must be a power of two",
                 id="num_warps"),
    pytest.param(_with(config=_config(dot_scaled=2)), ValueError, r"config\.dot_scaled=2 must be 0 .* or 1",
                 id="dot_scaled-value"),
    pytest.param(_with(config=_config(dot_scaled=1)), ValueError,
                 r"config\.dot_scaled=1 needs MXFP4 activations \(a_scale given\)", id="dot_scaled-a16"),
    pytest.param(_with(config=(16, 32, 32)), TypeError, r"config must be a MXFP4Config, got tuple", id="config-type"),
    pytest.param(_with(x_or_a=lambda kw: kw["x_or_a"][:, :48].contiguous(), w=lambda kw: kw["w"][:24],
                       w_scale=lambda kw: kw["w_scale"][:1]), ValueError,
                 r"K=48 must be a multiple of 32 .*pad K to 64 with zero codes", id="K-not-multiple-of-32"),
    pytest.param(_with(**MX, x_or_a=lambda kw: kw["x_or_a"][:, :20].contiguous()), ValueError,
                 r"K=40 must be a multiple of 32", id="mxfp4-K-not-multiple-of-32"),
    pytest.param(_with(x_or_a=lambda kw: kw["x_or_a"].float()), TypeError,
                 r"x_or_a\.dtype=float32 is not an activation dtype \(allowed: float16, bfloat16, or uint8",
                 id="x-dtype"),
    pytest.param(_with(x_or_a=lambda kw: kw["x_or_a"][None]), ValueError, r"x_or_a\.shape=\(1, 4, 64\) must be 2-D",
                 id="x-rank"),
    pytest.param(_with(x_or_a="not a tensor"), TypeError, r"x_or_a must be a torch\.Tensor, got str", id="x-type"),
    pytest.param(_with(**MX, a_scale=None), TypeError,
                 r"x_or_a\.dtype=uint8 but a_scale is None: packed e2m1 activations need their E8M0 scales",
                 id="packed-a-without-a_scale"),
    pytest.param(_with(a_scale=lambda kw: kw["w_scale"][:, :4].t().contiguous()), TypeError,
                 r"x_or_a\.dtype=float16 with a_scale given: MXFP4 activations are packed e2m1 codes",
                 id="a_scale-with-fp16-x"),
    pytest.param(_with(w=lambda kw: kw["w"].to(torch.int32)), TypeError,
                 r"w\.dtype=int32 is not packed e2m1 \(allowed: uint8 \[K // 2, N\]", id="w-dtype"),
    pytest.param(_with(w=lambda kw: torch.cat([kw["w"], kw["w"]])), ValueError,
                 r"w\.shape=\(64, 32\) must be \[K // 2, N\] = \[32, N\] for K=64", id="w-shape"),
    pytest.param(_with(w_scale=lambda kw: kw["w_scale"].float()), TypeError,
                 r"w_scale\.dtype=float32 is not an E8M0 code dtype \(allowed: uint8, float8_e8m0fnu\)",
                 id="w_scale-decoded-values"),
    pytest.param(_with(w_scale=lambda kw: kw["w_scale"][:1]), ValueError,
                 r"w_scale\.shape=\(1, 32\) must be \[K // 32, N\] = \[2, 32\]", id="w_scale-shape"),
    pytest.param(_with(**MX, a_scale=lambda kw: kw["a_scale"][:, :1]), ValueError,
                 r"a_scale\.shape=\(4, 1\) must be \[M, K // 32\] = \[4, 2\]", id="a_scale-shape"),
    pytest.param(_with(**MX, a_scale=lambda kw: kw["a_scale"].to(torch.int8)), TypeError,
                 r"a_scale\.dtype=int8 is not an E8M0 code dtype", id="a_scale-dtype"),
    pytest.param(_with(bias=lambda kw: kw["bias"][:8]), ValueError, r"bias\.shape=\(8,\) must be \[N\] = \[32\]",
                 id="bias-shape"),
    pytest.param(_with(bias=lambda kw: kw["bias"].to(torch.int32)), TypeError,
                 r"bias\.dtype=int32 is not a float dtype", id="bias-dtype"),
    pytest.param(_with(out_dtype=torch.int8), TypeError,
                 r"out_dtype=torch\.int8 is not supported \(allowed: float16, bfloat16, float32\)", id="out_dtype"),
    pytest.param(_with(compute_dtype=torch.bfloat16), ValueError,
                 r"compute_dtype=torch\.bfloat16 differs from the activation dtype float16", id="compute-a16"),
    pytest.param(_with(**MX, compute_dtype=torch.float32), TypeError,
                 r"compute_dtype=torch\.float32 is not a dot dtype \(allowed: float16, bfloat16\)", id="compute-mxfp4"),
    pytest.param(_with(**MX, compute_dtype=torch.float16, config=_config(dot_scaled=1)), ValueError,
                 r"compute_dtype=torch\.float16 with config\.dot_scaled=1.*pass compute_dtype=None",
                 id="compute-with-dot_scaled"),
    pytest.param(_with(w_scale=lambda kw: kw["w_scale"].to("meta")), ValueError,
                 r"tensors are on different devices \(x_or_a on \S+, w on \S+, w_scale on meta.*; move them all to",
                 id="devices"),
]


@pytest.mark.parametrize("build, error, message", VALIDATION_ERRORS)
def test_validation_error(build, error, message, device):
    kwargs = build(device)
    first, w, w_scale = kwargs.pop("x_or_a"), kwargs.pop("w"), kwargs.pop("w_scale")
    with pytest.raises(error, match=message):
        mxfp4_gemm(first, w, w_scale, **kwargs)


def test_op_config_list_length_is_validated(device):
    kw = _base(device)
    with pytest.raises(ValueError, match=r"config=\[16, 32\] has 2 entries \(allowed: 3 to 8"):
        ops_mxfp4.mxfp4_gemm(kw["x_or_a"], kw["w"], kw["w_scale"], None, kw["bias"], torch.float32, None, [16, 32])


# --- custom op: fake (meta) implementation vs the real one -------------------------------------------------
OP_CASES = [
    MxCase("a16", M=5, N=40, K=128, config=cfg(), bias=True),
    MxCase("mxfp4", M=3, N=16, K=64, config=cfg(block_k=64, split_k=2), compute_dtype=torch.float16,
           out_dtype=torch.float32),
    MxCase("mxfp4", M=4, N=24, K=64, config=None, bias=True, out_dtype=torch.bfloat16),
    MxCase("a16", M=0, N=40, K=128, config=cfg(), bias=True, out_dtype=torch.float32),
]


def _op_args(case: MxCase, device: str):
    m = materialize(case, device)
    kw = m.kwargs
    config = None if case.config is None else case.config.as_list()
    return m, (*m.args, kw["a_scale"], kw["bias"], kw["out_dtype"], kw["compute_dtype"], config)


def test_registered_ops_lists_the_op():
    ops = ops_mxfp4.registered_ops()
    assert list(ops) == ["qkcheck::mxfp4_gemm"]
    assert ops["qkcheck::mxfp4_gemm"].op is torch.ops.qkcheck.mxfp4_gemm.default


@pytest.mark.parametrize("case", params(OP_CASES))
def test_fake_matches_real_metadata(case, device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = ops_mxfp4.registered_ops()["qkcheck::mxfp4_gemm"].op
    m, args = _op_args(case, device)
    real = op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*fake_args)
    assert (fake.shape, fake.dtype, fake.device) == (real.shape, real.dtype, real.device)
    if case.M and uncheckable_reason(case) is None:
        assert_exact(real, reference(m), case.out_dtype)


def test_fake_validates_like_the_real_op(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, args = _op_args(OP_CASES[0], device)
    bad = list(args)
    bad[2] = bad[2][:1]  # w_scale with one block row too few
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in bad]
        with pytest.raises(ValueError, match=r"w_scale\.shape=\(1, 40\) must be \[K // 32, N\]"):
            torch.ops.qkcheck.mxfp4_gemm(*fake_args)


def test_opcheck(device):
    _, args = _op_args(OP_CASES[1], device)
    torch.library.opcheck(ops_mxfp4.mxfp4_gemm, args)


# --- decoding outside the exact regime: fp16 range, NaN scales, bf16's full range ----------------------------
# One scale code per column (the same for every K block), so each column's sum has one magnitude.
# Element codes are non-negative (0..7) and x >= 1, so an overflowing column is +inf, not NaN
# (signed codes are covered by the exact-regime tests); each finite column sum is exact in fp32.
def _column_scale_problem(device, scale_codes, act_dtype, seed=1):
    K, M = 64, 4
    N = len(scale_codes)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 8, (K, N))
    codes[:3] = [[7], [6], [3]]  # every column holds 6, 4 and 1.5
    # NaN-scale columns get nonzero codes: there a scale decoded as +inf instead of NaN would
    # give +inf, not the NaN the contract asks for
    nan_columns = np.flatnonzero(np.asarray(scale_codes) == mx.SCALE_NAN_CODE)
    codes[:, nan_columns] = rng.integers(1, 8, (K, nan_columns.size))
    scale_codes = np.broadcast_to(np.asarray(scale_codes)[None, :], (K // BLOCK, N))
    x = rng.integers(1, 5, (M, K)).astype(np.float64)  # no zeros: 0 * inf would hide an inf
    exact_w = E2M1.decode_table[codes] * E8M0.decode_table[np.repeat(scale_codes, BLOCK, axis=0)]
    args = (torch.from_numpy(x).to(device, act_dtype), torch.from_numpy(pack(codes, NIBBLES_K_WEIGHT)).to(device),
            torch.from_numpy(np.ascontiguousarray(scale_codes, dtype=np.uint8)).to(device))
    return x, exact_w, args


# the interpreter's NumPy warns about the infs and NaNs these tests produce on purpose
FP_SPECIALS_WARNINGS = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning",
)


# scale code -> what fp16 makes of e2m1 * 2**(code - 127) (the documented contract)
FP16_RANGE_CODES = {
    0: "2**-127 * e2m1: far below fp16's subnormals -> +-0",
    103: "2**-24: 0.5 -> 0 (tie to even), 1.5 -> 2**-23 (tie to even), 1, 3, 6 exact subnormals",
    110: "2**-17: subnormals, all exact",
    127: "2**0: the e2m1 values themselves",
    140: "2**13: 6 * 2**13 = 49152 is fp16-finite",
    141: "2**14: 4 * 2**14 = 65536 and 6 * 2**14 round to inf; 3 * 2**14 = 49152 finite",
    254: "2**127: every nonzero element is inf in fp16 (6 * 2**127 already overflows float32)",
    255: "NaN: the whole block is NaN, so the column is NaN",
}


@FP_SPECIALS_WARNINGS
def test_fp16_decode_is_rne_of_the_exact_value(device):
    """W4A16 fp16 / W4A4 fp16 compute: the decoded weight is RNE_fp16(e2m1 * 2**(c - 127)) for every
    code -- overflow to inf, RNE into subnormals, NaN blocks -- and the output reduces it exactly."""
    scale_codes = list(FP16_RANGE_CODES)
    x, exact_w, args = _column_scale_problem(device, scale_codes, torch.float16)
    with np.errstate(over="ignore"):  # the inf weights are the point
        w16 = exact_w.astype(np.float16).astype(np.float64)
    assert np.isinf(w16[:, scale_codes.index(141)]).any() and (w16[:, scale_codes.index(103)] == 2.0**-23).any()
    expected = (x[:, :, None] * w16[None]).sum(axis=1)
    assert np.isposinf(expected[:, scale_codes.index(254)]).all() and np.isnan(expected[:, -1]).all()
    out = mxfp4_gemm(*args, out_dtype=torch.float32, config=cfg(block_k=64))
    assert_exact(out, expected, torch.float32)


@FP_SPECIALS_WARNINGS
def test_w4a4_fp16_compute_range_and_nan_rows(device):
    """W4A4 with fp16 compute: the same RNE_fp16 decode for weights; an activation scale code 255
    makes its row NaN; bf16 compute (default) holds the scales fp16 cannot."""
    scale_codes = list(FP16_RANGE_CODES)
    _, exact_w, (_, w, w_scale) = _column_scale_problem(device, scale_codes, torch.float16)
    M, K = 4, 64
    rng = np.random.default_rng(2)
    a_codes = rng.integers(1, 8, (M, K))  # positive: the inf columns stay +inf
    a_scale_codes = np.array([[127, 128], [126, 127], [255, 127], [127, 127]], dtype=np.uint8)
    a_values = E2M1.decode_table[a_codes] * E8M0.decode_table[np.repeat(a_scale_codes, BLOCK, axis=1)]
    a_scale = torch.from_numpy(a_scale_codes).to(device)
    first = torch.from_numpy(pack(a_codes, NIBBLES_K_ACTIVATION)).to(device)
    with np.errstate(over="ignore"):  # the inf weights are the point
        w16 = exact_w.astype(np.float16).astype(np.float64)
    expected = (a_values.astype(np.float16).astype(np.float64)[:, :, None] * w16[None]).sum(axis=1)
    assert np.isnan(expected[2]).all() and np.isposinf(expected[[0, 1, 3], scale_codes.index(141)]).all()
    out = mxfp4_gemm(first, w, w_scale, a_scale=a_scale, out_dtype=torch.float32,
                     compute_dtype=torch.float16, config=cfg(block_k=32))
    assert_exact(out, expected, torch.float32)


BF16_RANGE_CODES = {
    20: "2**-107: far below fp16, exact in bf16 (and float32-normal after the product with x)",
    127: "2**0",
    200: "2**73: far above fp16, exact in bf16; the column sum stays below float32's max",
    255: "NaN",
}


def test_bf16_decode_holds_the_e8m0_range(device):
    """bf16 activations: e2m1 * 2**(c - 127) is exact in bf16 for scales far outside fp16's range."""
    reason = skip_reason(compute_dtype="bf16", fp8_output=False)
    if reason:
        pytest.skip(reason)
    scale_codes = list(BF16_RANGE_CODES)
    x, exact_w, args = _column_scale_problem(device, scale_codes, torch.bfloat16)
    expected = (x[:, :, None] * exact_w[None]).sum(axis=1)
    out = mxfp4_gemm(*args, out_dtype=torch.float32, config=cfg(block_k=64))
    assert_exact(out, expected, torch.float32)


# --- tl.dot_scaled (explicit config choice, W4A4 only) ---------------------------------------------------------
DOT_SCALED_CASES = [
    MxCase("mxfp4", M=5, N=40, K=256, config=cfg(block_k=bk, dot_scaled=1), out_dtype=torch.float32)
    for bk in (32, 64, 128, 256)
] + [
    MxCase("mxfp4", M=17, N=72, K=192, config=cfg(block_k=128, split_k=sk, dot_scaled=1), bias=True,
           out_dtype=out)
    for sk, out in ((1, torch.float16), (2, torch.float32))
]


@pytest.mark.parametrize("case", params(DOT_SCALED_CASES))
def test_dot_scaled(case, device):
    run_case(case, device)


def test_dot_scaled_broken_scales_are_caught(device):
    """The dot_scaled path reads the weight scales through a transposed view; feeding it the
    first block's scale per 64-wide tile (what a wrong stride would do) changes the output."""
    case = MxCase("mxfp4", M=8, N=32, K=256, config=cfg(block_k=64, dot_scaled=1), out_dtype=torch.float32)
    skip_if_uncheckable(case)
    m = materialize(case, device)
    wrong = torch.from_numpy(_first_block_per_tile(m.w.scale_codes, 64, axis=0)).to(device)
    out = mxfp4_gemm(m.args[0], m.args[1], wrong, **m.kwargs).cpu()
    assert compare(out.double().numpy(), expected_output(reference(m), case.out_dtype).double().numpy(), 0.0)
