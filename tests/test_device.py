"""Device selection (conftest --device) and its errors."""
from __future__ import annotations

import os

import pytest

from kernels import device


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
    import kernels.zoo.scale_group_spanning  # noqa: F401  (decorated under the interpreter here)

    monkeypatch.setattr(device, "resolve", lambda requested: "cuda")
    with pytest.raises(RuntimeError, match=r"kernels\.(triton|zoo)\..*select the device before importing kernels"):
        device.activate("cuda")
