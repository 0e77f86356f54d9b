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
