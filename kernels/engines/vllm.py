"""vLLM's quantization kernels as qkcheck adapters (``--kernels vllm``).

Two ways in, chosen by ``load()``:

- **files** (any machine with the vllm package files, e.g. a CPU box): ``import vllm`` needs the
  engine's dependencies and its compiled ``_C`` extension, which a CPU box does not have, so the
  wheel is installed with ``pip install --no-deps --target DIR`` and ``DIR`` put on PYTHONPATH.
  Only the module files holding the Triton kernels are executed from the installed package (never
  copied here), under a scoped set of stand-in modules for their imports (``_overlay``): the real
  ``vllm/envs.py`` and ``vllm/triton_utils/tensor_descriptor.py``, the real Triton as
  ``vllm.triton_utils``, a stand-in ``vllm.platforms`` whose ``current_platform`` answers only what
  these kernels ask (no CUDA/XPU: the Triton paths run; the fp8 type is the case's, so
  ``float8_e4m3fnuz`` answers as ROCm MI300 does) and raises for anything else, and inert
  placeholders for layer classes, loggers and parameter types the modules import but the bound
  functions never call. The overlay is in ``sys.modules`` only while a module loads and while a
  kernel runs (the launchers import lazily): ``import vllm`` elsewhere is not affected. Where a
  function is registered as a ``torch.ops.vllm`` custom op, its implementation function is bound.
- **import** (a GPU runner where ``import vllm`` works): the same Triton functions from the real
  modules, plus the CUDA-only custom ops (``scaled_fp8_quant``, ``scaled_int8_quant``,
  ``cutlass_scaled_mm``), which cannot run without ``vllm._C``.

Verified (files mode, CPU, Triton interpreter) against vllm 0.33.0; ``VERIFIED`` holds the range,
and on another installed version each adapter's description carries a version note (the
signature check makes drift visible). The import-mode custom-op adapters were written from the
v0.10 - v0.11 source and have not been run.

=============================  ======================  =======================================================
adapter                        op                      engine callable
=============================  ======================  =======================================================
vllm:triton_w4a16_gemm         w4a16_gemm (gptq)       kernels/linear/mixed_precision/triton_w4a16.py
                                                       ``_triton_w4a16_gemm_impl`` (the launcher behind
                                                       ``torch.ops.vllm.triton_w4a16_gemm``; its own tiles)
vllm:triton_w4a16_kernel       w4a16_gemm (gptq)       the same file's ``triton_w4a16_gemm_kernel`` launched
                                                       with fuzzed tiles (BLOCK_K <= group_size, the
                                                       launcher's contract since PR #39705)
vllm:awq_gemm_triton           w4a16_gemm (awq)        layers/quantization/awq_triton.py ``awq_gemm_triton``
vllm:w8a8_block_fp8_matmul     block_scaled_mm         fp8_utils.py ``w8a8_triton_block_scaled_mm``
vllm:per_token_group_fp8       per_token_group_quant   fp8_utils.py ``per_token_group_quant_fp8`` (Triton
                                                       fallback in files mode; CUDA op in import mode)
vllm:triton_scaled_mm          scaled_mm               compressed_tensors/triton_scaled_mm.py
vllm:fused_moe                 fused_moe               layers/fused_moe/fused_moe.py
                                                       ``dispatch_fused_moe_kernel`` (+ torch glue, below)
vllm:scaled_fp8_quant          per_token_quant         _custom_ops (import mode only: CUDA)
vllm:scaled_int8_quant         per_token_quant         _custom_ops (import mode only: CUDA)
vllm:cutlass_scaled_mm         scaled_mm               _custom_ops (import mode only: CUDA)
=============================  ======================  =======================================================

``vllm:fused_moe`` (op ``fused_moe``; dense bf16/fp16, int4 W4A16 and block-FP8 experts) binds
``fused_moe.py``'s ``dispatch_fused_moe_kernel`` (hence ``fused_moe_kernel`` and
``fused_moe_kernel_gptq_awq``), ``_prepare_expert_assignment``, ``get_default_config`` and
``fused_moe/utils.py``'s ``moe_kernel_quantize_input``, called in ``fused_experts_impl``'s order.
``fused_experts`` itself needs compiled ops (``moe_align_block_size``, the gated activation,
``moe_sum``), so the router, the block alignment, the activation between the GEMMs and the top-k sum
are qkcheck's torch glue (the MoE section below says which and why; tests/engines checks them
against the oracle with a torch stand-in for vLLM's launcher).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
import types

import numpy as np

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.engines import EngineUnsupported, bias_in, build, platform_limited, register, require_supported

ENGINE = "vllm"
INSTALL_HINT = ("pip install vllm on a GPU runner; on a CPU box: pip download --no-deps vllm==0.33.0, "
                "pip install --no-deps --target DIR <wheel>, PYTHONPATH=DIR")
VERIFIED = ("0.33.0", "0.33.0")  # the vllm versions these adapters were run against (first, last)
CUSTOM_OPS = ("vllm._custom_ops",)
FP8_UTILS = "model_executor/layers/quantization/utils/fp8_utils.py"
QUANT_UTILS = "model_executor/layers/quantization/utils/quant_utils.py"
AWQ_TRITON = "model_executor/layers/quantization/awq_triton.py"
TRITON_SCALED_MM = "model_executor/layers/quantization/compressed_tensors/triton_scaled_mm.py"
TRITON_W4A16 = "model_executor/kernels/linear/mixed_precision/triton_w4a16.py"
MATH_UTILS = "utils/math_utils.py"  # cdiv, round_up, next_power_of_2 (the MoE files use them)
MOE_UTILS = "model_executor/layers/fused_moe/utils.py"  # enable_swap_ab, resolve_moe_use_td, moe_kernel_quantize_input
FUSED_MOE = "model_executor/layers/fused_moe/fused_moe.py"
# the files a files-mode run executes (for carrying to a machine without the wheel)
FILES = ("envs.py", "triton_utils/tensor_descriptor.py", QUANT_UTILS, FP8_UTILS, AWQ_TRITON, TRITON_SCALED_MM,
         TRITON_W4A16, MATH_UTILS, MOE_UTILS, FUSED_MOE)
EPS = 1e-10  # the eps per_token_group_quant_fp8 defaults to; passed explicitly (= oracle default floor)
FP8_E4M3 = ("float8_e4m3fn", "float8_e4m3fnuz")


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def installed_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("vllm")
    except Exception:
        return None


def version_note() -> str:
    v = installed_version()
    lo, hi = VERIFIED
    if v is None:
        return f"verified against vllm {lo}-{hi}; installed version unknown"
    if lo <= v <= hi and len(v.split(".")) == len(lo.split(".")):
        return f"vllm {v} (verified {lo}-{hi})"
    return f"vllm {v} is outside the verified range {lo}-{hi}: signatures are checked, semantics are not confirmed"


# ------------------------------------------------------------------ files mode: the stand-in imports


class _Inert:
    """A placeholder for a name the loaded vLLM modules import but the bound kernels never use
    (layer base classes, parameter types, loggers): attribute access and calls give placeholders,
    a single function or class passed to it (a decorator) is returned unchanged, it can be a base
    class, and using it as a truth value raises (a hidden decision on a placeholder fails)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Inert(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], (types.FunctionType, type)):
            return args[0]
        return _Inert(f"{self._name}(...)")

    def __mro_entries__(self, bases):
        return (object,)

    def __or__(self, other):  # type annotations evaluated at import (``X | None``)
        return self

    __ror__ = __or__

    def __getitem__(self, item):  # ``Placeholder[int]`` in annotations
        return self

    def __bool__(self):
        raise TypeError(f"qkcheck's stand-in for {self._name} was used as a truth value: the vLLM code path "
                        "depends on something the stand-in does not model")

    def __repr__(self):
        return f"<stand-in {self._name}>"

    __str__ = __repr__


