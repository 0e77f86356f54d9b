"""The layers' import rules, read from the source with ``ast`` (no project module is imported, so
no torch either):

- direction: ``oracle`` imports nothing of the project, ``kernels`` only ``oracle``, ``cases``
  ``oracle`` and ``kernels``, ``reports`` nothing; only the entry points (``cases/plugin.py``,
  ``cases/cli.py``, ``cases/api.py``) import ``reports``. Imports inside functions count too;
- no cycles: the module-level imports between the project's modules (those that run when a
  module loads: at the top level, in ``if`` / ``try`` / class bodies, and in the functions the
  module calls while loading; not in other functions, nor under ``if TYPE_CHECKING``) form no
  circle;
- each check is shown to fail on a small tree that breaks its rule.

A module is named as it is imported, ``qkcheck.<layer>.<path>``; the folder ``oracle/`` is the
layer ``qkcheck.oracle`` (and a bare ``import oracle...`` counts as that layer too).
"""
from __future__ import annotations

import ast
import functools
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("oracle", "kernels", "cases", "reports")
MAY_IMPORT = {
    "oracle": frozenset(),
    "kernels": frozenset({"oracle"}),
    "cases": frozenset({"oracle", "kernels"}),
    "reports": frozenset(),
}
ENTRY_POINTS = frozenset({"qkcheck.cases.plugin", "qkcheck.cases.cli", "qkcheck.cases.api"})  # may import reports


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "qkcheck.cases.runner"
    target: str  # the imported project module (or the package a name is taken from)
    line: int
    module_level: bool  # runs when ``source`` loads
    written: str  # the module name as the import statement spells it ("" for a relative import)


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["qkcheck", *parts])


@functools.cache  # the files do not change during a run; each tree is scanned once
def project_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of the four layers under ``root``, by import name."""
    return {module_name(root, p): p for layer in LAYERS for p in sorted((root / layer).rglob("*.py"))}


def _project_name(name: str) -> str | None:
    """``name`` as a ``qkcheck.<layer>...`` name, or None when it is not the project's."""
    parts = name.split(".")
    if parts[0] in LAYERS:
        parts = ["qkcheck", *parts]
    if len(parts) >= 2 and parts[0] == "qkcheck" and parts[1] in LAYERS:
        return ".".join(parts)
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """The project imports of one module, each marked module-level when it runs as the module
    loads: outside functions, or inside a top-level function the module calls while loading
    (``_register()`` at the bottom of a file), and never under ``if TYPE_CHECKING``."""

    def __init__(self, source: str, is_package: bool, known: set[str]):
        self.source, self.known = source, known
        self.package = source if is_package else source.rpartition(".")[0]
        self.function: str | None = None  # the function being read (None: module level)
        self.class_depth = 0
        self.type_checking = 0
        self.calls: dict[str | None, set[str]] = {None: set()}  # function -> names it calls
        self.seen: list[tuple[str | None, bool, int, str, str]] = []  # function, type-only, line, target, written

    def imports(self) -> list[Import]:
        loading, todo = set(), list(self.calls[None])  # the functions that run while the module loads
        while todo:
            name = todo.pop()
            if name not in loading:
                loading.add(name)
                todo.extend(self.calls.get(name, ()))
        return [Import(self.source, target, line, not type_only and (fn is None or fn in loading), written)
                for fn, type_only, line, target, written in self.seen]

    def _add(self, node, name: str | None, written: str) -> None:
        target = _project_name(name) if name else None
        if target:
            self.seen.append((self.function, self.type_checking > 0, node.lineno, target, written))

    def visit_FunctionDef(self, node) -> None:
        if self.function is not None:  # a nested function: part of the enclosing one
            self.generic_visit(node)
            return
        # a method is never called by its bare name at module level
        self.function = node.name if self.class_depth == 0 else f"<method {node.name}>"
        self.calls.setdefault(self.function, set())
        self.generic_visit(node)
        self.function = None

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node) -> None:
        self.class_depth += 1
        self.generic_visit(node)
        self.class_depth -= 1

    def generic_visit(self, node) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):  # no imports inside; note the local functions it calls
                self.calls[self.function].update(
                    sub.func.id for sub in ast.walk(child) if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name))
            else:
                self.visit(child)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking += 1
            for child in node.body:
                self.visit(child)
            self.type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: resolve against this module's package
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            module, written = ".".join(base + ([node.module] if node.module else [])), ""
        else:
            module = written = node.module or ""
        module = _project_name(module) or module
        for alias in node.names:  # ``from pkg import mod`` imports the submodule pkg.mod
            sub = f"{module}.{alias.name}"
            self._add(node, sub if sub in self.known else module, written)


