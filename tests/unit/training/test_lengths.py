"""Token-length percentiles of the cropped task rows (what max_length is chosen from)."""

from __future__ import annotations

from tiny import build_tiny_tokenizer

from runtime.config import TasksConfig, configs_dir, load_config
from training.lengths import percentiles, row_lengths, summary


def test_percentiles_are_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7}


def test_summary_counts_prompts_that_do_not_fit_and_answers_cut():
    s = summary([(10, 5), (100, 5), (40, 30)], max_length=64)
    assert (s["n"], s["prompt_does_not_fit"], s["answer_cut"]) == (3, 1, 1)
    assert s["row"]["max"] == 105


def test_row_lengths_measure_cropped_review_windows(store_home):
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    lengths = row_lengths(build_tiny_tokenizer(), tasks, "review", "val", 20)
    assert len(lengths) == 20 and all(p > a > 0 for p, a in lengths)