class _InertModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Inert(f"{self.__name__}.{attr}")


class Platform:
    """vLLM's ``current_platform`` as these kernels ask it, for a machine without CUDA/ROCm/XPU
    builds of vLLM: the Triton paths run. ``fp8`` is the platform's fp8 type (set per call from the
    case: ``float8_e4m3fnuz`` is ROCm MI300's, with vLLM's 224 max); ``rocm`` picks the ROCm tile
    tables of launchers that have them ("mi300", "gfx1x" (RDNA), or None: the CUDA/other table)."""

    def __init__(self):
        self.fp8 = "float8_e4m3fn"
        self.rocm: str | None = None

    def fp8_dtype(self):
        return _torch_dtype(self.fp8)

    def is_fp8_fnuz(self):
        return self.fp8 == "float8_e4m3fnuz"

    def is_rocm(self):
        return self.rocm is not None

    def is_cuda(self):
        return False

    def is_cuda_alike(self):
        return False

    def is_xpu(self):
        return False

    # the fused MoE files (fused_moe.py, fused_moe/utils.py) ask these: no CUDA device capability
    # (enable_swap_ab is False: the SWAP_AB kernel path is Hopper's), and the torch.compile backend of a
    # decorated torch helper the bound functions never call
    simple_compile_backend = "eager"

    def is_device_capability(self, capability) -> bool:
        return False

    def has_device_capability(self, capability) -> bool:
        return False

    def __getattr__(self, attr):
        raise AttributeError(f"qkcheck's stand-in vLLM platform does not model current_platform.{attr}: the "
                             "kernel's path depends on it, so it cannot run from the package files here")


PLATFORM = Platform()


