"""The sweep's judgement on hand-made scores: retention over the base, the objective, the base floor, the choice."""

from __future__ import annotations

import pytest

from merge.selection import MIN_GAP, choose, judge, objective, of_expert, retention

BASE = {"generation": 20.0, "completion": 40.0, "review": 10.0}
EXPERT = {"generation": 40.0, "completion": 60.0, "review": 30.0}


def test_retention_is_the_share_of_the_experts_gain_over_the_base_that_is_kept():
    scores = {"generation": 35.0, "completion": 50.0, "review": 10.0}
    assert retention(scores, BASE, EXPERT) == pytest.approx({"generation": 0.75, "completion": 0.5, "review": 0.0})
    assert of_expert(scores, EXPERT) == pytest.approx({"generation": 0.875, "completion": 50 / 60, "review": 1 / 3})
    assert objective(scores, BASE, EXPERT, "mean_retention") == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert retention({"generation": 50.0}, BASE, EXPERT)["generation"] == pytest.approx(1.5)  # beats the expert


def test_a_task_whose_expert_does_not_beat_the_base_is_left_out_of_the_mean_but_not_of_the_floor():
    expert = EXPERT | {"review": 10.0}  # expert == base: no gain to keep, the ratio would divide by zero
    expert_worse = EXPERT | {"review": 5.0}  # expert below base: the ratio's sign would flip
    near = EXPERT | {"review": 10.0 + MIN_GAP / 2}  # a gap under MIN_GAP points is noise
    scores = {"generation": 30.0, "completion": 50.0, "review": 9.0}
    for exp in (expert, expert_worse, near):
        r = retention(scores, BASE, exp)
        assert r["review"] is None and r["generation"] == pytest.approx(0.5)
        assert objective(scores, BASE, exp, "mean_retention") == pytest.approx(0.5)  # (0.5 + 0.5) / 2
        verdict = judge(scores, BASE, exp, "mean_retention")
        assert verdict["rejected"] and verdict["below_base"] == [{"task": "review", "score": 9.0, "base": 10.0}]
    assert of_expert(scores, {"review": 0.0})["review"] is None
    assert of_expert({"review": 5.0}, {"review": 1e-77})["review"] is None


def test_with_no_task_defined_the_objective_is_the_mean_gain_over_the_base():
    scores = {"generation": 24.0, "completion": 42.0}
    assert objective(scores, BASE, dict(BASE), "mean_retention") == pytest.approx(3.0)
    assert objective(scores, BASE, EXPERT, "mean_score") == pytest.approx(33.0)


def test_a_candidate_at_the_base_passes_and_one_point_below_is_rejected_with_the_numbers():
    at_base = judge(dict(BASE), BASE, EXPERT, "mean_retention")
    assert not at_base["rejected"] and at_base["below_base"] == [] and at_base["objective"] == 0.0
    below = judge(BASE | {"completion": 39.0, "generation": 19.5}, BASE, EXPERT, "mean_retention")
    assert below["rejected"]
    assert below["below_base"] == [{"task": "generation", "score": 19.5, "base": 20.0},
                                   {"task": "completion", "score": 39.0, "base": 40.0}]


def test_the_choice_is_the_best_survivor_even_when_a_rejected_one_scores_higher():
    good = {"name": "a"} | judge({"generation": 30.0, "completion": 45.0, "review": 12.0}, BASE, EXPERT,
                                 "mean_retention")
    better_but_below = {"name": "b"} | judge({"generation": 40.0, "completion": 60.0, "review": 9.0}, BASE, EXPERT,
                                             "mean_retention")
    assert better_but_below["objective"] > good["objective"] and better_but_below["rejected"]
    best, none_survived = choose([better_but_below, good])
    assert best["name"] == "a" and not none_survived


def test_when_every_candidate_is_below_the_base_the_best_is_kept_and_flagged():
    a = {"name": "a"} | judge({"generation": 39.0, "completion": 39.0, "review": 30.0}, BASE, EXPERT, "mean_retention")
    b = {"name": "b"} | judge({"generation": 21.0, "completion": 30.0, "review": 11.0}, BASE, EXPERT, "mean_retention")
    best, none_survived = choose([b, a])
    assert best["name"] == "a" and none_survived
    with pytest.raises(ValueError, match="no candidates"):
        choose([])
