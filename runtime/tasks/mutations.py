"""Seed exactly one bug into a function by AST mutation, changing a single line.

Each kind finds candidate nodes that sit on one line, and rewrites only the characters of that node, so the rest
of the line keeps its formatting and the corrected line is the original line. A mutant is kept only when it
still parses and differs from the original.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

BUG_KINDS: tuple[str, ...] = ("comparison", "arithmetic", "boolean", "off-by-one", "negation", "return", "variable")

COMPARISON_FLIP = {ast.Lt: ">=", ast.LtE: ">", ast.Gt: "<=", ast.GtE: "<", ast.Eq: "!=", ast.NotEq: "==",
                   ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in"}
COMPARISON_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
                   ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}
ARITHMETIC_SWAP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
                   ast.FloorDiv: ("//", "%"), ast.Mod: ("%", "//")}
BOOLEAN_SWAP = {ast.And: ("and", "or"), ast.Or: ("or", "and")}


@dataclass(frozen=True)
class Mutation:
    line: int  # 0-based line in the function's code
    col: int
    end_col: int
    replacement: str  # new text for code line[line][col:end_col]
    kind: str


@dataclass(frozen=True)
class Mutant:
    code: str
    line: int  # 0-based
    kind: str
    original_line: str
    buggy_line: str


def _one_line(node: ast.AST) -> bool:
    return getattr(node, "lineno", None) is not None and node.lineno == node.end_lineno


def _between(lines: list[str], left: ast.AST, right: ast.AST, token: str, new: str, kind: str) -> Mutation | None:
    """Replace the operator token that stands alone (save parentheses) between two one-line operands."""
    if not (_one_line(left) and _one_line(right) and left.end_lineno == right.lineno):
        return None
    line = lines[left.end_lineno - 1]
    gap = line[left.end_col_offset:right.col_offset]
    if " ".join(gap.replace("(", " ").replace(")", " ").split()) != token:
        return None
    first, last = token.split()[0], token.split()[-1]
    start = left.end_col_offset + gap.index(first)
    end = start + line[start:].index(last) + len(last)
    return Mutation(left.end_lineno - 1, start, end, new, kind)


def _comparison(node: ast.AST, lines: list[str], names: list[str]) -> Iterator[Mutation]:
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARISON_FLIP:
        op = type(node.ops[0])
        m = _between(lines, node.left, node.comparators[0], COMPARISON_TEXT[op], COMPARISON_FLIP[op], "comparison")
        if m:
            yield m


def _arithmetic(node: ast.AST, lines: list[str], names: list[str]) -> Iterator[Mutation]:
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC_SWAP:
        old, new = ARITHMETIC_SWAP[type(node.op)]
        if not (isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):  # skip "%" formatting
            m = _between(lines, node.left, node.right, old, new, "arithmetic")
            if m:
                yield m


def _boolean(node: ast.AST, lines: list[str], names: list[str]) -> Iterator[Mutation]:
    if isinstance(node, ast.BoolOp) and len(node.values) == 2:
        old, new = BOOLEAN_SWAP[type(node.op)]
        m = _between(lines, node.values[0], node.values[1], old, new, "boolean")
        if m:
            yield m


def _off_by_one(node: ast.AST, lines: list[str], names: list[str]) -> Iterator[Mutation]:
    if (isinstance(node, ast.Constant) and type(node.value) is int and _one_line(node)
            and lines[node.lineno - 1][node.col_offset:node.end_col_offset].isdigit()):
        new = node.value + 1 if node.value < 2 else node.value - 1
        yield Mutation(node.lineno - 1, node.col_offset, node.end_col_offset, str(new), "off-by-one")


def _negation(node: ast.AST, lines: list[str], names: list[str]) -> Iterator[Mutation]:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and _one_line(node):
        line = lines[node.lineno - 1]
        operand = line[node.operand.col_offset:node.operand.end_col_offset]
        if _one_line(node.operand) and operand:
            yield Mutation(node.lineno - 1, node.col_offset, node.end_col_offset, operand, "negation")


def _return(node: ast.AST, lines: list[str], names: list[str]) -> Iterator[Mutation]:
    if isinstance(node, ast.Return) and node.value is not None and _one_line(node.value):
        value = node.value
        text = lines[value.lineno - 1][value.col_offset:value.end_col_offset]
        if isinstance(value, ast.Constant) and type(value.value) is bool and text in ("True", "False"):
            yield Mutation(value.lineno - 1, value.col_offset, value.end_col_offset, str(not value.value), "return")
        elif isinstance(value, ast.Tuple) and len(value.elts) == 2 and all(_one_line(e) for e in value.elts):
            a, b = (lines[e.lineno - 1][e.col_offset:e.end_col_offset] for e in value.elts)
            if a != b and text.replace(" ", "") in (f"{a},{b}".replace(" ", ""), f"({a},{b})".replace(" ", "")):
                yield Mutation(value.lineno - 1, value.col_offset, value.end_col_offset, f"{b}, {a}", "return")


def _variable(node: ast.AST, lines: list[str], names: list[str]) -> Iterator[Mutation]:
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names and _one_line(node):
        for other in names:
            if other != node.id:
                yield Mutation(node.lineno - 1, node.col_offset, node.end_col_offset, other, "variable")
                return


FINDERS: dict[str, Callable[[ast.AST, list[str], list[str]], Iterator[Mutation]]] = {
    "comparison": _comparison, "arithmetic": _arithmetic, "boolean": _boolean, "off-by-one": _off_by_one,
    "negation": _negation, "return": _return, "variable": _variable,
}


def candidates(code: str, skip_lines: range = range(0)) -> dict[str, list[Mutation]]:
    """Every possible one-line mutation of ``code`` by kind, outside ``skip_lines`` (e.g. the docstring)."""
    tree = ast.parse(code)
    lines = code.splitlines()
    fn = tree.body[0]
    names = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs) if a.arg not in ("self", "cls")]
    found: dict[str, list[Mutation]] = {k: [] for k in BUG_KINDS}
    for node in ast.walk(fn):
        if node is fn:
            continue
        for kind, finder in FINDERS.items():
            for m in finder(node, lines, names):
                if m.line not in skip_lines and m.line > 0:
                    found[kind].append(m)
    return {k: v for k, v in found.items() if v}


def apply(code: str, mutation: Mutation) -> Mutant | None:
    lines = code.splitlines()
    old = lines[mutation.line]
    new = old[:mutation.col] + mutation.replacement + old[mutation.end_col:]
    if new == old:
        return None
    lines[mutation.line] = new
    mutated = "\n".join(lines)
    try:
        ast.parse(mutated)
    except SyntaxError:
        return None
    return Mutant(mutated, mutation.line, mutation.kind, old, new)


def mutate(code: str, rng: random.Random, skip_lines: range = range(0)) -> Mutant | None:
    """One random valid mutant: a kind chosen uniformly among those possible, then a site of that kind."""
    options = candidates(code, skip_lines)
    kinds = sorted(options)
    rng.shuffle(kinds)
    for kind in kinds:
        sites = options[kind][:]
        rng.shuffle(sites)
        for site in sites:
            mutant = apply(code, site)
            if mutant is not None:
                return mutant
    return None
