"""Every check of the runner is proven able to fail, each by a deliberately broken tiny kernel
(torch implementations of W4A16 with one defect each), and a correct one passes them all."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from qkcheck.cases.case import Case
from qkcheck.cases.runner import run_case
from qkcheck.kernels import backends
from qkcheck.kernels.adapters import KernelAdapter
from qkcheck.kernels.w4a16.adapter import W4A16
from qkcheck.kernels.torch_io import torch_dtype
from qkcheck.kernels.w4a16.kernel import LAYOUTS
from qkcheck.oracle.packing import unpack

CASE = Case.make("w4a16_gemm", shape={"m": 3, "n": 16, "k": 64},
                 params={"group_size": 32, "zero_points": True, "layout": "gptq", "act_dtype": "float16",
                         "out_dtype": "float16", "bias": True},
                 regime="exact", seed=11)


def _dequant(t, params):
    rec = LAYOUTS[params["layout"]]
    q = torch.from_numpy(unpack(t["qweight"].cpu().numpy(), rec.qweight, signed=False).astype("int64"))
    z = torch.from_numpy(unpack(t["zeros"].cpu().numpy(), rec.zeros, signed=False).astype("int64"))
    g = params["group_size"]
    s = t["scales"].float()
    return ((q - z.repeat_interleave(g, 0)) * s.repeat_interleave(g, 0)).half().float()


def torch_w4a16(t, params, config):
    """A correct tiny W4A16 kernel in torch: dequantize, fp16 weights, fp32 accumulate."""
    backends.record(backends.NATIVE)
    y = t["x"].float() @ _dequant(t, params)
    if t["bias"] is not None:
        y = y + t["bias"].float()
    return y.to(torch_dtype(params["out_dtype"]))


def _adapter(call, **kw):
    base = dict(name="test:tiny", op="w4a16_gemm", pack=W4A16.pack, call=call, layouts=("gptq",),
                tunables={}, expected_backend=backends.NATIVE)
    base.update(kw)
    return KernelAdapter(**base)


def _failed(result):
    return {c.name: c.detail for c in result.checks if c.outcome == "fail"}


def test_correct_tiny_kernel_passes_every_check():
    r = run_case(CASE, _adapter(torch_w4a16), "cpu")
    assert r.status == "pass", r.summary()
    assert {c.name for c in r.checks} >= {"signature", "contract", "numerics", "inputs_unchanged", "determinism", "backend"}


def test_wrong_output_dtype_fails_contract():
    def call(t, p, c):
        return torch_w4a16(t, p, c).float()

    assert "output dtype float32, requested float16" in _failed(run_case(CASE, _adapter(call), "cpu"))["contract"]


def test_writing_into_an_input_fails():
    def call(t, p, c):
        out = torch_w4a16(t, p, c)
        t["x"][0, 0] = 99.0
        return out

    assert "wrote into its inputs: x" in _failed(run_case(CASE, _adapter(call), "cpu"))["inputs_unchanged"]


def test_nondeterminism_fails():
    calls = {"n": 0}

    def call(t, p, c):
        calls["n"] += 1
        out = torch_w4a16(t, p, c)
        return out + (calls["n"] % 2) * 2.0**-8

    failed = _failed(run_case(CASE, _adapter(call, deterministic=True), "cpu"))
    assert "different bits" in failed["determinism"]


def test_nondeterminism_into_one_reused_buffer_fails():
    # the kernel returns the same tensor every call: the first run's bits are kept before the
    # repeat run overwrites them, so comparing the two still sees the difference
    calls = {"n": 0}
    static = {}

    def call(t, p, c):
        calls["n"] += 1
        out = torch_w4a16(t, p, c) + (calls["n"] % 2) * 2.0**-8
        buf = static.setdefault("out", torch.empty_like(out))
        buf.copy_(out)
        return buf

    failed = _failed(run_case(CASE, _adapter(call, deterministic=True), "cpu"))
    assert "different bits" in failed["determinism"]


def test_repeat_run_that_raises_fails_determinism():
    calls = {"n": 0}

    def call(t, p, c):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("second call broke")
        return torch_w4a16(t, p, c)

    failed = _failed(run_case(CASE, _adapter(call, deterministic=True), "cpu"))
    assert "the repeat run raised RuntimeError: second call broke" in failed["determinism"]


def test_out_of_bounds_read_hits_poison_and_fails_numerics():
    def call(t, p, c):
        x = t["x"]
        # reads one element past the end of each row: the padding holds NaN poison
        wide = torch.as_strided(x, (x.shape[0], x.shape[1] + 1), x.stride())
        y = torch_w4a16(dict(t, x=wide[:, 1:]), p, c)
        return y

    r = run_case(CASE, _adapter(call), "cpu")
    assert "NaN/Inf positions differ" in _failed(r)["numerics"]


def test_a_raising_kernel_is_a_recorded_failure():
    def call(t, p, c):
        raise RuntimeError("illegal memory access (simulated)")

    r = run_case(CASE, _adapter(call), "cpu")
    assert r.status == "fail" and "raised RuntimeError: illegal memory access" in _failed(r)["raised"]


def test_emulation_where_native_is_expected_fails_backend():
    def call(t, p, c):  # a dispatcher that silently fell back
        backends.record(backends.EMULATION)
        return _no_record(t, p, c)

    assert _failed(run_case(CASE, _adapter(call), "cpu"))["backend"] == "ran on emulation, native expected"


def _no_record(t, p, c):
    y = t["x"].float() @ _dequant(t, p) + t["bias"].float()
    return y.to(torch_dtype(p["out_dtype"]))


def test_signature_drift_names_the_parameter():
    def new_api(x, w, x_scale, w_scale, bias=None, dtype=None):  # `out` used to be the 5th parameter
        raise AssertionError("never called")

    adapter = _adapter(torch_w4a16, target=new_api, signature=("x", "w", "x_scale", "w_scale", "out"))
    detail = _failed(run_case(CASE, adapter, "cpu"))["signature"]
    assert "parameter 4 is 'bias' where the adapter binds 'out'" in detail


def test_fake_with_wrong_dtype_fails_fake_vs_real():
    lib = torch.library.Library("qkcheck_test", "FRAGMENT")
    lib.define("bad_fake(Tensor x) -> Tensor")
    lib.impl("bad_fake", lambda x: x.clone(), "CompositeExplicitAutograd")
    torch.library.register_fake("qkcheck_test::bad_fake", lambda x: x.new_empty(x.shape, dtype=torch.float8_e4m3fn), lib=lib)

    def call(t, p, c):  # torch ops only, so it also runs on fake tensors
        return torch.ops.qkcheck_test.bad_fake(t["x"][:, :16].clone())

    detail = _failed(run_case(CASE, _adapter(call, custom_op="qkcheck_test::bad_fake"), "cpu"))["fake_vs_real"]
    assert "fake says shape [3, 16] dtype float8_e4m3fn" in detail and "real gives shape [3, 16] dtype float16" in detail


def test_the_bundled_kernel_passes_the_same_checks():
    r = run_case(CASE, W4A16, "cpu")
    assert r.status == "pass", r.summary()
    assert any(c.name == "fake_vs_real" and c.outcome == "pass" for c in r.checks)


# -- kernels that write into a preallocated output (adapter.out_param) ------------------------

def _out_adapter(call):
    return _adapter(call, out_param="out")


def test_kernel_writing_its_given_output_passes():
    def call(t, p, c):
        t["out"].copy_(torch_w4a16(t, p, c))

    r = run_case(CASE, _out_adapter(call), "cpu")
    assert r.status == "pass", r.summary()
    assert "output_memory" in {c.name for c in r.checks}


def test_unwritten_output_elements_are_detected():
    def call(t, p, c):
        t["out"][:, :-1].copy_(torch_w4a16(t, p, c)[:, :-1])  # forgets the last column

    detail = _failed(run_case(CASE, _out_adapter(call), "cpu"))["output_memory"]
    assert "3 output element(s) were never written (first at [0, 15]" in detail


def test_out_of_bounds_output_writes_are_detected():
    def call(t, p, c):
        out = t["out"]
        out.copy_(torch_w4a16(t, p, c))
        wide = out.as_strided((out.shape[0], out.shape[1] + 1), out.stride())  # one element past each row
        wide[:, -1] = 0

    detail = _failed(run_case(CASE, _out_adapter(call), "cpu"))["output_memory"]
    assert "3 element(s) outside the output were overwritten" in detail


def test_accumulating_into_the_given_output_is_caught():
    """A kernel that adds into ``out`` instead of overwriting it (the buffer's contents leak in)."""
    def call(t, p, c):
        t["out"].add_(torch_w4a16(t, p, c))

    failed = _failed(run_case(CASE, _out_adapter(call), "cpu"))
    assert "numerics" in failed


def test_writing_past_an_input_into_its_poison_fails():
    """A write outside every input view (into the poison padding after a row of ``x``) is an
    out-of-bounds write: it fails inputs_unchanged and names the input it hit."""
    def call(t, p, c):
        out = torch_w4a16(t, p, c)
        x = t["x"]
        wide = torch.as_strided(x, (x.shape[0], x.shape[1] + 1), x.stride())
        wide[0, -1] = 0.0  # the first padding element after row 0
        return out

    detail = _failed(run_case(CASE, _adapter(call), "cpu"))["inputs_unchanged"]
    assert "wrote outside its inputs, into the poison around x (out-of-bounds writes)" in detail
    assert "wrote into its inputs" not in detail


def test_inputs_sit_in_poison_with_their_own_geometry():
    """Each input view keeps its shape and dtype, rows are padded with poison, and views of
    different dtypes share one buffer without overlapping."""
    from qkcheck.cases.runner import POISON_PAD, PoisonedInputs

    clean = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.arange(5, dtype=torch.int32),
             "c": torch.ones(2, 2, 2, dtype=torch.float8_e4m3fn), "none": None}
    inputs = PoisonedInputs(clean)
    v = inputs.views
    assert v["none"] is None
    for name in ("a", "b", "c"):
        assert v[name].dtype == clean[name].dtype and v[name].shape == clean[name].shape
        assert torch.equal(v[name].view(torch.uint8), clean[name].contiguous().view(torch.uint8))
    assert v["a"].stride() == (3 + POISON_PAD, 1)
    row_end = torch.as_strided(v["a"], (2, 4), v["a"].stride())[:, 3]
    assert torch.isnan(row_end.float()).all()
    past_b = torch.as_strided(v["b"], (6,), (1,))[5]
    assert int(past_b) == -1
    assert inputs.changed(inputs.changed_flag()) == ([], [])
    v["b"][1] = 7
    assert inputs.changed(inputs.changed_flag()) == (["b"], [])


