"""The bench report: ``report.json`` for machines, ``report.md`` and PNG charts for people.

report.json is ``runtime.bench.results.Report`` dumped (``Report.model_json_schema()`` prints its schema; each
field's meaning is its ``Field(description=...)`` there): the run's environment, config, N, sampling and headline
metric per scored set, the zoo, one ``PhaseResult`` per option and engine (accuracy with intervals, latency per
load level, memory, cold start, adapter load, agent, agreement), failures and skipped pairs, the
``Recommendation``, the trivial baselines, each option's gain over base and the difference this N can detect.
Beside it: ``answers/OPTION/SET.jsonl`` (``humaneval.jsonl`` and ``agent.jsonl`` too), one line per scored item
{id, reference, answer, finish_reason, completion_tokens}, in item order.

The renderers below read report.json's dict form (``Report.model_dump(mode="json")``), so they render a report
written by any version, committed ones included.
"""

from __future__ import annotations

from pathlib import Path

from runtime.bench.charts import plot
from runtime.bench.compare import BASE, detectable_share
from runtime.bench.results import SCHEMA_VERSION, UNDER_LOAD_SHARE, MachineLoad, Report, top_level
from runtime.bench.sections import (
    phase_section,
    retention,
    retention_section,
    seed_section,
    sweep_section,
    training_section,
)

__all__ = ["SCHEMA_VERSION", "markdown", "plot", "top_level", "write_report"]


def mean_accuracy(result: dict, ranked: list[str] | None = None) -> float:
    """Mean of the headline values of the ranked sets (all scored sets where the report predates them)."""
    values = [a["value"] for s, a in result["accuracy"].items() if ranked is None or s in ranked]
    return sum(values) / len(values) if values else 0.0


def column_label(report: dict, scored: str) -> str:
    """An accuracy column's header: HumanEval is generation's headline (pass@1), generation's chrF++ its second."""
    ranked = report.get("ranked_by") or {}
    if scored == "humaneval":
        return "generation pass@1 (HumanEval)"
    if scored == "generation" and scored not in ranked and ranked:
        return f"generation {report['headline_metrics'][scored]}"
    return scored


def columns(report: dict) -> list[str]:
    """The scored sets in table order: HumanEval first, where it stands for generation."""
    sets = list(report["n_per_task"])
    return sorted(sets, key=lambda s: (s != "humaneval", sets.index(s)))


def write_report(report: Report, out: Path) -> None:
    """OUT/report.json (the model dumped), report.md and the charts; sets each result's ``mean_accuracy``."""
    ranked = list(report.ranked_by or report.n_per_task)
    for r in report.results:
        r.mean_accuracy = round(mean_accuracy(r.model_dump(include={"accuracy"}), ranked), 2)
    report.experts_option, report.retention = retention(report.model_dump(mode="json"))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "report.json.tmp"
    tmp.write_text(report.model_dump_json(indent=2) + "\n")
    tmp.replace(out / "report.json")
    doc = report.model_dump(mode="json")
    charts = plot(doc, out)
    (out / "report.md").write_text(markdown(doc, charts))


def _fmt(v, digits: int = 1) -> str:
    return "—" if v is None else (f"{v:.{digits}f}" if isinstance(v, int | float) else str(v))


def markdown(report: dict, charts: list[str]) -> str:
    results = report["results"]
    tasks = columns(report)
    top = top_level(results[0]) if results else "8"
    lines = [*header_lines(report), *notice_lines(report), *summary_table(report, tasks, top),
             *controls_section(report, tasks),
             *retention_section(report, tasks, [column_label(report, t) for t in tasks]),
             *seed_section(report, tasks, [column_label(report, t) for t in tasks]), *agent_section(results),
             *format_failure_table(results, tasks), *latency_table(results), *machine_load_section(results),
             *recommendation_section(report), *training_section(report), *sweep_section(report),
             *phase_section(report), "", *(f"![{c}]({c})" for c in charts), ""]
    return "\n".join(lines)


