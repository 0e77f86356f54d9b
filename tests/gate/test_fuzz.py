"""The product's fuzz suite, run in the self-tests at the budget scripts/test.sh gives."""
from qkcheck.cases.suites.test_fuzz import test_fuzz  # noqa: F401
