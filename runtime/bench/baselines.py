"""Trivial answers per task, scored on the same items as the options, so a reader sees the floor a metric gives
away for nothing (echoing the docstring scores chrF++ on generation; "Return the <name words>." scores BLEU on
summarization; repeating the previous line scores edit similarity on completion; "no issues" is right on every
clean review item). An option near or under these has learned nothing the metric can see."""

from __future__ import annotations

import re
from collections.abc import Callable

from runtime.tasks import NO_ISSUES, TaskItem

Baseline = Callable[[TaskItem], str]


def _docstring_echo(item: TaskItem) -> str:
    """The body is the prompt's docstring again (what a model that copies its input would write)."""
    return "\n".join(item.input.splitlines()[1:])


def _name_words(item: TaskItem) -> str:
    match = re.search(r"def\s+(\w+)", item.input)
    words = (match.group(1) if match else "value").strip("_").replace("_", " ")
    return f"Return the {words}."


def _previous_line(item: TaskItem) -> str:
    lines = [ln.strip() for ln in item.input.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


BASELINES: dict[str, dict[str, Baseline]] = {
    "generation": {"docstring echo": _docstring_echo, "pass": lambda item: "    pass"},
    "summarization": {"function-name summary": _name_words, "constant": lambda item: "Return the value."},
    "completion": {"previous line": _previous_line, "constant": lambda item: "return None"},
    "review": {"no issues": lambda item: NO_ISSUES, "constant line": lambda item: "line: 2\nkind: bug\nfix: pass"},
    "humaneval": {"pass": lambda item: "    pass"},
}


def baseline_answers(task: str, items: list[TaskItem]) -> dict[str, list[str]]:
    """Each of the task's trivial answerers, on every item: {baseline name: answers}."""
    return {name: [answer(it) for it in items] for name, answer in BASELINES.get(task, {}).items()}
