"""Weight loaders end to end: checkpoint arrival -> prepare_weights -> kernel -> float64 oracle.

A canonical problem (weight codes ``w[K, N]``, scales in canonical orientation) is turned into
each way a checkpoint can deliver it — ``[N, K]`` or ``[K, N]``, contiguous or as a transposed
view, square or not, with the scale in every accepted shape — and the loader's output is run
through the kernel and compared bit-exactly with the oracle of the *canonical* problem (exact
regime as in test_scaled_mm). A loader that guesses orientation from contiguity and transposes
scales unconditionally is run through the same check and caught on a square matrix, and so is
the seed-004 loader step, whose unconditional ``weight_scale.t()`` turns a [1, N] scale into the
[N, 1] the FP8 W8A16 kernel broadcasts along K.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import triton

from qkcheck.kernels.scaled_mm.kernel import block_scaled_mm, fp8_w8a16_gemm, scaled_mm
from qkcheck.kernels.scaled_mm.loaders import SCHEMES, prepare_weights
from tests.kernels.conftest import assert_exact
from tests.kernels.test_scaled_mm import (
    ScaledMMConfig,
    _codes,
    dot_skip_reason,
    ref_block_scaled_mm,
    ref_fp8_w8a16,
    ref_scaled_mm,
    skip_if,
)
from tests.tiers import sampled

CONFIG = ScaledMMConfig(block_m=16, block_n=16, block_k=32, num_stages=2)
OUT = torch.float32
SCHEME_DTYPE = {"fp8_w8a16": torch.float8_e4m3fn, "fp8_w8a8": torch.float8_e4m3fn,
                "int8_w8a8": torch.int8, "fp8_block": torch.float8_e5m2}
ARRIVALS = ("nk", "nk-view", "kn", "kn-view")
SHAPES = {"square": (64, 64), "wide": (40, 96)}  # (N, K)
CHANNEL_SCALES = ("float", "[]", "[1]", "[N]", "[N,1]", "[1,N]")
BLOCK = (32, 32)  # square weight -> square scale grid: shape checks cannot see a transposition


def arrive(w_kn: torch.Tensor, arrival: str) -> tuple[torch.Tensor, str]:
    """(checkpoint weight, declared layout) holding the canonical codes ``w_kn [K, N]``."""
    if arrival == "nk":
        return w_kn.t().contiguous(), "nk"  # [N, K] contiguous
    if arrival == "nk-view":
        return w_kn.contiguous().t(), "nk"  # [N, K] as a view of [K, N] storage
    if arrival == "kn":
        return w_kn.contiguous(), "kn"
    if arrival == "kn-view":
        return w_kn.t().contiguous().t(), "kn"  # [K, N] as a view of [N, K] storage
    raise ValueError(arrival)


def channel_scale(values: np.ndarray, shape: str, device):
    """A checkpoint per-tensor ("float", "[]", "[1]": values[0]) or per-channel scale."""
    if shape == "float":
        return float(values[0])
    t = torch.from_numpy(values).float().to(device)
    return {"[]": t[0], "[1]": t[:1], "[N]": t, "[N,1]": t.reshape(-1, 1), "[1,N]": t.reshape(1, -1)}[shape]


def block_scale_arrival(grid_kn: np.ndarray, layout: str, device) -> torch.Tensor:
    """The checkpoint's block scales: [ceil(N/bn), ceil(K/bk)] beside an [N, K] weight, else canonical."""
    grid = grid_kn.T.copy() if layout == "nk" else grid_kn
    return torch.from_numpy(grid).float().to(device)


