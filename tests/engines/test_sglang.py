"""SGLang 0.5.23's Triton quant kernels through qkcheck (skipped where sglang is not installed)."""
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
sg = pytest.importorskip("qkcheck.kernels.engines.sglang")
if sg.UNAVAILABLE:
    pytest.skip(sg.UNAVAILABLE, allow_module_level=True)

import torch  # noqa: E402

from qkcheck.kernels.adapters import KernelAdapter  # noqa: E402


def _adapter(name):
    return next(a for a in sg.ADAPTERS if a.name == name)


def test_adapters_resolve_and_signatures_match():
    import qkcheck

    names = {a.name for a in qkcheck.resolve_kernels("sglang", device="cpu")}
    assert {"sglang:per_token_group_quant_int8", "sglang:per_token_group_quant_fp8_triton",
            "sglang:per_token_quant_int8"} <= names
    for a in sg.ADAPTERS:
        assert a.target is not None, a.description
        assert a.check_signature() is None


def test_signature_drift_is_caught():
    a = _adapter("sglang:per_token_group_quant_int8")

    def renamed(x, group_size, epsilon=1e-10, dtype=torch.int8):
        return None

    twin = KernelAdapter(name="twin", op=a.op, pack=a.pack, call=a.call, target=renamed, signature=a.signature)
    assert "parameter 2 is 'epsilon' where the adapter binds 'eps'" in twin.check_signature()


def test_fp8_group_quant_matches_rounding():
    a = _adapter("sglang:per_token_group_quant_fp8_triton")
    x = torch.tensor([[0.5, 1.49, 2.6, -127.0, 3.3, 0.2, -0.7, 1.0]])
    q, s = a.call({"x": x}, {"quant_dtype": "float8_e4m3fn", "group_size": 4, "column_major_scales": False,
                             "scale_ue8m0": False}, {})
    ref = (x.view(2, 4) / s.view(2, 1)).clamp(-448, 448).to(torch.float8_e4m3fn).view(1, 8)
    assert torch.equal(q.float(), ref.float())


def test_int8_group_quant_truncates_finding():
    """docs/findings/sglang-int8-group-quant-truncates.md: a real bug, kept failing in the gate."""
    a = _adapter("sglang:per_token_group_quant_int8")
    x = torch.tensor([[0.5, 1.49, 2.6, -127.0, 3.3, 0.2, -0.7, 1.0]])
    q, s = a.call({"x": x}, {"quant_dtype": "int8", "group_size": 4, "column_major_scales": False,
                             "scale_ue8m0": False}, {})
    v = x.view(2, 4) / s.view(2, 1)
    assert torch.equal(q.view(2, 4), v.trunc().to(torch.int8))      # what 0.5.23 does
    assert not torch.equal(q.view(2, 4), v.round().to(torch.int8))  # what a rounding quantizer gives


def test_gate_int8_fails_and_fp8_passes():
    import qkcheck

    res = {}
    for name in ("sglang:per_token_group_quant_int8", "sglang:per_token_group_quant_fp8_triton"):
        a = _adapter(name)
        cases = list(qkcheck.gate_cases(a))[:2]
        res[name] = [r.status for r in qkcheck.run_cases(cases, [a], device="cpu")]
    assert res["sglang:per_token_group_quant_int8"] and set(res["sglang:per_token_group_quant_int8"]) == {"fail"}
    assert set(res["sglang:per_token_group_quant_fp8_triton"]) == {"pass"}


def _gate(name, n=None, where=lambda c: True):
    import qkcheck

    a = _adapter(name)
    cases = [c for c in qkcheck.gate_cases(a) if where(c)][:n]
    return cases, qkcheck.run_cases(cases, [a], device="cpu")


def test_gemm_adapters_resolve():
    names = {a.name for a in sg.ADAPTERS}
    assert {"sglang:w8a8_block_fp8_matmul", "sglang:triton_scaled_mm"} <= names
    for name in ("sglang:w8a8_block_fp8_matmul", "sglang:triton_scaled_mm"):
        a = _adapter(name)
        assert a.target is not None and a.check_signature() is None, a.description


