"""Engine adapters (kernels.engines): importable without the engine, empty ADAPTERS with the reason;
with stand-in engine modules in sys.modules (plain torch implementations of the public
signatures) the adapters resolve, bind by keyword and pass real cases through the runner; a
stand-in whose signature drifted fails the signature check naming the parameter."""
from __future__ import annotations

import functools
import importlib
import sys
import types

import pytest
import torch

from qkcheck.cases.case import Case
from qkcheck.cases.runner import FAIL, PASS, run_case
from qkcheck.kernels import engines
from qkcheck.kernels.adapters import KernelsUnavailable
from qkcheck.kernels.catalog import resolve
from qkcheck.kernels.engines import aiter as aiter_engine
from qkcheck.kernels.engines import vllm as vllm_engine

# ------------------------------------------------------------------ stand-in engine implementations


def _per_token_int8(input, scale=None, azp=None, symmetric=True):
    """vLLM scaled_int8_quant's public contract, dynamic symmetric path, in torch."""
    if scale is not None or not symmetric:
        raise NotImplementedError("stand-in covers the dynamic symmetric path only")
    x = input.float()
    s = torch.clamp(x.abs().amax(dim=-1, keepdim=True), min=1e-10) / 127.0
    q = torch.round(x / s).clamp(-128, 127).to(torch.int8)
    return q, s, None


def _scales_2d(s, rows: bool):
    s = s.float()
    if s.numel() == 1:
        return s.reshape(1, 1)
    return s.reshape(-1, 1) if rows else s.reshape(1, -1)


def _cutlass_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias=None):
    """vLLM cutlass_scaled_mm's contract in torch: fp32 accumulate, scale, bias, cast."""
    y = (a.float() @ b.float()) * _scales_2d(scale_a, rows=True) * _scales_2d(scale_b, rows=False)
    if bias is not None:
        if bias.dtype != out_dtype:
            raise ValueError(f"bias dtype {bias.dtype} must equal out_dtype {out_dtype}")
        y = y + bias.float()
    return y.to(out_dtype)


def _recording(fn, calls: list):
    """``fn``, refusing positional arguments and recording the keywords it was called with."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if args:
            raise TypeError(f"{fn.__name__} called with {len(args)} positional argument(s)")
        calls.append(sorted(kwargs))
        return fn(**kwargs)

    return wrapper


def _package(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so submodule lookups below it are possible
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _install(monkeypatch, modules: dict[str, dict]):
    for name, attrs in modules.items():
        monkeypatch.setitem(sys.modules, name, _package(name, **attrs))


def _vllm_modules(custom_ops: dict) -> dict[str, dict]:
    return {"vllm": {}, "vllm._custom_ops": custom_ops}


def _by_name(adapters):
    return {a.name: a for a in adapters}


INT8_CASES = [Case.make("per_token_quant", shape={"m": m, "k": k},
                        params={"quant_dtype": "int8", "in_dtype": dt, "scale_ub": False}, regime=r, seed=s)
              for m, k, dt, r, s in ((5, 64, "float32", "exact", 1), (3, 40, "float16", "realistic", 2),
                                     (9, 96, "float32", "adversarial", 3))]


def _mm_case(fmt, bias, regime, seed, *, storage="nk", out="float16", b_scale="[1,N]"):
    return Case.make("scaled_mm", shape={"m": 5, "n": 32, "k": 64},
                     params={"quant_dtype": fmt, "a_scale_shape": "[M,1]", "b_scale_shape": b_scale,
                             "b_storage": storage, "azp": False, "bias": bias, "out_dtype": out},
                     regime=regime, seed=seed)


# ------------------------------------------------------------------ without the engines


@pytest.mark.parametrize("mod,package", [(vllm_engine, "vllm"), (aiter_engine, "aiter")])
def test_without_the_engine_the_module_imports_with_no_adapters_and_the_reason(mod, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    assert mod.ADAPTERS == []
    assert mod.UNAVAILABLE.startswith(f"{package} is not installed (")
    assert mod.load() == ([], mod.UNAVAILABLE)
    for spec in (mod.__name__, package):  # the module path and the short alias
        with pytest.raises(KernelsUnavailable) as info:
            resolve(spec)
        assert info.value.reason == mod.UNAVAILABLE
    assert engines.status()[package] == mod.UNAVAILABLE


def test_gate_on_a_missing_engine_is_a_visible_skip_not_an_empty_pass():
    from tests.harness.conftest import qkcheck

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    proc = qkcheck("gate", "--device", "cpu", "--kernels", "vllm", "--", "-rs", timeout=300)
    assert proc.returncode == 0, proc.stdout[-1500:]
    assert "SKIPPED" in proc.stdout and "vllm: vllm is not installed" in proc.stdout


class _BrokenEngine:
    """A meta-path finder whose engine raises on import, as an install without a GPU driver does."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "vllm":
            raise RuntimeError("no CUDA driver found")
        return None


