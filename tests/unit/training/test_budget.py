"""Budgets: a matched mix trains on exactly the union of its experts' rows for the sum of their steps; a dropped
item is replaced and counted; shipped Qwen configs (both seeds) are matched."""

from __future__ import annotations

from collections import Counter

import pytest

from runtime.config import configs_dir, load_config
from runtime.tasks import TaskItem
from training.budget import budget, matched_mix_problems, task_rows
from training.config import TrainConfig
from training.examples import Row
from training.mixing import mix

SIZES = {"generation": 3285, "summarization": 3274, "completion": 3285, "review": 2688}
QWEN = ["generation", "summarization", "completion", "review"]


def _qwen(task: str, suffix: str = "") -> TrainConfig:
    return load_config(configs_dir() / "train" / f"qwen-lora-{task}{suffix}.yaml", TrainConfig)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_mix_weighted_by_the_experts_steps_is_the_union_of_their_rows(seed):
    steps, batch = {"generation": 20, "summarization": 12, "completion": 20, "review": 8}, 4
    experts = Counter()
    for task, s in steps.items():
        experts.update(mix({task: SIZES[task]}, "concat", s * batch, seed).picks)
    mixed = mix(SIZES, "weighted", batch * sum(steps.values()), seed, weights=steps)
    assert Counter(mixed.picks) == experts
    other_seed = mix(SIZES, "weighted", batch * sum(steps.values()), seed + 1, weights=steps)
    assert Counter(other_seed.picks) != experts


@pytest.mark.parametrize("suffix", ["", "-s1"])
def test_the_shipped_qwen_mix_is_compute_matched_to_its_experts(suffix):
    mixed, experts = _qwen("mix", suffix), [_qwen(t, suffix) for t in QWEN]
    assert matched_mix_problems(mixed, experts, SIZES) == []
    steps = mixed.training["max_steps"]
    assert steps == sum(e.training["max_steps"] for e in experts)


def test_a_mismatched_mix_is_named():
    experts = [_qwen(t) for t in QWEN]
    mixed = _qwen("mix").model_copy(update={"training": {**_qwen("mix").training, "max_steps": 7}, "seed": 5})
    problems = "\n".join(matched_mix_problems(mixed, experts, SIZES))
    assert "max_steps 7 != the experts'" in problems and "seed differs" in problems  # another seed: other rows
    half_rows = _qwen("mix").mixing.model_copy(update={"total": 240})
    half = _qwen("mix", "").model_copy(update={"mixing": half_rows})
    assert "mix rows per task {'completion': 40" in "\n".join(matched_mix_problems(half, experts, SIZES))


def test_a_mix_that_self_distills_where_its_expert_does_not_is_named():
    experts = [_qwen(t) for t in QWEN]
    mixed = _qwen("mix")
    assert mixed.data.self_distill == ["generation"] == experts[0].data.self_distill  # shipped: both or neither
    plain = experts[0].model_copy(update={"data": experts[0].data.model_copy(update={"self_distill": []})})
    assert matched_mix_problems(mixed, [plain, *experts[1:]], SIZES) == [
        "data.self_distill differs on generation: mix ['generation'], expert []"]
    assert matched_mix_problems(mixed, experts, SIZES) == []


@pytest.mark.parametrize("task", [*QWEN, "mix"])
def test_second_seed_configs_differ_only_in_name_and_seed(task):
    first, second = _qwen(task), _qwen(task, "-s1")
    assert second.name == f"{first.name}-s1" and (first.seed, second.seed) == (0, 1)
    assert second.model_copy(update={"name": first.name, "seed": 0}) == first
    assert first.base_model == "qwen2.5-coder-0.5b" and first.precision == "bf16"


def _items(n: int) -> list[TaskItem]:
    return [TaskItem(f"t/{i}", "review", "train", "m", "x", "y", {"clean": True}) for i in range(n)]


def test_an_item_that_cannot_fit_is_replaced_by_the_next_draw_and_counted():
    too_long = {1, 4}

    def build(item: TaskItem, stats) -> Row | None:
        i = int(item.id.split("/")[1])
        return None if i in too_long else Row([1] * (i + 2), [-100] + [1] * (i + 1))

    rows, record = task_rows(_items(10), iter(range(10)), 5, build)
    assert [len(r.input_ids) for r in rows] == [2, 4, 5, 7, 8]  # items 0, 2, 3, 5, 6
    assert (record.rows, record.dropped_long_prompt, record.tokens, record.response_tokens) == (5, 2, 26, 21)
    rows, record = task_rows(_items(3), iter([1, 1, 1, 1, 1, 1, 1]), 2, build)  # never fits: gives up
    assert rows == [] and record.dropped_long_prompt == 1


def test_budget_states_rows_steps_and_tokens_seen_per_task():
    from training.budget import TaskRows

    per_task = {"completion": TaskRows(rows=8, tokens=800), "review": TaskRows(rows=8, tokens=1600)}
    b = budget(per_task, steps=4, batch=4)
    assert (b["rows"], b["epochs"], b["tokens_seen"]) == (16, 1.0, 2400)
    assert b["per_task"]["review"]["tokens_seen"] == 1600 and b["per_task"]["review"]["steps_share"] == 2
    assert budget(per_task, steps=8, batch=4)["per_task"]["completion"]["tokens_seen"] == 1600  # two passes
