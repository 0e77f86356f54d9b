"""``OpReference``: everything the oracle knows about one op, as one record. Each family module of
``oracle.ops`` builds the records of its ops; ``oracle.ops`` collects them.

A record holds the op's *problem keys* (``required`` / ``optional``: the canonical NumPy inputs
and parameters a problem of the op holds; each family's docstring lists them), its reference
(``compute``: the exact float64 result of a problem), the bound a correct kernel stays within
(``bound``, derived as ``oracle.bounds`` states), its exact dequantized operands (``operands``),
its exact-regime input generator (``generate`` with ``generator_params``; ``oracle.exact``), the
facts the diagnosis reads (``scale_keys``, ``nibble_keys``, ``weight_key``, and the op's
``hypotheses`` in the order they are tried: ``oracle.diagnosis``), and how its outputs are
judged (``judge``).

Every op answers the same three calls, whatever it returns:

    ref.expect(problem, *, exact, compute_dtype, out_dtype) -> expectation
    ref.compare(expectation, actual) -> Divergence | None
    ref.diagnose(problem, actual, *, exact, compute_dtype, out_dtype, context=None) -> [Finding]

``actual`` is the op's canonical reading of a kernel's outputs: ``ref.read(expectation, outputs)``
turns the outputs as NumPy arrays (``Raw``) into it, after ``ref.unreadable(expectation, outputs,
promised)`` said they can be read. ``compute_dtype`` names what the kernel's dot runs in, and
``out_dtype`` the output dtype (float16 / bfloat16 / float32). Diagnosis hypotheses rewrite a
problem and run the same reference, so a reference must depend on nothing but its problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from qkcheck.oracle.compare import Divergence, compare
from qkcheck.oracle.formats import FORMATS
from qkcheck.oracle.numerics import round_to, wide_float

Problem = Mapping[str, object]


class Raw(NamedTuple):
    """One output of a kernel as NumPy: float outputs as float64 values (each first widened to
    float32), 8-bit floats as their bit patterns (uint8), integers as they are; ``dtype`` names
    the output's dtype (torch's name without the prefix)."""

    array: np.ndarray
    dtype: str


@dataclass(frozen=True)
class Expectation:
    """What a correct kernel must return: ``expected`` within ``bound``; ``unit`` is the output
    ULP at the expected value (the ratio unit where the bound is zero)."""

    exact_value: np.ndarray  # unrounded float64 result
    expected: np.ndarray
    bound: np.ndarray
    unit: np.ndarray
    exact_regime: bool


@dataclass(frozen=True)
class Finding:
    """A diagnosis: the hypothesis whose alternative output the kernel's output matches."""

    hypothesis: str
    sentence: str


NO_MECHANISM = Finding("no_known_mechanism", "no known mechanism matches: none of the op's bug hypotheses "
                                             "reproduces this output within its bound")


@dataclass(frozen=True)
class Judge:
    """How an op's outputs are judged, as four functions of the record (see the module docstring):
    ``VALUES`` (values within a per-element bound; every GEMM and fused_moe) or the quantization
    family's codes-and-scales judge (``oracle.ops.quant``)."""

    expect: Callable[..., Any]  # (ref, problem, *, exact, compute_dtype, out_dtype) -> expectation
    unreadable: Callable[..., str | None]  # (ref, expectation, outputs, promised dtypes) -> reason
    read: Callable[..., Any]  # (ref, expectation, outputs) -> actual
    compare: Callable[..., Divergence | None]  # (ref, expectation, actual) -> divergence


