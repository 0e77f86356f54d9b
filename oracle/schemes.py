"""Quantization schemes as data: what is quantized how, and the reference quantize / dequantize.

Orientation (used across the project)
-------------------------------------
GEMM ``y = x @ w`` with activations ``x[M, K]`` and weights ``w[K, N]``; K is the reduction axis.
A weight scheme quantizes along ``axis=0`` of ``w[K, N]``, an activation scheme along ``axis=1``
of ``x[M, K]``. The reduction axis is always passed explicitly: ``quantize(x, scheme, axis=...)``.

Scales keep the array's rank, with the reduced axis replaced by its number of groups:

    ===================================  ========================  ==========================
    granularity                          weights w[K, N], axis=0    activations x[M, K], axis=1
    ===================================  ========================  ==========================
    tensor                               [1, 1]                     [1, 1]
    channel (= group_size -1, per-token)  [1, N]                     [M, 1]
    group G (per-token-group G, MX, NV)   [K // G, N]                [M, K // G]
    block (bk, bo)                        [K // bk, N // bo]         [M // bo, K // bk]
    ===================================  ========================  ==========================

``block = (bk, bo)``: ``bk`` elements along the reduction axis, ``bo`` along the other one.
Zero points (``QTensor.zeros``) have the shape of the scales.

Scale rules (``Scheme.scale_rule``); ``amax`` is the group's max |x|, floored at
``Scheme.amax_floor``, and ``qmax`` the element format's largest finite value:

* ``"amax"``: ``scale = amax / qmax``.
* ``"pow2_ceil"``: ``scale = 2**ceil(log2(amax / qmax))`` -- the UE8M0 rounding of DeepGEMM-style
  block scales and the RCEIL mode of MX quantizers (never lets an element saturate).
* ``"mx_floor"``: OCP MX v1.0 §6.3: ``shared_exp = floor(log2(amax)) - emax_elem`` with
  ``emax_elem = floor(log2(qmax))`` of the element format, ``scale = 2**shared_exp``.
  Elements above ``qmax`` after scaling saturate to ``qmax``.
* ``"mx_even"``: ``mx_floor`` of amax rounded first to the nearest power of two at its second
  mantissa bit (float32 bits ``(b + 0x200000) & 0xFF800000``): an amax whose mantissa is >= 1.75
  takes the next exponent, so ``7 * 2**(e-2)`` does not saturate to 6. The "even" rounding of AMD
  Quark and AITER's MXFP4 quantizer; not OCP's rule.

Power-of-two exponents are clamped to E8M0's range [-127, 127]; an all-zero group under a
power-of-two rule with ``amax_floor == 0`` (MX) gets ``2**-127`` (E8M0 code 0x00), what the OCP
reference flow and Triton's MX quantizers produce.

All-zero groups and the amax floor
----------------------------------
``amax`` is floored: ``max(amax, amax_floor)``. Linear (non-MX) schemes use ``amax_floor=1e-10``,
the ``eps`` of the Triton per-token(-group) quant kernels of vLLM / SGLang: an all-zero group gets
``scale = 1e-10 / qmax`` (rounded to the scale format) and codes 0. MX and NVFP4 use
``amax_floor=0``. Whenever the *decoded* scale is 0 (an all-zero NVFP4 block, or a block scale
that underflows E4M3) the group's codes are those of 0 and it dequantizes to 0 (TensorRT-LLM's
NVFP4 quantizer does the same: a zero block scale gives a zero output scale).

Integer elements
----------------
* Symmetric, signed (``int8``, ``int4``; ``zero_point=None``): ``codes = clip(RNE(x / scale),
  -qmax, qmax)`` with ``qmax = 127`` / ``7``; -128 / -8 are never produced (symmetric range),
  though dequantize accepts them.
* Symmetric, unsigned (``uint4``; GPTQ ``sym=True``): the range ``[-amax, amax]`` is mapped onto
  ``0..2**bits - 1`` with the implicit zero ``2**(bits-1)``: ``scale = 2 * amax / (2**bits - 1)``,
  ``zeros = 8``, ``codes = clip(RNE(x / scale) + 8, 0, 15)``. ``QTensor.zeros`` holds the 8s,
  because GPTQ checkpoints store them.
* Asymmetric (``zero_point="asym"``, unsigned formats only; GPTQ ``sym=False``, AWQ):
  ``lo = min(min(x), 0)``, ``hi = max(max(x), 0)``, ``scale = max(hi - lo, amax_floor) / qmax``,
  ``zeros = clip(RNE(-lo / scale), 0, qmax)``, ``codes = clip(RNE(x / scale) + zeros, 0, qmax)``.

Dequantization is ``(codes - zeros) * scales`` (integers) or ``decode(codes) * scales
[* global_scale]`` (floats), in float64, always with the scale *as stored* (decoded from its scale
format). Codes are computed from that decoded scale too, so quantize(dequantize(qt)) reproduces
qt's values for symmetric and MX schemes.

Float elements
--------------
``codes = FORMATS[elem].encode(x / scale, saturate=True)`` (RNE of the exact quotient).
NVFP4 (``global_scale=True``): ``global_scale = float32(amax(x) / (6 * 448))`` (1.0 for an all-zero
tensor), block scales ``e4m3(amax_block / 6 / global_scale)``, codes
``encode(x / (block_scale * global_scale))``, dequant ``decode(codes) * block_scale *
global_scale``. The global scale is the dequantization multiplier; kernels often pass its
reciprocal.

Storage (``pack_codes`` / ``unpack_codes``)
-------------------------------------------
``Scheme.packing`` and ``Scheme.zeros_packing`` are written for the weight orientation
``[K, N]`` (``axis 0`` = along the reduction axis K). For a tensor quantized along ``axis=1`` the
packing runs along the mirrored axis, so "packed along K" stays along K. GPTQ's historical
checkpoint convention stores ``zeros - 1`` (modulo ``2**bits``); ``Scheme.zeros_minus_one`` applies
it on storing and undoes it on loading.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from qkcheck.oracle.formats import FORMATS, FloatFormat, IntFormat
from qkcheck.oracle.packing import (
    AWQ_QWEIGHT,
    AWQ_QZEROS,
    GPTQ_QWEIGHT,
    GPTQ_QZEROS,
    NIBBLES_K_WEIGHT,
    Packing,
    pack,
    unpack,
)

__all__ = [
    "Scheme",
    "QTensor",
    "Stored",
    "quantize",
    "dequantize",
    "pack_codes",
    "unpack_codes",
    "get_scheme",
    "scale_shape",
    "SCHEMES",
    "GRANULARITIES",
    "SCALE_FORMATS",
    "SCALE_RULES",
    "ZERO_POINTS",
    "DEFAULT_AMAX_FLOOR",
    "NVFP4_GLOBAL_DIVISOR",
]

GRANULARITIES = ("tensor", "channel", "group", "block")
# scale format -> numpy storage dtype of the stored scale (8-bit formats store their codes)
SCALE_FORMATS: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "float8_e8m0fnu": np.dtype(np.uint8),
    "float8_e4m3fn": np.dtype(np.uint8),
}
SCALE_RULES = ("amax", "pow2_ceil", "mx_floor", "mx_even")
ZERO_POINTS = (None, "asym")
DEFAULT_AMAX_FLOOR = 1e-10
# NVFP4 global scale = amax(x) / (FP4 max * E4M3 max)
NVFP4_GLOBAL_DIVISOR = 6.0 * 448.0
# E8M0's exponent range (OCP MX v1.0 §5.4.1): power-of-two scales are clamped to it
_POW2_EXP_MIN, _POW2_EXP_MAX = -127, 127


def _fix_join(items) -> str:
    return ", ".join(repr(i) if isinstance(i, str) or i is None else str(i) for i in items)


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme, as data. See the module docstring for the formulas.

    elem: element format name in ``oracle.formats.FORMATS``.
    granularity: ``"tensor"``, ``"channel"`` (one scale per slice along the reduction axis:
        per-output-channel weights, per-token activations), ``"group"`` (``group_size``
        consecutive elements along the reduction axis; -1 = the whole axis = channel) or
        ``"block"`` (``block = (along reduction axis, along the other axis)``).
    scale_format: ``"float32"``, ``"float16"``, ``"float8_e8m0fnu"`` or ``"float8_e4m3fn"``.
    scale_rule: ``"amax"``, ``"pow2_ceil"`` (RCEIL / UE8M0) or ``"mx_floor"`` (OCP MX §6.3).
    zero_point: ``None`` (symmetric; implicit zero 2**(bits-1) for unsigned int elements) or
        ``"asym"`` (integer zero points, unsigned int elements only).
    zeros_minus_one: storage flag: GPTQ's historical checkpoints store ``zeros - 1``.
    packing / zeros_packing: how codes / zero points are stored (weight orientation, see the
        module docstring); None = one code per element.
    global_scale: NVFP4's second-level fp32 scale ``amax(x) / (6 * 448)``.
    amax_floor: lower bound on a group's amax (all-zero groups).
    name: label for display and test ids; not used in any computation.
    """

    elem: str
    granularity: str = "group"
    group_size: int = -1
    block: tuple[int, int] | None = None
    scale_format: str = "float32"
    scale_rule: str = "amax"
    zero_point: str | None = None
    zeros_minus_one: bool = False
    packing: Packing | None = None
    zeros_packing: Packing | None = None
    global_scale: bool = False
    amax_floor: float = DEFAULT_AMAX_FLOOR
    name: str = ""

    def __post_init__(self) -> None:
        if self.elem not in FORMATS:
            raise ValueError(
                f"elem={self.elem!r} is not a known format (allowed: {_fix_join(FORMATS)}); "
                f"use the torch/ml_dtypes name, e.g. 'float8_e4m3fn'"
            )
        if isinstance(FORMATS[self.elem], FloatFormat) and not FORMATS[self.elem].signed:
            raise ValueError(
                f"elem={self.elem!r} has no sign and cannot hold tensor elements "
                f"(it is a scale format); pass it as scale_format instead"
            )
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity={self.granularity!r} is not known (allowed: {_fix_join(GRANULARITIES)}); "
                f"per-token is 'channel' along K, per-token-group is 'group'"
            )
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, (int, np.integer)) or (
            self.group_size != -1 and self.group_size <= 0
        ):
            raise ValueError(
                f"group_size={self.group_size!r} must be a positive int or -1 (the whole axis); "
                f"pass e.g. group_size=128"
            )
        if self.granularity == "block":
            ok = (
                isinstance(self.block, tuple)
                and len(self.block) == 2
                and all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b > 0 for b in self.block)
            )
            if not ok:
                raise ValueError(
                    f"block={self.block!r} must be a pair of positive ints (along the reduction "
                    f"axis, along the other axis) for granularity='block'; pass e.g. block=(128, 128)"
                )
        elif self.block is not None:
            raise ValueError(
                f"block={self.block!r} is only meaningful with granularity='block', got "
                f"granularity={self.granularity!r}; drop block or use granularity='block'"
            )
        if self.scale_format not in SCALE_FORMATS:
            raise ValueError(
                f"scale_format={self.scale_format!r} is not a scale format (allowed: "
                f"{_fix_join(SCALE_FORMATS)}); pick one of those"
            )
        if self.scale_rule not in SCALE_RULES:
            raise ValueError(
                f"scale_rule={self.scale_rule!r} is not known (allowed: {_fix_join(SCALE_RULES)}); "
                f"RCEIL / UE8M0 is 'pow2_ceil', the OCP MX rule is 'mx_floor'"
            )
        if self.zero_point not in ZERO_POINTS:
            raise ValueError(
                f"zero_point={self.zero_point!r} is not known (allowed: {_fix_join(ZERO_POINTS)}); "
                f"use None for symmetric"
            )
        fmt = FORMATS[self.elem]
        if self.zero_point == "asym" and not (isinstance(fmt, IntFormat) and not fmt.signed):
            raise ValueError(
                f"zero_point='asym' needs an unsigned integer element format, got elem={self.elem!r} "
                f"(allowed: {_fix_join(n for n, f in FORMATS.items() if isinstance(f, IntFormat) and not f.signed)}); "
                f"use elem='uint4' or zero_point=None"
            )
        if self.zero_point == "asym" and self.scale_rule != "amax":
            raise ValueError(
                f"scale_rule={self.scale_rule!r} is not defined with zero_point='asym' (allowed: 'amax'); "
                f"use scale_rule='amax'"
            )
        if self.zeros_minus_one and not (isinstance(fmt, IntFormat) and not fmt.signed):
            raise ValueError(
                f"zeros_minus_one=True needs stored zero points (an unsigned int element format), got "
                f"elem={self.elem!r}; set zeros_minus_one=False"
            )
        if self.scale_format == "float8_e8m0fnu" and self.scale_rule == "amax":
            raise ValueError(
                "scale_rule='amax' gives scales that are not powers of two, which float8_e8m0fnu "
                "cannot hold (allowed with E8M0: 'pow2_ceil', 'mx_floor', 'mx_even'); pick one of those"
            )
        for field in ("packing", "zeros_packing"):
            p = getattr(self, field)
            if p is not None and not isinstance(p, Packing):
                raise TypeError(f"{field}={p!r} must be a Packing or None; pass e.g. GPTQ_QWEIGHT")
            if p is not None and p.axis not in (0, 1, -1, -2):
                raise ValueError(f"{field}.axis={p.axis} must address a 2-D array (allowed: 0, 1); use a Packing with axis 0 or 1")
        if self.packing is not None and self.packing.bits < fmt.bits:
            raise ValueError(
                f"packing.bits={self.packing.bits} is narrower than elem={self.elem!r} "
                f"({fmt.bits} bits); use a Packing with bits >= {fmt.bits}"
            )
        if self.global_scale and not (isinstance(fmt, FloatFormat) and self.scale_format == "float8_e4m3fn"):
            raise ValueError(
                f"global_scale=True is NVFP4's two-level scaling: it needs a float element format and "
                f"scale_format='float8_e4m3fn', got elem={self.elem!r}, scale_format={self.scale_format!r}; "
                f"use get_scheme('nvfp4')"
            )
        if not (isinstance(self.amax_floor, (int, float)) and math.isfinite(self.amax_floor) and self.amax_floor >= 0):
            raise ValueError(f"amax_floor={self.amax_floor!r} must be a finite float >= 0; pass e.g. 1e-10")

    @property
    def format(self):
        """The element format record."""
        return FORMATS[self.elem]

    @property
    def is_float(self) -> bool:
        return isinstance(self.format, FloatFormat)

    def dequantize(self, qt: "QTensor") -> np.ndarray:
        return dequantize(qt)

    def __str__(self) -> str:
        return self.name or repr(self)


