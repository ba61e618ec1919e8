"""Scores beside their controls: each option's per-task score with its interval, the trivial baselines on the same
items, each option's gain over the untuned ``base`` (paired 95% bootstrap interval), and the smallest difference
the chosen N can detect.

A gain is flagged ``at_or_below_base`` where the point estimate is not above the base's, and ``below_base`` where
the whole interval is under zero: an option that fine-tuning made worse is a finding, never a silent row.
"""

from __future__ import annotations

import numpy as np

from runtime.bench.baselines import baseline_answers
from runtime.stats import Proportion, bootstrap_se, confidence_interval, holm, paired_difference
from runtime.tasks import TASKS, TaskItem
from runtime.tasks.sandbox import Sandbox

BASE = "base"
Z_POWER = 2.80  # z(0.975) + z(0.80): a two-sided 5% test with 80% power


def score_task(task: str, items: list[TaskItem], texts: list[str], resamples: int,
               sandbox: Sandbox | None = None) -> dict:
    """{n, headline, value, ci95, ci_method, metrics} of one task's answers (HumanEval's run in ``sandbox``)."""
    metrics = TASKS[task].score(items, texts, sandbox)
    low, high, method = confidence_interval(TASKS[task].statistic(items, texts, sandbox), len(items), resamples)
    return {"n": len(items), "headline": TASKS[task].headline, "value": metrics[TASKS[task].headline],
            "ci95": [round(low, 2), round(high, 2)], "ci_method": method, "metrics": metrics}


def score_answers(items: dict[str, list[TaskItem]], answers: dict[str, list[dict]], resamples: int,
                  sandbox: Sandbox | None = None) -> dict:
    """{task: score_task(...) + truncated_share, completion_tokens} from served answers; ci95 is exact
    (Clopper-Pearson) for a 0/1 headline, the percentile bootstrap otherwise."""
    out = {}
    for task, its in items.items():
        served = answers[task]
        out[task] = score_task(task, its, [a["answer"] for a in served], resamples, sandbox) | {
            "truncated_share": sum(a["finish_reason"] == "length" for a in served) / max(len(its), 1),
            "completion_tokens": sum(a["completion_tokens"] for a in served)}
    return out


def score_baselines(items: dict[str, list[TaskItem]], resamples: int,
                    sandbox: Sandbox | None = None) -> dict[str, dict[str, dict]]:
    """{task: {baseline: {value, ci95, ci_method}}}: the trivial answers scored like an option's."""
    out: dict[str, dict[str, dict]] = {}
    for task, its in items.items():
        out[task] = {}
        for name, texts in baseline_answers(task, its).items():
            scored = score_task(task, its, texts, resamples, sandbox)
            out[task][name] = {k: scored[k] for k in ("value", "ci95", "ci_method")}
    return out


def difference(task: str, items: list[TaskItem], mine: list[str], theirs: list[str], resamples: int) -> dict:
    """{diff, ci95, p_value}: my headline minus theirs on the same items (paired 95% bootstrap), unrounded."""
    d = paired_difference(TASKS[task].statistic(items, mine, None), TASKS[task].statistic(items, theirs, None),
                          len(items), resamples)
    return {"diff": d["diff"], "ci95": [d["ci_low"], d["ci_high"]], "p_value": d["p_value"]}


def rounded(d: dict) -> dict:
    return d | {"diff": round(d["diff"], 2), "ci95": [round(v, 2) for v in d["ci95"]],
                "p_value": round(d["p_value"], 4)}


def gains_over_base(items: dict[str, list[TaskItem]], answers: dict[str, dict[str, list[str]]],
                    resamples: int) -> dict[str, dict[str, dict]]:
    """{option: {task: {diff, ci95, p_value, at_or_below_base, below_base}}} against ``base`` on the same items."""
    if BASE not in answers:
        return {}
    out: dict[str, dict[str, dict]] = {}
    for option, texts in answers.items():
        if option == BASE:
            continue
        for task, its in items.items():
            d = difference(task, its, texts[task], answers[BASE][task], resamples)
            out.setdefault(option, {})[task] = rounded(d) | {"at_or_below_base": d["diff"] <= 0,
                                                             "below_base": d["ci95"][1] < 0}
    return out


def seed_spread(items: dict[str, list[TaskItem]], answers: dict[str, dict[str, list[str]]], twins: dict[str, str],
                resamples: int) -> dict[str, dict]:
    """{twin: {"of": option, "per_task": {task: {diff, ci95, p_value, p_holm, seed_alone}}}}: each seed twin minus
    the option it retrains, on the same items: how far training noise alone moves a score (pairs not both scored
    are left out). ``seed_alone``: Holm's verdict at 5% over every pair and task of the table."""
    pairs = {twin: original for twin, original in twins.items() if twin in answers and original in answers}
    raw = {(twin, t): difference(t, its, answers[twin][t], answers[original][t], resamples)
           for twin, original in pairs.items() for t, its in items.items()}
    adjusted, reject = holm([d["p_value"] for d in raw.values()])
    out: dict[str, dict] = {twin: {"of": original, "per_task": {}} for twin, original in pairs.items()}
    for ((twin, t), d), p, r in zip(raw.items(), adjusted, reject, strict=True):
        out[twin]["per_task"][t] = rounded(d) | {"p_holm": round(p, 4), "seed_alone": bool(r)}
    return out


def detectable_difference(items: dict[str, list[TaskItem]], base_answers: dict[str, list[str]],
                          resamples: int) -> dict[str, float | None]:
    """Per task, the smallest true difference from ``base`` that a two-sided 5% test on these N items finds with
    80% power. A share of items (review's line accuracy, pass@1): the smallest d with d >= 2.8 x
    sqrt((p(1-p) + q(1-q)) / n), q = p + d toward 1/2 (so a base at 0/N still has a finite answer). Other metrics:
    2.8 x sqrt(2) x the bootstrap standard error of the base's headline (two options with the base's spread and
    independent errors; pairing makes the real test sharper, so this errs large); None where the base's answers
    have no spread at all (nothing to scale by)."""
    out: dict[str, float | None] = {}
    for task, its in items.items():
        stat = TASKS[task].statistic(its, base_answers[task], None)
        if isinstance(stat, Proportion):
            out[task] = round(100 * detectable_share(*stat.counts()), 2)
            continue
        se = bootstrap_se(stat, len(its), resamples, seed=1)
        out[task] = round(Z_POWER * np.sqrt(2) * se, 2) if se > 0 else None
    return out


def detectable_share(successes: int, trials: int) -> float:
    if trials == 0:
        return 1.0
    p = successes / trials
    sign = 1 if p <= 0.5 else -1
    for step in range(1, 1001):
        d = step / 1000
        q = p + sign * d
        if not 0 <= q <= 1:
            return d
        if d >= Z_POWER * np.sqrt((p * (1 - p) + q * (1 - q)) / trials):
            return d
    return 1.0


def agreement(reference: dict[str, list[str]], mine: dict[str, list[dict]]) -> dict:
    """How many of a second engine's greedy answers are identical to the scoring engine's, per task."""
    per_task = {}
    for task, answers in mine.items():
        matched = sum(a["answer"] == reference[task][i] for i, a in enumerate(answers))
        per_task[task] = {"matched": matched, "n": len(answers)}
    return {"matched": sum(v["matched"] for v in per_task.values()), "n": sum(v["n"] for v in per_task.values()),
            "per_task": per_task}
