"""Bit packing of small integer codes into int32 / uint8 words, described as data.

A :class:`Packing` says which container holds the fields, along which axis of the code array
consecutive elements share a word, how wide each field is, and in which order the elements of a
word's group are laid out in its fields:

    per_word = container_bits // bits
    field i of a word (bits [i*bits, (i+1)*bits), bit 0 = least significant) holds element
    order[i] of the word's group of per_word consecutive elements along ``axis``
    (order None = sequential: field i holds element i).

So packing ``codes`` of shape ``[..., L, ...]`` (``L`` along ``axis``) gives ``words`` of shape
``[..., L // per_word, ...]``, and word ``w`` holds elements ``per_word*w + order[i]``.

Checkpoint layouts expressed this way (canonical orientation: weights ``w[K, N]``):

* ``GPTQ_QWEIGHT`` -- ``qweight: int32 [K // 8, N]``, field i of word w holds k = 8*w + i.
* ``GPTQ_QZEROS``  -- ``qzeros: int32 [K // G, N // 8]``, field i of word j holds n = 8*j + i.
* ``AWQ_QWEIGHT``  -- ``qweight: int32 [K, N // 8]``, field i of word j holds
  n = 8*j + AWQ_ORDER[i] with ``AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)``.
* ``AWQ_QZEROS``   -- ``qzeros: int32 [K // G, N // 8]``, same interleaved order.
* ``NIBBLES_K_WEIGHT`` -- ``uint8 [K // 2, N]``, low nibble holds k = 2*w, high nibble k = 2*w + 1.
* ``NIBBLES_K_ACTIVATION`` -- ``uint8 [M, K // 2]``, low nibble holds k = 2*w, high k = 2*w + 1.

Signed values are stored two's complement in their field; int32 words whose top field has its
high bit set are negative (the word is the uint32 bit pattern viewed as int32). Unpacking takes
``signed=`` explicitly because the words alone do not say how to read a field.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Packing",
    "pack",
    "unpack",
    "CONTAINERS",
    "AWQ_ORDER",
    "GPTQ_QWEIGHT",
    "GPTQ_QZEROS",
    "AWQ_QWEIGHT",
    "AWQ_QZEROS",
    "NIBBLES_K_WEIGHT",
    "NIBBLES_K_ACTIVATION",
]

# container name -> (width in bits, the word dtype pack() returns)
CONTAINERS: dict[str, tuple[int, np.dtype]] = {
    "int32": (32, np.dtype(np.int32)),
    "uint8": (8, np.dtype(np.uint8)),
}

AWQ_ORDER: tuple[int, ...] = (0, 2, 4, 6, 1, 3, 5, 7)


def _unit_bits(bits: int) -> int:
    """Width of the unsigned lanes the word is viewed as while (un)packing: one byte for fields
    of up to 8 bits (fields never straddle a byte then), else the field itself."""
    return max(8, bits)


_UNSIGNED = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}
_SIGNED = {8: np.dtype(np.int8), 16: np.dtype(np.int16), 32: np.dtype(np.int32)}


@dataclass(frozen=True)
class Packing:
    """How codes are packed into words. See the module docstring for the field layout.

    container: ``"int32"`` or ``"uint8"``.
    axis: axis of the code array along which consecutive elements share a word (negative
        values count from the end, as in NumPy).
    bits: width of one field; must divide the container width.
    order: permutation of ``range(per_word)``; field i holds element ``order[i]`` of the group.
        ``None`` means sequential.
    """

    container: str = "int32"
    axis: int = 0
    bits: int = 4
    order: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.container not in CONTAINERS:
            raise ValueError(
                f"container={self.container!r} is not a known container "
                f"(allowed: {', '.join(map(repr, CONTAINERS))}); pass one of those"
            )
        if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
            raise ValueError(
                f"axis={self.axis!r} must be an int (the axis along which consecutive elements "
                f"share a word); pass e.g. axis=0 for K of a [K, N] weight"
            )
        width = CONTAINERS[self.container][0]
        allowed = [b for b in range(1, width + 1) if width % b == 0]
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or self.bits not in allowed:
            raise ValueError(
                f"bits={self.bits!r} does not divide the {width}-bit {self.container} container "
                f"(allowed: {', '.join(map(str, allowed))}); pick a field width from that list "
                f"or another container"
            )
        if self.order is not None:
            order = tuple(int(o) for o in self.order)
            if sorted(order) != list(range(self.per_word)):
                raise ValueError(
                    f"order={self.order!r} is not a permutation of 0..{self.per_word - 1} "
                    f"({self.container} words hold {self.per_word} {self.bits}-bit fields); "
                    f"pass each index once, e.g. {tuple(range(self.per_word))}, or order=None"
                )
            object.__setattr__(self, "order", order)

    @property
    def container_bits(self) -> int:
        return CONTAINERS[self.container][0]

    @property
    def word_dtype(self) -> np.dtype:
        return CONTAINERS[self.container][1]

    @property
    def per_word(self) -> int:
        """Number of fields (elements) per word: ``container_bits // bits``."""
        return self.container_bits // self.bits

    @property
    def field_order(self) -> tuple[int, ...]:
        """``order`` with ``None`` spelled out: field i holds element ``field_order[i]``."""
        return self.order if self.order is not None else tuple(range(self.per_word))

    def value_range(self, *, signed: bool) -> tuple[int, int]:
        """Inclusive range of values a field holds: two's complement if signed."""
        if signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1


