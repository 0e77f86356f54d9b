"""Every number format a quantized kernel stores, defined once as data, with bit-exact codecs.

One frozen record per format in one registry, ``FORMATS``, keyed by the torch / ml_dtypes name.
A record holds only the defining fields (bit widths, bias, sign, the special-value convention);
everything else (max, min normal, smallest subnormal, eps, the decode table, which codes are NaN)
is computed from them. The codecs read only those fields: no code path looks at a format's name.

Float layout (``FloatFormat``), most significant bit first::

    [sign: 1 if signed else 0][exponent: exponent_bits][mantissa: mantissa_bits]

    exponent field f > 0 (or any f when subnormals=False):  (-1)**s * (1 + m / 2**M) * 2**(f - bias)
    exponent field f == 0 and subnormals=True:              (-1)**s * (m / 2**M) * 2**(1 - bias)

then the convention in ``Specials`` overrides some codes with NaN / ±inf.

Codes are integers holding the bit pattern in their low ``bits`` bits (np.uint8 for every format
here, FP4/FP6 included: one code per byte, unpacked; packing two FP4 codes into a byte is
``oracle.packing``'s job).

Encoding is round-to-nearest, ties-to-even, of the exact float64 value, with an unbounded
exponent range: a value rounds onto the grid of its binade (the subnormal grid below the smallest
normal), and *overflows* when that rounded magnitude exceeds ``max``. So with RNE a value strictly
below max + ulp(max)/2 rounds to max, and the midpoint itself goes to whichever neighbour has an
even mantissa: for e4m3fn 464 = 448 + 16 rounds to 448 (0x7E, mantissa 110) and for e5m2
61440 = 57344 + 4096 overflows (57344 has mantissa 11, the next binade's 65536 mantissa 00), as
IEEE 754 specifies and as ml_dtypes does. What an overflow becomes depends on ``saturate`` and on
the convention; see ``FloatFormat.encode``.

Known differences from the independent implementations (checked by tests/oracle/test_formats.py):

- ml_dtypes and torch convert float64 input to these formats through float32, i.e. they round
  twice. For float64 values within half a float32 ulp of a tie the results can differ from the
  exact RNE computed here (e.g. e4m3fn of nextafter(1.0625, 2) is 0x39 here, 0x38 in both).
  For float32 / float16 / bfloat16 inputs (exact in float32) the results agree bit-exactly,
  apart from the cases below.
- ml_dtypes and torch round every float32 *subnormal* strictly above 2**-127 up to E8M0's
  2**-126 (0x01), though below 1.5 * 2**-127 the nearest value is 2**-127 (0x00, given here).
  E8M0 is the only format with normal values below float32's smallest normal 2**-126.
- ml_dtypes saturates FP6/FP4 on overflow and turns NaN into a zero code (+NaN -> -0); those
  formats have no NaN or inf, so here NaN input and (with saturate=False) overflow raise
  ValueError instead.
- torch ``.to(torch.float8_e4m3fn)`` saturates finite overflow and ±inf to ±448 (what
  ``saturate=True`` does); ml_dtypes and ``saturate=False`` give NaN. torch encodes a negative
  NaN as 0xFF in e5m2 (ml_dtypes and this module: 0xFE); both are NaN.
- torch ``.to(torch.float8_e8m0fnu)`` ignores the sign and maps 0 to 0x00; ml_dtypes and this
  module map zero and negative input to the NaN code 0xFF.

Decoding returns a positive NaN for every NaN code (the sign of a NaN carries no value).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Mapping, Union

import numpy as np

__all__ = ["Specials", "FloatFormat", "IntFormat", "Format", "FORMATS", "get_format"]


class Specials(enum.Enum):
    """Which codes are NaN / ±inf. The value says it in words."""

    IEEE = "IEEE 754-like: exponent field all ones is ±inf (mantissa 0) or NaN (mantissa != 0)"
    FN = "finite + NaN: no inf; the all-ones magnitude (S.1111.111 for e4m3, 0xFF for e8m0) is NaN"
    FNUZ = "finite + NaN, unsigned zero: no inf, no -0; the single NaN is 0x80 (sign bit alone)"
    FINITE = "finite: every code is a number; no inf, no NaN"


@dataclass(frozen=True)
class FloatFormat:
    """A small binary floating-point format, defined by its fields alone.

    name:          torch / ml_dtypes name (the registry key)
    bits:          total width, == signed + exponent_bits + mantissa_bits
    exponent_bits: E, width of the biased exponent field
    mantissa_bits: M, explicit fraction bits (the leading 1 of normals is implicit)
    bias:          value exponent = field - bias (for subnormals, 1 - bias)
    signed:        whether the top bit is a sign bit (E8M0 has none)
    specials:      the NaN / inf / -0 convention (``Specials``)
    subnormals:    True: exponent field 0 holds zero and the subnormals m * 2**(1 - bias - M).
                   False: field 0 is an ordinary binade, so there is no zero at all (E8M0).
    source:        the specification this record transcribes
    """

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int
    signed: bool
    specials: Specials
    subnormals: bool
    source: str

    def __post_init__(self) -> None:
        if self.bits != int(self.signed) + self.exponent_bits + self.mantissa_bits:
            raise ValueError(
                f"{self.name}: bits={self.bits} must equal signed ({int(self.signed)}) + "
                f"exponent_bits ({self.exponent_bits}) + mantissa_bits ({self.mantissa_bits})"
            )
        if self.bits > 8:
            raise ValueError(f"{self.name}: bits={self.bits}; codes are stored in np.uint8, so at most 8")
        if not self.signed and not self.has_nan:
            raise ValueError(f"{self.name}: an unsigned format needs a NaN code to encode negative input into")
        if self.specials is Specials.FNUZ and not self.signed:
            raise ValueError(f"{self.name}: the FNUZ NaN is the sign bit alone, so the format must be signed")

    # ---------------------------------------------------------------- derived facts
    @property
    def num_codes(self) -> int:
        return 1 << self.bits

    @property
    def _magnitude_mask(self) -> int:
        return (1 << (self.exponent_bits + self.mantissa_bits)) - 1

    @property
    def _sign_bit(self) -> int:
        return (1 << (self.bits - 1)) if self.signed else 0

    @property
    def has_inf(self) -> bool:
        return self.specials is Specials.IEEE

    @property
    def has_nan(self) -> bool:
        return self.specials is not Specials.FINITE

    @property
    def has_negative_zero(self) -> bool:
        return self.signed and self.subnormals and self.specials is not Specials.FNUZ

    @property
    def max_code(self) -> int:
        """Code of the largest finite value (positive, sign bit clear)."""
        top = self._magnitude_mask
        if self.specials is Specials.IEEE:  # the whole all-ones exponent binade is inf / NaN
            return top - (1 << self.mantissa_bits)
        if self.specials is Specials.FN:  # only the all-ones magnitude is NaN
            return top - 1
        return top

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade."""
        return (1 if self.subnormals else 0) - self.bias

    @property
    def max(self) -> float:
        return float(self.decode_table[self.max_code])

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (equals min_normal when the format has no subnormals)."""
        return 2.0 ** (self.emin - self.mantissa_bits) if self.subnormals else self.min_normal

    @property
    def eps(self) -> float:
        """Gap between 1.0 and the next larger value."""
        return 2.0**-self.mantissa_bits

    @property
    def inf_code(self) -> int | None:
        """Code of +inf (the sign bit added gives -inf); None when the format has no inf."""
        return self.max_code + 1 if self.has_inf else None

    @property
    def nan_code(self) -> int | None:
        """Code encode() gives a positive NaN (what ml_dtypes produces); None without NaN.

        IEEE: exponent all ones with the top (quiet) mantissa bit, 0x7E for e5m2; a negative NaN
        gets the sign bit too (0xFE). FN: the all-ones magnitude, 0x7F (negative: 0xFF).
        FNUZ: 0x80 for either sign. E8M0 (FN, unsigned): 0xFF.
        """
        if self.specials is Specials.IEEE:
            return self.inf_code | (1 << (self.mantissa_bits - 1))
        if self.specials is Specials.FN:
            return self._magnitude_mask
        if self.specials is Specials.FNUZ:
            return self._sign_bit
        return None

    @cached_property
    def decode_table(self) -> np.ndarray:
        """float64[num_codes]: the value of every code (read-only)."""
        codes = np.arange(self.num_codes, dtype=np.int64)
        m_bits = self.mantissa_bits
        mag = codes & self._magnitude_mask
        field = mag >> m_bits
        frac = (mag & ((1 << m_bits) - 1)).astype(np.float64)
        normal = np.ldexp((1 << m_bits) + frac, field - self.bias - m_bits)
        if self.subnormals:
            values = np.where(field == 0, np.ldexp(frac, self.emin - m_bits), normal)
        else:
            values = normal
        negative = (codes & self._sign_bit) != 0
        values = np.where(negative, -values, values)
        all_ones = field == (1 << self.exponent_bits) - 1
        if self.specials is Specials.IEEE:
            values = np.where(all_ones & (frac == 0), np.where(negative, -np.inf, np.inf), values)
            values = np.where(all_ones & (frac != 0), np.nan, values)
        elif self.specials is Specials.FN:
            values = np.where(mag == self._magnitude_mask, np.nan, values)
        elif self.specials is Specials.FNUZ:
            values = np.where(codes == self._sign_bit, np.nan, values)
        values.setflags(write=False)
        return values

    # ---------------------------------------------------------------- codecs
    def decode(self, codes) -> np.ndarray:
        """Values of ``codes`` (integer array, bit pattern in the low ``bits`` bits) as float64.

        NaN / ±inf where the convention defines them. Codes outside [0, 2**bits) raise ValueError.
        """
        codes = _as_codes(codes, "codes")
        if not (codes.dtype == np.uint8 and self.bits == 8) and codes.size:
            _check_range(codes, "codes", 0, self.num_codes - 1, f"{self.name} codes",
                         f"mask to the low {self.bits} bits (codes & {self.num_codes - 1:#x}) "
                         "or view signed bytes as np.uint8")
        return np.asarray(self.decode_table[codes])

    def encode(self, x, *, saturate: bool) -> np.ndarray:
        """Round ``x`` (any real array, computed in float64) to the nearest code, ties to even.

        Returns np.uint8 codes of x's shape. Rules, for |x| whose RNE rounding exceeds ``max``
        ("overflow") and for the specials:

        =============  ==================  ===================================  ==============
        convention     NaN in              overflow, ±inf, saturate=False       saturate=True
        =============  ==================  ===================================  ==============
        IEEE (e5m2)    ±quiet NaN 0x7E/FE  ±inf (0x7C/0xFC)                     ±max
        FN (e4m3fn)    ±NaN 0x7F/0xFF      ±NaN 0x7F/0xFF (sign kept)           ±max
        FNUZ           NaN 0x80            NaN 0x80                             ±max
        FINITE (fp6,   ValueError          ValueError                           ±max
        fp4)           (ml_dtypes: 0 code) (ml_dtypes would saturate)           (NaN: ValueError)
        FN unsigned    NaN 0xFF            NaN 0xFF                             max 0xFE
        (e8m0)
        =============  ==================  ===================================  ==============

        NaN stays NaN under saturate=True. Signed zero is kept where the format has -0
        (fn, IEEE, fp6/fp4); FNUZ encodes -0 and negative values that round to zero as 0x00.

        E8M0 (OCP MX v1.0 §5.4.1; values 2**(code - 127), no zero, no sign), matching ml_dtypes
        ``astype(float8_e8m0fnu)`` on float32 input (except float32 subnormals, see the module
        docstring), with no rule of its own, only the fields: a positive value is rounded RNE on its
        significand with no mantissa bits, so 2**e * s, 1 <= s < 2, gives 2**e for s < 1.5 and
        2**(e+1) for s >= 1.5 (the tie goes to the even significand, i.e. up: 0.75 -> 1.0,
        1.5 -> 2.0, 3.0 -> 4.0); nearest in the linear domain, not the log domain.
        Positive values below 2**-127 give 0x00 (2**-127: there is no zero to round to).
        Values >= 1.5 * 2**127 overflow. Zero, negative values and NaN give 0xFF (NaN) whatever
        ``saturate`` says.
        """
        x = _as_real(x, "x")
        if not self.has_nan:
            nan = np.isnan(x)
            if nan.any():
                idx = _first_index(nan)
                raise ValueError(
                    f"x holds NaN at index {idx} ({int(nan.sum())} of {x.size} elements); "
                    f"{self.name} has no NaN encoding; replace NaNs before encoding (e.g. np.nan_to_num)"
                )
        flat = x.reshape(-1)
        out = np.empty(flat.size, dtype=np.uint8)
        # fixed-size chunks keep every temporary small (and cache-resident): one pass over a
        # 4096 x 4096 matrix allocates no full-size float64 or int64 array
        for start in range(0, flat.size, _CHUNK):
            with np.errstate(invalid="ignore"):  # signalling NaNs raise the flag when widened
                chunk = flat[start:start + _CHUNK].astype(np.float64)
            codes = self._encode_chunk(chunk, saturate)
            if codes is None:
                self._raise_overflow(x)
            out[start:start + _CHUNK] = codes
        return out.reshape(x.shape)

    def _encode_chunk(self, x: np.ndarray, saturate: bool) -> np.ndarray | None:
        """Codes of the float64 vector ``x`` (see encode); None when an overflow must raise."""
        negative = np.signbit(x)
        nan = np.isnan(x)
        mag = self._round_magnitude(np.abs(x))  # NaN rows: 0, replaced below
        if saturate:
            np.minimum(mag, self.max_code, out=mag)
        elif self.has_inf:  # inf_code == max_code + 1
            np.minimum(mag, self.inf_code, out=mag)
        elif self.has_nan:
            nan |= mag > self.max_code
        elif (mag > self.max_code).any():
            return None
        if self.signed:
            keep_sign = negative if self.has_negative_zero else negative & (mag != 0)
            mag |= keep_sign * np.int32(self._sign_bit)
        else:  # no code for negatives; without subnormals none for zero either: both become NaN
            nan |= negative
            if not self.subnormals:
                nan |= x == 0
        if self.has_nan:
            nan_code = self.nan_code
            if self.specials is not Specials.FNUZ:  # the NaN keeps the input's sign
                nan_code = nan_code | negative * np.int32(self._sign_bit)
            mag = np.where(nan, nan_code, mag)
        return mag.astype(np.uint8)

    def _raise_overflow(self, x: np.ndarray) -> None:
        """Raise the ValueError for values of ``x`` that overflow a format without inf or NaN."""
        overflow = self._round_magnitude(np.abs(x.astype(np.float64))) > self.max_code
        idx = _first_index(overflow)
        raise ValueError(
            f"x holds {float(x[idx])!r} at index {idx} ({int(overflow.sum())} of {x.size} elements "
            f"overflow), which rounds beyond {self.name}'s max {self.max!r}, and {self.name} "
            f"has neither inf nor NaN; pass saturate=True to clamp to ±{self.max!r}, "
            "or scale the input down"
        )

    def _round_magnitude(self, a: np.ndarray) -> np.ndarray:
        """int32 magnitude code of RNE(a), a >= 0, on the grid extended past max (no clamping).

        a = 2**e * s with e = floor(log2 a) floored at emin; n = rint(a / 2**(e - M)) counts
        quanta of the binade (rint is round-half-to-even; the division by a power of two is
        exact). The code of 2**e * n / 2**M is (e - emin) * 2**M + n (n >= 2**M in a normal
        binade; n == 2**(M+1) carries into the next binade's first code), shifted down by one
        binade when the format has no subnormal binade. Non-finite a gives a code > max_code.
        """
        m_bits = self.mantissa_bits
        top_exponent = (1 << self.exponent_bits) - 1 - self.bias  # of the all-ones binade
        # everything >= 2**(top_exponent + 1) overflows: clamping there keeps inf out of the
        # exponent arithmetic (NaN rows become 0; the caller masks them)
        clamped = np.minimum(a, 2.0 ** (top_exponent + 1))
        np.copyto(clamped, 0.0, where=np.isnan(a))
        # floor(log2 a) is the unbiased float64 exponent field (-1023 for 0 and float64
        # subnormals, all far below emin)
        e = (clamped.view(np.int64) >> 52).astype(np.int32) - 1023
        np.maximum(e, self.emin, out=e)
        # 2**(M - e) built from its bit pattern: exact, and always a normal float64 here
        scale = ((1023 + m_bits - e).astype(np.int64) << 52).view(np.float64)
        n = np.rint(clamped * scale).astype(np.int32)  # rint: round half to even
        first_binade = 0 if self.subnormals else 1 << m_bits
        mag = (e - self.emin) * np.int32(1 << m_bits) + n - np.int32(first_binade)
        return np.maximum(mag, 0, out=mag)


@dataclass(frozen=True)
class IntFormat:
    """A two's-complement (signed) or plain binary (unsigned) integer of ``bits`` bits.

    Codes are the integer *values* themselves, stored in np.int8 (signed) or np.uint8 (unsigned)
    one per element; packing several into a word is ``oracle.packing``'s job.
    """

    name: str
    bits: int
    signed: bool
    source: str

    @property
    def num_codes(self) -> int:
        return 1 << self.bits

    @property
    def min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype(np.int8) if self.signed else np.dtype(np.uint8)

    def decode(self, codes) -> np.ndarray:
        """float64 values of integer ``codes``; values outside [min, max] raise ValueError."""
        codes = _as_codes(codes, "codes")
        hint = (
            f"if these are raw {self.bits}-bit two's-complement patterns, sign-extend first: "
            f"np.where(c > {self.max}, c - {self.num_codes}, c)"
            if self.signed
            else f"mask to the low {self.bits} bits (codes & {self.num_codes - 1:#x})"
        )
        if codes.size:
            _check_range(codes, "codes", self.min, self.max, f"{self.name} values", hint)
        return codes.astype(np.float64)

    def encode(self, x, *, saturate: bool) -> np.ndarray:
        """Round ``x`` half-to-even to integers, then clip to [min, max] (saturate=True) or raise
        ValueError for any result outside it (saturate=False). NaN always raises."""
        x = _as_real(x, "x")
        nan = np.isnan(x)
        if nan.any():
            idx = _first_index(nan)
            raise ValueError(
                f"x holds NaN at index {idx} ({int(nan.sum())} of {x.size} elements); "
                f"{self.name} has no NaN; replace NaNs before encoding (e.g. np.nan_to_num)"
            )
        r = np.rint(x)
        if saturate:
            r = np.clip(r, self.min, self.max)
        else:
            bad = (r < self.min) | (r > self.max)
            if bad.any():
                idx = _first_index(bad)
                raise ValueError(
                    f"x holds {float(x[idx])!r} at index {idx} ({int(bad.sum())} of {x.size} elements "
                    f"out of range), which rounds outside {self.name}'s range [{self.min}, "
                    f"{self.max}]; pass saturate=True to clip, or scale the input"
                )
        return r.astype(self.storage_dtype)


Format = Union[FloatFormat, IntFormat]


# ---------------------------------------------------------------- helpers
_CHUNK = 1 << 16  # elements encoded per pass


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _as_codes(codes, name: str) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer array (bit patterns), got dtype {arr.dtype}; "
            "to quantize real values use encode(), to reinterpret bytes use .view(np.uint8)"
        )
    return arr


def _check_range(codes: np.ndarray, name: str, lo: int, hi: int, what: str, fix: str) -> None:
    bad = (codes < lo) | (codes > hi)
    if bad.any():
        idx = _first_index(bad)
        raise ValueError(
            f"{name} holds {int(codes[idx])} at index {idx} ({int(bad.sum())} of {codes.size} "
            f"elements out of range); {what} must lie in [{lo}, {hi}]; {fix}"
        )


def _as_real(x, name: str) -> np.ndarray:
    """``x`` as an array of a real dtype: float and integer arrays are returned as they are
    (the codecs convert chunks to float64 themselves), bool and other real dtypes (e.g.
    bfloat16) become float64; complex and non-numeric input raise TypeError."""
    arr = np.asarray(x)
    if arr.dtype.kind in "fiu":
        return arr
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}; pass x.real or np.abs(x)")
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a real numeric array, got dtype {arr.dtype}; convert it with np.asarray(x, float)"
        ) from None


# ---------------------------------------------------------------- the registry
_OCP_FP8 = "OCP 8-bit Floating Point Specification (OFP8) rev 1.0, 2023"
_FNUZ = ("8-bit float proposal of Graphcore/AMD/Qualcomm (Noune et al. 2022, '8-bit Numerical "
         "Formats for Deep Neural Networks'), as implemented by AMD MI300 (gfx942)")
_MX_ELEMENT = "OCP Microscaling Formats (MX) v1.0, §5.3 element data types"
_MX_SCALE = "OCP Microscaling Formats (MX) v1.0, §5.4.1 E8M0 scale"

_RECORDS: tuple[Format, ...] = (
    # S.EEEE.MMM, bias 7; max 0b0_1111_110 = float.fromhex("0x1.cp8")  # 448.0; NaN S.1111.111
    FloatFormat("float8_e4m3fn", 8, 4, 3, 7, True, Specials.FN, True, _OCP_FP8),
    # S.EEEE.MMM, bias 8; max 0b0_1111_111 = float.fromhex("0x1.ep7")  # 240.0; NaN 0b1_0000_000
    FloatFormat("float8_e4m3fnuz", 8, 4, 3, 8, True, Specials.FNUZ, True, _FNUZ),
    # S.EEEEE.MM, bias 15; max 0b0_11110_11 = float.fromhex("0x1.cp15")  # 57344.0; inf 0b0_11111_00
    FloatFormat("float8_e5m2", 8, 5, 2, 15, True, Specials.IEEE, True, _OCP_FP8),
    # S.EEEEE.MM, bias 16; max 0b0_11111_11 = float.fromhex("0x1.cp15")  # 57344.0; NaN 0b1_00000_00
    FloatFormat("float8_e5m2fnuz", 8, 5, 2, 16, True, Specials.FNUZ, True, _FNUZ),
    # S.EE.MMM, bias 1; max 0b0_11_111 = float.fromhex("0x1.ep2")  # 7.5
    FloatFormat("float6_e2m3fn", 6, 2, 3, 1, True, Specials.FINITE, True, _MX_ELEMENT),
    # S.EEE.MM, bias 3; max 0b0_111_11 = float.fromhex("0x1.cp4")  # 28.0
    FloatFormat("float6_e3m2fn", 6, 3, 2, 3, True, Specials.FINITE, True, _MX_ELEMENT),
    # S.EE.M, bias 1; max 0b0_11_1 = float.fromhex("0x1.8p2")  # 6.0
    FloatFormat("float4_e2m1fn", 4, 2, 1, 1, True, Specials.FINITE, True, _MX_ELEMENT),
    # EEEEEEEE, bias 127, value 2**(code - 127); max 0b1111_1110 = float.fromhex("0x1p127"); NaN 0xFF
    FloatFormat("float8_e8m0fnu", 8, 8, 0, 127, False, Specials.FN, False, _MX_SCALE),
    IntFormat("int4", 4, True, "two's complement, -8..7"),
    IntFormat("uint4", 4, False, "unsigned, 0..15"),
    IntFormat("int8", 8, True, "two's complement, -128..127"),
    IntFormat("uint8", 8, False, "unsigned, 0..255"),
)

FORMATS: Mapping[str, Format] = MappingProxyType({f.name: f for f in _RECORDS})


def get_format(name: str) -> Format:
    """The record named ``name`` (a torch / ml_dtypes name such as 'float8_e4m3fn' or 'int4')."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown format {name!r} (allowed: {', '.join(FORMATS)}); use the torch/ml_dtypes name"
        ) from None
