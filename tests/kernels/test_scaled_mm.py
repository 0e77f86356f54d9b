"""The W8A8 / FP8 Triton GEMMs against a float64 oracle, in the exact regime.

Exact regime: int8 codes span the whole int8 range with K <= 256 (|a @ b| < 2**23 even with a
zero-point correction); fp8 codes are the integers -8..8 (exact in e4m3fn, e4m3fnuz and e5m2)
with K <= 512; fp16 activations are integers -4..4; every scale is a power of two and every bias
a small integer. Each product and partial sum is then exact in the accumulator (int32 or
float32) whatever the summation order, so the only correct output is RNE(reference) in the output
dtype, compared bit-exactly. Per-row, per-column and per-block scales take several different
powers of two, so a kernel applying a scale to the wrong row, column or K group changes the
output.

References: ``oracle.gemm.scaled_mm``, ``block_scaled_mm`` and ``fp8_w8a16_gemm`` (float64).

Interpreter probes (``interpreter_dot_probes``): the Triton 3.9 CPU interpreter computes int8
``tl.dot`` (int32 accumulation) and fp8 ``tl.dot`` (fp32 accumulation) exactly on the values of
this regime, but e5m2 ``tl.dot`` gets subnormal operands wrong (2**-16 -> 0); cases that need a
defective operation skip on CPU with the probe's evidence and run for real when compiled.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from qkcheck.kernels.probes import interpreting, skip_reason
from qkcheck.kernels.scaled_mm import op as ops_scaled_mm
from qkcheck.kernels.scaled_mm.kernel import (  # the _ helpers build the broken twin kernel
    FP8_DTYPES,
    _dot_operand,
    _load_operand,
    ScaledMMConfig,
    block_scaled_mm,
    default_config,
    fp8_w8a16_gemm,
    scaled_mm,
)
from qkcheck.kernels.triton.tiles import output_tile
from qkcheck.oracle.formats import get_format
from qkcheck.oracle.ops import scaled_mm as oracle_gemm
from tests.kernels.conftest import assert_exact

DTYPE_NAMES = {
    torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "int8",
    torch.float8_e4m3fn: "e4m3fn", torch.float8_e4m3fnuz: "e4m3fnuz", torch.float8_e5m2: "e5m2",
}
FP8_CODE_RANGE = (-8, 8)  # integers exact in every fp8 format here
INT8_CODE_RANGE = (-128, 127)
ACT_RANGE = (-4, 4)
BIAS_RANGE = (-8, 8)


# ================================================================== interpreter probes (tl.dot)
@functools.cache
def _probe_kernel():
    @triton.jit
    def dot_kernel(a_ptr, b_ptr, out_ptr, BLOCK: tl.constexpr, INT_ACC: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tile = offs[:, None] * BLOCK + offs[None, :]
        a = tl.load(a_ptr + tile)
        b = tl.load(b_ptr + tile)
        if INT_ACC:
            acc = tl.dot(a, b, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, out_dtype=tl.float32)
        tl.store(out_ptr + tile, acc)

    return dot_kernel


def _run_dot_probe(a: torch.Tensor, b: torch.Tensor, int_acc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty((16, 16), dtype=torch.int32 if int_acc else torch.float32)
    _probe_kernel()[(1,)](a, b, out, BLOCK=16, INT_ACC=int_acc)
    expected = torch.from_numpy(_values(a) @ _values(b)).to(out.dtype)
    return out, expected


def _probe_int8_dot():
    a = (torch.arange(256).reshape(16, 16) % 255 - 127).to(torch.int8)
    b = a.t().flip(0).contiguous()
    out, expected = _run_dot_probe(a, b, int_acc=True)
    bad = out != expected
    return bool(bad.any()), (
        f"16x16 int8 tl.dot (int32 acc) of codes -127..127: "
        + (f"expected {expected[bad][0].item()}, got {out[bad][0].item()}" if bad.any() else "exact")
    )


def _probe_fp8_dot(dtype: torch.dtype):
    values = torch.arange(-8, 8, dtype=torch.float32)
    a = values.repeat(16, 1).to(dtype)
    b = values.flip(0).repeat(16, 1).t().contiguous().to(dtype)
    out, expected = _run_dot_probe(a, b, int_acc=False)
    bad = out != expected
    return bool(bad.any()), (
        f"16x16 {DTYPE_NAMES[dtype]} tl.dot (fp32 acc) of integers -8..7: "
        + (f"expected {expected[bad][0].item()}, got {out[bad][0].item()}" if bad.any() else "exact")
    )


def _probe_fp8_subnormal_dot(dtype: torch.dtype):
    """Every positive subnormal code (and the smallest normals) times the identity."""
    fmt = get_format(_FP8_NAMES[dtype])
    codes = torch.arange(1, 17, dtype=torch.uint8).view(dtype)  # subnormals first, then normals
    a = codes.repeat(16, 1)
    b = torch.eye(16).to(dtype)
    out, expected = _run_dot_probe(a, b, int_acc=False)
    bad = out[0] != expected[0]
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        return True, (
            f"{DTYPE_NAMES[dtype]} tl.dot of the subnormal {expected[0, i].item()!r} (code {i + 1}, min subnormal "
            f"{fmt.min_subnormal!r}) by 1.0: got {out[0, i].item()!r}"
        )
    return False, f"{DTYPE_NAMES[dtype]} tl.dot of codes 1..16 by the identity is exact"


_FP8_NAMES = {d: str(d).removeprefix("torch.") for d in FP8_DTYPES}


@functools.cache
def interpreter_dot_probes() -> dict[str, tuple[bool, str]]:
    """name -> (defective, detail). Run once; under compiled Triton nothing runs."""
    if not interpreting():
        return {}
    probes = {"int8_dot": _probe_int8_dot}
    for d in FP8_DTYPES:
        probes[f"{DTYPE_NAMES[d]}_dot"] = functools.partial(_probe_fp8_dot, d)
        probes[f"{DTYPE_NAMES[d]}_subnormal_dot"] = functools.partial(_probe_fp8_subnormal_dot, d)
    results = {}
    for name, run in probes.items():
        try:
            results[name] = run()
        except Exception as exc:  # the operation does not run at all under the interpreter
            results[name] = (True, f"the probe kernel raised {type(exc).__name__}: {exc}")
    return results


def dot_skip_reason(operand_dtype: torch.dtype, *, subnormals: bool = False) -> str | None:
    """Why a tl.dot on ``operand_dtype`` codes cannot be checked here, or None."""
    names = [f"{DTYPE_NAMES[operand_dtype]}_dot"]
    if subnormals:
        names.append(f"{DTYPE_NAMES[operand_dtype]}_subnormal_dot")
    hits = [(n, interpreter_dot_probes()[n][1]) for n in names if interpreter_dot_probes().get(n, (False,))[0]]
    if not hits:
        return None
    findings = "; ".join(f"probe {n}: {detail}" for n, detail in hits)
    return f"Triton {triton.__version__} interpreter: {DTYPE_NAMES[operand_dtype]} tl.dot is wrong ({findings}); runs only compiled"


def test_interpreter_dot_probes_report():
    """The probes run and say what they saw (on CPU); the int8 and fp8 normal-value dots the exact
    regime needs are exact in Triton 3.9's interpreter."""
    results = interpreter_dot_probes()
    if not interpreting():
        assert results == {}
        return
    for name in ("int8_dot", "e4m3fn_dot", "e4m3fnuz_dot", "e5m2_dot"):
        defective, detail = results[name]
        assert not defective, detail
    print("\n" + "\n".join(f"{n}: {'DEFECTIVE' if d else 'ok'} — {t}" for n, (d, t) in results.items()))


