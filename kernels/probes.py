"""Probes for known defects of the Triton CPU interpreter (``TRITON_INTERPRET=1``).

Each probe launches a tiny Triton kernel whose only correct output is known exactly and reports
two columns: whether the raw interpreter gets it wrong (``defective``, ``detail``), and whether it
is still wrong under qkcheck's correction layer (``kernels.interpreter``) as installed in this
process (``corrected_defective``, ``corrected_detail``). Tests ask :func:`skip_reason` whether a
case is checkable here; a case is skipped (with the probe's evidence in the reason) only when a
probe that affects it still finds a defect after correction, so the correction, or a fixed
interpreter, turns those cases back on by itself. Where the correction is not installed (a Triton
it does not know), the second column repeats the first and the skip reason says why.

Defects probed (all seen in the raw Triton 3.9.0 and 3.6.0 interpreters):

- ``bf16_arithmetic``: elementwise bf16 ``a * b + a`` (bf16 is held as raw uint16 bits);
- ``bf16_dot``: ``tl.dot`` on bf16 operands (integer matmul of the bit patterns);
- ``bf16_conversion``: float32 -> bfloat16 ``.to()`` truncates (rounds toward zero) instead of
  rounding to nearest even, so a bf16 output of a value that is not exactly representable is off
  by one bf16 ULP (bf16 loads, bf16 -> float32 and bf16 stores of bf16 values are right);
- ``fp8_conversion``: float32 -> fp8 ``.to()`` does not round to nearest even nor saturate like
  compiled Triton (golden rows for float8_e4m3fn, float8_e5m2, float8_e4m3fnuz, float8_e5m2fnuz);
- ``tensor_index``: a scalar tensor used as a Python int (``range`` with tensor bounds) raises
  ``TypeError: only 0-dimensional arrays can be converted to Python scalars`` in the Triton 3.6
  interpreter under NumPy >= 2.5 (it converts a shape-(1,) array with ``int``); the correction
  fixes it. Which cases it hits cannot be told before they run, so nothing is skipped up front:
  a kernel that raises the very exception this probe saw, while the probe is still defective, is
  skipped with the probe's evidence instead of failing (:func:`defect_raised`);
- ``unchecked_oob_load``: an unmasked load past the end of a tensor returns neighbouring memory
  instead of failing, so the interpreter cannot show a missing mask (canaries must). The
  correction does not address it (it is not numerics); no dtype's cases are skipped for it.

Under compiled Triton (a real GPU) nothing is launched and every probe reports not defective.
The probe kernels are decorated on first use, so importing this module is safe in either mode.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from qkcheck.kernels import interpreter

__all__ = ["ProbeResult", "PROBES", "probe_results", "skip_reason", "defect_raised"]

# what a probe's defect makes uncheckable; skip_reason maps case properties onto these
AFFECTS_BF16 = "bf16 compute"
AFFECTS_BF16_OUTPUT = "bf16 output"
AFFECTS_FP8 = "fp8 output"
AFFECTS_MASKS = "out-of-bounds masking"
AFFECTS_RAISES = "kernels raising the probe's exception"

# compute dtype spellings accepted by skip_reason -> the category they fall under (None: none)
_COMPUTE_CATEGORIES = {
    "bf16": AFFECTS_BF16, "bfloat16": AFFECTS_BF16,
    "fp16": None, "float16": None, "fp32": None, "float32": None,
}
# output dtype spellings accepted by skip_reason -> category (fp8 outputs go through fp8_output)
_OUTPUT_CATEGORIES = {
    "bf16": AFFECTS_BF16_OUTPUT, "bfloat16": AFFECTS_BF16_OUTPUT,
    "fp16": None, "float16": None, "fp32": None, "float32": None,
}


@dataclass(frozen=True)
class ProbeResult:
    """name: probe id; what: the operation probed; defective: the raw interpreter got it wrong;
    detail: expected vs seen there; affects: the kind of case the defect makes uncheckable;
    corrected_defective / corrected_detail: the same under qkcheck's correction as installed in
    this process (equal to the raw column where it is not installed or does not cover the probe).
    """

    name: str
    what: str
    defective: bool
    detail: str
    affects: str
    corrected_defective: bool
    corrected_detail: str
    raised: tuple[str, ...] = ()  # "Type: message" of each exception the probe's kernels raised (corrected column)


@dataclass(frozen=True)
class _Probe:
    name: str
    what: str
    affects: str
    run: object  # () -> (defective: bool, detail: str)
    corrected: bool = True  # the correction layer covers this operation


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels():
    """Probe kernels, decorated on first use (Triton reads TRITON_INTERPRET at decoration)."""
    import triton
    import triton.language as tl

    @triton.jit
    def fma_kernel(a_ptr, b_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs)
        b = tl.load(b_ptr + offs)
        tl.store(out_ptr + offs, a * b + a)

    @triton.jit
    def dot_kernel(a_ptr, b_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tile = offs[:, None] * BLOCK + offs[None, :]
        acc = tl.dot(tl.load(a_ptr + tile), tl.load(b_ptr + tile), out_dtype=tl.float32)
        tl.store(out_ptr + tile, acc)

    @triton.jit
    def convert_kernel(src_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(src_ptr + offs).to(out_ptr.dtype.element_ty))

    @triton.jit
    def copy_kernel(src_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(src_ptr + offs))  # deliberately unmasked

    @triton.jit
    def index_kernel(out_ptr, END: tl.constexpr):
        begin = tl.program_id(0) + 1  # a scalar tensor used as a Python int by range()
        count = 0
        for _ in range(begin, END):
            count += 1
        tl.store(out_ptr, count)

    return fma_kernel, dot_kernel, convert_kernel, copy_kernel, index_kernel


_BLOCK = 16


def _probe_bf16_arithmetic():
    import torch

    fma_kernel = _kernels()[0]
    a = torch.full((_BLOCK,), 1.5, dtype=torch.bfloat16)
    b = torch.full((_BLOCK,), 2.0, dtype=torch.bfloat16)
    out = torch.empty(_BLOCK, dtype=torch.bfloat16)
    fma_kernel[(1,)](a, b, out, BLOCK=_BLOCK)
    expected = 4.5  # 1.5 * 2.0 + 1.5, exact in bf16
    seen = out.float().tolist()
    bad = [v for v in seen if v != expected]
    return bool(bad), f"1.5 * 2.0 + 1.5 in bf16: expected {expected}, got {bad[0] if bad else expected}"


def _probe_bf16_dot():
    import torch

    dot_kernel = _kernels()[1]
    a = torch.full((_BLOCK, _BLOCK), 0.125, dtype=torch.bfloat16)
    b = torch.full((_BLOCK, _BLOCK), 1.5, dtype=torch.bfloat16)
    out = torch.empty((_BLOCK, _BLOCK), dtype=torch.float32)
    dot_kernel[(1,)](a, b, out, BLOCK=_BLOCK)
    expected = 3.0  # 16 * 0.125 * 1.5, exact in bf16 operands and fp32 accumulation
    bad = out[out != expected]
    got = bad[0].item() if bad.numel() else expected
    return bool(bad.numel()), f"16x16 bf16 tl.dot of 0.125 and 1.5: expected {expected}, got {got:g}"


# (input, correct bfloat16 value, why) — bf16: 7 mantissa bits, spacing 2**-7 in [1, 2)
_BF16_GOLDEN = (
    (1.0 + 3 * 2**-9, 1.0 + 2**-7, "3/4 of the way from 1.0 to 1 + 2**-7; nearest is 1 + 2**-7"),
    (-(1.0 + 3 * 2**-9), -(1.0 + 2**-7), "the same, negative"),
    (1.0 + 3 * 2**-8, 1.0 + 2**-6, "tie between 1 + 2**-7 (odd mantissa) and 1 + 2**-6; RNE picks the even one"),
)


def _convert_golden(golden, dtype, name):
    import torch

    convert_kernel = _kernels()[2]
    src = torch.zeros(_BLOCK, dtype=torch.float32)
    src[: len(golden)] = torch.tensor([row[0] for row in golden], dtype=torch.float32)
    out = torch.empty(_BLOCK, dtype=dtype)
    convert_kernel[(1,)](src, out, BLOCK=_BLOCK)
    seen = out.float().tolist()
    wrong = [
        f"{value!r} -> expected {expected!r}, got {got!r}"
        for (value, expected, _why), got in zip(golden, seen) if got != expected
    ]
    if wrong:
        return True, f"float32 -> {name}: " + "; ".join(wrong)
    return False, f"float32 -> {name} rounds to nearest even on all golden rows"


def _probe_bf16_conversion():
    import torch

    return _convert_golden(_BF16_GOLDEN, torch.bfloat16, "bfloat16")


# (input, correct value, why) per fp8 format, the value compiled Triton stores (sm_90
# cvt.rn.satfinite for the OCP formats; AMD's saturating conversion for fnuz; kernels.interpreter)
_FP8_GOLDEN = {
    # e4m3fn: 3 mantissa bits, bias 7, min subnormal 2**-9, max 448
    "float8_e4m3fn": (
        (31.6, 32.0, "between 30 and 32 (spacing 2 in [16, 32)); nearest is 32"),
        (1.0625, 1.0, "tie between 1.0 and 1.125 (spacing 1/8); RNE keeps the even mantissa 1.0"),
        (0.001, float.fromhex("0x1p-9"), "above half the min subnormal 2**-9, so it rounds up to 2**-9"),
        (500.0, 448.0, "beyond max 448 + 16: compiled Triton saturates (cvt.rn.satfinite) to 448"),
    ),
    # e5m2: 2 mantissa bits, bias 15, max 57344, has inf
    "float8_e5m2": (
        (1.125, 1.0, "tie between 1.0 and 1.25 (spacing 1/4); RNE keeps the even mantissa 1.0"),
        (1e5, 57344.0, "beyond max 57344 + 4096: satfinite gives 57344, not inf"),
    ),
    # e4m3fnuz: bias 8, max 240, 0x80 is the only NaN (no -0)
    "float8_e4m3fnuz": (
        (1.0625, 1.0, "tie between 1.0 and 1.125; RNE keeps 1.0"),
        (300.0, 240.0, "beyond max 240 + 8: saturates to 240"),
        (-1e-4, 0.0, "rounds to zero; fnuz has no -0, so +0 (0x80 would be NaN)"),
    ),
    # e5m2fnuz: bias 16, max 57344
    "float8_e5m2fnuz": (
        (1.125, 1.0, "tie between 1.0 and 1.25; RNE keeps 1.0"),
        (1e5, 57344.0, "beyond max 57344 + 4096: saturates to 57344"),
    ),
}


def _probe_fp8_conversion():
    import torch

    wrong, raised = [], []
    for name, golden in _FP8_GOLDEN.items():
        try:
            defective, detail = _convert_golden(golden, getattr(torch, name), name)
        except Exception as exc:  # this interpreter cannot convert to the format at all
            defective, detail = True, f"float32 -> {name}: the probe kernel raised {type(exc).__name__}: {exc}"
            raised.append(_signature(exc))
        if defective:
            wrong.append(detail)
    if wrong:
        return True, "; ".join(wrong), raised
    return False, f"float32 -> {', '.join(_FP8_GOLDEN)} round to nearest even and saturate on all golden rows"


def _probe_unchecked_oob_load():
    import torch

    copy_kernel = _kernels()[3]
    backing = torch.arange(2 * _BLOCK, dtype=torch.float32)  # the view's neighbours hold 16..31
    view = backing[:_BLOCK // 2]
    out = torch.full((_BLOCK,), -1.0)
    try:
        copy_kernel[(1,)](view, out, BLOCK=_BLOCK)
    except Exception as exc:  # a checked load: the interpreter refused the out-of-bounds access
        return False, f"an unmasked load of {_BLOCK} elements from an {_BLOCK // 2}-element tensor raised {type(exc).__name__}"
    tail = out[_BLOCK // 2:].tolist()
    return True, (
        f"an unmasked load of {_BLOCK} elements from an {_BLOCK // 2}-element tensor did not fail and "
        f"returned the neighbouring memory {tail[:4]}... (expected an error)"
    )


def _probe_tensor_index():
    import torch

    index_kernel = _kernels()[4]
    out = torch.full((1,), -1, dtype=torch.int32)
    index_kernel[(1,)](out, END=4)  # an exception here is the defect (_launch records it)
    got = int(out.item())
    return got != 3, f"a loop over range(program_id + 1, 4) ran {got} times (expected 3)"


PROBES: tuple[_Probe, ...] = (
    _Probe("bf16_arithmetic", "bf16 arithmetic", AFFECTS_BF16, _probe_bf16_arithmetic),
    _Probe("bf16_dot", "bf16 tl.dot", AFFECTS_BF16, _probe_bf16_dot),
    _Probe("bf16_conversion", "float32 -> bf16 conversion", AFFECTS_BF16_OUTPUT, _probe_bf16_conversion),
    _Probe("fp8_conversion", "float32 -> fp8 conversion", AFFECTS_FP8, _probe_fp8_conversion),
    _Probe("tensor_index", "a scalar tensor as a Python int (range with tensor bounds)", AFFECTS_RAISES,
           _probe_tensor_index),
    _Probe("unchecked_oob_load", "out-of-bounds load checking", AFFECTS_MASKS, _probe_unchecked_oob_load,
           corrected=False),
)


def _launch(probe: _Probe) -> tuple[bool, str, tuple[str, ...]]:
    """(defective, detail, raised): raised holds the innermost exception's "Type: message" of each
    probe kernel that raised (the interpreter wraps what a kernel raises in InterpreterError); a
    probe's run() returns (defective, detail) or, when it catches exceptions itself, also those."""
    try:
        defective, detail, *raised = probe.run()
        return defective, detail, tuple(raised[0]) if raised else ()
    except Exception as exc:  # the probe kernel itself does not run: the operation is unusable
        return True, f"the probe kernel raised {type(exc).__name__}: {exc}", (_signature(exc),)