# named layouts (facts about the checkpoint formats; see the module docstring)
GPTQ_QWEIGHT = Packing("int32", axis=0, bits=4)
GPTQ_QZEROS = Packing("int32", axis=1, bits=4)
AWQ_QWEIGHT = Packing("int32", axis=1, bits=4, order=AWQ_ORDER)
AWQ_QZEROS = Packing("int32", axis=1, bits=4, order=AWQ_ORDER)
NIBBLES_K_WEIGHT = Packing("uint8", axis=0, bits=4)
NIBBLES_K_ACTIVATION = Packing("uint8", axis=1, bits=4)


def _check_packing(packing: object) -> Packing:
    if not isinstance(packing, Packing):
        raise TypeError(
            f"packing={packing!r} must be a Packing, got {type(packing).__name__}; "
            f"pass e.g. Packing('int32', axis=0, bits=4) or GPTQ_QWEIGHT"
        )
    return packing


def _normalize_axis(arr: np.ndarray, packing: Packing, name: str) -> int:
    if arr.ndim == 0:
        raise ValueError(f"{name} is a 0-d array; pass an array with at least one axis")
    if not -arr.ndim <= packing.axis < arr.ndim:
        raise ValueError(
            f"packing.axis={packing.axis} is out of range for {name}.ndim={arr.ndim} "
            f"(allowed: {-arr.ndim}..{arr.ndim - 1}); use a Packing with a valid axis"
        )
    return packing.axis % arr.ndim


def _split_index(ndim: int, axis: int, j: int) -> tuple:
    """Index selecting position j of the per-word group in an array whose ``axis`` was split
    into ``(words, per_word)``."""
    return (slice(None),) * (axis + 1) + (j,)


