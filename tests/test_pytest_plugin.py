"""qkcheck inside a kernel project's own pytest suite, and nothing of it in a suite that does not
ask for it. Each run is a real pytest process in a directory outside this checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "torch_w4a16_adapter.py"

USER_CONFTEST = 'pytest_plugins = ["qkcheck.cases.plugin"]\n'
USER_TESTS = '''
import pytest
from qkcheck.cases.suites.test_gate import test_gate  # noqa: F401  one test per gate case

pytestmark = pytest.mark.qkcheck(kernels=["{adapters}"])


def test_the_projects_own_test():
    assert 1 + 1 == 2
'''
PLAIN_TESTS = '''
import os

def test_environment_untouched():
    assert "TRITON_INTERPRET" not in os.environ
    assert os.environ.get("OMP_NUM_THREADS") == os.environ.get("EXPECTED_OMP")
'''


def _pytest(cwd: Path, *args, env=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=600)


def _user_project(tmp_path: Path, adapter_source: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_adapters.py").write_text(adapter_source)
    (project / "conftest.py").write_text(USER_CONFTEST)
    (project / "test_my_kernel.py").write_text(USER_TESTS.format(adapters=project / "my_adapters.py"))
    return project


def test_a_projects_suite_runs_the_gate_for_its_adapter(tmp_path):
    project = _user_project(tmp_path, EXAMPLE.read_text())
    r = _pytest(project, "-q", "--qkcheck-device", "cpu", "--qkcheck-results", "out/r.jsonl")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "89 passed" in r.stdout, r.stdout[-500:]  # the example's 88 gate cases and the project's own test
    assert (project / "out" / "r.jsonl").read_text().count('"status": "pass"') == 88


def test_a_broken_kernel_fails_the_projects_suite(tmp_path):
    """The example with its scales applied one group late: the gate cases fail, named by id."""
    source = EXAMPLE.read_text()
    broken = source.replace("z.repeat_interleave(g, 0)) * scales.float().repeat_interleave(g, 0)",
                            "z.repeat_interleave(g, 0)) * scales.float().roll(1, 0).repeat_interleave(g, 0)")
    assert broken != source, "the example's dequantization line changed: update this test's mutation"
    project = _user_project(tmp_path, broken)
    r = _pytest(project, "-q", "--qkcheck-device", "cpu", "-k", "m1n or gate and k512")
    assert r.returncode == 1, r.stdout[-3000:]
    assert "FAILED test_my_kernel.py::test_gate[example:torch_w4a16::w4a16_gemm-" in r.stdout


@pytest.fixture(scope="module")
def plain_project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("plain")
    (project / "test_plain.py").write_text(PLAIN_TESTS)
    return project


def test_plain_pytest_shows_no_qkcheck_options_or_fixtures(plain_project):
    helped = _pytest(plain_project, "--help")
    assert helped.returncode == 0 and "qkcheck" not in helped.stdout
    fixtures = _pytest(plain_project, "--fixtures")
    assert "qkcheck" not in fixtures.stdout
    markers = _pytest(plain_project, "--markers")
    assert "qkcheck" not in markers.stdout


@pytest.mark.parametrize("workers", [None, pytest.param("2", marks=pytest.mark.slow)], ids=["one-process", "xdist-2"])
def test_plain_pytest_run_keeps_its_environment(plain_project, workers):
    """No device selection (TRITON_INTERPRET) and no thread share (OMP_NUM_THREADS) without the plugin."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        *(["-n", workers] if workers else [])], cwd=plain_project,
                       env={k: v for k, v in env.items() if k != "TRITON_INTERPRET"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_plugin_when_loaded_does_select_the_device(plain_project):
    """The check above can fail: with the plugin named, a CPU run sets TRITON_INTERPRET."""
    r = _pytest(plain_project, "-q", "-p", "qkcheck.cases.plugin", "--qkcheck-device", "cpu")
    assert r.returncode == 1 and "TRITON_INTERPRET" in r.stdout, r.stdout[-2000:]


def test_a_marker_without_kernels_is_a_usage_error(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "conftest.py").write_text(USER_CONFTEST)
    (project / "test_x.py").write_text("import pytest\nfrom qkcheck.cases.suites.test_gate import test_gate  # noqa\n"
                                       "pytestmark = pytest.mark.qkcheck()\n")
    r = _pytest(project, "-q", "--qkcheck-device", "cpu")
    # raised while the test is parametrized: pytest reports it as a collection error (exit 2)
    assert r.returncode == 2 and "@pytest.mark.qkcheck(kernels=...) needs a list of kernel specs" in r.stderr + r.stdout


def test_the_cli_ignores_a_projects_ini_and_conftest(tmp_path):
    """``qkcheck gate`` run inside a project with its own pytest configuration (addopts that would
    break the run, a conftest that would fail it) uses only its suites' own."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    (project / "conftest.py").write_text("raise SystemExit('the project conftest was loaded')\n")
    shutil.copy(EXAMPLE, project / "example.py")
    r = subprocess.run([str(Path(sys.executable).parent / "qkcheck"), "gate", "--device", "cpu", "--kernels",
                        "example.py", "--", "-k", "m1n"], cwd=project, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
