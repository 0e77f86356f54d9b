"""The README's CI recipe, as far as one machine allows: the gate split with --shard i/n into
disjoint parts that together are the whole case list, each part's results saved, and the parts
merged into one report."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "examples/torch_w4a16_adapter.py"  # plain torch: the whole grid runs in seconds


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "qkcheck.cases.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["case_id"] for line in path.read_text().splitlines()[1:]]


def test_shards_are_disjoint_complete_and_merge_into_one_report(tmp_path):
    full = _cli("gate", "--device", "cpu", "--kernels", KERNEL, "--results", str(tmp_path / "all.jsonl"),
                "--failures-dir", str(tmp_path / "f"))
    assert full.returncode == 0, full.stdout[-2000:]
    parts = []
    for i in (1, 2, 3):
        out = tmp_path / f"shard-{i}.jsonl"
        proc = _cli("gate", "--device", "cpu", "--kernels", KERNEL, "--shard", f"{i}/3", "--results", str(out),
                    "--failures-dir", str(tmp_path / "f"))
        assert proc.returncode == 0, proc.stdout[-2000:]
        parts.append(_ids(out))
    everything = _ids(tmp_path / "all.jsonl")
    assert all(parts), "every shard got some cases"
    assert sum(len(p) for p in parts) == len(everything)
    assert set().union(*map(set, parts)) == set(everything)

    report = tmp_path / "report.html"
    proc = _cli("report", *(str(tmp_path / f"shard-{i}.jsonl") for i in (1, 2, 3)), "-o", str(report))
    assert proc.returncode == 0, proc.stderr
    html = report.read_text()
    total = len(everything)
    assert re.search(rf"\b{total}\b", html), "the merged report counts every shard's results"
    for i in (1, 2, 3):
        assert f"{i}/3" in html, "each shard's run is listed in the header"
