"""vLLM's released Triton kernels through qkcheck (kernels/engines/vllm.py, files mode).

Runs where the vllm package files are importable (``pip install --no-deps --target DIR
vllm==0.33.0`` and DIR on PYTHONPATH); skipped with the reason elsewhere. Each test runs a few
cases in process under the Triton interpreter.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys

import numpy as np
import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("the vllm package files are not importable (pip download --no-deps vllm==0.33.0; pip install "
                "--no-deps --target DIR <wheel>; PYTHONPATH=DIR)", allow_module_level=True)

from qkcheck.cases.case import Case  # noqa: E402
from qkcheck.cases.registry import materialize  # noqa: E402
from qkcheck.cases.runner import FAIL, PASS, run_case  # noqa: E402
from qkcheck.kernels.catalog import resolve  # noqa: E402
from qkcheck.kernels.engines import vllm as engine  # noqa: E402

FILES_MODE = [a.name for a in engine.ADAPTERS]
if engine.UNAVAILABLE or "vllm:triton_w4a16_gemm" not in FILES_MODE:
    pytest.skip(f"vllm's package files did not load here: {engine.UNAVAILABLE}", allow_module_level=True)

BY = {a.name: a for a in engine.ADAPTERS}
HAS_CONVENTIONS = any(f.name == "conventions" for f in dataclasses.fields(type(engine.ADAPTERS[0])))


def _w4(m, n, k, g, zp, regime, seed, layout="gptq", config=None, act="float16"):
    return Case.make("w4a16_gemm", shape={"m": m, "n": n, "k": k},
                     params={"group_size": g, "zero_points": zp, "layout": layout, "act_dtype": act,
                             "out_dtype": act, "bias": False},
                     config=config or {}, regime=regime, seed=seed)


MOE_BASE = {"scheme": "dense", "top_k": 2, "scoring": "softmax", "renorm": False, "grouped": False, "bias": False,
            "act": "silu", "weight_on_input": False, "ep": False, "routing": "spread", "layout": "gptq", "zp": False,
            "act_dtype": "float16", "out_dtype": "float32"}


def _moe(t, e, regime, seed, config=None, h=64, i=32, **params):
    return Case.make("fused_moe", shape={"t": t, "h": h, "i": i, "e": e}, params={**MOE_BASE, **params},
                     config=config or {}, regime=regime, seed=seed)


def _status(case, adapter):
    res = run_case(case, adapter, "cpu")
    return res


# ------------------------------------------------------------------ loading


def test_files_mode_resolves_every_triton_adapter_and_leaves_no_vllm_module_behind():
    assert set(FILES_MODE) == {"vllm:triton_w4a16_gemm", "vllm:triton_w4a16_kernel", "vllm:awq_gemm_triton",
                               "vllm:w8a8_block_fp8_matmul", "vllm:per_token_group_fp8", "vllm:triton_scaled_mm",
                               "vllm:fused_moe"}
    assert [a.name for a in resolve("vllm")] == FILES_MODE
    for a in engine.ADAPTERS:
        assert a.check_signature() is None, (a.name, a.check_signature())
        assert "0.33.0" in a.description
    # the stand-ins are scoped: nothing named vllm stays in sys.modules
    assert not [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]


def test_the_stand_in_platform_refuses_what_it_does_not_model():
    with pytest.raises(AttributeError, match="does not model current_platform.get_device_capability"):
        engine.PLATFORM.get_device_capability()
    with engine.platform(fp8="float8_e4m3fnuz", rocm="gfx1x") as p:
        assert p.is_fp8_fnuz() and p.is_rocm()
    assert not engine.PLATFORM.is_rocm() and not engine.PLATFORM.is_fp8_fnuz()


# ------------------------------------------------------------------ a few gate cases per adapter pass


PASSING = {
    "vllm:triton_w4a16_gemm": [_w4(1, 64, 256, 32, False, "exact", 0), _w4(5, 32, 128, 64, True, "adversarial", 3),
                               _w4(3, 64, 256, 128, True, "realistic", 4, act="bfloat16")],
    "vllm:triton_w4a16_kernel": [_w4(1, 64, 256, 32, False, "exact", 0, config={"block_m": 16, "block_n": 32,
                                                                                  "block_k": 16}),
                                 _w4(17, 48, 128, 64, True, "adversarial", 6, config={"block_m": 16, "block_n": 16,
                                                                                       "block_k": 32})],
    "vllm:w8a8_block_fp8_matmul": [
        Case.make("block_scaled_mm", shape={"m": 17, "n": 64, "k": 192},
                  params={"quant_dtype": "float8_e4m3fn", "scale_block_k": 32, "scale_block_n": 32,
                          "a_scale_major": "row", "bias": False, "out_dtype": "float16"}, regime="exact", seed=4),
        Case.make("block_scaled_mm", shape={"m": 5, "n": 96, "k": 160},
                  params={"quant_dtype": "float8_e4m3fn", "scale_block_k": 64, "scale_block_n": 64,
                          "a_scale_major": "column", "bias": False, "out_dtype": "float32"},
                  regime="realistic", seed=5)],
    "vllm:per_token_group_fp8": [
        Case.make("per_token_group_quant", shape={"m": 7, "k": 128},
                  params={"quant_dtype": "float8_e4m3fn", "in_dtype": "float32", "group_size": 64,
                          "column_major_scales": cm, "scale_ue8m0": ue}, regime=r, seed=s)
        for cm, ue, r, s in ((False, False, "exact", 1), (True, True, "adversarial", 2), (False, True, "realistic", 3))],
    "vllm:triton_scaled_mm": [
        Case.make("scaled_mm", shape={"m": 20, "n": 64, "k": 64},
                  params={"quant_dtype": "int8", "a_scale_shape": "[M,1]", "b_scale_shape": "[N]", "b_storage": "nk",
                          "azp": False, "bias": True, "out_dtype": "float32"}, regime="exact", seed=1),
        Case.make("scaled_mm", shape={"m": 33, "n": 40, "k": 96},
                  params={"quant_dtype": "float8_e4m3fn", "a_scale_shape": "[1]", "b_scale_shape": "[N,1]",
                          "b_storage": "kn", "azp": False, "bias": False, "out_dtype": "float16"},
                  config={"block_m": 16, "block_n": 32, "block_k": 64}, regime="realistic", seed=7)],
    "vllm:fused_moe": [
        # aligned blocks, an expert map (non-local experts left out of the alignment), sigmoid top-3
        _moe(7, 8, "exact", 4, {"block_m": 16, "block_n": 16, "block_k": 32}, top_k=3, scoring="sigmoid", ep=True,
             bias=True),
        # int4 W4A16 experts with zero points (fused_moe_kernel_gptq_awq), K tiles of 64 over groups of 32
        _moe(7, 6, "exact", 10, {"block_m": 16, "block_n": 16, "block_k": 64}, scheme="w4a16", layout="nibble",
             zp=True, routing="sparse"),
        # one token, one expert: vLLM's naive one-slot-per-block assignment (no alignment), its default tiles
        _moe(1, 4, "exact", 27, top_k=1)],
}


@pytest.mark.parametrize("name", sorted(PASSING))
def test_released_kernels_pass_gate_cases(name):
    for case in PASSING[name]:
        res = _status(case, BY[name])
        assert res.status == PASS, res.summary()


def test_cases_outside_an_engine_api_are_skipped_with_the_reason():
    res = _status(_w4(1, 64, 128, 32, False, "exact", 0, layout="awq"), BY["vllm:triton_w4a16_gemm"])
    assert res.status == "skip" and "gptq" in res.skip_reason.lower()
    res = _status(Case.make("scaled_mm", shape={"m": 4, "n": 32, "k": 64},
                            params={"quant_dtype": "int8", "a_scale_shape": "[M,1]", "b_scale_shape": "[1,N]",
                                    "b_storage": "nk", "azp": False, "bias": False, "out_dtype": "float16"},
                            regime="exact", seed=1), BY["vllm:triton_scaled_mm"])
    assert res.status == "skip" and "[N, 1]" in res.skip_reason


# ------------------------------------------------------------------ classified failures


def test_fnuz_group_quant_runs_as_on_mi300_and_is_judged_under_the_declared_224_max():
    """Convention (b): get_fp8_min_max() answers +-224 for float8_e4m3fnuz (quant_utils.py)."""
    case = Case.make("per_token_group_quant", shape={"m": 11, "k": 64},
                     params={"quant_dtype": "float8_e4m3fnuz", "in_dtype": "float16", "group_size": 32,
                             "column_major_scales": True, "scale_ue8m0": False}, regime="exact", seed=104)
    adapter = BY["vllm:per_token_group_fp8"]
    assert engine.CONVENTIONS[adapter.name](case.p) == {"qmax": 224.0}
    if not HAS_CONVENTIONS:
        pytest.skip("the runner does not apply adapter conventions yet (KernelAdapter has no conventions field)")
    res = _status(case, adapter)
    assert res.status == PASS, res.summary()
    strict = dataclasses.replace(adapter, conventions={})  # undeclared: the format's 240, and the scales differ
    res = _status(case, strict)
    assert res.status == FAIL and "scales" in res.summary()


def test_awq_triton_accumulates_in_the_output_dtype():
    """Engine defect (a), docs/findings/vllm-awq-triton-fp16-accumulator.md: awq_gemm_kernel's
    accumulator is c_ptr's element type (float16 here), so every K tile's partial sum is rounded to
    float16; the output equals that simulation bit for bit and differs from the float32-accumulated
    reference the oracle expects."""
    adapter = BY["vllm:awq_gemm_triton"]
    case = _w4(1, 64, 256, 32, False, "exact", 0, layout="awq",
               config={"block_m": 16, "block_n": 32, "block_k": 16, "split_k": 2})
    res = _status(case, adapter)
    assert res.status == FAIL and next(c for c in res.checks if c.name == "numerics").outcome == FAIL
    problem = materialize(case)
    got = adapter.call(adapter.pack(problem, case.p, "cpu"), case.p, case.cfg).float().numpy()[0]
    x = np.asarray(problem["x"], np.float64)[0]
    w = (np.asarray(problem["q"]) - 8) * np.repeat(np.asarray(problem["scales"], np.float64), 32, axis=0)
    bk, sk = 16, 2
    parts = []
    for z in range(sk):
        acc = np.zeros(w.shape[1], np.float16)
        for k0 in range(z * bk, w.shape[0], bk * sk):
            acc = (acc.astype(np.float64) + x[k0:k0 + bk] @ w[k0:k0 + bk]).astype(np.float16)
        parts.append(acc)
    fp16_acc = (parts[0].astype(np.float32) + parts[1].astype(np.float32)).astype(np.float16).astype(np.float32)
    fp32_acc = (x @ w).astype(np.float16).astype(np.float32)
    assert np.array_equal(got, fp16_acc)
    assert not np.array_equal(got, fp32_acc)


# ------------------------------------------------------------------ seed 003 on the released kernel


def test_seed_003_the_clamp_of_pr_39705_is_what_keeps_the_released_kernel_right():
    """No released vllm has the pre-fix launcher (0.19.1 has no triton_w4a16.py; 0.20.0 has it with
    the clamp). The released kernel launched as the launcher before PR #39705 did (BLOCK_K 64 over
    groups of 32, RDNA's M <= 32 tile) fails, diagnosed as first-group scale per tile; the released
    launcher on the same RDNA tile table clamps BLOCK_K and passes."""
    kernel_adapter = BY["vllm:triton_w4a16_kernel"]
    mod_kernel = engine._PROVIDED["vllm." + engine.TRITON_W4A16[:-3].replace("/", ".")].triton_w4a16_gemm_kernel
    pre_fix = dataclasses.replace(kernel_adapter, name="vllm:triton_w4a16_kernel(pre-#39705)",
                                  tunables=engine.PRE_FIX_TILES,
                                  call=engine._w4_kernel_call(mod_kernel, name="vllm:triton_w4a16_kernel",
                                                              check_tiles=False))
    case = _w4(1, 64, 256, 32, False, "exact", 0, config={"block_m": 32, "block_n": 32, "block_k": 64})
    res = _status(case, pre_fix)
    assert res.status == FAIL
    assert [d["hypothesis"] for d in res.diagnosis] == ["first_group_scale_per_tile"], res.summary()
    with engine.platform(rocm="gfx1x"):  # the launcher's RDNA table picks BLOCK_K 64 at M <= 32
        res = _status(_w4(1, 64, 256, 32, False, "exact", 0), BY["vllm:triton_w4a16_gemm"])
    assert res.status == PASS, res.summary()


# ------------------------------------------------------------------ signature drift


def test_a_drifted_engine_signature_fails_the_signature_check():
    real = BY["vllm:awq_gemm_triton"].target

    def awq_gemm_triton(input, qweight, qzeros, scales, split_k_iters, block_size_m=32, block_size_n=32,
                        block_size_k=32):  # scales and qzeros swapped
        return real(input=input, qweight=qweight, scales=scales, qzeros=qzeros, split_k_iters=split_k_iters,
                    block_size_m=block_size_m, block_size_n=block_size_n, block_size_k=block_size_k)

    twin = dataclasses.replace(BY["vllm:awq_gemm_triton"], target=awq_gemm_triton)
    res = _status(_w4(1, 64, 128, 32, True, "exact", 0, layout="awq"), twin)
    sig = next(c for c in res.checks if c.name == "signature")
    assert res.status == FAIL and sig.outcome == FAIL
    assert "parameter 2 is 'qzeros'" in sig.detail and "binds 'scales'" in sig.detail


def test_awq_triton_cannot_compile_bfloat16():
    """Same defect, bf16 side: tl.dot(..., out_dtype=tl.bfloat16) is refused by Triton's front end."""
    res = _status(_w4(1, 16, 64, 32, False, "exact", 0, layout="awq", act="bfloat16",
                      config={"block_m": 16, "block_n": 16, "block_k": 32, "split_k": 1}), BY["vllm:awq_gemm_triton"])
    assert res.status == FAIL and "out_dtype=bfloat16 is unsupported" in res.summary()


