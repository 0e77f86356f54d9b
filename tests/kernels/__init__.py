"""Tests of the bundled kernels, their custom ops and the interpreter probes."""
