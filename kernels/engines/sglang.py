"""SGLang's Triton quantization kernels as qkcheck adapters (``--kernels sglang``).

Verified against ``sglang`` 0.5.23 (``VERIFIED``); on another version each adapter's description
carries a version note and the signature check makes drift visible.

Where the kernels come from: ``import sglang`` runs ``sglang/__init__.py``, which pulls the serving
stack (transformers, torchvision, IPython, aiohttp, zmq, ``tvm_ffi`` ... -- several GB, part of it
not installable on a CPU box). The Triton kernel modules themselves need torch, triton and a few
platform probes of ``sglang.srt.utils``. So where ``sglang`` does not import (the CPU CI), each
kernel file is executed from the installed package (``pip install --no-deps sglang==0.5.23``;
nothing of SGLang is copied into qkcheck) under a scoped overlay of ``sys.modules``:

* ``sglang``, ``sglang.kernels``, ... : bare packages (their ``__init__`` is not run), so the file's
  imports of real sibling modules (``sglang.srt.environ``) resolve from the installed files;
* ``sglang.srt.utils``: a stand-in holding only the platform probes the kernel files call at import
  (``is_cuda``, ``is_hip``, ``is_musa``, ``is_xpu``, ``ceil_align``, ``get_device_name``), each
  written as SGLang 0.5.23 defines it in ``sglang/srt/utils/common.py`` (torch.version / torch.cuda
  queries), except that the quantization files see ``is_cuda()`` False (``TRITON_PATH_FILES``: on
  CUDA they would bind SGLang's JIT CUDA kernels instead of the Triton ones the adapters bind);
  ``sglang.kernels.jit.utils`` and ``sglang.srt.utils.patch_torch``: stand-ins whose members serve
  only the CUDA / MUSA branches not taken (a call to one raises).

The overlay is in ``sys.modules`` only while a file executes; whatever ``sglang*`` entries were
there before are put back. Where ``sglang`` imports (a GPU runner with its full install), the
modules are imported the ordinary way (``LOADED_VIA`` says which happened).

=========================================  ======================  =====================================
adapter                                    op                      engine callable (sglang/kernels/ops/)
=========================================  ======================  =====================================
sglang:per_token_group_quant_int8          per_token_group_quant   quantization/int8_kernel.py
                                                                   per_token_group_quant_int8
sglang:per_token_group_quant_fp8_triton    per_token_group_quant   quantization/fp8_kernel.py
                                                                   _per_token_group_quant_8bit_raw (=
                                                                   per_token_group_quant_fp8 off CUDA)
sglang:per_token_quant_int8                per_token_quant         quantization/int8_kernel.py
                                                                   per_token_quant_int8
sglang:w8a8_block_fp8_matmul               block_scaled_mm         gemm/fp8_kernel.py
                                                                   w8a8_block_fp8_matmul_triton
sglang:triton_scaled_mm                    scaled_mm               gemm/fp8_kernel.py triton_scaled_mm
=========================================  ======================  =====================================

Not bound: ``gemm/int8_kernel.py`` ``w8a8_block_int8_matmul`` (block-scaled int8 W8A8): qkcheck's
``block_scaled_mm`` op has FP8 codes only (no int8 reference or bound for block scales yet). SGLang's
per-channel int8 W8A8 Triton GEMM is ``triton_scaled_mm`` (int8 codes, int32 accumulator), bound above.
The GEMM module also imports ``sglang.srt.layers.deep_gemm_wrapper``, ``sglang.srt.runtime_context`` and
``sglang.srt.utils.custom_op``; in files mode these are stand-ins serving only what the bound launchers
read (``get_platform().is_sm90``) or DeepGEMM paths that are never called, and ``get_device_name`` answers
``"cpu"`` off an accelerator (SGLang's returns None there, which its config lookup cannot take).

Inputs: the launchers assert a contiguous ``x``; ``call`` hands them a contiguous copy inside a NaN-poisoned
buffer (the padded-row view the runner makes is what is given up).

Conventions and findings: see ``CONVENTIONS_NOTES`` below and ``docs/findings/sglang-*.md``.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.engines import EngineUnsupported, bias_in, missing_call, platform_limited, register

ENGINE = "sglang"
VERIFIED = ("0.5.23",)
INSTALL_HINT = ("pip install --no-deps sglang==0.5.23 (the Triton kernel files need only torch and triton; "
                "qkcheck loads them without SGLang's import chain)")
INT8_KERNEL = "kernels/ops/quantization/int8_kernel.py"
FP8_KERNEL = "kernels/ops/quantization/fp8_kernel.py"
GEMM_FP8_KERNEL = "kernels/ops/gemm/fp8_kernel.py"  # w8a8_block_fp8_matmul_triton, triton_scaled_mm
EPS = 1e-10  # the eps both group quant functions default to; passed explicitly (= the oracle's default floor)
FP8 = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")

LOADED_VIA: str | None = None  # "import" (sglang imported) or "files" (overlay), once loaded


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def installed_version() -> str | None:
    from qkcheck.kernels.engines import installed_version as _installed

    return _installed(ENGINE)


def version_note() -> str:
    from qkcheck.kernels.engines import version_note as _note

    return _note(ENGINE, VERIFIED)


def _package_dir() -> str | None:
    mod = sys.modules.get(ENGINE)
    spec = getattr(mod, "__spec__", None) if mod is not None else importlib.util.find_spec(ENGINE)
    locs = list(getattr(spec, "submodule_search_locations", None) or ())
    return locs[0] if locs else None


# ------------------------------------------------------------------ files mode: the scoped overlay


def _not_here(name: str):
    def fn(*args, **kwargs):
        raise RuntimeError(f"qkcheck's stand-in {name} was called: the SGLang code path needs the real module "
                           f"(a CUDA / MUSA branch the CPU stand-ins do not model)")
    return fn


# The quantization files bind, on CUDA, SGLang's JIT CUDA kernels in place of the Triton ones
# (int8_kernel.py: ``if _is_cuda: from ...per_token_group_quant import per_token_group_quant``;
# fp8_kernel.py: ``per_token_group_quant_fp8 = sglang_per_token_group_quant_fp8`` and sgl_kernel
# imports), which need SGLang's full install. The adapters bind the Triton kernels, SGLang's path on
# every other platform (ROCm, XPU, ...): in files mode these files are executed with ``is_cuda``
# answering False, so on an NVIDIA GPU the Triton kernels are compiled there as they are on ROCm.
TRITON_PATH_FILES = (INT8_KERNEL, FP8_KERNEL)


def _stand_in_modules(triton_path: bool = False) -> dict[str, types.ModuleType]:
    import torch

    utils = types.ModuleType("sglang.srt.utils")
    # as sglang/srt/utils/common.py (0.5.23) defines them (is_cuda: see TRITON_PATH_FILES)
    utils.is_cuda = ((lambda: False) if triton_path
                     else (lambda: torch.cuda.is_available() and torch.version.cuda is not None))
    utils.is_hip = lambda: torch.version.hip is not None
    utils.is_xpu = lambda: hasattr(torch, "xpu") and torch.xpu.is_available()
    utils.is_musa = lambda: False  # needs torch.version.musa and torchada, neither of which a CPU build has
    utils.ceil_align = lambda x, y: (x + y - 1) // y * y
    utils.get_device_name = _device_name
    utils.get_device_core_count = lambda device_id=0: (torch.cuda.get_device_properties(device_id).multi_processor_count
                                                       if torch.cuda.is_available() else 0)
    utils.is_gfx1250_supported = lambda: bool(torch.version.hip) and "gfx1250" in torch.cuda.get_device_properties(0).gcnArchName
    utils.log_info_on_rank0 = lambda logger, msg: logger.info(msg)
    jit = types.ModuleType("sglang.kernels.jit.utils")
    jit.is_arch_support_pdl = lambda *a, **k: False
    jit.get_jit_cuda_arch = _not_here("sglang.kernels.jit.utils.get_jit_cuda_arch")
    jit.is_hip_runtime = lambda: torch.version.hip is not None
    jit.is_musa_runtime = lambda: False
    patch = types.ModuleType("sglang.srt.utils.patch_torch")
    patch.register_fake_if_exists = _not_here("sglang.srt.utils.patch_torch.register_fake_if_exists")
    # gemm/fp8_kernel.py (0.5.23) imports these at module level; the Triton launchers qkcheck binds use only
    # get_platform().is_sm90 (which selects the Hopper split-K kernel for tuned configs that ask for it)
    dg = types.ModuleType("sglang.srt.layers.deep_gemm_wrapper")
    dg.ENABLE_JIT_DEEPGEMM = False  # read only by the DeepGEMM paths, which are not bound
    ctx = types.ModuleType("sglang.srt.runtime_context")
    platform = types.SimpleNamespace(is_sm90=torch.cuda.is_available() and torch.version.cuda is not None
                                     and torch.cuda.get_device_capability() == (9, 0))
    ctx.get_platform = lambda: platform
    op = types.ModuleType("sglang.srt.utils.custom_op")
    # decorates only the DeepGEMM wrappers (deep_gemm_fp8_fp8_bf16_nt ...), which are not bound: left undecorated
    op.register_custom_op = lambda fn=None, **kw: (lambda f: f) if fn is None else fn
    return {m.__name__: m for m in (utils, jit, patch, dg, ctx, op)}


def _device_name(device_id: int = 0):
    """sglang/srt/utils/common.py get_device_name (0.5.23): the accelerator's name. Where there is none it
    returns None and the GEMM launchers' config lookup (``get_device_name().replace(" ", "_")``) would raise;
    off an accelerator the stand-in answers ``"cpu"``, a name no tuned config file carries, so the
    launchers take their default config -- what they do on a GPU without a tuned table."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(device_id)
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.xpu.get_device_name(device_id)
    return "cpu"