# ------------------------------------------------------------------ fused MoE: qkcheck's glue around vLLM's kernel


def test_moe_alignment_stand_in_matches_vllm_s_documented_example():
    """moe_align_block_size's docstring (0.33.0): ids 1..4, block 4 -> per expert 3 slots + 1 pad."""
    import torch

    ids = torch.tensor([[2, 3, 4], [1, 2, 4], [1, 3, 4], [1, 2, 3]], dtype=torch.int32)
    sorted_ids, expert_ids, npp = engine.align_block_size_torch(ids, 4, 5)
    assert sorted_ids[:16].tolist() == [3, 6, 9, 12, 0, 4, 10, 12, 1, 7, 11, 12, 2, 5, 8, 12]
    assert expert_ids[:4].tolist() == [1, 2, 3, 4] and npp.tolist() == [16]
    emap = torch.tensor([-1, 0, -1, 1, -1], dtype=torch.int32)  # experts 1 and 3 local
    sorted_ids, expert_ids, npp = engine.align_block_size_torch(ids, 4, 5, emap, ignore_invalid_experts=True)
    assert sorted_ids[:8].tolist() == [3, 6, 9, 12, 1, 7, 11, 12] and expert_ids[:2].tolist() == [0, 1]
    sorted_ids, expert_ids, npp = engine.align_block_size_torch(ids, 4, 5, emap)  # every expert counted, -1 blocks
    assert expert_ids[:4].tolist() == [0, -1, 1, -1] and npp.tolist() == [16]


