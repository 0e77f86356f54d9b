"""The torch.library namespace of the bundled ops and the record each family lists its ops in.

Every bundled op is ``qkcheck::<op>``, registered by its family's ``kernels/<family>/op.py``
(importing that module registers them) with a real and a fake (meta) implementation. Each op
module's ``registered_ops()`` lists its ops as :class:`RegisteredOp` records, so a harness can
run real and fake on the same inputs and compare output metadata; :func:`registered_ops` here
gathers every family's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

NAMESPACE = "qkcheck"


@dataclass(frozen=True)
class RegisteredOp:
    """name: ``namespace::op``; real / fake: the Python implementations; op: the OpOverload
    (``torch.ops.qkcheck.<op>.default``) that dispatches to them."""

    name: str
    real: Callable
    fake: Callable
    op: object


def registered_ops() -> dict[str, RegisteredOp]:
    """Every bundled custom op, by name (importing the op modules registers them)."""
    from qkcheck.kernels.moe import op as moe
    from qkcheck.kernels.mxfp4 import op as mxfp4
    from qkcheck.kernels.quant import op as quant
    from qkcheck.kernels.scaled_mm import op as scaled_mm
    from qkcheck.kernels.w4a16 import op as w4a16

    return {name: rec for family in (w4a16, moe, mxfp4, quant, scaled_mm)
            for name, rec in family.registered_ops().items()}