def _signature(exc: BaseException) -> str:
    root = _innermost(exc)
    return f"{type(root).__name__}: {root}"


def _innermost(exc: BaseException) -> BaseException:
    """The last explicit cause (``raise ... from``) of ``exc``: the error a wrapper re-raised."""
    *_, root = _chain(exc, causes_only=True)
    return root


def _chain(exc: BaseException, *, causes_only: bool = False):
    """``exc`` and the exceptions behind it (its cause, else its context; only causes with
    ``causes_only``), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if causes_only else (exc.__cause__ or exc.__context__)


def _run(probe: _Probe) -> ProbeResult:
    if not interpreting():
        not_run = "not run: compiled Triton (TRITON_INTERPRET is not 1)"
        return ProbeResult(probe.name, probe.what, False, not_run, probe.affects, False, not_run)
    with interpreter.bypassed():
        defective, detail, raised = _launch(probe)
    correction = interpreter.status()
    if not correction.installed:
        corrected = defective, f"not corrected ({correction.reason}): {detail}", raised
    elif not probe.corrected:
        corrected = defective, f"outside qkcheck's correction: {detail}", raised
    else:
        corrected = _launch(probe)
    return ProbeResult(probe.name, probe.what, defective, detail, probe.affects, *corrected)


@functools.cache
def _results(correction) -> tuple[ProbeResult, ...]:
    """Every probe's result; run once per process and ``interpreter.status()`` (the key)."""
    return tuple(_run(probe) for probe in PROBES)


