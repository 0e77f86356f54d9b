"""gemlite's Triton low-bit GEMMs as qkcheck adapters (``--kernels gemlite``), one per kernel mode.

Verified against ``gemlite`` 0.6.0.post2 (``VERIFIED``); on another version each adapter's
description carries a version note and the signature check makes drift visible.

How it runs without a GPU: gemlite queries the device at import (``triton_kernels/utils.py``:
``torch.cuda.get_device_capability()``, ``torch.cuda.get_device_properties("cuda")``,
``triton.runtime.driver.active.get_current_target()``; ``core.py`` loads the config table named after
the GPU). Where CUDA is not available, those queries are answered by a stand-in H100 (sm_90, 132 SMs,
228 KiB shared memory) only while gemlite imports and while a case calls it (``_device_stand_in``),
so gemlite takes its NVIDIA branches and loads ``configs/h100.json``; torch and triton are restored
afterwards. Where CUDA is available nothing is stood in. ``import gemlite`` also needs ``tqdm``
(``gemlite/helper.py``); nothing else beyond torch and triton.

Configs: gemlite autotunes unless its config cache (``GEMLITE_TRITON_CONFIG_CACHE``, what
``gemlite.load_config`` fills) has an entry for the shape. ``call`` pins one entry per case through
that cache -- gemlite's own mechanism -- and clears the autotuner's memo, so each case runs exactly
the config it names (no benchmarking, which the interpreter cannot do).

=================================  ==========  ==================================================
adapter                            op          engine callable
=================================  ==========  ==================================================
gemlite:w4a16_gemv                 w4a16_gemm  GemLiteLinearTriton.forward_manual(x, "GEMV")
gemlite:w4a16_gemv_revsplitk       w4a16_gemm  ... "GEMV_REVSPLITK"
gemlite:w4a16_gemv_splitk          w4a16_gemm  ... "GEMV_SPLITK"
gemlite:w4a16_gemm_splitk          w4a16_gemm  ... "GEMM_SPLITK"
gemlite:w4a16_gemm                 w4a16_gemm  ... "GEMM"
=================================  ==========  ==================================================

Weights: the problem's codes ``q [K, N]``, ``scales``, ``zeros [K/G, N]`` are handed to gemlite as
``W_q [N, K]`` (uint8 codes), ``scales`` / ``zeros [N, K/G]`` in the activation dtype and packed by
``GemLiteLinearTriton.pack`` (its default ``fma_mode=True``: the weight is dequantized as
``fma(q, s, -z * s)``). What the kernels promise (read from the 0.6.0.post2 source): fp32
accumulation for fp16/bf16 inputs (``GEMLITE_ACC_DTYPE``); GEMM_SPLITK converts each split's fp32
partial to the output dtype and ``tl.atomic_add``s it into a zeroed output (order unspecified).
See ``docs/findings/gemlite-*.md``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

import numpy as np

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.engines import EngineUnsupported, missing_call, register

ENGINE = "gemlite"
VERIFIED = ("0.6.0.post2",)
INSTALL_HINT = "pip install --no-deps gemlite==0.6.0.post2 tqdm (gemlite's Triton kernels need only torch and triton)"
MODES = ("GEMV", "GEMV_REVSPLITK", "GEMV_SPLITK", "GEMM_SPLITK", "GEMM")
# GEMV, GEMV_REVSPLITK, GEMV_SPLITK and GEMM_SPLITK add each program's partial sum into the output with
# tl.atomic_add (relaxed, order unspecified; their grids split K across programs), so on a GPU a repeat
# run may differ in the last bits; only GEMM writes each output once. (The interpreter runs programs
# in order, so there the atomic modes repeat exactly: the GPU gate showed the difference.)
DETERMINISTIC_MODES = ("GEMM",)

# the config each mode runs when the case names none (gemlite's default_config_nvidia where it has
# one; the GEMMs with 16 x 32 x 32 tiles so the interpreter stays quick); tunables override them
DEFAULTS = {
    "GEMV": {"BLOCK_SIZE_M": 1, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "A_load_order": 0, "dot_prod_mode": 0,
             "num_warps": 1, "num_stages": 1},
    "GEMV_REVSPLITK": {"BLOCK_SIZE_M": 1, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 16, "A_load_order": 0,
                       "dot_prod_mode": 0, "num_warps": 1, "num_stages": 1},
    "GEMV_SPLITK": {"BLOCK_SIZE_M": 1, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8, "SPLIT_K": 1,
                    "A_load_order": 0, "dot_prod_mode": 0, "num_warps": 4, "num_stages": 1},
    "GEMM_SPLITK": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8, "SPLIT_K": 2,
                    "A_load_order": 0, "num_warps": 4, "num_stages": 2},
    "GEMM": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8, "A_load_order": 0,
             "num_warps": 4, "num_stages": 2},
}
TUNABLE_KEYS = {"block_m": "BLOCK_SIZE_M", "block_n": "BLOCK_SIZE_N", "block_k": "BLOCK_SIZE_K", "split_k": "SPLIT_K"}
TUNABLES = {
    "GEMV": {}, "GEMV_REVSPLITK": {}, "GEMV_SPLITK": {},
    "GEMM_SPLITK": {"block_n": (32, 64), "block_k": (32,), "split_k": (1, 2, 4)},
    "GEMM": {"block_m": (16, 32), "block_n": (32, 64), "block_k": (32,)},
}

_GEMLITE = None


def installed_version() -> str | None:
    from qkcheck.kernels.engines import installed_version as _installed

    return _installed(ENGINE)


def version_note() -> str:
    from qkcheck.kernels.engines import version_note as _note

    return _note(ENGINE, VERIFIED)


@contextlib.contextmanager
def _device_stand_in():
    """Off CUDA: torch.cuda's capability / properties and triton's active driver answer as an H100,
    for the duration only."""
    import torch
    import triton

    if torch.cuda.is_available():
        yield
        return
    from triton.backends.compiler import GPUTarget

    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", multi_processor_count=132, major=9, minor=0)

    class Driver:
        utils = types.SimpleNamespace(get_device_properties=lambda i: {"max_shared_mem": 232448})

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    cfg = triton.runtime.driver
    saved = (torch.cuda.get_device_capability, torch.cuda.get_device_properties, cfg._active)
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_properties = lambda *a, **k: props
    cfg.set_active(Driver())
    try:
        yield
    finally:
        torch.cuda.get_device_capability, torch.cuda.get_device_properties, cfg._active = saved


@contextlib.contextmanager
def _interpreter_stand_in():
    """Under the Triton interpreter (``TRITON_INTERPRET=1``, tensors on the CPU), for the duration of a call:

    * ``gemv_kernels.fp4_mapping`` -- a list built at import with one tensor per CUDA device and indexed by
      ``W_q.device.index`` (``gemv_kernels.py`` line 676), which is None for a CPU tensor -- answers that
      index with the same 16-entry table on the CPU (the INT kernel receives it and never reads it; only
      the MX kernel dequantizes through it). Without this every GEMV case raises ``TypeError: list
      indices must be integers or slices, not NoneType``.
    * bf16 output: ``tl.atomic_add`` on bf16 is not implemented by the interpreter (``ValueError:
      Unsupported data type``). gemlite's own switch ``set_native_atomic_bfp16(False)`` (core.py line
      116) selects the path it takes on GPUs without bf16 atomics (sm < 90): an fp32 output buffer
      atomically accumulated, cast to bf16 at the end. fp16 keeps the native fp16 atomics (the H100
      path the stand-in device selects).

    Nothing is changed where CUDA is available or outside the interpreter."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import torch
    from gemlite.triton_kernels import gemv_kernels, utils

    table = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=torch.int8)
    saved = (gemv_kernels.fp4_mapping, utils.GEMLITE_USE_NATIVE_ATOMIC_BFP16)
    gemv_kernels.fp4_mapping = {None: table}
    utils.GEMLITE_USE_NATIVE_ATOMIC_BFP16 = False
    try:
        yield
    finally:
        gemv_kernels.fp4_mapping, utils.GEMLITE_USE_NATIVE_ATOMIC_BFP16 = saved


