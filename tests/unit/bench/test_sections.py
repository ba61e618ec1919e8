"""report.md's sections on what the options kept and what the run cost: retention of the experts' gain over base,
the zoo's training budgets (compute-matched or not, rows dropped and cut per task), the merge sweep's candidates
and where the time went, each from report.json's fields."""

from __future__ import annotations

import json

from runtime.artifacts import Manifest
from runtime.bench.results import Report, TrainingBudget
from runtime.bench.sections import (
    compute_match_lines,
    phase_section,
    retention,
    retention_section,
    seed_section,
    sweep_section,
    training_section,
)
from runtime.bench.zoo import training_budget, zoo_models
from runtime.models import ModelStore

LEVEL = {"completed": 2, "failed": 0, "duration_s": 10.0, "request_throughput": 1.3, "output_throughput": 21.0,
         "total_output_tokens": 32,
         **{f"{s}_{m}_ms": 40.0 for s in ("mean", "median", "p90", "p99") for m in ("ttft", "tpot", "itl", "e2el")}}


def result(option: str, values: dict[str, float], **more) -> dict:
    accuracy = {s: {"n": 10, "headline": "h", "value": v, "ci95": [v - 1, v + 1], "metrics": {}}
                for s, v in values.items()}
    return {"deployment": option, "engine": "hf", "models": {}, "cold_start_s": 5.0, "wall_s": 300.0,
            "peak_rss_mb": 900.0, "answers_file": "x.json", "accuracy": accuracy, "accuracy_wall_s": 120.0,
            "latency": {"1": LEVEL, "8": LEVEL}} | more


def report(results: list[dict], **more) -> dict:
    return {"results": results, "ranked_by": {"humaneval": "generation", "review": "review",
                                              "completion": "completion"}} | more


def test_retention_is_the_share_of_the_experts_gain_each_option_keeps():
    results = [result("base", {"humaneval": 40.0, "review": 10.0, "completion": 50.0}),
               result("qwen-experts", {"humaneval": 60.0, "review": 10.0, "completion": 45.0}),
               result("qwen-merged", {"humaneval": 55.0, "review": 30.0, "completion": 52.0}),
               result("hybrid", {"humaneval": 60.0, "review": 10.0, "completion": 45.0}, same_as="qwen-experts")]
    experts, table = retention(report(results))
    assert experts == "qwen-experts" and set(table) == {"qwen-merged"}  # a repeated row is not an option
    merged = table["qwen-merged"]
    assert merged["humaneval"] == {"value": 75.0, "option_gain": 15.0, "expert_gain": 20.0, "note": None}
    for s in ("review", "completion"):  # expert equal to or below base: no ratio, no division by zero
        assert merged[s]["value"] is None and merged[s]["note"] == "expert did not beat base"
    md = "\n".join(retention_section(report(results), ["humaneval", "review", "completion"]))
    assert "| qwen-merged | 75% | expert did not beat base | expert did not beat base | 75% (of 1) |" in md
    assert "| qwen-experts − base (points) | +20.0 | +0.0 | -5.0 | |" in md and "~96%" in md


def test_a_ratio_of_an_expert_gain_inside_the_noise_is_marked():
    results = [result("base", {"summarization": 5.0}), result("experts", {"summarization": 6.0}),
               result("mixed", {"summarization": 4.0})]
    gains = {"experts": {"summarization": {"diff": 1.0, "ci95": [-0.5, 2.0]}}}
    _, table = retention(report(results, gains_over_base=gains))
    assert table["mixed"]["summarization"]["value"] == -100.0
    assert "noise" in table["mixed"]["summarization"]["note"]
    assert "| mixed | -100% † |" in "\n".join(retention_section(report(results, gains_over_base=gains),
                                                                   ["summarization"]))