@functools.cache
def imports_of(root: pathlib.Path) -> tuple[Import, ...]:
    """Every import of a project module by a module of the four layers under ``root``."""
    modules = project_modules(root)
    found: list[Import] = []
    for name, path in modules.items():
        collector = _Collector(name, path.name == "__init__.py", set(modules))
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found.extend(collector.imports())
    return tuple(found)


def _layer(module: str) -> str:
    return module.split(".")[1]


def direction_violations(root: pathlib.Path) -> list[str]:
    """One line per import that runs against the layering."""
    bad = []
    for imp in imports_of(root):
        src, dst = _layer(imp.source), _layer(imp.target)
        if src == dst or dst in MAY_IMPORT[src] or (dst == "reports" and imp.source in ENTRY_POINTS):
            continue
        allowed = sorted(MAY_IMPORT[src]) or ["nothing of the project"]
        extra = f" (reports only from {', '.join(sorted(ENTRY_POINTS))})" if src == "cases" else ""
        path = project_modules(root)[imp.source].relative_to(root)
        bad.append(f"{path}:{imp.line} imports {imp.target}; {src} may import {', '.join(allowed)}{extra}")
    return bad


def module_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """Module-level imports between the project's modules: module -> the modules it loads."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports_of(root):
        if imp.module_level and imp.target in modules and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports (its first module repeated at the end), or None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def bare_imports(root: pathlib.Path) -> list[str]:
    """Imports of a layer by its folder name (``import oracle.x``) instead of ``qkcheck.oracle.x``."""
    modules = project_modules(root)
    return [f"{modules[imp.source].relative_to(root)}:{imp.line} imports {imp.written}"
            for imp in imports_of(root) if imp.written.split(".")[0] in LAYERS]


def unresolved_imports(root: pathlib.Path) -> list[str]:
    """Imports of a project module that is not there (a name left behind by a move)."""
    modules = project_modules(root)
    return [f"{modules[imp.source].relative_to(root)}:{imp.line} imports {imp.target}, which is no module here"
            for imp in imports_of(root) if imp.target not in modules]


# ------------------------------------------------------------------------------ the project


def test_the_scan_sees_every_layer():
    modules = project_modules(ROOT)
    assert {_layer(m) for m in modules} == set(LAYERS)
    assert "qkcheck.cases.registry" in modules and "qkcheck.oracle.formats" in modules


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_flow_one_way(layer):
    bad = [line for line in direction_violations(ROOT) if line.startswith(f"{layer}/")]
    assert not bad, "imports against the layering:\n  " + "\n  ".join(bad)


def test_no_import_cycles_at_module_level():
    cycle = find_cycle(module_graph(ROOT))
    assert cycle is None, "module-level import circle: " + " -> ".join(cycle)


def test_project_imports_use_the_qkcheck_name():
    """``import oracle.x`` would load a second copy of a module next to ``qkcheck.oracle.x``."""
    bad = bare_imports(ROOT)
    assert not bad, "write qkcheck.<layer>...:\n  " + "\n  ".join(bad)


def test_project_imports_name_modules_that_exist():
    bad = unresolved_imports(ROOT)
    assert not bad, "stale imports:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("first", ["qkcheck.cases.families.mxfp4", "qkcheck.cases.case", "qkcheck.cases.registry"])
def test_whichever_cases_module_loads_first_the_registry_knows_every_op(first):
    """The bug the old circle made (9f8f945): a family imported first stayed unknown. Importing
    builds no registry; the first lookup builds it whole. Neither loads torch."""
    code = (
        f"import importlib, sys\nimportlib.import_module({first!r})\n"
        "from qkcheck.cases import registry\n"
        "assert registry._registry.cache_info().currsize == 0, 'built at import'\n"
        "from qkcheck.cases.families import FAMILIES\n"
        "ops = sorted(s.op for f in FAMILIES for s in f.SPECS)\n"
        "assert sorted(registry.specs()) == ops and 'mxfp4_gemm' in ops, sorted(registry.specs())\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"loading the cases registry pulled in {out.stdout.strip()}"


# --------------------------------------------------------------------- the checks can fail


def _tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for layer in LAYERS:
        (root / layer).mkdir(parents=True, exist_ok=True)
        (root / layer / "__init__.py").touch()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param({"oracle/a.py": "import numpy\nfrom qkcheck.kernels import x\n", "kernels/x.py": ""},
                     ["oracle/a.py:2 imports qkcheck.kernels.x; oracle may import nothing of the project"],
                     id="oracle-imports-kernels"),
        pytest.param({"kernels/k.py": "def f():\n    from qkcheck.cases.case import Case\n", "cases/case.py": ""},
                     ["kernels/k.py:2 imports qkcheck.cases.case; kernels may import oracle"],
                     id="kernels-imports-cases-in-a-function"),
        pytest.param({"cases/runner.py": "def f():\n    import qkcheck.reports.html\n", "reports/html.py": ""},
                     ["cases/runner.py:2 imports qkcheck.reports.html; cases may import kernels, oracle "
                      "(reports only from qkcheck.cases.api, qkcheck.cases.cli, qkcheck.cases.plugin)"],
                     id="cases-non-entry-point-imports-reports"),
        pytest.param({"reports/store.py": "from ..oracle import compare\n", "oracle/compare.py": ""},
                     ["reports/store.py:1 imports qkcheck.oracle.compare; reports may import nothing of the project"],
                     id="reports-relative-import-of-oracle"),
        pytest.param({"kernels/k.py": "import oracle.formats\nfrom cases import spec\n",
                      "oracle/formats.py": "", "cases/spec.py": ""},
                     ["kernels/k.py:2 imports qkcheck.cases.spec; kernels may import oracle"],
                     id="bare-layer-names"),
    ],
)
def test_the_direction_check_can_fail(tmp_path, files, expected):
    assert direction_violations(_tree(tmp_path, files)) == expected


def test_the_direction_check_lets_entry_points_import_reports(tmp_path):
    root = _tree(tmp_path, {"cases/cli.py": "from qkcheck.reports.html import render\n", "reports/html.py": "",
                            "cases/api.py": "def f():\n    import qkcheck.reports\n"})
    assert direction_violations(root) == []


def test_the_cycle_check_can_fail(tmp_path):
    """The circle ``cases`` had: the op registry filled itself while loading, by calling a function
    that imports the families, whose package imported the registry back at its bottom."""
    root = _tree(tmp_path, {
        "cases/case.py": "def validate():\n    from qkcheck.cases.ops import op_spec\n",
        "cases/ops.py": ("OP_SPECS = {}\n\ndef _families():\n    from qkcheck.cases import families\n"
                         "    OP_SPECS.update(families.collect())\n\n_families()\n"),
        "cases/families/__init__.py": "def collect():\n    return {}\n\nimport qkcheck.cases.ops  # noqa: E402\n",
    })
    cycle = find_cycle(module_graph(root))
    assert cycle == ["qkcheck.cases.families", "qkcheck.cases.ops", "qkcheck.cases.families"]


@pytest.mark.parametrize(
    "back_edge",
    [
        pytest.param("def f():\n    from qkcheck.cases.a import x\n", id="in-a-function"),
        pytest.param("def f():\n    from qkcheck.cases.a import x\n\nclass C:\n    def f(self):\n        f()\n",
                     id="in-a-function-only-a-method-calls"),
        pytest.param("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from qkcheck.cases.a import x\n",
                     id="type-checking-only"),
    ],
)
def test_deferred_imports_close_no_cycle(tmp_path, back_edge):
    root = _tree(tmp_path, {"cases/a.py": "from qkcheck.cases.b import y\n", "cases/b.py": back_edge})
    graph = module_graph(root)
    assert graph["qkcheck.cases.a"] == {"qkcheck.cases.b"} and find_cycle(graph) is None
    assert [i.module_level for i in imports_of(root) if i.source == "qkcheck.cases.b"] == [False]


def test_the_cycle_check_follows_long_circles(tmp_path):
    root = _tree(tmp_path, {"oracle/a.py": "import qkcheck.oracle.b\n", "oracle/b.py": "from . import c\n",
                            "oracle/c.py": "try:\n    from .a import z\nexcept ImportError:\n    pass\n"})
    assert find_cycle(module_graph(root)) == ["qkcheck.oracle.a", "qkcheck.oracle.b", "qkcheck.oracle.c",
                                              "qkcheck.oracle.a"]


def test_the_bare_name_check_can_fail(tmp_path):
    root = _tree(tmp_path, {"kernels/k.py": "import oracle.formats\nfrom qkcheck.oracle import numerics\n",
                            "oracle/formats.py": "", "oracle/numerics.py": ""})
    assert bare_imports(root) == ["kernels/k.py:1 imports oracle.formats"]


def test_the_stale_import_check_can_fail(tmp_path):
    root = _tree(tmp_path, {"cases/runner.py": "def f():\n    from qkcheck.cases.ops import op_spec\n",
                            "cases/registry.py": ""})
    assert unresolved_imports(root) == ["cases/runner.py:2 imports qkcheck.cases.ops, which is no module here"]
