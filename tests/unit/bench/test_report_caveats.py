"""report.md's caveats beside the scores: options no better than a trivial baseline, answers cut at the cap,
review's clean items, how much the agent's N can tell apart, which engine's answers a row's accuracy is, a route
below base on the set that ranks it, and a fixed-length claim checked against what came back."""

from __future__ import annotations

from runtime.bench.compare import detectable_share
from runtime.bench.report import (
    agent_section,
    below_baselines,
    cut_at_cap,
    fixed_length_note,
    recommendation_section,
    review_count,
    review_false_positives,
)

TASKS = ["summarization", "review"]


def _row(option: str, summ: float, cut: float = 0.0, engine: str = "hf", **more) -> dict:
    review = {"n": 96, "headline": "line_accuracy", "value": 20.0, "ci95": [12.0, 30.0],
              "metrics": {"n_buggy": 66, "n_clean": 30, "false_positive_rate": 100.0 if option != "base" else 0.0,
                          "detection_accuracy": 68.75 if option != "base" else 31.25}}
    return {"deployment": option, "engine": engine, "latency": {"8": {"short_answers": 0}},
            "accuracy": {"summarization": {"n": 48, "headline": "bleu", "value": summ, "ci95": [summ - 2, summ + 2],
                                           "metrics": {}, "truncated_share": cut}, "review": review}} | more


REPORT = {"results": [_row("base", 6.6, cut=0.5), _row("mixed", 19.0), _row("mixed", 19.0, engine="vllm")],
          "baselines": {"summarization": {"first sentence": {"value": 12.1, "ci95": [10.0, 14.0]},
                                          "docstring": {"value": 10.0, "ci95": [8.0, 12.0]}}}}


def test_options_at_or_below_the_best_trivial_baseline_are_named():
    assert below_baselines(REPORT, TASKS) == [
        "", "**At or below a trivial baseline**: summarization: base 6.6 (≤ first sentence 12.1)."]
    better = REPORT | {"results": [_row("base", 13.0), _row("mixed", 19.0)]}
    assert below_baselines(better, TASKS) == []


def test_answers_cut_at_the_cap_are_counted_once_per_option():
    assert cut_at_cap(REPORT, TASKS) == ["", "Answers cut at the output cap (options with ≥ 10% of them): "
                                             "summarization: base 50%."]
    assert cut_at_cap({"results": [_row("base", 6.6, cut=0.05)]}, TASKS) == []


def test_review_states_the_items_its_headline_counts_and_the_clean_items_answers():
    assert review_count(REPORT) == " (review's line accuracy and its interval over the 66 buggy items; 30 clean)"
    line = review_false_positives(REPORT)[1]
    assert "the 30 clean items" in line and "base 0%, mixed 100%" in line and "mixed 69%" in line
    assert review_count({"results": [_row("base", 1.0) | {"accuracy": {}}]}) == ""


def test_the_agent_table_says_how_big_a_difference_its_n_detects():
    agent = {"problems": 32, "solved": 27, "solved_share": 84.4, "ci95": [67.2, 94.7], "first_try": 25,
             "loop_adds": 6.2, "mean_calls": 3.1, "mean_wall_s": 20.0, "errors": 0, "max_revisions": 2, "workers": 8}
    lines = agent_section([{"deployment": "mixed", "engine": "hf", "agent": agent | {"solved": 16}},
                           {"deployment": "base", "engine": "hf", "agent": agent}])
    note = lines[-1]
    assert "these 32 problems detect a difference of about" in note and "at base's share" in note
    assert "not a finding" in note
    wide = agent_section([{"deployment": "mixed", "engine": "hf", "agent": agent | {"solved": 16}}])[-1]
    assert "at mixed's share" in wide  # no base row: the first option's share
    assert f"about {100 * detectable_share(27, 32):.0f} points" in note
    assert f"about {100 * detectable_share(16, 32):.0f} points" in wide


def test_a_fixed_length_claim_is_checked_against_the_answers():
    assert fixed_length_note(REPORT).startswith(" decoded in full by every request")
    short = {"results": [_row("base", 6.6) | {"latency": {"1": {"short_answers": 0}, "8": {"short_answers": 3}}}]}
    assert "but 3 came back shorter" in fixed_length_note(short)


def test_a_route_below_base_is_flagged_on_the_set_that_ranks_it():
    rec = {"routes": {"generation": "mixed", "review": "mixed"}, "normalized_gain": 0.3, "mean_accuracy": 30.0,
           "estimated_memory_mb": 2000, "estimated_p90_e2el_ms": 9000, "engine": "hf", "plans_in_budget": 4,
           "plans_considered": 4, "budget": {"memory_mb": 8192, "p90_e2el_ms": 20000}, "why": [],
           "evidence": {"generation": {"scored_on": "humaneval"}, "review": {"scored_on": "review"}}}
    gains = {"mixed": {"generation": {"diff": 0.7, "at_or_below_base": False},
                       "humaneval": {"diff": -25.0, "at_or_below_base": True},
                       "review": {"diff": 12.0, "at_or_below_base": False}}}
    lines = recommendation_section({"recommendation": rec, "gains_over_base": gains, "results": []})
    flagged = [ln for ln in lines if "At or below the untuned base" in ln]
    assert len(flagged) == 1 and "generation → mixed (-25.0 humaneval vs base)" in flagged[0]