def test_the_seed_twins_table_marks_a_difference_the_seed_alone_made():
    spread = {"experts-s1": {"of": "experts", "per_task": {
        "review": {"diff": -24.3, "ci95": [-35.0, -13.1], "p_value": 0.0, "p_holm": 0.0, "seed_alone": True},
        "completion": {"diff": -1.4, "ci95": [-6.0, 3.1], "p_value": 0.5, "p_holm": 0.5, "seed_alone": False}}}}
    md = "\n".join(seed_section(report([], seed_spread=spread), ["review", "completion"], ["review", "completion"]))
    assert "## Training noise: seed twins" in md
    assert "| experts-s1 − experts | -24.3 [-35.0, -13.1] **seed alone** | -1.4 [-6.0, +3.1] |" in md
    assert seed_section(report([]), ["review"], ["review"]) == []


def test_no_base_or_no_experts_gives_no_retention_section():
    assert retention(report([result("experts", {"review": 5.0}), result("mixed", {"review": 4.0})]))[1] == {}
    assert retention_section(report([result("base", {"review": 1.0})]), ["review"]) == []


MANIFEST = {
    "name": "qwen-lora-mix", "kind": "mixed", "config": {"seed": 0, "training": {"learning_rate": 5e-4},
                                                         "data": {"max_length": 512}},
    "tasks": ["review", "completion"], "steps": 40, "resumed_from": None, "best_checkpoint_step": 20,
    "loss_curve": {"train": [[5, 1.2]], "val": [[0, 1.7], [20, 1.1], [40, 1.3]]},
    "val_loss_before": 1.7, "val_loss_after": 1.3,
    "mixture": {"budget": {"steps": 40, "items_per_step": 4, "rows": 160, "epochs": 1.0, "tokens_seen": 9000,
                           "per_task": {"review": {"rows": 80, "tokens": 5000, "dropped_long_prompt": 3,
                                                   "truncated_response": 1, "cropped_input": 33},
                                        "completion": {"rows": 80, "tokens": 4000, "dropped_long_prompt": 0,
                                                       "truncated_response": 0, "cropped_input": 16}}},
                "val": {"review": {"rows": 14, "dropped_long_prompt": 2, "truncated_response": 0}}}}


def expert(task: str, steps: int, rows: int, tokens: int, seed: int = 0) -> dict:
    per_task = {task: {"rows": rows, "tokens": tokens}}
    return {"kind": "expert", "built_this_run": False, "training": TrainingBudget.model_validate(
        {"seed": seed, "tasks": [task], "steps": steps, "batch_size": 4, "rows": rows, "tokens_seen": tokens,
         "per_task": per_task}).model_dump(mode="json")}


def test_a_training_manifest_gives_the_budget_and_every_row_dropped_or_cut():
    budget = training_budget(Manifest.model_validate(MANIFEST))
    assert (budget["steps"], budget["batch_size"], budget["rows"], budget["tokens_seen"]) == (40, 4, 160, 9000)
    assert budget["best_val_loss"] == 1.1 and budget["learning_rate"] == 5e-4 and budget["seed"] == 0
    assert budget["val_loss_after"] == 1.3  # the weights kept are the last step's, not the lowest loss's
    assert budget["per_task"]["review"] == {"rows": 80, "tokens": 5000, "dropped": 3, "cut": 1, "cropped": 33,
                                            "val_rows": 14, "val_dropped": 2, "val_cut": 0}
    assert training_budget(Manifest.model_validate({"name": "m", "kind": "merged"})) is None


def test_the_mix_is_stated_compute_matched_only_when_steps_and_rows_are_the_experts():
    mix = {"kind": "mixed", "built_this_run": True, "wall_s": 600.0,
           "training": TrainingBudget.model_validate(training_budget(Manifest.model_validate(MANIFEST)))
           .model_dump(mode="json")}
    matched = {"qwen-lora-mix": mix, "e-review": expert("review", 20, 80, 5000),
               "e-completion": expert("completion", 20, 80, 4000)}
    (line,) = compute_match_lines(matched)
    assert "**qwen-lora-mix is compute-matched to the experts**" in line and "20 + 20 = 40 steps" in line
    fewer = matched | {"e-review": expert("review", 30, 120, 7000)}
    (line,) = compute_match_lines(fewer)
    assert "is NOT compute-matched" in line and "review: mix 80 rows / 5,000 tokens, expert 120 / 7,000" in line
    other_seed = matched | {"e-review": expert("review", 20, 80, 5000, seed=1)}
    assert "no expert of seed 0 for review" in compute_match_lines(other_seed)[0]
    md = "\n".join(training_section({"zoo": {"models": matched}}))
    assert "## Training budgets" in md and "| qwen-lora-mix | review | 80 | 5,000 | 3 | 1 | 33 | 14 | 2 | 0 |" in md
    assert "| qwen-lora-mix | mixed | 0 | 40 × 4 | 160 |" in md and "| 1.700 → 1.300 (1.100 @ 20) |" in md
    unevaluated = mix | {"training": mix["training"] | {"val_loss_before": None}}  # eval_on_start: false
    md = "\n".join(training_section({"zoo": {"models": matched | {"qwen-lora-mix": unevaluated}}}))
    assert "| — → 1.300 (1.100 @ 20) |" in md  # the kept loss is still shown


