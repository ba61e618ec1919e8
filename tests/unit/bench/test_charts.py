"""Each option's normalized gain over base (the decision rule's number, with its interval) and the charts that
draw it: intervals, the base line, axes that start at zero."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from runtime.bench import charts  # noqa: E402
from runtime.bench.config import BudgetConfig  # noqa: E402
from runtime.bench.recommend import recommend  # noqa: E402
from runtime.bench.report import gain_cell  # noqa: E402
from runtime.tasks import TASKS  # noqa: E402
from runtime.tasks.dataset import build_dataset, load_items  # noqa: E402


def _result(option: str, rss: float, tok_s: float, accuracy: dict) -> dict:
    return {"deployment": option, "engine": "hf", "peak_rss_mb": rss, "accuracy": accuracy, "mean_accuracy": 50.0,
            "latency": {"8": {"p90_e2el_ms": 1000, "output_throughput": tok_s, "median_e2el_ms": 1,
                              "p99_e2el_ms": 1}}}


@pytest.fixture()
def three_options(store_home):
    build_dataset()
    items = {t: load_items(t, "test", 12) for t in ("completion", "summarization")}
    refs = {t: [it.reference for it in items[t]] for t in items}
    answers = {"base": {t: ["x"] * 12 for t in items}, "good": refs,
               "same": {t: ["x"] * 12 for t in items}}  # no better than base
    every = list(range(12))
    values = {o: {t: TASKS[t].statistic(items[t], answers[o][t], None)(every) for t in items} for o in answers}
    acc = {o: {t: {"value": v, "headline": "h", "ci95": [v - 3, v + 3]} for t, v in vs.items()}
           for o, vs in values.items()}
    rec = recommend(acc, [_result(o, 1000, 10, acc[o]) for o in acc], BudgetConfig(memory_mb=4000, p90_e2el_ms=2000),
                    items, answers, {o: {"/base": 500.0} for o in acc}, 200)
    return acc, rec


def test_each_option_has_its_normalized_gain_over_base_with_an_interval(three_options):
    _, rec = three_options
    gains = rec.option_gains
    assert set(gains) == {"good", "same"}  # base is the zero of the scale
    assert gains["good"].diff == pytest.approx(1.0) and gains["good"].significant and gains["good"].ci_low > 0.5
    assert gains["same"].diff == 0 and not gains["same"].significant and gains["same"].p_holm is not None


def test_the_summary_cell_bolds_only_a_gain_beyond_the_noise(three_options):
    _, rec = three_options
    report = {"recommendation": rec.model_dump(mode="json")}
    assert gain_cell(report, {"deployment": "base"}) == "0 (base)"
    assert gain_cell(report, {"deployment": "good"}).startswith("**+1.00 [")
    assert gain_cell(report, {"deployment": "same"}).startswith("+0.00 [")
    assert gain_cell(report, {"deployment": "hybrid", "same_as": "good"}).startswith("**+1.00")


def test_the_charts_draw_intervals_the_base_line_and_start_at_zero(three_options, tmp_path, monkeypatch):
    acc, rec = three_options
    report = {"recommendation": rec.model_dump(mode="json"), "n_per_task": {t: 12 for t in acc["base"]},
              "headline_metrics": {t: "h" for t in acc["base"]},
              "results": [_result(o, 1000, tok, acc[o]) for o, tok in (("base", 60), ("good", 30), ("same", 31))]}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep each figure to look at
    names = charts.plot(report, tmp_path)
    assert all((tmp_path / n).is_file() for n in names)
    gain_ax, task_ax = figures[0].axes[0], figures[1].axes[0]
    low, high = gain_ax.get_ylim()
    assert low <= 0 and high >= 1  # the whole scale: base (0) to the best option (1), no zoom
    assert any(list(line.get_ydata()) == [0, 0] for line in gain_ax.get_lines())  # the dashed base line
    assert len(gain_ax.containers) == 2  # error bars for the two options with an interval
    assert task_ax.get_ylim()[0] == 0
    base_lines = [c for c in task_ax.collections if c.get_label() == "base"]
    assert len(base_lines) == 1
