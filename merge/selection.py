"""How a merge sweep judges its candidates: retention over the base, the objective, and the base-floor rule.

Per task, with ``base`` the untuned model's and ``expert`` the task's own expert's validation score:

- ``retention = (score - base) / (expert - base)``: the share of the expert's gain over the base that the merge
  kept (1.0 = all of it, 0 = none, below 0 = worse than the base); the paper's "kept X% of the specialist";
- ``of_expert = score / expert``: the plain ratio, for comparison with papers that report that.

Where the expert beats the base by less than ``MIN_GAP`` points (every headline metric is on a 0-100 scale) the
ratio is noise over noise -- 2.5 points is one item in 40 -- so that task's retention is ``None`` and it is left out
of the objective's mean (the base floor still applies to it). A candidate scoring below the base on *any* task is
rejected; the best surviving candidate is chosen, and when none survives the best of all is chosen and the result
says ``no_candidate_at_or_above_base``.
"""

from __future__ import annotations

from typing import Any

MIN_GAP = 1.0  # points: an expert must beat the base by this much on a task for its retention to be defined


def retention(scores: dict[str, float], base: dict[str, float], expert: dict[str, float]) -> dict[str, float | None]:
    """(score - base) / (expert - base) per task; None where the task has no expert or its gap is under MIN_GAP."""
    out: dict[str, float | None] = {}
    for task, score in scores.items():
        gap = expert[task] - base[task] if task in expert and task in base else None
        out[task] = (score - base[task]) / gap if gap is not None and gap >= MIN_GAP else None
    return out


def of_expert(scores: dict[str, float], expert: dict[str, float]) -> dict[str, float | None]:
    """score / expert per task; None where the task has no expert or the expert scored under MIN_GAP (a ratio to
    a score of ~0 is meaningless: a smoothed BLEU of 1e-77 is not a specialist)."""
    return {t: s / expert[t] if expert.get(t, 0.0) >= MIN_GAP else None for t, s in scores.items()}


def below_base(scores: dict[str, float], base: dict[str, float]) -> list[dict[str, Any]]:
    """The tasks where the candidate scores below the base, with both numbers (empty: it passes the floor)."""
    return [{"task": t, "score": s, "base": base[t]} for t, s in scores.items() if t in base and s < base[t]]


def objective_tasks(base: dict[str, float], expert: dict[str, float]) -> list[str]:
    """The tasks whose retention is defined (an expert that beats the base by at least MIN_GAP)."""
    return sorted(t for t in expert if t in base and expert[t] - base[t] >= MIN_GAP)


def objective(scores: dict[str, float], base: dict[str, float], expert: dict[str, float], kind: str) -> float:
    """``mean_retention``: the mean retention over the tasks where it is defined; when it is defined on none, the
    mean gain over the base in points (the same order as the mean score). ``mean_score``: the mean score."""
    if kind == "mean_score":
        return sum(scores.values()) / len(scores)
    kept = [r for r in retention(scores, base, expert).values() if r is not None]
    if kept:
        return sum(kept) / len(kept)
    gains = [s - base[t] for t, s in scores.items() if t in base]
    return sum(gains) / len(gains) if gains else 0.0


def judge(scores: dict[str, float], base: dict[str, float], expert: dict[str, float], kind: str) -> dict[str, Any]:
    """Everything the sweep records about one candidate's validation scores."""
    below = below_base(scores, base)
    return {"val": dict(scores), "retention": retention(scores, base, expert), "of_expert": of_expert(scores, expert),
            "objective": objective(scores, base, expert, kind), "rejected": bool(below), "below_base": below}


def choose(results: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The best candidate by objective among those not rejected, and whether every candidate was rejected (the
    best of all is then returned, so a deployment still exists, and the flag says it is below the base)."""
    if not results:
        raise ValueError("the sweep has no candidates; list sweep.weights or sweep.grid")
    survivors = [r for r in results if not r["rejected"]]
    pool = survivors or results
    return max(pool, key=lambda r: r["objective"]), not survivors