def pack(values, packing: Packing) -> np.ndarray:
    """Pack integer ``values`` into words.

    values: integer array, shape ``[..., L, ...]`` with ``L = values.shape[packing.axis]`` a
        multiple of ``packing.per_word``; every value in ``[-2**(bits-1), 2**bits - 1]``, and
        not mixing negatives with values above ``2**(bits-1) - 1`` (a field is read either
        signed or unsigned, not both).
    returns: ``packing.word_dtype`` array of shape ``[..., L // per_word, ...]``; field i of word
        w holds element ``per_word*w + order[i]``. Signed values are stored two's complement.
    """
    packing = _check_packing(packing)
    values = np.asarray(values)
    if not (np.issubdtype(values.dtype, np.integer)):
        raise ValueError(
            f"values.dtype={values.dtype} is not an integer dtype (allowed: int8/16/32/64, "
            f"uint8/16/32/64); quantize to integer codes first, or cast with values.astype(np.int8)"
        )
    axis = _normalize_axis(values, packing, "values")
    per_word, bits = packing.per_word, packing.bits
    length = values.shape[axis]
    if length % per_word:
        raise ValueError(
            f"values.shape[{axis}]={length} is not a multiple of {per_word} ({packing.container} "
            f"words hold {per_word} {bits}-bit fields along axis {axis}); pad axis {axis} to a "
            f"multiple of {per_word}"
        )
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        smin, smax = packing.value_range(signed=True)
        umax = packing.value_range(signed=False)[1]
        if lo < smin or hi > umax or (lo < 0 and hi > smax):
            bad = lo if lo < smin or (lo < 0 and hi > smax) else hi
            raise ValueError(
                f"values hold {bad} (min {lo}, max {hi}), out of range for {bits}-bit fields "
                f"(allowed: {smin}..{smax} signed or 0..{umax} unsigned, not mixed); "
                f"clip or re-quantize the codes to {bits} bits"
            )
    unit_bits = _unit_bits(bits)
    udt = _UNSIGNED[unit_bits]
    units_per_word = packing.container_bits // unit_bits
    fields_per_unit = unit_bits // bits
    mask = (1 << bits) - 1

    nwords = length // per_word
    # [..., nwords, per_word, ...] with the per-word group in field order, then split into
    # (units_per_word, fields_per_unit): field f lands in unit f // fields_per_unit at shift
    # (f % fields_per_unit) * bits
    grouped = values.reshape(values.shape[:axis] + (nwords, per_word) + values.shape[axis + 1:])
    fields = np.take(grouped, packing.field_order, axis=axis + 1).astype(udt)  # wraps negatives
    fields = fields.reshape(values.shape[:axis] + (nwords, units_per_word, fields_per_unit) + values.shape[axis + 1:])
    if bits != unit_bits:
        fields &= udt.type(mask)
        shifts = (np.arange(fields_per_unit, dtype=udt) * bits).reshape((fields_per_unit,) + (1,) * (values.ndim - axis - 1))
        fields <<= shifts
    units = np.bitwise_or.reduce(fields, axis=axis + 2)  # the fields of a unit do not overlap
    # bring units_per_word last so the units of one word are contiguous, then read them as words
    units = np.ascontiguousarray(np.moveaxis(units, axis + 1, -1))
    words = units.view(packing.word_dtype.newbyteorder("<"))[..., 0]
    return words.astype(packing.word_dtype, copy=False)


def unpack(words, packing: Packing, *, signed: bool) -> np.ndarray:
    """Exact inverse of :func:`pack`.

    words: array of ``packing.word_dtype`` (for ``int32`` also ``uint32``; for ``uint8`` also
        ``int8``: the same bits), shape ``[..., W, ...]`` with W along ``packing.axis``.
    signed: read each field as two's complement (``True``) or unsigned (``False``).
    returns: shape ``[..., W * per_word, ...]``; int8 (signed) / uint8 (unsigned) for fields of
        up to 8 bits, the next wider integer type otherwise.
    """
    packing = _check_packing(packing)
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed={signed!r} must be a bool; pass signed=True for two's complement fields")
    words = np.asarray(words)
    nbytes = packing.container_bits // 8
    if not np.issubdtype(words.dtype, np.integer) or words.dtype.itemsize != nbytes:
        allowed = "int32, uint32" if packing.container == "int32" else "uint8, int8"
        raise ValueError(
            f"words.dtype={words.dtype} does not match container={packing.container!r} "
            f"(allowed: {allowed}); pass the packed words as stored, or use a Packing with the "
            f"matching container"
        )
    axis = _normalize_axis(words, packing, "words")
    bits, per_word = packing.bits, packing.per_word
    unit_bits = _unit_bits(bits)
    udt = _UNSIGNED[unit_bits]
    units_per_word = packing.container_bits // unit_bits
    fields_per_unit = unit_bits // bits
    mask = udt.type((1 << bits) - 1)

    le = np.ascontiguousarray(words, dtype=words.dtype.newbyteorder("<"))
    units = le.view(udt).reshape(words.shape + (units_per_word,))  # [..., W, ..., units]
    out_dtype = (_SIGNED if signed else {k: np.dtype(v.type) for k, v in _UNSIGNED.items()})[unit_bits]
    out_shape = words.shape[:axis] + (words.shape[axis], per_word) + words.shape[axis + 1:]
    out = np.empty(out_shape, dtype=out_dtype)
    sign_shift = unit_bits - bits
    for field, element in enumerate(packing.field_order):
        u, shift = divmod(field, fields_per_unit)
        part = units[..., u]
        if shift:
            part = part >> udt.type(shift * bits)
        if bits != unit_bits:
            part = part & mask
        if signed:
            if sign_shift:  # move the field's sign bit to the top, then shift back arithmetically
                part = part << udt.type(sign_shift)
            part = part.view(out_dtype) >> sign_shift
        out[_split_index(words.ndim, axis, element)] = part
    return out.reshape(words.shape[:axis] + (words.shape[axis] * per_word,) + words.shape[axis + 1:])
