"""Helpers shared by the bundled Triton kernels: the program-to-tile mapping (``tiles``, jit), the
one-time compiler warm-up (``warmup``, jit), configs as ``int[]`` (``config``) and the wording of
launchers' argument errors (``arguments``). Each op family's kernels live in its own folder
(``kernels/<family>/kernel.py``).

Select the device (``kernels.device.activate``) before importing a jit module (here or a
family's ``kernel.py``): on cpu the kernels must be decorated under ``TRITON_INTERPRET=1``.
"""