SWEEP = {"chosen": "m-w1", "objective": "mean_retention", "objective_tasks": ["review"], "candidates": 2,
         "chosen_objective": 0.4, "no_candidate_at_or_above_base": True,
         "chosen_below_base": [{"task": "completion", "score": 40.0, "base": 50.0}],
         "base_val": {"review": 10.0, "completion": 50.0}, "expert_val": {"review": 30.0, "completion": 55.0},
         "results": [{"name": "m-w1", "val": {"review": 18.0, "completion": 40.0}, "retention": {"review": 0.4},
                      "objective": 0.4, "rejected": True, "below_base": [{"task": "completion", "score": 40.0,
                                                                          "base": 50.0}]},
                     {"name": "m-w0.5", "val": {"review": 5.0}, "retention": {"review": -0.25}, "objective": -0.25,
                      "rejected": True, "below_base": [{"task": "review", "score": 5.0, "base": 10.0}]}]}


def test_a_sweep_with_no_candidate_at_or_above_base_says_so_with_every_candidate():
    md = "\n".join(sweep_section({"zoo": {"models": {"qwen-merged": {"kind": "merged", "built_this_run": False,
                                                                      "sweep": SWEEP}}}}))
    assert "**No candidate is at or above the base on every task**" in md and "completion (40.0 < 50.0)" in md
    assert "| m-w1 | 18.0 (40%) | 40.0 (—) | 40% | rejected: below base on completion (40.0 < 50.0) |" in md
    assert "| m-w0.5 | 5.0 (-25%) | not scored | -25% | rejected: below base on review (5.0 < 10.0) |" in md
    assert "| base | 10.0 | 50.0 |" in md and "| experts | 30.0 | 55.0 |" in md


def test_the_phase_breakdown_shows_each_phase_and_which_were_cached():
    agent = {"problems": 40, "solved": 1, "solved_share": 2.5, "ci95": [0, 13], "first_try": 1, "first_try_share": 2.5,
             "loop_adds": 0.0, "mean_calls": 3.0, "mean_wall_s": 30.0, "mean_tokens": 100.0, "errors": 0,
             "calls_per_route": {}, "max_revisions": 2, "workers": 4}
    meter = {"wall_s": 240.0, "cores": 2, "load1_start": 2.0, "load1_end": 2.0, "other_cpu_share": 0.0,
             "own_cpu_share": 0.9}
    results = [result("base", {"review": 1.0}, cached=True, agent=agent, score_wall_s=90.0),
               result("mixed", {"review": 1.0}, cached=False, agent=agent, agent_machine_load=meter,
                      accuracy_wall_s=None),
               result("hybrid", {"review": 1.0}, same_as="mixed")]
    zoo = {"built": {"m-mix": 600.0}, "reused": ["base"], "wall_s": 610.0, "models": {
        "base": {"kind": "base", "built_this_run": False},
        "m-mix": {"kind": "mixed", "built_this_run": True, "wall_s": 600.0, "created": "2026-11-26T10:00:00Z"}}}
    rep = report(results, zoo=zoo, wall_s=1500.0)
    Report.model_validate(rep | {"name": "x", "environment": {"cpu": "c", "cpu_count": 2, "memory_gb": 1.0,
                                                              "gpu": None, "platform": "p", "versions": {},
                                                              "git_sha": None, "config_hash": "h"},
                                 "config": {}, "n_per_task": {}, "sampling": {}, "headline_metrics": {}})
    md = "\n".join(phase_section(rep))
    assert "Whole run: 25.0 min; zoo phase 10.2 min (built this run: m-mix)" in md
    assert "| m-mix | mixed | 10.0 min | built |" in md and "| base | base | — | cached (built before) |" in md
    assert "| base | hf | 5 s | 2.0 min | ≈ 5.0 min | 20 s | 5.0 min | cached (measured before) | 1.5 min |" in md
    assert "| mixed | hf | 5 s | cached answers | 4.0 min | 20 s | 5.0 min | measured | — |" in md
    assert "| hybrid | hf | = mixed: not served again |" in md
    assert "zoo builds 10.0 min + serving phases 10.0 min = 20.0 min; scoring the answers took 1.5 min" in md