def header_lines(report: dict) -> list[str]:
    """Where and how the run was made: machine, versions, wall time, N, output caps, metrics and load."""
    env = report["environment"]
    return [f"# mixmerge bench: `{report['name']}`", "",
            f"{env['cpu']} ({env['cpu_count']} cores, {env['memory_gb']} GB){', ' + env['gpu'] if env['gpu'] else ''}"
            f"; {', '.join(f'{k} {v}' for k, v in env['versions'].items())}; git `{(env['git_sha'] or '?')[:10]}`, "
            f"config `{env['config_hash']}`" + (f"; command `{env['command']}`" if env.get("command") else "")
            + f". Whole run: {report['wall_s'] / 60:.1f} min (zoo {report['zoo']['wall_s'] / 60:.1f} min; built: "
            f"{', '.join(f'{k} {v:.0f} s' for k, v in report['zoo']['built'].items()) or 'nothing, all cached'}).",
            "", "Accuracy: greedy, test split, N = " + ", ".join(f"{t} {n}" for t, n in report["n_per_task"].items())
            + review_count(report)
            + "; output capped at " + ", ".join(f"{t} {s['max_tokens']}" for t, s in report["sampling"].items())
            + " tokens. Headline metrics (0-100): " + ", ".join(f"{t} {m}" for t, m in
                                                                  report["headline_metrics"].items())
            + ("; generation is ranked by HumanEval pass@1 (its tests run in the sandbox; asked through the "
               "generation route with `runtime eval`'s prompt), chrF++ on the stdlib bodies beside it"
               if "humaneval" in (report.get("ranked_by") or {}) else "")
            + "; [low, high] is the 95% interval over items (exact Clopper-Pearson for a share of items, such as "
            "review's line accuracy and HumanEval pass@1; percentile bootstrap for the rest). "
            + ("In bf16, vLLM's greedy answers depend on how requests were batched (a rerun flips some; float32 "
               "does not), so its answers are one draw; the hf engine on a CPU computes each row as it would alone "
               "(since its numerics revision 3: benchmarks/README.md, offline_eval.py). The agreement column shows "
               "how far the engines' answers differ. "
               if any(r.get("dtype") == "bfloat16" for r in report.get("results", [])) else "")
            + "Load: the four tasks' prompts in turn, each prompt once (test items the accuracy phase did not ask: "
            "no server's prefix cache answers a prompt it saw before), "
            f"streamed, max_tokens {report['config']['load']['max_tokens']}"
            + (fixed_length_note(report) if report["config"]["load"].get("fixed_length") else " (natural stopping)."),
            ""]


def fixed_length_note(report: dict) -> str:
    """A fixed-length load's claim, from what came back: requests that ended short of max_tokens are counted."""
    short = sum(level.get("short_answers", 0) for r in report.get("results", []) for level in r["latency"].values())
    return (" decoded in full by every request (ignore_eos: the same work for every option)." if not short else
            f" asked of every request (ignore_eos), but {short} came back shorter: their levels did less work.")


def review_count(report: dict) -> str:
    """Review's headline (line accuracy) counts its buggy items only: how many of its N."""
    metrics = next((r["accuracy"]["review"]["metrics"] for r in report.get("results", [])
                    if "review" in r.get("accuracy", {})), {})
    return (f" (review's line accuracy and its interval over the {metrics['n_buggy']} buggy items; "
            f"{metrics['n_clean']} clean)") if "n_buggy" in metrics else ""


def notice_lines(report: dict) -> list[str]:
    """Options that failed, pairs the config skipped, engines not installed."""
    lines: list[str] = []
    for f in report.get("failures", []):
        lines += [f"**Failed**: {f['deployment']} on {f['engine']}: {f['error']}", ""]
    for s in report.get("skipped", []):
        lines += [f"**Not run** (config `skip`): {s['deployment']} on {s['engine']}: {s['reason']}", ""]
    if report.get("engines_skipped"):
        lines += ["Engines skipped: " + "; ".join(f"{k}: {v}" for k, v in report["engines_skipped"].items()), ""]
    return lines