def _gemlite():
    global _GEMLITE
    if _GEMLITE is None:
        with _device_stand_in():
            import gemlite  # noqa: F401
            import gemlite.core as core
        _GEMLITE = core
    return _GEMLITE


def _unavailable() -> str | None:
    if sys.modules.get(ENGINE) is None and importlib.util.find_spec(ENGINE) is None:
        return f"{ENGINE} is not installed ({INSTALL_HINT})"
    try:
        _gemlite()
    except Exception as exc:
        return f"{ENGINE} failed to import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    return None


def _supports(p) -> str | None:
    if p["act_dtype"] not in ("float16", "bfloat16"):
        return f"act_dtype={p['act_dtype']!r}: bound for float16 / bfloat16 activations"
    if p["out_dtype"] != p["act_dtype"]:
        return f"out_dtype={p['out_dtype']!r}: GemLiteLinearTriton is built here with output dtype = input dtype"
    if p["bias"]:
        return "bias: gemlite adds it outside the kernel (out += bias in torch); not bound"
    if p["layout"] != "gptq":
        return f"layout={p['layout']!r}: gemlite packs the codes itself; run once, on the canonical (gptq) cases"
    return None


def _interpreter_reason(mode: str) -> str | None:
    import os

    if mode == "GEMM" and os.environ.get("TRITON_INTERPRET") == "1":
        return ("the Triton interpreter cannot run it: gemm_kernels.py line 417 computes "
                "(k * stride_mul).to(tl.int32) with the K-loop variable k, which the interpreter hands out as a "
                "Python int (InterpreterError: AttributeError: 'float' object has no attribute 'to'); "
                "compiled on a GPU only")
    return None