# ================================================================== oracle (float64)
def _values(t: torch.Tensor) -> np.ndarray:
    """float64 values of a tensor: int8 / fp8 codes decoded by oracle.formats, floats as they are."""
    t = t.detach().cpu()
    if t.dtype == torch.int8:
        return get_format("int8").decode(t.numpy())
    if t.dtype in FP8_DTYPES:
        return get_format(_FP8_NAMES[t.dtype]).decode(t.contiguous().view(torch.uint8).numpy())
    return t.double().numpy()


def _codes_np(t: torch.Tensor) -> np.ndarray:
    """The oracle's view of a code tensor: int8 values, or fp8 bit patterns as uint8."""
    t = t.detach().cpu()
    return t.numpy() if t.dtype == torch.int8 else t.contiguous().view(torch.uint8).numpy()


def _quant_name(t: torch.Tensor) -> str:
    return "int8" if t.dtype == torch.int8 else _FP8_NAMES[t.dtype]


def ref_scaled_mm(a, b, a_scale_rows, b_scale_cols, azp=None, bias=None) -> np.ndarray:
    """oracle.gemm.scaled_mm with the scales given as float64 [M] / [N] vectors."""
    return oracle_gemm.scaled_mm(
        _codes_np(a), _codes_np(b), quant_dtype=_quant_name(a),
        a_scale=np.asarray(a_scale_rows).reshape(-1, 1), b_scale=np.asarray(b_scale_cols).reshape(1, -1),
        azp=None if azp is None else np.asarray(azp).reshape(-1, 1), bias=bias,
    )


def ref_block_scaled_mm(a, b, a_scale, b_scale, block, bias=None) -> np.ndarray:
    return oracle_gemm.block_scaled_mm(
        _codes_np(a), np.asarray(a_scale), _codes_np(b), np.asarray(b_scale),
        quant_dtype=_quant_name(a), block=block, bias=bias,
    )


def ref_fp8_w8a16(x, b, b_scale_cols, bias=None) -> np.ndarray:
    return oracle_gemm.fp8_w8a16_gemm(
        _values(x), _codes_np(b), np.asarray(b_scale_cols).reshape(1, -1), quant_dtype=_quant_name(b), bias=bias,
    )


def ref_fp8_w8a16_broadcast(x, b, scale_kn, bias=None) -> np.ndarray:
    """``x @ (b * scale) + bias`` in float64 with the scale given as its full [K, N] broadcast
    (a per-row or per-element scale: the oracle's fp8_w8a16_gemm takes [1, N] / [1, 1] only)."""
    y = _values(x) @ (_values(b) * np.asarray(scale_kn, np.float64))
    return y if bias is None else y + np.asarray(bias, np.float64)


def output_skip_reason(out_dtype: torch.dtype, config: ScaledMMConfig | None) -> str | None:
    """The in-kernel fp32 -> out_dtype cast (split_k == 1) is probed; split-K casts in torch."""
    in_kernel = config is None or config.split_k == 1
    return skip_reason(compute_dtype="fp32", fp8_output=False,
                       output_dtype=DTYPE_NAMES[out_dtype] if in_kernel else None)


def skip_if(*reasons) -> None:
    for reason in reasons:
        if reason:
            pytest.skip(reason)


def cfg(block_m=16, block_n=16, block_k=32, split_k=1) -> ScaledMMConfig:
    return ScaledMMConfig(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k, num_stages=2)


# ================================================================== inputs
def _codes(rng, shape, dtype, device) -> torch.Tensor:
    lo, hi = INT8_CODE_RANGE if dtype == torch.int8 else FP8_CODE_RANGE
    return torch.from_numpy(rng.integers(lo, hi + 1, shape).astype(np.float32)).to(dtype).to(device)


def weight_operand(rng, K, N, dtype, storage, device) -> torch.Tensor:
    """b [K, N] stored as: "kn" contiguous, "nk" (w.t() of a contiguous [N, K]), or "nk-padded"
    (the .t() of a column slice of a wider [N, K + 8] tensor whose extra columns hold nonzero
    codes, so a missing K mask reads them)."""
    if storage == "kn":
        return _codes(rng, (K, N), dtype, device)
    if storage == "nk":
        return _codes(rng, (N, K), dtype, device).t()
    if storage == "nk-padded":
        wide = _codes(rng, (N, K + 8), dtype, device)
        wide[:, K:] = torch.tensor(3.0).to(dtype)
        return wide[:, :K].t()
    raise ValueError(storage)


def _pow2(rng, n, lo=-3, hi=1) -> np.ndarray:
    return 2.0 ** rng.integers(lo, hi + 1, n)


A_SCALE_SHAPES = ("scalar", "[1]", "[1,1]", "[M,1]")
B_SCALE_SHAPES = ("scalar", "[1]", "[1,1]", "[1,N]", "[N]", "[N,1]")


def a_scale_tensor(values: np.ndarray, shape: str, device) -> tuple[torch.Tensor, np.ndarray]:
    """(tensor, per-row float64 values [M]) for one a_scale layout."""
    M = len(values)
    if shape == "[M,1]":
        return torch.from_numpy(values.reshape(M, 1)).float().to(device), values
    v = np.full(M, values[0])
    t = torch.tensor(values[0], dtype=torch.float32, device=device)
    return {"scalar": t, "[1]": t.reshape(1), "[1,1]": t.reshape(1, 1)}[shape], v


