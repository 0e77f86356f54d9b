"""oracle/ is the truth and must stay pure NumPy: no torch, no triton, no project layer above it."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "triton", "kernels", "cases", "reports")
ORACLE_FILES = sorted((ROOT / "oracle").rglob("*.py"))


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", ORACLE_FILES, ids=[str(p.relative_to(ROOT)) for p in ORACLE_FILES])
def test_oracle_module_imports_nothing_forbidden(path):
    bad = _imported_roots(path) & set(FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; oracle/ may import only NumPy and the stdlib"


def test_importing_all_of_oracle_loads_no_torch():
    mods = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in ORACLE_FILES]
    mods = [m.removesuffix(".__init__") for m in mods]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing oracle pulled in: {out.stdout.strip()}"


def test_the_purity_check_can_fail(tmp_path):
    """The AST scan sees an import hidden inside a function body."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import torch.nn\n")
    assert _imported_roots(f) == {"torch"}
