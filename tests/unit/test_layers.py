"""House rules read from the source. The import graph: no module imports itself back (lazy imports inside
functions included; imports under ``if TYPE_CHECKING:`` are annotations only and do not count), and packages depend
one way: core <- tasks <- training / merge / serving / agents <- bench <- cli. And no function longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "training", "merge", "agents")
CORE = {"runtime", "runtime.errors", "runtime.config", "runtime.hardware", "runtime.process", "runtime.models",
        "runtime.wheels", "runtime.artifacts", "runtime.memory", "runtime.stats"}
SERVING = {"runtime.engines", "runtime.serving", "runtime.server", "runtime.router", "runtime.deploy",
           "runtime.classifier", "runtime.api_types", "runtime.metrics", "runtime.evaluate"}


def layer(module: str) -> int:
    unit = ".".join(module.split(".")[:2]) if module.startswith("runtime.") else module.split(".")[0]
    if unit in CORE:
        return 0
    if unit == "runtime.tasks":
        return 1
    if unit in SERVING or unit in ("training", "merge", "agents"):
        return 2
    if unit == "runtime.bench":
        return 3
    if unit == "runtime.cli":
        return 4
    raise AssertionError(f"{module} has no layer: add it to tests/unit/test_layers.py")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back():
    assert cycles(graph()) == []


def test_packages_depend_one_way():
    upward = sorted(f"{a} -> {b}" for a, bs in graph().items() for b in bs if layer(b) > layer(a))
    assert upward == []


def test_the_checks_see_a_lazy_cycle(tmp_path):
    edges = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(edges) == [["a", "b"]]


def test_no_function_is_longer_than_a_screen():
    """Functions stay readable: none over 60 lines (wire types and config schemas are declarations, not logic)."""
    long = []
    for name, path in modules().items():
        if name.endswith(("api_types", ".config")) or name == "runtime.config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