def b_scale_tensor(values: np.ndarray, shape: str, device) -> tuple[torch.Tensor, np.ndarray]:
    N = len(values)
    if shape in ("scalar", "[1]", "[1,1]"):
        t = torch.tensor(values[0], dtype=torch.float32, device=device)
        return {"scalar": t, "[1]": t.reshape(1), "[1,1]": t.reshape(1, 1)}[shape], np.full(N, values[0])
    t = torch.from_numpy(values).float().to(device)
    return {"[1,N]": t.reshape(1, N), "[N]": t, "[N,1]": t.reshape(N, 1)}[shape], values


# ================================================================== scaled_mm
@dataclass(frozen=True)
class MMCase:
    dtype: torch.dtype
    M: int = 5
    N: int = 40
    K: int = 96
    a_scale: str = "[M,1]"
    b_scale: str = "[N,1]"
    azp: str | None = None  # None, "[M,1]" or "[1]"
    bias: bool = False
    out_dtype: torch.dtype = torch.float16
    storage: str = "nk"
    config: ScaledMMConfig | None = dataclasses.field(default_factory=cfg)
    fp8_path: str | None = None
    seed: int = 0

    @property
    def id(self) -> str:
        c = self.config
        tiles = "default" if c is None else f"bm{c.block_m}-bn{c.block_n}-bk{c.block_k}-sk{c.split_k}"
        parts = [DTYPE_NAMES[self.dtype], f"{self.M}x{self.N}x{self.K}", f"as{self.a_scale}", f"bs{self.b_scale}",
                 f"azp{self.azp}" if self.azp else "", "bias" if self.bias else "", f"to-{DTYPE_NAMES[self.out_dtype]}",
                 self.storage, tiles, self.fp8_path or ""]
        return "-".join(p for p in parts if p)


def build_mm(case: MMCase, device):
    rng = np.random.default_rng(case.seed)
    a = _codes(rng, (case.M, case.K), case.dtype, device)
    b = weight_operand(rng, case.K, case.N, case.dtype, case.storage, device)
    lo = -8 if case.dtype == torch.int8 else -3
    a_s, a_rows = a_scale_tensor(_pow2(rng, case.M, lo, lo + 3), case.a_scale, device)
    b_s, b_cols = b_scale_tensor(_pow2(rng, case.N, -4, 0), case.b_scale, device)
    azp = azp_vals = None
    if case.azp:
        azp_vals = rng.integers(-20, 21, case.M if case.azp == "[M,1]" else 1)
        shape = (case.M, 1) if case.azp == "[M,1]" else (1,)
        azp = torch.from_numpy(azp_vals.reshape(shape)).to(device, torch.int32)
        azp_vals = np.broadcast_to(azp_vals, (case.M,)) if case.azp != "[M,1]" else azp_vals
    bias = bias_vals = None
    if case.bias:
        bias_vals = rng.integers(BIAS_RANGE[0], BIAS_RANGE[1] + 1, case.N).astype(np.float64)
        bias = torch.from_numpy(bias_vals).to(device, torch.float32)
    ref = ref_scaled_mm(a, b, a_rows, b_cols, azp_vals, bias_vals)
    kwargs = dict(out_dtype=case.out_dtype, bias=bias, azp=azp, config=case.config, fp8_path=case.fp8_path)
    return (a, b, a_s, b_s), kwargs, ref


def run_mm(case: MMCase, device) -> None:
    skip_if(dot_skip_reason(case.dtype if case.fp8_path != "decode" else torch.int8),
            output_skip_reason(case.out_dtype, case.config))
    args, kwargs, ref = build_mm(case, device)
    assert_exact(scaled_mm(*args, **kwargs), ref, case.out_dtype)


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


QUANT_DTYPES = (torch.int8,) + FP8_DTYPES

SCALE_CASES = (
    [MMCase(d, b_scale=bs) for d in QUANT_DTYPES for bs in B_SCALE_SHAPES]
    + [MMCase(d, a_scale=s, b_scale="[1,N]") for d in (torch.int8, torch.float8_e4m3fn) for s in A_SCALE_SHAPES[:3]]
)


@pytest.mark.parametrize("case", params(SCALE_CASES))
def test_scale_shapes(case, device):
    run_mm(case, device)


def test_n1_scale_is_per_channel_not_per_tensor(device):
    """b_scale [N, 1] is one scale per output column: a launcher reading it as per-tensor (its
    shape[1] is 1) would apply b_scale[0] everywhere; that output differs from the truth in every
    column whose scale differs from column 0's, and the real kernel matches the truth."""
    case = MMCase(torch.float8_e4m3fn, b_scale="[N,1]")
    skip_if(dot_skip_reason(case.dtype), output_skip_reason(case.out_dtype, case.config))
    (a, b, a_s, b_s), kwargs, ref = build_mm(case, device)
    assert_exact(scaled_mm(a, b, a_s, b_s, **kwargs), ref, case.out_dtype)
    as_if_per_tensor = scaled_mm(a, b, a_s, b_s[:1, :1], **kwargs).cpu()
    truth = torch.from_numpy(ref).to(case.out_dtype)
    wrong_cols = torch.nonzero((as_if_per_tensor != truth).any(dim=0)).flatten().tolist()
    differing_scales = torch.nonzero(b_s.cpu().flatten() != b_s.cpu().flatten()[0]).flatten().tolist()
    assert wrong_cols and set(wrong_cols) <= set(differing_scales)


AZP_CASES = [
    MMCase(torch.int8, azp=azp, bias=bias, out_dtype=torch.float32, config=cfg(split_k=sk))
    for azp in ("[M,1]", "[1]") for bias in (False, True) for sk in (1, 3)
]


@pytest.mark.parametrize("case", params(AZP_CASES))
def test_azp(case, device):
    run_mm(case, device)


def test_azp_correction_is_not_dropped(device):
    """With azp the output differs from the symmetric one (so the azp cases test something)."""
    case = MMCase(torch.int8, azp="[M,1]", out_dtype=torch.float32)
    skip_if(dot_skip_reason(torch.int8))
    (a, b, a_s, b_s), kwargs, ref = build_mm(case, device)
    kwargs["azp"] = None
    assert not np.array_equal(scaled_mm(a, b, a_s, b_s, **kwargs).cpu().double().numpy(), ref)


EPILOGUE_CASES = [
    MMCase(d, bias=bias, out_dtype=out, config=cfg(split_k=sk))
    for d in (torch.int8, torch.float8_e4m3fn)
    for out in (torch.float16, torch.bfloat16, torch.float32)
    for bias, sk in ((True, 1), (True, 2), (False, 1))
]


