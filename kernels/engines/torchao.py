"""torchao's Triton quantization kernels as qkcheck adapters (``--kernels torchao``).

Verified against ``torchao`` 0.18.0 (``VERIFIED``); on another version each adapter's description
carries a version note and the signature check makes drift visible. torchao is imported the
ordinary way (``import torchao`` works without a GPU; its C++/CUDA extensions fail to load with a
warning and are not used here).

Why a predicate is answered while the kernels are built: torchao defines its Triton kernels only
where ``torch.utils._triton.has_triton()`` is true, which needs a CUDA/ROCm/XPU device, and the MX
kernels of ``prototype/mx_formats/kernels.py`` only on sm100+ with CUDA >= 12.8 or on a ROCm MI350
(``_triton_kernels_available``, evaluated when that module is first imported). The kernels are
plain Triton and run under the interpreter (and compiled on other GPUs), so where they are not
defined already qkcheck builds them with those predicates answered true, restoring them
afterwards: ``has_triton`` while ``kernel/blockwise_quantization.py`` builds its kernels, and
``has_triton``, ``torchao.utils.is_ROCM`` and ``is_MI350`` while ``mx_formats/kernels.py`` is first
imported. The MX kernels then take their ROCm (MI350) branch: ``IS_ROCM`` is true, so RCEIL scales
come from the portable ``ceil(log2(amax * (1 / 448)))`` path, not the sm100 PTX
``cvt.rp.satfinite.ue8m0x2.f32`` (which neither the interpreter nor a pre-Blackwell NVIDIA GPU can
run). Where the module was imported before with the kernels undefined, the MX adapters are absent
and ``UNAVAILABLE_PARTS`` says why.

Both APIs assert a contiguous input; the runner's inputs are views with padded rows inside
NaN-poisoned buffers, so ``call`` copies ``x`` into a contiguous view that is itself inside a
NaN-poisoned buffer (reads past either end still return poison; the padding between rows, which
a contiguous tensor does not have, is what is given up).

=======================================  ======================  ======================================
adapter                                  op                      engine callable
=======================================  ======================  ======================================
torchao:fp8_blockwise_act_quant          per_token_group_quant   torchao.kernel.blockwise_quantization
                                                                 .fp8_blockwise_act_quant
torchao:triton_to_mxfp8_dim0             mx_quant                torchao.prototype.mx_formats.kernels
                                                                 .triton_to_mxfp8_dim0
=======================================  ======================  ======================================
"""
from __future__ import annotations

from contextlib import contextmanager

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.engines import EngineUnsupported, import_engine, platform_limited, register

ENGINE = "torchao"
VERIFIED = ("0.18.0",)
INSTALL_HINT = "pip install --no-deps torchao==0.18.0"
BLOCKWISE = "torchao.kernel.blockwise_quantization"
MX = "torchao.prototype.mx_formats.kernels"
UNAVAILABLE_PARTS: dict[str, str] = {}


def installed_version() -> str | None:
    from qkcheck.kernels.engines import installed_version as _installed

    return _installed(ENGINE)


def version_note() -> str:
    from qkcheck.kernels.engines import version_note as _note

    return _note(ENGINE, VERIFIED)


@contextmanager
def _answered(*targets):
    """Each (module, attribute) replaced by ``lambda: True`` inside the block, restored after."""
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets]
    try:
        for mod, name, _ in saved:
            setattr(mod, name, lambda: True)
        yield
    finally:
        for mod, name, old in saved:
            setattr(mod, name, old)


def _blockwise():
    import importlib

    import torch.utils._triton as tt

    mod = importlib.import_module(BLOCKWISE)
    if mod._triton_impls is None or not mod._triton_impls.available:
        with _answered((tt, "has_triton")):
            mod._triton_impls = None
            mod._get_triton_impls()
    return mod


def _mx():
    import importlib
    import sys

    import torch.utils._triton as tt

    if MX not in sys.modules:
        import torchao.utils as tu

        with _answered((tt, "has_triton"), (tu, "is_ROCM"), (tu, "is_MI350")):
            importlib.import_module(MX)
    mod = sys.modules[MX]
    if not mod._triton_kernels_available:
        raise ImportError(f"{MX} was imported before qkcheck with its Triton kernels undefined "
                          f"(_triton_kernels_available is False); run qkcheck in a fresh process")
    return mod


