"""The hybrid recommendation: the per-task plan (each task served by one measured option) with the best mean
accuracy whose memory and p90 latency fit the budget, and the evidence for each choice.

A plan's cost is estimated from its options' measurements on the recommended engine: memory = the largest peak
RSS among the options it uses plus the weights of every extra model engine it needs (adapters ride on the base
model's engine, so experts + mixed + merged-adapter share one); p90 E2EL = the worst p90 of its options at the
highest concurrency. Where the most accurate plan beats the best single option on no task beyond the noise (95%
paired bootstrap, Holm-corrected over the tasks compared), the single option is recommended instead: per-task
routing must earn its complexity. Each task's evidence compares its option with every other; those p-values are
one family, Holm-corrected (``p_holm``; ``significant`` is Holm's verdict at 5%). The bench
then serves the plan and measures it like any other option, so the report shows
the estimate beside the truth.

Plans are ranked by the normalized gain (the decision rule), not by a mean of metrics on different scales: per
task, (score − base) / (best − base), averaged over the tasks where the options' scores spread by at least
``MIN_SPREAD`` points. Where no option beats base by that much the scale is (base − worst) instead: base is then
the best there is (0) and an option below it counts against every plan that routes the task to it (−1 the
worst); a task where all scores lie within ``MIN_SPREAD`` ranks nothing. Single options
whose normalized gains are within the noise of the best one's (paired bootstrap over each task's items, Holm over
the comparisons) are a tie, and the cheapest of them (memory, then p90 latency) is recommended: the report says so.
Likewise inside a per-task plan: a task's route gives way to an option that ties with it on that task when that
makes the plan cheaper and its normalized gain stays within the noise of the planned one's (``settle_route_ties``).
"""

from __future__ import annotations

import itertools

from runtime.bench.compare import BASE
from runtime.bench.config import BudgetConfig
from runtime.bench.results import Recommendation, Tie, top_level
from runtime.stats import holm, paired_difference, paired_normalized_difference
from runtime.tasks import TASKS, TaskItem, ranked_sets

MIN_SPREAD = 1.0  # headline points some option must gain over base on a task for that task to rank the options


