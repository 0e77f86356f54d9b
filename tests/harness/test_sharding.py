"""The README's CI recipe, as far as one machine allows: the gate split with --shard i/n into
disjoint parts that together are the whole case list, each part's results saved, and the parts
merged into one report."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import qkcheck
from tests.harness.conftest import EXAMPLE_ADAPTER, EXAMPLE_SHARDS, ROOT

KERNEL = EXAMPLE_ADAPTER  # plain torch: the whole grid runs in seconds


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["case_id"] for line in path.read_text().splitlines()[1:]]


def test_shards_are_disjoint_complete_and_merge_into_one_report(example_gate_shards, tmp_path, qkcheck_here):
    # qkcheck gate --kernels KERNEL --shard i/3 --results shard-i.jsonl, for i = 1, 2, 3
    assert len(example_gate_shards) == EXAMPLE_SHARDS == 3
    parts = []
    for proc, out in example_gate_shards:
        assert proc.returncode == 0, proc.stdout[-2000:]
        parts.append(_ids(out))
    # the whole case list: what the gate runs without --shard (its own list, taken here in process)
    everything = [c.id for a in qkcheck.resolve_kernels(str(ROOT / KERNEL), device="cpu") for c in qkcheck.gate_cases(a)]
    assert all(parts), "every shard got some cases"
    assert sum(len(p) for p in parts) == len(everything)
    assert set().union(*map(set, parts)) == set(everything)

    report = tmp_path / "report.html"
    proc = qkcheck_here("report", *(str(out) for _, out in example_gate_shards), "-o", str(report))
    assert proc.returncode == 0, proc.stderr
    html = report.read_text()
    total = len(everything)
    assert re.search(rf"\b{total}\b", html), "the merged report counts every shard's results"
    for i in (1, 2, 3):
        assert f"{i}/3" in html, "each shard's run is listed in the header"