def _mode_supports(mode: str):
    def supports(p) -> str | None:
        return _supports(p) or _interpreter_reason(mode)
    return supports


def _pack(problem, params, device):
    import torch

    q = np.asarray(problem["q"])  # [K, N]
    k, n = q.shape
    g = k if problem["group_size"] == -1 else int(problem["group_size"])
    scales = np.asarray(problem["scales"], np.float64)
    zeros = problem.get("zeros")
    zeros = np.full(scales.shape, 8.0) if zeros is None else np.asarray(zeros, np.float64)
    act = getattr(torch, params["act_dtype"])
    from qkcheck.kernels.torch_io import float_tensor

    return {
        "x": float_tensor(np.asarray(problem["x"], np.float64), params["act_dtype"], device),
        "W_q": torch.from_numpy(np.ascontiguousarray(q.T).astype(np.uint8)).to(device),
        "scales": torch.from_numpy(np.ascontiguousarray(scales.T)).to(act).to(device),
        "zeros": torch.from_numpy(np.ascontiguousarray(zeros.T)).to(act).to(device),
        "group_size": torch.tensor(g),
    }


def _make_call(mode: str, name: str):
    def call(t, params, config):
        import torch

        reason = _mode_supports(mode)(params)
        if reason:
            raise EngineUnsupported(f"{name}: {reason}")
        core = _gemlite()
        unknown = sorted(set(config or {}) - set(TUNABLES[mode]))
        if unknown:
            raise ValueError(f"{name}: config keys {unknown} are not tunable (allowed: {', '.join(TUNABLES[mode])})")
        cfg = dict(DEFAULTS[mode])
        for key, val in (config or {}).items():
            cfg[TUNABLE_KEYS[key]] = int(val)
        x, wq = t["x"], t["W_q"]
        n, k = wq.shape
        g = int(t["group_size"])
        dt = core.DType.FP16 if x.dtype == torch.float16 else core.DType.BF16
        with _device_stand_in(), _interpreter_stand_in():
            lin = core.GemLiteLinearTriton(W_nbits=4, group_size=g, in_features=k, out_features=n,
                                           input_dtype=dt, output_dtype=dt)
            lin.pack(W_q=wq, scales=t["scales"], zeros=t["zeros"], bias=None)
            from gemlite.triton_kernels.utils import get_closest_m

            meta = lin.get_meta_args()
            in_dt = meta[5]
            in_dt = core.DType.FP16.value if in_dt == core.DType.BF16.value else in_dt
            type_id = in_dt * 100 + meta[1]
            sig = str(tuple([get_closest_m(x.shape[0]), n, k, g, lin.elements_per_sample, type_id]))
            core.GEMLITE_TRITON_CONFIG_CACHE.setdefault(mode, {})[sig] = dict(cfg)
            for kern in core.GEMLITE_TRITON_MAPPING[mode].kernel:  # the autotuners' memo of earlier cases
                getattr(kern, "cache", {}).clear()
            return lin.forward_manual(x=x, matmul_type=mode)
    return call


def _native_atomics(out_dtype: str) -> bool:
    """Whether gemlite's atomic modes add into an output buffer of the output dtype (True) or into a
    float32 buffer cast once at the end: float16 always; bfloat16 where ``gpu_supports_bfloat16_atomicadd()``
    (sm_90+ and ``GEMLITE_USE_NATIVE_ATOMIC_BFP16``; ``gemv_kernels.py`` lines 619-620,
    ``gemm_splitK_kernels.py`` lines 789-790), which the interpreter stand-in turns off."""
    import os

    if out_dtype != "bfloat16":
        return True
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    from gemlite.triton_kernels.utils import gpu_supports_bfloat16_atomicadd

    return bool(gpu_supports_bfloat16_atomicadd())


