"""Op families, one module per family. Each declares, for its ops, the case space (``SPECS``: a
tuple of ``cases.spec.OpSpec``), the input regimes (``MATERIALIZERS``: op -> case -> problem), the
deterministic gate grid (``GRIDS``: op -> adapter -> cases) and the fuzzing strategy
(``STRATEGIES``: op -> adapter -> hypothesis strategy), and builds its cases with its own
``SPEC.case(...)``. A family imports ``cases.case``, ``cases.spec``, ``oracle`` and ``kernels``,
never the registry: ``cases.registry`` takes them in from ``FAMILIES`` on first use.

Adding a family: a new module here and one entry in ``FAMILIES``.
"""
from __future__ import annotations

from qkcheck.cases.families import moe, mxfp4, quant, scaled_mm, w4a16

FAMILIES = (w4a16, quant, scaled_mm, mxfp4, moe)