def _contiguous(x):
    """``x`` copied into a contiguous view with NaN poison before and after it."""
    import torch

    pad = 64
    buf = torch.full((x.numel() + 2 * pad,), float("nan"), dtype=x.dtype, device=x.device)
    view = buf[pad:pad + x.numel()].view(x.shape)
    view.copy_(x)
    return view


def _signature_target(fn):
    """``fn``, or for a torch.library ``triton_op`` (a CustomOpDef, called as ``(*args, **kwargs)``) a
    callable whose signature is the op's registered schema: the parameter names it binds by keyword."""
    import inspect

    schema = getattr(getattr(fn, "_opoverload", None), "_schema", None)
    if schema is None:
        return fn

    def op(*args, **kwargs):
        return fn(*args, **kwargs)

    op.__name__ = op.__qualname__ = str(schema.name)
    op.__signature__ = inspect.Signature([inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                          for a in schema.arguments])
    return op


def _pack_x(problem, params, device):
    from qkcheck.kernels.quant.adapter import pack_x

    return pack_x(problem, params, device)


def _require(name, check):
    def require(params, dims=None):
        reason = check(params)
        if reason:
            raise EngineUnsupported(f"{name}: {reason}")
    return require


# ------------------------------------------------------------------ fp8_blockwise_act_quant


def _act_supports(p) -> str | None:
    if p["quant_dtype"] not in ("float8_e4m3fn", "float8_e5m2"):
        return f"quant_dtype={p['quant_dtype']!r}: fp8_blockwise_act_quant asserts float8_e4m3fn or float8_e5m2"
    if p["column_major_scales"]:
        return "column_major_scales: fp8_blockwise_act_quant writes row-major scales"
    if p["scale_ue8m0"]:
        return "scale_ue8m0: fp8_blockwise_act_quant has float32 scales only"
    return None


def _act_conventions(p) -> dict:
    # the kernel divides amax by the literal 448.0 whatever the output dtype (blockwise_quantization.py,
    # _fp8_blockwise_act_quant_kernel_impl): for float8_e5m2 codes span [-448, 448], a valid
    # quantization (code * scale dequantizes to x) that leaves e5m2's range above 448 unused
    return {"qmax": 448.0} if p.get("quant_dtype") == "float8_e5m2" else {}


def _act_call(fn):
    require = _require("torchao:fp8_blockwise_act_quant", _act_supports)

    def call(t, params, config):
        import torch

        require(params)
        x = t["x"]
        if x.shape[1] % params["group_size"]:
            raise EngineUnsupported(f"torchao:fp8_blockwise_act_quant: K={x.shape[1]} is not a multiple of "
                                    f"block_size={params['group_size']} (the API asserts it)")
        return fn(x=_contiguous(x), block_size=params["group_size"], dtype=getattr(torch, params["quant_dtype"]))
    return call


# ------------------------------------------------------------------ triton_to_mxfp8_dim0


def _mx_supports(p) -> str | None:
    if p["fmt"] != "mxfp8_e4m3":
        return f"fmt={p['fmt']!r}: triton_to_mxfp8_dim0 produces mxfp8 e4m3 only"
    if p["in_dtype"] != "bfloat16":
        return f"in_dtype={p['in_dtype']!r}: triton_to_mxfp8_dim0 asserts bfloat16 input"
    return None


MX_TILES = (128, 256)


@contextmanager
def _one_config(autotuner, row: int, col: int):
    """The autotuned kernel restricted to one of its own configs (ROW_TILE_SIZE=row,
    COL_TILE_SIZE=col) for the call: Triton's autotuner benchmarks through the active GPU driver,
    which the interpreter does not have, and a fixed tile makes the case replayable."""
    saved = autotuner.configs
    picked = [c for c in saved if c.kwargs.get("ROW_TILE_SIZE") == row and c.kwargs.get("COL_TILE_SIZE") == col]
    if not picked:
        raise EngineUnsupported(f"no autotune config with ROW_TILE_SIZE={row}, COL_TILE_SIZE={col}")
    autotuner.configs = picked[:1]
    try:
        yield
    finally:
        autotuner.configs = saved


