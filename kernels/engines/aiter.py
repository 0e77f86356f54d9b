"""AMD AITER's Triton quantization kernels and GEMMs as qkcheck adapters (``--kernels aiter``).

Verified against ``amd-aiter`` 0.1.7.post2.dev18 (the package index's ``amd-aiter``; the index name
``aiter`` is an unrelated async library), the releases ``VERIFIED`` names. On another version each
adapter's description carries a version note and the signature check makes drift visible.

Why the modules are loaded from their files: ``import aiter`` runs ``aiter/__init__.py``, which
imports the JIT/C++ extension layer (``aiter.jit.core``, ``aiter.ops.*`` CK ops) that needs a ROCm
build. The Triton kernels under ``aiter/ops/triton/`` need only torch and triton, so where ``aiter``
has not been imported already, each wrapper file is loaded from the installed package with
:func:`qkcheck.kernels.engines.load_module_from`: ``aiter``, ``aiter.ops`` and
``aiter.ops.triton`` are registered as bare packages (their ``__init__.py`` is not run) and the
wrapper's own imports (``aiter.ops.triton._triton_kernels.*``, ``aiter.ops.triton.utils.*``)
resolve from the installed files. Nothing of AITER is copied into qkcheck. Where ``aiter`` is
imported (a ROCm runner), the same modules are imported the ordinary way.

AITER's launchers pick a tile config from a JSON table named after the GPU (``arch_info.get_device``
-> ``MI300X`` / ``MI350X``), which needs a ROCm device. The GEMM adapters always pass ``config``:
the case's tunables, or else AITER's own MI300X ``"any"`` entry read from the installed
``configs/gemm/MI300X-GEMM-A8W8*.json`` (what AITER runs on MI300X for shapes without a tuned
entry). ``gemm_afp4wfp4`` (MXFP4 x MXFP4) asserts ``arch_info.is_fp4_avail()`` (gfx950) before
anything else, so it is not bound: off an MI350 it cannot run, and binding it would need a stub of
the device query.

=======================================  ======================  ======================================
adapter                                  op                      engine callable (aiter/ops/triton/)
=======================================  ======================  ======================================
aiter:dynamic_per_token_quant_fp8_i8     per_token_quant         quant.py dynamic_per_token_quant_fp8_i8
aiter:static_per_tensor_quant_fp8_i8     static_quant            quant.py static_per_tensor_quant_fp8_i8
aiter:dynamic_mxfp4_quant                mx_quant                quant.py dynamic_mxfp4_quant
aiter:gemm_a8w8                          scaled_mm               gemm_a8w8.py gemm_a8w8
aiter:gemm_a8w8_blockscale               block_scaled_mm         gemm_a8w8_blockscale.py
=======================================  ======================  ======================================

Conventions (AITER's behaviour, read from the installed source; the oracle answers for them):
the per-token and static quant kernels take ``DTYPE_MAX`` from ``torch.finfo(qx.dtype).max`` (240
for float8_e4m3fnuz, not vLLM's 224), hold no amax floor and convert with Triton's ``.to(int8)``
(see the findings in ``docs/findings/aiter-*.md`` for what that means for int8 and all-zero rows).
"""
from __future__ import annotations

import json
import os

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.engines import EngineUnsupported, platform_limited, register

ENGINE = "aiter"
DIST = "amd-aiter"
VERIFIED = ("0.1.7.post2.dev18",)
INSTALL_HINT = ("pip install --no-deps amd-aiter==0.1.7.post2.dev18 (the Triton kernels need only torch and "
                "triton; the index name 'aiter' is an unrelated package)")
QUANT = "ops/triton/quant.py"
GEMM_A8W8 = "ops/triton/gemm_a8w8.py"
GEMM_BLOCKSCALE = "ops/triton/gemm_a8w8_blockscale.py"
GEMM_TILES = (16, 32, 64, 128)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def installed_version() -> str | None:
    from qkcheck.kernels.engines import installed_version as _installed

    return _installed(DIST)


