"""qkcheck as a user installs it: one import name, a wheel that works from any directory with no
checkout, beside the PyPI package that shares a name with one of its layers.

The fresh venv gets qkcheck's wheel with pip; its dependencies (torch alone is hundreds of MB) are
made visible from the test run's own environment through a path file instead of being installed
again, so only what the wheel carries decides whether qkcheck works there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"oracle": "qkcheck.oracle", "kernels": "qkcheck.kernels", "cases": "qkcheck.cases", "reports": "qkcheck.reports"}
EXAMPLE = ROOT / "examples" / "torch_w4a16_adapter.py"


def _declared_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def _tree_packages() -> set[str]:
    found = {"qkcheck"}
    for folder, name in LAYERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    return found


def test_pyproject_lists_every_package_of_the_tree():
    declared, tree = _declared_packages(), _tree_packages()
    assert declared == tree, (f"pyproject.toml [tool.setuptools] packages: missing {sorted(tree - declared)}, "
                              f"stale {sorted(declared - tree)}")


def test_importing_qkcheck_loads_no_torch():
    code = ("import sys, qkcheck, qkcheck.oracle.formats, qkcheck.cases.case\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')))")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (found,) = out.glob("qkcheck-*.whl")
    return found


def test_the_wheel_installs_nothing_but_qkcheck(wheel):
    tops = {Path(n).parts[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"qkcheck", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("qkcheck/cases/suites/test_gate.py", "qkcheck/cases/suites/test_fuzz.py",
                   "qkcheck/cases/suites/pytest.ini", "qkcheck/cases/fuzz.py",
                   "qkcheck/reports/templates/report.html.j2"):
        assert needed in names, f"{needed} is not in the wheel"
    corpus = sorted(p.name for p in (ROOT / "cases" / "corpus").glob("*.json"))
    assert corpus and all(f"qkcheck/cases/corpus/{c}" in names for c in corpus)


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> dict:
    """A new venv holding qkcheck's wheel; a working directory outside any checkout."""
    base = tmp_path_factory.mktemp("venv")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies, from this run's environment (not qkcheck itself: its editable finder is a
    # .pth file of that environment, and .pth files of a path added this way are not run)
    Path(site, "qkcheck_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                   check=True, capture_output=True, text=True)
    work = base / "work"
    work.mkdir()
    shutil.copy(EXAMPLE, work / "example.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return {"venv": venv, "py": py, "site": Path(site), "work": work, "env": env}


def _run(fresh_venv, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=fresh_venv["work"], env=fresh_venv["env"], capture_output=True, text=True,
                          timeout=timeout)


def test_wheel_commands_work_from_a_directory_with_no_checkout(fresh_venv):
    qk = str(fresh_venv["venv"] / "bin" / "qkcheck")
    where = _run(fresh_venv, str(fresh_venv["py"]), "-c", "import qkcheck.cases.cli as m; print(m.__file__)")
    assert where.stdout.startswith(str(fresh_venv["site"])), where.stdout + where.stderr

    listed = _run(fresh_venv, qk, "list", "--device", "cpu")
    assert listed.returncode == 0 and "zoo:scale_group_spanning" in listed.stdout, listed.stdout + listed.stderr

    gate = _run(fresh_venv, qk, "gate", "--device", "cpu", "--kernels", "example.py", "--results", "out/r.jsonl",
                "--shard", "1/4")  # a quarter of the 88 cases: the point is that the installed gate runs
    assert gate.returncode == 0, gate.stdout[-3000:] + gate.stderr[-3000:]
    assert " passed" in gate.stdout and (fresh_venv["work"] / "out" / "r.jsonl").is_file()

    fuzz = _run(fresh_venv, qk, "fuzz", "--device", "cpu", "--kernels", "example.py", "--budget", "3s")
    assert fuzz.returncode == 0 and "qkcheck fuzz example:torch_w4a16:" in fuzz.stdout, fuzz.stdout[-3000:]

    # a Triton zoo kernel from the wheel: the fuzzer finds its bug and saves a case; replay fails it
    found = _run(fresh_venv, qk, "fuzz", "--device", "cpu", "--kernels", "zoo:wrong_output_dtype", "--budget", "60s")
    assert found.returncode == 1, found.stdout[-3000:] + found.stderr[-3000:]
    (saved,) = [p for p in (fresh_venv["work"] / "out" / "failures").glob("*.json") if ".found." not in p.name]
    replay = _run(fresh_venv, qk, "replay", str(saved), "--device", "cpu", "--kernels", "zoo:wrong_output_dtype")
    assert replay.returncode == 1 and "FAIL" in replay.stdout, replay.stdout + replay.stderr
    fixed = _run(fresh_venv, qk, "replay", str(saved), "--device", "cpu", "--kernels", "bundled:per_token_quant")
    assert fixed.returncode == 0 and "PASS" in fixed.stdout, fixed.stdout + fixed.stderr

    report = _run(fresh_venv, qk, "report", "out/r.jsonl", "-o", "out/r.html")
    assert report.returncode == 0 and (fresh_venv["work"] / "out" / "r.html").stat().st_size > 1000


def test_no_layer_name_is_importable_at_top_level(fresh_venv):
    for name in LAYERS:
        r = _run(fresh_venv, str(fresh_venv["py"]), "-c", f"import {name}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"import {name}: {r.stdout}{r.stderr}"


def _pypi_kernels(fresh_venv) -> subprocess.CompletedProcess:
    return _run(fresh_venv, str(fresh_venv["py"]), "-m", "pip", "install", "-q", "kernels", timeout=900)


@pytest.mark.slow  # downloads the PyPI package: the slow tier (CI runs it)
def test_pypi_kernels_package_beside_qkcheck(fresh_venv):
    """The kernel-hub client on PyPI is called ``kernels``: installed in the same venv, it imports
    as itself, and qkcheck still finds its own layer (qkcheck.kernels)."""
    got = _pypi_kernels(fresh_venv)
    if got.returncode != 0:
        pytest.skip(f"the package index could not be reached for PyPI's kernels: {got.stderr.strip()[-300:]}")
    r = _run(fresh_venv, str(fresh_venv["py"]), "-c",
             "import kernels, qkcheck.kernels.adapters as a\n"
             "print(kernels.__file__); print(a.__file__); print(callable(kernels.get_kernel))")
    assert r.returncode == 0, r.stderr
    pypi_file, ours, callable_ = r.stdout.split()
    assert "site-packages/kernels/" in pypi_file and "site-packages/qkcheck/kernels/" in ours and callable_ == "True"
    qk = str(fresh_venv["venv"] / "bin" / "qkcheck")
    gate = _run(fresh_venv, qk, "gate", "--device", "cpu", "--kernels", "example.py", "--op", "w4a16_gemm",
                "--", "-x", "-k", "m1n")
    assert gate.returncode == 0 and " passed" in gate.stdout, gate.stdout[-2000:] + gate.stderr[-2000:]