def _mx_call(fn):
    require = _require("torchao:triton_to_mxfp8_dim0", _mx_supports)

    def call(t, params, config):
        import sys

        import torch

        require(params)
        kernel = sys.modules[MX].to_mxfp8_dim0_kernel
        with _one_config(kernel, (config or {}).get("block_m", 128), MX_TILES[0]):
            codes, scales = fn(x=_contiguous(t["x"]), inner_block_size=32, scaling_mode=params["scale_rule"])
        # mx_quant's output contract is uint8 bytes (codes one per byte, E8M0 codes): the same bits as
        # torchao's float8_e4m3fn / float8_e8m0fnu tensors, reinterpreted (no value changes)
        return codes.view(torch.uint8), scales.view(torch.uint8)
    return call


def _mx_unpack(outs, params):
    """(e4m3 bit patterns [M, K], E8M0 codes [M, K/32]) from (float8_e4m3fn, float8_e8m0fnu) tensors."""
    import torch

    codes, scales = (o.detach().cpu().view(torch.uint8).numpy() for o in outs)
    return codes, scales


# ------------------------------------------------------------------ table

_SPECS = (
    dict(name="torchao:fp8_blockwise_act_quant", op="per_token_group_quant", loader=_blockwise,
         symbol="fp8_blockwise_act_quant", signature=("x", "block_size", "dtype"),
         pack=_pack_x, make_call=_act_call, fields=dict(triton=True),
         supports=_act_supports, conventions=_act_conventions,
         description="torchao fp8_blockwise_act_quant (1 x block_size groups along K, scale = amax / 448.0 in "
                     "float32, codes = (x / scale).to(fp8), no amax floor; float32 scales (M, K/G); the input is "
                     "handed over contiguous, as the API asserts)"),
    dict(name="torchao:triton_to_mxfp8_dim0", op="mx_quant", loader=_mx,
         symbol="triton_to_mxfp8_dim0", signature=("x", "inner_block_size", "scaling_mode"),
         pack=_pack_x, make_call=_mx_call, fields=dict(triton=True, unpack=_mx_unpack),
         supports=_mx_supports, conventions={},
         description="torchao triton_to_mxfp8_dim0 (bf16 rows -> float8_e4m3fn codes and E8M0 scales per 32 "
                     "along K, scaling_mode floor | rceil; RCEIL by the ROCm / portable path; the input is handed "
                     "over contiguous, as the API asserts)"),
)

# CONVENTIONS' data form (qmax per quant dtype); the adapters carry the same as a function of params
register([{**s, "conventions": {"qmax": {"float8_e5m2": 448.0}} if s["conventions"] is _act_conventions else s["conventions"]}
          for s in _SPECS])


def load() -> tuple[list[KernelAdapter], str | None]:
    """(adapters, None) where torchao imports; ([], reason) where it does not."""
    from qkcheck.kernels.engines import missing_call

    _, reason = import_engine(ENGINE, INSTALL_HINT)
    if reason:
        return [], reason
    note = version_note()
    adapters = []
    UNAVAILABLE_PARTS.clear()
    for s in _SPECS:
        try:
            fn = getattr(s["loader"](), s["symbol"], None)
            where = f"no callable {s['symbol']!r}" if not callable(fn) else ""
        except Exception as exc:
            fn, where = None, f"{s['symbol']} failed to load ({type(exc).__name__}: {exc})"
        if not callable(fn):
            UNAVAILABLE_PARTS[s["name"]] = where
        call = s["make_call"](fn) if callable(fn) else missing_call(f"{s['name']}: {where}")
        target = _signature_target(fn) if callable(fn) else None
        adapters.append(KernelAdapter(name=s["name"], op=s["op"], pack=s["pack"], call=call,
                                      target=target, signature=s["signature"],
                                      description=f"{s['description']}; {note}", supports=platform_limited(s["supports"]),
                                      conventions=s["conventions"], **s["fields"]))
    return adapters, None


ADAPTERS, UNAVAILABLE = load()
