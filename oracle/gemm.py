"""What every GEMM reference shares: the exact dequantized ``Operands``, code decoding, scale
broadcasting and the argument checks. The references themselves live with their families in
``oracle.ops`` (``ops.w4a16``, ``ops.scaled_mm``, ``ops.mxfp4``, ``ops.nvfp4``).

Orientation everywhere: activations ``x[M, K]``, weights ``w[K, N]``, output ``y[M, N] = x @ w
(+ bias[N])``. References return the exact (unrounded) float64 result; rounding to the output
dtype and the legitimate error of a real kernel are ``oracle.bounds``' business. Each reference
has a bundled kernel twin of the same name in ``kernels/`` with the same argument meaning.

Codes are decoded with ``oracle.formats`` (the format records' decode tables); the dequantized
operands are exact float64 values (a code's value times its scale: at most 24 + 24 significant
bits, so every product here is exact in float64). Every reference also exposes its operands
(``*_operands`` functions returning the exact dequantized ``x``/``w`` and the bias) so the
error bound and the diagnosis reason about the same numbers.

Scale shapes follow ``oracle.schemes`` (reduced axis -> number of groups, others kept):
per-tensor ``[1, 1]``, per-token ``[M, 1]``, per-channel ``[1, N]``, grouped weights
``[ceil(K/G), N]``, block weights ``[ceil(K/bk), ceil(N/bn)]``, activation groups
``[M, ceil(K/bk)]``. Where a block size does not divide its axis the last block is partial
(ceil), the convention of block-scaled FP8 checkpoints; group sizes of integer and MX/NV
schemes must divide K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkcheck.oracle.arguments import as_2d, check_shape
from qkcheck.oracle.formats import FORMATS

FP8_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
E2M1 = "float4_e2m1fn"
E8M0 = "float8_e8m0fnu"
E4M3 = "float8_e4m3fn"


@dataclass(frozen=True)
class Operands:
    """The exact dequantized operands of a GEMM: ``y = x @ w + bias``.

    For ops whose scales factor out of the dot (per-tensor / per-token / per-channel) the
    unscaled code values and the scale vectors are kept too: ``x = xc * xs`` (xs [M,1] or [1,1])
    and ``w = wc * ws`` (ws [1,N] or [1,1]); None where that does not apply.
    """

    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray | None
    xc: np.ndarray | None = None
    xs: np.ndarray | None = None
    wc: np.ndarray | None = None
    ws: np.ndarray | None = None


# ------------------------------------------------------------------ argument checks


def check_k(xname: str, kx: int, wname: str, kw: int) -> None:
    if kx != kw:
        raise ValueError(
            f"{xname} has K={kx} columns but {wname} has K={kw} rows; {xname} is [M, K] and {wname} is "
            f"[K, N] (transpose a [N, K] weight first)"
        )


def int_codes(name: str, codes, lo: int, hi: int, what: str) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}; reshape it to [rows, cols]")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.rint(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer codes, got dtype {arr.dtype}; pass the {what} as ints")
    if arr.size:
        cmin, cmax = int(arr.min()), int(arr.max())
        if cmin < lo or cmax > hi:
            raise ValueError(f"{name} holds codes in [{cmin}, {cmax}], {what} are {lo}..{hi}; "
                             f"unpack / sign-extend the stored codes first")
    return arr


def fp_codes(name: str, codes, fmt_name: str) -> np.ndarray:
    """float64 values of the bit-pattern ``codes`` of format ``fmt_name`` (2-D)."""
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}; reshape it to [rows, cols]")
    fmt = FORMATS[fmt_name]
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must hold {fmt_name} bit patterns as unsigned ints, got dtype {arr.dtype}; encode "
            f"values with oracle.formats.get_format({fmt_name!r}).encode or view the bytes as np.uint8"
        )
    if arr.dtype != np.uint8 or fmt.bits != 8:
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= fmt.num_codes):
            raise ValueError(
                f"{name} holds codes in [{int(arr.min())}, {int(arr.max())}], {fmt_name} codes are "
                f"0..{fmt.num_codes - 1}; view signed bytes as np.uint8 / mask to the low {fmt.bits} bits"
            )
    return _lookup(fmt.decode_table, arr)


_LOOKUP_CHUNK = 1 << 14  # codes per table lookup: the index temporaries stay in cache


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table[codes]`` as a fresh C-contiguous float64 array, in cache-sized chunks (one
    whole-array lookup first widens every index to intp: a 4096 x 4096 matrix of uint8 codes
    becomes a 128 MiB temporary, and the lookup runs several times slower)."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    out = np.empty(flat.size, np.float64)
    for start in range(0, flat.size, _LOOKUP_CHUNK):
        np.take(table, flat[start:start + _LOOKUP_CHUNK], out=out[start:start + _LOOKUP_CHUNK])
    return out.reshape(codes.shape)


def float_scale(name: str, s, shapes: dict[tuple[int, int], str]) -> np.ndarray:
    arr = as_2d(name, s)
    if tuple(arr.shape) not in shapes:
        allowed = " or ".join(f"{list(k)} ({v})" for k, v in shapes.items())
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {allowed}; reshape it")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}] is {arr[tuple(bad)]}; scales must be finite")
    return arr


def bias_vector(bias, n: int) -> np.ndarray | None:
    if bias is None:
        return None
    b = np.asarray(bias, dtype=np.float64)
    if b.shape != (n,):
        raise ValueError(f"bias has shape {b.shape}, expected ({n},) (one value per output column)")
    return b


def finish(op: Operands) -> np.ndarray:
    y = op.x @ op.w
    if op.bias is not None:
        y += op.bias
    return y


def scale_groups(v: np.ndarray, s: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``v`` (float64, C-contiguous; modified in place and returned) times ``s`` broadcast over
    groups of ``size`` along ``axis`` (the last group may be partial)."""
    n = v.shape[axis]
    if n % size == 0 and v.flags.c_contiguous:
        if axis == 0:
            view = v.reshape(n // size, size, v.shape[1])
            view *= s[:, None, :]
        else:
            view = v.reshape(v.shape[0], n // size, size)
            view *= s[:, :, None]
    else:
        v *= np.repeat(s, size, axis=axis)[:n] if axis == 0 else np.repeat(s, size, axis=axis)[:, :n]
    return v


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grouped_scales(name: str, codes, fmt_name: str, shape: tuple[int, int], what: str) -> np.ndarray:
    s = fp_codes(name, codes, fmt_name)
    check_shape(name, s, shape, what)
    return s


def check_block_divides(k: int, size: int, what: str) -> None:
    if k % size:
        raise ValueError(f"K={k} must be a multiple of {size} ({what} scale one block of {size} along K); "
                         f"pad K to a multiple of {size}")
