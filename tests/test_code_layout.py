"""The package's layout rules, checked on the source: modules stay small enough to read, modules do not import
each other in a cycle, and an import inside a function is only a deferred heavy dependency that says so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "velora"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400
EXEMPT_FROM_SIZE = {"ofa/model.py"}  # the OFA architecture, one readable file (as timm and nanoGPT keep theirs)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """velora modules imported at module level (not inside functions, not under TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    known = {module_name(p) for p in MODULES}
    return {name for name in found if name in known}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if str(path.relative_to(PACKAGE)) not in EXEMPT_FROM_SIZE:
        assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it along a seam"


def test_no_import_cycles():
    graph = {module_name(p): top_level_imports(p) for p in MODULES}
    for name in graph:  # a package imports its own submodules; that is not a cycle
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    visiting, done, cycles = [], set(), []

    def visit(node: str) -> None:
        if node in visiting:
            cycles.append(visiting[visiting.index(node):] + [node])
            return
        if node in done:
            return
        visiting.append(node)
        for child in sorted(graph.get(node, ())):
            visit(child)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    found.append((inner.lineno, lines[inner.lineno - 1]))
    return found


def test_imports_inside_functions_are_deferred_dependencies_that_say_so():
    undocumented = [f"{path.relative_to(PACKAGE)}:{line}: {text.strip()}" for path in MODULES
                    for line, text in function_level_imports(path) if "# deferred" not in text]
    assert not undocumented, ("imports inside functions must defer a heavy optional dependency and say so with "
                              "'# deferred: why':\n" + "\n".join(undocumented))
