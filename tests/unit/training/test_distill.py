"""Self-distilled targets (SDFT): the rewrite prompt, which rewrites stand in for a reference, and the cache.
Training on them (the rows, the manifest, the artifact) is tested in test_sft.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.config import TasksConfig, configs_dir, load_config
from runtime.engines.base import EngineResult
from runtime.models import ModelEntry
from runtime.tasks.builders import TaskItem
from training.distill import Distiller, rewrite_messages, usable

TASKS = load_config(configs_dir() / "tasks.yaml", TasksConfig)


def _item(task: str = "generation", reference: str = "    return a + b", **meta) -> TaskItem:
    return TaskItem(id=f"{task}-1", task=task, split="train", module="m", reference=reference,
                    input='def add(a, b):\n    """Add two numbers."""\n', meta={"entry_point": "add"} | meta)


class FakeRunner:
    """Answers "REWRITE <n>" for the n-th prompt it is asked; counts what it generated."""

    def __init__(self) -> None:
        self.generated: list[str] = []

    def render(self, messages: list[dict[str, str]]) -> str:
        return "\n".join(m["content"] for m in messages)

    def generate(self, prompts, params, on_answer=None):
        """OfflineRunner.generate's contract: each answer reported to ``on_answer`` as it ends (4 at a time here)."""
        out = []
        for at in range(0, len(prompts), 4):
            batch = []
            for prompt in prompts[at:at + 4]:
                self.generated.append(prompt)
                batch.append(EngineResult(f"REWRITE {len(self.generated)}", len(prompt), 3, "stop", []))
            for i, answer in enumerate(batch, at):
                if on_answer:
                    on_answer(i, answer)
            out += batch
        return out


def _distiller(tmp_path: Path, runner: FakeRunner) -> Distiller:
    base = ModelEntry(name="b", kind="base", path=tmp_path / "b", source="test")
    return Distiller(base, TASKS, tmp_path / "home", "datahash", step=lambda _: None, runner_factory=lambda: runner)


def test_the_rewrite_prompt_is_the_tasks_own_with_the_reference_and_the_ask():
    messages = rewrite_messages(TASKS, _item())
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    request = messages[-1]["content"]
    assert request.startswith(TASKS.tasks["generation"].prompt.format(input=_item().input))
    assert "    return a + b" in request and request.endswith("write your own answer to the request above.")


@pytest.mark.parametrize(("answer", "ok"), [
    ("```python\ndef add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n```", True),
    ("    return a + b", True),
    ("", False),
    ("   \n", False),
    ("def add(a, b):\n    return (a +\n", False),  # does not parse: the reference stays
])
def test_a_generation_rewrite_stands_in_only_where_its_body_parses(answer, ok):
    assert usable(_item(), answer) is ok


def test_a_rewrite_cut_at_the_tasks_cap_keeps_the_reference():
    assert usable(_item("completion"), "y = 1") and not usable(_item("completion"), "y = 1", "length")


def test_a_rewrite_that_talks_about_the_reference_keeps_it():
    answer = "Here is my own answer, based on the reference answer:\n```python\n    return a + b\n```"
    assert not usable(_item(), answer)


def _review(clean: bool) -> TaskItem:
    meta = {"clean": True} if clean else {"clean": False, "line": 3, "kind": "comparison"}
    return TaskItem(id="r", task="review", split="train", module="m", input="1 | def f(x):", reference="", meta=meta)


@pytest.mark.parametrize(("clean", "answer", "ok"), [
    (False, "line: 3\nkind: comparison\nfix: if x < 1:", True),
    (False, "line: 4\nkind: comparison\nfix: if x < 1:", False),  # another line: a wrong label
    (False, "line: 3\nkind: negation\nfix: if x < 1:", False),
    (False, "no issues", False),
    (True, "no issues", True),
    (True, "line: 3\nkind: comparison\nfix: x", False),
])
def test_a_review_rewrite_stands_in_only_with_the_items_own_verdict(clean, answer, ok):
    assert usable(_review(clean), answer) is ok


def test_a_summary_rewrite_must_be_a_sentence_not_code():
    item = _item("summarization")
    assert usable(item, "Add two numbers.") and not usable(item, "return a + b")


def test_rewrites_are_generated_once_and_an_interrupted_line_is_generated_again(tmp_path):
    runner = FakeRunner()
    items = [TaskItem(id=f"c{i}", task="completion", split="train", module="m", input=f"x = {i}\n",
                      reference=f"y = {i}") for i in range(20)]
    first = _distiller(tmp_path, runner)(items[:18] + items[:2])  # an item drawn twice is rewritten once
    assert len(runner.generated) == 18 and set(first) == {f"c{i}" for i in range(18)}
    cache = next((tmp_path / "home" / "distilled" / "b").glob("*/completion.jsonl"))
    assert json.loads((cache.parent / "key.json").read_text())["data"] == "datahash"
    cache.write_text(cache.read_text() + '{"id": "c18", "answ')  # a write cut short
    again = _distiller(tmp_path, runner)(items)
    assert len(runner.generated) == 20  # c18 and c19 only
    assert {k: again[k] for k in first} == first
    lines = cache.read_text().splitlines()
    assert len(lines) == 21 and lines[18] == '{"id": "c18", "answ'  # the cut line ended and left; two answers after
    assert [json.loads(line)["id"] for line in lines[19:]] == ["c18", "c19"]


def test_a_changed_task_prompt_is_distilled_afresh(tmp_path):
    runner = FakeRunner()
    item = TaskItem(id="c0", task="completion", split="train", module="m", input="x = 1\n", reference="y = 1")
    _distiller(tmp_path, runner)([item])
    other = TASKS.model_copy(deep=True)
    other.tasks["completion"] = other.tasks["completion"].model_copy(update={"prompt": "Next line?\n\n{input}"})
    base = ModelEntry(name="b", kind="base", path=tmp_path / "b", source="test")
    Distiller(base, other, tmp_path / "home", "datahash", step=lambda _: None, runner_factory=lambda: runner)([item])
    assert len(runner.generated) == 2
