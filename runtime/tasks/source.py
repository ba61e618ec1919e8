"""Functions with docstrings from the running interpreter's standard library, split by module.

Real code nobody here wrote. Test folders, idlelib, lib2to3, site-packages and test functions are left out;
a function is kept when its docstring's first paragraph has 3-256 words and its body (after the docstring) has
2-200 lines. Functions are deduplicated by code hash, and modules (not functions) are assigned to train / val /
test, so no module's code appears in two splits.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import sysconfig
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime.tasks.measures import parses

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__", "dist-packages"})
SPLITS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
MIN_DOC_WORDS, MAX_DOC_WORDS = 3, 256
MIN_BODY_LINES, MAX_BODY_LINES = 2, 200


@dataclass(frozen=True)
class Function:
    """One function, dedented, with the line offsets that the task builders need (0-based, in ``code``)."""

    module: str  # dotted module name, e.g. "email.utils"
    qualname: str  # "Class.method" or "function"
    code: str  # the whole function from its `def` line, dedented
    docstring: str  # cleaned (inspect.cleandoc) docstring
    doc_start: int  # first line of the docstring statement
    doc_end: int  # last line of the docstring statement
    body_start: int  # first line after the docstring

    @property
    def id(self) -> str:
        return f"{self.module}:{self.qualname}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.code.encode()).hexdigest()

    @property
    def lines(self) -> list[str]:
        return self.code.splitlines()


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_source_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) for every kept ``.py`` file, in a stable order."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            yield ".".join(parts), path


def extract_functions(module: str, source: str) -> Iterator[Function]:
    """Every kept function (module level or in classes, nested ones too) of one module's source."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    for node, qualname in _walk_functions(tree, ""):
        fn = _function(module, qualname, node, lines)
        if fn is not None:
            yield fn


def _walk_functions(node: ast.AST, prefix: str) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield child, prefix + child.name
            yield from _walk_functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _walk_functions(child, f"{prefix}{child.name}.")


def _function(module: str, qualname: str, node: ast.FunctionDef | ast.AsyncFunctionDef,
              lines: list[str]) -> Function | None:
    name = qualname.rsplit(".", 1)[-1]
    if name.startswith("test") or node.end_lineno is None:
        return None
    docstring = ast.get_docstring(node, clean=True)
    if not docstring or len(node.body) < 2:
        return None
    words = len(docstring.split("\n\n", 1)[0].split())
    doc_node = node.body[0]
    body_first = node.body[1].lineno
    if hasattr(node.body[1], "decorator_list") and node.body[1].decorator_list:
        body_first = node.body[1].decorator_list[0].lineno
    body_lines = node.end_lineno - body_first + 1
    if not (MIN_DOC_WORDS <= words <= MAX_DOC_WORDS and MIN_BODY_LINES <= body_lines <= MAX_BODY_LINES):
        return None
    start = node.lineno - 1
    code = textwrap.dedent("\n".join(lines[start:node.end_lineno]))
    if "\t" in code or doc_node.end_lineno is None or not parses(code):
        return None  # tabs, or a string literal less indented than the def (dedent cannot fix it)
    return Function(module, qualname, code, docstring, doc_start=doc_node.lineno - 1 - start,
                    doc_end=doc_node.end_lineno - 1 - start, body_start=body_first - 1 - start)


def collect(root: Path | None = None) -> tuple[list[Function], str]:
    """All kept functions, deduplicated by code hash, and a hash of the source files they came from."""
    root = root or stdlib_dir()
    seen: set[str] = set()
    kept: list[Function] = []
    source_hash = hashlib.sha256()
    for module, path in iter_source_files(root):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            log.debug("skipping %s: %s", path, e)
            continue
        source_hash.update(module.encode() + b"\0" + source.encode())
        for fn in extract_functions(module, source):
            if fn.digest not in seen:
                seen.add(fn.digest)
                kept.append(fn)
    return kept, source_hash.hexdigest()


def split_by_module(functions: list[Function], shares: dict[str, float] = SPLITS) -> dict[str, list[Function]]:
    """Assign whole modules to splits: modules in hash order, each to the split furthest below its share."""
    by_module: dict[str, list[Function]] = {}
    for fn in functions:
        by_module.setdefault(fn.module, []).append(fn)
    order = sorted(by_module, key=lambda m: hashlib.sha256(m.encode()).hexdigest())
    out: dict[str, list[Function]] = {s: [] for s in shares}
    total = 0
    for module in order:
        total += len(by_module[module])
        split = max(shares, key=lambda s: shares[s] * total - len(out[s]))
        out[split].extend(by_module[module])
    return out
