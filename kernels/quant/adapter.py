"""The bundled activation quantization kernels (``kernels.quant.kernel``) as adapters, each called
through its torch.library op (``kernels.quant.op``: ``qkcheck::per_token_quant``, ...), so the
fake's output metadata is checked against the real outputs and the op's contract (the op records
the backend that ran).

Tensors (``pack``): ``x`` in the case's in_dtype; ``scale`` (static_quant) a one-element float32
tensor; ``global_scale`` (nvfp4_quant) a one-element float32 tensor, passed to the op as it is;
``scale_ub`` (per_token_quant) a one-element float32 tensor or None — the custom op takes it as a
float, read from the tensor at call time. Configs are the case's config dict, turned into the
kernel's config dataclass and passed as its ``as_list()``; an empty config lets the launcher pick
(``default_config`` reports that choice). mx_quant (every MX format) and nvfp4_quant return uint8
bytes: FP4 codes packed two per byte along K, FP6 / FP8 codes one bit pattern per byte, scales as
E8M0 / E4M3 codes; ``unpack`` returns the codes one per element.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.torch_io import float_tensor


def _torch_quant_dtype(name: str):
    import torch

    dtypes = {"int8": torch.int8, "float8_e4m3fn": torch.float8_e4m3fn,
              "float8_e4m3fnuz": torch.float8_e4m3fnuz, "float8_e5m2": torch.float8_e5m2}
    try:
        return dtypes[name]
    except KeyError:
        raise ValueError(f"quant_dtype={name!r} is not supported by the bundled kernels "
                         f"(allowed: {', '.join(dtypes)})") from None


def _scalar_tensor(value, device: str):
    import torch

    return None if value is None else torch.tensor([float(value)], dtype=torch.float32, device=device)


def _float_of(t) -> float | None:
    """The value of a one-element tensor, for an op argument typed ``float``. Under fake tensors
    (the fake-vs-real check) the value cannot be read and does not shape the outputs; any valid
    positive bound stands in for it there."""
    from torch._subclasses.fake_tensor import FakeTensor

    if t is None:
        return None
    if isinstance(t, FakeTensor):
        return 1.0
    return float(t.reshape(()).item())


def _config_list(cls, config):
    """A case config dict as the op's ``int[]`` config (None: the launcher's default)."""
    if not config:
        return None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"config keys {unknown} are not {cls.__name__} fields (allowed: {sorted(fields)})")
    return cls(**{k: (bool(v) if k == "sw_fp8" else int(v)) for k, v in config.items()}).as_list()


def _default(op: str):
    def default_config(dims, params) -> dict:
        from qkcheck.kernels.quant import kernel as Q

        q = params.get("quant_dtype")
        cfg = Q.default_config(op, dims["m"], dims["k"], quant_dtype=None if q is None else _torch_quant_dtype(q),
                               group_size=params.get("group_size"))
        return {k: int(v) for k, v in dataclasses.asdict(cfg).items()}
    default_config.__name__ = f"default_config_{op}"
    return default_config


# ------------------------------------------------------------------ pack


def pack_x(problem, params, device):
    """``x`` in the case's in_dtype (the problem's values are representable in it)."""
    return {"x": float_tensor(np.asarray(problem["x"], np.float64), params["in_dtype"], device)}


def pack_per_token(problem, params, device):
    return {**pack_x(problem, params, device), "scale_ub": _scalar_tensor(problem.get("scale_ub"), device)}


def pack_static(problem, params, device):
    return {**pack_x(problem, params, device), "scale": _scalar_tensor(problem["scale"], device)}


def pack_nvfp4(problem, params, device):
    return {**pack_x(problem, params, device), "global_scale": _scalar_tensor(problem["global_scale"], device)}


# ------------------------------------------------------------------ call


def call_per_token(t, params, config):
    import torch

    from qkcheck.kernels.quant import op  # noqa: F401 — registers qkcheck::per_token_quant
    from qkcheck.kernels.quant.kernel import TileConfig

    return torch.ops.qkcheck.per_token_quant(t["x"], _torch_quant_dtype(params["quant_dtype"]),
                                             _float_of(t.get("scale_ub")), _config_list(TileConfig, config))


def _call_static(t, params, config):
    import torch

    from qkcheck.kernels.quant import op  # noqa: F401
    from qkcheck.kernels.quant.kernel import TileConfig

    return torch.ops.qkcheck.static_quant(t["x"], t["scale"], _torch_quant_dtype(params["quant_dtype"]),
                                          _config_list(TileConfig, config))


def _call_group(t, params, config):
    import torch

    from qkcheck.kernels.quant import op  # noqa: F401
    from qkcheck.kernels.quant.kernel import GroupConfig

    return torch.ops.qkcheck.per_token_group_quant(
        t["x"], params["group_size"], _torch_quant_dtype(params["quant_dtype"]), params["column_major_scales"],
        params["scale_ue8m0"], _config_list(GroupConfig, config))


def _call_mx(t, params, config):
    import torch

    from qkcheck.kernels.quant import op  # noqa: F401
    from qkcheck.kernels.quant.kernel import MXConfig

    return torch.ops.qkcheck.mx_quant(t["x"], params["fmt"], params["scale_rule"], _config_list(MXConfig, config))


def _call_nvfp4(t, params, config):
    import torch

    from qkcheck.kernels.quant import op  # noqa: F401
    from qkcheck.kernels.quant.kernel import NVFP4Config

    return torch.ops.qkcheck.nvfp4_quant(t["x"], t["global_scale"], _config_list(NVFP4Config, config))


def _nibbles(packed: np.ndarray) -> np.ndarray:
    from qkcheck.oracle.packing import NIBBLES_K_ACTIVATION, unpack

    return unpack(packed, NIBBLES_K_ACTIVATION, signed=False)


def unpack_mx(outs, params):
    """(codes [M, K] one per element, E8M0 scale codes [M, K/32]) of an MX output: mxfp4's
    packed bytes (low nibble = even k, ``oracle.packing.NIBBLES_K_ACTIVATION``) unpacked; the
    other formats' bytes read as their element format's bit patterns (FP6 in the low 6 bits)."""
    from qkcheck.oracle.formats import FORMATS
    from qkcheck.oracle.ops.quant import MX_FORMATS, codes_from_output
    from qkcheck.oracle.schemes import get_scheme

    raw, scales = (o.detach().cpu().numpy() for o in outs)
    fmt = params["fmt"]
    if fmt == "mxfp4":
        return _nibbles(raw), scales
    elem = get_scheme(MX_FORMATS[fmt]).elem
    return codes_from_output(raw, "uint8" if FORMATS[elem].bits < 8 else elem, elem), scales


def unpack_nvfp4(outs, params):
    """(e2m1 codes [M, K] one per element, E4M3 scale codes [M, K/16]) from the packed output."""
    del params
    packed, scales = (o.detach().cpu().numpy() for o in outs)
    return _nibbles(packed), scales


# ------------------------------------------------------------------ adapters


PER_TOKEN_QUANT = KernelAdapter(
    name="bundled:per_token_quant",
    op="per_token_quant",
    pack=pack_per_token,
    call=call_per_token,
    tunables={"block_m": (1, 2, 4, 8, 16, 32), "block_k": (16, 32, 64, 128, 256, 512, 1024),
              "num_warps": (1, 2, 4, 8), "sw_fp8": (0, 1)},
    custom_op="qkcheck::per_token_quant",
    default_config=_default("per_token_quant"),
    description="Triton dynamic per-token quantization (int8 / FP8, optional scale_ub), float32 scales [M, 1]",
)

STATIC_QUANT = KernelAdapter(
    name="bundled:static_quant",
    op="static_quant",
    pack=pack_static,
    call=_call_static,
    tunables=PER_TOKEN_QUANT.tunables,
    custom_op="qkcheck::static_quant",
    default_config=_default("static_quant"),
    description="Triton static per-tensor quantization (int8 / FP8) with a given float32 scale",
)

PER_TOKEN_GROUP_QUANT = KernelAdapter(
    name="bundled:per_token_group_quant",
    op="per_token_group_quant",
    pack=pack_x,
    call=_call_group,
    tunables={"block_m": (1, 2, 4, 8, 16, 32), "block_g": (1, 2, 4, 8, 16, 32), "num_warps": (1, 2, 4, 8),
              "sw_fp8": (0, 1)},
    custom_op="qkcheck::per_token_group_quant",
    default_config=_default("per_token_group_quant"),
    description="Triton per-token-group quantization (G 32/64/128, int8 / FP8, row- or column-major, UE8M0 scales)",
)

MX_QUANT = KernelAdapter(
    name="bundled:mx_quant",
    op="mx_quant",
    pack=pack_x,
    call=_call_mx,
    tunables={"block_m": (1, 2, 4, 8, 16, 32), "block_g": (1, 2, 4, 8, 16, 32), "num_warps": (1, 2, 4, 8)},
    custom_op="qkcheck::mx_quant",
    default_config=_default("mx_quant"),
    unpack=unpack_mx,
    description="Triton MX quantization (MXFP4, MXFP6 e2m3/e3m2, MXFP8 e4m3/e5m2; E8M0 block scales, OCP floor "
                "or RCEIL); uint8 codes: FP4 packed two per byte, FP6/FP8 one bit pattern per byte",
)

NVFP4_QUANT = KernelAdapter(
    name="bundled:nvfp4_quant",
    op="nvfp4_quant",
    pack=pack_nvfp4,
    call=_call_nvfp4,
    tunables={"block_m": (1, 2, 4, 8, 16, 32), "block_g": (1, 2, 4, 8, 16, 32), "num_warps": (1, 2, 4, 8)},
    custom_op="qkcheck::nvfp4_quant",
    default_config=_default("nvfp4_quant"),
    unpack=unpack_nvfp4,
    description="Triton NVFP4 quantization (E4M3 scales per 16 elements, float32 global dequantization scale), "
                "e2m1 codes packed two per byte, scales as uint8 E4M3 codes",
)


def adapters() -> tuple[KernelAdapter, ...]:
    return (PER_TOKEN_QUANT, STATIC_QUANT, PER_TOKEN_GROUP_QUANT, MX_QUANT, NVFP4_QUANT)
