from collections import Counter

import pytest

from training.mixing import mix, target_shares

SIZES = {"generation": 800, "summarization": 400, "completion": 100, "review": 100}


def test_concat_keeps_natural_sizes():
    m = mix(SIZES, "concat")
    assert m.counts == dict(sorted(SIZES.items()))
    assert len(set(m.picks)) == sum(SIZES.values())  # every item exactly once


@pytest.mark.parametrize(
    ("strategy", "kwargs", "expected"),
    [
        ("balanced", {}, {t: 0.25 for t in SIZES}),
        ("weighted", {"weights": {"generation": 2, "summarization": 1, "completion": 1, "review": 0}},
         {"generation": 0.5, "summarization": 0.25, "completion": 0.25, "review": 0.0}),
        # n ** (1/2): sqrt(800), sqrt(400), 10, 10 -> normalised
        ("temperature", {"temperature": 2.0},
         {t: n ** 0.5 / (800 ** 0.5 + 20 + 10 + 10) for t, n in SIZES.items()}),
        ("concat", {}, {t: n / 1400 for t, n in SIZES.items()}),
    ],
)
def test_each_strategy_realises_its_shares(strategy, kwargs, expected):
    m = mix(SIZES, strategy, total=1000, seed=3, **kwargs)
    assert sum(m.counts.values()) == 1000
    for task, share in expected.items():
        assert m.shares[task] == pytest.approx(share)
        assert m.counts.get(task, 0) / 1000 == pytest.approx(share, abs=0.002)


def test_a_task_asked_for_more_than_it_has_repeats_in_fresh_passes():
    m = mix({"a": 3, "b": 100}, "balanced", total=20, seed=0)
    a_items = [i for t, i in m.picks if t == "a"]
    assert len(a_items) == 10 and set(a_items) == {0, 1, 2}
    per_item = Counter(a_items).values()
    assert max(per_item) - min(per_item) <= 1  # whole passes before any item repeats again


def test_mixing_is_deterministic_in_the_seed():
    assert mix(SIZES, "balanced", 200, seed=1).picks == mix(SIZES, "balanced", 200, seed=1).picks
    assert mix(SIZES, "balanced", 200, seed=1).picks != mix(SIZES, "balanced", 200, seed=2).picks


def test_bad_strategy_inputs_are_named():
    with pytest.raises(ValueError, match="unknown mixing strategy 'mixed'"):
        target_shares(SIZES, "mixed")
    with pytest.raises(ValueError, match="needs a weight for each task"):
        target_shares(SIZES, "weighted", {"generation": 1})