@pytest.mark.parametrize("case", params(EPILOGUE_CASES))
def test_bias_out_dtype_split_k(case, device):
    run_mm(case, device)


PATH_CASES = [MMCase(d, bias=True, fp8_path=p) for d in FP8_DTYPES for p in ("native", "decode")]


@pytest.mark.parametrize("case", params(PATH_CASES))
def test_fp8_operand_paths(case, device):
    """Both fp8 operand paths (fp8 tl.dot; bytes decoded to fp16 and an fp16 tl.dot)."""
    if case.fp8_path == "native" and device != "cpu":
        from qkcheck.kernels.scaled_mm.kernel import default_fp8_path

        if default_fp8_path(case.dtype, torch.device(device)) != "native":
            pytest.skip(f"{DTYPE_NAMES[case.dtype]} has no fp8 tl.dot on this {device} device")
    run_mm(case, device)


TAIL_CASES = [
    MMCase(d, M=m, N=n, K=k, storage="nk-padded", bias=True, out_dtype=torch.float32,
           config=cfg(block_m=bm, block_n=bn, block_k=bk, split_k=sk))
    for d in (torch.int8, torch.float8_e5m2)
    for m, n, k, bm, bn, bk, sk in (
        (1, 8, 64, 16, 16, 32, 1),  # M = 1, N below one tile
        (17, 33, 72, 16, 32, 32, 1),  # M, N and K tails
        (20, 24, 200, 16, 16, 32, 4),  # 7 K tiles over 4 splits
    )
] + [MMCase(torch.float8_e4m3fn, M=m, N=40, K=160, config=None) for m in (1, 40)]


@pytest.mark.parametrize("case", params(TAIL_CASES))
def test_tails_and_default_config(case, device):
    run_mm(case, device)


STORAGE_CASES = [MMCase(d, storage=s, azp="[M,1]" if d == torch.int8 else None)
                 for d in (torch.int8, torch.float8_e4m3fn) for s in ("kn", "nk")]


@pytest.mark.parametrize("case", params(STORAGE_CASES))
def test_weight_storage(case, device):
    run_mm(case, device)


def test_strided_activations(device):
    """a as a column slice of a wider tensor (row stride > K), b a transposed view."""
    case = MMCase(torch.float8_e4m3fn, bias=True)
    skip_if(dot_skip_reason(case.dtype), output_skip_reason(case.out_dtype, case.config))
    (a, b, a_s, b_s), kwargs, ref = build_mm(case, device)
    wide = torch.full((case.M, case.K + 24), 5.0, device=device).to(case.dtype)
    wide[:, :case.K] = a
    assert_exact(scaled_mm(wide[:, :case.K], b, a_s, b_s, **kwargs), ref, case.out_dtype)


def test_m_zero(device):
    (a, b, a_s, b_s), kwargs, _ = build_mm(MMCase(torch.int8), device)
    out = scaled_mm(a[:0], b, a_s[:0], b_s, **kwargs)
    assert out.shape == (0, 40) and out.dtype == torch.float16


def test_default_config_table():
    assert default_config(1, 4096, 4096).block_m == 16
    assert default_config(1000, 4096, 4096).block_m == 128
    small = default_config(3, 20, 24)
    assert (small.block_m, small.block_n, small.block_k) == (16, 32, 32)
    assert default_config(3, 20, 8).block_k == 32  # 8-bit dots need K tiles >= 32


# ================================================================== block_scaled_mm
@dataclass(frozen=True)
class BlockCase:
    dtype: torch.dtype = torch.float8_e4m3fn
    M: int = 5
    N: int = 48
    K: int = 256
    block: tuple[int, int] = (64, 32)
    config: ScaledMMConfig = dataclasses.field(default_factory=lambda: cfg(block_k=64))
    a_scale_col_major: bool = False
    bias: bool = False
    out_dtype: torch.dtype = torch.float32
    storage: str = "nk"
    fp8_path: str | None = None
    seed: int = 1

    @property
    def id(self) -> str:
        c = self.config
        return "-".join(p for p in (
            DTYPE_NAMES[self.dtype], f"{self.M}x{self.N}x{self.K}", f"blk{self.block[0]}x{self.block[1]}",
            f"bm{c.block_m}-bn{c.block_n}-bk{c.block_k}-sk{c.split_k}",
            "as-colmajor" if self.a_scale_col_major else "", "bias" if self.bias else "",
            f"to-{DTYPE_NAMES[self.out_dtype]}", self.storage, self.fp8_path or "") if p)


def _nan_padded(values: np.ndarray, device, col_major: bool) -> torch.Tensor:
    """values as a float32 view into storage with NaN beyond it: reading past a scale grid
    (a missing mask) poisons the output. col_major: the .t() view of [cols, rows] storage."""
    rows, cols = values.shape
    if col_major:
        storage = torch.full((cols + 2, rows + 3), float("nan"), device=device)
        storage[:cols, :rows] = torch.from_numpy(values.T).float()
        return storage[:cols, :rows].t()
    storage = torch.full((rows + 2, cols + 3), float("nan"), device=device)
    storage[:rows, :cols] = torch.from_numpy(values).float()
    return storage[:rows, :cols]


def build_block(case: BlockCase, device):
    rng = np.random.default_rng(case.seed)
    bk, bn = case.block
    gk, gn = triton.cdiv(case.K, bk), triton.cdiv(case.N, bn)
    a = _codes(rng, (case.M, case.K), case.dtype, device)
    b = weight_operand(rng, case.K, case.N, case.dtype, case.storage, device)
    # consecutive K groups differ by a factor of 2: any group mix-up changes the output
    a_scale = _pow2(rng, (case.M, gk), -2, 1) * 2.0 ** (np.arange(gk) % 3)[None, :]
    b_scale = _pow2(rng, (gk, gn), -3, 0) * 2.0 ** -(np.arange(gk) % 2)[:, None]
    bias = bias_vals = None
    if case.bias:
        bias_vals = rng.integers(BIAS_RANGE[0], BIAS_RANGE[1] + 1, case.N).astype(np.float64)
        bias = torch.from_numpy(bias_vals).to(device, torch.float32)
    args = (a, b, _nan_padded(a_scale, device, case.a_scale_col_major), _nan_padded(b_scale, device, False))
    kwargs = dict(block=case.block, out_dtype=case.out_dtype, bias=bias, config=case.config, fp8_path=case.fp8_path)
    return args, kwargs, ref_block_scaled_mm(a, b, a_scale, b_scale, case.block, bias_vals)


