"""Accuracy metrics, pure functions; each is unit-tested against hand-computed values.

- chrF++ and BLEU-4 (corpus level) come from sacrebleu.
- ``smoothed_bleu`` is CodeXGLUE code-to-text's sentence BLEU-4: NIST-style tokenisation, lower-cased, shortest
  reference length, add-one smoothing of the 2- to 4-gram precisions, brevity penalty
  exp(min(0, 1 - (r+1)/(c+1))); averaged over items, x100.
- ``edit_similarity`` is the Levenshtein (indel) ratio that CodeXGLUE line completion reports via fuzzywuzzy:
  2 * LCS / (len(a) + len(b)), x100.
- ``pass_at_k`` is the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import ast
import math
import re
import sys
from collections import Counter

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

_NIST_1 = [(re.compile(r"<skipped>"), ""), (re.compile(r"-\n"), ""), (re.compile(r"\n"), " ")]
_NIST_2 = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def normalize_ws(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_ws(prediction) == normalize_ws(reference)


def chrf_pp(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF++ (character 6-grams plus word 1-2-grams), 0-100."""
    return CHRF(word_order=2).corpus_score(predictions, [references]).score


def chrf_pp_on_subsets(predictions: list[str], references: list[str]):
    """Corpus chrF++ of any subset of items, from per-item statistics extracted once (sacrebleu's own way to
    make its paired bootstrap fast): ``f(indices) == chrf_pp([predictions[i] ...], [references[i] ...])``."""
    chrf = CHRF(word_order=2)
    stats = np.asarray(chrf._extract_corpus_statistics(predictions, [references]))
    return lambda idx: float(chrf._compute_score_from_stats(stats[np.asarray(idx, dtype=int)].sum(axis=0)).score) \
        if len(idx) else 0.0


def bleu4(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 with sacrebleu's defaults (13a tokenisation), 0-100."""
    return BLEU().corpus_score(predictions, [references]).score


def nist_tokens(text: str) -> list[str]:
    for pattern, repl in _NIST_1:
        text = pattern.sub(repl, text)
    text = f" {text.lower()} "
    for pattern, repl in _NIST_2:
        text = pattern.sub(repl, text)
    return text.split()


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def smoothed_bleu(prediction: str, reference: str, max_n: int = 4) -> float:
    """CodeXGLUE smoothed sentence BLEU-4, 0-1."""
    hyp, ref = nist_tokens(prediction), nist_tokens(reference)
    log_bleu = 0.0
    for n in range(1, max_n + 1):
        guess = max(len(hyp) - n + 1, 0)
        ref_counts = _ngrams(ref, n)
        correct = sum(min(c, ref_counts[g]) for g, c in _ngrams(hyp, n).items())
        add = 1 if n > 1 else 0
        log_bleu += math.log(correct + add + sys.float_info.min) - math.log(guess + add + sys.float_info.min)
    log_bleu /= max_n
    brevity = min(0.0, 1 - (len(ref) + 1) / (len(hyp) + 1))
    return math.exp(log_bleu + brevity)


def _lcs(a: list[str] | str, b: list[str] | str) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens, 0-1."""
    hyp, ref = nist_tokens(prediction), nist_tokens(reference)
    lcs = _lcs(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def edit_similarity(prediction: str, reference: str) -> float:
    """Indel similarity of two strings, 0-100 (100 = identical; both empty counts as identical)."""
    total = len(prediction) + len(reference)
    return 100.0 if total == 0 else 200.0 * _lcs(prediction, reference) / total


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) passes: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
