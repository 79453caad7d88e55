"""No import cycle in the package: data flows config -> data -> models -> ...

The graph has one node per module of ``src/largebatch`` and an edge for every ``largebatch``
import a module runs when it is imported: statements at module level (also inside ``if``/``try``
and class bodies), not inside functions (deferred on purpose) nor under ``if TYPE_CHECKING:``.
The strict graph (``everywhere=True``) adds the imports inside functions and under
``TYPE_CHECKING``: a deferred import hides a cycle from Python, not from the design, so the
strict graph must be acyclic too.
``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``. A
package's ``__init__`` running before its submodules is Python's rule, not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import largebatch

PACKAGE_DIR = Path(largebatch.__file__).parent


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _top_level_imports(node.body)
            found += _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                found += _top_level_imports(block)
            for handler in node.handlers:
                found += _top_level_imports(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):
            found += _top_level_imports(node.body)
    return found


def _all_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    return [
        n for node in body for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)
    ]


def import_graph(everywhere: bool = False) -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        found = _all_imports(tree.body) if everywhere else _top_level_imports(tree.body)
        for node in found:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    if not is_package:
                        anchor = anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert "largebatch.config" in graph["largebatch.data.registry"]
    assert "largebatch.data.idx" in graph["largebatch.data"]  # from largebatch.data import idx
    assert "largebatch.data.caltech101" in graph["largebatch.data"]  # from . import caltech101
    assert "largebatch.errors" in graph["largebatch.config.sections"]
    assert "largebatch.config.checks" in graph["largebatch.config"]  # a package's re-exports


def test_a_cycle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_config_imports_no_registry_anywhere():
    # Not even inside a function: validation of names belongs to the registries.
    trees = [ast.parse(path.read_text()) for path in (PACKAGE_DIR / "config").glob("*.py")]
    imported = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported & {"largebatch.errors", "yaml"}
    assert not {m for m in imported if m.startswith(("largebatch.data", "largebatch.models"))}


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_cycle_even_through_deferred_imports():
    found = cycles(import_graph(everywhere=True))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_strict_graph_sees_deferred_imports():
    strict, plain = import_graph(everywhere=True), import_graph()
    # cli imports each command inside the function that runs it
    assert "largebatch.report.command" not in plain["largebatch.cli"]
    assert "largebatch.report" in strict["largebatch.cli"]


def test_the_record_layer_does_not_import_the_public_api():
    assert "largebatch" not in import_graph(everywhere=True)["largebatch.rundir"]


MAX_LINES = 600


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by concept): {over}"