@dataclass(frozen=True)
class QTensor:
    """A quantized tensor, unpacked.

    codes: same shape as the input; int8 / uint8 integer values (int elements) or uint8 bit
        patterns (float elements).
    scales: float64, the scales as stored (decoded from the scale format); shape as in the
        module docstring (reduced axis -> number of groups).
    scale_codes: uint8 codes of the scales when the scale format is 8-bit, else None.
    zeros: int32 zero points, shape of ``scales`` (asymmetric or unsigned symmetric), or None.
    global_scale: NVFP4's fp32 global scale (as a float), or None.
    scheme, axis: how and along which axis it was quantized.
    """

    codes: np.ndarray
    scales: np.ndarray
    scale_codes: np.ndarray | None
    zeros: np.ndarray | None
    global_scale: float | None
    scheme: Scheme
    axis: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        return dequantize(self)


@dataclass(frozen=True)
class Stored:
    """The checkpoint / kernel-argument form of a QTensor.

    qweight: packed codes (``scheme.packing``), or the codes themselves when it is None.
    scales: float32 / float16 scale values, or uint8 codes for 8-bit scale formats.
    qzeros: packed zero points as stored (GPTQ: ``zeros - 1`` mod 2**bits), None when symmetric
        and signed.
    global_scale: np.float32 or None.
    shape: the unpacked shape of the codes.
    """

    qweight: np.ndarray
    scales: np.ndarray
    qzeros: np.ndarray | None
    global_scale: np.float32 | None
    shape: tuple[int, int]