@contextlib.contextmanager
def _overlay(triton_path: bool = False):
    """Bare ``sglang`` packages + the stand-ins in ``sys.modules`` for the duration; the ``sglang*``
    entries that were there before are restored afterwards."""
    ours = lambda k: k == ENGINE or k.startswith(ENGINE + ".")  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if ours(k)]}
    sys.modules.update(_stand_in_modules(triton_path))
    try:
        yield
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


_MODULES: dict[str, types.ModuleType] = {}


def _module(relpath: str) -> types.ModuleType:
    """The installed SGLang module file ``relpath``: imported where ``sglang`` imports, else executed
    under the overlay."""
    global LOADED_VIA
    if relpath in _MODULES:
        return _MODULES[relpath]
    dotted = ".".join([ENGINE, *relpath[:-3].split("/")])
    if LOADED_VIA != "files":
        try:
            mod = importlib.import_module(dotted)
            LOADED_VIA = "import"
            _MODULES[relpath] = mod
            return mod
        except Exception:  # the serving stack's dependencies are missing: fall back to the files
            for k in [k for k in sys.modules if k == ENGINE or k.startswith(ENGINE + ".")]:
                del sys.modules[k]
    from qkcheck.kernels.engines import load_module_from

    with _overlay(triton_path=relpath in TRITON_PATH_FILES):
        mod = load_module_from(ENGINE, relpath)
    LOADED_VIA = "files"
    _MODULES[relpath] = mod
    return mod


