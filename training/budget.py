"""Training budgets: the rows a run trains on per task, what was dropped, cut or cropped on the way, the steps and
tokens it spends, and the check that a data mix is compute matched to its experts.

A matched mix trains on exactly the union of the experts' rows (per task the same seeded draws, see
``training/mixing.py``) for as many optimizer steps as the experts together, with the same batch, sequence
length, learning rate and adapter: every manifest states its budget, so the match can be read off them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from runtime.tasks import TaskItem, crop_counts
from training.config import TrainConfig
from training.examples import IGNORE, BuildStats, Row
from training.mixing import mix

RowBuilder = Callable[[TaskItem, BuildStats], Row | None]


@dataclass
class TaskRows:
    """What one task contributed: its rows, and every item that did not go in whole."""

    rows: int = 0
    tokens: int = 0  # prompt + response tokens of the rows
    response_tokens: int = 0  # the tokens the loss is on
    dropped_long_prompt: int = 0  # distinct items whose prompt left < 16 tokens of max_length (replaced)
    truncated_response: int = 0  # rows whose response was cut at max_length
    cropped_input: int = 0  # rows whose input shows a part of the function (tasks.views)
    lines_hidden: int = 0  # input lines those crops leave out, in all


def items_per_step(config: TrainConfig) -> int:
    t = config.training
    return int(t.get("per_device_train_batch_size", 8)) * int(t.get("gradient_accumulation_steps", 1))


def task_rows(items: list[TaskItem], draws: Iterator[int], count: int, build: RowBuilder) -> tuple[list[Row], TaskRows]:
    """``count`` rows from the items in draw order; an item whose prompt cannot fit is counted and replaced by
    the next draw (so a budget of rows stays exact), giving up after one further pass over the items."""
    rows: list[Row] = []
    used: list[TaskItem] = []
    stats, dropped = BuildStats(), set()
    for tried, i in enumerate(draws):
        if len(rows) == count or tried >= count + len(items):
            break
        row = build(items[i], stats)
        if row is None:
            dropped.add(items[i].id)
            continue
        rows.append(row)
        used.append(items[i])
    crops = next(iter(crop_counts(used).values()), {"cropped": 0, "lines_hidden": 0})
    record = TaskRows(rows=len(rows), tokens=sum(len(r.input_ids) for r in rows),
                      response_tokens=sum(sum(1 for x in r.labels if x != IGNORE) for r in rows),
                      dropped_long_prompt=len(dropped), truncated_response=stats.truncated_response,
                      cropped_input=crops["cropped"], lines_hidden=crops["lines_hidden"])
    return rows, record


def budget(per_task: dict[str, TaskRows], steps: int, batch: int) -> dict:
    """Rows, steps and tokens: per task what was built, and the tokens seen at ``steps`` x ``batch`` rows
    (``epochs`` passes over the rows; 1.0 when the rows are exactly what the steps consume)."""
    rows = sum(r.rows for r in per_task.values())
    epochs = steps * batch / rows if rows and steps > 0 else 1.0
    return {"steps": steps, "items_per_step": batch, "rows": rows, "epochs": round(epochs, 4),
            "tokens_seen": round(sum(r.tokens for r in per_task.values()) * epochs),
            "per_task": {t: asdict(r) | {"tokens_seen": round(r.tokens * epochs),
                                         "steps_share": round(r.rows / batch, 2)} for t, r in per_task.items()}}


def matched_mix_problems(mixed: TrainConfig, experts: list[TrainConfig], sizes: dict[str, int]) -> list[str]:
    """Why ``mixed`` is not compute matched to ``experts`` (empty when it is): the union of their rows, the sum
    of their steps, and the same batch, sequence length, learning rate, adapter, precision, seed and targets
    (``data.self_distill``).
    ``sizes``: train items per task."""
    problems = []
    if sorted(mixed.tasks) != sorted(t for e in experts for t in e.tasks):
        problems.append(f"mix tasks {mixed.tasks} are not the experts' {[e.tasks[0] for e in experts]}")
    same = {"base_model": lambda c: c.base_model, "lora": lambda c: c.lora, "precision": lambda c: c.precision,
            "seed": lambda c: c.seed, "data.max_length": lambda c: c.data.max_length,
            "items per step": items_per_step,
            "learning_rate": lambda c: c.training.get("learning_rate"),
            "lr_scheduler_type": lambda c: c.training.get("lr_scheduler_type")}
    for what, get in same.items():
        if any(get(e) != get(mixed) for e in experts):
            problems.append(f"{what} differs: mix {get(mixed)!r}, experts {[get(e) for e in experts]!r}")
    for e in experts:  # the same targets: a task is self-distilled in the mix exactly where its expert is
        if set(e.data.self_distill) != set(mixed.data.self_distill) & set(e.tasks):
            problems.append(f"data.self_distill differs on {e.tasks[0]}: mix {sorted(mixed.data.self_distill)}, "
                            f"expert {sorted(e.data.self_distill)}")
    steps = sum(int(e.training.get("max_steps", -1)) for e in experts)
    if int(mixed.training.get("max_steps", -1)) != steps:
        problems.append(f"mix max_steps {mixed.training.get('max_steps')} != the experts' {steps} together")
    want = {e.tasks[0]: _counts(e, sizes)[e.tasks[0]] for e in experts}
    if (got := _counts(mixed, sizes)) != want:
        problems.append(f"mix rows per task {got} != the experts' {want}")
    return problems


def _counts(config: TrainConfig, sizes: dict[str, int]) -> dict[str, int]:
    m = config.mixing
    steps = int(config.training.get("max_steps", -1))
    total = m.total or (steps * items_per_step(config) if steps > 0 else None)
    return mix({t: sizes[t] for t in config.tasks}, m.strategy, total, config.seed, dict(m.weights),
               m.temperature).counts