@dataclass(frozen=True)
class OpReference:
    op: str
    compute: Callable[[Problem], Any]
    judge: Judge
    # (ref, problem, actual, *, exact, compute_dtype, out_dtype, context) -> [Finding]
    diagnoser: Callable[..., list] | None = None
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    bound: Callable[[Problem, np.ndarray, str, str], np.ndarray] | None = None
    axis_names: tuple[str, str] = ("row", "column")
    operands: Callable[[Problem], Any] | None = None  # -> oracle.gemm.Operands
    # (rng, style, m, k, n, **params) -> problem; generator_params: the parameters and defaults
    generate: Callable[..., dict] | None = None
    generator_params: Mapping[str, object] = field(default_factory=dict)
    # the scale inputs: (problem key, how it is stored); kinds "float" (values), "e8m0" /
    # "e4m3" (uint8 codes), "global" (a Python float)
    scale_keys: tuple[tuple[str, str], ...] = ()
    nibble_keys: tuple[tuple[str, int], ...] = ()  # the 4-bit code inputs: (key, axis of K)
    weight_key: str | None = None  # the weight codes [K, N]
    hypotheses: tuple = ()  # oracle.diagnosis.Hypothesis records tried, in this order
    # activations x [M, K] grouped along K: the group size (for localizing an error by k-group)
    k_group_size: Callable[[Problem], int] | None = None
    # optional problem keys that are *conventions* production kernels legitimately differ on (an
    # fp8 qmax of 224, an amax floor, an int8 clamp): an adapter may declare values for them
    # (``KernelAdapter.conventions``) and the runner sets them on every problem it checks
    conventions: tuple[str, ...] = ()

    def check(self, p: Problem) -> None:
        """Raise ValueError naming missing or unknown problem keys."""
        if not isinstance(p, Mapping):
            raise TypeError(f"a {self.op} problem must be a mapping of inputs, got {type(p).__name__}")
        missing = [k for k in self.required if k not in p]
        unknown = sorted(set(p) - set(self.required) - set(self.optional))
        if missing or unknown:
            what = []
            if missing:
                what.append(f"lacks {missing}")
            if unknown:
                what.append(f"has unknown keys {unknown}")
            raise ValueError(
                f"the {self.op} problem {' and '.join(what)} (required: {', '.join(self.required)}; "
                f"optional: {', '.join(self.optional) or 'none'}); see the docstring of its oracle.ops family"
            )

    def check_conventions(self, conventions: Mapping) -> None:
        """Raise ValueError unless every key of ``conventions`` is one this op declares."""
        unknown = sorted(set(conventions) - set(self.conventions))
        if unknown:
            raise ValueError(f"convention(s) {unknown} are not conventions of {self.op} (allowed: "
                             f"{', '.join(self.conventions) or 'none: the op has no declared conventions'})")

    def expect(self, problem: Problem, *, exact: bool, compute_dtype: str, out_dtype: str):
        """What a correct kernel returns for ``problem`` (an ``Expectation`` for values)."""
        return self.judge.expect(self, problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)

    def unreadable(self, expectation, outputs: Sequence[Raw], promised: Sequence[str]) -> str | None:
        """Why ``outputs`` cannot be compared (``promised``: the contract's output dtypes), or None."""
        return self.judge.unreadable(self, expectation, outputs, promised)

    def read(self, expectation, outputs: Sequence[Raw]):
        """The canonical ``actual`` of ``outputs``: values [M, N] float64, or (codes, scales)."""
        return self.judge.read(self, expectation, outputs)

    def compare(self, expectation, actual) -> Divergence | None:
        return self.judge.compare(self, expectation, actual)

    def diagnose(self, problem: Problem, actual, *, exact: bool, compute_dtype: str, out_dtype: str,
                 context: Mapping | None = None) -> list[Finding]:
        """Every hypothesis whose alternative output ``actual`` matches (none without a diagnoser)."""
        if self.diagnoser is None:
            return []
        found = self.diagnoser(self, problem, actual, exact=exact, compute_dtype=compute_dtype,
                               out_dtype=out_dtype, context=context)
        if not found:  # said plainly, rather than left blank, when the output is wrong
            e = self.expect(problem, exact=exact, compute_dtype=compute_dtype, out_dtype=out_dtype)
            if self.compare(e, actual) is not None:
                return [NO_MECHANISM]
        return found


# ------------------------------------------------------------------ the values judge


def expect_within_bound(ref: OpReference, problem: Problem, *, exact: bool, compute_dtype: str,
                        out_dtype: str) -> Expectation:
    """Expected output and per-element bound. Exact regime: RNE(y) in the output dtype, bound 0.
    Bounded regime: y itself with the op's derived bound (±inf, bound 0, where y and all it may
    be computed as round past the output dtype's largest value: a correct kernel overflows)."""
    ref.check(problem)
    wide_float(out_dtype)  # raises naming the allowed output dtypes
    y = ref.compute(problem)
    unit = wide_float(out_dtype).ulp(y)
    rounded = round_to(y, out_dtype)
    if exact:
        return Expectation(y, rounded, np.zeros_like(y), unit, True)
    bound = ref.bound(problem, y, compute_dtype, out_dtype)
    # where y and everything within the bound round past the output's largest value, the output
    # is that infinity (oracle.bounds.output_reach gives those elements the reach 0)
    over = np.isinf(rounded) & np.isfinite(y) & (bound == 0)
    if over.any():
        y_exp = np.where(over, rounded, y)
        return Expectation(y, y_exp, np.where(over, 0.0, bound), unit, False)
    return Expectation(y, y, bound, unit, False)


def values_of(raw: Raw) -> np.ndarray:
    """float64 values of an output: 8-bit float bit patterns decoded, integers widened through
    float32 (as a kernel's output would be read)."""
    a = np.asarray(raw.array)
    if raw.dtype in FORMATS and raw.dtype.startswith("float8") and a.dtype.kind in "iu":
        return FORMATS[raw.dtype].decode_table[a]
    if a.dtype.kind == "f":
        return a.astype(np.float64, copy=False)
    return a.astype(np.float32).astype(np.float64)


def _values_unreadable(ref, expectation: Expectation, outputs, promised) -> str | None:
    if tuple(outputs[0].array.shape) != tuple(expectation.expected.shape):
        return "output shape differs; values not compared"
    return None


def _read_values(ref, expectation, outputs) -> np.ndarray:
    return values_of(outputs[0])


def _compare_values(ref: OpReference, expectation: Expectation, actual) -> Divergence | None:
    return compare(actual, expectation.expected, expectation.bound, unit=expectation.unit, axis_names=ref.axis_names)


VALUES = Judge(expect=expect_within_bound, unreadable=_values_unreadable, read=_read_values, compare=_compare_values)