# ---------------------------------------------------------------- argument checks


def _check_scheme(scheme) -> Scheme:
    if isinstance(scheme, str):
        return get_scheme(scheme)
    if not isinstance(scheme, Scheme):
        raise TypeError(
            f"scheme={scheme!r} must be a Scheme or a scheme name, got {type(scheme).__name__}; "
            f"pass e.g. get_scheme('gptq int4 g128')"
        )
    return scheme


def _check_axis(axis, ndim: int = 2) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis!r} is not an axis of a 2-D array (allowed: 0 for weights w[K, N], 1 for "
            f"activations x[M, K]); pass the reduction axis K"
        )
    return int(axis) % ndim


def _check_x(x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        try:
            arr = arr.astype(np.float64)  # e.g. ml_dtypes bfloat16
        except (TypeError, ValueError):
            raise TypeError(
                f"x must be a real array, got dtype {arr.dtype}; convert it with np.asarray(x, np.float32)"
            ) from None
        if arr.dtype.kind != "f":
            raise TypeError(f"x must be a real array, got dtype {np.asarray(x).dtype}; convert it to float32")
    if arr.ndim != 2:
        raise ValueError(
            f"x must be 2-D (w[K, N] or x[M, K]), got shape {arr.shape}; reshape it, e.g. "
            f"x.reshape(-1, x.shape[-1]), or quantize each expert's [K, N] slice"
        )
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), arr.shape))
            raise ValueError(
                f"x holds {float(arr[idx])!r} at index {idx} ({int((~finite).sum())} non-finite of {arr.size}); "
                f"a scale needs a finite amax; replace NaN/Inf first (e.g. np.nan_to_num)"
            )
    return arr


