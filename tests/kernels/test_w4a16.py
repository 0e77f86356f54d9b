"""The bundled W4A16 Triton GEMM against the float64 oracle, in the exact regime.

Exact regime: activations are small integers (-4..4) in fp16, scales are signed powers of two,
zero points and codes are 4-bit integers, bias is a small integer. Every product and partial sum
is then a multiple of 2**-4 below 2**15, exact in fp32 whatever the accumulation order, so the
only correct output is RNE(reference) in the output dtype: outputs are compared bit-exactly.

Per-group scales are ``±2**(g % 8 - 4)``: consecutive groups differ by a factor of 2, so a
kernel applying any other group's scale to a k row (seed 003: the first group's scale for a
whole BLOCK_K tile) changes the output.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from qkcheck.kernels.probes import skip_reason
from qkcheck.kernels.w4a16 import op as ops
from qkcheck.kernels.w4a16.kernel import (
    GEMV_MAX_BLOCK_M, LAYOUTS, SCALES_GROUPS_IN_TILE, SCALES_ONE_GROUP, SCALES_PER_ROW, W4A16Config, _split_k_epilogue, _store_tile,
    arrival_counters, default_config, gemv_scale_path, scale_path, sub_dots, w4a16_gemm, word_row_groups,
)
from qkcheck.oracle.compare import compare
from qkcheck.oracle.ops import w4a16 as oracle_gemm
from qkcheck.oracle.packing import pack
from tests.kernels.conftest import assert_exact, expected_output
from tests.tiers import sampled

ACT_EXACT_RANGE = (-4, 4)  # integer activations, exact in fp16 and bf16
BIAS_EXACT_RANGE = (-8, 8)
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class GemmCase:
    layout: str
    M: int
    N: int
    K: int
    group_size: int
    config: W4A16Config | None
    asym: bool = False
    bias: bool = False
    act_dtype: torch.dtype = torch.float16
    out_dtype: torch.dtype = torch.float16
    scale_dtype: torch.dtype | None = None  # None: the activation dtype
    seed: int = 0

    @property
    def id(self) -> str:
        cfg = self.config
        tiles = "default" if cfg is None else f"bm{cfg.block_m}-bn{cfg.block_n}-bk{cfg.block_k}-sk{cfg.split_k}"
        parts = [
            self.layout, f"{self.M}x{self.N}x{self.K}", f"g{self.group_size}", tiles,
            "asym" if self.asym else "sym", "bias" if self.bias else "nobias",
            f"{DTYPE_NAMES[self.act_dtype]}-to-{DTYPE_NAMES[self.out_dtype]}",
        ]
        if self.scale_dtype is not None:
            parts.append(f"scales-{DTYPE_NAMES[self.scale_dtype]}")
        return "-".join(parts)


@dataclass
class Materialized:
    """Canonical inputs (NumPy, for the oracle) and their packed torch twins (for the kernel)."""

    x: np.ndarray  # float64 [M, K], values exact in the activation dtype
    q: np.ndarray  # uint4 codes [K, N]
    scales: np.ndarray  # float64 [K/G, N]
    zeros: np.ndarray | None  # ints [K/G, N]
    bias: np.ndarray | None  # float64 [N]
    kernel_args: tuple
    kernel_kwargs: dict


def materialize(case: GemmCase, device: str = "cpu") -> Materialized:
    rng = np.random.default_rng(case.seed)
    groups = 1 if case.group_size == -1 else case.K // case.group_size
    x = rng.integers(ACT_EXACT_RANGE[0], ACT_EXACT_RANGE[1] + 1, (case.M, case.K)).astype(np.float64)
    q = rng.integers(0, 16, (case.K, case.N))
    signs = rng.choice([-1.0, 1.0], (groups, case.N))
    scales = signs * 2.0 ** (np.arange(groups) % 8 - 4)[:, None]
    zeros = rng.integers(0, 16, (groups, case.N)) if case.asym else None
    bias = rng.integers(BIAS_EXACT_RANGE[0], BIAS_EXACT_RANGE[1] + 1, case.N).astype(np.float64) if case.bias else None

    layout = LAYOUTS[case.layout]
    scale_dtype = case.scale_dtype or case.act_dtype
    args = (
        torch.from_numpy(x).to(device, case.act_dtype),
        torch.from_numpy(pack(q, layout.qweight)).to(device),
        torch.from_numpy(scales).to(device, scale_dtype),
        None if zeros is None else torch.from_numpy(pack(zeros, layout.zeros)).to(device),
    )
    kwargs = dict(
        layout=case.layout, group_size=case.group_size,
        bias=None if bias is None else torch.from_numpy(bias).to(device, case.act_dtype),
        out_dtype=case.out_dtype, config=case.config,
    )
    return Materialized(x, q, scales, zeros, bias, args, kwargs)


def reference(m: Materialized, case: GemmCase, scales: np.ndarray | None = None) -> np.ndarray:
    return oracle_gemm.w4a16_gemm(
        m.x, m.q, m.scales if scales is None else scales, m.zeros, group_size=case.group_size, bias=m.bias,
    )


def uncheckable_reason(case: GemmCase) -> str | None:
    """Why this machine cannot check the case (an interpreter probe found a defect), or None."""
    # the kernel converts the float32 result to the output dtype itself, split-K included; the
    # GEMV path (dot=False) only loads activations and computes in float32
    config = case.config or default_config(case.M, case.N, case.K, case.group_size)
    compute = DTYPE_NAMES[case.act_dtype] if config.dot else "fp32"
    return skip_reason(compute_dtype=compute, fp8_output=False, output_dtype=DTYPE_NAMES[case.out_dtype])


def skip_if_uncheckable(case: GemmCase) -> None:
    reason = uncheckable_reason(case)
    if reason:
        pytest.skip(reason)


def run_case(case: GemmCase, device: str) -> None:
    skip_if_uncheckable(case)
    m = materialize(case, device)
    out = w4a16_gemm(*m.kernel_args, **m.kernel_kwargs)
    assert_exact(out, reference(m, case), case.out_dtype)


def cfg(block_m=16, block_n=32, block_k=32, split_k=1, **kw) -> W4A16Config:
    return W4A16Config(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k, **kw)


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


# --- group size x BLOCK_K (smaller / equal / larger) x layout x sym/asym ---------------------------
# M=5 and N=40 leave tails in both tile dimensions (block_m=16, block_n=32).
GROUP_BLOCK_K = [
    (32, 16), (32, 32), (32, 128),
    (64, 32), (64, 64), (64, 128),
    (128, 64), (128, 128), (128, 256),
    (-1, 64), (-1, 256),
]


def _gate_grid_runs() -> set[tuple[str, int, int, bool]]:
    """(layout, group_size, BLOCK_K, zero_points) of the gate grid's W4A16 cases for the bundled
    kernel: tests/gate runs each through the runner (symmetric ones in the exact regime, with zero
    points within the oracle's bound), at M = 1 and 33 with N and K tails."""
    from qkcheck.cases.registry import grid
    from qkcheck.kernels.w4a16.adapter import W4A16

    return {(c.p["layout"], c.p["group_size"], c.cfg["block_k"], c.p["zero_points"]) for c in grid(W4A16)
            if "block_k" in c.cfg}


# Every pair on GPTQ (the seed-003 layout); on AWQ and nibble only the pairs the gate grid does not
# run for that layout and zero-point choice. test_kernel_and_scale_paths runs AWQ and nibble bit-exactly
# with and without zero points on every kernel and scale path.
GATE_GRID_RUNS = _gate_grid_runs()
GROUP_CASES = [
    GemmCase(layout, M=5, N=40, K=256, group_size=g, config=cfg(block_k=bk), asym=asym)
    for layout in LAYOUTS for g, bk in GROUP_BLOCK_K for asym in (False, True)
    if layout == "gptq" or (layout, g, bk, asym) not in GATE_GRID_RUNS
]


@pytest.mark.parametrize("case", params(GROUP_CASES))
def test_group_sizes_and_block_k(case, device):
    run_case(case, device)


# --- every kernel path (sub-products per word field or one expanded tile) x every scale path ----------
# (layout, K, G, BLOCK_K, expected sub_dots, expected scale path); K tails where BLOCK_K does not divide K
PATH_CASES = [
    ("gptq", 256, 128, 128, True, SCALES_ONE_GROUP),
    ("gptq", 256, 32, 256, True, SCALES_GROUPS_IN_TILE),  # 8 groups per tile, 4 sub-product rows each
    ("gptq", 256, 4, 128, True, SCALES_PER_ROW),  # G < 8 codes per word: a sub-product row per group
    ("gptq", 192, 96, 128, True, SCALES_PER_ROW),  # G not a power of two, K tail
    ("gptq", 256, 32, 64, False, SCALES_GROUPS_IN_TILE),  # BLOCK_K / 8 < 16: expanded tile
    ("gptq", 192, 48, 32, False, SCALES_PER_ROW),
    ("nibble", 128, 64, 32, True, SCALES_ONE_GROUP),
    ("nibble", 128, 16, 64, True, SCALES_GROUPS_IN_TILE),
    ("nibble", 96, 24, 32, True, SCALES_PER_ROW),
    ("awq", 128, 64, 128, False, SCALES_GROUPS_IN_TILE),
    ("awq", 96, 48, 32, False, SCALES_PER_ROW),
    ("awq", 128, -1, 32, False, SCALES_ONE_GROUP),
]
KERNEL_PATH_CASES = [
    (GemmCase(layout, M=3, N=40, K=k, group_size=g, config=cfg(block_k=bk), asym=asym, bias=asym,
              out_dtype=torch.float32), expect_sub, expect_path)
    for layout, k, g, bk, expect_sub, expect_path in PATH_CASES for asym in (False, True)
]


@pytest.mark.parametrize("case, expect_sub, expect_path",
                         [pytest.param(c, s, p, id=c.id) for c, s, p in KERNEL_PATH_CASES])
def test_kernel_and_scale_paths(case, expect_sub, expect_path, device):
    """Each constexpr path is selected where intended, and computes the exact result there."""
    packing = LAYOUTS[case.layout].qweight
    block_k = case.config.block_k
    group = case.K if case.group_size == -1 else case.group_size
    assert sub_dots(packing, block_k) == expect_sub
    step = packing.per_word if expect_sub else 1
    assert scale_path(block_k, group, step) == expect_path
    run_case(case, device)


# --- bias, output dtype, scale dtype, split-K -------------------------------------------------------
EPILOGUE_CASES = [
    GemmCase(layout, M=7, N=48, K=128, group_size=32, config=cfg(block_k=64, split_k=sk), asym=asym,
             bias=bias, out_dtype=out)
    for layout in LAYOUTS
    for bias, out, asym in ((True, torch.float16, False), (True, torch.float32, True), (False, torch.float32, False))
    for sk in (1, 2)
] + [
    # fp16 compute stored as bf16: the in-kernel fp32 -> bf16 cast is probed (split-K casts in-kernel too)
    GemmCase("gptq", M=7, N=48, K=128, group_size=32, config=cfg(split_k=sk), bias=True, out_dtype=torch.bfloat16)
    for sk in (1, 2)
] + [
    GemmCase("awq", M=7, N=48, K=128, group_size=64, config=cfg(), asym=True, scale_dtype=torch.float32),
]


@pytest.mark.parametrize("case", params(EPILOGUE_CASES))
def test_bias_out_dtype_split_k(case, device):
    run_case(case, device)


# --- bf16 activations: checkable only where the probes say the interpreter computes bf16 right --------
BF16_CASES = [
    GemmCase(layout, M=5, N=40, K=128, group_size=32, config=cfg(block_k=64), asym=True, bias=True,
             act_dtype=torch.bfloat16, out_dtype=out)
    for layout in LAYOUTS for out in (torch.bfloat16, torch.float32)
]


@pytest.mark.parametrize("case", params(BF16_CASES))
def test_bf16_activations(case, device):
    run_case(case, device)


# --- M / N / K tails relative to the tiles ----------------------------------------------------------
TAIL_CASES = [
    GemmCase(layout, M=m, N=n, K=k, group_size=g, config=cfg(block_m=bm, block_n=bn, block_k=bk, split_k=sk),
             asym=True, bias=True, out_dtype=torch.float32)
    for layout in LAYOUTS
    for m, n, k, g, bm, bn, bk, sk in (
        (1, 8, 64, 32, 16, 32, 32, 1),  # M=1, N smaller than one tile
        (17, 72, 192, 64, 16, 32, 128, 1),  # M, N and K tails (K = 1.5 tiles)
        (33, 40, 96, 32, 32, 16, 64, 2),  # K tail inside the second split
        (20, 24, 192, 32, 16, 16, 32, 4),  # 6 K tiles over 4 splits: the last split is empty
    )
]


@pytest.mark.parametrize("case", params(TAIL_CASES))
def test_tails(case, device):
    run_case(case, device)


# --- the launcher's own choice -------------------------------------------------------------------------
DEFAULT_CONFIG_CASES = [
    GemmCase("gptq", M=m, N=64, K=256, group_size=32, config=None, asym=True, bias=True) for m in (3, 40, 100)
]


@pytest.mark.parametrize("case", params(DEFAULT_CONFIG_CASES))
def test_default_config(case, device):
    run_case(case, device)


def test_default_config_may_span_groups():
    """The tile table does not clamp BLOCK_K to group_size (the kernel applies per-row scales)."""
    config = default_config(16, 4096, 4096, 32)
    assert config.block_k > 32


def test_m_zero_returns_empty_without_launch(device):
    case = GemmCase("awq", M=0, N=40, K=128, group_size=32, config=cfg(), asym=True, bias=True)
    m = materialize(case, device)
    out = w4a16_gemm(*m.kernel_args, **m.kernel_kwargs)
    assert out.shape == (0, 40) and out.dtype == torch.float16 and out.device == m.kernel_args[0].device


# --- broken twins: the exact comparison does fail, and where it should ---------------------------------
def test_broken_twin_corrupted_scale_fails_in_its_column(device):
    """Doubling one scale s[g, n] must change column n (and only it) of the output."""
    case = GemmCase("gptq", M=9, N=40, K=256, group_size=32, config=cfg(block_k=128))
    m = materialize(case, device)
    g, n = 3, 17
    corrupted = m.kernel_args[2].clone()
    corrupted[g, n] *= 2
    out = w4a16_gemm(m.kernel_args[0], m.kernel_args[1], corrupted, m.kernel_args[3], **m.kernel_kwargs).cpu()

    truth = expected_output(reference(m, case), case.out_dtype)
    wrong_scales = m.scales.copy()
    wrong_scales[g, n] *= 2
    assert torch.equal(out, expected_output(reference(m, case, wrong_scales), case.out_dtype))
    mismatched_columns = torch.nonzero((out != truth).any(dim=0)).flatten().tolist()
    assert mismatched_columns == [n]


def test_broken_twin_first_group_scale_per_tile_is_caught(device):
    """Seed 003: feed the kernel the scales a BLOCK_K=128, G=32 kernel would apply if it used the
    first group's scale for the whole tile (per-row scales, group_size=1); the output must differ
    from the truth, and the per-row scales that differ are exactly the k rows >= G inside a tile."""
    case = GemmCase("nibble", M=4, N=32, K=256, group_size=32, config=cfg(block_k=128))
    m = materialize(case, device)
    block_k, g = 128, 32
    k = np.arange(case.K)
    applied = m.scales[(k // block_k * block_k) // g]  # [K, N]: the first group of each tile
    true_rows = m.scales[k // g]
    wrong_rows = np.flatnonzero((applied != true_rows).any(axis=1))
    assert wrong_rows.tolist() == [r for r in k if r % block_k >= g]

    out = w4a16_gemm(
        m.kernel_args[0], m.kernel_args[1], torch.from_numpy(applied).to(device, case.act_dtype), None,
        layout=case.layout, group_size=1, out_dtype=case.out_dtype, config=case.config,
    ).cpu()
    truth = expected_output(reference(m, case), case.out_dtype)
    assert not torch.equal(out, truth)
    divergence = compare(out.double().numpy(), truth.double().numpy(), 0.0)
    assert divergence is not None and divergence.count > divergence.total // 2


# --- validation: every message names the argument, the value, what is allowed, and a fix ---------------
def _base(device, layout="gptq", M=4, N=32, K=64, group_size=32):
    case = GemmCase(layout, M=M, N=N, K=K, group_size=group_size, config=cfg(), asym=True, bias=True)
    m = materialize(case, device)
    x, qweight, scales, zeros = m.kernel_args
    return dict(x=x, qweight=qweight, scales=scales, zeros=zeros, **m.kernel_kwargs)


def _with(**changes):
    def build(device):
        kwargs = _base(device, **changes.pop("base", {}))
        for key, value in changes.items():
            kwargs[key] = value(kwargs) if callable(value) else value
        return kwargs
    return build


def _config(**fields):
    return lambda kw: dataclasses.replace(kw["config"], **fields)


VALIDATION_ERRORS = [
    pytest.param(_with(config=_config(block_m=24)), ValueError,
                 r"config\.block_m=24 must be a power of two >= 16 .*allowed: 16, 32, 64", id="block_m-not-pow2"),
    pytest.param(_with(config=_config(block_k=8)), ValueError,
                 r"config\.block_k=8 must be a power of two >= 16 .*round it to 16", id="block_k-below-16"),
    pytest.param(_with(config=_config(split_k=0)), ValueError, r"config\.split_k=0 must be an integer >= 1",
                 id="split_k-zero"),
    pytest.param(_with(config=_config(num_warps=3)), ValueError,
                 r"config\.num_warps=3 must be a power of two \(allowed: 1, 2, 4, 8, 16\)", id="num_warps"),
    pytest.param(_with(config=(16, 32, 32)), TypeError, r"config must be a W4A16Config, got tuple", id="config-type"),
    pytest.param(_with(layout="marlin"), ValueError,
                 r"layout='marlin' is not a known weight layout \(allowed: gptq, awq, nibble\)", id="unknown-layout"),
    pytest.param(_with(x=lambda kw: kw["x"][:, :36].contiguous(), scales=lambda kw: kw["scales"][:1],
                       group_size=-1), ValueError,
                 r"K=36 must be a multiple of 8 for layout='gptq' .*along K\); pad K", id="gptq-K-packing"),
    pytest.param(_with(base=dict(layout="nibble"), x=lambda kw: kw["x"][:, :33].contiguous(),
                       scales=lambda kw: kw["scales"][:1], group_size=-1), ValueError,
                 r"K=33 must be a multiple of 2 for layout='nibble'", id="nibble-K-packing"),
    pytest.param(_with(base=dict(layout="awq"), scales=lambda kw: kw["scales"][:, :12]), ValueError,
                 r"N=12 must be a multiple of 8 for layout='awq'", id="awq-N-packing"),
    pytest.param(_with(base=dict(K=256), group_size=48), ValueError,
                 r"group_size=48 must divide K=256 \(allowed: 16, 32, 64, 128, 256, -1\)", id="group_size-divides-K"),
    pytest.param(_with(group_size=0), ValueError, r"group_size=0 must divide K=64", id="group_size-zero"),
    pytest.param(_with(group_size=32.0), TypeError, r"group_size=32\.0 must be an int", id="group_size-type"),
    pytest.param(_with(x=lambda kw: kw["x"].float()), TypeError,
                 r"x\.dtype=float32 is not an activation dtype \(allowed: float16, bfloat16\)", id="x-dtype"),
    pytest.param(_with(x=lambda kw: kw["x"][None]), ValueError, r"x\.shape=\(1, 4, 64\) must be 2-D", id="x-rank"),
    pytest.param(_with(x="not a tensor"), TypeError, r"x must be a torch\.Tensor, got str", id="x-type"),
    pytest.param(_with(layout="nibble"), TypeError,
                 r"qweight\.dtype=int32 does not match layout='nibble' \(allowed: uint8\)", id="qweight-dtype"),
    pytest.param(_with(qweight=lambda kw: kw["qweight"][:, :16]), ValueError,
                 r"qweight\.shape=\(8, 16\) does not match layout='gptq' for K=64, N=32 \(expected \[8, 32\]\)",
                 id="qweight-shape"),
    pytest.param(_with(scales=lambda kw: kw["scales"][:1]), ValueError,
                 r"scales\.shape=\(1, 32\) must be \[K/G, N\] = \[2, N\]", id="scales-shape"),
    pytest.param(_with(scales=lambda kw: kw["scales"].to(torch.bfloat16)), TypeError,
                 r"scales\.dtype=bfloat16 must be the activation dtype or float32 \(allowed: float16, float32\)",
                 id="scales-dtype"),
    pytest.param(_with(zeros=lambda kw: kw["zeros"].to(torch.uint8)), TypeError,
                 r"zeros\.dtype=uint8 does not match layout='gptq' \(allowed: int32\)", id="zeros-dtype"),
    pytest.param(_with(zeros=lambda kw: kw["zeros"][:1]), ValueError,
                 r"zeros\.shape=\(1, 4\) does not match layout='gptq' .*\(expected \[2, 4\]\)", id="zeros-shape"),
    pytest.param(_with(bias=lambda kw: kw["bias"][:8]), ValueError, r"bias\.shape=\(8,\) must be \[N\] = \[32\]",
                 id="bias-shape"),
    pytest.param(_with(bias=lambda kw: kw["bias"].to(torch.int32)), TypeError,
                 r"bias\.dtype=int32 must be the activation dtype or float32", id="bias-dtype"),
    pytest.param(_with(out_dtype=torch.int8), TypeError,
                 r"out_dtype=torch\.int8 is not supported \(allowed: float16, bfloat16, float32\)", id="out_dtype"),
    pytest.param(_with(scales=lambda kw: kw["scales"].to("meta")), ValueError,
                 r"tensors are on different devices \(x on \S+, qweight on \S+, scales on meta.*; move them all to", id="devices"),
]


@pytest.mark.parametrize("build, error, message", VALIDATION_ERRORS)
def test_validation_error(build, error, message, device):
    kwargs = build(device)
    with pytest.raises(error, match=message):
        w4a16_gemm(
            kwargs.pop("x"), kwargs.pop("qweight"), kwargs.pop("scales"), kwargs.pop("zeros"), **kwargs,
        )


def test_op_config_list_length_is_validated(device):
    kwargs = _base(device)
    with pytest.raises(ValueError, match=r"config=\[16, 32\] has 2 entries \(allowed: 3 to 8"):
        ops.w4a16_gemm(kwargs["x"], kwargs["qweight"], kwargs["scales"], kwargs["zeros"], "gptq", 32,
                       kwargs["bias"], None, [16, 32])


# --- custom op: fake (meta) implementation vs the real one ------------------------------------------
OP_CASES = [
    GemmCase("gptq", M=5, N=40, K=128, group_size=32, config=cfg(), asym=True, bias=True),
    GemmCase("awq", M=3, N=16, K=64, group_size=-1, config=cfg(split_k=2), out_dtype=torch.float32),
    GemmCase("nibble", M=4, N=24, K=64, group_size=32, config=None, asym=True, out_dtype=torch.bfloat16),
    GemmCase("gptq", M=0, N=40, K=128, group_size=64, config=cfg(), bias=True, out_dtype=torch.float32),
]


def _op_args(case: GemmCase, device: str):
    m = materialize(case, device)
    x, qweight, scales, zeros = m.kernel_args
    kw = m.kernel_kwargs
    config = None if case.config is None else case.config.as_list()
    return m, (x, qweight, scales, zeros, kw["layout"], kw["group_size"], kw["bias"], kw["out_dtype"], config)


@pytest.mark.parametrize("case", params(OP_CASES))
@pytest.mark.parametrize("name", sorted(ops.registered_ops()))
def test_fake_matches_real_metadata(name, case, device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = ops.registered_ops()[name].op
    m, args = _op_args(case, device)
    real = op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*fake_args)
    assert (fake.shape, fake.dtype, fake.device) == (real.shape, real.dtype, real.device)
    if case.M and uncheckable_reason(case) is None:
        assert_exact(real, reference(m, case), case.out_dtype)


def test_opcheck(device):
    _, args = _op_args(OP_CASES[0], device)
    torch.library.opcheck(ops.w4a16_gemm, args)


# --- the GEMV path (dot=False) and the fused split-K reduction, on both paths -------------------------
# (group_size, BLOCK_K, K): BLOCK_K below / equal to / above the group, groups of 4 (fewer rows than
# a GPTQ word's 8 codes), a group size that is not a power of two, one group over K, K tails
GEMV_GROUPS = [
    (32, 16, 192), (32, 32, 192), (32, 128, 192), (64, 128, 256), (128, 64, 256),
    (4, 32, 128), (24, 32, 192), (-1, 64, 192), (-1, 128, 192),
]
SPLITS = (1, 2, 3, 4)  # K=192, BLOCK_K=32: 6 tiles, 4 splits of 2 -> the last split is empty
ROWS = (1, 2, 5, 16)


def _fused_cases():
    cases = []
    for dot in (False, True):
        for layout in LAYOUTS:
            for (g, bk, k), asym in [(gbk, asym) for gbk in GEMV_GROUPS for asym in (False, True)]:
                idx = len(cases)
                m = ROWS[idx % 4]
                sk = SPLITS[(idx // 4) % 4]
                if dot:
                    bm = 16
                else:  # the GEMV path's own block_m: one tile over every row, or several tiles
                    bm = (min(triton_next_pow2(m), GEMV_MAX_BLOCK_M), 1, 2, 4)[(idx // 16) % 4]
                cases.append(GemmCase(
                    layout, M=m, N=40, K=k, group_size=g,
                    config=cfg(block_m=bm, block_n=32, block_k=bk, split_k=sk, dot=dot), asym=asym,
                    bias=idx % 3 != 0, out_dtype=(torch.float16, torch.float32, torch.float16, torch.bfloat16)[idx % 4],
                    seed=idx,
                ))
    return cases


def triton_next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


FUSED_CASES = _fused_cases()


def test_fused_cases_cover_every_split_and_row_count():
    """The covering list above pairs every split count with every row count, on both paths."""
    for dot in (False, True):
        pairs = {(c.config.split_k, c.M) for c in FUSED_CASES if c.config.dot == dot}
        assert pairs == {(s, m) for s in SPLITS for m in ROWS}
        paths = {(c.layout, c.asym, c.group_size, c.config.block_k) for c in FUSED_CASES if c.config.dot == dot}
        assert len(paths) == len(LAYOUTS) * 2 * len(GEMV_GROUPS)


def test_gemv_scale_paths_are_all_exercised():
    seen = set()
    for c in FUSED_CASES:
        if c.config.dot:
            continue
        g = c.K if c.group_size == -1 else c.group_size
        seen.add((gemv_scale_path(c.config.block_k, g), word_row_groups(LAYOUTS[c.layout].qweight, g)))
    assert seen == {(SCALES_ONE_GROUP, True), (SCALES_ONE_GROUP, False), (SCALES_PER_ROW, True),
                    (SCALES_PER_ROW, False)}


@pytest.mark.parametrize("case", sampled(params(FUSED_CASES), 4))
def test_gemv_and_fused_split_k(case, device):
    run_case(case, device)


GEMV_EXTRA_CASES = [
    # bf16 activations: the GEMV path loads them and computes in float32 (checkable on the interpreter)
    GemmCase(layout, M=3, N=40, K=128, group_size=32, config=cfg(block_m=4, block_k=64, split_k=2, dot=False),
             asym=True, bias=True, act_dtype=torch.bfloat16, out_dtype=torch.float32)
    for layout in LAYOUTS
] + [
    GemmCase("awq", M=2, N=48, K=128, group_size=64, config=cfg(block_m=2, block_k=64, split_k=3, dot=False),
             asym=True, scale_dtype=torch.float32, bias=True, out_dtype=torch.float32),
    # more splits than K tiles: splits 2.. get nothing
    GemmCase("gptq", M=1, N=32, K=64, group_size=32, config=cfg(block_m=1, block_k=32, split_k=4, dot=False),
             asym=True, bias=True),
    GemmCase("nibble", M=16, N=32, K=64, group_size=-1, config=cfg(block_k=16, split_k=8), asym=True, bias=True),
]


@pytest.mark.parametrize("case", params(GEMV_EXTRA_CASES))
def test_gemv_bf16_activations_float32_scales_empty_splits(case, device):
    run_case(case, device)


# --- within the oracle's bound with realistic values, where the product is not exact -----------------
def _realistic(layout, M, N, K, group_size, seed, *, cancel=False):
    """Normal activations and scales in fp16; ``cancel``: every code of the odd columns and nearly
    every code of the even ones equals its zero point (weights 0) under large activations, the
    case where factoring the zero point out of the sum (``s * (sum x*q - z * sum x)``) would
    cancel catastrophically."""
    rng = np.random.default_rng(seed)
    groups = K // (K if group_size == -1 else group_size)
    x = torch.from_numpy(rng.standard_normal((M, K)) * (1000.0 if cancel else 1.0)).half()
    zeros = rng.integers(0, 16, (groups, N))
    g = K if group_size == -1 else group_size
    if cancel:
        q = np.repeat(zeros, g, axis=0)
        flip = (rng.random((K, N)) < 0.05) & (np.arange(N) % 2 == 0)  # odd columns: every weight 0
        q = np.where(flip, (q + 1) % 16, q)
    else:
        q = rng.integers(0, 16, (K, N))
    scales = torch.from_numpy(rng.uniform(0.001, 0.02, (groups, N)) * rng.choice([-1, 1], (groups, N))).half()
    bias = torch.from_numpy(rng.standard_normal(N)).half()
    spec = LAYOUTS[layout]
    args = (x, torch.from_numpy(pack(q, spec.qweight)), scales, torch.from_numpy(pack(zeros, spec.zeros)))
    problem = dict(x=x.double().numpy(), q=q, scales=scales.double().numpy(), zeros=zeros, group_size=group_size,
                   bias=bias.double().numpy())
    return args, dict(layout=layout, group_size=group_size, bias=bias), problem


BOUND_CASES = [
    pytest.param(layout, g, bk, sk, dot, cancel, id=f"{layout}-g{g}-bk{bk}-sk{sk}-{'gemv' if not dot else 'dot'}"
                 f"{'-cancel' if cancel else ''}")
    for layout in LAYOUTS
    for g, bk, sk, dot, cancel in ((32, 32, 3, False, False), (32, 64, 2, False, True), (64, 32, 4, False, True),
                                   (-1, 64, 1, False, False), (32, 32, 3, True, True))
]


@pytest.mark.parametrize("layout, group_size, block_k, split_k, dot, cancel", sampled(BOUND_CASES, 3))
def test_within_oracle_bound(layout, group_size, block_k, split_k, dot, cancel, device):
    """The GEMV path keeps the dequantized weight in float32 (the oracle's bound assumes it rounded
    to the activation dtype); its error stays within that bound, cancellation included."""
    from qkcheck.oracle.ops import expect

    args, kwargs, problem = _realistic(layout, 5, 40, 256, group_size, seed=block_k + split_k, cancel=cancel)
    config = cfg(block_m=16 if dot else 8, block_k=block_k, split_k=split_k, dot=dot)
    for out_dtype in (torch.float16, torch.float32):
        out = w4a16_gemm(*[a if a is None else a.to(device) for a in args],
                         **{**kwargs, "bias": kwargs["bias"].to(device)}, out_dtype=out_dtype, config=config)
        exp = expect("w4a16_gemm", problem, exact=False, compute_dtype="float16",
                     out_dtype=DTYPE_NAMES[out_dtype].replace("fp", "float"))
        divergence = compare(out.cpu().double().numpy(), exp.expected, exp.bound, unit=exp.unit)
        assert divergence is None, divergence.summary()


def test_factoring_the_zero_point_would_leave_the_bound():
    """Why the GEMV path factors only the scale: the fully factored ``s * (sum x*q - z * sum x)``,
    emulated in float32 on the cancellation case, leaves the oracle's bound, while
    ``s * sum x*(q - z)`` (what the kernel computes) stays inside it."""
    from qkcheck.oracle.ops import expect

    _, _, problem = _realistic("gptq", 4, 16, 128, -1, seed=3, cancel=True)
    x = problem["x"].astype(np.float32)
    q = problem["q"].astype(np.float32)
    z = problem["zeros"].astype(np.float32)
    s = problem["scales"].astype(np.float32)
    b = problem["bias"].astype(np.float32)

    def sequential(terms):  # float32 sum over axis 1 in order
        total = np.zeros((terms.shape[0], terms.shape[2]), np.float32)
        for k in range(terms.shape[1]):
            total = total + terms[:, k, :]
        return total

    factored = s * (sequential(x[:, :, None] * q[None]) - z * sequential(x[:, :, None] * np.ones_like(q)[None])) + b
    kernel_form = s * sequential(x[:, :, None] * (q - z)[None]) + b
    exp = expect("w4a16_gemm", problem, exact=False, compute_dtype="float16", out_dtype="float32")
    assert compare(kernel_form.astype(np.float64), exp.expected, exp.bound) is None
    assert compare(factored.astype(np.float64), exp.expected, exp.bound) is not None


# --- determinism and counter reuse ------------------------------------------------------------------
@pytest.mark.parametrize("dot", [pytest.param(False, marks=pytest.mark.slow), True], ids=["gemv", "dot"])
def test_split_k_is_deterministic(dot, device):
    args, kwargs, _ = _realistic("gptq", 5, 64, 512, 128, seed=11)
    config = cfg(block_m=16 if dot else 4, block_k=32, split_k=4, dot=dot)
    args = [a.to(device) for a in args]
    kwargs = {**kwargs, "bias": kwargs["bias"].to(device)}
    first = w4a16_gemm(*args, **kwargs, out_dtype=torch.float32, config=config)
    for _ in range(2):
        again = w4a16_gemm(*args, **kwargs, out_dtype=torch.float32, config=config)
        assert torch.equal(first.view(torch.int32), again.view(torch.int32))


@pytest.mark.slow  # a long launcher sweep
def test_counters_are_reused_across_grids_and_grow(device, monkeypatch):
    """Many split-K launches in a row with different grids and split counts stay exact, the
    counters are all back to 0 after each, and a launch needing more counters grows the buffer."""
    from qkcheck.kernels.w4a16 import kernel as module

    monkeypatch.setattr(module, "_ARRIVAL_COUNTERS", {})
    monkeypatch.setattr(module, "_RETIRED_COUNTERS", [])
    monkeypatch.setattr(module, "_MIN_COUNTERS", 4)
    dev = torch.device(device)
    shapes = [  # (M, N, block_m, block_n, split_k, dot): tiles = 2, 6, 1, 12, 2
        (1, 64, 1, 32, 2, False), (5, 96, 2, 32, 3, False), (3, 32, 16, 32, 4, True),
        (16, 96, 4, 32, 2, False), (20, 40, 16, 32, 4, True),
    ]
    sizes = []
    for i, (m, n, bm, bn, sk, dot) in enumerate(shapes * 2):
        case = GemmCase("gptq", M=m, N=n, K=128, group_size=32,
                        config=cfg(block_m=bm, block_n=bn, block_k=32, split_k=sk, dot=dot), asym=True, bias=True,
                        out_dtype=torch.float32, seed=i)
        run_case(case, device)
        counters = module.arrival_counters(dev, 1)
        assert int(counters.count_nonzero()) == 0
        sizes.append(counters.numel())
    assert sizes[0] == 4 and max(sizes) >= 12 and sizes == sorted(sizes)
    assert len(module._RETIRED_COUNTERS) >= 1  # the outgrown buffer is kept, not freed


def test_counter_buffer_is_cached_per_device():
    dev = torch.device("cpu")
    a = arrival_counters(dev, 3)
    assert a.dtype == torch.int32 and a.numel() >= 3
    assert arrival_counters(dev, 2) is a


# --- the fused reduction alone, and broken twins of it ------------------------------------------------
@triton.jit
def _epilogue_harness(partials_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr, M, N,
                      EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, REVERSE: tl.constexpr):
    """Each program hands partial ``partials[pid_k]`` of its tile to EPILOGUE. REVERSE: split
    ``pid_k`` arrives only after splits ``pid_k+1..`` (the interpreter runs programs in order, so
    program j plays split SPLIT_K-1-j and never waits; compiled, the spin enforces that order)."""
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    if REVERSE:
        pid_k = SPLIT_K - 1 - pid_k
        while tl.atomic_add(counter_ptr + tile, 0) != SPLIT_K - 1 - pid_k:
            pass
    tiles_n = tl.cdiv(N, BLOCK_N)
    offs_m = (tile // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.load(partials_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :],
                  mask=mask_m[:, None] & mask_n[None, :], other=0.0)
    EPILOGUE(acc, offs_m, offs_n, mask_m, mask_n, tile, pid_k, ws_ptr, M * N, N, 1, counter_ptr,
             bias_ptr, out_ptr, N, 1, HAS_BIAS, SPLIT_K)


@triton.jit
def _epilogue_without_counter_reset(acc, offs_m, offs_n, mask_m, mask_n, tile_id, pid_k,
                                    ws_ptr, stride_ws, stride_wm, stride_wn, counter_ptr,
                                    bias_ptr, out_ptr, stride_om, stride_on,
                                    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Broken twin: the production epilogue without the counter reset."""
    mask = mask_m[:, None] & mask_n[None, :]
    ws_tile = ws_ptr + offs_m[:, None] * stride_wm + offs_n[None, :] * stride_wn
    tl.store(ws_tile + pid_k * stride_ws, acc, mask=mask)
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr + tile_id, 1, sem="acq_rel")
    if arrived == SPLIT_K - 1:
        total = tl.load(ws_tile, mask=mask, other=0.0, cache_modifier=".cg")
        for split in range(1, SPLIT_K):
            total += tl.load(ws_tile + split * stride_ws, mask=mask, other=0.0, cache_modifier=".cg")
        _store_tile(total, offs_m, offs_n, mask_m, mask_n, bias_ptr, out_ptr, stride_om, stride_on, HAS_BIAS)


@triton.jit
def _epilogue_in_arrival_order(acc, offs_m, offs_n, mask_m, mask_n, tile_id, pid_k,
                               ws_ptr, stride_ws, stride_wm, stride_wn, counter_ptr,
                               bias_ptr, out_ptr, stride_om, stride_on,
                               HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Broken twin: each split adds its partial into one float32 tile as it arrives, so the sum's
    order is the arrival order (the workspace's split-0 row must start at 0)."""
    mask = mask_m[:, None] & mask_n[None, :]
    ws_tile = ws_ptr + offs_m[:, None] * stride_wm + offs_n[None, :] * stride_wn
    tl.atomic_add(ws_tile, acc, mask=mask, sem="acq_rel")
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr + tile_id, 1, sem="acq_rel")
    if arrived == SPLIT_K - 1:
        total = tl.load(ws_tile, mask=mask, other=0.0, cache_modifier=".cg")
        _store_tile(total, offs_m, offs_n, mask_m, mask_n, bias_ptr, out_ptr, stride_om, stride_on, HAS_BIAS)
        tl.atomic_xchg(counter_ptr + tile_id, 0, sem="relaxed")


ORDER_M, ORDER_N, ORDER_BLOCK = 5, 24, 16  # 1 x 2 tiles of 16 x 16, the second with an N tail


def _order_sensitive_partials(device):
    """Three splits whose float32 sum depends on the order: in split order 0, 1, 2 it is
    ``(1 + 2**24) - 2**24 = 0`` (1 + 2**24 rounds to 2**24), in arrival order 2, 1, 0 it is 1."""
    p = np.zeros((3, ORDER_M, ORDER_N), np.float32)
    p[0], p[1], p[2] = 1.0, 2.0**24, -(2.0**24)
    bias = np.linspace(-2, 2, ORDER_N).astype(np.float32)
    in_order = (p[0] + p[1]) + p[2] + bias  # float32 throughout
    return torch.from_numpy(p).to(device), torch.from_numpy(bias).to(device), in_order


def _run_epilogue(epilogue, device, *, reverse, counters=None):
    partials, bias, in_order = _order_sensitive_partials(device)
    out = torch.full((ORDER_M, ORDER_N), float("nan"), device=device)
    ws = torch.zeros((3, ORDER_M, ORDER_N), device=device)
    tiles = triton.cdiv(ORDER_M, ORDER_BLOCK) * triton.cdiv(ORDER_N, ORDER_BLOCK)
    counters = torch.zeros(tiles, dtype=torch.int32, device=device) if counters is None else counters
    _epilogue_harness[(tiles, 3)](partials, bias, out, ws, counters, ORDER_M, ORDER_N, EPILOGUE=epilogue,
                                  HAS_BIAS=True, SPLIT_K=3, BLOCK_M=ORDER_BLOCK, BLOCK_N=ORDER_BLOCK,
                                  REVERSE=reverse)
    return out.cpu().numpy(), in_order, counters


@pytest.mark.parametrize("reverse", [False, True], ids=["arrive-in-order", "arrive-reversed"])
def test_epilogue_sums_in_split_order_and_resets(reverse, device):
    counters = None
    for _ in range(3):  # the same counters, reused
        out, in_order, counters = _run_epilogue(_split_k_epilogue, device, reverse=reverse, counters=counters)
        np.testing.assert_array_equal(out, in_order)
        assert int(counters.count_nonzero()) == 0


def test_broken_twin_arrival_order_sum_is_caught(device):
    out, in_order, _ = _run_epilogue(_epilogue_in_arrival_order, device, reverse=True)
    assert not np.array_equal(out, in_order)
    np.testing.assert_array_equal(out, np.broadcast_to(np.float32(1.0) + np.linspace(-2, 2, ORDER_N).astype(np.float32),
                                                       out.shape))  # the reversed-order sum


def test_broken_twin_without_counter_reset_is_caught_on_the_second_call(device):
    out, in_order, counters = _run_epilogue(_epilogue_without_counter_reset, device, reverse=False)
    np.testing.assert_array_equal(out, in_order)  # the first call is right ...
    assert counters.cpu().tolist() == [3, 3]
    out, in_order, _ = _run_epilogue(_epilogue_without_counter_reset, device, reverse=False, counters=counters)
    assert np.isnan(out).all()  # ... the second finds no last split: no tile is ever written


# --- new config fields: validation and the decode defaults ----------------------------------------------
CONFIG_ERRORS = [
    pytest.param(dict(dot=1), TypeError, r"config\.dot=1 must be a bool \(True: the tl\.dot path, False: the GEMV",
                 id="dot-not-bool"),
    pytest.param(dict(dot=False, block_m=3), ValueError,
                 r"config\.block_m=3 must be a power of two \(allowed with dot=False: 1, 2, 4, 8\).*round it to 4",
                 id="gemv-block_m"),
    pytest.param(dict(dot=True, block_m=4), ValueError, r"config\.block_m=4 must be a power of two >= 16",
                 id="dot-block_m-below-16"),
    pytest.param(dict(dot=False, block_m=4, block_n=8), ValueError, r"config\.block_n=8 must be a power of two >= 16",
                 id="gemv-block_n"),
    pytest.param(dict(dot=False, block_m=8, block_k=512, block_n=512), ValueError,
                 r"block_m\*block_k\*block_n=8\*512\*512=2097152 is too large for dot=False "
                 r"\(allowed: <= 1048576.*use dot=True", id="gemv-tile-too-large"),
    pytest.param(dict(split_k=True), ValueError, r"config\.split_k=True must be an integer >= 1", id="split_k-bool"),
]


@pytest.mark.parametrize("fields, error, message", CONFIG_ERRORS)
def test_config_errors(fields, error, message, device):
    kwargs = _base(device)
    kwargs["config"] = dataclasses.replace(kwargs["config"], **fields)
    with pytest.raises(error, match=message):
        w4a16_gemm(kwargs.pop("x"), kwargs.pop("qweight"), kwargs.pop("scales"), kwargs.pop("zeros"), **kwargs)


def test_config_list_round_trip_keeps_old_lists():
    config = W4A16Config(block_m=1, block_n=64, block_k=128, split_k=8, dot=False)
    assert config.as_list()[-1] == 0 and W4A16Config.from_list(config.as_list()) == config
    old = W4A16Config.from_list([16, 32, 64, 2, 8, 4, 2])  # a list from before the dot field
    assert old.dot is True and old.split_k == 2


@pytest.mark.parametrize("M, expected", [
    (1, W4A16Config(block_m=1, block_n=64, block_k=128, split_k=16, group_m=8, num_warps=4, num_stages=1, dot=False)),
    (4, W4A16Config(block_m=16, block_n=128, block_k=64, split_k=8, group_m=8, num_warps=4, num_stages=4, dot=True)),
    (16, W4A16Config(block_m=16, block_n=128, block_k=64, split_k=8, group_m=8, num_warps=4, num_stages=4, dot=True)),
])
def test_decode_defaults_fill_the_gpu(M, expected):
    """At N = K = 4096: the GEMV path at M = 1, and at least 256 programs (about 2 per SM of a
    132-SM H100) through split-K, with the workspace at most half the weight bytes."""
    N = K = 4096
    for group_size in (32, 128, -1):
        config = default_config(M, N, K, group_size)
        assert config == expected
        programs = triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n) * config.split_k
        assert programs >= 256
        assert config.split_k * M * N * 4 * 2 <= K * N // 2 // 2


def test_default_config_dot_can_be_forced():
    assert default_config(1, 4096, 4096, 128, dot=True).dot is True
    assert default_config(1, 4096, 4096, 128, dot=True).block_m == 16
    forced = default_config(300, 4096, 4096, 128, dot=False)
    assert forced.dot is False and forced.block_m * forced.block_n * forced.block_k <= 2**16


# --- a replacement kernel (kernels.zoo) keeps its original argument list ------------------------------
def test_replacement_kernel_keeps_original_arguments(device):
    from qkcheck.kernels.zoo.scale_group_spanning import _w4a16_kernel_first_group_scale as replacement

    ok = GemmCase("gptq", M=3, N=40, K=128, group_size=64, config=cfg(block_k=64, split_k=2), asym=True, bias=True,
                  out_dtype=torch.float32)
    m = materialize(ok, device)
    out = w4a16_gemm(*m.kernel_args, **m.kernel_kwargs, kernel=replacement)
    assert_exact(out, reference(m, ok), ok.out_dtype)  # BLOCK_K <= G: the replacement's bug is silent
    # its bug shows with the default config (dot forced for a replacement, BLOCK_K 128 > G = 32)
    bad = GemmCase("gptq", M=1, N=64, K=256, group_size=32, config=None, asym=True, out_dtype=torch.float32)
    m = materialize(bad, device)
    out = w4a16_gemm(*m.kernel_args, **m.kernel_kwargs, kernel=replacement).cpu()
    assert not torch.equal(out, expected_output(reference(m, bad), bad.out_dtype))
    with pytest.raises(ValueError, match=r"config\.dot=False selects the GEMV path, which has no replaceable"):
        w4a16_gemm(*m.kernel_args, **{**m.kernel_kwargs, "config": cfg(block_m=1, dot=False)}, kernel=replacement)


def test_gemv_block_m_above_its_limit_is_refused():
    """The GEMV path serves few rows: BLOCK_M above GEMV_MAX_BLOCK_M is a clear error (compiled on
    an H100, Triton 3.6, such tiles stored wrong bf16 outputs)."""
    with pytest.raises(ValueError, match=r"config.block_m=16 is too large for dot=False"):
        w4a16_gemm(torch.zeros((16, 64), dtype=torch.float16), torch.zeros((8, 32), dtype=torch.int32),
                   torch.ones((2, 32), dtype=torch.float16), layout="gptq", group_size=32,
                   config=cfg(block_m=16, block_n=32, block_k=32, dot=False))
    assert default_config(16, 64, 64, 32, dot=False).block_m <= GEMV_MAX_BLOCK_M