def summary_table(report: dict, tasks: list[str], top: str) -> list[str]:
    """One row per option and engine: accuracy per set, agent, throughput, latency, memory, cold start."""
    results = report["results"]
    gains = (report.get("recommendation") or {}).get("option_gains")
    head = ["option", "engine", "norm. gain [95% CI]" if gains else "mean acc.",
            *(column_label(report, t) for t in tasks), "agent solved",
            f"out tok/s @{top}", f"p90 E2EL ms @{top}", "peak RSS MB", "cold start s", "adapter load ms", "agreement"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in results:
        lat = r["latency"][top]
        agree = r.get("agreement")
        adapter = r["adapter_load_ms"]
        cells = [r["deployment"] + (f" = {r['same_as']}" if r.get("same_as") else ""),
                 r["engine"] + (f" {r['dtype']}" if r.get("dtype") else "")
                 + (f" (accuracy: {r['accuracy_engine']}'s answers)"
                    if r.get("accuracy_engine") not in (None, r["engine"]) else ""),
                 gain_cell(report, r) if gains else _fmt(r["mean_accuracy"]),
                 *(f"{a['value']:.1f} [{a['ci95'][0]:.1f}, {a['ci95'][1]:.1f}]" for a in
                   (r["accuracy"][t] for t in tasks)),
                 f"{r['agent']['solved']}/{r['agent']['problems']}" if r.get("agent") else "—",
                 _fmt(lat["output_throughput"]) + (" ⚠" if under_load(lat.get("machine_load")) else ""),
                 _fmt(lat["p90_e2el_ms"], 0), _fmt(r["peak_rss_mb"], 0),
                 _fmt(r["cold_start_s"]), adapter.get("error", "error")[:40] if isinstance(adapter, dict) else
                 _fmt(adapter, 0), f"{agree['matched']}/{agree['n']}" if agree else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    if gains:
        lines += ["", "Normalized gain: the decision rule, the mean over the ranking tasks ("
                  + ", ".join(report["recommendation"]["ranking_tasks"]) + ") of (score − base) / (best − base), "
                  "or / (base − worst) where no option beats base: 0 is the untuned base, 1 the best option on "
                  "every task, negative below base; 95% paired bootstrap interval (unadjusted); "
                  "**bold**: beyond the noise after Holm's correction over the options."]
    if any(under_load(r["latency"][top].get("machine_load")) for r in results):
        lines += ["", f"⚠ throughput measured while other processes used more than {UNDER_LOAD_SHARE:.0%} of the "
                  "cores (see **Measured under load** below): the engine's own speed is higher."]
    return lines


def gain_cell(report: dict, result: dict) -> str:
    """An option's normalized gain over base with its interval (bold where Holm says it is beyond the noise)."""
    rec = report["recommendation"]
    option = result.get("same_as") or result["deployment"]
    if option == BASE:
        return "0 (base)"
    if (g := rec["option_gains"].get(option)) is None:  # the hybrid plan: the recommendation's point estimate
        return f"{rec['normalized_gain']:.2f} (plan)" if option == "hybrid" else "—"
    text = f"{g['diff']:+.2f} [{g['ci_low']:+.2f}, {g['ci_high']:+.2f}]"
    return f"**{text}**" if g["significant"] else text


def latency_table(results: list[dict]) -> list[str]:
    metered = any(m.get("machine_load") for r in results for m in r["latency"].values())
    lines = ["", "Latency at every load level (ms; throughput in requests/s and output tokens/s; failed requests"
             + ("; other processes' share of all cores during the level and the 1-min load average at its start "
                "→ end, ⚠ above " f"{UNDER_LOAD_SHARE:.0%}" if metered else "") + "):",
             "", "| option | engine | load | req/s | out tok/s | TTFT p50 / p90 | TPOT p50 | ITL p50 | "
             "E2EL p50 / p90 / p99 | failed |" + (" others' CPU (load avg) |" if metered else ""),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if metered else "")]
    for r in results:
        for level, m in r["latency"].items():
            lines.append(f"| {r['deployment']} | {r['engine']} | {level} | {m['request_throughput']:.2f} | "
                         f"{m['output_throughput']:.1f} | {m['median_ttft_ms']:.0f} / {m['p90_ttft_ms']:.0f} | "
                         f"{m['median_tpot_ms']:.0f} | {m['median_itl_ms']:.0f} | {m['median_e2el_ms']:.0f} / "
                         f"{m['p90_e2el_ms']:.0f} / {m['p99_e2el_ms']:.0f} | {m['failed']} |"
                         + (f" {machine_cell(m.get('machine_load'))} |" if metered else ""))
    return lines


def under_load(machine: dict | None) -> bool:
    return bool(machine) and MachineLoad.model_validate(machine).under_load


def machine_cell(machine: dict | None) -> str:
    if not machine:
        return "—"
    return (f"{machine['other_cpu_share']:.0%} ({machine['load1_start']:.1f} → {machine['load1_end']:.1f})"
            + (" ⚠" if under_load(machine) else ""))


def machine_load_section(results: list[dict]) -> list[str]:
    """Which timed parts ran while other processes used the cores (their speed is then not the engine's alone)."""
    parts = [(f"{r['deployment']} on {r['engine']}, load {level}", m["machine_load"])
             for r in results if not r.get("same_as") for level, m in r["latency"].items() if m.get("machine_load")]
    parts += [(f"{r['deployment']} on {r['engine']}, {what}", r[f"{what}_machine_load"]) for r in results
              if not r.get("same_as") for what in ("accuracy", "agent") if r.get(f"{what}_machine_load")]
    if not parts:
        return []  # measured before the meter existed
    flagged = [(name, m) for name, m in parts if under_load(m)]
    worst = max(parts, key=lambda p: p[1]["other_cpu_share"])
    cores = worst[1]["cores"]
    if not flagged:
        return ["", f"Machine load: no timed part ran while other processes used more than {UNDER_LOAD_SHARE:.0%} "
                f"of the {cores} cores (most: {worst[1]['other_cpu_share']:.0%}, {worst[0]})."]
    return ["", f"**Measured under load** (⚠): other processes (outside the served process tree and the bench) "
            f"used more than {UNDER_LOAD_SHARE:.0%} of the {cores} cores during {len(flagged)} of {len(parts)} "
            "timed parts; their speed and wall times are lower than the engine's own:", "",
            *(f"- {name}: other processes used {m['other_cpu_share']:.0%} of the cores over {m['wall_s']:.0f} s "
              f"(1-min load average {m['load1_start']:.1f} → {m['load1_end']:.1f}; the server and the bench "
              f"{m['own_cpu_share']:.0%})" for name, m in flagged)]


def recommendation_section(report: dict) -> list[str]:
    """The recommended plan, its estimate beside the hybrid's measurement, and why."""
    rec, results = report.get("recommendation"), report["results"]
    if not rec:
        return []
    measured = [r for r in results if r["deployment"] == "hybrid"]
    single = set(rec["routes"].values())
    plan = (f"Deploy **{next(iter(single))}** (every task → `{next(iter(single))}`)" if len(single) == 1 else
            "Deploy **hybrid** with " + ", ".join(f"{t} → `{o}`" for t, o in rec["routes"].items()))
    lines = ["", "## Recommendation", "",
             plan + f" (`hybrid.yaml`): normalized gain {rec.get('normalized_gain') or 0:.2f} (1 = the best "
             "option on every task, 0 = base, negative below it), mean accuracy "
             + f"{rec['mean_accuracy']:.2f}, estimated "
             f"{rec['estimated_memory_mb']:.0f} MB and p90 E2EL {rec['estimated_p90_e2el_ms']:.0f} ms "
             f"(budget {rec['budget']['memory_mb']:.0f} MB, "
             f"{rec['budget']['p90_e2el_ms']:.0f} ms on {rec['engine']}; {rec['plans_in_budget']} of "
             f"{rec['plans_considered']} plans fit)."]
    for r in measured:
        twin = f" (as {r['same_as']}: same routes)" if r.get("same_as") else ""
        lines.append(f"Measured on {r['engine']}{twin}: {r['peak_rss_mb']:.0f} MB, p90 E2EL "
                     f"{r['latency'][top_level(r)]['p90_e2el_ms']:.0f} ms, mean accuracy {r['mean_accuracy']:.2f}.")
    lines += ["", *(f"- {w}" for w in rec["why"])]
    gains = report.get("gains_over_base") or {}
    scored_on = {t: (rec.get("evidence") or {}).get(t, {}).get("scored_on") or t for t in rec["routes"]}
    flagged = [f"{t} → {o} ({gains[o][s]['diff']:+.1f} {s} vs base)" for t, o in rec["routes"].items()
               if gains.get(o, {}).get(s := scored_on[t], {}).get("at_or_below_base")]
    if flagged:
        lines.append(f"- **At or below the untuned base model**: {', '.join(flagged)}: fine-tuning bought "
                     "nothing there (see the gains over base above).")
    return lines


def controls_section(report: dict, tasks: list[str]) -> list[str]:
    """Each option's gain over the untuned base (paired 95% interval; flagged at or below it), the trivial
    baselines scored on the same items, and the smallest difference this N can detect."""
    gains, baselines = report.get("gains_over_base") or {}, report.get("baselines") or {}
    lines: list[str] = []
    if gains:
        lines += ["", "Gain over the untuned `base` on the same items (headline points, paired 95% bootstrap "
                  "interval; **≤ base** where the estimate is not above base, **below base** where the whole "
                  "interval is):", "", "| option | " + " | ".join(column_label(report, t) for t in tasks) + " |",
                  "|---|" + "---:|" * len(tasks)]
        for option, per_task in gains.items():
            cells = []
            for t in tasks:
                g = per_task[t]
                flag = " **below base**" if g["below_base"] else " **≤ base**" if g["at_or_below_base"] else ""
                cells.append(f"{g['diff']:+.1f} [{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}]{flag}")
            lines.append(f"| {option} | " + " | ".join(cells) + " |")
    if baselines:
        lines += ["", "Trivial baselines on the same items (what the metric gives away for nothing):", ""]
        lines += [f"- {t}: " + "; ".join(f"{name} {b['value']:.1f} [{b['ci95'][0]:.1f}, {b['ci95'][1]:.1f}]"
                                          for name, b in baselines[t].items()) for t in tasks if baselines.get(t)]
        lines += below_baselines(report, tasks)
    lines += cut_at_cap(report, tasks) + review_false_positives(report)
    if report.get("detectable_difference"):
        lines += ["", "Smallest difference from base this N detects (two-sided 5%, 80% power): " + ", ".join(
            f"{t} {d:.1f}" if d is not None else f"{t} — (no spread in base's answers)"
            for t, d in report["detectable_difference"].items()) + " headline points (unpaired approximations "
                  "from base's answers: the paired tests above are sharper, so these err large)."]
    return lines


def _scores(report: dict, task: str) -> dict[str, float]:
    """Each option's headline on ``task`` (its rows on several engines share one scoring)."""
    return {r["deployment"]: r["accuracy"][task]["value"] for r in report["results"] if task in r["accuracy"]}


def below_baselines(report: dict, tasks: list[str]) -> list[str]:
    """The options that score no better than the best trivial baseline: on that task they show no skill the
    metric does not give away."""
    found = []
    for t in tasks:
        if not (baselines := (report.get("baselines") or {}).get(t)):
            continue
        name, best = max(((n, b["value"]) for n, b in baselines.items()), key=lambda x: x[1])
        low = [f"{o} {v:.1f}" for o, v in _scores(report, t).items() if v <= best]
        if low:
            found.append(f"{t}: {', '.join(low)} (≤ {name} {best:.1f})")
    return ["", "**At or below a trivial baseline**: " + "; ".join(found) + "."] if found else []


def cut_at_cap(report: dict, tasks: list[str], share: float = 0.1) -> list[str]:
    """Where at least ``share`` of an option's answers hit the output cap (the score then judges cut answers)."""
    cut = {t: [f"{r['deployment']} {r['accuracy'][t]['truncated_share']:.0%}" for r in report["results"]
               if (r["accuracy"].get(t) or {}).get("truncated_share") is not None
               and r["accuracy"][t]["truncated_share"] >= share] for t in tasks}
    cut = {t: list(dict.fromkeys(v)) for t, v in cut.items() if v}
    return ["", f"Answers cut at the output cap (options with ≥ {share:.0%} of them): "
            + "; ".join(f"{t}: {', '.join(v)}" for t, v in cut.items()) + "."] if cut else []


def review_false_positives(report: dict) -> list[str]:
    """Review's line accuracy reads only the buggy items: what each option answers on the clean ones (a bug named
    where there is none) is the other half of the picture."""
    rates = {r["deployment"]: r["accuracy"]["review"]["metrics"] for r in report["results"]
             if "false_positive_rate" in (r["accuracy"].get("review") or {}).get("metrics", {})}
    if not rates:
        return []
    clean = next(iter(rates.values()))["n_clean"]
    return ["", f"Review, the {clean} clean items (not in line accuracy): share answered with a bug that is not "
            "there (false positives): " + ", ".join(f"{o} {m['false_positive_rate']:.0f}%" for o, m in rates.items())
            + "; detection accuracy (bug or clean, all items): "
            + ", ".join(f"{o} {m['detection_accuracy']:.0f}%" for o, m in rates.items()) + "."]


def agent_section(results: list[dict]) -> list[str]:
    """The coding agent per option: solved with the review -> revise loop, by the first generation alone, what
    the loop adds, and its cost per problem."""
    rows = [r for r in results if r.get("agent")]
    if not rows:
        return []
    a0 = rows[0]["agent"]
    lines = ["", f"Coding agent on HumanEval's first {a0['problems']} problems (the same for every option; eval's "
             f"prompt and assembly, tests run in the sandbox, up to {a0['max_revisions']} review → revise rounds, "
             f"{a0['workers']} agents at once):", "",
             "| option | engine | solved [95% CI] | first generation | loop adds | calls / problem | "
             "wall s / problem | errors |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a = r["agent"]
        lines.append(f"| {r['deployment']} | {r['engine']} | {a['solved']}/{a['problems']} ({a['solved_share']:.1f} "
                     f"[{a['ci95'][0]:.1f}, {a['ci95'][1]:.1f}]) | {a['first_try']}/{a['problems']} | "
                     f"{a['loop_adds']:+.1f} | {a['mean_calls']:.1f} | {a['mean_wall_s']:.1f} | {a['errors']} |")
    ref = next((r for r in rows if r["deployment"] == BASE), rows[0])  # base's share, else the first option's
    d = detectable_share(ref["agent"]["solved"], ref["agent"]["problems"])
    lines += ["", f"Between two options these {a0['problems']} problems detect a difference of about {100 * d:.0f} "
              f"points in solved share (two-sided 5%, 80% power, unpaired, at {ref['deployment']}'s share); the "
              "agent gets no paired test: a smaller difference in this table is not a finding."]
    return lines


def format_failure_table(results: list[dict], tasks: list[str]) -> list[str]:
    """Per option and task, answers scored as wrong for their form: empty / off-format / unparseable of N
    ("—" where a task has no such category; see runtime/tasks/scoring.py)."""
    if not any("format_failures" in r["accuracy"][t]["metrics"] for r in results for t in tasks):
        return []  # results measured before the count existed
    lines = ["", "Answers wrong by their form, empty / off-format / unparseable of N (empty and off-format ones "
             "score 0; unparseable code fails parse_rate and pass@1):", "",
             "| option | engine | " + " | ".join(tasks) + " |", "|---|---|" + "---:|" * len(tasks)]
    for r in results:
        cells = []
        for t in tasks:
            acc = r["accuracy"][t]
            fails = acc["metrics"].get("format_failures", {})
            counts = " / ".join(str(fails[k]) if k in fails else "—" for k in ("empty", "off_format", "unparseable"))
            cells.append(f"{counts} of {acc['n']}" if fails else "—")
        lines.append(f"| {r['deployment']} | {r['engine']} | " + " | ".join(cells) + " |")
    return lines
