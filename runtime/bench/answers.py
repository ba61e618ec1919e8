"""Where the bench keeps scored answers, and how options share them.

- an option's answers: ``$MIXMERGE_HOME/cache/bench-accuracy/KEY.json``, KEY = the weights that answer each task
  (model and adapter manifests), the items and the sampling, and what computes them (engine, numerics revision,
  library versions): greedy answers depend on nothing else, so the same weights are never scored twice;
- each task's answers also under ``bench-accuracy/task/KEY.json`` by that task's key alone, so an option that routes
  a task to weights another option already answered it with (the hybrid) takes those answers instead of asking.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.bench.keys import adapters_of, digest, weights_digest
from runtime.bench.results import AnswersFile, TaskAnswers, read_record
from runtime.config import TasksConfig
from runtime.deploy import ServingPlan
from runtime.engines.attention import NUMERICS
from runtime.evaluate import sampling_for
from runtime.hardware import served_on
from runtime.router import route
from runtime.tasks import TASKS, TaskItem, load_card
from runtime.tasks.prompts import task_config


@dataclass(frozen=True)
class Files:
    """One option's answer files on one engine: its whole answers (keyed by the scoring engine) and, where this
    engine scores, each task's shared file."""

    answers: Path
    tasks: dict[str, Path]


@dataclass
class AnswerCache:
    home: Path  # the model store's home
    tasks: TasksConfig  # the prompts and the (capped) sampling
    items: dict[str, list[TaskItem]]  # what is asked, per task
    versions: dict[str, str]  # the libraries that compute answers
    say: Callable[[str], None]

    def files(self, plan: ServingPlan, engine: str, scorer: str | None) -> Files:
        """``scorer``: the engine whose answers this one is checked against (None: this engine scores, and its
        tasks' answers are shared)."""
        served, card = self.served(plan), load_card()["content_hash"]
        folder = self.home / "cache" / "bench-accuracy"
        ids = {t: [it.id for it in its] for t, its in self.items.items()}
        caps = {t: (s.max_new_tokens, s.stop) for t, s in ((t, sampling_for(self.tasks, t)) for t in self.items)}
        key = digest(served, ids, caps, self.tasks.model_dump(), card, self.computed_by(scorer or engine))
        tasks = {} if scorer is not None else {  # each task's key: the same parts for that task alone
            t: folder / "task" / f"{digest(t, served[t], ids[t], caps[t], prompt, card, self.computed_by(engine))}.json"
            for t, prompt in ((t, task_config(self.tasks, t).model_dump()) for t in self.items)}
        return Files(folder / f"{key}.json", tasks)

    def served(self, plan: ServingPlan) -> dict[str, list[str]]:
        """Per task, what answers it: the routed model's and adapter's weights, the dtype (and a GPU)."""
        adapters, served = adapters_of(plan), {}
        for task in self.items:
            r = route(plan.table, TASKS[task].prompt_task)
            device, dtype = served_on(plan.engines[r.engine].config)
            served[task] = [weights_digest(Path(r.engine)), weights_digest(adapters[r.adapter]) if r.adapter else "",
                            dtype, *([device] if device not in (None, "cpu") else [])]  # (keys made before: cpu)
        return served

    def computed_by(self, engine: str) -> list:
        """What computes an engine's answers and timings: the engine, its numerics revision (hf) and the library
        versions it runs on (vllm's only where it is the engine)."""
        libraries = {k: v for k, v in self.versions.items() if k != "vllm" or engine == "vllm"}
        return [engine, NUMERICS if engine == "hf" else 0, libraries]

    def share(self, files: Files) -> None:
        """Each task's answers in ``files.answers`` into its task file (atomic; a readable one is kept)."""
        scored = read_record(files.answers, AnswersFile)
        for task, path in files.tasks.items():
            if task in scored.answers and task_answers(path) is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(TaskAnswers(task=task, option=scored.option, engine=scored.engine,
                                           answers=[a.model_dump() for a in scored.answers[task]]).model_dump_json())
                tmp.replace(path)

    def shared(self, option: str, files: Files) -> dict[str, dict[str, dict]]:
        """The answers other options already gave to a task with the same key: {task: {id: answer}} (an option's
        own are not taken back: deleting its answers file asks them again)."""
        known: dict[str, dict[str, dict]] = {}
        for task, path in files.tasks.items():
            if not path.is_file():
                continue
            shared = task_answers(path)
            if shared is None:
                self.say(f"{path} is not a task's answers; asking again (it is replaced)")
                path.unlink(missing_ok=True)
            elif shared.option != option:
                ids = {it.id for it in self.items[task]}
                known[task] = {a.id: a.model_dump() for a in shared.answers if a.id in ids}
        return known


def task_answers(path: Path) -> TaskAnswers | None:
    """A task file's answers, or None where there is none or it is not one (torn, or another format)."""
    try:
        return TaskAnswers.model_validate_json(path.read_text())
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