def run_block(case: BlockCase, device, kernel=None) -> None:
    skip_if(dot_skip_reason(case.dtype if case.fp8_path != "decode" else torch.int8),
            output_skip_reason(case.out_dtype, case.config))
    args, kwargs, ref = build_block(case, device)
    assert_exact(block_scaled_mm(*args, **kwargs, kernel=kernel), ref, case.out_dtype)


BLOCK_K_CASES = [
    BlockCase(block=(64, 32), config=cfg(block_k=bk)) for bk in (32, 64, 128, 256)
] + [
    BlockCase(block=(128, 128), N=40, K=384, config=cfg(block_k=bk, block_n=32)) for bk in (64, 128, 256)
]


@pytest.mark.parametrize("case", params(BLOCK_K_CASES))
def test_block_k_below_equal_above_scale_block(case, device):
    run_block(case, device)


BLOCK_CASES = [
    BlockCase(d, a_scale_col_major=True, bias=True, out_dtype=torch.float16) for d in FP8_DTYPES
] + [
    # N block not a multiple of BLOCK_N, and BLOCK_N spanning several N blocks
    BlockCase(N=50, block=(32, 24), config=cfg(block_n=32, block_k=64), a_scale_col_major=True),
    BlockCase(N=50, block=(32, 1), config=cfg(block_n=16, block_k=32)),  # [K/G, N] group scales
    # tails: K not a multiple of the scale block nor of BLOCK_K (BLOCK_K > bk: sub-tiles past K)
    BlockCase(M=1, N=33, K=200, block=(64, 16), config=cfg(block_k=128), storage="nk-padded", bias=True),
    BlockCase(M=17, N=24, K=100, block=(32, 32), config=cfg(block_k=64, split_k=2), storage="nk-padded"),
    BlockCase(M=9, N=40, K=256, block=(64, 64), config=cfg(block_k=32, split_k=3), bias=True,
              out_dtype=torch.bfloat16),
    BlockCase(storage="kn", out_dtype=torch.bfloat16, bias=True),
    BlockCase(torch.float8_e5m2, fp8_path="decode", a_scale_col_major=True),
    BlockCase(torch.float8_e4m3fnuz, fp8_path="decode", config=cfg(block_k=256)),
]


@pytest.mark.parametrize("case", params(BLOCK_CASES))
def test_block_scaled_mm(case, device):
    run_block(case, device)