def test_fake_vs_real_on_siblings_of_other_row_counts():
    """One fake mode serves an adapter's calls and keeps the fake inputs it made: siblings with
    another row count still get their own output shape from the fake, and a fake that is wrong
    only for some row counts is caught on those."""
    lib = torch.library.Library("qkcheck_test_rows", "FRAGMENT")
    lib.define("rows(Tensor x) -> Tensor")
    lib.impl("rows", lambda x: x[:, :16].clone(), "CompositeExplicitAutograd")
    torch.library.register_fake("qkcheck_test_rows::rows",
                                lambda x: x.new_empty((x.shape[0] if x.shape[0] != 5 else 4, 16)), lib=lib)

    def call(t, p, c):
        return torch.ops.qkcheck_test_rows.rows(t["x"])

    adapter = _adapter(call, custom_op="qkcheck_test_rows::rows")
    checks = {}
    for m in (3, 4, 5, 3):
        r = run_case(CASE.replace(shape={"m": m, "n": 16, "k": 64}), adapter, "cpu")
        checks[m] = {c.name: (c.outcome, c.detail) for c in r.checks}["fake_vs_real"]
    assert checks[3][0] == "pass" and checks[4][0] == "pass"
    assert checks[5][0] == "fail" and "fake says shape [4, 16]" in checks[5][1] and "real gives shape [5, 16]" in checks[5][1]