def _moe_twin(**kw):
    fn = engine._PROVIDED[engine.MOE_MODULE].dispatch_fused_moe_kernel
    return dataclasses.replace(BY["vllm:fused_moe"], call=engine._moe_call(fn, **kw))


GLUE_CASES = [
    _moe(7, 8, "exact", 4, {"block_m": 16, "block_n": 16, "block_k": 32}, top_k=3, scoring="sigmoid", ep=True,
         bias=True),
    _moe(7, 4, "exact", 9, {"block_m": 16, "block_n": 16, "block_k": 32}, scheme="w4a16", layout="awq", zp=True,
         act="swiglu"),
    _moe(7, 4, "realistic", 24, {"block_m": 16, "block_n": 16, "block_k": 32}, scheme="fp8_block"),
    _moe(7, 4, "exact", 3, top_k=1, scoring="sigmoid", weight_on_input=True),
]


def test_moe_glue_with_a_torch_launcher_passes_the_oracle():
    """The adapter's own parts (router, alignment, activation, top-k sum, packing) checked alone:
    vLLM's launcher replaced by a torch GEMM with its keywords and contract, so a failure of the
    real adapter is attributable to vLLM's kernel."""
    twin = _moe_twin(launcher=engine.torch_dispatch)
    for case in GLUE_CASES:
        res = _status(case, twin)
        assert res.status == PASS, res.summary()


def test_moe_with_a_wrong_expert_ids_mapping_fails():
    """Can-fail twin: an alignment whose blocks name the next expert (expert_ids off by one)."""
    def shifted(topk_ids, block_size, num_experts, expert_map=None, **kw):
        sorted_ids, expert_ids, npp = engine.align_block_size_torch(topk_ids, block_size, num_experts, expert_map, **kw)
        used = expert_ids >= 0
        expert_ids[used] = (expert_ids[used] + 1) % num_experts
        return sorted_ids, expert_ids, npp

    case = _moe(7, 4, "exact", 0, {"block_m": 16, "block_n": 16, "block_k": 32})
    assert _status(case, BY["vllm:fused_moe"]).status == PASS
    res = _status(case, _moe_twin(align=shifted))
    assert res.status == FAIL and next(c for c in res.checks if c.name == "numerics").outcome == FAIL