def partials(mode: str, k: int, config) -> tuple[int, int]:
    """(S, rows per tile) of gemlite's reduction for ``mode`` at K = ``k`` under ``config`` (the
    adapter's tunable names): GEMM_SPLITK, ``SPLIT_K`` fp32 partials over the BLOCK_K tiles
    ``t = k*SPLIT_K + pid_k`` (``gemm_splitK_kernels.py`` lines 381-477); GEMV, one per BLOCK_K block
    (grid ``cdiv(K, BLOCK_SIZE_K)``, ``gemv_kernels.py`` line 649); GEMV_REVSPLITK, one per two blocks
    (grid ``cdiv(K, 2 * BLOCK_SIZE_K)``, ``gemv_revsplitK_kernels.py`` line 487, ``pid_k`` doubled at line
    306); GEMV_SPLITK, ``SPLIT_K`` (1 here: a plain store); GEMM, 1."""
    cfg = dict(DEFAULTS[mode])
    for key, val in (config or {}).items():
        if key in TUNABLE_KEYS:
            cfg[TUNABLE_KEYS[key]] = int(val)
    bk = cfg["BLOCK_SIZE_K"]
    if mode == "GEMM_SPLITK":
        return cfg["SPLIT_K"], bk
    if mode == "GEMV":
        return -(-k // bk), bk
    if mode == "GEMV_REVSPLITK":
        return -(-k // (2 * bk)), 2 * bk
    if mode == "GEMV_SPLITK":
        return cfg["SPLIT_K"], bk
    return 1, bk


def _conventions(mode: str):
    """gemlite's documented arithmetic, declared (see ``oracle/ops/w4a16.py``): ``fma_mode`` packing
    (``dequant="fma_zs_rounded"``: ``core.py`` line 674 stores ``-z*s`` rounded to the activation
    dtype, ``triton_kernels/utils.py`` line 103 ``tl.fma(q, s, zeros')``) in every mode with grouped
    scales, and where the kernel atomically adds several fp32 partials into an output of the output
    dtype, their number and tile (``partial_sums``, ``partial_block_k``); with one group over K the
    channelwise path instead (``partial_roundings=2``)."""
    def conventions(params, dims, config):
        k = int(dims.get("k", 0))
        s, bk = partials(mode, k, config)
        if params["group_size"] in (-1, k):
            # one group over K: the scales are channelwise (core.py line 664), so no fma packing (line 673)
            # and W_group_mode 1 (line 691): codes minus zero point, exact; the fp32 accumulator is rounded
            # to the activation dtype and scaled there (acc.to(meta_dtype) * scales_b, gemm_splitK_kernels.py
            # line 499, gemv_kernels.py line 398): two roundings before the partial is added. Declared with
            # the output-dtype additions even where bf16 adds in float32 (a sum the same bound covers).
            return {"partial_sums": s, "partial_block_k": bk, "partial_roundings": 2} if s > 1 else {
                "partial_roundings": 2}
        conv = {"dequant": "fma_zs_rounded"}
        if s > 1 and _native_atomics(params["out_dtype"]):
            conv.update(partial_sums=s, partial_block_k=bk)
        return conv
    return conventions


_SPECS = tuple(
    dict(name=f"gemlite:w4a16_{mode.lower()}", op="w4a16_gemm", mode=mode, supports=_mode_supports(mode),
         conventions=_conventions(mode))
    for mode in MODES
)

register(_SPECS)


def load() -> tuple[list[KernelAdapter], str | None]:
    reason = _unavailable()
    if reason:
        return [], reason
    note = version_note()
    core = _gemlite()
    target = getattr(getattr(core, "GemLiteLinearTriton", None), "forward_manual", None)
    adapters = []
    for s in _SPECS:
        call = _make_call(s["mode"], s["name"]) if callable(target) else missing_call(
            f"{s['name']}: gemlite.core.GemLiteLinearTriton.forward_manual not found")
        adapters.append(KernelAdapter(
            name=s["name"], op=s["op"], pack=_pack, call=call, layouts=("gptq",), tunables=TUNABLES[s["mode"]],
            triton=True, deterministic=s["mode"] in DETERMINISTIC_MODES,
            target=target, signature=("self", "x", "matmul_type"), supports=s["supports"], conventions=s["conventions"],
            default_config=lambda dims, params, m=s["mode"]: {k: DEFAULTS[m][v] for k, v in TUNABLE_KEYS.items()
                                                              if k in TUNABLES[m]},
            description=f"gemlite GemLiteLinearTriton (W4, fp16/bf16 activations, fma_mode packing) "
                        f"forward_manual(x, matmul_type={s['mode']!r}); config pinned through gemlite's config "
                        f"cache; {note}"))
    return adapters, None


ADAPTERS, UNAVAILABLE = load()