def test_block_fp8_matmul_passes_gate_cases():
    cases, res = _gate("sglang:w8a8_block_fp8_matmul", 4)
    assert len(res) == 4 and {r.status for r in res} == {"pass"}, [r.summary() for r in res]


def test_triton_scaled_mm_passes_without_bias():
    cases, res = _gate("sglang:triton_scaled_mm", 4, where=lambda c: not c.p["bias"])
    assert {c.p["quant_dtype"] for c in cases} >= {"int8"}
    assert {r.status for r in res} == {"pass"}, [r.summary() for r in res]


def test_triton_scaled_mm_bias_after_cast_fails_as_classified():
    """docs/findings/sglang-triton-scaled-mm-bias-after-cast.md: the bias is added after the accumulator is
    converted to the 16-bit output dtype (a second rounding the scaled_mm bound does not model). The failing
    gate case fails its numerics only; the same case without the bias passes."""
    cases, res = _gate("sglang:triton_scaled_mm", 1, where=lambda c: c.p["bias"] and c.regime == "exact"
                       and c.p["out_dtype"] == "bfloat16" and c.p["quant_dtype"] == "int8")
    (r,) = res
    assert r.status == "fail" and [c.name for c in r.failed_checks] == ["numerics"], r.summary()
    import qkcheck

    twin = cases[0].replace(params={**cases[0].p, "bias": False})
    (r2,) = qkcheck.run_cases([twin], [_adapter("sglang:triton_scaled_mm")], device="cpu")
    assert r2.status == "pass", r2.summary()


def test_gemm_signature_drift_is_caught():
    a = _adapter("sglang:w8a8_block_fp8_matmul")

    def renamed(A, B, As, Bs, block_shape, output_dtype=torch.float16):
        return None

    twin = KernelAdapter(name="twin", op=a.op, pack=a.pack, call=a.call, target=renamed, signature=a.signature)
    assert "block_shape" in (twin.check_signature() or "")


def test_triton_scaled_mm_gets_the_bias_in_the_output_dtype():
    """The kernel adds the bias after converting the accumulator; compiled Triton refuses a bias of another
    dtype there, so call hands it over in out_dtype. A bias that would round there is refused (the case
    would no longer be the one judged), never rounded silently."""
    from qkcheck.kernels.engines import EngineUnsupported

    seen = {}

    def fake(*, input, weight, scale_a, scale_b, out_dtype, bias, **kw):
        seen["bias"] = bias
        return torch.zeros(input.shape[0], weight.shape[1], dtype=out_dtype)

    call = sg._tsm_call(fake)
    params = dict(azp=False, b_storage="kn", out_dtype="bfloat16")
    t = {"a": torch.zeros(2, 4, dtype=torch.int8), "b": torch.zeros(4, 3, dtype=torch.int8),
         "a_scale": torch.ones(1), "b_scale": torch.ones(1), "bias": torch.tensor([1.0, -2.5, 0.125])}
    call(t, params, {})
    assert seen["bias"].dtype == torch.bfloat16 and seen["bias"].tolist() == [1.0, -2.5, 0.125]
    t["bias"] = torch.tensor([1.0, 1.0 + 2.0**-12, 0.0])  # not a bfloat16 value
    with pytest.raises(EngineUnsupported, match="not representable"):
        call(t, params, {})