def version_note() -> str:
    from qkcheck.kernels.engines import version_note as _note

    return _note(DIST, VERIFIED)


def _package_dir() -> str | None:
    import importlib.util
    import sys

    mod = sys.modules.get(ENGINE)
    spec = getattr(mod, "__spec__", None) if mod is not None else importlib.util.find_spec(ENGINE)
    locs = list(getattr(spec, "submodule_search_locations", None) or ())
    return locs[0] if locs else None


def _unavailable() -> str | None:
    """None where AITER's Triton files can be loaded, else why not."""
    folder = _package_dir()
    if folder is None:
        return f"{ENGINE} is not installed ({INSTALL_HINT})"
    if not os.path.isfile(os.path.join(folder, *QUANT.split("/"))):
        return (f"the package 'aiter' at {folder} is not AMD AITER (no {QUANT}; the index name 'aiter' is an "
                f"unrelated library); {INSTALL_HINT}")
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"triton does not import ({type(exc).__name__}: {exc}); AITER's Triton kernels need it"
    return None


def _module(relpath: str):
    from qkcheck.kernels.engines import load_module_from

    return load_module_from(ENGINE, relpath)


# launch options only Triton's AMD back end knows; the NVIDIA back end rejects them by name
AMD_ONLY_LAUNCH_KEYS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")


def _compiled_off_amd() -> bool:
    """True where kernels compile for a GPU that is not AMD's (the interpreter takes any option)."""
    from qkcheck.kernels import device

    if device.interpreted():
        return False
    import torch

    return torch.cuda.is_available() and not getattr(torch.version, "hip", None)


def _mi300x_config(name: str) -> dict:
    """AITER's MI300X ``"any"`` tile config for a GEMM (``configs/gemm/MI300X-<name>.json``), less
    the AMD-only launch options where the kernel compiles for another GPU (same tiles there)."""
    path = os.path.join(_package_dir(), "ops", "triton", "configs", "gemm", f"MI300X-{name}.json")
    with open(path) as f:
        cfg = dict(json.load(f)["any"])
    if _compiled_off_amd():
        for key in AMD_ONLY_LAUNCH_KEYS:
            cfg.pop(key, None)
    return cfg


def _supported(name: str, check):
    def require(params):
        reason = check(params)
        if reason:
            raise EngineUnsupported(f"{name}: {reason}")
    return require


# ------------------------------------------------------------------ per-token / static quant


def _per_token_supports(p) -> str | None:
    if p["scale_ub"]:
        return "scale_ub: dynamic_per_token_quant_fp8_i8 has no amax upper bound"
    return None


