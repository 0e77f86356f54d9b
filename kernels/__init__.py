"""The code under test and the torch boundary. Imports oracle/; never imported by it.

- ``adapters``: the adapter protocol (``KernelAdapter``), what every kernel's adapter imports;
  ``catalog``: which adapters a ``--kernels`` spec names (bundled families, zoo, engines, files).
- one folder per bundled op family (``w4a16``, ``mxfp4``, ``scaled_mm``, ``quant``, ``moe``):
  ``kernel.py`` (the Triton kernels and their launcher), ``op.py`` (the torch.library op with its
  fake), ``adapter.py`` (the adapter and the packer from the canonical problem), plus the
  family's own extras (``scaled_mm/loaders.py``, ``moe/dispatch.py``, ``moe/emulation.py``).
- ``library``: the ops' namespace and ``RegisteredOp``; ``torch_io``: dtype names and device
  copies; ``backends``: which backend ran / may run / must run; ``device``: device selection,
  the Triton mode and platform capabilities; ``probes``: interpreter defect probes.
- ``triton/``: helpers shared by the Triton kernels; ``engines/``: adapters for serving engines'
  kernels; ``zoo/``: reproduced bugs.
"""