def test_files_mode_binds_the_triton_path_of_the_quant_files(monkeypatch):
    """On CUDA, SGLang's quant files bind its JIT CUDA kernels (needing its full install) in place of the
    Triton ones the adapters bind: in files mode those files see is_cuda() False, also where torch has a GPU;
    the GEMM file keeps the real answer."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert sg._stand_in_modules(triton_path=True)["sglang.srt.utils"].is_cuda() is False
    assert sg._stand_in_modules(triton_path=False)["sglang.srt.utils"].is_cuda() is True
    assert set(sg.TRITON_PATH_FILES) == {sg.INT8_KERNEL, sg.FP8_KERNEL}


def _roundf_twin(conventions):
    """SGLang's per_token_quant_int8 arithmetic in torch (x * (127 / absmax), absmax floored at 1e-10, codes
    rounded half away from zero as libdevice.round does), as an adapter with the given conventions: the
    interpreter cannot run the kernel itself (tl.extra.cuda.libdevice.round), a GPU can."""
    a = _adapter("sglang:per_token_quant_int8")

    def call(t, params, config):
        x = t["x"].float()
        absmax = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-10)
        q = x * (127 / absmax)
        return (torch.sign(q) * torch.floor(q.abs() + 0.5)).to(torch.int8), absmax / 127

    return KernelAdapter(name="roundf_twin", op=a.op, pack=a.pack, call=call, conventions=conventions)


def test_per_token_quant_int8_ties_away_is_the_declared_convention():
    """The case that failed compiled on an H100 (78 / 448 codes, ties only, diagnosed ties_away_from_zero)
    passes with the adapter's declared int_ties='away' and fails, the same way, without it."""
    import qkcheck
    from qkcheck.cases.case import Case

    assert _adapter("sglang:per_token_quant_int8").conventions_for({"quant_dtype": "int8"}) == {"int_ties": "away"}
    case = Case.from_dict({"schema": 1, "op": "per_token_quant", "shape": {"m": 7, "k": 64},
                           "params": {"in_dtype": "float32", "quant_dtype": "int8", "scale_ub": False},
                           "config": {}, "regime": "adversarial", "seed": 5})
    (declared,) = qkcheck.run_cases([case], [_roundf_twin({"int_ties": "away"})], device="cpu")
    (strict,) = qkcheck.run_cases([case], [_roundf_twin({})], device="cpu")
    assert declared.status == "pass", declared.summary()
    assert strict.status == "fail" and [c.name for c in strict.failed_checks] == ["numerics"], strict.summary()
    # as on the H100: 78 of 448 codes off by one step, all ties, named by the ties_away_from_zero hypothesis
    assert "Mismatched elements: 78 / 448" in strict.summary() and "rounded away from zero" in strict.summary()


def test_triton_scaled_mm_bias_after_cast_is_reproduced_bit_for_bit():
    """docs/findings/sglang-triton-scaled-mm-bias-after-cast.md, bit for bit: on every 16-bit-output bias case
    of the exact regime in the gate, the kernel's output is RNE_o(RNE_o(s_b * RNE32(s_a * acc)) + bias) (the
    accumulator scaled in float32 in the kernel's order, converted, then the bias added in the output dtype),
    element for element; and on the failing ones that differs from the single rounding the oracle expects."""
    import numpy as np

    import qkcheck
    from qkcheck.cases.registry import materialize
    from qkcheck.oracle.formats import FORMATS

    a = _adapter("sglang:triton_scaled_mm")
    cases = [c for c in qkcheck.gate_cases(a)
             if c.p["bias"] and c.regime == "exact" and c.p["out_dtype"] in ("float16", "bfloat16")]
    assert len(cases) >= 4
    differ = 0
    for case in cases:
        prob, qd = materialize(case), case.p["quant_dtype"]
        out = a.call(a.pack(prob, case.p, "cpu"), case.p, case.cfg)
        dec = (lambda v: np.asarray(v, np.float64)) if qd == "int8" else (
            lambda v: FORMATS[qd].decode_table[np.asarray(v)].astype(np.float64))
        acc = dec(prob["a"]) @ dec(prob["b"])  # exact regime: exact in the kernel's int32 / float32 accumulator
        f32 = lambda v: torch.from_numpy(np.array(v, np.float64)).float()  # noqa: E731
        x = f32(np.broadcast_to(prob["b_scale"], acc.shape)) * (f32(np.broadcast_to(prob["a_scale"], acc.shape))
                                                                * f32(acc))
        o = out.dtype
        model = (x.to(o).float() + f32(prob["bias"]).to(o).float()).to(o)
        assert torch.equal(out, model), case
        once = (torch.from_numpy(acc * np.asarray(prob["a_scale"]) * np.asarray(prob["b_scale"])
                                 + np.asarray(prob["bias"])).float()).to(o)
        differ += not torch.equal(out, once)
    assert differ >= 4, differ  # the gate's failures are this double rounding, nothing else
