"""The README's adapter example works as the README says."""
from __future__ import annotations

from pathlib import Path

from tests.harness.conftest import ROOT


def test_readme_shows_the_example_commands():
    readme = (ROOT / "README.md").read_text()
    assert "qkcheck gate --kernels examples/torch_w4a16_adapter.py" in readme
    assert Path(ROOT / "examples" / "torch_w4a16_adapter.py").exists()


def test_gate_on_the_example_adapter_passes(example_gate_shards):
    """``qkcheck gate --kernels examples/torch_w4a16_adapter.py --device cpu --shard 1/3`` (the run
    test_sharding takes as its first shard)."""
    r, _ = example_gate_shards[0]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