def _tile(scheme: Scheme, shape: tuple[int, int], axis: int) -> tuple[int, int]:
    """(elements per group along the reduction axis, along the other axis), validated."""
    k, other = shape[axis], shape[1 - axis]
    if scheme.granularity == "tensor":
        return k, other
    if scheme.granularity == "channel" or (scheme.granularity == "group" and scheme.group_size == -1):
        return k, 1
    if scheme.granularity == "group":
        g = int(scheme.group_size)
        if k % g:
            allowed = [d for d in (16, 32, 64, 128) if k % d == 0] + [-1]
            raise ValueError(
                f"group_size={g} must divide K={k} (allowed: {', '.join(map(str, allowed))}); "
                f"pick a divisor of K or pad K (x.shape[{axis}]) to a multiple of {g}"
            )
        return g, 1
    bk, bo = (int(b) for b in scheme.block)
    for size, dim, which in ((bk, k, "reduction axis"), (bo, other, "other axis")):
        if dim % size:
            raise ValueError(
                f"block={scheme.block} does not tile x.shape={tuple(shape)} along the {which} "
                f"(block size {size} must divide {dim}); pad the array to a multiple of {size}"
            )
    return bk, bo


def scale_shape(scheme: Scheme, shape: tuple[int, int], *, axis: int) -> tuple[int, int]:
    """Shape of the scales (and zeros) for an array of ``shape`` quantized along ``axis``."""
    scheme = _check_scheme(scheme)
    axis = _check_axis(axis)
    ga, go = _tile(scheme, tuple(shape), axis)
    n_red, n_oth = shape[axis] // ga, shape[1 - axis] // go
    return (n_red, n_oth) if axis == 0 else (n_oth, n_red)