def run_end_to_end(scheme: str, arrival: str, shape: str, scale_shape: str | None, device, loader=prepare_weights):
    N, K = SHAPES[shape]
    M = 5
    dtype = SCHEME_DTYPE[scheme]
    skip_if(dot_skip_reason(dtype) if scheme != "fp8_w8a16" else None)
    rng = np.random.default_rng(zlib.crc32(f"{scheme}-{arrival}-{shape}-{scale_shape}".encode()))
    w_kn = _codes(rng, (K, N), dtype, device)
    weight, layout = arrive(w_kn, arrival)

    if scheme == "fp8_block":
        bk, bn = BLOCK
        gk, gn = triton.cdiv(K, bk), triton.cdiv(N, bn)
        grid = 2.0 ** rng.integers(-3, 1, (gk, gn)) * 2.0 ** -(np.arange(gk) % 2)[:, None]
        grid[0, -1], grid[-1, 0] = 2.0**-4, 1.0  # never symmetric: a transposed grid is a wrong grid
        prepared = loader(scheme, weight, block_scale_arrival(grid, layout, device), weight_layout=layout, block=BLOCK)
        a = _codes(rng, (M, K), dtype, device)
        a_scale = 2.0 ** rng.integers(-2, 2, (M, gk))
        out = block_scaled_mm(a, prepared["b"], torch.from_numpy(a_scale).float().to(device), prepared["b_scale"],
                              block=prepared["block"], out_dtype=OUT, config=CONFIG)
        assert_exact(out, ref_block_scaled_mm(a, w_kn, a_scale, grid, BLOCK), OUT)
        return

    per_tensor = scale_shape in ("float", "[]", "[1]")
    cols = 2.0 ** rng.integers(-4, 1, N)
    if per_tensor:
        cols = np.full(N, cols[0])
    prepared = loader(scheme, weight, channel_scale(cols, scale_shape, device), weight_layout=layout)
    if scheme == "fp8_w8a16":
        x = torch.from_numpy(rng.integers(-4, 5, (M, K)).astype(np.float32)).to(device, torch.float16)
        out = fp8_w8a16_gemm(x, prepared["b"], prepared["b_scale"], out_dtype=OUT, config=CONFIG)
        assert_exact(out, ref_fp8_w8a16(x, w_kn, cols), OUT)
        return
    a = _codes(rng, (M, K), dtype, device)
    rows = 2.0 ** rng.integers(-8, -5, M)
    out = scaled_mm(a, prepared["b"], torch.from_numpy(rows.reshape(M, 1)).float().to(device), prepared["b_scale"],
                    out_dtype=OUT, config=CONFIG)
    assert_exact(out, ref_scaled_mm(a, w_kn, rows, cols), OUT)


CHANNEL_CASES = [
    pytest.param(scheme, arrival, shape, scale, id=f"{scheme}-{arrival}-{shape}-{scale}")
    for scheme in ("fp8_w8a16", "fp8_w8a8", "int8_w8a8")
    for arrival in ARRIVALS for shape in SHAPES for scale in CHANNEL_SCALES
]


@pytest.mark.parametrize("scheme, arrival, shape, scale", sampled(CHANNEL_CASES, 4))
def test_per_tensor_and_per_channel_schemes(scheme, arrival, shape, scale, device):
    run_end_to_end(scheme, arrival, shape, scale, device)


BLOCK_CASES = [
    pytest.param(arrival, shape, id=f"fp8_block-{arrival}-{shape}") for arrival in ARRIVALS for shape in SHAPES
]


@pytest.mark.parametrize("arrival, shape", BLOCK_CASES)
def test_block_scheme(arrival, shape, device):
    run_end_to_end("fp8_block", arrival, shape, None, device)


