"""report.md's sections about what the options kept and what the run cost: each option's retention of the experts' gain
over base, the seed twins' spread (training noise), the zoo's training budgets and data accounting, the merge sweep's
candidates, and where the run's time went. Like runtime/bench/report.py they read report.json's dict form, so older
reports render (without the parts they lack)."""

from __future__ import annotations

import math

from runtime.bench.compare import BASE

PAPER = "the paper's headline: merging kept ~96% of the generation specialist at 7B"


def experts_option(options: list[str]) -> str | None:
    """The option of one expert per task (``experts``, or a model family's ``NAME-experts``)."""
    return next((o for o in options if o == "experts" or o.endswith("-experts")), None)


def _accuracy_by_option(results: list[dict]) -> dict[str, dict]:
    acc: dict[str, dict] = {}
    for r in results:
        if r.get("accuracy") and not r.get("same_as"):
            acc.setdefault(r["deployment"], r["accuracy"])
    return acc


def retention(report: dict) -> tuple[str | None, dict[str, dict[str, dict]]]:
    """(the experts' option, {option: {set: {value, option_gain, expert_gain, note}}}): (option - base) /
    (experts - base) in %, null where the expert did not beat base (no ratio of a gain that is not there)."""
    acc = _accuracy_by_option(report["results"])
    experts = experts_option(list(acc))
    if experts is None or BASE not in acc:
        return experts, {}
    gains = (report.get("gains_over_base") or {}).get(experts, {})
    out: dict[str, dict[str, dict]] = {}
    for option, scores in acc.items():
        if option in (BASE, experts):
            continue
        out[option] = {}
        for s, a in scores.items():
            if s not in acc[BASE] or s not in acc[experts]:
                continue
            base = acc[BASE][s]["value"]
            expert_gain, option_gain = acc[experts][s]["value"] - base, a["value"] - base
            if expert_gain <= 0:
                value, note = None, "expert did not beat base"
            else:
                value = round(100 * option_gain / expert_gain, 1)
                ci = gains.get(s, {}).get("ci95")
                note = "expert's gain over base is within the noise" if ci and ci[0] <= 0 else None
            out[option][s] = {"value": value, "option_gain": round(option_gain, 2),
                              "expert_gain": round(expert_gain, 2), "note": note}
    return experts, out