def test_a_report_written_before_these_fields_renders_without_them():
    old = json.loads(json.dumps(report([result("base", {"review": 1.0})], zoo={"built": {}, "reused": [],
                                                                              "wall_s": 1.0})))
    assert training_section(old) == [] and sweep_section(old) == []
    assert "| zoo model |" not in "\n".join(phase_section(old))


def _stored(store: ModelStore, name: str, manifest: dict) -> None:
    folder = store.home / "elsewhere" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    store.register(name, folder, kind=manifest["kind"])


def test_the_zoo_reads_every_model_from_its_manifest_built_or_reused(store_home, tmp_path):
    store = ModelStore()
    _stored(store, "qwen-lora-mix", MANIFEST | {"wall_s": 2154.2, "created": "2026-11-26T13:30:20Z"})
    chosen = {"candidate": "m-w1", "objective": 0.4, "no_candidate_at_or_above_base": True}
    _stored(store, "qwen-merged", {"name": "qwen-merged", "kind": "merged", "wall_s": 900.0,
                                   "chosen_by_sweep": chosen})
    models = zoo_models(store, ["qwen-lora-mix", "qwen-merged", "not-built"], {"qwen-merged": 901.0})
    assert set(models) == {"qwen-lora-mix", "qwen-merged"}  # a step that failed has nothing to describe
    mix = models["qwen-lora-mix"]
    assert mix["kind"] == "mixed" and not mix["built_this_run"] and mix["wall_s"] == 2154.2
    assert mix["training"]["steps"] == 40 and mix["training"]["per_task"]["review"]["dropped"] == 3
    merged = models["qwen-merged"]
    assert merged["built_this_run"] and merged["training"] is None and merged["sweep"]["chosen"] == "m-w1"
    md = "\n".join(sweep_section({"zoo": {"models": models}}))
    assert "Chosen: **m-w1** (objective 40%). Its manifest keeps the choice only" in md
    assert "**No candidate is at or above the base on every task**" in md
    sweeps = tmp_path / "zoo"
    (sweeps / "sweep-qwen-merged").mkdir(parents=True)
    (sweeps / "sweep-qwen-merged" / "sweep.json").write_text(json.dumps(SWEEP))
    again = zoo_models(store, ["qwen-merged"], {}, sweeps)  # the sweep's own file, every candidate in it
    assert again["qwen-merged"]["sweep"]["results"][1]["name"] == "m-w0.5"


def test_the_answers_cell_says_why_a_phase_has_no_accuracy_wall():
    from runtime.bench.sections import answers_cell

    assert answers_cell({"accuracy_wall_s": 600.0}) == "10.0 min"
    assert answers_cell({"accuracy_wall_s": 600.0, "resumed_answers": 40}) == "10.0 min (40 resumed)"
    assert answers_cell({"accuracy_wall_s": 6.0, "resumed_answers": 2, "shared_answers": 400}) == \
        "6 s (2 resumed, 400 shared)"
    assert answers_cell({"accuracy_wall_s": None, "agreement": {"n": 24, "matched": 20}}) == "agreement sample (24)"
    assert answers_cell({"accuracy_wall_s": None}) == "cached answers"
