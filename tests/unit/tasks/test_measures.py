"""Each metric against values computed by hand."""

import math

import pytest

from runtime.tasks import measures as m


def test_exact_match_ignores_whitespace_only():
    assert m.exact_match("return  a +\tb\n", "return a + b")
    assert not m.exact_match("return a+b", "return a + b")


def test_nist_tokens_split_punctuation_and_lowercase():
    assert m.nist_tokens("Return the Value, x.") == ["return", "the", "value", ",", "x", "."]
    assert m.nist_tokens("3.14 and 1,000") == ["3.14", "and", "1,000"]


def test_smoothed_bleu_identical_is_one():
    assert m.smoothed_bleu("Return the sum of a and b.", "Return the sum of a and b.") == pytest.approx(1.0)


def test_smoothed_bleu_by_hand():
    # hyp "the cat sat" vs ref "the cat sat down": c=3, r=4
    # p1 = 3/3; p2 = (2+1)/(2+1); p3 = (1+1)/(1+1); p4 = (0+1)/(0+1)  (add-one for n>1)
    # BP = exp(min(0, 1 - (4+1)/(3+1))) = exp(-0.25)
    expected = math.exp(0 + (1 - 5 / 4))
    assert m.smoothed_bleu("the cat sat", "the cat sat down") == pytest.approx(expected)
    # hyp "a b c d" vs ref "a x c d": p1 = 3/4, p2 = (1+1)/(3+1), p3 = (0+1)/(2+1), p4 = (0+1)/(1+1), BP = 1
    expected = math.exp((math.log(3 / 4) + math.log(2 / 4) + math.log(1 / 3) + math.log(1 / 2)) / 4)
    assert m.smoothed_bleu("a b c d", "a x c d") == pytest.approx(expected)


def test_smoothed_bleu_with_no_overlap_is_tiny_not_an_error():
    assert m.smoothed_bleu("foo", "bar baz") < 1e-3


def test_smoothed_bleu_of_an_empty_answer_keeps_codexglue_quirk():
    # CodeXGLUE's smoothing gives an empty hypothesis precisions of 1 (0/0 and (0+1)/(0+1)), so only the
    # brevity penalty counts: exp(1 - (2+1)/(0+1)) = exp(-2). Reproduced on purpose, so scores compare.
    assert m.smoothed_bleu("", "bar baz") == pytest.approx(math.exp(-2))


def test_rouge_l_by_hand():
    # LCS("a b c d e", "a c e f") = "a c e" = 3; P = 3/5, R = 3/4, F1 = 2PR/(P+R) = 2/3
    assert m.rouge_l("a b c d e", "a c e f") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m.rouge_l("x", "y") == 0.0


def test_edit_similarity_by_hand():
    # LCS("kitten", "sitting") = "ittn" = 4; 2 * 4 / 13 * 100
    assert m.edit_similarity("kitten", "sitting") == pytest.approx(800 / 13)
    assert m.edit_similarity("abc", "abc") == 100.0
    assert m.edit_similarity("", "") == 100.0
    assert m.edit_similarity("abc", "") == 0.0


def test_pass_at_k_unbiased_estimator_by_hand():
    assert m.pass_at_k(1, 1, 1) == 1.0 and m.pass_at_k(1, 0, 1) == 0.0
    assert m.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert m.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert m.pass_at_k(10, 6, 5) == 1.0  # fewer than k failures: some draw must pass


def test_corpus_metrics_match_sacrebleu_extremes():
    refs = ["return a + b", "x = [i for i in range(10)]"]
    assert m.chrf_pp(refs, refs) == pytest.approx(100.0)
    assert m.bleu4(refs, refs) == pytest.approx(100.0)
    assert m.chrf_pp(["zzz", "qqq"], refs) < 5
    assert m.bleu4(["zzz", "qqq"], refs) == 0.0


def test_parses():
    assert m.parses("def f():\n    return 1\n")
    assert not m.parses("def f(:\n")
