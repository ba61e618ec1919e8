"""Self-distilled targets (``data.self_distill``): the base model rewrites each reference answer in its own words,
and the task trains on the rewrite instead of the reference.

This is SDFT (Yang et al., ACL 2024, "Self-Distillation Bridges Distribution Gap in Language Model Fine-Tuning"):
fine-tuning an instruct model on answers far from its own distribution costs it abilities it had, and training on
its own rendering of the same answers keeps them. Why here: Qwen2.5-Coder-0.5B-Instruct passes 58.5% of HumanEval
untuned, and every generation expert trained on the standard library's bare function bodies fell to 27-36%,
whatever the bodies' format, learning rate or selection: each one learned to answer with a short body where the
base writes the whole function (median 158 against 24-30 tokens;
benchmarks/results/2026-11-26-qwen2.5-coder-0.5b-cpu/experiments/README.md).

A rewrite is generated once per (base model, its dtype, task data, task prompt, rewrite prompt, item) and cached as
JSON lines under ``$MIXMERGE_HOME/distilled/BASE/KEY/TASK.jsonl`` (``key.json`` beside it says what KEY stands
for), so the expert, the mix that trains on the same rows and a resumed run share it. A rewrite ``usable`` turns
down (cut short, talking about the reference, or not a right-form answer) keeps the reference; the manifest counts
both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from runtime.config import TasksConfig
from runtime.engines.attention import NUMERICS
from runtime.evaluate import sampling_for
from runtime.models import ModelEntry
from runtime.tasks.builders import TaskItem
from runtime.tasks.prompts import messages_for, task_config
from runtime.tasks.scoring import code_form, first_line, function_body, parse_review, summary_line, text_form

__all__ = ["PROMPT_VERSION", "Distiller", "rewrite_messages", "usable"]
log = logging.getLogger(__name__)

PROMPT_VERSION = 1  # bump when the rewriting changes in a way the cache key below cannot see
# SDFT's template ("Below are an instruction that describes a task along with a reference answer. Using the
# reference answer as a guide, write your own response.") in the task's chat form: its system message and request
REWRITE = ("{request}\n\nA reference answer:\n\n{reference}\n\n"
           "Using the reference answer as a guide, write your own answer to the request above.")
# a rewrite that talks about the reference or the ask is not an answer to the task (SDFT's own filter:
# sail-sg/sdft, eval/gen_distilled_data.py)
LEAKS = ("reference answer", "your own answer", "your own response", "own words")
BATCH = 16  # rows the engine decodes at once (its answers do not depend on it: not in the cache key)


def rewrite_messages(tasks: TasksConfig, item: TaskItem) -> list[dict[str, str]]:
    """The task's own messages, its request followed by the reference and the ask to answer in the model's words
    (SDFT's template, in the task's chat form)."""
    *head, request = messages_for(tasks, item.task, item)
    return [*head, {"role": "user", "content": REWRITE.format(request=request["content"], reference=item.reference)}]


def usable(item: TaskItem, answer: str, finish_reason: str = "stop") -> bool:
    """Whether a rewrite may stand in for the reference: a whole answer (not cut at the task's cap) that does not
    talk about the reference, read by the task's scorer as an answer of the right form: for generation a
    function body that parses, for review the item's own verdict (its line and kind, or "no issues"), for
    summarization and completion a line of the right kind."""
    if finish_reason == "length" or not answer.strip() or any(leak in answer.lower() for leak in LEAKS):
        return False
    if item.task == "generation":
        body = function_body(answer, str(item.meta.get("entry_point", "")), item.input)
        return code_form(answer, item.input, body) == "ok"
    if item.task == "review":
        review = parse_review(answer)
        if item.meta.get("clean"):
            return review.clean
        return review.line == item.meta.get("line") and review.kind == item.meta.get("kind")
    if item.task == "summarization":
        return text_form(answer, summary_line(answer), code_is_off=True) == "ok"
    return text_form(answer, first_line(answer)) == "ok"


class Distiller:
    """Rewrites of task items by ``base``, greedy in the dtype the engines serve, cached per task (``folder``)."""

    def __init__(self, base: ModelEntry, tasks: TasksConfig, home: Path, data_hash: str,
                 step: Callable[[str], None] = log.info, runner_factory: Callable[[], object] | None = None) -> None:
        from runtime.hardware import resolve_device, resolve_dtype

        self.base = base
        self.tasks = tasks
        self.home = home
        self.data_hash = data_hash
        self.dtype = resolve_dtype("auto", resolve_device("auto"))  # the OfflineRunner's, below
        self.step = step
        self._runner_factory = runner_factory or self._hf_runner
        self._runner = None  # loaded at the first rewrite not in the cache
        self.given: list[dict] = []

    def _hf_runner(self):
        from runtime.engines.offline import OfflineRunner

        return OfflineRunner(self.base.path, dtype="auto", max_batch_size=BATCH)

    def __call__(self, items: list[TaskItem]) -> dict[str, str]:
        """Item id -> its target: the usable rewrites of ``items`` (generated where not cached); the others keep
        their references (not in the result)."""
        out: dict[str, str] = {}
        by_task: dict[str, dict[str, TaskItem]] = {}
        for item in items:  # an item drawn twice (a mix larger than its task) is rewritten once
            by_task.setdefault(item.task, {})[item.id] = item
        for task, unique in by_task.items():
            group = list(unique.values())
            answers = self._answers(task, group)
            for it in group:
                answer, finish = answers[it.id]
                keep = usable(it, answer, finish)
                self.given.append({"id": it.id, "task": task, "usable": keep, "finish_reason": finish,
                                   "answer": answer})
                if keep:
                    out[it.id] = answer
        return out

    def save(self, path: Path) -> None:
        """Every rewrite handed out, usable or not, as JSON lines (kept with the trained artifact)."""
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.given))

    def close(self) -> None:
        """Free the model and its engine's threads (training loads its own)."""
        if self._runner is not None and hasattr(self._runner, "close"):
            self._runner.close()
        self._runner = None

    def folder(self, task: str) -> Path:
        """Where ``task``'s rewrites are cached: one folder per everything that changes them."""
        folder = self.home / "distilled" / self.base.name / self.key_hash(task)
        if not (folder / "key.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "key.json.tmp"
            tmp.write_text(json.dumps(self.key(task), indent=2) + "\n")
            tmp.replace(folder / "key.json")
        return folder

    def key(self, task: str) -> dict:
        """Everything that changes a rewrite (what ``usable`` keeps is decided on reading: not in it)."""
        return {"base": self.base.name, "base_source": self.base.source, "dtype": self.dtype, "data": self.data_hash,
                "version": PROMPT_VERSION, "rewrite": REWRITE, "task_prompt": task_config(self.tasks, task).model_dump(
                    mode="json"), "sampling": asdict(sampling_for(self.tasks, task)), "numerics": NUMERICS}

    def key_hash(self, task: str) -> str:
        return hashlib.sha256(json.dumps(self.key(task), sort_keys=True).encode()).hexdigest()[:16]

    def _answers(self, task: str, items: list[TaskItem]) -> dict[str, tuple[str, str]]:
        path = self.folder(task) / f"{task}.jsonl"
        cached = _read(path)
        missing = [it for it in items if it.id not in cached]
        if missing:
            self._generate(task, missing, path, cached)
        return {it.id: cached[it.id] for it in items}

    def _generate(self, task: str, items: list[TaskItem], path: Path, cached: dict[str, tuple[str, str]]) -> None:
        self.step(f"self-distilling {len(items)} {task} targets with {self.base.name} (cached in {path.parent})")
        if self._runner is None:
            self._runner = self._runner_factory()
        runner = self._runner
        params = sampling_for(self.tasks, task)  # as the task is answered: its cap and stop strings, greedy
        prompts = [runner.render(rewrite_messages(self.tasks, it)) for it in items]
        if path.is_file() and not path.read_bytes().endswith(b"\n"):
            with path.open("a") as f:  # end a line an interrupted run cut short: it is skipped, not joined
                f.write("\n")
        start, done = time.monotonic(), 0

        def keep(i: int, gen) -> None:
            nonlocal done
            with path.open("a") as f:  # as answers end: an interrupted run keeps what it finished
                cached[items[i].id] = (gen.text, gen.finish_reason)
                f.write(json.dumps({"id": items[i].id, "answer": gen.text, "finish_reason": gen.finish_reason}) + "\n")
            done += 1
            if done % BATCH and done < len(items):
                return  # a line per BATCH answers
            spent = time.monotonic() - start
            self.step(f"  {done}/{len(items)} {task} targets, {spent:.0f} s"
                      + (f", ~{spent / done * (len(items) - done):.0f} s left" if done < len(items) else ""))

        runner.generate(prompts, params, on_answer=keep)


def _read(path: Path) -> dict[str, tuple[str, str]]:
    """The cached (answer, finish reason) per item; a line cut short by an interrupted write is skipped (its item
    is generated again)."""
    cached: dict[str, tuple[str, str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            cached[row["id"]] = (row["answer"], row["finish_reason"])
    return cached
