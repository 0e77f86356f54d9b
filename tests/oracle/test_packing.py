"""oracle.packing: layouts as data, pack/unpack exact inverses, golden words, error messages."""
from __future__ import annotations

import re

import numpy as np
import pytest

from qkcheck.oracle.packing import (
    AWQ_ORDER,
    AWQ_QWEIGHT,
    AWQ_QZEROS,
    GPTQ_QWEIGHT,
    GPTQ_QZEROS,
    NIBBLES_K_ACTIVATION,
    NIBBLES_K_WEIGHT,
    Packing,
    pack,
    unpack,
)

NAMED = {
    "gptq-qweight": GPTQ_QWEIGHT,
    "gptq-qzeros": GPTQ_QZEROS,
    "awq-qweight": AWQ_QWEIGHT,
    "awq-qzeros": AWQ_QZEROS,
    "nibbles-k-weight": NIBBLES_K_WEIGHT,
    "nibbles-k-activation": NIBBLES_K_ACTIVATION,
}
PARAMETRIC = [
    Packing(container, axis=axis, bits=bits, order=order)
    for container, width in (("int32", 32), ("uint8", 8))
    for bits in (1, 2, 4, 8, 16, 32)
    if bits <= width
    for axis in (0, 1, -1)
    for order in (None, tuple(reversed(range(width // bits))))
]
ALL_PACKINGS = list(NAMED.items()) + [
    (f"{p.container}-b{p.bits}-ax{p.axis}-{'seq' if p.order is None else 'rev'}", p) for p in PARAMETRIC
]


def reference_pack(values: np.ndarray, packing: Packing) -> np.ndarray:
    """The definition, one word at a time with Python ints: field i of word w holds element
    per_word*w + order[i] along the packing axis."""
    v = np.moveaxis(values, packing.axis, -1)
    per_word, bits = packing.per_word, packing.bits
    out = np.empty(v.shape[:-1] + (v.shape[-1] // per_word,), dtype=np.int64)
    for idx in np.ndindex(out.shape):
        word = 0
        for i, element in enumerate(packing.field_order):
            word |= (int(v[idx[:-1] + (per_word * idx[-1] + element,)]) & ((1 << bits) - 1)) << (i * bits)
        if packing.container == "int32" and word >= 1 << 31:
            word -= 1 << 32  # the uint32 pattern read as int32
        out[idx] = word
    return np.moveaxis(out, -1, packing.axis).astype(packing.word_dtype)


def random_codes(packing: Packing, signed: bool, rng: np.random.Generator, words=(3, 2)) -> np.ndarray:
    shape = list(words)
    shape[packing.axis] *= packing.per_word
    lo, hi = packing.value_range(signed=signed)
    return rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("packing", [p for _, p in ALL_PACKINGS], ids=[n for n, _ in ALL_PACKINGS])
def test_pack_matches_definition_and_unpack_inverts_it(packing, signed):
    rng = np.random.default_rng(packing.bits * 7 + packing.axis + signed)
    codes = random_codes(packing, signed, rng)
    words = pack(codes, packing)
    assert words.dtype == packing.word_dtype
    np.testing.assert_array_equal(words, reference_pack(codes, packing))
    back = unpack(words, packing, signed=signed)
    assert back.dtype.kind == ("i" if signed else "u")
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("packing", [p for _, p in ALL_PACKINGS], ids=[n for n, _ in ALL_PACKINGS])
def test_unpack_then_pack_is_identity_on_every_word(packing):
    rng = np.random.default_rng(3)
    info = np.iinfo(packing.word_dtype)
    words = rng.integers(info.min, info.max, size=(4, 5), endpoint=True).astype(packing.word_dtype)
    np.testing.assert_array_equal(pack(unpack(words, packing, signed=False), packing), words)
    np.testing.assert_array_equal(pack(unpack(words, packing, signed=True), packing), words)


# golden words: each row states where it comes from
GOLDEN = [
    # GPTQ qweight, k = 0..7 of one column hold 1..8: nibble i = k  (GPTQ pack loop, sequential)
    pytest.param(GPTQ_QWEIGHT, np.arange(1, 9).reshape(8, 1), [[0x87654321]], id="gptq-qweight-1to8"),
    # GPTQ qzeros along N: n = 0..7 hold 1..8
    pytest.param(GPTQ_QZEROS, np.arange(1, 9).reshape(1, 8), [[0x87654321]], id="gptq-qzeros-1to8"),
    # AWQ: field i holds column order[i] with order (0, 2, 4, 6, 1, 3, 5, 7); columns hold n
    pytest.param(AWQ_QWEIGHT, np.arange(8).reshape(1, 8), [[0x75316420]], id="awq-qweight-arange"),
    # all-ones nibbles: the word is 0xFFFFFFFF, negative as int32
    pytest.param(GPTQ_QWEIGHT, np.full((8, 1), 15), [[-1]], id="gptq-all-15-negative-word"),
    # signed int4 -1 is two's complement 0xF, so eight of them are the same word
    pytest.param(GPTQ_QWEIGHT, np.full((8, 1), -1), [[-1]], id="gptq-int4-minus1"),
    # int4 -8 = 0b1000 in field 7 only: sign bit of the word
    pytest.param(GPTQ_QWEIGHT, np.array([[0]] * 7 + [[-8]]), [[-(1 << 31)]], id="gptq-int4-minus8-top"),
    # nibbles in uint8 along K: low nibble first
    pytest.param(NIBBLES_K_WEIGHT, np.array([[1], [2]]), [[0x21]], id="nibbles-low-first"),
    pytest.param(NIBBLES_K_ACTIVATION, np.array([[0xA, 0x5]]), [[0x5A]], id="nibbles-act-low-first"),
]


@pytest.mark.parametrize("packing, values, expected", GOLDEN)
def test_golden_words(packing, values, expected):
    expected = np.array(
        [[e if e < 1 << 31 or packing.container != "int32" else e - (1 << 32) for e in row] for row in expected]
    ).astype(packing.word_dtype)
    np.testing.assert_array_equal(pack(values, packing), expected)


@pytest.mark.parametrize("field", range(8), ids=[f"field{i}" for i in range(8)])
def test_awq_field_i_holds_column_order_i(field):
    """Definition check: a word with only field i set unpacks to column 8*j + AWQ_ORDER[i]."""
    words = np.array([[0, 0x9 << (4 * field)]], dtype=np.uint32).view(np.int32)
    codes = unpack(words, AWQ_QWEIGHT, signed=False)
    assert codes.shape == (1, 16)
    assert np.flatnonzero(codes).tolist() == [8 + AWQ_ORDER[field]]
    assert codes[0, 8 + AWQ_ORDER[field]] == 9


def test_gptq_qweight_shape_follows_docstring():
    K, N = 64, 24
    words = pack(np.zeros((K, N), np.uint8), GPTQ_QWEIGHT)
    assert words.shape == (K // 8, N) and words.dtype == np.int32
    assert pack(np.zeros((K // 32, N), np.uint8), GPTQ_QZEROS).shape == (K // 32, N // 8)


def test_unpack_accepts_uint32_view_of_int32_words():
    codes = np.arange(16).reshape(16, 1) % 16
    words = pack(codes, GPTQ_QWEIGHT)
    np.testing.assert_array_equal(unpack(words.view(np.uint32), GPTQ_QWEIGHT, signed=False), codes)


def test_three_dimensional_arrays_pack_along_the_given_axis():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(2, 16, 3))  # e.g. experts x K x N
    p = Packing("int32", axis=1)
    words = pack(codes, p)
    assert words.shape == (2, 2, 3)
    np.testing.assert_array_equal(words[1], pack(codes[1], GPTQ_QWEIGHT))
    np.testing.assert_array_equal(unpack(words, p, signed=False), codes)


ERRORS = [
    pytest.param(lambda: Packing("int16"), ValueError,
                 "container='int16' is not a known container (allowed: 'int32', 'uint8')", id="container"),
    pytest.param(lambda: Packing("uint8", bits=3), ValueError,
                 "bits=3 does not divide the 8-bit uint8 container (allowed: 1, 2, 4, 8)", id="bits-uint8"),
    pytest.param(lambda: Packing("int32", bits=6), ValueError,
                 "bits=6 does not divide the 32-bit int32 container (allowed: 1, 2, 4, 8, 16, 32)", id="bits-int32"),
    pytest.param(lambda: Packing("uint8", bits=16), ValueError, "bits=16 does not divide the 8-bit", id="bits-too-wide"),
    pytest.param(lambda: Packing(axis=0.5), ValueError, "axis=0.5 must be an int", id="axis-type"),
    pytest.param(lambda: Packing(order=(0, 1, 2)), ValueError,
                 "order=(0, 1, 2) is not a permutation of 0..7 (int32 words hold 8 4-bit fields)", id="order-length"),
    pytest.param(lambda: Packing(order=(0, 0, 1, 2, 3, 4, 5, 6)), ValueError,
                 "is not a permutation of 0..7", id="order-duplicate"),
    pytest.param(lambda: pack(np.zeros((8, 1), np.int8), "gptq"), TypeError,
                 "packing='gptq' must be a Packing, got str", id="packing-type"),
    pytest.param(lambda: pack(np.zeros((12, 4), np.int8), GPTQ_QWEIGHT), ValueError,
                 "values.shape[0]=12 is not a multiple of 8 (int32 words hold 8 4-bit fields along axis 0); "
                 "pad axis 0 to a multiple of 8", id="length-not-multiple"),
    pytest.param(lambda: pack(np.zeros((8, 4), np.float32), GPTQ_QWEIGHT), ValueError,
                 "values.dtype=float32 is not an integer dtype", id="values-float"),
    pytest.param(lambda: pack(np.zeros((8, 4), bool), GPTQ_QWEIGHT), ValueError,
                 "values.dtype=bool is not an integer dtype", id="values-bool"),
    pytest.param(lambda: pack(np.full((8, 1), 16), GPTQ_QWEIGHT), ValueError,
                 "values hold 16 (min 16, max 16), out of range for 4-bit fields "
                 "(allowed: -8..7 signed or 0..15 unsigned, not mixed)", id="values-too-big"),
    pytest.param(lambda: pack(np.full((8, 1), -9), GPTQ_QWEIGHT), ValueError,
                 "values hold -9 (min -9, max -9), out of range for 4-bit fields", id="values-too-small"),
    pytest.param(lambda: pack(np.array([[-1]] + [[9]] * 7), GPTQ_QWEIGHT), ValueError,
                 "values hold -1 (min -1, max 9), out of range for 4-bit fields", id="values-mixed-signedness"),
    pytest.param(lambda: pack(np.zeros(8, np.int8), NIBBLES_K_ACTIVATION.__class__("uint8", axis=1)), ValueError,
                 "packing.axis=1 is out of range for values.ndim=1 (allowed: -1..0)", id="axis-out-of-range"),
    pytest.param(lambda: pack(np.int8(3), GPTQ_QWEIGHT), ValueError, "values is a 0-d array", id="values-0d"),
    pytest.param(lambda: unpack(np.zeros((1, 1), np.int64), GPTQ_QWEIGHT, signed=False), ValueError,
                 "words.dtype=int64 does not match container='int32' (allowed: int32, uint32)", id="words-dtype"),
    pytest.param(lambda: unpack(np.zeros((1, 1), np.float32), GPTQ_QWEIGHT, signed=False), ValueError,
                 "words.dtype=float32 does not match container='int32'", id="words-float"),
    pytest.param(lambda: unpack(np.zeros((1, 1), np.int32), NIBBLES_K_WEIGHT, signed=False), ValueError,
                 "words.dtype=int32 does not match container='uint8' (allowed: uint8, int8)", id="words-uint8"),
    pytest.param(lambda: unpack(np.zeros((1, 1), np.int32), GPTQ_QWEIGHT, signed="yes"), TypeError,
                 "signed='yes' must be a bool", id="signed-type"),
]


@pytest.mark.parametrize("make, exc, message", ERRORS)
def test_bad_input_message(make, exc, message):
    with pytest.raises(exc, match=re.escape(message)) as info:
        make()
    # every message also says what to do about it
    assert re.search(r"; (pad|pass|pick|use|clip|quantize)", str(info.value)), str(info.value)