@functools.cache
def _first_group_scale_kernel():
    """block_scaled_mm kernel with one deliberate bug: every sub-tile of a BLOCK_K tile uses the
    scales of the tile's *first* K group (what a kernel written for BLOCK_K == bk does when given
    a larger BLOCK_K)."""

    @triton.jit
    def kernel(
        a_ptr, b_ptr, as_ptr, bs_ptr, bias_ptr, out_ptr,
        M, N, K, GROUP_N,
        stride_am, stride_ak, stride_bk, stride_bn,
        stride_asm, stride_asg, stride_bsg, stride_bsn,
        stride_os, stride_om, stride_on,
        GROUP_K: tl.constexpr, SUB_K: tl.constexpr, DECODE: tl.constexpr,
        EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, SPECIALS: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
    ):
        _, _, offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tile in range(0, tl.cdiv(K, BLOCK_K)):
            group = (tile * BLOCK_K) // GROUP_K  # BUG: the first group of the tile, for every sub-tile
            for sub in tl.static_range(BLOCK_K // SUB_K):
                offs_k = tile * BLOCK_K + sub * SUB_K + tl.arange(0, SUB_K)
                mask_k = offs_k < K
                a = _load_operand(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                                  mask_m[:, None] & mask_k[None, :], DECODE)
                b = _load_operand(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                                  mask_k[:, None] & mask_n[None, :], DECODE)
                partial = tl.dot(_dot_operand(a, DECODE, EXP_BITS, MAN_BITS, BIAS, SPECIALS),
                                 _dot_operand(b, DECODE, EXP_BITS, MAN_BITS, BIAS, SPECIALS), out_dtype=tl.float32)
                a_s = tl.load(as_ptr + offs_m * stride_asm + group * stride_asg, mask=mask_m, other=0.0)
                b_s = tl.load(bs_ptr + group * stride_bsg + (offs_n // GROUP_N) * stride_bsn, mask=mask_n, other=0.0)
                acc += partial * a_s[:, None] * b_s[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
                 acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    return kernel


@pytest.mark.parametrize("block_k", [64, 256])
def test_broken_twin_first_group_scale_is_caught(block_k, device):
    """The same check fails on the buggy twin exactly when BLOCK_K > bk (256 > 64) and passes
    when BLOCK_K == bk (where the bug is invisible), so the BLOCK_K > bk cases do test it."""
    case = BlockCase(block=(64, 32), config=cfg(block_k=block_k))
    if block_k == 64:
        run_block(case, device, kernel=_first_group_scale_kernel())
        return
    with pytest.raises(pytest.fail.Exception, match="not RNE"):
        run_block(case, device, kernel=_first_group_scale_kernel())


# ================================================================== fp8_w8a16_gemm
@dataclass(frozen=True)
class W8A16Case:
    dtype: torch.dtype = torch.float8_e4m3fn
    act_dtype: torch.dtype = torch.float16
    M: int = 5
    N: int = 40
    K: int = 96
    b_scale: str = "[1,N]"
    bias: bool = False
    out_dtype: torch.dtype = torch.float16
    storage: str = "nk"
    config: ScaledMMConfig | None = dataclasses.field(default_factory=cfg)
    fp8_path: str | None = None
    seed: int = 2

    @property
    def id(self) -> str:
        c = self.config
        tiles = "default" if c is None else f"bm{c.block_m}-bn{c.block_n}-bk{c.block_k}-sk{c.split_k}"
        return "-".join(p for p in (
            DTYPE_NAMES[self.dtype], DTYPE_NAMES[self.act_dtype], f"{self.M}x{self.N}x{self.K}", f"bs{self.b_scale}",
            "bias" if self.bias else "", f"to-{DTYPE_NAMES[self.out_dtype]}", self.storage, tiles,
            self.fp8_path or "") if p)


def run_w8a16(case: W8A16Case, device) -> None:
    skip_if(skip_reason(compute_dtype=DTYPE_NAMES[case.act_dtype], fp8_output=False,
                        output_dtype=DTYPE_NAMES[case.out_dtype]
                        if case.config is None or case.config.split_k == 1 else None))
    rng = np.random.default_rng(case.seed)
    x = torch.from_numpy(rng.integers(ACT_RANGE[0], ACT_RANGE[1] + 1, (case.M, case.K)).astype(np.float32))
    x = x.to(device, case.act_dtype)
    b = weight_operand(rng, case.K, case.N, case.dtype, case.storage, device)
    b_s, b_cols, scale_kn = w8a16_scale(rng, case.b_scale, case.K, case.N, device)
    bias = bias_vals = None
    if case.bias:
        bias_vals = rng.integers(BIAS_RANGE[0], BIAS_RANGE[1] + 1, case.N).astype(np.float64)
        bias = torch.from_numpy(bias_vals).to(device, case.act_dtype)
    out = fp8_w8a16_gemm(x, b, b_s, out_dtype=case.out_dtype, bias=bias, config=case.config, fp8_path=case.fp8_path)
    ref = (ref_fp8_w8a16(x, b, b_cols, bias_vals) if b_cols is not None
           else ref_fp8_w8a16_broadcast(x, b, scale_kn, bias_vals))
    assert_exact(out, ref, case.out_dtype)


def w8a16_scale(rng, shape: str, K: int, N: int, device) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray]:
    """(b_scale tensor, per-column values [N] or None, its [K, N] broadcast) for one layout;
    powers of two, distinct along the scale's axis. "-strided": a view with a non-unit stride
    between its scales (a row / column of a wider tensor whose other entries are NaN)."""
    strided = shape.endswith("-strided")
    shape = shape.removesuffix("-strided")
    if shape in ("scalar", "[1]", "[1,1]", "[1,N]", "[N]"):
        t, cols = b_scale_tensor(_pow2(rng, N, -3, 0), shape, device)
        if strided:  # [1, N] as a column-major row: element stride 3
            wide = torch.full((N, 3), float("nan"), device=device)
            wide[:, 1] = t.reshape(-1)
            t = wide.t()[1:2]
        return t, cols, np.broadcast_to(cols.reshape(1, N), (K, N))
    if shape in ("[K,1]", "[N,1]"):  # [N, 1] on a square weight: what it broadcasts to, one scale per row k
        if shape == "[N,1]" and N != K:
            raise ValueError(f"{shape} broadcasts to [K, N] only on a square weight (N={N}, K={K})")
        rows = _pow2(rng, K, -3, 0)
        t = torch.from_numpy(rows).float().to(device).reshape(K, 1)
        if strided:  # [K, 1] as a column of [K, 3]: row stride 3
            wide = torch.full((K, 3), float("nan"), device=device)
            wide[:, 1] = t[:, 0]
            t = wide[:, 1:2]
        return t, None, np.broadcast_to(rows.reshape(K, 1), (K, N))
    if shape == "[K,N]":
        vals = _pow2(rng, K * N, -3, 0).reshape(K, N)
        return torch.from_numpy(vals).float().to(device).t().contiguous().t(), None, vals  # column-major storage
    raise ValueError(shape)


W8A16_CASES = (
    [W8A16Case(d, b_scale=s) for d in FP8_DTYPES for s in ("scalar", "[1,N]", "[N]", "[K,1]")]
    + [W8A16Case(b_scale=s) for s in ("[1]", "[1,1]", "[1,N]-strided", "[K,1]-strided", "[K,N]")]
    + [W8A16Case(d, fp8_path="decode", bias=True) for d in FP8_DTYPES]
    + [W8A16Case(act_dtype=torch.bfloat16, out_dtype=out, bias=True) for out in (torch.bfloat16, torch.float32)]
    + [W8A16Case(out_dtype=torch.float32, bias=True, config=cfg(split_k=2)),
       W8A16Case(out_dtype=torch.float32, b_scale="[K,1]", bias=True, config=cfg(split_k=2)),
       W8A16Case(M=1, N=33, K=72, storage="nk-padded", config=cfg(block_n=32)),
       W8A16Case(M=3, N=33, K=72, b_scale="[K,1]", storage="nk-padded", config=cfg(block_n=32, block_k=64)),
       W8A16Case(M=17, N=24, K=160, storage="kn", config=None, bias=True)]
)


@pytest.mark.parametrize("case", params(W8A16_CASES))
def test_fp8_w8a16(case, device):
    run_w8a16(case, device)


def test_fp8_w8a16_n_by_1_scale_on_a_square_weight_scales_the_rows(device):
    """b_scale is broadcast like ``w * b_scale``, never reinterpreted: on a square weight an
    [N, 1] scale (a checkpoint's [N, K]-convention per-channel scale, or a [1, N] one transposed
    by mistake) scales the rows k — exactly what the same values as [1, N] do not."""
    rng = np.random.default_rng(11)
    K = N = 64
    x = torch.from_numpy(rng.integers(-4, 5, (5, K)).astype(np.float32)).to(device, torch.float16)
    b = weight_operand(rng, K, N, torch.float8_e4m3fn, "nk", device)
    vals = 2.0 ** (np.arange(N) % 4 - 3.0)
    t = torch.from_numpy(vals).float().to(device)
    along_k = fp8_w8a16_gemm(x, b, t.reshape(N, 1), out_dtype=torch.float32, config=cfg())
    assert_exact(along_k, ref_fp8_w8a16_broadcast(x, b, np.broadcast_to(vals.reshape(K, 1), (K, N))), torch.float32)
    per_channel = fp8_w8a16_gemm(x, b, t.reshape(1, N), out_dtype=torch.float32, config=cfg())
    assert_exact(per_channel, ref_fp8_w8a16(x, b, vals), torch.float32)
    assert not torch.equal(along_k, per_channel)


# ================================================================== subnormal fp8 operands
@pytest.mark.parametrize("dtype", FP8_DTYPES, ids=[DTYPE_NAMES[d] for d in FP8_DTYPES])
def test_fp8_subnormal_operands(dtype, device):
    """Operands that include every subnormal code: exact (subnormal x small integer products and
    their sums are exact in fp32). The interpreter's e5m2 tl.dot flushes them (probe)."""
    skip_if(dot_skip_reason(dtype, subnormals=True))
    fmt = get_format(_FP8_NAMES[dtype])
    sub_codes = torch.arange(1, 1 << fmt.mantissa_bits, dtype=torch.uint8)
    M, N, K = 4, 16, 32
    a = sub_codes.repeat(M * K // len(sub_codes) + 1)[: M * K].reshape(M, K).view(dtype).to(device)
    b = _codes(np.random.default_rng(3), (N, K), dtype, device).t()
    out = scaled_mm(a, b, torch.ones((), device=device), torch.ones((), device=device), out_dtype=torch.float32,
                    config=cfg())
    assert_exact(out, ref_scaled_mm(a, b, np.ones(M), np.ones(N)), torch.float32)


# ================================================================== validation
def _mm_base(device):
    (a, b, a_s, b_s), kwargs, _ = build_mm(MMCase(torch.int8, azp="[M,1]", bias=True), device)
    return dict(a=a, b=b, a_scale=a_s, b_scale=b_s, **kwargs)


def _change(**changes):
    def build(device):
        kw = _mm_base(device)
        for key, value in changes.items():
            kw[key] = value(kw) if callable(value) else value
        return kw
    return build


MM_ERRORS = [
    pytest.param(_change(a=lambda kw: kw["a"].float()), TypeError,
                 r"a\.dtype=float32 is not a W8A8 code dtype \(allowed: int8, float8_e4m3fn", id="a-dtype"),
    pytest.param(_change(b=lambda kw: kw["b"].to(torch.float8_e4m3fn)), TypeError,
                 r"b\.dtype=float8_e4m3fn must equal a\.dtype=int8", id="mixed-dtypes"),
    pytest.param(_change(b=lambda kw: kw["b"].t()), ValueError,
                 r"b\.shape=\[40, 96\] must be \[K, N\] with K=96 .*pass its transposed view b\.t\(\)",
                 id="weight-nk-not-transposed"),
    pytest.param(_change(a=lambda kw: kw["a"][None]), ValueError, r"a\.shape=\[1, 5, 96\] must be 2-D", id="a-rank"),
    pytest.param(_change(a_scale=lambda kw: kw["a_scale"].t()), ValueError,
                 r"a_scale\.shape=\[1, 5\] fits no scale layout for M=5 .*\[5, 1\] per-token", id="a_scale-row"),
    pytest.param(_change(b_scale=lambda kw: kw["b_scale"][:7]), ValueError,
                 r"b_scale\.shape=\[7, 1\] fits no scale layout for N=40 .*\[1, 40\], \[40\], \[40, 1\] per-channel",
                 id="b_scale-length"),
    pytest.param(_change(b_scale=lambda kw: kw["b_scale"].to(torch.int32)), TypeError,
                 r"b_scale\.dtype=int32 is not a scale dtype \(allowed: float32, float16, bfloat16\)", id="b_scale-dtype"),
    pytest.param(_change(azp=lambda kw: kw["azp"].to(torch.int64)), TypeError, r"azp\.dtype=int64 must be int32",
                 id="azp-dtype"),
    pytest.param(_change(azp=lambda kw: kw["azp"][:3]), ValueError, r"azp\.shape=\[3, 1\] fits no scale layout for M=5",
                 id="azp-shape"),
    pytest.param(_change(a=lambda kw: kw["a"].to(torch.float8_e4m3fn), b=lambda kw: kw["b"].to(torch.float8_e4m3fn)),
                 ValueError, r"azp is given but a\.dtype=float8_e4m3fn; zero points apply only to int8", id="azp-fp8"),
    pytest.param(_change(bias=lambda kw: kw["bias"][:8]), ValueError, r"bias\.shape=\[8\] must be \[N\] = \[40\]",
                 id="bias-shape"),
    pytest.param(_change(out_dtype=torch.int32), TypeError,
                 r"out_dtype=torch\.int32 is not supported \(allowed: float16, bfloat16, float32\)", id="out_dtype"),
    pytest.param(_change(config=lambda kw: dataclasses.replace(kw["config"], block_k=24)), ValueError,
                 r"config\.block_k=24 must be a power of two >= 16", id="config-block_k"),
    pytest.param(_change(config=lambda kw: dataclasses.replace(kw["config"], block_k=16)), ValueError,
                 r"config\.block_k=16 is below 32: tl\.dot on 8-bit", id="config-block_k-8bit"),
    pytest.param(_change(config=(16, 16, 32)), TypeError, r"config must be a ScaledMMConfig, got tuple", id="config-type"),
    pytest.param(_change(fp8_path="emulate"), ValueError, r"fp8_path='emulate' is not known \(allowed: native, decode",
                 id="fp8_path"),
    pytest.param(_change(a_scale="0.5"), TypeError, r"a_scale must be a torch\.Tensor, got str", id="a_scale-type"),
    pytest.param(_change(b_scale=lambda kw: kw["b_scale"].to("meta")), ValueError,
                 r"tensors are on different devices \(a on \S+, b on \S+, a_scale on \S+, b_scale on meta", id="devices"),
]


@pytest.mark.parametrize("build, error, message", MM_ERRORS)
def test_scaled_mm_validation(build, error, message, device):
    kw = build(device)
    with pytest.raises(error, match=message):
        scaled_mm(kw.pop("a"), kw.pop("b"), kw.pop("a_scale"), kw.pop("b_scale"), **kw)


def _block_base(device):
    args, kwargs, _ = build_block(BlockCase(), device)
    return dict(zip(("a", "b", "a_scale", "b_scale"), args), **kwargs)


def _bchange(**changes):
    def build(device):
        kw = _block_base(device)
        for key, value in changes.items():
            kw[key] = value(kw) if callable(value) else value
        return kw
    return build


BLOCK_ERRORS = [
    pytest.param(_bchange(block=(48, 32)), ValueError, r"block_k=48 must be a power of two >= 32", id="block_k-pow2"),
    pytest.param(_bchange(block=(16, 16)), ValueError, r"block_k=16 must be a power of two >= 32", id="block_k-16"),
    pytest.param(_bchange(config=cfg(block_k=16)), ValueError,
                 r"config\.block_k=16 is below 32: tl\.dot on 8-bit \(int8 / fp8\) operands needs K tiles of at least 32",
                 id="config-block_k-16"),
    pytest.param(_bchange(block=(64, 0)), ValueError, r"block_n=0 must be >= 1", id="block_n"),
    pytest.param(_bchange(block=64), TypeError, r"block=64 must be a pair of ints", id="block-type"),
    pytest.param(_bchange(b_scale=lambda kw: kw["b_scale"].t()), ValueError,
                 r"b_scale\.shape=\[2, 4\] must be \[ceil\(K/block_k\), ceil\(N/block_n\)\] = \[4, 2\] .*pass b_scale\.t\(\)",
                 id="b_scale-transposed"),
    pytest.param(_bchange(a_scale=lambda kw: kw["a_scale"].t()), ValueError,
                 r"a_scale\.shape=\[4, 5\] must be \[M, ceil\(K/block_k\)\] = \[5, 4\]", id="a_scale-transposed"),
    pytest.param(_bchange(a=lambda kw: kw["a"].to(torch.int8), b=lambda kw: kw["b"].to(torch.int8)), TypeError,
                 r"a\.dtype=int8 is not an fp8 dtype", id="int8"),
]


@pytest.mark.parametrize("build, error, message", BLOCK_ERRORS)
def test_block_scaled_mm_validation(build, error, message, device):
    kw = build(device)
    with pytest.raises(error, match=message):
        block_scaled_mm(kw.pop("a"), kw.pop("b"), kw.pop("a_scale"), kw.pop("b_scale"), **kw)


def test_fp8_w8a16_validation(device):
    x = torch.zeros((4, 32), dtype=torch.float32, device=device)
    b = torch.zeros((32, 16), device=device).to(torch.float8_e4m3fn)
    s = torch.ones((16,), device=device)
    with pytest.raises(TypeError, match=r"x\.dtype=float32 is not an activation dtype \(allowed: float16, bfloat16\)"):
        fp8_w8a16_gemm(x, b, s, out_dtype=torch.float16)
    with pytest.raises(TypeError, match=r"b\.dtype=int8 is not an fp8 weight dtype"):
        fp8_w8a16_gemm(x.half(), b.view(torch.int8), s, out_dtype=torch.float16)
    allowed = (r"\(allowed: \[\], \[1\], \[1, 1\] per-tensor, \[1, 16\] or \[16\] per output channel, "
               r"\[32, 1\] per input row, \[32, 16\] per element\)")
    for shape, fix in (
        ((16, 1), r"per-channel scales are \[1, N\] or \[N\]; prepare_weights converts checkpoint \[N, 1\] scales "
                  r"\(or pass b_scale\.reshape\(1, 16\)\)"),
        ((32,), r"a per-input-row scale is \[K, 1\] = \[32, 1\]; pass b_scale\.reshape\(32, 1\)"),
        ((1, 32), r"a per-input-row scale is \[K, 1\] = \[32, 1\]"),
        ((2, 16), r"per-channel scales are \[1, N\] or \[N\]"),
        ((1, 1, 16), r"per-channel scales are \[1, N\] or \[N\]"),
    ):
        dims = ", ".join(map(str, shape))
        with pytest.raises(ValueError, match=rf"b_scale\.shape=\[{dims}\] does not broadcast to the weight's "
                                             rf"\[K, N\] = \[32, 16\] {allowed}; {fix}"):
            fp8_w8a16_gemm(x.half(), b, torch.ones(shape, device=device), out_dtype=torch.float16)


# ================================================================== custom ops: fake vs real
def _op_cases(device):
    (a, b, a_s, b_s), kw, ref_mm = build_mm(MMCase(torch.int8, azp="[M,1]", bias=True, out_dtype=torch.float32), device)
    yield ("qkcheck::scaled_mm", (a, b, a_s, b_s, torch.float32, kw["bias"], kw["azp"], cfg().as_list()), ref_mm,
           dot_skip_reason(torch.int8))
    (a8, b8, a8s, b8s), kw8, ref8 = build_mm(MMCase(torch.float8_e4m3fn, b_scale="[N]"), device)
    yield ("qkcheck::scaled_mm", (a8, b8, a8s, b8s, torch.float16, None, None, None), ref8,
           dot_skip_reason(torch.float8_e4m3fn))
    args, kwb, ref_b = build_block(BlockCase(a_scale_col_major=True, bias=True), device)
    yield ("qkcheck::block_scaled_mm", (*args, list(kwb["block"]), torch.float32, kwb["bias"], cfg(block_k=128).as_list()),
           ref_b, dot_skip_reason(torch.float8_e4m3fn))
    x = torch.from_numpy(np.random.default_rng(4).integers(-4, 5, (3, 64)).astype(np.float32)).to(device, torch.float16)
    wb = weight_operand(np.random.default_rng(5), 64, 24, torch.float8_e5m2, "nk", device)
    ws = torch.from_numpy(2.0 ** (np.arange(64) % 3 - 2.0)).float().to(device).reshape(64, 1)  # per input row
    yield ("qkcheck::fp8_w8a16_gemm", (x, wb, ws, torch.float32, None, [16, 16, 32, 2]),
           ref_fp8_w8a16_broadcast(x, wb, np.broadcast_to(_values(ws), (64, 24))), None)


def test_registered_ops_lists_all_three():
    assert sorted(ops_scaled_mm.registered_ops()) == [
        "qkcheck::block_scaled_mm", "qkcheck::fp8_w8a16_gemm", "qkcheck::scaled_mm"]


def test_fake_matches_real(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    for name, args, ref, reason in _op_cases(device):
        registered = ops_scaled_mm.registered_ops()[name]
        real = registered.op(*args)
        with FakeTensorMode() as mode:
            fake = registered.op(*[mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args])
        assert (fake.shape, fake.dtype, fake.device) == (real.shape, real.dtype, real.device), name
        if reason is None:
            assert_exact(real, ref, real.dtype)


def test_fake_validates_like_real(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    name, args, _, _ = next(_op_cases(device))
    op = ops_scaled_mm.registered_ops()[name].op
    bad = list(args)
    bad[3] = args[3][:7]  # b_scale with 7 of 40 channels
    with pytest.raises(ValueError, match=r"b_scale\.shape=\[7, 1\] fits no scale layout"):
        op(*bad)
    with FakeTensorMode() as mode:
        fake_bad = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in bad]
        with pytest.raises(ValueError, match=r"b_scale\.shape=\[7, 1\] fits no scale layout"):
            op(*fake_bad)


def test_fake_rejects_an_n_by_1_scale_like_real(device):
    """The fp8_w8a16 fake validates the scale's broadcast too: [N, 1] with N != K fails in both."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    name, args, _, _ = [c for c in _op_cases(device) if c[0] == "qkcheck::fp8_w8a16_gemm"][0]
    op = ops_scaled_mm.registered_ops()[name].op
    bad = list(args)
    bad[2] = torch.ones((24, 1), device=device)  # N = 24, K = 64
    message = r"b_scale\.shape=\[24, 1\] does not broadcast to the weight's \[K, N\] = \[64, 24\]"
    with pytest.raises(ValueError, match=message):
        op(*bad)
    with FakeTensorMode() as mode:
        fake_bad = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in bad]
        with pytest.raises(ValueError, match=message):
            op(*fake_bad)


def test_opcheck_int8(device):
    skip_if(dot_skip_reason(torch.int8))
    name, args, _, _ = next(_op_cases(device))
    torch.library.opcheck(ops_scaled_mm.registered_ops()[name].op, args)
