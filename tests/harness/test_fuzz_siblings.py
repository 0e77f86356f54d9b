"""The fuzzer's siblings: every grid case of every bundled kernel expands into valid cases of the
same params and config, and a sibling's row count keeps Triton's integer specialization class;
under -n N each kernel is fuzzed by N streams whose counts the summary adds up."""
from __future__ import annotations

import pytest

from qkcheck.cases.fuzz import _same_class_rows, siblings
from qkcheck.cases.registry import grid, op_spec
from qkcheck.kernels.catalog import resolve
from tests.harness.conftest import qkcheck


def _class(rows: int) -> str:
    return "one" if rows == 1 else "x16" if rows % 16 == 0 else "other"


@pytest.mark.parametrize("adapter", resolve("bundled"), ids=lambda a: a.name)
def test_siblings_of_every_grid_case_are_valid(adapter):
    for case in grid(adapter):
        members = siblings(case, 16)
        assert members[0] == case and len(members) == len(set(members))
        rows_key = op_spec(case.op).shape_keys[0]
        for m in members:
            m.validate()
            assert m.p == case.p and m.cfg == case.cfg
            assert _class(m.dims[rows_key]) == _class(case.dims[rows_key])
            assert {k: v for k, v in m.dims.items() if k != rows_key} == \
                {k: v for k, v in case.dims.items() if k != rows_key}


@pytest.mark.parametrize("rows", [1, 2, 15, 16, 17, 32, 40, 48])
def test_same_class_rows(rows):
    for seed in range(200):
        other = _same_class_rows(rows, seed)
        assert other >= 1 and _class(other) == _class(rows)


@pytest.mark.slow  # a fuzz run with workers: the slow tier
def test_fuzz_runs_one_stream_per_worker_and_sums_them(tmp_path):
    r = qkcheck("fuzz", "--device", "cpu", "--kernels", "bundled:per_token_quant", "--budget", "2s", "-n", "2",
                "--fuzz-siblings", "2", "--failures-dir", tmp_path / "f")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "test_fuzz[bundled:per_token_quant-stream0]" not in r.stdout  # passing items are not listed
    line = next(x for x in r.stdout.splitlines() if x.startswith("qkcheck fuzz bundled:per_token_quant:"))
    assert "2 stream(s)" in line and "cases/s after start-up" in line, line
    assert "2 passed" in r.stdout
