"""Bundled production-style Triton kernels (importing a submodule decorates its kernels).

Select the device (``kernels.device.activate``) before importing any submodule: on cpu the
kernels must be decorated under ``TRITON_INTERPRET=1``.
"""
