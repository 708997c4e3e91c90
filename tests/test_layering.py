"""kdlight's modules import each other in layers: no import rings, no imports hidden inside functions.

A ring (a imports b imports a) only works while one side imports lazily or at the bottom of a file,
and breaks as soon as someone tidies the imports; a function-level import is usually such a ring in
hiding. The graph is read with ``ast`` from kdlight/'s sources, so nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdlight"

# Function-level imports of kdlight modules that are allowed, by file (none today: keep it so).
ALLOWED_FUNCTION_LEVEL: dict[str, set[str]] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def kdlight_targets(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The kdlight modules an import statement loads (``from kdlight.x import y`` may name module ``kdlight.x.y``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.level or not node.module:  # kdlight uses absolute imports only (ruff's isort keeps it so)
        return set()
    else:
        names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    targets = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("kdlight"):
            targets.add(name)
    return targets


def packages_run_by(importer: str, target: str) -> set[str]:
    """Importing ``kdlight.a.b`` first runs ``kdlight/a/__init__.py``: those packages are edges too, except the
    ones the importer is itself inside (they are already being imported) and ``kdlight`` itself."""
    parts = target.split(".")
    ancestors = {".".join(parts[:i]) for i in range(2, len(parts))}
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    return ancestors - own


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module-level import edges, function-level kdlight imports as (file, line, target))."""
    graph: dict[str, set[str]] = {}
    nested: list[tuple[str, int, str]] = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = {id(node) for node in tree.body}
        for block in tree.body:  # imports under a module-level ``if``/``try`` still run at import
            if isinstance(block, (ast.If, ast.Try)):
                top_level |= {id(node) for node in ast.walk(block)}
        edges: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = kdlight_targets(node) - {name}
            if id(node) in top_level:
                for target in targets:
                    edges |= {target} | packages_run_by(name, target)
            else:
                relative = str(path.relative_to(PACKAGE.parent))
                nested += [(relative, node.lineno, target) for target in sorted(targets)]
        graph[name] = edges - {name}
    return graph, nested


def rings(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_kdlights_imports():
    graph, _ = import_graph()
    assert len(graph) == len(MODULES) > 30
    assert "kdlight.errors" in graph["kdlight.checkpoints"]
    assert {"kdlight.modules.distiller", "kdlight.modules.task"} <= graph["kdlight.modules.vanilla"] | graph[
        "kdlight.modules.distiller"
    ]


def test_rings_are_found():
    assert rings({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert rings({"a": {"b"}, "b": set()}) == []


def test_no_import_rings_among_kdlight_modules():
    graph, _ = import_graph()
    assert rings(graph) == []


def test_no_rings_even_through_function_level_imports():
    """A lazy import only postpones a ring; counted as edges, the allowed ones must not close one either."""
    graph, nested = import_graph()
    for path, _, target in nested:
        graph[module_name(PACKAGE.parent / path)].add(target)
    assert rings(graph) == []


def test_checkpoints_is_a_leaf():
    """Every layer reads checkpoints; the loader itself depends on nothing of kdlight but its errors."""
    graph, _ = import_graph()
    assert graph["kdlight.checkpoints"] == {"kdlight.errors"}


def test_embedding_layers_need_only_torch():
    graph, _ = import_graph()
    assert graph["kdlight.models.embeddings"] <= {"kdlight.errors"}


def test_models_never_import_data_or_modules():
    """data/ tokenises with the model loaders' tokenizer and modules/ build on both; never the other way."""
    graph, nested = import_graph()
    models = {name for name in graph if name.startswith("kdlight.models")}
    upward = {(m, t) for m in models for t in graph[m] if t.startswith(("kdlight.data", "kdlight.modules"))}
    upward |= {
        (f, t)
        for f, _, t in nested
        if f.startswith("kdlight/models/") and t.startswith(("kdlight.data", "kdlight.modules"))
    }
    assert upward == set()


def test_no_function_level_imports_between_kdlight_modules():
    _, nested = import_graph()
    unexpected = [
        f"{path}:{line} imports {target}"
        for path, line, target in nested
        if target not in ALLOWED_FUNCTION_LEVEL.get(path, set())
    ]
    assert unexpected == []
