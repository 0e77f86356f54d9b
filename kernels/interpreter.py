"""Correct bf16 and fp8 numerics in Triton's CPU interpreter (``TRITON_INTERPRET=1``).

Triton's interpreter holds bf16 tensors as raw ``uint16`` bits and fp8 tensors as raw ``uint8``
codes, and several of its numpy-level operations treat those bits as integers: bf16 ``a * b``
multiplies bit patterns, bf16 ``tl.dot`` is an integer matmul, float32 -> bf16 ``.to()``
truncates, float32 -> fp8 ``.to()`` does not round to nearest even nor saturate
(``kernels.probes`` shows each). This module replaces those operations, and only those, with
versions that decode the bits exactly (ml_dtypes), compute in float32 and round back the way
compiled Triton does on a GPU.

Use: ``kernels.device.activate("cpu")`` calls :func:`install`; anyone running Triton kernels
under the interpreter can call it too (``from qkcheck.kernels.interpreter import install``).

What is hooked (class attributes of ``triton.runtime.interpreter``; the originals are kept and
every operation on other dtypes goes to them unchanged):

- ``InterpreterBuilder.cast_impl`` (``.to()`` through fp_trunc / fp_ext / si_to_fp / ...) and
  ``create_fp_to_fp`` (conversions from and to fp8, bf16 <-> fp16): decoded exactly, encoded by
  the rules below. Only round-to-nearest-even conversions are corrected; an explicit
  ``fp_downcast_rounding="rtz"`` keeps the interpreter's own conversion.
- ``binary_op`` / ``ternary_op`` / ``unary_op`` / ``create_fma`` / ``create_erf`` /
  ``create_rsqrt`` (every elementwise float op is routed through these by one-line builder
  methods, which are fingerprinted too): bf16 and fp8 operands are computed in float32 and the
  result rounded once to the operand dtype (comparisons return their booleans).
- ``create_dot``: bf16 and fp8 operands are decoded exactly to float32 and multiplied with
  float32 accumulation (products of bf16 or fp8 values are exact in float32; the summation order
  is numpy's, as it already is for fp16 dots).
- ``ReduceOps.sum`` / ``ReduceOps.min_max`` / ``ScanOps.cumsum`` / ``ScanOps.cumprod`` on bf16
  and fp8: sums are a pairwise tree and scans sequential, each partial result rounded to the
  dtype as compiled bf16 adds round it; min / max are exact.

Conversions, matching compiled Triton on NVIDIA sm_90 (H100 / H200):

- float32 -> bfloat16: RNE, overflow to ±inf, like ``cvt.rn.bf16.f32`` (the
  ``llvm.nvvm.f2bf16.rn`` intrinsic Triton's NVIDIA backend emits).
- float32 -> float16: RNE, overflow to ±inf, like ``cvt.rn.f16.f32`` (numpy's cast, unchanged
  apart from NaN).
- float32 / float16 / bfloat16 -> float8_e4m3fn / float8_e5m2: RNE with ``satfinite``: a finite
  value whose rounding exceeds the format's max, and ±inf, give ±max (±448 / ±57344); NaN gives
  0x7F. Triton emits ``cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32`` (``.f16x2`` from fp16; bf16 goes
  through f32), third_party/nvidia/lib/TritonNVIDIAGPUToLLVM/ElementwiseOpToLLVM.cpp; CUDA's
  ``cuda_fp8.hpp`` (``__nv_cvt_double_to_fp8`` with ``__NV_SATFINITE``, the software twin of that
  instruction) spells the rules out: overflow beyond max + ulp/2 -> MAXNORM, NaN -> 0x7F for
  both formats (the float input is first made the canonical NaN 0x7FFFFFFF, so the sign goes).
  On sm_89 Triton rounds float32 -> fp16 toward zero before the fp8 conversion, so a value just
  above an fp8 tie can round differently there; this module matches sm_90+.
- float32 / float16 / bfloat16 -> float8_e4m3fnuz / float8_e5m2fnuz (AMD CDNA3's formats; NVIDIA
  has no fnuz types): RNE, finite overflow saturates to ±max (±240 / ±57344), ±inf and NaN give
  the single NaN 0x80, and -0 (or a negative value rounding to zero) gives +0. This is the rule
  of Triton's AMD software conversion (``downcastToFp8rtneOneValue`` in
  third_party/amd/lib/TritonAMDGPUToLLVM/ConvertFpCastOpToLLVM.cpp: "For Fp8 UZ types,
  conversion with saturation converts infinity to NaN") and of ONNX's Cast with saturate=True.
  gfx942 itself converts with a hardware instruction; that it saturates the same way is not
  checked here (no MI300 host).
- NaN produced by a correction is the canonical one: 0x7FFF for bf16 and fp16 (what NVIDIA's
  ``cvt`` gives), 0x7F (OCP fp8) or 0x80 (fnuz). Widening conversions are exact (fp8 and bf16
  values are all representable in float32; fp8 values in fp16 and bf16 too).

Where compiled Triton and this interpreter still differ (by design, not defects):

- Each bf16 operation is rounded to bf16, as Triton's IR says. Compiled code may contract
  ``a * b + c`` into one fused multiply-add (``enable_fp_fusion``, on by default), which rounds
  once; the interpreter never fuses (the same holds for float32 without this module).
- Summation order of ``tl.dot`` and ``tl.sum`` differs from the GPU's.
- Transcendental functions (exp, log, ...) on bf16 are numpy's float32 functions, rounded.

One NumPy compatibility fix, not numerics: a scalar tensor used as a Python int (``range(begin,
end)`` with tensor bounds, an index) goes through ``tensor.__index__``, which Triton 3.6's
interpreter implements as ``int(handle.data)`` on a one-element array of shape (1,). NumPy 2.5
refuses that conversion (``TypeError: only 0-dimensional arrays can be converted to Python
scalars``; NumPy 1.25-2.4 warn), so every kernel with tensor loop bounds raised there. Triton 3.9
squeezes the array first; ``_patch_lang_tensor`` (which installs those tensor methods at each
launch) is hooked so that 3.6 does the same. The probe ``tensor_index`` (``kernels.probes``)
shows the defect and the fix.

Version awareness: the module names the Triton interpreter series it was written against
(:data:`KNOWN_INTERNALS`) with a fingerprint of the source of every internal it hooks or relies
on. :func:`install` patches only when the running Triton's series is known *and* its internals
hash to that fingerprint; otherwise it changes nothing and :func:`status` carries the one-line
reason, which ``kernels.probes`` adds to the skip reasons (the old skips stay in force).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import threading
from dataclasses import dataclass

import numpy as np

from qkcheck.oracle.formats import FORMATS, Specials

__all__ = ["KNOWN_INTERNALS", "Status", "install", "uninstall", "status", "bypassed", "fingerprint",
           "FP8_FORMATS", "to_bfloat16_bits", "to_float16", "to_fp8_codes"]

# Triton interpreter series -> fingerprint of the internals this module hooks or relies on
# (see fingerprint(); recompute it when adding a series, after reading the diff of those internals)
KNOWN_INTERNALS = {
    "3.6": "7a056d11c7497ee4",
    "3.9": "83ab9d9f98cc3531",
}

# internals replaced by install(): "Owner.attribute" in triton.runtime.interpreter
_HOOKED = (
    "InterpreterBuilder.cast_impl",
    "InterpreterBuilder.create_fp_to_fp",
    "InterpreterBuilder.binary_op",
    "InterpreterBuilder.ternary_op",
    "InterpreterBuilder.unary_op",
    "InterpreterBuilder.create_fma",
    "InterpreterBuilder.create_erf",
    "InterpreterBuilder.create_rsqrt",
    "InterpreterBuilder.create_dot",
    "ReduceOps.sum",
    "ReduceOps.min_max",
    "ScanOps.cumsum",
    "ScanOps.cumprod",
    "_patch_lang_tensor",
)
# internals not replaced but relied on: the storage of bf16 / fp8 as raw bits, the one-line
# builder methods that route every float op and cast into the hooked ones, the reduction dispatch
_ROUTED = (
    "_get_np_dtype",
    "TensorHandle",
    "ReduceScanOpInterface.to_tensor",
    "ReduceOps.apply_impl",
    "ScanOps.apply_impl",
    "_LangPatchScope.set_attr",
    "InterpreterBuilder.get_bf16",
    "InterpreterBuilder.create_clampf",
    *(f"InterpreterBuilder.create_{op}" for op in (
        "fp_trunc", "fp_ext", "si_to_fp", "ui_to_fp", "fp_to_si", "fp_to_ui",
        "fadd", "fsub", "fmul", "fdiv", "frem", "fneg", "precise_divf", "approx_divf",
        "minimumf", "minnumf", "maximumf", "maxnumf",
        "fcmpOLT", "fcmpOGT", "fcmpOLE", "fcmpOGE", "fcmpOEQ", "fcmpONE",
        "fcmpULT", "fcmpUGT", "fcmpULE", "fcmpUGE", "fcmpUEQ", "fcmpUNE",
        "exp", "exp2", "log", "log2", "cos", "sin", "sqrt", "precise_sqrt", "floor", "ceil")),
)

@functools.cache
def _ml_dtypes():
    """ml_dtypes, imported on the first conversion that needs it (its import takes about a second,
    which a process that never meets a bf16 or fp8 value should not pay)."""
    import ml_dtypes

    return ml_dtypes


# NVIDIA's canonical 16-bit NaN (sign clear, exponent and mantissa all ones), bf16 and fp16 alike
_CANONICAL_NAN_16 = 0x7FFF


# ------------------------------------------------------------------------------------ formats
@dataclass(frozen=True)
class Fp8Format:
    """A Triton fp8 dtype this module corrects. triton: the ``tl.dtype`` name (``fp8e4nv``);
    name: the torch / ml_dtypes / ``oracle.formats.FORMATS`` name of the same format."""

    triton: str
    name: str

    @property
    def ml_dtype(self) -> np.dtype:
        return np.dtype(getattr(_ml_dtypes(), self.name))

    @property
    def max(self) -> float:
        return FORMATS[self.name].max

    @property
    def nan_code(self) -> int:
        """The NaN a conversion gives: fnuz's only NaN 0x80; for the OCP formats the positive
        all-ones magnitude 0x7F (NaN in e4m3fn and in e5m2 alike), as ``cvt.rn.satfinite`` does."""
        fmt = FORMATS[self.name]
        return fmt.nan_code if fmt.specials is Specials.FNUZ else (1 << (fmt.bits - 1)) - 1

    @property
    def inf_is_nan(self) -> bool:
        """±inf converts to NaN (fnuz: AMD / ONNX saturation) rather than to ±max (satfinite)."""
        return FORMATS[self.name].specials is Specials.FNUZ


FP8_FORMATS = (
    Fp8Format("fp8e4nv", "float8_e4m3fn"),
    Fp8Format("fp8e5", "float8_e5m2"),
    Fp8Format("fp8e4b8", "float8_e4m3fnuz"),
    Fp8Format("fp8e5b16", "float8_e5m2fnuz"),
)
_FP8_BY_TRITON = {f.triton: f for f in FP8_FORMATS}


# ----------------------------------------------------------------------------- conversions
def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """uint16 bits of RNE(x) in bfloat16 (x: float32 or float64 array). Overflow gives ±inf;
    NaN gives 0x7FFF. float64 input rounds correctly too: going through float32 (24 bits) on the
    way to 8 bits is innocuous double rounding (24 >= 2 * 8 + 2)."""
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        bits = x.astype(_ml_dtypes().bfloat16).view(np.uint16)
    return np.where(np.isnan(x), np.uint16(_CANONICAL_NAN_16), bits).astype(np.uint16)


def _bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bits (exact: bf16 is the top half of float32)."""
    return (np.asarray(bits).astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_float16(x: np.ndarray) -> np.ndarray:
    """RNE(x) in float16 (numpy rounds correctly from float32 and float64); NaN gives 0x7FFF."""
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        out = x.astype(np.float16)
    nan = np.isnan(x)
    if nan.any():
        out = out.view(np.uint16)
        out = np.where(nan, np.uint16(_CANONICAL_NAN_16), out).astype(np.uint16).view(np.float16)
    return out


def to_fp8_codes(x: np.ndarray, fmt: Fp8Format) -> np.ndarray:
    """uint8 codes of x (float array) in ``fmt``, rounded as compiled Triton rounds (module
    docstring): RNE; a finite value beyond ±max saturates to ±max; ±inf gives ±max (OCP) or NaN
    (fnuz); NaN gives ``fmt.nan_code``. Clamping before rounding is the same as saturating after
    it: every value beyond max rounds to max or overflows, and both give max."""
    x = np.asarray(x)
    nan = np.isnan(x)
    with np.errstate(all="ignore"):
        clamped = np.clip(x, -fmt.max, fmt.max)
        codes = clamped.astype(fmt.ml_dtype).view(np.uint8)
    special = nan | (np.isinf(x) if fmt.inf_is_nan else False)
    return np.where(special, np.uint8(fmt.nan_code), codes).astype(np.uint8)


def _fp8_values(codes: np.ndarray, fmt: Fp8Format) -> np.ndarray:
    """float32 values of fp8 codes (exact; NaN codes give NaN, e5m2's inf codes ±inf)."""
    return np.asarray(codes).astype(np.uint8).view(fmt.ml_dtype).astype(np.float32)


def _narrow(dtype) -> str | None:
    """'bf16' or the fp8 triton name when ``dtype`` (a tl.dtype) is stored as raw bits that this
    module decodes, else None."""
    name = getattr(dtype, "name", None)
    return name if name == "bf16" or name in _FP8_BY_TRITON else None


_STORAGE = {"bf16": np.uint16, **{name: np.uint8 for name in _FP8_BY_TRITON}}


def _narrow_handle(handle) -> str | None:
    """The narrow dtype name of a TensorHandle holding raw bits of it, else None (a handle labelled
    bf16 whose data is not uint16, e.g. the booleans of a comparison, is not)."""
    name = _narrow(handle.dtype.scalar)
    return name if name is not None and handle.data.dtype == _STORAGE[name] else None


def _decode(data: np.ndarray, name: str) -> np.ndarray:
    """float32 values of the raw bits of a narrow dtype ``name``."""
    return _bfloat16_values(data) if name == "bf16" else _fp8_values(data, _FP8_BY_TRITON[name])


def _encode(values: np.ndarray, name: str) -> np.ndarray:
    """Raw bits of ``values`` rounded to the narrow dtype ``name``."""
    return to_bfloat16_bits(values) if name == "bf16" else to_fp8_codes(values, _FP8_BY_TRITON[name])


# ----------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class Status:
    """installed: the correction is active in this process; triton: the running Triton's
    version ('' when Triton is not importable); reason: why it is not installed (one line)."""

    installed: bool
    triton: str
    reason: str | None = None


_LOCK = threading.RLock()
_bypass = threading.local()
_originals: dict[str, object] = {}
_status = Status(False, "", "install() has not run in this process")


def status() -> Status:
    """Whether the correction is active here, and if not, why."""
    return _status


@contextlib.contextmanager
def bypassed():
    """Run the raw interpreter in this thread for the duration (the probes' first column)."""
    previous = getattr(_bypass, "active", False)
    _bypass.active = True
    try:
        yield
    finally:
        _bypass.active = previous


def _active() -> bool:
    return not getattr(_bypass, "active", False)


def _resolve(module, dotted: str):
    """(owner, attribute, value) of ``Owner.attr`` / ``function`` in the interpreter module;
    value is None when it does not exist there."""
    owner_name, _, attr = dotted.rpartition(".")
    owner = getattr(module, owner_name, None) if owner_name else module
    if owner is None:
        return None, attr, None
    value = owner.__dict__.get(attr) if inspect.isclass(owner) else getattr(owner, attr, None)
    return owner, attr, value


def fingerprint(module=None) -> str:
    """16 hex digits of sha256 over the source of every internal hooked or relied on (absent ones
    count as absent), taken from ``module`` (default: the installed triton.runtime.interpreter).
    install() compares it with :data:`KNOWN_INTERNALS`."""
    if module is None:
        import triton.runtime.interpreter as module
    digest = hashlib.sha256()
    for dotted in sorted(_HOOKED + _ROUTED):
        value = _resolve(module, dotted)[2]
        if value is not None and dotted in _originals:
            value = _originals[dotted]  # installed: hash what the correction replaced
        try:
            source = inspect.getsource(value) if value is not None else "<absent>"
        except (OSError, TypeError):
            source = f"<no source: {type(value).__name__}>"
        digest.update(f"{dotted}\0{inspect.cleandoc(source)}\0".encode())
    return digest.hexdigest()[:16]


def install() -> Status:
    """Apply the correction to Triton's interpreter (idempotent). Returns :func:`status`: not
    installed, with the reason, when Triton is missing, its series is not one of
    :data:`KNOWN_INTERNALS`, or its internals do not match that series' fingerprint."""
    global _status
    with _LOCK:
        if _status.installed:
            return _status
        try:
            import triton
            import triton.runtime.interpreter as interp
        except Exception as exc:  # no Triton (or a broken one): nothing to correct
            _status = Status(False, "", f"Triton's interpreter is not importable ({type(exc).__name__}: {exc})")
            return _status
        version = triton.__version__
        series = ".".join(version.split(".")[:2])
        known = " and ".join(KNOWN_INTERNALS)
        if series not in KNOWN_INTERNALS:
            _status = Status(False, version, f"qkcheck's interpreter correction knows the Triton {known} "
                                             f"interpreters, not Triton {version}")
            return _status
        found = fingerprint(interp)
        if found != KNOWN_INTERNALS[series]:
            _status = Status(False, version, f"the Triton {version} interpreter internals qkcheck's correction "
                                             f"hooks differ from the Triton {series} ones it was written for "
                                             f"(fingerprint {found}, expected {KNOWN_INTERNALS[series]})")
            return _status
        for dotted in _HOOKED:
            owner, attr, original = _resolve(interp, dotted)
            if original is None:  # not in this series (the fingerprint says so): nothing to correct
                continue
            _originals[dotted] = original
            setattr(owner, attr, _WRAPPERS[attr](original, interp))
        _status = Status(True, version)
        return _status


def uninstall() -> None:
    """Restore the interpreter's own operations (tests; a fallback)."""
    global _status
    with _LOCK:
        if not _originals:
            return
        import triton.runtime.interpreter as interp

        for dotted, original in _originals.items():
            owner, attr, _ = _resolve(interp, dotted)
            setattr(owner, attr, original)
        _originals.clear()
        _status = Status(False, _status.triton, "uninstall() removed the correction")


# -------------------------------------------------------------------------------- wrappers
def _float32_handle(interp, handle):
    """(float32 TensorHandle, narrow name) for a bf16 / fp8 handle, else (handle, None)."""
    if not isinstance(handle, interp.TensorHandle):
        return handle, None
    name = _narrow_handle(handle)
    if name is None:
        return handle, None
    return interp.TensorHandle(_decode(handle.data, name), interp.tl.float32), name


def _via_float32(method, interp):
    """A builder method that decodes bf16 / fp8 handle arguments to float32, runs ``method`` and
    rounds a float result back to the first such argument's dtype (the dtype the interpreter
    labels the result with). Boolean results (comparisons) are returned as they are."""

    @functools.wraps(method)
    def wrapper(self, *args):
        if not _active():
            return method(self, *args)
        converted, narrow, label = [], None, None
        for arg in args:
            new, name = _float32_handle(interp, arg)
            if name is not None and narrow is None:
                narrow, label = name, arg.dtype.scalar
            converted.append(new)
        if narrow is None:
            return method(self, *args)
        with np.errstate(all="ignore"):
            result = method(self, *converted)
        if result.data.dtype == np.bool_:  # a comparison: booleans, labelled as what they are
            return interp.TensorHandle(result.data, interp.tl.int1)
        return interp.TensorHandle(_encode(result.data, narrow), label)

    return wrapper


def _unary_op(method, interp):
    via = _via_float32(method, interp)

    @functools.wraps(method)
    def unary_op(self, arg, op):
        if _active() and op is np.negative and _narrow_handle(arg):
            # negation flips the sign bit, NaN included (neg.bf16 does; rounding would not)
            sign = np.array(1 << (arg.data.dtype.itemsize * 8 - 1), dtype=arg.data.dtype)
            return interp.TensorHandle(arg.data ^ sign, arg.dtype.scalar)
        return via(self, arg, op)

    return unary_op


def _ternary_op(method, interp):
    via = _via_float32(method, interp)

    @functools.wraps(method)
    def ternary_op(self, lhs, rhs, other, op):
        if op is np.where:  # select moves bits; nothing to round
            return method(self, lhs, rhs, other, op)
        return via(self, lhs, rhs, other, op)

    return ternary_op


def _create_dot(method, interp):
    @functools.wraps(method)
    def create_dot(self, a, b, d, *rest):
        if not _active():
            return method(self, a, b, d, *rest)
        (a32, a_name), (b32, b_name), (d32, d_name) = (_float32_handle(interp, h) for h in (a, b, d))
        if a_name is None and b_name is None and d_name is None:
            return method(self, a, b, d, *rest)
        with np.errstate(all="ignore"):
            result = method(self, a32, b32, d32, *rest)
        # the accumulator's dtype is the result's: products of bf16 / fp8 values are exact in
        # float32, so a float32 accumulator sees them unrounded
        data = result.data if d_name is None else _encode(result.data, d_name)
        return interp.TensorHandle(data, d.dtype.scalar)

    return create_dot


def _convert(interp, src, dst_type):
    """The converted handle when ``src -> dst_type`` is a conversion this module corrects
    (a narrow dtype on either side, or a float -> fp16 narrowing), else None."""
    dst_ty = dst_type.scalar
    src_narrow, dst_narrow = _narrow_handle(src), _narrow(dst_ty)
    src_float = src.data.dtype.kind == "f"  # the data, not the label: comparisons label booleans oddly
    to_half = dst_ty.name == "fp16" and src_float and src.data.dtype.itemsize > 2
    if src_narrow is None and dst_narrow is None and not to_half:
        return None
    if src_narrow is not None:
        values = _decode(src.data, src_narrow)
    elif src_float:  # float16 widened exactly: ml_dtypes casts from float32 / float64
        values = src.data if src.data.dtype.itemsize >= 4 else src.data.astype(np.float32)
    else:  # integers: exact in float64 up to 2**53, and RNE from there is innocuous for <= 24 bits
        values = src.data.astype(np.float64)
    if dst_narrow is not None:
        data = _encode(values, dst_narrow)
    elif dst_ty.name == "fp16":
        data = to_float16(values)
    else:  # a narrow source widened (or to an integer): numpy's cast of the exact float32 value
        with np.errstate(all="ignore"):
            data = values.astype(interp._get_np_dtype(dst_ty))
    return interp.TensorHandle(data, dst_ty)


def _cast_impl(method, interp):
    @functools.wraps(method)
    def cast_impl(self, src, dst_type):
        converted = _convert(interp, src, dst_type) if _active() else None
        return method(self, src, dst_type) if converted is None else converted

    return cast_impl


def _create_fp_to_fp(method, interp):
    rtne = (None, interp._ir.ROUNDING_MODE.RTNE)

    @functools.wraps(method)
    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        converted = _convert(interp, src, dst_type) if _active() and rounding_mode in rtne else None
        return method(self, src, dst_type, rounding_mode) if converted is None else converted

    return create_fp_to_fp


def _as_float32_tensor(interp, tensor, name):
    tl = interp.tl
    values = _decode(tensor.handle.data, name)
    ty = tl.block_type(tl.float32, list(tensor.type.shape)) if tensor.type.is_block() else tl.float32
    return tl.core.tensor(interp.TensorHandle(values, tl.float32), ty)


def _rounded_reduction(values: np.ndarray, axis, keep_dims: bool, name: str) -> np.ndarray:
    """Pairwise tree sum of float32 ``values`` along ``axis`` (None: all), each partial sum
    rounded to the narrow dtype ``name``; returns raw bits."""
    work = values.reshape(-1) if axis is None else np.moveaxis(values, axis, 0)
    while work.shape[0] > 1:
        half = work.shape[0] // 2
        with np.errstate(all="ignore"):
            summed = _decode(_encode(work[:half] + work[half:2 * half], name), name)
        work = np.concatenate([summed, work[2 * half:]]) if work.shape[0] % 2 else summed
    total = work[0] if work.shape[0] else np.zeros(work.shape[1:], np.float32)
    if keep_dims:
        total = np.expand_dims(total, tuple(range(values.ndim)) if axis is None else axis)
    return _encode(np.asarray(total, dtype=np.float32), name)


def _reduce_sum(method, interp):
    @functools.wraps(method)
    def sum(self, input):
        name = _narrow_handle(input.handle) if _active() else None
        if name is None:
            return method(self, input)
        values = _decode(input.handle.data, name)
        bits = _rounded_reduction(values, self.axis, self.keep_dims, name)
        return self.to_tensor(bits if bits.shape else bits.item(), input.dtype)

    return sum


def _reduce_min_max(method, interp):
    @functools.wraps(method)
    def min_max(self, input, val_reduce_op, idx_reduce_op=None):
        tensor = input[0] if isinstance(input, tuple) else input
        name = _narrow_handle(tensor.handle) if _active() else None
        if name is None:
            return method(self, input, val_reduce_op, idx_reduce_op)
        out = method(self, _as_float32_tensor(interp, tensor, name), val_reduce_op, idx_reduce_op)
        outs = out if isinstance(out, tuple) else (out,)
        fixed = []
        for t in outs:
            if t.dtype.scalar == interp.tl.float32 and val_reduce_op is not None and not fixed:
                scalar = tensor.dtype.scalar
                ty = interp.tl.block_type(scalar, list(t.type.shape)) if t.type.is_block() else scalar
                t = interp.tl.core.tensor(interp.TensorHandle(_encode(t.handle.data, name), scalar), ty)
            fixed.append(t)
        return tuple(fixed) if isinstance(out, tuple) else fixed[0]

    return min_max


def _scan(method, interp, ufunc):
    @functools.wraps(method)
    def scan(self, input):
        name = _narrow_handle(input.handle) if _active() else None
        if name is None:
            return method(self, input)
        values = np.moveaxis(_decode(input.handle.data, name), self.axis, 0).copy()
        with np.errstate(all="ignore"):
            for i in range(1, values.shape[0]):  # sequential, each step rounded to the dtype
                values[i] = _decode(_encode(ufunc(values[i - 1], values[i]), name), name)
        bits = _encode(np.moveaxis(values, 0, self.axis), name)
        return [self.to_tensor(bits, dtype=input.dtype)]

    return scan


def _patch_lang_tensor(function, interp):
    """After the interpreter's own tensor methods are installed for a launch, ``__index__``
    converts the squeezed array (a scalar tensor's data has shape (1,)), as Triton 3.9 does."""

    @functools.wraps(function)
    def wrapper(tensor, scope):
        function(tensor, scope)
        if _active():
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    return wrapper


_WRAPPERS = {
    "_patch_lang_tensor": _patch_lang_tensor,
    "cast_impl": _cast_impl,
    "create_fp_to_fp": _create_fp_to_fp,
    "binary_op": _via_float32,
    "ternary_op": _ternary_op,
    "unary_op": _unary_op,
    "create_fma": _via_float32,
    "create_erf": _via_float32,
    "create_rsqrt": _via_float32,
    "create_dot": _create_dot,
    "sum": _reduce_sum,
    "min_max": _reduce_min_max,
    "cumsum": lambda m, i: _scan(m, i, np.add),
    "cumprod": lambda m, i: _scan(m, i, np.multiply),
}