def _unavailable() -> str | None:
    folder = _package_dir()
    if folder is None:
        return f"{ENGINE} is not installed ({INSTALL_HINT})"
    for rel in (INT8_KERNEL, FP8_KERNEL):
        if not os.path.isfile(os.path.join(folder, *rel.split("/"))):
            return f"the installed {ENGINE} has no {rel} (not a release this adapter knows); {INSTALL_HINT}"
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"triton does not import ({type(exc).__name__}: {exc}); SGLang's Triton kernels need it"
    return None


def _supported(name: str, check):
    def require(params):
        reason = check(params)
        if reason:
            raise EngineUnsupported(f"{name}: {reason}")
    return require


def _contiguous(x):
    """``x`` copied into a contiguous view with NaN poison before and after it: SGLang's launchers
    assert ``x.is_contiguous()`` (their callers hand them contiguous activations), while the runner's
    inputs are views with padded rows. Reads past the view still land on NaN."""
    import torch

    pad = 64
    buf = torch.full((x.numel() + 2 * pad,), float("nan"), dtype=x.dtype, device=x.device)
    view = buf[pad:pad + x.numel()].view(x.shape)
    view.copy_(x)
    return view


def _pack_x(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_x

    return pack_x(problem, params, device)


# ------------------------------------------------------------------ per_token_group_quant_int8


def _group_int8_supports(p) -> str | None:
    if p["quant_dtype"] != "int8":
        return f"quant_dtype={p['quant_dtype']!r}: per_token_group_quant_int8 produces int8 only"
    if p["column_major_scales"]:
        return "column_major_scales: per_token_group_quant_int8 writes row-major scales only"
    if p["scale_ue8m0"]:
        return "scale_ue8m0: per_token_group_quant_int8 has no power-of-two scale mode"
    return None


def _group_int8_call(fn):
    require = _supported("sglang:per_token_group_quant_int8", _group_int8_supports)

    def call(t, params, config):
        import torch

        require(params)
        return fn(x=_contiguous(t["x"]), group_size=params["group_size"], eps=EPS, dtype=torch.int8)
    return call


# ------------------------------------------------------------------ per_token_group_quant_fp8 (Triton)


def _group_fp8_supports(p) -> str | None:
    if p["quant_dtype"] not in FP8:
        return (f"quant_dtype={p['quant_dtype']!r}: bound here for the FP8 formats (SGLang's int8 group quant "
                f"is per_token_group_quant_int8)")
    if p["scale_ue8m0"]:
        return ("scale_ue8m0: on the Triton path it needs column-major TMA-aligned scales and DeepGEMM's "
                "transform_sf_into_required_layout (row-major asserts it off)")
    return None


def _group_fp8_call(fn):
    require = _supported("sglang:per_token_group_quant_fp8_triton", _group_fp8_supports)

    def call(t, params, config):
        require(params)
        return fn(x=_contiguous(t["x"]), group_size=params["group_size"], eps=EPS, dtype=_torch_dtype(params["quant_dtype"]),
                  column_major_scales=params["column_major_scales"], scale_tma_aligned=False, scale_ue8m0=False)
    return call


# ------------------------------------------------------------------ per_token_quant_int8


def _per_token_int8_supports(p) -> str | None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return ("the Triton interpreter cannot run it: its tl.extra.cuda.libdevice.round has no interpreter "
                "implementation (Triton 3.9: 'Did you forget to add @triton.jit ?'); compiled on a GPU only")
    if p["quant_dtype"] != "int8":
        return f"quant_dtype={p['quant_dtype']!r}: per_token_quant_int8 produces int8 only"
    if p["scale_ub"]:
        return "scale_ub: per_token_quant_int8 has no amax upper bound"
    return None


def _per_token_int8_call(fn):
    require = _supported("sglang:per_token_quant_int8", _per_token_int8_supports)

    def call(t, params, config):
        import torch

        require(params)
        return fn(x=_contiguous(t["x"]), scale_dtype=torch.float32, cal_sum=False)
    return call


# ------------------------------------------------------------------ w8a8_block_fp8_matmul_triton


def _block_fp8_supports(p) -> str | None:
    if p["bias"]:
        return "bias: w8a8_block_fp8_matmul_triton takes no bias (the linear layer adds it afterwards)"
    if p["quant_dtype"] not in ("float8_e4m3fn", "float8_e4m3fnuz"):
        return f"quant_dtype={p['quant_dtype']!r}: SGLang's block FP8 linear quantizes to the platform's e4m3 type"
    return None


def _block_fp8_pack(problem, params, device):
    import numpy as np

    from qkcheck.kernels.scaled_mm.adapter import code_tensor
    from qkcheck.kernels.torch_io import float_tensor

    fmt = params["quant_dtype"]
    a_scale = np.asarray(problem["a_scale"], np.float64)
    return {
        "a": code_tensor(problem["a"], fmt, device),
        "b": code_tensor(np.asarray(problem["b"]).T, fmt, device),  # B: [N, K]
        # column-major: the [ceil(K/bk), M] storage, passed as .t()
        "a_scale": float_tensor(a_scale.T if params["a_scale_major"] == "column" else a_scale, "float32", device),
        "b_scale": float_tensor(np.asarray(problem["b_scale"]).T, "float32", device),  # Bs: [N/bn, K/bk]
    }


def _block_fp8_call(fn):
    require = _supported("sglang:w8a8_block_fp8_matmul", _block_fp8_supports)

    def call(t, params, config):
        require(params)
        a_scale = t["a_scale"].t() if params["a_scale_major"] == "column" else t["a_scale"]
        # A and B: asserted contiguous (prepare_block_fp8_matmul_inputs); As and Bs are read by their strides
        return fn(A=t["a"].contiguous(), B=t["b"].contiguous(), As=a_scale, Bs=t["b_scale"],
                  block_size=[params["scale_block_n"], params["scale_block_k"]],
                  output_dtype=_torch_dtype(params["out_dtype"]))
    return call


# ------------------------------------------------------------------ triton_scaled_mm


def _tsm_supports(p) -> str | None:
    if p["azp"]:
        return "azp: triton_scaled_mm has no activation zero points"
    return None


def _tsm_pack(problem, params, device):
    from qkcheck.kernels.scaled_mm.adapter import pack_scaled_mm_operands

    # "nk": b is the [N, K] storage itself (passed as is); "kn": [K, N] storage, passed as its .t()
    # view; the bias is converted to the output dtype in call (see there)
    return pack_scaled_mm_operands(problem, params, device)


def _tsm_call(fn):
    require = _supported("sglang:triton_scaled_mm", _tsm_supports)

    def call(t, params, config):
        require(params)
        b = t["b"].t() if params["b_storage"] == "nk" else t["b"]
        kw = {}
        if config:  # the gate's tiles (use_heuristic=False); no config: SGLang's own M/N heuristic
            kw = dict(block_size_m=config["block_m"], block_size_n=config["block_n"], block_size_k=config["block_k"],
                      use_heuristic=False)
        # a and b by their strides (is_weak_contiguous); the scales are indexed without strides, as SGLang's
        # layers hold them (contiguous)
        # the kernel adds the bias after converting the accumulator ("it's already in output format"):
        # compiled Triton refuses a bias of another dtype (the branch would change c's type), so it is
        # handed over in out_dtype, as SGLang's layers hold it; a bias that would round there is refused
        out_dtype = _torch_dtype(params["out_dtype"])
        return fn(input=t["a"], weight=b, scale_a=t["a_scale"].contiguous(), scale_b=t["b_scale"].contiguous(),
                  out_dtype=out_dtype, bias=bias_in(t["bias"], out_dtype, "sglang:triton_scaled_mm"), **kw)
    return call


# ------------------------------------------------------------------ table

# Conventions read from the installed source (0.5.23). Declared ones go in the adapter's
# ``conventions``; the findings are NOT conventions and stay strict (the oracle keeps failing them).
CONVENTIONS_NOTES = {
    "sglang:per_token_group_quant_int8": (
        "codes = tl.clamp(y / y_s, -128, 127).to(int8): the float-to-int conversion truncates toward zero "
        "instead of rounding (docs/findings/sglang-int8-group-quant-truncates.md); not declared: the oracle "
        "has no truncation convention and truncation is not a documented choice"),
    "sglang:per_token_group_quant_fp8_triton": (
        "fp8 max = torch.finfo(dtype).max off ROCm (448 for e4m3fn); on ROCm the module's fp8_max (224 for "
        "e4m3fnuz on gfx94x): declared as qmax 224 for float8_e4m3fnuz only where torch.version.hip is set"),
    "sglang:per_token_quant_int8": (
        "codes = libdevice.round(x * (127 / absmax)): exact ties rounded away from zero (CUDA roundf), a "
        "deliberate call of the kernel (it picks the libdevice round of each backend): declared int_ties='away'. "
        "Seen compiled on an H100 (Triton 3.6): undeclared, 1 of 5 gate cases and every fuzz stream failed on "
        "ties only, diagnosed ties_away_from_zero; the interpreter cannot run the kernel"),
    "sglang:w8a8_block_fp8_matmul": (
        "fp32 accumulator; per K-tile acc += dot(a, b) * a_s[:, None] * b_s[None, :] (as vLLM's); off sm90 "
        "(and on sm90 without a tuned SPLIT_K / SWAP_AB config) the one-pass kernel _w8a8_block_fp8_matmul"),
    "sglang:triton_scaled_mm": (
        "int32 (int8) or fp32 (fp8) accumulator, scale_a * scale_b applied to the accumulator in fp32, bias "
        "added, then the output cast: the epilogue qkcheck's scaled_mm bound models"),
}


def _fp8_conventions(params) -> dict:
    import torch

    if torch.version.hip is not None and params.get("quant_dtype") == "float8_e4m3fnuz":
        return {"qmax": 224.0}  # fp8_kernel.py: fp8_max = 224.0 where is_fp8_fnuz()
    return {}


_SPECS = (
    dict(name="sglang:per_token_group_quant_int8", op="per_token_group_quant", file=INT8_KERNEL,
         symbol="per_token_group_quant_int8", signature=("x", "group_size", "eps", "dtype"),
         pack=_pack_x, make_call=_group_int8_call, fields=dict(triton=True), supports=_group_int8_supports,
         conventions={},
         description="SGLang Triton per_token_group_quant_int8 (int8 codes, row-major float32 scales "
                     "absmax / 127, eps=1e-10; the path SGLang takes for int8 group quant off CUDA)"),
    dict(name="sglang:per_token_group_quant_fp8_triton", op="per_token_group_quant", file=FP8_KERNEL,
         symbol="_per_token_group_quant_8bit_raw",
         signature=("x", "group_size", "eps", "dtype", "column_major_scales", "scale_tma_aligned", "scale_ue8m0"),
         pack=_pack_x, make_call=_group_fp8_call, fields=dict(triton=True), supports=_group_fp8_supports,
         conventions=_fp8_conventions,
         description="SGLang Triton per-token-group FP8 quant (_per_token_group_quant_8bit_raw, which is "
                     "per_token_group_quant_fp8 on non-CUDA platforms; row-major: codes = y * (1 / y_s), "
                     "column-major: y / y_s; eps=1e-10; no UE8M0 without DeepGEMM)"),
    dict(name="sglang:per_token_quant_int8", op="per_token_quant", file=INT8_KERNEL,
         symbol="per_token_quant_int8", signature=("x", "scale_dtype", "cal_sum"),
         pack=_pack_x, make_call=_per_token_int8_call, fields=dict(triton=True), supports=_per_token_int8_supports,
         conventions={"int_ties": "away"},
         description="SGLang Triton per_token_quant_int8 (scales absmax / 127 as (M, 1) float32, codes "
                     "libdevice.round(x * (127 / absmax)), absmax floored at 1e-10)"),
    dict(name="sglang:w8a8_block_fp8_matmul", op="block_scaled_mm", file=GEMM_FP8_KERNEL,
         symbol="w8a8_block_fp8_matmul_triton", signature=("A", "B", "As", "Bs", "block_size", "output_dtype"),
         pack=_block_fp8_pack, make_call=_block_fp8_call, fields=dict(triton=True), supports=_block_fp8_supports,
         conventions={},
         description="SGLang w8a8_block_fp8_matmul_triton (B [N, K], Bs [N/bn, K/bk], block_size=[bn, bk]; "
                     "its default tiles BLOCK_M 64, BLOCK_N = bn, BLOCK_K = bk where no tuned config file "
                     "names the device; no bias)"),
    dict(name="sglang:triton_scaled_mm", op="scaled_mm", file=GEMM_FP8_KERNEL,
         symbol="triton_scaled_mm",
         signature=("input", "weight", "scale_a", "scale_b", "out_dtype", "bias", "block_size_m", "block_size_n",
                    "block_size_k", "use_heuristic", "num_warps", "num_stages"),
         pack=_tsm_pack, make_call=_tsm_call,
         fields=dict(triton=True, tunables={"block_m": (16, 32, 64, 128), "block_n": (16, 32, 64, 128),
                                            "block_k": (32, 64, 128, 256)}),
         supports=_tsm_supports, conventions={},
         description="SGLang triton_scaled_mm (int8 / fp8 W8A8, per-token / per-tensor a scales, per-channel "
                     "/ per-tensor b scales, float bias; gate tiles with use_heuristic=False, SGLang's own "
                     "heuristic where the case has no config)"),
)

# the registry's table form (per quant dtype), for what the adapter's function answers on ROCm
register([{**s, "conventions": {"qmax": {"float8_e4m3fnuz": 224.0}} if callable(s["conventions"]) else s["conventions"]}
          for s in _SPECS])


def load() -> tuple[list[KernelAdapter], str | None]:
    """(adapters, None) where SGLang's kernel files load; ([], reason) where they do not. A function
    that is missing from its file still yields its adapter, whose every case fails naming it."""
    reason = _unavailable()
    if reason:
        return [], reason
    note = version_note()
    adapters = []
    for s in _SPECS:
        try:
            fn = getattr(_module(s["file"]), s["symbol"], None)
            where = f"sglang/{s['file']} has no callable {s['symbol']!r}" if not callable(fn) else ""
        except Exception as exc:
            fn, where = None, f"sglang/{s['file']} failed to load ({type(exc).__name__}: {exc})"
        call = s["make_call"](fn) if callable(fn) else missing_call(f"{s['name']}: {where}")
        adapters.append(KernelAdapter(name=s["name"], op=s["op"], pack=s["pack"], call=call,
                                      target=fn if callable(fn) else None, signature=s["signature"],
                                      description=f"{s['description']}; {note}; loaded via {LOADED_VIA}",
                                      supports=platform_limited(s["supports"]), conventions=s["conventions"], **s["fields"]))
    return adapters, None


ADAPTERS, UNAVAILABLE = load()