def normalizers(accuracy: dict[str, dict], tasks: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per ranked set (a task, or HumanEval for generation) the floor (base's score; the worst option's where base
    was not measured) and the scale, for the sets whose scores spread by at least MIN_SPREAD: best minus floor
    where some option is that far above base, else floor minus worst (every option at or below base: their gains
    negative, so a route below base costs its plan)."""
    floor, scale = {}, {}
    for t in tasks:
        values = [a[t]["value"] for a in accuracy.values()]
        floor[t] = accuracy[BASE][t]["value"] if BASE in accuracy else min(values)
        above, below = max(values) - floor[t], floor[t] - min(values)
        if above >= MIN_SPREAD:
            scale[t] = above
        elif below >= MIN_SPREAD:
            scale[t] = below
    return floor, scale


def normalized_gain(scores: dict[str, float], floor: dict[str, float], scale: dict[str, float]) -> float:
    """Mean over the ranking sets of (score − base) / scale: 1 is the best option on every task where some option
    beats base, 0 base; negative below base."""
    if not scale:
        return 0.0
    return sum((scores[t] - floor[t]) / scale[t] for t in scale) / len(scale)


def plan_cost(plan: dict[str, str], costs: dict[str, dict], sizes: dict[str, dict[str, float]]) -> dict:
    used = sorted(set(plan.values()))
    primary = max(used, key=lambda o: costs[o]["peak_rss_mb"])
    engines = set().union(*(sizes[o] for o in used))
    extra = sum(max(sizes[o].get(key, 0) for o in used) for key in engines - set(sizes[primary]))
    return {"memory_mb": round(costs[primary]["peak_rss_mb"] + extra, 1),
            "p90_e2el_ms": round(max(costs[o]["p90_e2el_ms"] for o in used), 1), "engines": len(engines)}


def plan_candidates(accuracy: dict[str, dict], results: list[dict], budget: BudgetConfig, sets: dict[str, str],
                    sizes: dict[str, dict[str, float]], floor: dict[str, float], scale: dict[str, float]) -> list[dict]:
    """Every per-task plan over the measured options: routes, mean accuracy, normalized gain, cost, and whether
    it fits the budget."""
    options = [o for o in accuracy if o != "hybrid"]
    tasks = list(dict.fromkeys(sets.values()))
    costs = {r["deployment"]: {"peak_rss_mb": r["peak_rss_mb"],
                               "p90_e2el_ms": r["latency"][top_level(r)]["p90_e2el_ms"]} for r in results}
    candidates = []
    for choice in itertools.product(options, repeat=len(tasks)):
        plan = dict(zip(tasks, choice, strict=True))
        cost = plan_cost(plan, costs, sizes)
        scores = {s: accuracy[plan[t]][s]["value"] for s, t in sets.items()}
        fits = cost["memory_mb"] <= budget.memory_mb and cost["p90_e2el_ms"] <= budget.p90_e2el_ms
        candidates.append({"routes": plan, "mean_accuracy": round(sum(scores.values()) / len(scores), 2),
                           "fits": fits, **cost, "normalized_gain": round(normalized_gain(scores, floor, scale), 4)})
    return candidates


def _order(c: dict) -> tuple:
    return -c["normalized_gain"], c["engines"], c["memory_mb"]


def recommend(accuracy: dict[str, dict], results: list[dict], budget: BudgetConfig, items: dict[str, list[TaskItem]],
              answers: dict[str, dict[str, list[str]]], sizes: dict[str, dict[str, float]],
              resamples: int = 1000) -> Recommendation:
    """The plan with the best normalized gain within the budget, and the evidence for it. ``accuracy``: {option:
    {set: {value, headline, ...}}}; ``results``: the options' phase results on the costing engine (as dicts)."""
    options = [o for o in accuracy if o != "hybrid"]
    sets = ranked_sets(list(items))  # {scored set: the task whose route answers it}
    floor, scale = normalizers({o: accuracy[o] for o in options}, list(sets))
    candidates = plan_candidates(accuracy, results, budget, sets, sizes, floor, scale)
    best_any = min(candidates, key=_order)
    feasible = [c for c in candidates if c["fits"]]
    chosen = min(feasible, key=_order) if feasible else min(candidates, key=lambda c: (c["memory_mb"], _order(c)))
    stats = {o: {s: TASKS[s].statistic(items[s], answers[o][s], None) for s in sets} for o in options}
    compare = Comparer(stats, items, resamples, {t: s for s, t in sets.items()})
    singles = [c for c in (feasible if feasible else candidates) if len(set(c["routes"].values())) == 1]
    chosen, simplest = compare.simplify(chosen, min(singles, key=_order) if singles else None)
    tie, route_ties, planned = None, None, chosen
    if len(set(chosen["routes"].values())) == 1:  # one option: the cheapest of those it ties with takes its place
        chosen, tie = settle_tie(chosen, singles, stats, items, scale, resamples)
    else:  # a per-task plan: each task's route may give way to an option it ties with there, in a cheaper plan
        chosen, route_ties = settle_route_ties(chosen, feasible or candidates, compare, options, sets, scale)
        if len(set(chosen["routes"].values())) == 1:  # that plan is one option: the single options' ties too
            chosen, tie = settle_tie(chosen, singles, stats, items, scale, resamples)
    evidence = {task: compare.evidence(task, option, accuracy, options) for task, option in chosen["routes"].items()}
    gains = option_gains(stats, items, scale, resamples)
    why = explain(chosen, best_any, evidence, budget, bool(feasible), tied=bool(tie or route_ties or simplest))
    if tie:
        why.insert(1, f"Tie: {', '.join(tie['options'])} are within the noise of each other on the normalized gain "
                      f"(paired bootstrap, Holm-corrected); the cheapest, {tie['chosen']}, is recommended.")
    if route_ties:
        why.insert(1, "Tie on " + "; on ".join(f"{t}: {', '.join(x.options)} are within the noise of each other "
                                                f"(planned: {x.best_estimate})" for t, x in route_ties.items())
                   + " (paired bootstrap, Holm-corrected over each option's comparisons). The cheapest plan whose "
                   "normalized gain is within the noise of the planned one's routes "
                   + ", ".join(f"{t} to {x.chosen}" for t, x in route_ties.items())
                   + f": {chosen['memory_mb']:.0f} MB and p90 {chosen['p90_e2el_ms']:.0f} ms instead of "
                   f"{planned['memory_mb']:.0f} MB and {planned['p90_e2el_ms']:.0f} ms.")
    if simplest:
        why.insert(1, f"Every task goes to {simplest['option']}: the per-task plan with the best point estimates "
                      f"({', '.join(f'{t} → {o}' for t, o in simplest['instead_of'].items())}, mean "
                      f"{simplest['mean_accuracy']:.2f}) beats it on no task beyond the noise, and one option is "
                      "simpler to run.")
    return Recommendation.model_validate({"routes": chosen["routes"], "mean_accuracy": chosen["mean_accuracy"],
            "normalized_gain": chosen["normalized_gain"], "ranking_tasks": sorted(scale), "tie": tie,
            "route_ties": route_ties,
            "option_gains": gains,
            "estimated_memory_mb": chosen["memory_mb"], "estimated_p90_e2el_ms": chosen["p90_e2el_ms"],
            "budget": budget.model_dump(), "fits_budget": bool(feasible), "unconstrained_best": best_any,
            "evidence": evidence, "why": why, "simplified_from": simplest, "plans_considered": len(candidates),
            "plans_in_budget": len(feasible)})


class Comparer:
    """Paired comparisons of the options' per-item statistics (``stats[option][set]``); ``scored_by`` maps each
    routed task to the set that judges it."""

    def __init__(self, stats: dict, items: dict[str, list[TaskItem]], resamples: int, scored_by: dict[str, str]):
        self.stats, self.items, self.resamples, self.scored_by = stats, items, resamples, scored_by

    def versus(self, option: str, other: str, s: str) -> dict:
        return paired_difference(self.stats[option][s], self.stats[other][s], len(self.items[s]), self.resamples)

    def simplify(self, chosen: dict, single: dict | None) -> tuple[dict, dict | None]:
        """Per-task routing earns its complexity only where it beats the best single option beyond the noise:
        otherwise that option. (plan, simplified_from or None)"""
        if not single or single["routes"] == chosen["routes"]:
            return chosen, None
        only = next(iter(single["routes"].values()))
        gains = [t for t, d in holm_family({t: self.versus(o, only, self.scored_by[t])
                                            for t, o in chosen["routes"].items() if o != only}).items()
                 if d["significant"]]
        if gains:
            return chosen, None
        return single, {"option": only, "instead_of": chosen["routes"], "mean_accuracy": chosen["mean_accuracy"]}

    def evidence(self, task: str, option: str, accuracy: dict[str, dict], options: list[str]) -> dict:
        """The routed option's score on the task's set, and its Holm-corrected comparison with every other."""
        s = self.scored_by[task]
        family = holm_family({other: self.versus(option, other, s) for other in options if other != option})
        return {"option": option, "value": accuracy[option][s]["value"], "scored_on": s,
                "headline": accuracy[option][s]["headline"],
                "versus": {other: {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}
                           for other, d in family.items()}}


def settle_tie(chosen: dict, singles: list[dict], stats: dict, items: dict, scale: dict[str, float],
               resamples: int) -> tuple[dict, dict | None]:
    """The single options whose normalized gain is not beyond the noise of ``chosen``'s (Holm over the
    comparisons) tie with it; the cheapest of them (memory, then p90) is recommended. (plan, tie or None)"""
    top = next(iter(chosen["routes"].values()))
    others = {next(iter(c["routes"].values())): c for c in singles if c["routes"] != chosen["routes"]}
    if scale:
        n = {t: len(items[t]) for t in scale}
        versus = holm_family({o: paired_normalized_difference(stats[top], stats[o], n, scale, resamples)
                              for o in others})
        tied = [others[o] for o, d in versus.items() if not d["significant"]]
    else:  # no task ranks the options: every one is as good as base
        tied = list(others.values())
    if not tied:
        return chosen, None
    group = [chosen, *tied]
    cheapest = min(group, key=lambda c: (c["memory_mb"], c["p90_e2el_ms"]))
    names = [next(iter(c["routes"].values())) for c in group]
    return cheapest, {"options": names, "chosen": next(iter(cheapest["routes"].values())), "best_estimate": top}


def _cost(c: dict) -> tuple:
    return c["memory_mb"], c["p90_e2el_ms"], c["engines"]


def settle_route_ties(chosen: dict, pool: list[dict], compare: Comparer, options: list[str], sets: dict[str, str],
                      scale: dict[str, float]) -> tuple[dict, dict[str, Tie] | None]:
    """Per task, an option ties with the routed one there when neither is beyond the noise of the other and
    nothing beats it beyond the noise that does not beat the routed one (each option's comparisons one Holm
    family, as in the evidence: a route that gives way never shows a new "better" option). The cheapest plan of
    ``pool`` (memory, then p90, then engines) that routes every task to one of its ties, and whose normalized gain
    is within the noise of the chosen plan's (paired bootstrap over every ranked set's items), takes its place.
    (plan, {task: Tie} for the routes that changed, or None)"""
    def family(task: str, option: str) -> dict[str, dict]:
        return holm_family({x: compare.versus(option, x, compare.scored_by[task]) for x in options if x != option})

    def beaten_by(comparisons: dict[str, dict]) -> set[str]:
        return {x for x, d in comparisons.items() if d["significant"] and d["diff"] < 0}

    tied = {}
    for task, option in chosen["routes"].items():
        mine = family(task, option)
        tied[task] = {option, *(x for x, d in mine.items()
                                if not d["significant"] and beaten_by(family(task, x)) <= beaten_by(mine))}
    cheaper = sorted((c for c in pool if _cost(c) < _cost(chosen) and all(c["routes"][t] in tied[t] for t in tied)),
                     key=_cost)
    n = {s: len(compare.items[s]) for s in scale}

    def per_set(plan: dict) -> dict:
        return {s: compare.stats[plan["routes"][t]][s] for s, t in sets.items()}

    for c in cheaper:
        if scale and paired_normalized_difference(per_set(chosen), per_set(c), n, scale,
                                                  compare.resamples)["significant"]:
            continue
        return c, {t: Tie(options=sorted(tied[t]), chosen=c["routes"][t], best_estimate=o)
                   for t, o in chosen["routes"].items() if c["routes"][t] != o}
    return chosen, None


def option_gains(stats: dict, items: dict, scale: dict[str, float], resamples: int) -> dict[str, dict] | None:
    """Each option's normalized gain over base (the decision rule's number for a single option), with its paired
    interval; Holm over the options. None where base was not measured or no task ranks the options."""
    if BASE not in stats or not scale:
        return None
    n = {t: len(items[t]) for t in scale}
    return holm_family({o: {k: round(v, 4) if isinstance(v, float) else v for k, v in
                            paired_normalized_difference(stats[o], stats[BASE], n, scale, resamples).items()}
                        for o in stats if o != BASE})


def holm_family(comparisons: dict[str, dict]) -> dict[str, dict]:
    """Paired differences as one family: each gains ``p_holm`` (Holm-adjusted) and ``significant`` becomes Holm's
    verdict at 5%, so m comparisons together claim a false difference at most 5% of the time."""
    adjusted, reject = holm([d["p_value"] for d in comparisons.values()])
    return {name: d | {"p_holm": p, "significant": r}
            for (name, d), p, r in zip(comparisons.items(), adjusted, reject, strict=True)}


def explain(chosen: dict, best_any: dict, evidence: dict, budget: BudgetConfig, feasible: bool,
            tied: bool = False) -> list[str]:
    """The recommendation's reasons, line by line: the budget, then each route's evidence. An option more accurate
    than a route beyond the noise is named with the reason it was not routed there: the budget (where the plan
    that routes it there does not fit), or the tie or simplification stated beside these lines (``tied``)."""
    lines = []
    if not feasible:
        lines.append(f"No plan fits the budget ({budget.memory_mb:.0f} MB, p90 {budget.p90_e2el_ms:.0f} ms); this "
                     "is the plan that needs the least memory.")
    elif not best_any["fits"]:
        lines.append(f"The most accurate plan overall (mean {best_any['mean_accuracy']:.2f}) needs "
                     f"{best_any['memory_mb']:.0f} MB and p90 {best_any['p90_e2el_ms']:.0f} ms, over the budget.")
    else:
        lines.append("The most accurate per-task plan fits the budget "
                     f"({best_any['memory_mb']:.0f} of {budget.memory_mb:.0f} MB, p90 {best_any['p90_e2el_ms']:.0f} "
                     f"of {budget.p90_e2el_ms:.0f} ms, {best_any['engines']} model engine(s)).")
    for task, e in evidence.items():
        beaten = [o for o, d in e["versus"].items() if d["significant"] and d["diff"] > 0]
        ties = [o for o, d in e["versus"].items() if not d["significant"]]
        worse = [o for o, d in e["versus"].items() if d["significant"] and d["diff"] < 0]
        text = f"{task}: {e['option']} ({e['headline']} {e['value']:.1f})"
        if beaten:
            text += (f"; better than {', '.join(beaten)} beyond the noise (95% paired bootstrap, Holm-corrected "
                     f"over {len(e['versus'])} comparison(s))")
        if ties:
            text += f"; not distinguishable from {', '.join(ties)}"
        if worse:
            over = not best_any["fits"] and best_any["routes"].get(task) in worse
            text += (f"; {', '.join(worse)} more accurate beyond the noise"
                     + (", but the plan that routes it there does not fit the budget" if over else
                        ", not routed: see the tie or simplification above" if tied else
                        ", not routed: plans rank by the normalized gain over every ranked task"))
        lines.append(text + ".")
    return lines
