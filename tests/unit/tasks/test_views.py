"""What models see of an item: review windows keep line numbers and the bug, completion prefixes end where the
answer goes, and every crop is counted."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from runtime.tasks import build_dataset, crop_counts, load_items, view
from runtime.tasks.builders import TaskItem, numbered
from runtime.tasks.views import COMPLETION_LINES, REVIEW_WINDOW, SUMMARIZATION_LINES, window_start


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(home=tmp_path_factory.mktemp("home")).parent.parent


def _review(n_lines: int, bug: int | None, item_id: str = "m:f") -> TaskItem:
    code = "def f(a):\n" + "\n".join(f"    x{i} = a + {i}" for i in range(2, n_lines + 1))
    meta = {"clean": True} if bug is None else {"clean": False, "line": bug, "kind": "arithmetic"}
    return TaskItem(f"review/{item_id}", "review", "train", "m", numbered(code), "no issues", meta)


def _numbers(text: str) -> list[int]:
    return [int(line.split(" | ", 1)[0]) for line in text.splitlines()]


def test_a_review_window_keeps_original_line_numbers_and_the_bug():
    raw = _review(60, bug=45)
    shown = view(raw)
    numbers = _numbers(shown.input)
    assert len(numbers) == REVIEW_WINDOW and numbers == list(range(numbers[0], numbers[0] + REVIEW_WINDOW))
    assert 45 in numbers and shown.meta["view"] == {"lines": [numbers[0], numbers[-1]], "of": 60}
    raw_lines = raw.input.splitlines()
    assert all(line == raw_lines[n - 1] for line, n in zip(shown.input.splitlines(), numbers, strict=True))
    assert shown.reference == raw.reference and shown.meta["line"] == 45
    assert view(raw) == shown  # seeded: the same window every time


def test_short_functions_are_shown_whole():
    raw = _review(REVIEW_WINDOW, bug=3)
    assert view(raw) is raw


def test_every_real_review_window_holds_its_bug_at_a_spread_of_places(home: Path):
    raws = load_items("review", "train", home=home, raw=True)  # ids repeat (a property's getter and setter)
    positions = Counter()
    for raw, item in zip(raws, load_items("review", "train", home=home), strict=True):
        numbers = _numbers(item.input)
        assert len(numbers) <= REVIEW_WINDOW
        assert numbers == list(range(numbers[0], numbers[-1] + 1))
        assert item.input in raw.input
        if not item.meta["clean"]:
            assert item.meta["line"] in numbers  # "line: N" is right in the window
            if "view" in item.meta:
                positions[numbers.index(item.meta["line"])] += 1
    # a window centred on its bug would give the answer away: the bug sits anywhere in it (the last place is the
    # most common, 10% here: bugs on a function's last line, a `return`, keep their place at its end)
    assert len(positions) == REVIEW_WINDOW and max(positions.values()) < 0.15 * sum(positions.values())


def test_clean_windows_are_seeded_and_vary():
    starts = {view(_review(80, bug=None, item_id=f"m:f{i}")).meta["view"]["lines"][0] for i in range(40)}
    assert len(starts) > 10
    assert view(_review(80, None, "m:g")) == view(_review(80, None, "m:g"))


def test_window_start_is_uniform_over_windows_that_hold_the_anchor():
    rng = random.Random(0)
    starts = Counter(window_start(100, 50, 20, rng) for _ in range(4000))
    assert set(starts) == set(range(31, 51))
    assert {window_start(30, 2, 20, rng) for _ in range(200)} == {1, 2}
    assert {window_start(30, 29, 20, rng) for _ in range(200)} == {10, 11}


def test_a_completion_prefix_keeps_its_last_lines(home: Path):
    raws = load_items("completion", "train", home=home, raw=True)
    cropped = 0
    for raw, item in zip(raws, load_items("completion", "train", home=home), strict=True):
        assert raw.input.endswith(item.input) and item.reference == raw.reference
        assert len(item.input.splitlines()) <= COMPLETION_LINES
        if "view" in item.meta:
            cropped += 1
            of = len(raw.input.splitlines())
            assert item.meta["view"] == {"lines": [of - COMPLETION_LINES + 1, of], "of": of}
    assert cropped > 0


def test_a_summarization_input_keeps_its_first_lines(home: Path):
    pairs = zip(load_items("summarization", "train", home=home, raw=True),
                load_items("summarization", "train", home=home), strict=True)
    raw, item = next((raw, it) for raw, it in pairs if "view" in it.meta)
    assert raw.input.startswith(item.input) and len(item.input.splitlines()) == SUMMARIZATION_LINES


def test_generation_and_humaneval_are_never_cropped(home: Path):
    for task in ("generation", "humaneval"):
        assert load_items(task, "test", home=home) == load_items(task, "test", home=home, raw=True)


def test_crop_counts_per_task():
    items = [view(_review(60, 45)), view(_review(10, 3)), view(_review(30, None, "m:c"))]
    assert crop_counts(items) == {"review": {"items": 3, "cropped": 2, "lines_hidden": 40 + 10}}


def test_the_card_hash_that_keys_answers_and_manifests_covers_the_views(home: Path, monkeypatch):
    from runtime.tasks import load_card, views

    card = load_card(home)
    assert card["stored_content_hash"] != card["content_hash"] and card["views"] == views.VIEW
    monkeypatch.setattr(views, "VIEW", {**views.VIEW, "review_window": 12})
    monkeypatch.setattr("runtime.tasks.dataset.VIEW", views.VIEW)
    assert load_card(home)["content_hash"] != card["content_hash"]
    assert load_card(home)["stored_content_hash"] == card["stored_content_hash"]
