"""The truth: pure-NumPy formats, quantization schemes, references, error bounds, the one
comparison engine and the diagnosis catalogue. Never imports torch or triton (a test checks)."""

from qkcheck.oracle.compare import Divergence, compare  # noqa: E402

__all__ = ["Divergence", "compare"]