def probe_results() -> dict[str, ProbeResult]:
    """Every probe's result by name; the probes run once per process and state of the
    correction (cached)."""
    return {result.name: result for result in _results(interpreter.status())}


def _triton_version() -> str:
    import triton

    return triton.__version__


def skip_reason(*, compute_dtype: str, fp8_output: bool, output_dtype: str | None = None) -> str | None:
    """Why a case cannot be checked here, or None when it can.

    compute_dtype: the dtype the kernel computes in (``"fp16"``/``"float16"``, ``"bf16"``/
    ``"bfloat16"``, ``"fp32"``/``"float32"``); fp8_output: the case stores an fp8 result;
    output_dtype: the (non-fp8) output dtype, same spellings, or None when it does not matter.
    Only probes still defective under the correction count. The sentence names each with its
    evidence, e.g. ``"Triton 3.10.0 interpreter: bf16 tl.dot is wrong (probe bf16_dot: ...);
    bf16 compute cases run only compiled (qkcheck's interpreter correction is off: ...)"``.
    """
    if compute_dtype not in _COMPUTE_CATEGORIES:
        raise ValueError(
            f"compute_dtype={compute_dtype!r} is not a dtype the probes know "
            f"(allowed: {', '.join(_COMPUTE_CATEGORIES)}); pass the kernel's compute dtype"
        )
    if output_dtype is not None and output_dtype not in _OUTPUT_CATEGORIES:
        raise ValueError(
            f"output_dtype={output_dtype!r} is not a dtype the probes know "
            f"(allowed: {', '.join(_OUTPUT_CATEGORIES)}, or None); fp8 outputs use fp8_output=True"
        )
    categories = {_COMPUTE_CATEGORIES[compute_dtype], _OUTPUT_CATEGORIES.get(output_dtype)}
    if fp8_output:
        categories.add(AFFECTS_FP8)
    hits = [r for r in _results(interpreter.status()) if r.corrected_defective and r.affects in categories]
    if not hits:
        return None
    affected = " and ".join(sorted({r.affects for r in hits}))
    correction = interpreter.status()
    if correction.installed:
        findings = "; ".join(f"{r.what} is wrong even under qkcheck's correction (probe {r.name}: "
                             f"{r.corrected_detail})" for r in hits)
        return f"Triton {_triton_version()} interpreter: {findings}; {affected} cases run only compiled"
    findings = "; ".join(f"{r.what} is wrong (probe {r.name}: {r.detail})" for r in hits)
    return (f"Triton {_triton_version()} interpreter: {findings}; {affected} cases run only compiled "
            f"(qkcheck's interpreter correction is off: {correction.reason})")


def defect_raised(exc: BaseException) -> str | None:
    """The skip reason when ``exc`` (a kernel's exception, anywhere in its cause chain) is the
    exception a probe's kernel raised and that probe is still defective here (under the
    correction where installed), else None: such a failure is the interpreter's, not the
    kernel's. Under compiled Triton nothing is probed and this is always None."""
    if not interpreting():
        return None
    signatures = {raised: r for r in _results(interpreter.status()) if r.corrected_defective for raised in r.raised}
    for link in _chain(exc):
        seen = f"{type(link).__name__}: {link}"
        hit = signatures.get(seen)
        if hit is not None:
            return (f"Triton {_triton_version()} interpreter: {hit.what} raises {seen} "
                    f"(probe {hit.name}: {hit.corrected_detail}); the kernel raised the same, so the case "
                    f"runs only compiled")
    return None
