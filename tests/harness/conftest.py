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

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
    default), run once for all the tests that assert on it: ``zoo_fuzz("api_misbinding")``. Under
    ``-n`` mark those tests ``xdist_group("zoo-fuzz-ENTRY")``, so that they share a worker and the
    run. The budget only bounds the run: it ends once the failure is found and shrunk."""
    runs: dict[str, FuzzRun] = {}

    def run(entry: str) -> FuzzRun:
        if entry not in runs:
            where = tmp_path_factory.mktemp(f"fuzz-{entry}")
            process = qkcheck("fuzz", "--kernels", f"zoo:{entry}", "--budget", "120s", "--device", "cpu",
                              "--shrink-budget", "0", "--failures-dir", where / "failures",
                              "--results", where / "r.jsonl")
            runs[entry] = FuzzRun(process, where / "failures", where / "r.jsonl")
        return runs[entry]

    return run


EXAMPLE_ADAPTER = "examples/torch_w4a16_adapter.py"  # the README's adapter example (plain torch)
EXAMPLE_SHARDS = 3


@pytest.fixture(scope="session")
def example_gate_shards(tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, Path]]:
    """``qkcheck gate --kernels examples/torch_w4a16_adapter.py --shard i/3`` for i = 1, 2, 3, as the
    README's command and its CI recipe run it, each run once for the tests that assert on them
    (mark them ``xdist_group("example-gate")``): every shard's CompletedProcess and results file.
    The shards run side by side."""
    where = tmp_path_factory.mktemp("example-gate")
    procs = []
    for i in range(1, EXAMPLE_SHARDS + 1):
        results = where / f"shard-{i}.jsonl"
        procs.append((qkcheck_popen("gate", "--device", "cpu", "--kernels", EXAMPLE_ADAPTER,
                                    "--shard", f"{i}/{EXAMPLE_SHARDS}", "--results", results,
                                    "--failures-dir", where / "f"), results))
    shards = []
    for proc, results in procs:
        out, err = proc.communicate(timeout=600)
        shards.append((subprocess.CompletedProcess(proc.args, proc.returncode, out, err), results))
    return shards


def pytest_collection_modifyitems(config, items):
    if getattr(config, "qkcheck_device", "cpu") == "cpu":
        return
    here = __file__.rsplit("/", 1)[0]
    skip = pytest.mark.skip(reason=f"harness self-tests run on the CPU interpreter; this session runs on "
                                   f"{config.qkcheck_device} (tests/gate and tests/kernels run compiled)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)
