"""The task registry: every code task declared once, the way mergekit registers its merge methods
(``mergekit/merge_methods/registry.py``: one object per method, looked up by name).

A task declares where its items come from (a builder over stdlib functions, or a fixed set), whose prompt and
sampling in ``configs/tasks.yaml`` it uses, how its answers are scored (``score``: every metric, format failures
and intervals), its headline metric and the headline as a statistic over item indices (``statistic``: for
bootstrap intervals and paired tests). Training, ``runtime eval``, the bench, the merge sweep and the agent take
tasks from here; nothing else lists task names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.errors import BadRequestError
from runtime.tasks import scoring
from runtime.tasks.builders import BUILDERS, Function, TaskItem
from runtime.tasks.sandbox import Sandbox

Scorer = Callable[[list[TaskItem], list[str], Sandbox | None], dict]
Statistic = Callable[[list[TaskItem], list[str], Sandbox | None], Any]


@dataclass(frozen=True)
class Task:
    name: str
    headline: str  # the metric that ranks options on this task (a key of ``score``'s result)
    score: Scorer  # (items, answers, sandbox) -> metrics
    statistic: Statistic  # (items, answers, sandbox) -> the headline as a function of item indices
    build: Callable[[Function, str], TaskItem | None] | None  # stdlib function -> item; None: a fixed set
    prompt_task: str  # the entry of configs/tasks.yaml (prompt, sampling) and the route that answers it
    stands_for: str | None = None  # where both are scored, this task's headline ranks in that task's place
    runs_code: bool = False  # scoring executes model-written code (in the sandbox)

    @property
    def trained(self) -> bool:
        """A task with training data: an expert is trained for it, and it has a route of its own."""
        return self.build is not None


def _stdlib(name: str, headline: str) -> Task:
    return Task(name, headline, getattr(scoring, f"score_{name}"), getattr(scoring, f"{name}_statistic"),
                BUILDERS[name], name)


# Continuous headlines where a small model would sit at 0 on an exact one (completion's exact match and review's
# fix match are near 0 at 135M; they are reported beside); the 0/1 ones get exact intervals.
TASKS: dict[str, Task] = {t.name: t for t in (
    _stdlib("generation", "chrf_pp"),
    _stdlib("summarization", "smoothed_bleu4"),
    _stdlib("completion", "edit_similarity"),
    _stdlib("review", "line_accuracy"),
    # generation on other problems, decided by their tests: where both are scored it ranks generation
    Task("humaneval", "pass_at_1", scoring.score_humaneval, scoring.humaneval_statistic, None, "generation",
         stands_for="generation", runs_code=True),
)}
TRAINED: tuple[str, ...] = tuple(t for t, task in TASKS.items() if task.trained)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise BadRequestError(f"unknown task '{name}'", fix=f"use one of: {', '.join(TASKS)}")
    return TASKS[name]


def ranked_sets(scored: list[str]) -> dict[str, str]:
    """{scored set: the task whose route answers it} of the sets that rank the options: a set that stands for
    another (HumanEval's pass@1 for generation) ranks in its place where both are scored, and the other's
    headline is then a second column."""
    replaced = {TASKS[s].stands_for for s in scored}
    return {s: TASKS[s].prompt_task for s in scored if s not in replaced}