class _Finder:
    """Meta-path finder active inside the overlay: any ``vllm.*`` name not provided is an inert module."""

    def __init__(self, provided: dict):
        self.provided = provided

    def find_spec(self, name, path=None, target=None):
        if name == ENGINE or name.startswith(ENGINE + "."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _InertModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        pass


_PROVIDED: dict[str, types.ModuleType] = {}  # the real files loaded + the stand-ins, by module name


@contextlib.contextmanager
def _overlay():
    """``_PROVIDED`` and the inert finder in place for a load or a kernel call; the previous
    ``vllm*`` entries of ``sys.modules`` (none, usually) are restored afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == ENGINE or k.startswith(ENGINE + ".")}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(_PROVIDED)
    finder = _Finder(_PROVIDED)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if k == ENGINE or k.startswith(ENGINE + ".")]:
            obj = sys.modules.pop(k)
            if k not in _PROVIDED and isinstance(obj, _InertModule):
                continue
            _PROVIDED.setdefault(k, obj)  # a real file imported by another keeps its module
        sys.modules.update(saved)


def _package_dir() -> str | None:
    spec = importlib.util.find_spec(ENGINE)  # a top-level name: runs no package code
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _exec_file(root: str, relpath: str) -> types.ModuleType:
    import os

    name = ".".join([ENGINE, *relpath[:-3].split("/")])
    if name in _PROVIDED:
        return _PROVIDED[name]
    path = os.path.join(root, relpath)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    _PROVIDED[name] = module
    with _overlay():
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del _PROVIDED[name]
            raise
    return module


def _stand_ins() -> None:
    import triton
    import triton.language as tl

    def mod(name, **attrs):
        m = _InertModule(name)
        m.__path__ = []
        for k, v in attrs.items():
            setattr(m, k, v)
        _PROVIDED[name] = m
        return m

    mod(ENGINE)
    mod(f"{ENGINE}.platforms", current_platform=PLATFORM)
    mod(f"{ENGINE}.platforms.rocm", on_gfx1x=lambda: PLATFORM.rocm == "gfx1x",
        on_gfx1250=lambda: PLATFORM.rocm == "gfx1250")
    mod(f"{ENGINE}.triton_utils", triton=triton, tl=tl, HAS_TRITON=True)
    # direct_register_custom_op: not registered into torch.ops.vllm here; adapters bind the impl
    mod(f"{ENGINE}.utils.torch_utils", direct_register_custom_op=lambda *a, **k: None)
    # no DeepGEMM without a CUDA Hopper/Blackwell build: is_deep_gemm_e8m0_used() is False there (its first
    # check, is_deep_gemm_supported()); per_token_group_quant_fp8 asks it when use_ue8m0 is left None, as
    # moe_kernel_quantize_input leaves it
    mod(f"{ENGINE}.utils.deep_gemm", is_deep_gemm_e8m0_used=lambda: False)


def _load_files() -> tuple[dict | None, str | None]:
    """Files mode: the kernel modules by relpath, or (None, why not)."""
    try:
        root = _package_dir()
    except Exception as exc:  # a broken install (a finder raising) is reported, not raised
        return None, f"vllm failed to import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    if root is None:
        return None, f"vllm is not installed ({INSTALL_HINT})"
    try:
        _PROVIDED.clear()
        _stand_ins()
        envs = _exec_file(root, "envs.py")
        _PROVIDED[ENGINE].envs = envs
        td = _exec_file(root, "triton_utils/tensor_descriptor.py")
        _PROVIDED[f"{ENGINE}.triton_utils"].use_tensor_descriptor = td.use_tensor_descriptor
        mods = {}
        for rel in FILES[2:]:
            try:
                mods[rel] = _exec_file(root, rel)
            except Exception as exc:
                mods[rel] = exc
        return mods, None
    except Exception as exc:
        return None, (f"vllm's package files at {root} could not be loaded ({type(exc).__name__}: {exc}); "
                      f"{INSTALL_HINT}")


@contextlib.contextmanager
def platform(fp8: str | None = None, rocm: str | None = None):
    """The stand-in platform as a case needs it (files mode): its fp8 type, its ROCm tile table."""
    saved = (PLATFORM.fp8, PLATFORM.rocm)
    PLATFORM.fp8 = fp8 if fp8 in FP8_E4M3 else saved[0]
    PLATFORM.rocm = rocm
    try:
        yield PLATFORM
    finally:
        PLATFORM.fp8, PLATFORM.rocm = saved


def _guarded(fn):
    """``fn`` run inside the overlay (launchers import lazily)."""
    if fn is None:
        return None

    def run(**kwargs):
        with _overlay():
            return fn(**kwargs)

    run.__wrapped__ = fn  # the signature check reads the engine function's own parameters
    run.__qualname__ = getattr(fn, "__qualname__", "run")
    return run


# ------------------------------------------------------------------ scaled_fp8_quant (import mode)


def _fp8_supports(p) -> str | None:
    if p["quant_dtype"] not in FP8_E4M3:
        return (f"quant_dtype={p['quant_dtype']!r}: scaled_fp8_quant produces the platform's e4m3 type "
                f"(float8_e4m3fn on CUDA, float8_e4m3fnuz on MI300), nothing else")
    return None


def _fp8_pack(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_per_token

    return pack_per_token(problem, params, device)


def _fp8_call(fn):
    def call(t, params, config):
        require_supported("vllm:scaled_fp8_quant", params)
        codes, scales = fn(input=t["x"], scale=None, num_token_padding=None, scale_ub=t.get("scale_ub"),
                           use_per_token_if_dynamic=True)
        if str(codes.dtype).removeprefix("torch.") != params["quant_dtype"]:
            raise EngineUnsupported(f"vllm:scaled_fp8_quant: this platform's fp8 type is {codes.dtype}; "
                                    f"the case asks for {params['quant_dtype']}")
        return codes, scales
    return call


# ------------------------------------------------------------------ scaled_int8_quant (import mode)


def _int8_supports(p) -> str | None:
    if p["quant_dtype"] != "int8":
        return f"quant_dtype={p['quant_dtype']!r}: scaled_int8_quant produces int8 only"
    if p["scale_ub"]:
        return "scale_ub: scaled_int8_quant has no amax upper bound"
    return None


def _int8_call(fn):
    def call(t, params, config):
        require_supported("vllm:scaled_int8_quant", params)
        codes, scales, azp = fn(input=t["x"], scale=None, azp=None, symmetric=True)
        if azp is not None:
            raise RuntimeError(f"vllm:scaled_int8_quant returned zero points {tuple(azp.shape)} for symmetric=True")
        return codes, scales
    return call


# ------------------------------------------------------------------ per_token_group_quant_fp8


def _group_supports(p) -> str | None:
    if p["quant_dtype"] not in FP8_E4M3:
        return (f"quant_dtype={p['quant_dtype']!r}: per_token_group_quant_fp8 clamps to the e4m3 range "
                f"(allowed: {', '.join(FP8_E4M3)}; vLLM has a separate int8 function)")
    return None


def _group_call(fn):
    def call(t, params, config):
        require_supported("vllm:per_token_group_fp8", params)
        with platform(fp8=params["quant_dtype"]):  # files mode: float8_e4m3fnuz answers as ROCm MI300
            return fn(x=t["x"], group_size=params["group_size"], eps=EPS, dtype=_torch_dtype(params["quant_dtype"]),
                      column_major_scales=params["column_major_scales"], tma_aligned_scales=False, out_q=None,
                      use_ue8m0=params["scale_ue8m0"])
    return call


def _group_conventions(p) -> dict:
    # get_fp8_min_max(): +-224 where the platform's fp8 type is float8_e4m3fnuz (quant_utils.py)
    return {"qmax": 224.0} if p.get("quant_dtype") == "float8_e4m3fnuz" else {}


# ------------------------------------------------------------------ cutlass_scaled_mm (import mode)


def _mm_supports(p) -> str | None:
    if p["out_dtype"] not in ("float16", "bfloat16"):
        return f"out_dtype={p['out_dtype']!r}: cutlass_scaled_mm writes float16 or bfloat16 only"
    if p["azp"]:
        return "azp: asymmetric int8 goes through cutlass_scaled_mm_azp, which this adapter does not bind"
    if p["b_storage"] != "nk":
        return "b_storage='kn': cutlass_scaled_mm takes b column-major (the .t() view of [N, K] storage)"
    return None


def _mm_pack(problem, params, device):
    from qkcheck.kernels.scaled_mm.adapter import code_tensor, scale_arrival
    from qkcheck.kernels.torch_io import float_tensor

    fmt = params["quant_dtype"]
    bias = problem.get("bias")
    return {
        "a": code_tensor(problem["a"], fmt, device),
        "b": code_tensor(np.asarray(problem["b"]).T, fmt, device),  # [N, K] storage, passed as .t()
        "a_scale": scale_arrival(problem["a_scale"], params["a_scale_shape"], device),
        "b_scale": scale_arrival(problem["b_scale"], params["b_scale_shape"], device),
        # float32 (exact); call hands the engine out_dtype, refusing a bias that would round
        "bias": None if bias is None else float_tensor(bias, "float32", device),
    }


def _mm_call(fn):
    def call(t, params, config):
        require_supported("vllm:cutlass_scaled_mm", params)
        return fn(a=t["a"], b=t["b"].t(), scale_a=t["a_scale"], scale_b=t["b_scale"],
                  out_dtype=_torch_dtype(params["out_dtype"]),
                  bias=bias_in(t["bias"], _torch_dtype(params["out_dtype"]), "vllm:cutlass_scaled_mm"))
    return call


# ------------------------------------------------------------------ triton_scaled_mm

TSM_DEFAULT = {"block_m": 32, "block_n": 32, "block_k": 32}


def _tsm_supports(p) -> str | None:
    if p["azp"]:
        return "azp: triton_scaled_mm has no activation zero points"
    if p["b_scale_shape"] == "[1,N]":
        return "b_scale_shape='[1,N]': triton_scaled_mm takes scale_b as [N, 1], [N], [1, 1] or a scalar"
    return None


def _tsm_pack(problem, params, device):
    from qkcheck.kernels.scaled_mm.adapter import code_tensor, scale_arrival
    from qkcheck.kernels.torch_io import float_tensor

    fmt = params["quant_dtype"]
    b = np.asarray(problem["b"])
    bias = problem.get("bias")
    b_shape = "[N,1]" if params["b_scale_shape"] == "[N,1]" else params["b_scale_shape"]
    return {
        "a": code_tensor(problem["a"], fmt, device),
        "b": code_tensor(b.T if params["b_storage"] == "nk" else b, fmt, device),
        "a_scale": scale_arrival(problem["a_scale"], params["a_scale_shape"], device),
        "b_scale": scale_arrival(problem["b_scale"], b_shape, device),
        "bias": None if bias is None else float_tensor(bias, "float32", device),
    }


def _tsm_call(fn):
    def call(t, params, config):
        require_supported("vllm:triton_scaled_mm", params)
        b = t["b"].t() if params["b_storage"] == "nk" else t["b"]
        kw = {}
        if config:  # the gate's tiles (use_heuristic=False); no config: vLLM's own M/N heuristic
            kw = dict(block_size_m=config["block_m"], block_size_n=config["block_n"], block_size_k=config["block_k"],
                      use_heuristic=False)
        # a and b by their strides; the scales are indexed without strides (contiguous, as vLLM's layers hold them)
        return fn(input=t["a"], weight=b, scale_a=t["a_scale"].contiguous(), scale_b=t["b_scale"].contiguous(),
                  out_dtype=_torch_dtype(params["out_dtype"]), bias=t["bias"], use_td=False, **kw)
    return call


# ------------------------------------------------------------------ w8a8_triton_block_scaled_mm


def _block_supports(p) -> str | None:
    if p["bias"]:
        return "bias: w8a8_triton_block_scaled_mm takes no bias (the linear layer adds it afterwards)"
    if p["quant_dtype"] not in FP8_E4M3:
        return f"quant_dtype={p['quant_dtype']!r}: vLLM's block FP8 path quantizes to the platform's e4m3 type"
    return None


def _block_pack(problem, params, device):
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


def _block_call(fn):
    def call(t, params, config):
        require_supported("vllm:w8a8_block_fp8_matmul", params)
        a_scale = t["a_scale"].t() if params["a_scale_major"] == "column" else t["a_scale"]
        # A: asserted contiguous; B, As and Bs are read by their strides
        return fn(A=t["a"].contiguous(), B=t["b"], As=a_scale, Bs=t["b_scale"],
                  block_size=[params["scale_block_n"], params["scale_block_k"]],
                  output_dtype=_torch_dtype(params["out_dtype"]))
    return call


# ------------------------------------------------------------------ awq_gemm_triton

# vLLM's own call (auto_awq.py apply -> _custom_ops.awq_gemm -> awq_gemm_triton with VLLM_USE_TRITON_AWQ=1,
# fewer than 256 tokens): default blocks, split_k_iters = pack_factor = 8
AWQ_DEFAULT = {"block_m": 32, "block_n": 32, "block_k": 32, "split_k": 8}


def _awq_supports(p) -> str | None:
    if p["layout"] != "awq":
        return f"layout={p['layout']!r}: awq_gemm_triton reads the AWQ packing only"
    if p["out_dtype"] != p["act_dtype"]:
        return (f"out_dtype={p['out_dtype']!r}: awq_gemm_triton returns the scales' dtype, which is the "
                f"activations' ({p['act_dtype']})")
    if p["bias"]:
        return "bias: awq_gemm_triton takes no bias (vLLM's AWQ layer adds it afterwards)"
    return None


def _awq_pack(problem, params, device):
    from qkcheck.kernels.w4a16.adapter import w4a16_inputs

    if problem.get("zeros") is None:  # symmetric: the implicit zero point 8, which AWQ stores explicitly
        problem = {**problem, "zeros": np.full(np.asarray(problem["scales"]).shape, 8, dtype=np.uint8)}
    return w4a16_inputs(problem, layout="awq", act_dtype=params["act_dtype"], device=device)


def _awq_call(fn):
    def call(t, params, config):
        require_supported("vllm:awq_gemm_triton", params)
        cfg = {**AWQ_DEFAULT, **(config or {})}
        unknown = sorted(set(cfg) - set(AWQ_DEFAULT))
        if unknown:
            raise ValueError(f"vllm:awq_gemm_triton: config keys {unknown} are not tunable "
                             f"(allowed: {', '.join(AWQ_DEFAULT)})")
        # contiguous: the kernel indexes every operand without strides (K * row + col); vLLM's AWQ layer
        # passes contiguous tensors (x reshaped from a contiguous activation, weights as loaded)
        return fn(input=t["x"].contiguous(), qweight=t["qweight"].contiguous(), scales=t["scales"].contiguous(),
                  qzeros=t["zeros"].contiguous(),
                  split_k_iters=cfg["split_k"], block_size_m=cfg["block_m"], block_size_n=cfg["block_n"],
                  block_size_k=cfg["block_k"])
    return call


# ------------------------------------------------------------------ triton_w4a16 (launcher and kernel)


def _w4_supports(p) -> str | None:
    if p["layout"] != "gptq":
        return (f"layout={p['layout']!r}: triton_w4a16 runs GPTQ checkpoints (repacked to [K, N/8] int32 by its "
                "process_weights_after_loading)")
    if p["out_dtype"] != p["act_dtype"]:
        return f"out_dtype={p['out_dtype']!r}: triton_w4a16_gemm returns the activations' dtype ({p['act_dtype']})"
    if p["bias"]:
        return "bias: triton_w4a16_gemm takes no bias (apply_weights adds it afterwards)"
    return None


def _w4_pack(problem, params, device):
    import torch

    from qkcheck.kernels.torch_io import float_tensor, to_device
    from qkcheck.oracle.packing import GPTQ_QZEROS, pack

    act = params["act_dtype"]
    q = np.asarray(problem["q"]).astype(np.uint8)
    zeros = problem.get("zeros")
    return {
        "x": float_tensor(problem["x"], act, device),
        # [K, N/8] int32, 8 consecutive N per word at shifts 0, 4, ..., 28 (the kernel's layout)
        "b_q": to_device(torch.from_numpy(pack(q, GPTQ_QZEROS)), device),
        "scales": float_tensor(problem["scales"], act, device),
        "qzeros": None if zeros is None else to_device(
            torch.from_numpy(pack(np.asarray(zeros).astype(np.uint8), GPTQ_QZEROS)), device),
    }


def _contiguous(t):
    return None if t is None else t.contiguous()


def _group_of(t, params) -> int:
    return t["x"].shape[1] if params["group_size"] == -1 else params["group_size"]  # -1 resolved by the caller


def _w4_call(fn):
    def call(t, params, config):
        require_supported("vllm:triton_w4a16_gemm", params)
        # symmetric (uint4b8): no zeros, the constant 8; asymmetric (uint4): explicit zeros (apply_weights)
        # contiguous: the launcher asserts it for a, b_q and scales (vLLM's layer makes them so) and
        # the kernel indexes scales and zeros without strides
        return fn(a=t["x"].contiguous(), b_q=t["b_q"].contiguous(), scales=t["scales"].contiguous(),
                  qzeros=_contiguous(t["qzeros"]), group_size=_group_of(t, params),
                  zp_bias=8 if t["qzeros"] is None else 0)
    return call


# BLOCK_K at most 32, the smallest group size the launcher accepts: the launcher's contract since PR
# #39705 (BLOCK_K <= group_size) holds for every case; PRE_FIX_TILES lifts it (the launcher before it)
W4_KERNEL_TILES = {"block_m": (16, 32, 64), "block_n": (16, 32, 64), "block_k": (16, 32)}
PRE_FIX_TILES = {**W4_KERNEL_TILES, "block_k": (16, 32, 64, 128)}
W4_KERNEL_DEFAULT = {"block_m": 32, "block_n": 64, "block_k": 32}  # the launcher's M <= 32 choice


def _w4_kernel_tiles_ok(params, config) -> str | None:
    g = params["group_size"]
    if g != -1 and config["block_k"] > g:
        return (f"block_k={config['block_k']} > group_size={g}: the launcher clamps BLOCK_K to the group size "
                "(PR #39705); the kernel loads one scale group per K tile")
    return None


def _w4_kernel_call(kernel, name="vllm:triton_w4a16_kernel", check_tiles=True):
    """Launches the @triton.jit kernel as the launcher does; ``check_tiles=False`` (with
    ``PRE_FIX_TILES``) is the launcher before PR #39705, which let BLOCK_K exceed the group."""
    def call(t, params, config):
        import torch

        require_supported(name, params)
        cfg = {**W4_KERNEL_DEFAULT, **(config or {})}
        if check_tiles:
            why = _w4_kernel_tiles_ok(params, cfg)  # unreachable with W4_KERNEL_TILES
            if why:
                raise EngineUnsupported(f"{name}: {why}")
        # a and b_q by their strides; scales and zeros are indexed without strides (contiguous, as the
        # launcher asserts for scales)
        a, b_q, scales, qzeros = t["x"], t["b_q"], t["scales"].contiguous(), _contiguous(t["qzeros"])
        m, k = a.shape
        n = b_q.shape[1] * 8
        c = torch.empty((m, n), dtype=a.dtype, device=a.device)
        grid = (-(-m // cfg["block_m"]), -(-n // cfg["block_n"]))
        kernel[grid](a, b_q, scales, qzeros if qzeros is not None else b_q, c, m, n, k, a.stride(0), a.stride(1),
                     b_q.stride(0), b_q.stride(1), c.stride(0), c.stride(1), group_size=_group_of(t, params),
                     HAS_ZP=qzeros is not None, ZP_BIAS=8 if qzeros is None else 0, BLOCK_M=cfg["block_m"],
                     BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"])
        return c
    return call


# ------------------------------------------------------------------ fused MoE (fused_moe.py)
#
# vLLM's bound code: ``dispatch_fused_moe_kernel`` (its launcher choice: ``invoke_fused_moe_triton_kernel``
# -> ``fused_moe_kernel`` for bf16/fp16 and block FP8 experts, ``invoke_fused_moe_wna16_triton_kernel`` ->
# ``fused_moe_kernel_gptq_awq`` for int4 W4A16 experts where ``should_moe_wna16_use_cuda`` is False, as on
# every non-CUDA platform), called twice as ``fused_experts_impl`` calls it (GEMM 1 with top_k, GEMM 2 with
# top_k=1, the router weight on GEMM 2's output or, with apply_router_weight_on_input, on GEMM 1's);
# ``_prepare_expert_assignment`` (vLLM's choice between the aligned and the naive one-token-per-block
# assignment); ``moe_kernel_quantize_input`` (block FP8: ``per_token_group_quant_fp8``, the Triton fallback).
#
# qkcheck's glue, not vLLM's (vLLM runs compiled ops here, which a CPU box does not have): the router
# (``kernels.moe.kernel.route_torch``, the bundled MoE's torch router: vLLM's ``fused_topk`` /
# ``grouped_topk`` are CUDA ops), ``moe_align_block_size`` (``align_block_size_torch`` below, installed
# in place of vLLM's wrapper around ``torch.ops._moe_C.moe_align_block_size`` in files mode only; import
# mode keeps vLLM's own), the gated activation between the GEMMs (``moe_activation_torch``: float32
# from the compute dtype, rounded back; vLLM: ``torch.ops._C.silu_and_mul`` and friends), and the top-k
# sum (vLLM: ``ops.moe_sum``; here float32, rounded to the case's out_dtype). Each is checked against
# qkcheck's oracle with a torch stand-in for vLLM's launcher (``torch_dispatch``, tests/engines), so a
# failure of the adapter with vLLM's launcher is vLLM's kernel.

MOE_SCHEMES = ("dense", "w4a16", "fp8_block")
MOE_TILES = {"block_m": (16, 32, 64), "block_n": (16, 32, 64), "block_k": (16, 32, 64, 128)}
SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0  # gpt-oss swiglu (the op's swiglu / swiglu7)


def align_block_size_torch(topk_ids, block_size, num_experts, expert_map=None, pad_sorted_ids=False,
                           ignore_invalid_experts=False, return_scatter_idx=False):
    """qkcheck's torch twin of vLLM's ``moe_align_block_size`` (its contract, per the docstring of
    ``fused_moe/moe_align_block_size.py`` 0.33.0): the flat slots of each expert in slot order, padded
    to a multiple of ``block_size`` with the value ``topk_ids.numel()``, experts in increasing id;
    ``expert_ids`` one per block; ``num_tokens_post_padded`` the padded total. With ``expert_map`` and
    ``ignore_invalid_experts`` the slots of non-local experts are left out and ids are local; without
    it every expert counts and blocks of non-local experts get -1 (``expert_map[expert_ids]``)."""
    import torch

    if return_scatter_idx:
        raise NotImplementedError("qkcheck's moe_align_block_size stand-in does not build scatter_idx")
    numel = topk_ids.numel()
    cap = numel + num_experts * (block_size - 1)
    if pad_sorted_ids:
        cap = -(-cap // block_size) * block_size
    if numel < num_experts:
        cap = min(numel * block_size, cap)
    dev = topk_ids.device
    ids = topk_ids.reshape(-1).long()
    if expert_map is not None and ignore_invalid_experts:
        ids = expert_map.long()[ids]
    sorted_ids = torch.full((cap,), numel, dtype=torch.int32, device=dev)
    expert_ids = torch.full((-(-cap // block_size),), -1, dtype=torch.int32, device=dev)
    pos = 0
    for e in range(num_experts):
        slots = (ids == e).nonzero().flatten()
        if slots.numel() == 0:
            continue
        padded = -(-slots.numel() // block_size) * block_size
        sorted_ids[pos:pos + slots.numel()] = slots.to(torch.int32)
        expert_ids[pos // block_size:(pos + padded) // block_size] = e
        pos += padded
    if expert_map is not None and not ignore_invalid_experts:
        used = -(-pos // block_size)
        expert_ids[:used] = expert_map.to(torch.int32)[expert_ids[:used].long()]
    return sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32, device=dev)


def moe_activation_torch(h, act: str):
    """qkcheck's gated activation of GEMM 1's output ``h [R, 2I]`` (gate ``[:, :I]``, up ``[:, I:]``,
    the layout of the packed w13), in float32 from the compute dtype and rounded back: ``silu``
    silu(g) * u; ``swiglu`` (gpt-oss) g sigmoid(1.702 g) (u + 1); the ``7`` variants clamp g <= 7 and
    u to [-7, 7] first (the op's definitions, ``oracle.ops.moe``)."""
    import torch

    i = h.shape[-1] // 2
    g, u = h[:, :i].float(), h[:, i:].float()
    if act in ("swiglu7", "silu7"):
        g, u = g.clamp(max=SWIGLU_LIMIT), u.clamp(-SWIGLU_LIMIT, SWIGLU_LIMIT)
    if act.startswith("silu"):
        a = g * torch.sigmoid(g) * u
    else:
        a = g * torch.sigmoid(SWIGLU_ALPHA * g) * (u + 1.0)
    return a.to(h.dtype)


def _moe_supports(p) -> str | None:
    if p["scheme"] not in MOE_SCHEMES:
        return (f"scheme={p['scheme']!r}: vLLM's fused_moe_kernel takes bf16/fp16, block FP8 and int4/int8 "
                "W4A16 experts; MXFP4 experts run through other vLLM backends (triton_kernels, emulation)")
    return None


def _moe_constraint(params, dims, config) -> str | None:
    if params["scheme"] == "fp8_block" and config and config.get("block_k", 32) < 32:
        return "fp8_block: block_k >= 32"
    return None


def _moe_pack(problem, params, device):
    """Canonical problem -> vLLM's expert layouts (``B [E, N, K]``, the transposed canonical [K, N]),
    local experts only, in local-index order; storage from the canonical values by the bundled MoE's
    rules (``kernels.moe.adapter``): dense in the activation dtype; w4a16 (groups of 32 along K):
    ``B`` uint8 ``[E, N, K/2]`` (k = 2r in the low nibble of byte r), scales ``[E, N, K/32]`` in the
    activation dtype, zero points uint8 ``[E, N/2, K/32]`` (n = 2c in the low nibble) or none
    (symmetric, vLLM's implicit 8), the MoeWNA16 layout vLLM repacks GPTQ and AWQ checkpoints into;
    fp8_block: e4m3fn codes ``[E, N, K]``, float32 scales ``[E, N/bn, K/bk]``."""
    import torch

    from qkcheck.kernels.moe.adapter import GROUP_SIZE, fp8_block, fp8_storage, local_experts, w4a16_storage
    from qkcheck.kernels.torch_io import to_device, torch_dtype

    scheme, act = params["scheme"], torch_dtype(params["act_dtype"])

    def tensor(a, dtype=None):
        return to_device(torch.from_numpy(np.ascontiguousarray(a)), device, dtype)

    experts = local_experts(problem)
    bias, emap = problem.get("correction_bias"), problem.get("expert_map")
    t = {"x": tensor(np.asarray(problem["x"], np.float64), act),
         "router_logits": tensor(np.asarray(problem["router_logits"], np.float64), torch.float32),
         "correction_bias": None if bias is None else tensor(np.asarray(bias, np.float64), torch.float32),
         "expert_map": None if emap is None else tensor(np.asarray(emap, np.int64), torch.int32)}
    h, i2 = np.asarray(problem["w13"]).shape[1:]
    for key in ("w13", "w2"):
        ws = [np.asarray(problem[key], np.float64)[e] for e in experts]  # canonical [K, N] each
        scales = zeros = None
        if scheme == "dense":
            weight = tensor(np.stack([w.T for w in ws]), act)
        elif scheme == "w4a16":
            parts = [w4a16_storage(w, params["zp"], f"{key}[expert {experts[j]}]") for j, w in enumerate(ws)]
            q = np.stack([p[0].T for p in parts]).astype(np.uint8)  # [E, N, K]
            weight = tensor(q[:, :, 0::2] | (q[:, :, 1::2] << 4))
            scales = tensor(np.stack([p[1].T for p in parts]), act)  # [E, N, K/G]
            if params["zp"]:
                z = np.stack([p[2].T for p in parts]).astype(np.uint8)  # [E, N, K/G]
                zeros = tensor(z[:, 0::2, :] | (z[:, 1::2, :] << 4))
            assert GROUP_SIZE == 32
        else:
            parts = [fp8_storage(w, fp8_block(h, i2 // 2), f"{key}[expert {experts[j]}]") for j, w in enumerate(ws)]
            codes = np.stack([c.T for c, _ in parts]).astype(np.uint8)
            weight = tensor(codes).view(torch.float8_e4m3fn)
            scales = tensor(np.stack([s.T for _, s in parts]), torch.float32)  # [E, N/bn, K/bk]
        t[key], t[f"{key}_scale"], t[f"{key}_zp"] = weight, scales, zeros
    return t


def _vllm_config(cfg) -> dict:
    return {"BLOCK_SIZE_M": cfg["block_m"], "BLOCK_SIZE_N": cfg["block_n"], "BLOCK_SIZE_K": cfg["block_k"],
            "GROUP_SIZE_M": 1, "SPLIT_K": 1}


def _moe_globals(fn) -> dict:
    import inspect

    return inspect.unwrap(fn).__globals__  # fused_moe.py's module namespace (files or import mode)


MOE_MODULE = "vllm.model_executor.layers.fused_moe.fused_moe"


def _files_overlay():
    """The stand-in imports while the MoE glue runs vLLM's functions (files mode); nothing in import mode."""
    return _overlay() if MOE_MODULE in _PROVIDED else contextlib.nullcontext()


def _moe_default_config(dims, params):
    """vLLM's own tile choice for the case (``get_default_config``, and for W4A16 the Triton
    branch of ``get_moe_wna16_block_config``), as block_m/n/k."""
    mod = _PROVIDED.get(MOE_MODULE) or sys.modules.get(MOE_MODULE)
    if mod is None:
        return dict(MOE_TILES_DEFAULT)
    g = vars(mod)
    scheme, t, k = params["scheme"], dims["t"], params["top_k"]
    e = max(1, dims["e"] // 2) if params["ep"] else dims["e"]
    dtype = {"dense": None, "w4a16": "int4_w4a16", "fp8_block": "fp8_w8a8"}.get(scheme)
    block = None
    if scheme == "fp8_block":
        from qkcheck.kernels.moe.adapter import fp8_block
        block = list(fp8_block(dims["h"], dims["i"]))
    elif scheme == "w4a16":
        block = [0, 32]
    with _files_overlay():
        c = dict(g["get_default_config"](t, e, dims["i"], dims["h"], k, dtype, block))
        if scheme == "w4a16":
            c.update(g["get_moe_wna16_block_config"](config=c, use_moe_wna16_cuda=False, num_valid_tokens=t * k,
                                                      size_k=dims["h"], size_n=2 * dims["i"], num_experts=e,
                                                      group_size=32, real_top_k=k, block_size_m=c["BLOCK_SIZE_M"]))
    return {"block_m": c["BLOCK_SIZE_M"], "block_n": c["BLOCK_SIZE_N"], "block_k": c["BLOCK_SIZE_K"]}


@contextlib.contextmanager
def _moe_align(g, align):
    """vLLM's ``moe_align_block_size`` as ``_prepare_expert_assignment`` finds it: qkcheck's torch
    stand-in where the loaded module has only the inert placeholder (files mode), or ``align`` when
    given (a test's broken twin); vLLM's own otherwise."""
    saved = g.get("moe_align_block_size")
    use = align if align is not None else (align_block_size_torch if isinstance(saved, _Inert) else saved)
    g["moe_align_block_size"] = use
    try:
        yield
    finally:
        g["moe_align_block_size"] = saved


def _moe_call(fn, launcher=None, align=None, name="vllm:fused_moe"):
    """``fused_experts_impl``'s sequence around vLLM's ``dispatch_fused_moe_kernel`` ``fn``; ``launcher``
    (a twin with its keywords, e.g. ``torch_dispatch``) and ``align`` replace vLLM's launcher and the
    alignment (tests: the glue checked alone, a broken alignment caught)."""
    import inspect

    launch = launcher if launcher is not None else inspect.unwrap(fn)

    def call(t, params, config):
        import torch

        from qkcheck.kernels.moe.kernel import route_torch
        from qkcheck.kernels.torch_io import torch_dtype

        require_supported(name, params)
        g = _moe_globals(fn)
        tl = g["tl"]
        scheme, k = params["scheme"], params["top_k"]
        x = t["x"].contiguous()
        T, H = x.shape
        E = t["router_logits"].shape[1]
        two_i = t["w13"].shape[1]
        cfg = _vllm_config({**MOE_TILES_DEFAULT, **(config or {})})
        ng, tg = (2, 1) if params["grouped"] else (None, None)
        ids, weights = route_torch(t["router_logits"], k, scoring=params["scoring"], renormalize=params["renorm"],
                                   num_groups=ng, topk_groups=tg, correction_bias=t["correction_bias"])
        emap = t["expert_map"]
        fp8 = scheme == "fp8_block"
        block_shape = None
        if fp8:
            from qkcheck.kernels.moe.adapter import fp8_block
            block_shape = list(fp8_block(H, two_i // 2))
        elif scheme == "w4a16":
            block_shape = [0, 32]
        compute = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[x.dtype]
        quant_dtype = torch.float8_e4m3fn if fp8 else None
        flags = dict(use_fp8_w8a8=fp8, use_int8_w8a8=False, use_int8_w8a16=False, use_int4_w4a16=scheme == "w4a16",
                     per_channel_quant=False, block_shape=block_shape, B_bias=None)
        with _files_overlay(), platform(fp8="float8_e4m3fn"), _moe_align(g, align):
            sorted_ids, expert_ids, npp = g["_prepare_expert_assignment"](
                ids, cfg, T, k, E, emap, use_int8_w8a16=False, use_int4_w4a16=scheme == "w4a16",
                block_shape=block_shape, ignore_invalid_experts=True, weights_host_resident=False)
            quantize = g["moe_kernel_quantize_input"]
            a1, a1_scale = quantize(A=x, A_scale=None, quant_dtype=quant_dtype, per_act_token_quant=False,
                                    block_shape=block_shape)
            c1 = torch.empty((T, k, two_i), dtype=x.dtype, device=x.device)
            launch(A=a1, B=t["w13"], C=c1, A_scale=a1_scale, B_scale=t["w13_scale"], B_zp=t["w13_zp"],
               topk_weights=weights, sorted_token_ids=sorted_ids, expert_ids=expert_ids, num_tokens_post_padded=npp,
               mul_routed_weight=params["weight_on_input"], top_k=k, config=cfg, compute_type=compute, **flags)
            a = moe_activation_torch(c1.view(T * k, two_i), params["act"])  # qkcheck's glue
            a2, a2_scale = quantize(A=a, A_scale=None, quant_dtype=quant_dtype, per_act_token_quant=False,
                                    block_shape=block_shape)
            c3 = torch.empty((T, k, H), dtype=x.dtype, device=x.device)
            if emap is not None:
                c3.zero_()  # as fused_experts_impl does: slots of non-local experts are never written
            launch(A=a2, B=t["w2"], C=c3, A_scale=a2_scale, B_scale=t["w2_scale"], B_zp=t["w2_zp"],
               topk_weights=weights, sorted_token_ids=sorted_ids, expert_ids=expert_ids, num_tokens_post_padded=npp,
               mul_routed_weight=not params["weight_on_input"], top_k=1, config=cfg, compute_type=compute, **flags)
        return c3.float().sum(dim=1).to(torch_dtype(params["out_dtype"]))  # qkcheck's top-k sum
    return call


MOE_TILES_DEFAULT = {"block_m": 16, "block_n": 64, "block_k": 64}


def torch_dispatch(A, B, C, A_scale, B_scale, B_zp, topk_weights, sorted_token_ids, expert_ids,
                   num_tokens_post_padded, mul_routed_weight, top_k, config, compute_type, use_fp8_w8a8,
                   use_int8_w8a8, use_int8_w8a16, use_int4_w4a16, per_channel_quant, block_shape=None, B_bias=None):
    """qkcheck's torch stand-in for ``dispatch_fused_moe_kernel`` (same keywords, same contract as
    the 0.33.0 kernels read it): used only to check the adapter's glue against the oracle."""
    import torch

    dt = C.dtype
    bm = config["BLOCK_SIZE_M"]
    if use_int4_w4a16:
        q = torch.stack([B & 0xF, B >> 4], dim=-1).reshape(B.shape[0], B.shape[1], -1).float()  # [E, N, K]
        gs = block_shape[1]
        s = B_scale.float().repeat_interleave(gs, dim=2)
        if B_zp is None:
            z = 8.0
        else:
            z = torch.stack([B_zp & 0xF, B_zp >> 4], dim=2).reshape(B.shape[0], -1, B_zp.shape[2]).float()
            z = z.repeat_interleave(gs, dim=2)
        w = ((q - z) * s).to(dt).float()
    elif use_fp8_w8a8:
        bn, bk = block_shape
        w = B.float() * B_scale.repeat_interleave(bn, dim=1).repeat_interleave(bk, dim=2)
    else:
        w = B.float()
    a = A.float()
    if use_fp8_w8a8:
        a = a * A_scale.repeat_interleave(block_shape[1], dim=1)
    numel = C.shape[0] * C.shape[1]  # num_valid_tokens: M * top_k
    c = C.view(-1, C.shape[-1])
    if sorted_token_ids is None:  # naive: block m is slot m
        blocks = [(torch.tensor([m]), int(expert_ids[m])) for m in range(numel)]
    else:
        n = int(num_tokens_post_padded[0])
        blocks = [(sorted_token_ids[m * bm:(m + 1) * bm].long(), int(expert_ids[m])) for m in range(n // bm)]
    for rows, e in blocks:
        rows = rows[rows < numel]
        if rows.numel() == 0:
            continue
        if e == -1:
            c[rows] = 0
            continue
        acc = a[rows // top_k] @ w[e].T
        if mul_routed_weight:
            acc = acc * topk_weights.reshape(-1)[rows].float()[:, None]
        c[rows] = acc.to(dt)


# ------------------------------------------------------------------ table

_VERSION = "verified against vllm 0.33.0 (files mode, Triton interpreter)"

# name, op, where (files: relpath, import: module path), symbol, signature, pack, call factory, fields,
# supports, conventions, description, modes ("files" and/or "import")
_SPECS = (
    dict(name="vllm:triton_w4a16_gemm", op="w4a16_gemm", file=TRITON_W4A16,
         paths=("vllm.model_executor.kernels.linear.mixed_precision.triton_w4a16",), symbol="_triton_w4a16_gemm_impl",
         signature=("a", "b_q", "scales", "qzeros", "group_size", "zp_bias"),
         pack=_w4_pack, make_call=_w4_call, fields=dict(triton=True, layouts=("gptq",)),
         supports=_w4_supports, conventions={}, modes=("files", "import"),
         description="vLLM triton_w4a16_gemm (the implementation behind torch.ops.vllm.triton_w4a16_gemm): "
                     "GPTQ int4 repacked to [K, N/8], symmetric (zp_bias=8) or explicit zeros, the launcher's "
                     "own tiles (CUDA/other table; BLOCK_K clamped to the group since PR #39705); " + _VERSION),
    dict(name="vllm:triton_w4a16_kernel", op="w4a16_gemm", file=TRITON_W4A16,
         paths=("vllm.model_executor.kernels.linear.mixed_precision.triton_w4a16",), symbol="triton_w4a16_gemm_kernel",
         signature=(), pack=_w4_pack, make_call=_w4_kernel_call,
         fields=dict(triton=True, layouts=("gptq",), tunables=W4_KERNEL_TILES,
                     default_config=lambda dims, params: dict(W4_KERNEL_DEFAULT)),
         supports=_w4_supports, conventions={}, modes=("files", "import"),
         description="vLLM triton_w4a16_gemm_kernel launched with fuzzed tiles under the launcher's contract "
                     "(BLOCK_K <= group_size; larger BLOCK_K is refused as the launcher does since PR #39705); "
                     "the @triton.jit kernel's parameters are positional-or-keyword and bound as the launcher "
                     "binds them; " + _VERSION),
    dict(name="vllm:awq_gemm_triton", op="w4a16_gemm", file=AWQ_TRITON,
         paths=("vllm.model_executor.layers.quantization.awq_triton",), symbol="awq_gemm_triton",
         signature=("input", "qweight", "scales", "qzeros", "split_k_iters", "block_size_m", "block_size_n",
                    "block_size_k"),
         pack=_awq_pack, make_call=_awq_call,
         fields=dict(triton=True, layouts=("awq",),
                     # block_k <= 32, the smallest group awq_gemm_triton accepts: its kernel loads one
                     # scale group per K tile (vLLM calls it with block_size_k=32)
                     tunables={"block_m": (16, 32, 64), "block_n": (16, 32, 64, 128), "block_k": (16, 32),
                               "split_k": (1, 2, 4)},
                     default_config=lambda dims, params: dict(AWQ_DEFAULT)),
         supports=_awq_supports, conventions={}, modes=("files", "import"),
         description="vLLM awq_gemm_triton (AWQ-packed int4, explicit zero points, split-K); block sizes and "
                     "split_k_iters are its tunables; " + _VERSION),
    dict(name="vllm:w8a8_block_fp8_matmul", op="block_scaled_mm", file=FP8_UTILS,
         paths=("vllm.model_executor.layers.quantization.utils.fp8_utils",), symbol="w8a8_triton_block_scaled_mm",
         signature=("A", "B", "As", "Bs", "block_size", "output_dtype"),
         pack=_block_pack, make_call=_block_call, fields=dict(triton=True), supports=_block_supports,
         conventions={}, modes=("files", "import"),
         description="vLLM w8a8_triton_block_scaled_mm (B [N, K], Bs [N/bn, K/bk], block_size=[bn, bk], its "
                     "default tiles BLOCK_N = bn, BLOCK_K = bk, no bias); " + _VERSION),
    dict(name="vllm:per_token_group_fp8", op="per_token_group_quant", file=FP8_UTILS,
         paths=("vllm.model_executor.layers.quantization.utils.fp8_utils",), symbol="per_token_group_quant_fp8",
         signature=("x", "group_size", "eps", "dtype", "column_major_scales", "tma_aligned_scales", "out_q",
                    "use_ue8m0"),
         pack=lambda problem, params, device: _fp8_pack({**problem, "scale_ub": None}, params, device),
         make_call=_group_call, fields=dict(triton=True), supports=_group_supports,
         conventions=_group_conventions, modes=("files", "import"),
         description="vLLM per_token_group_quant_fp8 (files mode: its Triton fallback, row- or column-major "
                     "scales; import mode on CUDA/ROCm: the CUDA op where x is contiguous; eps=1e-10, use_ue8m0 "
                     "as the case asks; float8_e4m3fnuz runs as on MI300, max 224); " + _VERSION),
    dict(name="vllm:triton_scaled_mm", op="scaled_mm", file=TRITON_SCALED_MM,
         paths=("vllm.model_executor.layers.quantization.compressed_tensors.triton_scaled_mm",),
         symbol="triton_scaled_mm",
         signature=("input", "weight", "scale_a", "scale_b", "out_dtype", "bias", "block_size_m", "block_size_n",
                    "block_size_k", "use_heuristic", "use_td"),
         pack=_tsm_pack, make_call=_tsm_call,
         fields=dict(triton=True, tunables={"block_m": (16, 32, 64, 128), "block_n": (16, 32, 64, 128),
                                            "block_k": (32, 64, 128, 256)}),
         supports=_tsm_supports, conventions={}, modes=("files", "import"),
         description="vLLM triton_scaled_mm (int8 / fp8 W8A8, per-token / per-tensor a scales, per-channel "
                     "[N, 1] / per-tensor b scales, float bias; gate tiles with use_heuristic=False, vLLM's own "
                     "heuristic where the case has no config; use_td=False); " + _VERSION),
    dict(name="vllm:fused_moe", op="fused_moe", file=FUSED_MOE, paths=(MOE_MODULE,), symbol="dispatch_fused_moe_kernel",
         signature=("A", "B", "C", "A_scale", "B_scale", "B_zp", "topk_weights", "sorted_token_ids", "expert_ids",
                    "num_tokens_post_padded", "mul_routed_weight", "top_k", "config", "compute_type", "use_fp8_w8a8",
                    "use_int8_w8a8", "use_int8_w8a16", "use_int4_w4a16", "per_channel_quant", "block_shape",
                    "B_bias"),
         pack=_moe_pack, make_call=_moe_call,
         fields=dict(triton=True, tunables=MOE_TILES, default_config=_moe_default_config, constraint=_moe_constraint,
                     params={"scheme": MOE_SCHEMES, "act": ("silu", "swiglu", "swiglu7", "silu7")}),
         supports=_moe_supports, conventions={}, modes=("files", "import"),
         description="vLLM fused MoE: dispatch_fused_moe_kernel (fused_moe_kernel for bf16/fp16 and block-FP8 "
                     "experts, fused_moe_kernel_gptq_awq for int4 W4A16) called as fused_experts_impl calls it, "
                     "_prepare_expert_assignment and moe_kernel_quantize_input (per_token_group_quant_fp8) "
                     "vLLM's; the router, moe_align_block_size (files mode), the gated activation and the top-k "
                     "sum are qkcheck's torch glue (vLLM's are compiled ops); " + _VERSION),
    dict(name="vllm:scaled_fp8_quant", op="per_token_quant", paths=CUSTOM_OPS, symbol="scaled_fp8_quant",
         signature=("input", "scale", "num_token_padding", "scale_ub", "use_per_token_if_dynamic"),
         pack=_fp8_pack, make_call=_fp8_call, fields=dict(triton=False), supports=_fp8_supports, modes=("import",),
         # CUDA/ROCm dynamic per-token kernels floor the scale at 1 / (qmax * 512); ROCm fnuz uses qmax 224
         conventions={"amax_floor": 1.0 / 512, "qmax": {"float8_e4m3fnuz": 224.0}},
         description="vLLM scaled_fp8_quant (CUDA custom op; needs vllm._C: GPU runners only), dynamic per-token; "
                     "signature read from vllm/_custom_ops.py v0.6 - v0.11, not run"),
    dict(name="vllm:scaled_int8_quant", op="per_token_quant", paths=CUSTOM_OPS, symbol="scaled_int8_quant",
         signature=("input", "scale", "azp", "symmetric"),
         pack=_fp8_pack, make_call=_int8_call, fields=dict(triton=False), supports=_int8_supports,
         conventions={}, modes=("import",),
         description="vLLM scaled_int8_quant (CUDA custom op; GPU runners only), dynamic per-token symmetric; "
                     "signature read from vllm/_custom_ops.py v0.6 - v0.11, not run"),
    dict(name="vllm:cutlass_scaled_mm", op="scaled_mm", paths=CUSTOM_OPS, symbol="cutlass_scaled_mm",
         signature=("a", "b", "scale_a", "scale_b", "out_dtype", "bias"),
         pack=_mm_pack, make_call=_mm_call, fields=dict(triton=False), supports=_mm_supports, conventions={},
         modes=("import",),
         description="vLLM cutlass_scaled_mm (CUTLASS custom op; GPU runners only), b column-major, bias in "
                     "out_dtype; signature read from vllm/_custom_ops.py v0.6 - v0.11, not run"),
)


def _static_conventions(s) -> dict:
    c = s["conventions"]
    return {} if callable(c) else c


register([{**s, "conventions": _static_conventions(s)} for s in _SPECS])
# per adapter: the oracle options of its engine's documented choices (per_token_group_fp8: qmax 224 for fnuz)
CONVENTIONS = {s["name"]: s["conventions"] for s in _SPECS}


def _has_conventions_field() -> bool:
    import dataclasses

    return any(f.name == "conventions" for f in dataclasses.fields(KernelAdapter))


def _adapter(s, fn, where, mode: str) -> KernelAdapter:
    from qkcheck.kernels.engines import missing_call

    fields = dict(s["fields"])
    if _has_conventions_field():
        fields["conventions"] = s["conventions"]
    target = fn
    if fn is not None and mode == "files" and not s["signature"]:
        target = None  # a @triton.jit kernel: no Python signature to check
    call = s["make_call"](fn) if fn is not None else missing_call(f"{s['name']}: {where}")
    desc = s["description"] + ("" if mode == "import" else f" [{version_note()}]")
    return KernelAdapter(name=s["name"], op=s["op"], pack=s["pack"], call=call, target=target,
                         signature=s["signature"], description=desc, supports=platform_limited(s["supports"]), **fields)


def _files_adapters(mods) -> list[KernelAdapter]:
    adapters = []
    for s in _SPECS:
        if "files" not in s["modes"]:
            continue
        mod = mods.get(s["file"])
        if isinstance(mod, BaseException) or mod is None:
            fn, where = None, f"{s['file']} could not be loaded ({type(mod).__name__}: {mod})"
        else:
            raw = getattr(mod, s["symbol"], None)
            where = f"vllm/{s['file']} has no {s['symbol']!r}"
            fn = None if raw is None else (raw if not s["signature"] else _guarded(raw))
            if raw is not None and not s["signature"]:  # the Triton kernel, launched inside the overlay
                fn = raw
        adapters.append(_adapter(s, fn, where, "files"))
    return adapters


def load() -> tuple[list[KernelAdapter], str | None]:
    """(adapters, None) where vllm imports (import mode) or its package files load (files mode);
    ([], reason) where neither."""
    if ENGINE in sys.modules or _importable():
        return build([dict(s, fields={**s["fields"], **({"conventions": s["conventions"]}
                                                         if _has_conventions_field() else {})})
                      for s in _SPECS], ENGINE, INSTALL_HINT)
    mods, reason = _load_files()
    if reason:
        return [], reason
    return _files_adapters(mods), None


def _importable() -> bool:
    """Whether ``import vllm`` works here (a GPU runner); a failing import leaves nothing behind."""
    try:
        if importlib.util.find_spec(ENGINE) is None:
            return False
    except Exception:
        return True  # let build() report the broken install with its error
    import torch

    # vllm's own package needs a GPU build (its _C extension, CUDA/ROCm/XPU torch); on a machine
    # without a GPU the attempt costs seconds (torch._inductor via vllm.env_override) and fails
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if not gpu:
        return False
    before = set(sys.modules)
    try:
        importlib.import_module(ENGINE)
        importlib.import_module("vllm._custom_ops")
        return True
    except Exception:
        for k in set(sys.modules) - before:
            if k == ENGINE or k.startswith(ENGINE + "."):
                del sys.modules[k]
        return False


ADAPTERS, UNAVAILABLE = load()
