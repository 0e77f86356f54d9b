"""Device selection (conftest --device) and its errors."""
from __future__ import annotations

import os

import pytest

from qkcheck.kernels import device


def test_auto_on_a_machine_without_gpu_is_cpu_and_interprets(device):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert device == "cpu"
    assert os.environ.get("TRITON_INTERPRET") == "1"


def test_unknown_device_is_refused_with_the_allowed_list():
    with pytest.raises(ValueError, match=r"device='tpu'.*allowed: auto, cpu, cuda, xpu"):
        device.resolve("tpu")


def test_cpu_native_fp8_is_ocp_fn():
    assert device.native_fp8_format("cpu") == "float8_e4m3fn"


def test_switching_mode_after_kernels_are_decorated_is_refused(monkeypatch):
    import qkcheck.kernels.zoo.scale_group_spanning  # noqa: F401  (decorated under the interpreter here)

    monkeypatch.setattr(device, "resolve", lambda requested: "cuda")
    with pytest.raises(RuntimeError,
                       match=r"kernels\.(\w+\.kernel|triton\.\w+|zoo\.\w+)'.*select the device before importing kernels"):
        device.activate("cuda")


@pytest.mark.parametrize("module,decorates", [
    ("qkcheck.kernels.w4a16.kernel", True),  # a family's Triton kernels
    ("qkcheck.kernels.moe.kernel", True),
    ("qkcheck.kernels.triton.tiles", True),  # shared jit helpers
    ("qkcheck.kernels.zoo.scale_group_spanning", True),  # the zoo's kernel copies
    ("qkcheck.kernels.w4a16.op", False),  # ops, adapters and the rest decorate nothing themselves
    ("qkcheck.kernels.w4a16.adapter", False),
    ("qkcheck.kernels.catalog", False),
    ("qkcheck.kernels.device", False),
], ids=lambda v: v if isinstance(v, str) else None)
def test_modules_that_decorate_kernels_are_recognized(module, decorates):
    assert device._decorates_kernels(module) is decorates


def test_xdist_workers_spread_over_the_gpus_of_a_host(monkeypatch):
    import torch

    from qkcheck.kernels import device as dev

    taken = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", taken.append)
    got = [dev.assign_worker_gpu("cuda", f"gw{i}") for i in range(6)]
    assert got == [0, 1, 2, 3, 0, 1] and taken == got
    assert dev.assign_worker_gpu("cuda", None) is None  # not under xdist
    assert dev.assign_worker_gpu("cpu", "gw3") is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.assign_worker_gpu("cuda", "gw3") is None  # one GPU (or pinned by the CI job): left alone