def _pack_x(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_x

    return pack_x(problem, params, device)


def _pack_static(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_static

    return pack_static(problem, params, device)


def _per_token_call(fn):
    require = _supported("aiter:dynamic_per_token_quant_fp8_i8", _per_token_supports)

    def call(t, params, config):
        import torch

        require(params)
        x = t["x"]
        qx = torch.empty(x.shape, dtype=_torch_dtype(params["quant_dtype"]), device=x.device)
        scale = torch.empty((x.shape[0],), dtype=torch.float32, device=x.device)  # (M,), as documented
        qx, scale = fn(qx=qx, x_in=x, scale_out=scale)
        return qx, scale.view(-1, 1)
    return call


def _static_call(fn):
    def call(t, params, config):
        import torch

        x = t["x"]
        qx = torch.empty(x.shape, dtype=_torch_dtype(params["quant_dtype"]), device=x.device)
        return fn(qx=qx, x_in=x, scale_in=t["scale"])
    return call


# ------------------------------------------------------------------ mxfp4 quant


def _mx_supports(p) -> str | None:
    if p["fmt"] != "mxfp4":
        return f"fmt={p['fmt']!r}: dynamic_mxfp4_quant produces mxfp4 only"
    if p["scale_rule"] != "floor":
        return (f"scale_rule={p['scale_rule']!r}: dynamic_mxfp4_quant's only mode ('even', SCALING_MODE=0) is a "
                f"floor-style rule; it has no RCEIL mode")
    if _compiled_off_amd():
        return ("dynamic_mxfp4_quant launches with AMD-only options (waves_per_eu), which Triton rejects when "
                "compiling for another GPU; it runs on ROCm and under the interpreter")
    return None


def _mx_call(fn):
    require = _supported("aiter:dynamic_mxfp4_quant", _mx_supports)

    def call(t, params, config):
        require(params)
        return fn(x=t["x"], scaling_mode="even")
    return call


def _mx_unpack(outs, params):
    from qkcheck.kernels.quant.adapter import unpack_mx

    return unpack_mx(outs, params)


# ------------------------------------------------------------------ gemm_a8w8


def _gemm_supports(p) -> str | None:
    if p["azp"]:
        return "azp: gemm_a8w8 has no activation zero points"
    if p["a_scale_shape"] != "[M,1]":
        return (f"a_scale_shape={p['a_scale_shape']!r}: gemm_a8w8 loads x_scale at every row's offset (shape "
                f"(M, 1) or (M,)); a per-tensor scale is outside its API")
    if p["b_scale_shape"] not in ("[1,N]", "[N]"):
        return f"b_scale_shape={p['b_scale_shape']!r}: gemm_a8w8 takes w_scale of shape (1, N) or (N,)"
    if p["out_dtype"] == "float32":
        return "out_dtype='float32': gemm_a8w8 documents BF16 or FP16 outputs"
    return None


def _gemm_pack(problem, params, device):
    from qkcheck.kernels.scaled_mm.adapter import pack_scaled_mm_operands

    # "nk": b is the [N, K] storage itself (passed as is); "kn": [K, N] storage, passed as its .t()
    # view; the kernel adds bias in bias's dtype after casting the accumulator: float32 keeps the
    # only rounding at the output cast
    return pack_scaled_mm_operands(problem, params, device)


def _gemm_config(config, name: str) -> dict:
    cfg = _mi300x_config(name)
    keys = {"block_m": "BLOCK_SIZE_M", "block_n": "BLOCK_SIZE_N", "block_k": "BLOCK_SIZE_K", "group_m": "GROUP_SIZE_M"}
    for k, v in (config or {}).items():
        cfg[keys[k]] = int(v)
    return cfg


def _gemm_default(dims, params) -> dict:
    cfg = _mi300x_config("GEMM-A8W8")
    return {"block_m": cfg["BLOCK_SIZE_M"], "block_n": cfg["BLOCK_SIZE_N"], "block_k": cfg["BLOCK_SIZE_K"],
            "group_m": cfg["GROUP_SIZE_M"]}


def _gemm_call(fn):
    require = _supported("aiter:gemm_a8w8", _gemm_supports)

    def call(t, params, config):
        require(params)
        w = t["b"] if params["b_storage"] == "nk" else t["b"].t()
        return fn(x=t["a"], w=w, x_scale=t["a_scale"], w_scale=t["b_scale"], bias=t["bias"],
                  dtype=_torch_dtype(params["out_dtype"]), y=t.get("y"),
                  config=_gemm_config(config, "GEMM-A8W8"))
    return call


# ------------------------------------------------------------------ gemm_a8w8_blockscale


def _block_supports(p) -> str | None:
    if p["bias"]:
        return "bias: gemm_a8w8_blockscale has no bias"
    if p["out_dtype"] == "float32":
        return "out_dtype='float32': gemm_a8w8_blockscale documents BF16 or FP16 outputs"
    return None


def _block_pack(problem, params, device):
    import numpy as np

    from qkcheck.kernels.scaled_mm.adapter import code_tensor
    from qkcheck.kernels.torch_io import float_tensor

    fmt = params["quant_dtype"]
    a_scale = np.asarray(problem["a_scale"], np.float64)
    return {
        "a": code_tensor(problem["a"], fmt, device),
        "b": code_tensor(np.asarray(problem["b"]).T, fmt, device),  # w: (N, K)
        # x_scale (M, scale_k): row-major, or the .t() view of (scale_k, M) storage
        "a_scale": float_tensor(a_scale.T if params["a_scale_major"] == "column" else a_scale, "float32", device),
        # w_scale (scale_n, scale_k): the canonical [K/bk, N/bn] transposed
        "b_scale": float_tensor(np.asarray(problem["b_scale"], np.float64).T, "float32", device),
    }


def _block_config(config, params) -> dict:
    cfg = _mi300x_config("GEMM-A8W8_BLOCKSCALE")
    cfg["BLOCK_SIZE_K"] = params["scale_block_k"]  # the launcher asserts GROUP_K == BLOCK_SIZE_K
    keys = {"block_m": "BLOCK_SIZE_M", "block_n": "BLOCK_SIZE_N", "group_m": "GROUP_SIZE_M", "split_k": "NUM_KSPLIT"}
    for k, v in (config or {}).items():
        cfg[keys[k]] = int(v)
    return cfg


def _block_default(dims, params) -> dict:
    cfg = _mi300x_config("GEMM-A8W8_BLOCKSCALE")
    return {"block_m": cfg["BLOCK_SIZE_M"], "block_n": cfg["BLOCK_SIZE_N"], "group_m": cfg["GROUP_SIZE_M"],
            "split_k": cfg["NUM_KSPLIT"]}


def _block_constraint(params, dims, config) -> str | None:
    """The launcher's own refusal: it shrinks BLOCK_SIZE_K to the split size cdiv(K, NUM_KSPLIT) where that is
    smaller, then asserts GROUP_K == BLOCK_SIZE_K (an AssertionError, the API saying no). A split size at
    least the scale block but not a multiple of it is accepted and computes a wrong result
    (docs/findings/aiter-blockscale-split-unaligned.md): those cases stay in."""
    split = (config or {}).get("split_k", 1)
    size = -(-dims["k"] // split)
    if split > 1 and size < params["scale_block_k"]:
        return (f"split_k={split}: the split size cdiv(K={dims['k']}, {split}) = {size} is below the scale block "
                f"{params['scale_block_k']}, which gemm_a8w8_blockscale refuses (GROUP_K must equal BLOCK_SIZE_K)")
    return None


def _block_call(fn):
    require = _supported("aiter:gemm_a8w8_blockscale", _block_supports)

    def call(t, params, config):
        require(params)
        a_scale = t["a_scale"].t() if params["a_scale_major"] == "column" else t["a_scale"]
        return fn(x=t["a"], w=t["b"], x_scale=a_scale, w_scale=t["b_scale"],
                  dtype=_torch_dtype(params["out_dtype"]), y=t.get("y"), config=_block_config(config, params))
    return call


# ------------------------------------------------------------------ table

_SPECS = (
    dict(name="aiter:dynamic_per_token_quant_fp8_i8", op="per_token_quant", file=QUANT,
         symbol="dynamic_per_token_quant_fp8_i8", signature=("qx", "x_in", "scale_out"),
         pack=_pack_x, make_call=_per_token_call, fields=dict(triton=True),
         supports=_per_token_supports, conventions={},
         description="AITER Triton dynamic_per_token_quant_fp8_i8 (caller-allocated qx in the case's quant dtype "
                     "and scale_out (M,) float32; scale = amax / torch.finfo|iinfo(qx.dtype).max, no amax floor)"),
    dict(name="aiter:static_per_tensor_quant_fp8_i8", op="static_quant", file=QUANT,
         symbol="static_per_tensor_quant_fp8_i8", signature=("qx", "x_in", "scale_in"),
         pack=_pack_static, make_call=_static_call, fields=dict(triton=True),
         supports=lambda p: None, conventions={},
         description="AITER Triton static_per_tensor_quant_fp8_i8 (caller-allocated qx, scale_in (1,) float32; "
                     "codes = (x * (1 / scale)).to(qx dtype))"),
    dict(name="aiter:dynamic_mxfp4_quant", op="mx_quant", file=QUANT, symbol="dynamic_mxfp4_quant",
         signature=("x", "scaling_mode"), pack=_pack_x, make_call=_mx_call,
         fields=dict(triton=True, unpack=_mx_unpack), supports=_mx_supports, conventions={"scale_rule": "even"},
         description="AITER Triton dynamic_mxfp4_quant, scaling_mode='even' (codes packed two per byte, low nibble "
                     "= even k; E8M0 scales as the .T view of (K/32, M) storage); the floor-style cases are judged by "
                     "its declared 'even' rule, which departs from OCP's floor where amax's mantissa is >= 1.75 (see "
                     "docs/findings/aiter-mxfp4-even-scale.md)"),
    dict(name="aiter:gemm_a8w8", op="scaled_mm", file=GEMM_A8W8, symbol="gemm_a8w8",
         signature=("x", "w", "x_scale", "w_scale", "bias", "dtype", "y", "config"),
         pack=_gemm_pack, make_call=_gemm_call,
         fields=dict(triton=True, out_param="y", default_config=_gemm_default,
                     tunables={"block_m": GEMM_TILES, "block_n": GEMM_TILES, "block_k": (32, 64, 128, 256),
                               "group_m": (1, 4, 8)}),
         supports=_gemm_supports, conventions={},
         description="AITER Triton gemm_a8w8 (int8 / fp8 codes, w as (N, K), per-token x_scale (M, 1), per-channel "
                     "w_scale (1, N), preallocated y, bias added in its own dtype (passed float32); config: the "
                     "case's tiles over AITER's MI300X 'any' entry)"),
    dict(name="aiter:gemm_a8w8_blockscale", op="block_scaled_mm", file=GEMM_BLOCKSCALE,
         symbol="gemm_a8w8_blockscale",
         signature=("x", "w", "x_scale", "w_scale", "dtype", "y", "config"),
         pack=_block_pack, make_call=_block_call,
         fields=dict(triton=True, out_param="y", default_config=_block_default,
                     tunables={"block_m": GEMM_TILES, "block_n": GEMM_TILES, "group_m": (1, 4, 8),
                               "split_k": (1, 2, 4)}, constraint=_block_constraint),
         supports=_block_supports, conventions={},
         description="AITER Triton gemm_a8w8_blockscale (fp8 codes, w (N, K), x_scale (M, ceil(K/bk)) row- or "
                     "column-major, w_scale (ceil(N/bn), ceil(K/bk)), BLOCK_SIZE_K = bk as the launcher requires, "
                     "preallocated y; config: the case's tiles / NUM_KSPLIT over AITER's MI300X 'any' entry)"),
)

register(_SPECS)


def load() -> tuple[list[KernelAdapter], str | None]:
    """(adapters, None) where AITER's Triton files load; ([], reason) where they do not. A wrapper
    whose file or function is missing still yields its adapter, whose every case fails naming it."""
    from qkcheck.kernels.engines import missing_call

    reason = _unavailable()
    if reason:
        return [], reason
    note = version_note()
    adapters = []
    for s in _SPECS:
        try:
            fn = getattr(_module(s["file"]), s["symbol"], None)
            where = f"aiter/{s['file']} has no callable {s['symbol']!r}" if not callable(fn) else ""
        except Exception as exc:
            fn, where = None, f"aiter/{s['file']} failed to load ({type(exc).__name__}: {exc})"
        call = s["make_call"](fn) if callable(fn) else missing_call(f"{s['name']}: {where}")
        adapters.append(KernelAdapter(name=s["name"], op=s["op"], pack=s["pack"], call=call,
                                      target=fn if callable(fn) else None, signature=s["signature"],
                                      description=f"{s['description']}; {note}", supports=platform_limited(s["supports"]),
                                      conventions=s["conventions"], **s["fields"]))
    return adapters, None


ADAPTERS, UNAVAILABLE = load()
