"""Under ``-n N`` the workers share the machine's cores for their thread pools: each gets
OMP_NUM_THREADS = cores // N, unless the user chose a thread count already."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qkcheck.cases.plugin import THREAD_VARIABLES, share_cpu_threads, usable_cores

ROOT = Path(__file__).resolve().parents[2]
CORES = usable_cores()


def test_two_or_more_workers_each_get_their_share_of_the_cores():
    for workers in (2, 3, 64):
        env: dict = {}
        assert share_cpu_threads(workers, env) == max(1, CORES // workers)
        assert env == {"OMP_NUM_THREADS": str(max(1, CORES // workers))}


def test_one_worker_keeps_the_whole_machine():
    env: dict = {}
    assert share_cpu_threads(1, env) is None and env == {}


def test_a_thread_count_the_user_set_wins():
    for name in THREAD_VARIABLES:
        env = {name: "3"}
        assert share_cpu_threads(4, env) is None and env == {name: "3"}


@pytest.mark.slow  # a two-worker run of its own; the thread-count rule is unit-tested above
def test_xdist_workers_see_the_shared_thread_count(tmp_path):
    """End to end: the controller sets the variable before its workers start, so they inherit it."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os\n"
        "from pathlib import Path\n"
        "def _record():\n"
        "    Path(os.environ['PROBE_DIR'], os.environ['PYTEST_XDIST_WORKER']).write_text(\n"
        "        os.environ.get('OMP_NUM_THREADS', 'unset'))\n"
        "def test_one(): _record()\n"
        "def test_two(): _record()\n")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["PROBE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "qkcheck.cases.plugin", "-n", "2", "-p", "no:cacheprovider",
                           str(probe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = {p.name: p.read_text() for p in tmp_path.glob("gw*")}
    assert seen and set(seen.values()) == {str(max(1, CORES // 2))}, seen
