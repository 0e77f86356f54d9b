"""The product's gate suite, run in the self-tests (its cases: the plugin's, from --qkcheck-kernels)."""
from qkcheck.cases.suites.test_gate import test_gate, test_unavailable_kernels  # noqa: F401
