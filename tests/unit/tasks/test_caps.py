"""Output caps: the cap that covers a share of reference lengths, and the shipped caps measured against the real
references under the served tokenizers (where they are on this machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import TasksConfig, configs_dir, load_config
from runtime.tasks import build_dataset, load_items
from runtime.tasks.caps import covering_cap, fits_share, measure, reference_tokens
from runtime.tasks.prompts import task_config

MODELS = Path.home() / ".cache" / "mixmerge" / "models"


def test_the_covering_cap_is_the_nearest_rank_percentile():
    lengths = list(range(1, 101))
    assert covering_cap(lengths, 0.95) == 95 and fits_share(lengths, 95) == 0.95
    assert fits_share(lengths, 94) < 0.95  # one token less and the share is missed
    assert covering_cap([7], 0.95) == 7 and covering_cap([3, 1, 2], 1.0) == 3
    with pytest.raises(ValueError, match="no lengths"):
        covering_cap([])


def test_measure_counts_every_reference_with_its_end_of_turn_token(store_home):
    build_dataset()
    words = lambda text: len(text.split())  # noqa: E731
    report = measure(words, tasks=("completion", "humaneval"))
    completion = load_items("completion", "test", None)
    assert report["completion"]["n"] == len(completion)
    assert report["humaneval"]["n"] == 164  # HumanEval is measured on its test problems whatever the split
    assert reference_tokens(words, completion[:1]) == [len(completion[0].reference.split()) + 1]
    assert report["completion"]["p50"] <= report["completion"]["cap"] <= report["completion"]["max"]


def test_no_task_stops_on_a_newline():
    """A stop on "\\n" cut an answer that opens with ``` or \"\"\" down to that fence; scoring takes the first
    content line after stripping them instead."""
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    assert all("\n" not in cfg.stop for cfg in tasks.tasks.values())


@pytest.mark.parametrize("model", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_the_shipped_caps_let_95_percent_of_test_references_be_written_in_full(store_home, model):
    if not (MODELS / model / "tokenizer.json").is_file():
        pytest.skip(f"{model}'s tokenizer is not on this machine")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODELS / model)
    build_dataset()
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    for task in ("generation", "humaneval", "summarization", "completion", "review"):
        lengths = reference_tokens(lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]),
                                   load_items(task, "test", None))
        assert fits_share(lengths, task_config(tasks, task).max_new_tokens) >= 0.95, task