def seed_section(report: dict, sets: list[str], labels: list[str]) -> list[str]:
    """The seed twins' table: each twin minus the option it retrains, per set, with the paired interval."""
    spread = report.get("seed_spread")
    if not spread:
        return []
    lines = ["", "## Training noise: seed twins", "",
             "Each twin retrains an option with another seed (other rows of the same tasks, another initialisation "
             "and order; the same recipe, steps and compute), scored on the same items: twin − option in headline "
             "points, paired 95% bootstrap interval; **seed alone** where the difference holds beyond the noise "
             "(Holm-corrected over the table's comparisons). A difference between two options no larger than these "
             "is not evidence that one recipe beats the other.", "",
             "| twin − option | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(sets)]
    for twin, pair in spread.items():
        cells = []
        for s in sets:
            d = pair["per_task"].get(s)
            flag = " **seed alone**" if d and d.get("seed_alone") else ""
            cells.append("—" if d is None else f"{d['diff']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]{flag}")
        lines.append(f"| {twin} − {pair['of']} | " + " | ".join(cells) + " |")
    return lines


def retention_section(report: dict, sets: list[str], labels: list[str] | None = None) -> list[str]:
    """The retention table, one column per scored set (headed by ``labels``, the summary table's headers)."""
    experts, table = (report.get("experts_option"), report["retention"]) if report.get("retention") is not None \
        else retention(report)
    if not table:
        return []
    ranked = list(report.get("ranked_by") or sets)
    lines = ["", f"Retention of the experts' gain over base, (option − base) / ({experts} − base) per set, % "
             f"({PAPER}); † the expert's own gain is within the noise, so the ratio is too:", "",
             "| option | " + " | ".join(labels or sets) + " | mean over ranked sets |",
             "|---|" + "---:|" * (len(sets) + 1)]
    first = next(iter(table.values()))
    lines.append(f"| {experts} − base (points) | " + " | ".join(
        f"{first[s]['expert_gain']:+.1f}" if s in first else "—" for s in sets) + " | |")
    for option, per_set in table.items():
        cells = []
        for s in sets:
            r = per_set.get(s)
            cells.append("—" if r is None else "expert did not beat base" if r["value"] is None else
                         f"{r['value']:.0f}%" + (" †" if r["note"] else ""))
        defined = [per_set[s]["value"] for s in ranked if s in per_set and per_set[s]["value"] is not None]
        mean = f"{sum(defined) / len(defined):.0f}% (of {len(defined)})" if defined else "—"
        lines.append(f"| {option} | " + " | ".join(cells) + f" | {mean} |")
    return lines


# ------------------------------------------------------------------------------------------- training budgets
def _int(v) -> str:
    return "—" if v is None else f"{v:,}"


def training_section(report: dict) -> list[str]:
    """Every trained zoo model's budget, its data accounting per task, and whether the mix is compute-matched."""
    models = {n: m for n, m in ((report.get("zoo") or {}).get("models") or {}).items() if m.get("training")}
    if not models:
        return []
    lines = ["", "## Training budgets", "",
             "| model | kind | seed | steps × rows/step | rows | epochs | tokens seen | lr | max_length | "
             "val loss before → kept (lowest @ step) | build wall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        t = m["training"]
        kept = t.get("val_loss_after") if t.get("val_loss_after") is not None else t.get("best_val_loss")
        before = f"{t['val_loss_before']:.3f}" if t.get("val_loss_before") is not None else "—"  # not evaluated
        val = f"{before} → {kept:.3f}" if kept is not None else "—"
        if t.get("best_val_loss") is not None and t.get("best_checkpoint_step") is not None:
            val += f" ({t['best_val_loss']:.3f} @ {t['best_checkpoint_step']})"
        lines.append(f"| {name} | {m['kind']} | {_int(t.get('seed'))} | {t['steps']} × {_int(t.get('batch_size'))} | "
                     f"{_int(t.get('rows'))} | {t['epochs'] if t.get('epochs') is not None else '—'} | "
                     f"{_int(t.get('tokens_seen'))} | {t['learning_rate'] if t.get('learning_rate') else '—'} | "
                     f"{_int(t.get('max_length'))} | {val} | "
                     + _min(m.get("wall_s"))
                     + (f" (resumed from {t['resumed_from']}: that session's)" if t.get("resumed_from") else "")
                     + " |")
    lines += ["", "Rows per task: kept / dropped (prompt longer than max_length, replaced by another item) / cut "
              "(response cut at max_length) / cropped (input shown as a window around what matters); validation "
              "rows kept / dropped / cut:", "",
              "| model | task | rows | tokens | dropped | cut | cropped | val rows | val dropped | val cut |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        for task, r in m["training"]["per_task"].items():
            lines.append(f"| {name} | {task} | " + " | ".join(_int(r.get(k)) for k in (
                "rows", "tokens", "dropped", "cut", "cropped", "val_rows", "val_dropped", "val_cut")) + " |")
    return lines + ["", *compute_match_lines(models)]


def compute_match_lines(models: dict[str, dict]) -> list[str]:
    """Per mix: its steps against the sum of its experts' (same seed), and per task its rows and tokens
    against the expert's, stated as matched or not with the numbers."""
    out = []
    for name, m in models.items():
        if m["kind"] != "mixed":
            continue
        mix = m["training"]
        experts = {e["training"]["tasks"][0]: (n, e["training"]) for n, e in models.items()
                   if e["kind"] == "expert" and len(e["training"]["tasks"]) == 1
                   and e["training"].get("seed") == mix.get("seed") and e["training"]["tasks"][0] in mix["tasks"]}
        missing = [t for t in mix["tasks"] if t not in experts]
        if missing:
            out.append(f"- {name}: no expert of seed {mix.get('seed')} for {', '.join(missing)} in this zoo: "
                       "the mix cannot be compared with the experts' budget.")
            continue
        steps = sum(e["steps"] for _, e in experts.values())
        rows = sum(e.get("rows") or 0 for _, e in experts.values())
        differ = [f"{t}: mix {_int(mix['per_task'].get(t, {}).get('rows'))} rows / "
                  f"{_int(mix['per_task'].get(t, {}).get('tokens'))} tokens, "
                  f"expert {_int(e['per_task'][t].get('rows'))}"
                  f" / {_int(e['per_task'][t].get('tokens'))}" for t, (_, e) in experts.items()
                  if (mix["per_task"].get(t, {}).get("rows"), mix["per_task"].get(t, {}).get("tokens"))
                  != (e["per_task"].get(t, {}).get("rows"), e["per_task"].get(t, {}).get("tokens"))]
        matched = steps == mix["steps"] and rows == mix.get("rows") and not differ
        out.append(f"- **{name} is {'' if matched else 'NOT '}compute-matched to the experts**: it took "
                   f"{mix['steps']} optimizer steps of {_int(mix.get('batch_size'))} rows ({_int(mix.get('rows'))} "
                   f"rows, {_int(mix.get('tokens_seen'))} tokens); the experts "
                   + " + ".join(f"{e['steps']}" for _, e in experts.values())
                   + f" = {steps} steps ({_int(rows)} rows, "
                   f"{_int(sum(e.get('tokens_seen') or 0 for _, e in experts.values()))} tokens)"
                   + ("; per task the mix saw the experts' rows (rows and tokens equal)." if not differ else
                      "; per task rows / tokens differ: " + "; ".join(differ) + "."))
    return out


# -------------------------------------------------------------------------------------------- merge sweep
def sweep_scope(sw: dict, report: dict) -> str:
    """How the sweep's validation differs from the test: its N, its output caps against the test's, and
    generation's metric (HumanEval is the test only)."""
    caps, test = sw.get("max_tokens") or {}, report.get("sampling") or {}
    text = f" Validation: {sw['limit']} items per task" if sw.get("limit") else ""
    if caps:
        text += (", answers capped at " + ", ".join(f"{t} {c}" for t, c in caps.items()) + " tokens"
                 + (" (the test's: " + ", ".join(f"{t} {test[t]['max_tokens']}" for t in caps if t in test) + ")"
                    if any(t in test for t in caps) else ""))
    if "humaneval" in (report.get("ranked_by") or {}) and "generation" in caps:
        text += "; generation is chosen on chrF++ there, while the test ranks it by HumanEval pass@1"
    return text + "." if text else ""


def sweep_section(report: dict) -> list[str]:
    """Each merge sweep's candidates on validation: per-task scores, retention, objective and verdict, and the
    sweep's own word when no candidate is at or above base on every task."""
    sweeps = {n: m["sweep"] for n, m in ((report.get("zoo") or {}).get("models") or {}).items() if m.get("sweep")}
    lines: list[str] = []
    for name, sw in sweeps.items():
        tasks = list(sw.get("base_val") or {})
        chosen = f"Chosen: **{sw.get('chosen')}** (objective {_pct(sw.get('chosen_objective'))})."
        lines += ["", f"## Merge sweep: {name}", "", chosen + " Its manifest keeps the choice only (written before "
                  "sweeps recorded every candidate)." if not tasks else
                  f"{sw.get('candidates', len(sw.get('results', [])))} candidates scored on validation (objective "
                  f"{sw.get('objective', '?')}: mean over {', '.join(sw.get('objective_tasks') or ['the tasks'])} of "
                  "(candidate − base) / (expert − base), the tasks where the expert beats base; a candidate below "
                  "base on any task is rejected). " + chosen + sweep_scope(sw, report)]
        if sw.get("no_candidate_at_or_above_base"):
            lines += ["", f"**No candidate is at or above the base on every task**: {name} is the best of them "
                      "and still below base on " + ", ".join(_below(sw.get("chosen_below_base")) or ["some task"])
                      + (" (every candidate's numbers below)." if tasks else ".")]
        if not tasks:  # a manifest that keeps only the choice
            continue
        lines += ["", f"Every candidate's files: `zoo/sweep-{name}/` (sweep.json, sweep.csv, sweep.png) in the output "
                  "folder of the run that built it."]
        lines += ["", "| candidate | " + " | ".join(f"{t} val (retention)" for t in tasks) + " | objective | verdict |",
                  "|---|" + "---:|" * (len(tasks) + 2),
                  "| base | " + " | ".join(f"{sw['base_val'][t]:.1f}" for t in tasks) + " | | |",
                  "| experts | " + " | ".join(_val(sw.get("expert_val", {}).get(t)) for t in tasks) + " | | |"]
        for c in sw.get("results", []):
            verdict = ("rejected: below base on " + ", ".join(_below(c.get("below_base")))
                       if c.get("rejected") else "chosen" if c["name"] == sw.get("chosen") else "kept")
            cells = [f"{_val(c['val'].get(t))} ({_pct(c.get('retention', {}).get(t))})" if t in c["val"] else
                     "not scored" for t in tasks]
            lines.append(f"| {c['name']} | " + " | ".join(cells) + f" | {_pct(c.get('objective'))} | {verdict} |")
    return lines


def _below(failing: list | None) -> list[str]:
    return [f"{b['task']} ({b['score']:.1f} < {b['base']:.1f})" if isinstance(b, dict) else str(b)
            for b in failing or []]


def _val(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


# ------------------------------------------------------------------------------------------ where time went
def _min(s: float | None) -> str:
    return "—" if s is None else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def agent_wall_s(r: dict) -> tuple[float | None, bool]:
    """The agent's wall (measured by its meter), else estimated from its per-problem mean; (seconds, estimated)."""
    if r.get("agent_machine_load"):
        return r["agent_machine_load"]["wall_s"], False
    a = r.get("agent")
    return (a["mean_wall_s"] * math.ceil(a["problems"] / max(a["workers"], 1)), True) if a else (None, False)


def answers_cell(r: dict) -> str:
    """The accuracy answers' wall, or why there is none: another engine answered only the agreement sample, or
    the answers were in the cache; a resumed phase says how many answers its journal already held, and an
    option that routes tasks to weights another option answered them with how many it took from there."""
    if r.get("accuracy_wall_s") is not None:
        notes = [f"{r[k]} {word}" for k, word in (("resumed_answers", "resumed"), ("shared_answers", "shared"))
                 if r.get(k)]
        return _min(r["accuracy_wall_s"]) + (f" ({', '.join(notes)})" if notes else "")
    if r.get("agreement"):
        return f"agreement sample ({r['agreement']['n']})"
    return "cached answers"


def phase_section(report: dict) -> list[str]:
    """The run's phase breakdown: each zoo model's build and each option/engine phase (cold start, accuracy,
    agent, load), with the phases this run read from its caches shown at the wall of the run that measured them."""
    zoo, results = report.get("zoo") or {}, report["results"]
    lines = ["", "## Where the time went", "",
             f"Whole run: {_min(report.get('wall_s'))}; zoo phase {_min(zoo.get('wall_s'))} (built this run: "
             f"{', '.join(zoo.get('built') or {}) or 'nothing'})."]
    models = zoo.get("models") or {}
    if models:
        lines += ["", "| zoo model | kind | build wall | this run |", "|---|---|---:|---|"]
        lines += [f"| {n} | {m['kind']} | {_min(m.get('wall_s'))} | "
                  + ("built" if m["built_this_run"] else f"cached (built {m.get('created') or 'before'})") + " |"
                  for n, m in models.items()]
    lines += ["", "| option | engine | cold start | accuracy answers | agent | load levels | whole phase | this run | "
              "scoring (this run) |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    served = scoring = 0.0
    for r in results:
        if r.get("same_as"):
            lines.append(f"| {r['deployment']} | {r['engine']} | = {r['same_as']}: not served again | | | | | | |")
            continue
        agent, estimated = agent_wall_s(r)
        load = sum(m["duration_s"] for m in r["latency"].values())
        served += r["wall_s"]
        cached = r.get("cached")
        lines.append(f"| {r['deployment']} | {r['engine']} | {_min(r['cold_start_s'])} | " + answers_cell(r)
                     + f" | {'≈ ' if estimated else ''}{_min(agent) if agent is not None else '—'}"
                     + (f" ({r['resumed_agent']} resumed)" if r.get("resumed_agent") else "") + f" | {_min(load)} | "
                     f"{_min(r['wall_s'])} | " + ("cached (measured before)" if cached else
                                                  "—" if cached is None else "measured")
                     + (f" at `{r['git_sha'][:7]}`" if r.get("git_sha") else "")
                     + f" | {_min(r.get('score_wall_s'))} |")
        scoring += r.get("score_wall_s") or 0
    built_walls = sum(m.get("wall_s") or 0 for m in models.values())
    if models:
        lines += ["", f"Sum of the originally measured walls: zoo builds {_min(built_walls)} + serving phases "
                  f"{_min(served)} = {_min(built_walls + served)}"
                  + (f"; scoring the answers took {_min(scoring)} in this run" if scoring else "")
                  + " (the baselines, the comparisons and the report come on top)."]
    return lines