def _view4(arr: np.ndarray, axis: int, ga: int, go: int) -> np.ndarray:
    """``arr`` [2-D] viewed as [groups, in-group, groups, in-group] in its own orientation, so that
    reducing axes (1, 3) gives the scale shape."""
    r, c = arr.shape
    if axis == 0:
        return arr.reshape(r // ga, ga, c // go, go)
    return arr.reshape(r // go, go, c // ga, ga)


def _b4(s: np.ndarray) -> np.ndarray:
    """Scale-shaped array broadcastable against a _view4 view."""
    return s[:, None, :, None]


# ---------------------------------------------------------------- scale rules


def _pow2_floor_exp(a: np.ndarray) -> np.ndarray:
    """floor(log2(a)) exactly for a > 0 (frexp: a = f * 2**e, 0.5 <= f < 1)."""
    _, e = np.frexp(a)
    return e.astype(np.int64) - 1


def _pow2_ceil_exp(a: np.ndarray) -> np.ndarray:
    """ceil(log2(a)) exactly for a > 0."""
    f, e = np.frexp(a)
    return np.where(f == 0.5, e - 1, e).astype(np.int64)


def _raw_scales(amax: np.ndarray, scheme: Scheme, qmax: float) -> np.ndarray:
    """float64 scales by the scheme's rule from the (floored) group amax."""
    if scheme.scale_rule == "amax":
        return amax / qmax
    positive = amax > 0
    safe = np.where(positive, amax, 1.0)
    if scheme.scale_rule == "pow2_ceil":
        e = _pow2_ceil_exp(safe / qmax)
    else:  # mx_floor: OCP MX v1.0 §6.3, emax_elem = floor(log2(qmax)); mx_even: of amax rounded first
        if scheme.scale_rule == "mx_even":  # at its second mantissa bit (float32 bits)
            bits = safe.astype(np.float32).view(np.uint32).astype(np.uint64)
            safe = ((bits + 0x200000) & 0xFF800000).astype(np.uint32).view(np.float32).astype(np.float64)
        e = _pow2_floor_exp(safe) - int(_pow2_floor_exp(np.array([qmax]))[0])
    e = np.where(positive, e, _POW2_EXP_MIN)
    return np.ldexp(1.0, np.clip(e, _POW2_EXP_MIN, _POW2_EXP_MAX).astype(np.int32))


def _encode_scales(raw: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, np.ndarray | None]:
    """(decoded float64 scales, uint8 scale codes or None) in the scheme's scale format."""
    if scheme.scale_format in FORMATS:
        fmt = FORMATS[scheme.scale_format]
        codes = fmt.encode(raw, saturate=True)
        return fmt.decode_table[codes], codes
    with np.errstate(over="ignore"):  # overflow is reported below
        stored = raw.astype(SCALE_FORMATS[scheme.scale_format])
    if not np.isfinite(stored).all():
        raise ValueError(
            f"a scale overflows {scheme.scale_format} (largest raw scale {float(raw.max())!r}); "
            f"scale the input down or use scale_format='float32'"
        )
    return stored.astype(np.float64), None


# ---------------------------------------------------------------- float element encoding


class _FloatEncoder:
    """RNE encoding of float32 / float64 arrays into a float format by table lookup.

    The RNE result (with saturation) depends only on the sign, the exponent, the mantissa bits
    down to one below the target's last kept bit, and whether any lower bit is set (sticky).
    So the table is indexed by the top 16 bits of the input's bit pattern plus a sticky bit, and
    each entry is what ``FORMATS[name].encode(..., saturate=True)`` gives for a representative of
    that class: the lookup equals encode() for every finite input by construction (a test checks
    it on random and tie inputs). float32 keeps 7 mantissa bits in its top 16 (enough for M <= 6),
    float64 keeps 4 (M <= 3); wider formats fall back to encode().
    """

    def __init__(self, fmt: FloatFormat):
        self.fmt = fmt
        self.tables: dict[str, np.ndarray | None] = {}

    # (uint dtype, bits below the top 16, mantissa bits kept in the top 16)
    _LAYOUT = {"float32": (np.uint32, 16, 7), "float64": (np.uint64, 48, 4)}

    def table(self, dtype: str) -> np.ndarray | None:
        if dtype not in self.tables:
            udt, low, kept = self._LAYOUT[dtype]
            if self.fmt.mantissa_bits + 1 > kept:
                self.tables[dtype] = None
            else:
                hi = np.arange(1 << 16, dtype=udt) << udt(low)
                reps = np.stack([hi, hi | udt(1)], axis=1).reshape(-1).view(np.dtype(dtype))
                reps = np.where(np.isnan(reps), 0.0, reps)  # NaN classes: never looked up
                self.tables[dtype] = self.fmt.encode(reps.astype(np.float64), saturate=True)
        return self.tables[dtype]

    def encode(self, y: np.ndarray) -> np.ndarray:
        table = self.table(y.dtype.name) if y.dtype.name in self._LAYOUT else None
        if table is None:
            return self.fmt.encode(y, saturate=True)
        udt, low, _ = self._LAYOUT[y.dtype.name]
        u = np.ascontiguousarray(y).view(udt)
        idx = u >> udt(low)
        idx <<= udt(1)
        idx |= (u & udt((1 << low) - 1)) != 0
        return table.take(idx)


@lru_cache(maxsize=None)
def _encoder(name: str) -> _FloatEncoder:
    return _FloatEncoder(FORMATS[name])


# ---------------------------------------------------------------- quantize / dequantize


def _amax4(x4: np.ndarray) -> np.ndarray:
    """max |x| over axes (1, 3) of a _view4 view."""
    hi = x4.max(axis=(1, 3))
    lo = x4.min(axis=(1, 3))
    return np.maximum(hi, -lo).astype(np.float64)


def quantize(x, scheme, *, axis: int) -> QTensor:
    """Quantize the 2-D array ``x`` along its reduction ``axis`` (0 for w[K, N], 1 for x[M, K]).

    Returns a QTensor with unpacked codes of ``x``'s shape, scales of shape ``scale_shape``.
    """
    scheme = _check_scheme(scheme)
    axis = _check_axis(axis)
    x = _check_x(x)
    ga, go = _tile(scheme, x.shape, axis)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x4 = _view4(x, axis, ga, go)
    fmt = scheme.format
    qmax = float(fmt.max)

    if scheme.zero_point == "asym":
        lo = np.minimum(x4.min(axis=(1, 3)).astype(np.float64), 0.0)
        hi = np.maximum(x4.max(axis=(1, 3)).astype(np.float64), 0.0)
        raw = np.maximum(hi - lo, scheme.amax_floor) / qmax
    else:
        amax = np.maximum(_amax4(x4), scheme.amax_floor)
        if isinstance(fmt, IntFormat) and not fmt.signed:  # implicit zero: [-amax, amax] -> 0..qmax
            raw = 2.0 * amax / qmax
        else:
            raw = None  # computed below (NVFP4 divides by its global scale first)

    global_scale = None
    if scheme.global_scale:
        tensor_amax = float(np.abs(x).max()) if x.size else 0.0
        global_scale = float(np.float32(tensor_amax / NVFP4_GLOBAL_DIVISOR)) if tensor_amax > 0 else 1.0
        amax = amax / global_scale
    if raw is None:
        raw = _raw_scales(amax, scheme, qmax)
    scales, scale_codes = _encode_scales(raw, scheme)
    eff = scales * global_scale if global_scale is not None else scales
    zero_scale = eff == 0
    any_zero_scale = bool(zero_scale.any())
    inv_den = np.where(zero_scale, 1.0, eff)

    zeros = None
    if isinstance(fmt, IntFormat):
        y = x4 / _b4(inv_den)
        if fmt.signed:
            codes = np.clip(np.rint(y), -qmax, qmax)
        else:
            if scheme.zero_point == "asym":
                zeros = np.clip(np.rint(-lo / inv_den), 0, qmax)
            else:
                zeros = np.full(scales.shape, float((int(qmax) + 1) // 2))
            codes = np.clip(np.rint(y) + _b4(zeros), 0, qmax)
        if any_zero_scale:
            codes = np.where(_b4(zero_scale), 0 if zeros is None else _b4(zeros), codes)
        codes = codes.astype(fmt.storage_dtype)
        zeros = None if zeros is None else zeros.astype(np.int32)
    else:
        pow2 = scheme.scale_rule != "amax" and global_scale is None
        if x.dtype == np.float32 and pow2:
            # exact: x * 2**-e is a float32 (overflow is impossible, underflow lands far below
            # the smallest subnormal of every element format, where it rounds to 0 anyway)
            y = x4 * _b4(np.ldexp(1.0, -_pow2_floor_exp(inv_den)).astype(np.float32))
        else:
            y = x4.astype(np.float64, copy=False) / _b4(inv_den)
        if any_zero_scale:
            y = np.where(_b4(zero_scale), y.dtype.type(0), y)
        codes = _encoder(scheme.elem).encode(np.ascontiguousarray(y))
    return QTensor(
        codes=codes.reshape(x.shape),
        scales=scales,
        scale_codes=scale_codes,
        zeros=zeros,
        global_scale=global_scale,
        scheme=scheme,
        axis=axis,
    )


def _check_qtensor(qt) -> QTensor:
    if not isinstance(qt, QTensor):
        raise TypeError(
            f"qt must be a QTensor, got {type(qt).__name__}; build it with quantize() or unpack_codes()"
        )
    scheme, axis = qt.scheme, qt.axis
    codes = np.asarray(qt.codes)
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise ValueError(
            f"qt.codes must be a 2-D integer array, got dtype {codes.dtype} shape {codes.shape}; "
            f"pass unpacked codes (oracle.packing.unpack)"
        )
    want = scale_shape(scheme, codes.shape, axis=axis)
    scales = np.asarray(qt.scales)
    if scales.shape != want:
        raise ValueError(
            f"qt.scales has shape {scales.shape}, expected {want} for codes {codes.shape} quantized "
            f"along axis={axis} ({scheme.granularity}); scales keep the rank with the reduced axis "
            f"replaced by its number of groups -- reshape or transpose them"
        )
    if scales.dtype.kind != "f" or not np.isfinite(scales).all():
        bad = scales if scales.dtype.kind != "f" else scales[~np.isfinite(scales)]
        raise ValueError(
            f"qt.scales must be finite floats, got dtype {scales.dtype} holding {bad.ravel()[:1]!r}; "
            f"a NaN/Inf scale means the scale was never set or decoded from a NaN code -- recompute it"
        )
    if qt.zeros is not None and np.asarray(qt.zeros).shape != want:
        raise ValueError(
            f"qt.zeros has shape {np.asarray(qt.zeros).shape}, expected {want} (the scales' shape); "
            f"reshape or transpose the zero points"
        )
    fmt = scheme.format
    if isinstance(fmt, IntFormat):
        lo, hi = fmt.min, fmt.max
    else:
        lo, hi = 0, fmt.num_codes - 1
    if codes.size:
        cmin, cmax = int(codes.min()), int(codes.max())
        if cmin < lo or cmax > hi:
            raise ValueError(
                f"qt.codes hold {cmin if cmin < lo else cmax} (min {cmin}, max {cmax}), out of range for "
                f"{scheme.elem} codes (allowed: {lo}..{hi}); unpack with the right signedness or "
                f"check the scheme's element format"
            )
    if not isinstance(fmt, IntFormat) or fmt.signed:
        if qt.zeros is not None:
            raise ValueError(
                f"qt.zeros is set but {scheme.elem} codes have no zero point; pass zeros=None"
            )
    elif qt.zeros is None:
        raise ValueError(
            f"qt.zeros is None but {scheme.elem} codes need zero points (implicit 2**(bits-1) when "
            f"symmetric); pass the zeros array"
        )
    if scheme.global_scale and qt.global_scale is None:
        raise ValueError(f"qt.global_scale is None but scheme {scheme} has a global scale; pass it")
    return qt


def dequantize(qt: QTensor) -> np.ndarray:
    """float64 values of a QTensor: ``(codes - zeros) * scales`` or ``decode(codes) * scales
    [* global_scale]``, broadcasting each scale over its group."""
    qt = _check_qtensor(qt)
    scheme, axis = qt.scheme, qt.axis
    codes = np.asarray(qt.codes)
    ga, go = _tile(scheme, codes.shape, axis)
    c4 = _view4(codes, axis, ga, go)
    scales = np.asarray(qt.scales, dtype=np.float64)
    if qt.global_scale is not None:
        scales = scales * qt.global_scale
    fmt = scheme.format
    if isinstance(fmt, IntFormat):
        if qt.zeros is None:
            vals = c4
        else:  # int16 keeps code - zero exact for 8-bit codes
            vals = c4.astype(np.int16) - _b4(np.asarray(qt.zeros).astype(np.int16))
        out = np.multiply(vals, _b4(scales), dtype=np.float64)
    else:
        out = fmt.decode_table.take(c4) * _b4(scales)
    return out.reshape(codes.shape)


# ---------------------------------------------------------------- storage


def _oriented(p: Packing, axis: int) -> Packing:
    """A scheme's packing (written for [K, N]) for a tensor quantized along ``axis``."""
    return p if axis == 0 else dataclasses.replace(p, axis=1 - (p.axis % 2))


def pack_codes(qt: QTensor) -> Stored:
    """The stored form of ``qt``: packed codes, scales in their storage dtype, packed zero
    points with the checkpoint's offset convention (GPTQ: ``zeros - 1`` mod 2**bits)."""
    qt = _check_qtensor(qt)
    scheme = qt.scheme
    codes = np.asarray(qt.codes)
    fmt = scheme.format
    if scheme.packing is not None:
        qweight = pack(codes, _oriented(scheme.packing, qt.axis))
    else:
        qweight = codes.copy()
    if qt.scale_codes is not None:
        scales = np.asarray(qt.scale_codes, dtype=np.uint8).copy()
    else:
        scales = np.asarray(qt.scales).astype(SCALE_FORMATS[scheme.scale_format])
    qzeros = None
    if qt.zeros is not None:
        z = np.asarray(qt.zeros).astype(np.int64)
        if scheme.zeros_minus_one:
            z = (z - 1) % (1 << fmt.bits)
        qzeros = pack(z, _oriented(scheme.zeros_packing, qt.axis)) if scheme.zeros_packing else z.astype(fmt.storage_dtype)
    gs = None if qt.global_scale is None else np.float32(qt.global_scale)
    return Stored(qweight=qweight, scales=scales, qzeros=qzeros, global_scale=gs, shape=tuple(codes.shape))


def unpack_codes(stored: Stored, scheme, *, axis: int) -> QTensor:
    """Inverse of :func:`pack_codes`: the QTensor a stored form holds (GPTQ ``zeros - 1`` undone)."""
    scheme = _check_scheme(scheme)
    axis = _check_axis(axis)
    if not isinstance(stored, Stored):
        raise TypeError(f"stored must be a Stored, got {type(stored).__name__}; build it with pack_codes()")
    fmt = scheme.format
    signed = isinstance(fmt, IntFormat) and fmt.signed
    if scheme.packing is not None:
        codes = unpack(stored.qweight, _oriented(scheme.packing, axis), signed=signed)
    else:
        codes = np.asarray(stored.qweight)
    if tuple(codes.shape) != tuple(stored.shape):
        raise ValueError(
            f"stored.qweight unpacks to shape {tuple(codes.shape)}, but stored.shape={stored.shape}; "
            f"the packing or axis={axis} does not match how it was stored"
        )
    if scheme.scale_format in FORMATS:
        scale_codes = np.asarray(stored.scales)
        if scale_codes.dtype != np.uint8:
            raise ValueError(
                f"stored.scales.dtype={scale_codes.dtype}, but {scheme.scale_format} scales are stored "
                f"as uint8 codes; pass the codes (e.g. torch_tensor.view(torch.uint8))"
            )
        scales = FORMATS[scheme.scale_format].decode_table[scale_codes]
    else:
        scale_codes, scales = None, np.asarray(stored.scales).astype(np.float64)
    zeros = None
    if stored.qzeros is not None:
        if scheme.zeros_packing is not None:
            z = unpack(stored.qzeros, _oriented(scheme.zeros_packing, axis), signed=False)
        else:
            z = np.asarray(stored.qzeros)
        z = z.astype(np.int32)
        if scheme.zeros_minus_one:
            z = (z + 1) % (1 << fmt.bits)
        zeros = z
    gs = None if stored.global_scale is None else float(stored.global_scale)
    return QTensor(codes=codes, scales=scales, scale_codes=scale_codes, zeros=zeros, global_scale=gs,
                   scheme=scheme, axis=axis)


# ---------------------------------------------------------------- named schemes


_FP8_FORMATS = {
    "e4m3fn": "float8_e4m3fn", "e4m3": "float8_e4m3fn", "e4m3fnuz": "float8_e4m3fnuz",
    "e5m2": "float8_e5m2", "e5m2fnuz": "float8_e5m2fnuz",
}
_MX_FORMATS = {"e2m1": "float4_e2m1fn", "e2m3": "float6_e2m3fn", "e3m2": "float6_e3m2fn", **_FP8_FORMATS}
# family token -> (element format, the subformats it accepts, base fields)
_FAMILIES: dict[str, tuple[str, dict[str, str], dict]] = {
    "int4": ("int4", {}, {}),
    "int8": ("int8", {}, {}),
    "uint4": ("uint4", {}, {}),
    "uint8": ("uint8", {}, {}),
    "fp8": ("float8_e4m3fn", _FP8_FORMATS, {}),
    "mxfp4": ("float4_e2m1fn", {"e2m1": "float4_e2m1fn"},
              dict(granularity="group", group_size=32, scale_format="float8_e8m0fnu", scale_rule="mx_floor",
                   amax_floor=0.0, packing=NIBBLES_K_WEIGHT)),
    "mxfp6": ("float6_e2m3fn", {"e2m3": "float6_e2m3fn", "e3m2": "float6_e3m2fn"},
              dict(granularity="group", group_size=32, scale_format="float8_e8m0fnu", scale_rule="mx_floor",
                   amax_floor=0.0)),
    "mxfp8": ("float8_e4m3fn", {k: v for k, v in _FP8_FORMATS.items() if "fnuz" not in k},
              dict(granularity="group", group_size=32, scale_format="float8_e8m0fnu", scale_rule="mx_floor",
                   amax_floor=0.0)),
    "nvfp4": ("float4_e2m1fn", {"e2m1": "float4_e2m1fn"},
              dict(granularity="group", group_size=16, scale_format="float8_e4m3fn", scale_rule="amax",
                   global_scale=True, amax_floor=0.0, packing=NIBBLES_K_WEIGHT)),
}
# checkpoint conventions: (element for int4, fields)
_CHECKPOINTS = {
    "gptq": dict(elem="uint4", scale_format="float16", packing=GPTQ_QWEIGHT, zeros_packing=GPTQ_QZEROS,
                 zeros_minus_one=True),
    "awq": dict(elem="uint4", scale_format="float16", packing=AWQ_QWEIGHT, zeros_packing=AWQ_QZEROS,
                zero_point="asym"),
}
_WORD_TOKENS = {
    "per-tensor": dict(granularity="tensor"),
    "per-channel": dict(granularity="channel"),
    "per-token": dict(granularity="channel"),
    "asym": dict(zero_point="asym"),
    "sym": dict(zero_point=None),
    "rceil": dict(scale_rule="pow2_ceil"),
    "floor": dict(scale_rule="mx_floor"),
    "even": dict(scale_rule="mx_even"),
    "ue8m0": dict(scale_rule="pow2_ceil", scale_format="float8_e8m0fnu"),
    "pow2": dict(scale_rule="pow2_ceil"),
    "fp16-scales": dict(scale_format="float16"),
    "fp32-scales": dict(scale_format="float32"),
}
_PATTERN_TOKENS = {
    r"g(\d+)": "g<N> (group size along K)",
    r"block(\d+)(?:x(\d+))?": "block<N> or block<N>x<M> (2-D blocks)",
    r"per-token-group": "per-token-group <N>",
}


def _allowed_tokens() -> str:
    words = list(_CHECKPOINTS) + list(_FAMILIES) + sorted({k for _, sub, _ in _FAMILIES.values() for k in sub})
    return ", ".join(words + list(_WORD_TOKENS) + list(_PATTERN_TOKENS.values()))


def get_scheme(name: str) -> Scheme:
    """Parse a scheme name made of tokens, e.g. ``"gptq int4 g128 asym"``, ``"fp8 block128"``,
    ``"fp8 per-token-group 128"``, ``"mxfp4 rceil"``, ``"nvfp4"``. Case and ``_``/``-`` are
    ignored. Unknown tokens raise ValueError listing the allowed ones."""
    if not isinstance(name, str):
        raise TypeError(f"name={name!r} must be a str, got {type(name).__name__}; pass e.g. 'gptq int4 g128'")
    tokens = name.lower().replace("_", "-").split()
    if not tokens:
        raise ValueError(f"name={name!r} is empty (allowed tokens: {_allowed_tokens()}); pass e.g. 'int8 per-token'")
    fields: dict = {}
    # the family (and checkpoint convention) first, so the other tokens may come in any order
    checkpoint = next((t for t in tokens if t in _CHECKPOINTS), None)
    family = next((t for t in tokens if t in _FAMILIES), None)
    seen = {checkpoint, family}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in seen:
            seen.discard(tok)
        elif family is not None and tok in _FAMILIES[family][1]:
            fields["elem"] = _FAMILIES[family][1][tok]
        elif tok in _WORD_TOKENS:
            fields.update(_WORD_TOKENS[tok])
        elif m := re.fullmatch(r"g(\d+)", tok):
            fields.update(granularity="group", group_size=int(m.group(1)))
        elif m := re.fullmatch(r"block(\d+)(?:x(\d+))?", tok):
            fields.update(granularity="block", block=(int(m.group(1)), int(m.group(2) or m.group(1))))
        elif tok == "per-token-group":
            if i + 1 >= len(tokens) or not tokens[i + 1].isdigit():
                raise ValueError(
                    f"'per-token-group' in name={name!r} needs a group size after it (allowed: a "
                    f"positive int); write e.g. 'fp8 per-token-group 128'"
                )
            fields.update(granularity="group", group_size=int(tokens[i + 1]))
            i += 1
        else:
            raise ValueError(
                f"unknown token {tok!r} in scheme name {name!r} (allowed tokens: {_allowed_tokens()}); "
                f"write e.g. 'gptq int4 g128 asym' or 'fp8 per-token-group 128'"
            )
        i += 1
    if family is None:
        raise ValueError(
            f"scheme name {name!r} names no element family (allowed: {', '.join(_FAMILIES)}); "
            f"start it with one, e.g. 'int4 g128'"
        )
    elem, _, base = _FAMILIES[family]
    spec = {"elem": elem, **base}
    if checkpoint is not None:
        if family != "int4":
            raise ValueError(
                f"{checkpoint!r} checkpoints hold int4 weights, got family {family!r} in {name!r} "
                f"(allowed: 'int4'); write e.g. '{checkpoint} int4 g128'"
            )
        spec.update(_CHECKPOINTS[checkpoint])
    spec.update(fields)
    if spec.get("zero_point") != "asym" and checkpoint == "awq":
        raise ValueError(f"AWQ checkpoints are asymmetric, got 'sym' in {name!r}; drop 'sym'")
    if spec.get("zero_point") == "asym" and checkpoint is None and family in ("int4", "int8"):
        spec["elem"] = "u" + family  # asymmetric codes are unsigned: 'int4 g128 asym' is uint4
    spec.setdefault("granularity", "tensor" if family == "fp8" else "group")
    canonical = " ".join(tokens)
    return Scheme(name=canonical, **spec)


SCHEME_NAMES = (
    "gptq int4 g128 asym",
    "gptq int4 g128",
    "awq int4 g128",
    "int4 g32",
    "int8 per-channel",
    "int8 per-token",
    "fp8 e4m3fn per-tensor",
    "fp8 e4m3fnuz per-channel",
    "fp8 block128",
    "fp8 per-token-group 128",
    "mxfp4",
    "mxfp4 rceil",
    "mxfp6 e2m3",
    "mxfp8 e4m3",
    "nvfp4",
)
SCHEMES: dict[str, Scheme] = {n: get_scheme(n) for n in SCHEME_NAMES}
