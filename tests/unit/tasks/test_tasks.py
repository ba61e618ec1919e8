"""Task data: determinism, no module overlap across splits, valid mutations, faithful items."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import pytest

from runtime.errors import BadRequestError
from runtime.tasks import build_dataset, load_items
from runtime.tasks.builders import build_completion, build_generation, build_review, build_summarization
from runtime.tasks.mutations import BUG_KINDS, candidates, mutate
from runtime.tasks.source import collect, extract_functions, split_by_module, stdlib_dir


@pytest.fixture(scope="module")
def functions():
    return collect()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(home=tmp_path_factory.mktemp("home"))


def test_collection_is_deterministic_and_filtered(functions):
    again, source_hash = collect()
    assert [f.id for f in again] == [f.id for f in functions[0]] and source_hash == functions[1]
    fns = functions[0]
    assert len(fns) > 3000
    assert not any(f.qualname.rsplit(".", 1)[-1].startswith("test") for f in fns)
    assert not any(f.module.split(".")[0] in ("idlelib", "lib2to3", "test") for f in fns)
    assert len({f.digest for f in fns}) == len(fns)  # deduplicated by code hash
    for f in fns[:500]:
        words = len(f.docstring.split("\n\n", 1)[0].split())
        assert 3 <= words <= 256 and 2 <= len(f.lines) - f.body_start <= 200


def test_extract_applies_the_filters():
    source = '''
def kept(a, b):
    """Add two numbers together please."""
    c = a + b
    return c

def short_doc(a):
    """Too short."""
    return a
    pass

def test_something():
    """A test function is left out always."""
    x = 1
    return x

class K:
    def method(self):
        """A method counts just like a function."""
        y = 2
        return y
'''
    assert [f.qualname for f in extract_functions("m", source)] == ["kept", "K.method"]


def test_splits_are_by_module_and_near_80_10_10(functions):
    splits = split_by_module(functions[0])
    modules = {s: {f.module for f in fns} for s, fns in splits.items()}
    assert not modules["train"] & modules["val"] and not modules["train"] & modules["test"]
    assert not modules["val"] & modules["test"]
    total = sum(len(v) for v in splits.values())
    for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(len(splits[split]) / total - share) < 0.03


def test_every_mutation_parses_differs_in_exactly_one_line(functions):
    fns = functions[0][:400]
    kinds = set()
    for i, fn in enumerate(fns):
        mutant = mutate(fn.code, random.Random(i), skip_lines=range(fn.doc_start, fn.doc_end + 1))
        if mutant is None:
            continue
        ast.parse(mutant.code)
        before, after = fn.code.splitlines(), mutant.code.splitlines()
        changed = [j for j, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert changed == [mutant.line] and mutant.line > fn.doc_end
        assert mutant.kind in BUG_KINDS
        kinds.add(mutant.kind)
    assert kinds == set(BUG_KINDS)  # all seven kinds occur


@pytest.mark.parametrize(
    ("code", "kind", "expected"),
    [
        ("def f(a, b):\n    if a < b:\n        return a\n", "comparison", "    if a >= b:"),
        ("def f(a, b):\n    return a + b\n", "arithmetic", "    return a - b"),
        ("def f(a, b):\n    return a and b\n", "boolean", "    return a or b"),
        ("def f(a):\n    return a[0]\n", "off-by-one", "    return a[1]"),
        ("def f(a):\n    if not a:\n        return 1\n", "negation", "    if a:"),
        ("def f(a):\n    return True\n", "return", "    return False"),
        ("def f(a, b):\n    return a, b\n", "return", "    return b, a"),
        ("def f(a, b):\n    print(b)\n", "variable", "    print(a)"),
    ],
)
def test_each_bug_kind_by_example(code: str, kind: str, expected: str):
    from runtime.tasks.mutations import apply

    site = candidates(code)[kind][0]
    mutant = apply(code, site)
    assert mutant is not None and mutant.buggy_line == expected


def test_items_are_faithful_to_their_function(functions):
    fn = next(f for f in functions[0] if f.doc_start == 1 and len(f.lines) > 6)
    gen = build_generation(fn, "test")
    assert gen.input + "\n" + gen.reference == fn.code
    summ = build_summarization(fn, "test")
    assert fn.docstring.split()[0] in summ.reference and '"""' not in summ.input.splitlines()[1]
    ast.parse(summ.input)
    comp = build_completion(fn, "test")
    assert fn.code.startswith(comp.input) and comp.reference in fn.code
    review = build_review(fn, "test")
    assert review is None or review.reference == "no issues" or review.reference.startswith("line: ")


def test_dataset_build_is_deterministic_with_card(dataset: Path, tmp_path: Path):
    card = json.loads((dataset / "card.json").read_text())
    assert card["python"] and card["source_hash"] and card["built"]
    assert set(card["items"]) == {"generation", "summarization", "completion", "review", "humaneval"}
    assert card["items"]["humaneval"] == {"test": 164}
    assert 0.25 <= card["review"]["clean_share"] <= 0.35
    again = build_dataset(home=tmp_path)
    assert json.loads((again / "card.json").read_text())["content_hash"] == card["content_hash"]


def test_splits_of_every_task_share_no_module(dataset: Path):
    for task in ("generation", "summarization", "completion", "review"):
        mods = {s: {json.loads(ln)["module"] for ln in (dataset / task / f"{s}.jsonl").read_text().splitlines()}
                for s in ("train", "val", "test")}
        assert not (mods["train"] & mods["test"]) and not (mods["train"] & mods["val"])


def test_load_items_limit_and_errors(dataset: Path):
    home = dataset.parent.parent
    assert len(load_items("review", "val", limit=7, home=home)) == 7
    with pytest.raises(BadRequestError, match="unknown task 'reveiw'.*generation"):
        load_items("reveiw", "test", home=home)
    with pytest.raises(BadRequestError, match="HumanEval has only the test split"):
        load_items("humaneval", "train", home=home)


def test_stdlib_dir_is_the_running_interpreters():
    import json as json_module

    assert Path(json_module.__file__).is_relative_to(stdlib_dir())