def test_a_broken_engine_install_is_reported_with_its_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenEngine, *sys.meta_path])
    adapters, reason = vllm_engine.load()
    assert adapters == []
    assert reason == f"vllm failed to import (RuntimeError: no CUDA driver found); {vllm_engine.INSTALL_HINT}"


def test_an_engine_without_the_bound_symbols_still_yields_every_adapter(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # imports, holds nothing
    adapters, reason = vllm_engine.load()
    assert reason is None and len(adapters) == 10
    assert all(a.target is None for a in adapters)  # each call fails loudly (tested below)


# ------------------------------------------------------------------ vLLM with stand-ins


def test_vllm_stand_in_resolves_binds_by_keyword_and_passes_real_cases(monkeypatch):
    calls: list = []
    _install(monkeypatch, _vllm_modules({"scaled_int8_quant": _recording(_per_token_int8, calls),
                                         "cutlass_scaled_mm": _recording(_cutlass_scaled_mm, calls)}))
    adapters, reason = vllm_engine.load()
    assert reason is None
    by = _by_name(adapters)
    assert set(by) == {"vllm:scaled_fp8_quant", "vllm:scaled_int8_quant", "vllm:per_token_group_fp8",
                       "vllm:cutlass_scaled_mm", "vllm:awq_gemm_triton", "vllm:triton_w4a16_gemm",
                       "vllm:triton_w4a16_kernel", "vllm:w8a8_block_fp8_matmul", "vllm:triton_scaled_mm",
                       "vllm:fused_moe"}
    int8 = by["vllm:scaled_int8_quant"]
    assert int8.check_signature() is None
    for case in INT8_CASES:
        res = run_case(case, int8, "cpu")
        assert res.status == PASS, res.summary()
    assert calls[0] == ["azp", "input", "scale", "symmetric"]

    mm = by["vllm:cutlass_scaled_mm"]
    for case in (_mm_case("int8", True, "exact", 4), _mm_case("float8_e4m3fn", False, "realistic", 5),
                 _mm_case("int8", False, "adversarial", 6, b_scale="[N]")):
        res = run_case(case, mm, "cpu")
        assert res.status == PASS, res.summary()
    assert calls[-1] == ["a", "b", "bias", "out_dtype", "scale_a", "scale_b"]


def test_vllm_symbols_the_stand_in_lacks_fail_loudly_naming_what_was_tried(monkeypatch):
    _install(monkeypatch, _vllm_modules({"scaled_int8_quant": _per_token_int8}))
    by = _by_name(vllm_engine.load()[0])
    res = run_case(_mm_case("int8", False, "exact", 7), by["vllm:cutlass_scaled_mm"], "cpu")
    assert res.status == FAIL
    detail = res.failed_checks[0].detail
    assert "EngineSymbolMissing" in detail and "cutlass_scaled_mm" in detail and "vllm._custom_ops" in detail


def test_cases_outside_the_engine_api_are_named_as_such(monkeypatch):
    _install(monkeypatch, _vllm_modules({"cutlass_scaled_mm": _cutlass_scaled_mm}))
    mm = _by_name(vllm_engine.load()[0])["vllm:cutlass_scaled_mm"]
    f32 = _mm_case("int8", False, "exact", 8, out="float32")
    assert "float16 or bfloat16" in engines.unsupported(mm, f32.p)
    assert engines.unsupported(mm, _mm_case("int8", False, "exact", 8).p) is None
    res = run_case(f32, mm, "cpu")  # outside the engine's API: skipped with the reason, not failed
    assert res.status == "skip" and "float16 or bfloat16" in res.skip_reason
    # a float32 bias that float16 cannot hold is refused (a value-dependent limit, found at call time)
    # rather than rounded into another problem
    res = run_case(_mm_case("int8", True, "realistic", 9), mm, "cpu")
    assert res.status == FAIL and "not representable" in res.failed_checks[0].detail


def test_resolve_by_module_path_under_the_stand_in(monkeypatch):
    _install(monkeypatch, _vllm_modules({"scaled_int8_quant": _per_token_int8}))
    try:
        importlib.reload(vllm_engine)
        names = [a.name for a in resolve("qkcheck.kernels.engines.vllm")]
        assert "vllm:scaled_int8_quant" in names and vllm_engine.UNAVAILABLE is None
    finally:
        monkeypatch.undo()
        importlib.reload(vllm_engine)
    if importlib.util.find_spec("vllm") is None:
        assert vllm_engine.ADAPTERS == [] and vllm_engine.UNAVAILABLE


# ------------------------------------------------------------------ signature drift


def _renamed(x, scale=None, azp=None, symmetric=True):  # `input` renamed to `x`
    return _per_token_int8(x, scale, azp, symmetric)


def _reordered(input, azp=None, scale=None, symmetric=True):  # scale and azp swapped
    return _per_token_int8(input, scale, azp, symmetric)


@pytest.mark.parametrize("stand_in,want", [(_renamed, ("parameter 0 is 'x'", "binds 'input'")),
                                           (_reordered, ("parameter 1 is 'azp'", "binds 'scale'"))])
def test_vllm_signature_drift_fails_the_signature_check_naming_the_parameter(monkeypatch, stand_in, want):
    _install(monkeypatch, _vllm_modules({"scaled_int8_quant": stand_in}))
    int8 = _by_name(vllm_engine.load()[0])["vllm:scaled_int8_quant"]
    res = run_case(INT8_CASES[0], int8, "cpu")
    assert res.status == FAIL
    sig = next(c for c in res.checks if c.name == "signature")
    assert sig.outcome == FAIL and all(w in sig.detail for w in want), sig.detail


# AITER's adapters load the real package's Triton files: tests/engines/test_aiter.py


def test_a_wrong_engine_result_fails_the_numerics_through_the_adapter(monkeypatch):
    """The adapter is a faithful path to the engine: a stand-in that drops the weight scales
    (a real defect shape) is caught by the oracle, not masked by the packing."""

    def no_b_scale(a, b, scale_a, scale_b, out_dtype, bias=None):
        return _cutlass_scaled_mm(a, b, scale_a, torch.ones_like(scale_b), out_dtype, bias)

    _install(monkeypatch, _vllm_modules({"cutlass_scaled_mm": no_b_scale}))
    mm = _by_name(vllm_engine.load()[0])["vllm:cutlass_scaled_mm"]
    res = run_case(_mm_case("int8", False, "exact", 14), mm, "cpu")
    assert res.status == FAIL
    assert next(c for c in res.checks if c.name == "numerics").outcome == FAIL


def test_fnuz_cases_of_engine_kernels_are_outside_a_compiled_nvidia_run(monkeypatch):
    """Triton lowers the fnuz FP8 types only for AMD: compiled on another GPU an engine kernel
    cannot hold them, so such a case is outside the adapter's space there (with the reason), and
    runs under the interpreter and on ROCm; the adapter's own limits still apply."""
    import torch

    from qkcheck.kernels import device

    fnuz, fn = {"quant_dtype": "float8_e4m3fnuz"}, {"quant_dtype": "float8_e4m3fn"}
    inner = engines.platform_limited(lambda p: "int8 only" if p["quant_dtype"] != "int8" else None)
    monkeypatch.setattr(device, "interpreted", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert "only for AMD GPUs" in engines.fnuz_lowering_missing(fnuz)
    assert engines.fnuz_lowering_missing(fn) is None
    assert "only for AMD GPUs" in inner(fnuz) and inner(fn) == "int8 only"
    monkeypatch.setattr(torch.version, "hip", "6.4", raising=False)  # a ROCm build
    assert engines.fnuz_lowering_missing(fnuz) is None
    monkeypatch.setattr(device, "interpreted", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert engines.fnuz_lowering_missing(fnuz) is None and inner(fnuz) == "int8 only"
