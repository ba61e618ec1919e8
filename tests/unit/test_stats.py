"""Exact intervals for 0/1 metrics, Holm's correction and the paired bootstrap p-value, against values computed
by hand or printed in textbooks."""

import numpy as np
import pytest

from runtime.stats import (
    Proportion,
    bootstrap_ci,
    bootstrap_p_value,
    clopper_pearson,
    confidence_interval,
    holm,
    mean_of,
)


def test_zero_of_29_gives_the_exact_upper_bound_where_the_bootstrap_gives_zero():
    low, high = clopper_pearson(0, 29)
    assert low == 0.0 and high == pytest.approx(0.119, abs=5e-4)
    assert high == pytest.approx(1 - 0.025 ** (1 / 29))  # closed form when no item succeeds
    assert bootstrap_ci(mean_of([0.0] * 29), 29) == (0.0, 0.0)  # the interval the report used to print


def test_clopper_pearson_by_hand_and_from_the_literature():
    low, high = clopper_pearson(29, 29)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 29))  # mirror image of 0/29
    low, high = clopper_pearson(1, 10)  # the classic 1/10: [0.0025, 0.4450]
    assert low == pytest.approx(0.00253, abs=1e-5) and high == pytest.approx(0.44502, abs=1e-5)
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="within 0..trials"):
        clopper_pearson(3, 2)


def test_a_proportion_skips_uncounted_items_and_gets_the_exact_interval():
    stat = Proportion((True, None, False, None, True, False))
    assert stat(range(6)) == 50.0 and stat([1, 3]) == 0.0 and stat.counts() == (2, 4)
    low, high, method = confidence_interval(stat, 6)
    assert method == "clopper-pearson"
    assert (low, high) == pytest.approx(tuple(100 * b for b in clopper_pearson(2, 4)))
    *_, method = confidence_interval(mean_of([1.0, 2.0, 3.0]), 3)
    assert method == "bootstrap"


def test_holm_on_the_textbook_example():
    # p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05: sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06,
    # 0.04 x1 = 0.04 -> 0.06 (never below the step before); only the two smallest are rejected
    adjusted, reject = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject == [True, False, False, True]


def test_holm_caps_at_one_keeps_a_single_test_and_refuses_bad_input():
    assert holm([0.6, 0.7]) == ([1.0, 1.0], [False, False])
    assert holm([0.04]) == ([0.04], [True])
    assert holm([]) == ([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def test_bootstrap_p_value_is_one_for_no_difference_and_small_for_a_one_sided_shift():
    assert bootstrap_p_value(np.zeros(100)) == 1.0
    assert bootstrap_p_value(np.array([1.0] * 99 + [-1.0])) == pytest.approx(0.02)
