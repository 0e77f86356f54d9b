"""The harness's own tests drive the runner, the CLI and the fuzzer with small kernels on the CPU
interpreter (the configuration this repository's CI runs). On a GPU session (``--device cuda``)
they are skipped, with this reason: there the gate and fuzz suites (tests/gate) and the kernel
tests (tests/kernels) are what run compiled.

Two ways to run the ``qkcheck`` command line here:

- ``qkcheck(*args)``: a process of its own, as a user runs it. Each one imports torch and
  registers the kernels (~4-5 s on the CPU), so it is for what needs a process: ``-n`` (xdist)
  runs, crashes and kills, gate and fuzz runs (each is a pytest session of its own), and runs left
  going while other tests proceed (``qkcheck_popen``).
- the ``qkcheck_here`` fixture: ``qkcheck.cases.cli.main`` in this process, for usage errors,
  ``replay`` and ``report``, with the same exit code and output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, and each xdist worker runs what it needs itself
    fcntl = None

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _argv(args) -> list[str]:
    return [sys.executable, "-m", "qkcheck.cases.cli", *map(str, args)]


def qkcheck(*args, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    """``qkcheck ARGS`` in a new process, from the repository root: exit code, stdout, stderr."""
    return subprocess.run(_argv(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def qkcheck_popen(*args, cwd=ROOT, merge_stderr=False) -> subprocess.Popen:
    """``qkcheck ARGS`` started in a new process and left running (text pipes; stderr into stdout
    with ``merge_stderr``)."""
    return subprocess.Popen(_argv(args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, text=True)


@pytest.fixture
def qkcheck_here(capsys, monkeypatch):
    """``qkcheck ARGS`` in this process, from the repository root: a CompletedProcess with the exit
    code ``main`` returns (or exits with: argparse's usage errors) and what it printed."""
    from qkcheck.cases import plugin
    from qkcheck.cases.cli import main

    monkeypatch.chdir(ROOT)
    # gate and fuzz are pytest sessions: one started here registers its config with the plugin
    # module and removes it when it ends; this session's own registration is put back afterwards
    if hasattr(plugin, "_CONFIG"):
        monkeypatch.setattr(plugin, "_CONFIG", dict(plugin._CONFIG))

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["qkcheck", *map(str, args)], code, out, err)

    return run


def _completed(d: dict) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(d["args"], d["returncode"], d["stdout"], d["stderr"])


def _as_dict(p: subprocess.CompletedProcess) -> dict:
    return {"args": [str(a) for a in p.args], "returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def once_per_session(tmp_path_factory, key: str, run):
    """``run(folder)`` (JSON-able outcome) done once per test session, also across xdist workers:
    the first process to ask runs it in ``folder`` while any other that asks waits, and every one
    reads the same outcome. (Workers' temporary folders share one parent; pytest-xdist's
    ``xdist_group`` would keep such tests on one worker, but ``--dist loadgroup`` groups nothing
    under pytest 9, whose node ids xdist can no longer suffix.)"""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER") and fcntl is not None:
        root = root.parent
    folder = root / f"once-{key}"
    outcome = root / f"once-{key}.json"
    with open(root / f"once-{key}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not outcome.exists():
            folder.mkdir(exist_ok=True)
            outcome.write_text(json.dumps(run(folder)))
    return json.loads(outcome.read_text()), folder


@dataclass(frozen=True)
class FuzzRun:
    """A finished ``qkcheck fuzz``: what it returned and printed, the folder of the cases it saved,
    and its results file."""

    process: subprocess.CompletedProcess
    failures: Path
    results: Path


@pytest.fixture(scope="session")
def zoo_fuzz(tmp_path_factory):
    """``qkcheck fuzz --kernels zoo:ENTRY`` with no shrink budget (``--shrink-budget 0``, the CPU's
    default), run once per session for all the tests that assert on it (``once_per_session``):
    ``zoo_fuzz("api_misbinding")``. The budget only bounds the run: it ends once the failure is
    found and shrunk."""

    def run(entry: str) -> FuzzRun:
        def fuzz(where: Path) -> dict:
            return _as_dict(qkcheck("fuzz", "--kernels", f"zoo:{entry}", "--budget", "120s", "--device", "cpu",
                                    "--shrink-budget", "0", "--failures-dir", where / "failures",
                                    "--results", where / "r.jsonl"))

        process, where = once_per_session(tmp_path_factory, f"fuzz-{entry}", fuzz)
        return FuzzRun(_completed(process), where / "failures", where / "r.jsonl")

    return run


EXAMPLE_ADAPTER = "examples/torch_w4a16_adapter.py"  # the README's adapter example (plain torch)
EXAMPLE_SHARDS = 3


@pytest.fixture(scope="session")
def example_gate_shards(tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, Path]]:
    """``qkcheck gate --kernels examples/torch_w4a16_adapter.py --shard i/3`` for i = 1, 2, 3, as the
    README's command and its CI recipe run it, run once per session for the tests that assert on
    them (``once_per_session``): every shard's CompletedProcess and results file. The shards run
    side by side."""

    def gate(where: Path) -> list[dict]:
        procs = [qkcheck_popen("gate", "--device", "cpu", "--kernels", EXAMPLE_ADAPTER,
                               "--shard", f"{i}/{EXAMPLE_SHARDS}", "--results", where / f"shard-{i}.jsonl",
                               "--failures-dir", where / "f") for i in range(1, EXAMPLE_SHARDS + 1)]
        done = []
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            done.append(_as_dict(subprocess.CompletedProcess(proc.args, proc.returncode, out, err)))
        return done

    shards, where = once_per_session(tmp_path_factory, "example-gate", gate)
    return [(_completed(d), where / f"shard-{i}.jsonl") for i, d in enumerate(shards, start=1)]


def pytest_collection_modifyitems(config, items):
    if getattr(config, "qkcheck_device", "cpu") == "cpu":
        return
    here = __file__.rsplit("/", 1)[0]
    skip = pytest.mark.skip(reason=f"harness self-tests run on the CPU interpreter; this session runs on "
                                   f"{config.qkcheck_device} (tests/gate and tests/kernels run compiled)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)