@pytest.mark.parametrize("layout", ["nk", "kn"])
def test_group_scales_n_by_k_over_g(layout, device):
    """block=(G, 1): scales [N, K/G] beside an [N, K] weight, [K/G, N] beside a [K, N] one."""
    skip_if(dot_skip_reason(torch.float8_e4m3fn))
    rng = np.random.default_rng(7)
    N, K, G, M = 24, 96, 32, 3
    w_kn = _codes(rng, (K, N), torch.float8_e4m3fn, device)
    grid = 2.0 ** rng.integers(-3, 1, (K // G, N))
    weight = w_kn.t().contiguous() if layout == "nk" else w_kn
    scale = torch.from_numpy(grid.T.copy() if layout == "nk" else grid).float().to(device)
    assert tuple(scale.shape) == ((N, K // G) if layout == "nk" else (K // G, N))
    prepared = prepare_weights("fp8_block", weight, scale, weight_layout=layout, block=(G, 1))
    a = _codes(rng, (M, K), torch.float8_e4m3fn, device)
    a_scale = np.ones((M, K // G))
    out = block_scaled_mm(a, prepared["b"], torch.ones((M, K // G), device=device), prepared["b_scale"],
                          block=(G, 1), out_dtype=OUT, config=CONFIG)
    assert_exact(out, ref_block_scaled_mm(a, w_kn, a_scale, grid, (G, 1)), OUT)


def test_loader_returns_views_and_float32_scales(device):
    w = torch.zeros((40, 96), device=device).to(torch.float8_e4m3fn)
    prepared = prepare_weights("fp8_w8a8", w, torch.ones((40, 1), dtype=torch.bfloat16, device=device),
                               weight_layout="nk")
    assert prepared["b"].shape == (96, 40) and prepared["b"].data_ptr() == w.data_ptr()
    assert prepared["b_scale"].shape == (1, 40) and prepared["b_scale"].dtype == torch.float32


# ------------------------------------------------------------------ a loader with the classic bugs
def contiguity_loader(scheme, weight, weight_scale, *, weight_layout, block=None):
    """BROKEN on purpose: ignores weight_layout, decides orientation by contiguity (a contiguous
    weight is taken as [N, K]) and transposes a block scale grid unconditionally."""
    b = weight.t() if weight.is_contiguous() else weight
    if SCHEMES[scheme].block_scaled:
        return {"b": b, "b_scale": weight_scale.t().float(), "block": tuple(block)}
    scale = torch.as_tensor(weight_scale, dtype=torch.float32, device=weight.device)
    return {"b": b, "b_scale": scale.reshape(1, -1) if scale.numel() > 1 else scale.reshape(1, 1)}


@pytest.mark.parametrize("arrival", ["kn", "nk-view"])
def test_broken_loader_is_caught_on_a_square_matrix(arrival, device):
    """On a square weight every shape check passes whatever the orientation, so only the end-to-end
    comparison sees that the contiguity guess transposed the weight (and the scale grid)."""
    with pytest.raises(pytest.fail.Exception, match="not RNE"):
        run_end_to_end("fp8_block", arrival, "square", None, device, loader=contiguity_loader)
    with pytest.raises(pytest.fail.Exception, match="not RNE"):
        run_end_to_end("int8_w8a8", arrival, "square", "[N,1]", device, loader=contiguity_loader)


def test_broken_loader_passes_where_its_guess_happens_to_be_right(device):
    """A contiguous [N, K] checkpoint is what the broken loader assumes: there it is right, so
    the failures above come from its guesses, not from the harness."""
    run_end_to_end("fp8_block", "nk", "square", None, device, loader=contiguity_loader)
    run_end_to_end("int8_w8a8", "nk", "square", "[N,1]", device, loader=contiguity_loader)


@pytest.mark.parametrize("arrival", ARRIVALS)
@pytest.mark.parametrize("shape", SHAPES)
def test_loader_outputs_kernel_layout_scales_for_every_arrival(arrival, shape, device):
    """Every checkpoint scale comes out as the kernel reads it: [1, N] per channel, [1, 1] per
    tensor — never [N, 1], which the FP8 W8A16 kernel broadcasts along K (rows) on a square
    weight and rejects otherwise."""
    N, K = SHAPES[shape]
    weight, layout = arrive(torch.zeros((K, N), device=device).to(torch.float8_e4m3fn), arrival)
    cols = np.arange(1.0, N + 1)
    for scale_shape in CHANNEL_SCALES:
        prepared = prepare_weights("fp8_w8a16", weight, channel_scale(cols, scale_shape, device), weight_layout=layout)
        per_tensor = scale_shape in ("float", "[]", "[1]")
        assert tuple(prepared["b_scale"].shape) == ((1, 1) if per_tensor else (1, N)), scale_shape
        want = np.full((1, 1), cols[0]) if per_tensor else cols.reshape(1, N)
        assert np.array_equal(prepared["b_scale"].cpu().double().numpy(), want), scale_shape


def seed_004_loader(shape: str):
    """The seed-004 loader step (kernels.zoo.transposed_scales) behind prepare_weights' signature:
    orientation from the shape and, for square weights, contiguity; weight_scale.t() always."""
    from qkcheck.kernels.zoo.transposed_scales import process_weights_after_loading

    N, K = SHAPES[shape]

    def load(scheme, weight, weight_scale, *, weight_layout, block=None):
        b, b_scale = process_weights_after_loading(weight, weight_scale, in_features=K, out_features=N)
        return {"b": b, "b_scale": b_scale.float()}
    return load


def test_seed_004_loader_passes_its_authors_case(device):
    """A contiguous [N, K] checkpoint with [N, 1] scales: the guess is right and .t() gives [1, N]."""
    for shape in SHAPES:
        run_end_to_end("fp8_w8a16", "nk", shape, "[N,1]", device, loader=seed_004_loader(shape))


def test_seed_004_loader_scales_a_square_weight_along_k(device):
    """A [K, N] checkpoint (a view of [N, K] storage, so the orientation guess is right) with a
    consistent [1, N] scale: the unconditional .t() hands the kernel [N, 1], which it broadcasts
    along K on a square weight: a silent wrong answer, caught end to end."""
    with pytest.raises(pytest.fail.Exception, match="not RNE"):
        run_end_to_end("fp8_w8a16", "kn-view", "square", "[1,N]", device, loader=seed_004_loader("square"))


def test_seed_004_loader_fails_loudly_on_a_non_square_weight(device):
    with pytest.raises(ValueError, match=r"b_scale\.shape=\[40, 1\] does not broadcast to the weight's \[K, N\] = "
                                         r"\[96, 40\] .*prepare_weights converts checkpoint \[N, 1\] scales"):
        run_end_to_end("fp8_w8a16", "kn", "wide", "[1,N]", device, loader=seed_004_loader("wide"))


# ------------------------------------------------------------------ errors
def _w(shape=(40, 96), dtype=torch.float8_e4m3fn):
    return torch.zeros(shape).to(dtype)


LOADER_ERRORS = [
    pytest.param(dict(scheme="fp4"), ValueError, r"scheme='fp4' is not known \(allowed: fp8_w8a16, fp8_w8a8, int8_w8a8, fp8_block\)",
                 id="scheme"),
    pytest.param(dict(weight_layout="auto"), ValueError, r"weight_layout='auto' is not known \(allowed: 'nk'", id="layout"),
    pytest.param(dict(scheme="int8_w8a8"), TypeError, r"weight\.dtype=float8_e4m3fn does not fit scheme='int8_w8a8' \(allowed: int8\)",
                 id="weight-dtype"),
    pytest.param(dict(weight=_w((40, 96, 1))), ValueError, r"weight\.shape=\[40, 96, 1\] must be 2-D", id="weight-rank"),
    pytest.param(dict(weight_scale=torch.ones(96)), ValueError,
                 r"weight_scale\.shape=\[96\] fits no per-tensor or per-channel case for N=40, K=96 .*it has K=96 entries",
                 id="scale-per-input-channel"),
    pytest.param(dict(weight_scale=torch.ones(40, 2)), ValueError,
                 r"weight_scale\.shape=\[40, 2\] fits no per-tensor or per-channel case .*allowed: \[\], \[1\], \[1, 1\], \[40\], \[40, 1\], \[1, 40\]",
                 id="scale-shape"),
    pytest.param(dict(weight_scale=torch.ones(40, dtype=torch.int32)), TypeError,
                 r"weight_scale\.dtype=int32 is not a scale dtype", id="scale-dtype"),
    pytest.param(dict(block=(32, 16)), ValueError, r"block=\(32, 16\) was given but scheme='fp8_w8a8' is not block-scaled",
                 id="block-not-needed"),
    pytest.param(dict(scheme="fp8_block", weight_scale=torch.ones(3, 3)), ValueError,
                 r"scheme='fp8_block' needs block=\(block_k, block_n\)", id="block-missing"),
    pytest.param(dict(scheme="fp8_block", block=(32, 16), weight_scale=torch.ones(4, 3)), ValueError,
                 r"weight_scale\.shape=\[4, 3\] does not fit .*declared 'nk' \(expected \[3, 3\].*\)",
                 id="block-scale-shape"),
    pytest.param(dict(scheme="fp8_block", block=(16, 16), weight_scale=torch.ones(6, 3)), ValueError,
                 r"weight_scale\.shape=\[6, 3\] does not fit .*it fits weight_layout='kn''s \[6, 3\]: the scale grid must follow",
                 id="block-scale-other-orientation"),
    pytest.param(dict(in_features=40, out_features=96), ValueError,
                 r"gives in_features=96, but in_features=40 was declared; the shape fits weight_layout='kn'",
                 id="declared-features-flipped"),
    pytest.param(dict(weight_scale="1.0"), TypeError, r"weight_scale must be a torch\.Tensor or a float, got str",
                 id="scale-type"),
]


@pytest.mark.parametrize("overrides, error, message", LOADER_ERRORS)
def test_loader_errors(overrides, error, message):
    kwargs = dict(scheme="fp8_w8a8", weight=_w(), weight_scale=torch.ones(40), weight_layout="nk")
    kwargs.update(overrides)
    with pytest.raises(error, match=message):
        prepare_weights(kwargs.pop("scheme"), kwargs.pop("weight"), kwargs.pop("weight_scale"), **kwargs)
