"""`runtime bench`: the percentile and throughput math, the bootstrap, the report schema, and a
whole bench of the fake engine on tiny models (real `runtime serve` processes on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.bench.compare import agreement
from runtime.bench.config import BenchConfig
from runtime.bench.keys import models_key
from runtime.bench.load import RequestRecord, summarize
from runtime.bench.recommend import recommend
from runtime.bench.run import Bench, Progress, run_bench
from runtime.config import configs_dir, load_config
from runtime.errors import ConfigError
from runtime.models import ModelStore
from runtime.stats import bootstrap_ci, mean_of, paired_difference
from runtime.tasks import build_dataset, load_items


# ----------------------------------------------------------------------------------------- load math
def test_percentiles_and_throughput_follow_vllm_bench_serve():
    records = [RequestRecord(ok=True, start=0, ttft=0.1 * i, e2el=float(i), itl=[0.05] * 3, output_tokens=11)
               for i in range(1, 11)]
    records.append(RequestRecord(ok=False, start=0, error="HTTP 503"))
    out = summarize(records, duration=20.0)
    assert out["completed"] == 10 and out["failed"] == 1 and out["errors"] == ["HTTP 503"]
    assert out["request_throughput"] == pytest.approx(0.5)  # 10 done / 20 s
    assert out["output_throughput"] == pytest.approx(110 / 20)
    assert out["median_e2el_ms"] == pytest.approx(5500) and out["mean_e2el_ms"] == pytest.approx(5500)
    assert out["p90_e2el_ms"] == pytest.approx(9100)  # linear interpolation, as numpy and vllm bench serve do
    assert out["p99_e2el_ms"] == pytest.approx(9910)
    # TPOT excludes the first token: (e2el - ttft) / (tokens - 1)
    assert out["mean_tpot_ms"] == pytest.approx(np.mean([(i - 0.1 * i) / 10 * 1000 for i in range(1, 11)]))
    assert out["median_itl_ms"] == pytest.approx(50)


def test_an_answer_without_text_has_no_ttft_and_does_not_pull_the_median_to_zero():
    records = [RequestRecord(ok=True, start=0, ttft=1.0, e2el=2.0, output_tokens=3) for _ in range(3)]
    records += [RequestRecord(ok=True, start=0, e2el=0.5, output_tokens=0) for _ in range(4)]  # EOS at once
    out = summarize(records, duration=4.0)
    assert out["completed"] == 7 and out["empty_answers"] == 4
    assert out["median_ttft_ms"] == pytest.approx(1000) and out["median_e2el_ms"] == pytest.approx(500)


def test_no_completed_request_gives_zero_throughput_not_a_crash():
    out = summarize([RequestRecord(ok=False, start=0, error="x")], duration=0.0)
    assert out["completed"] == 0 and out["request_throughput"] == 0.0 and out["p90_e2el_ms"] == 0.0


# ---------------------------------------------------------------------------------------- statistics
def test_bootstrap_interval_contains_the_mean_and_is_degenerate_for_constants():
    assert bootstrap_ci(mean_of([3.0] * 20), 20) == (3.0, 3.0)
    rng = np.random.default_rng(1)
    values = list(rng.normal(50, 10, 200))
    low, high = bootstrap_ci(mean_of(values), 200)
    assert low < np.mean(values) < high and high - low < 4 * 10 / np.sqrt(200) * 1.2


def test_paired_difference_sees_a_real_gap_and_not_a_fake_one():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 100, 60)
    better = mean_of(list(base + 5 + rng.normal(0, 1, 60)))  # paired: same items, +5 each
    d = paired_difference(better, mean_of(list(base)), 60)
    assert d["significant"] and 4 < d["diff"] < 6 and d["ci_low"] > 0 and d["p_value"] < 0.01
    same = paired_difference(mean_of(list(base)), mean_of(list(base)), 60)
    assert not same["significant"] and same["diff"] == 0


def test_the_headline_statistic_on_every_item_is_the_scorers_headline(store_home):
    from runtime.tasks import TASKS

    build_dataset()
    for task in ("generation", "summarization", "completion", "review"):
        items = load_items(task, "test", 10)
        answers = [it.reference if i % 2 else "line: 3\nno idea" for i, it in enumerate(items)]
        every = list(range(len(items)))
        expected = TASKS[task].score(items, answers, None)[TASKS[task].headline]
        assert TASKS[task].statistic(items, answers, None)(every) == pytest.approx(expected), task


def test_agreement_counts_identical_greedy_answers():
    ref = {"review": ["a", "b", "c"]}
    mine = {"review": [{"answer": "a"}, {"answer": "x"}, {"answer": "c"}]}
    assert agreement(ref, mine) == {"matched": 2, "n": 3, "per_task": {"review": {"matched": 2, "n": 3}}}


def test_hybrid_must_come_last(tmp_path):
    with pytest.raises(ConfigError, match="hybrid is planned"):
        load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig,
                    ["deployments=[hybrid, experts]"])
    with pytest.raises(ConfigError, match="accuracy.engine_for names no deployment: merge"):
        load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, ["accuracy.engine_for={merge: vllm}"])


# ----------------------------------------------------------------------------- a whole bench, fake engine
class Recorder(Progress):
    def __init__(self) -> None:
        self.phases: list[str] = []
        self.said: list[str] = []

    def phase(self, name: str, total: int) -> None:
        self.phases.append(name)

    def say(self, message: str) -> None:
        self.said.append(message)


def test_a_bench_of_the_fake_engine_writes_the_report_and_resumes(tiny_zoo, tmp_path):
    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, [
        "zoo.train=[]", "zoo.merge_sweep=null", "zoo.adapter_merge=null", "engines=[fake]",
        "deployments=[experts, merged, mixed, hybrid]", "accuracy.n=4", "accuracy.humaneval_n=2",
        "agent.n=2", "agent.max_revisions=1", "accuracy.bootstrap=100",
        "load.requests={1: 2, 4: 4}", "load.concurrency=[1, 4]", "load.rate_requests=3", "load.rate=20",
        "budget.memory_mb=100000"])
    out = tmp_path / "bench"
    progress = Recorder()
    report = run_bench(cfg, out, progress)

    saved = json.loads((out / "report.json").read_text())
    assert saved["schema_version"] == 1
    assert {"cpu", "versions", "git_sha", "config_hash"} <= set(saved["environment"])
    assert [(r["deployment"], r["engine"]) for r in saved["results"]] == [  # base first: always measured
        ("base", "fake"), ("experts", "fake"), ("merged", "fake"), ("mixed", "fake"), ("hybrid", "fake")]
    assert saved["n_per_task"]["humaneval"] == 2 and saved["headline_metrics"]["humaneval"] == "pass_at_1"
    assert saved["ranked_by"] == {"humaneval": "generation", "summarization": "summarization",
                                  "completion": "completion", "review": "review"}
    for r in saved["results"]:
        assert set(r["accuracy"]) == {"generation", "completion", "review", "summarization", "humaneval"}
        assert all(a["n"] == (2 if t == "humaneval" else 4) and len(a["ci95"]) == 2 for t, a in r["accuracy"].items())
        assert r["accuracy"]["humaneval"]["ci_method"] == "clopper-pearson"
        assert r["accuracy"]["humaneval"]["metrics"]["sandbox"]["mode"] in ("namespaces", "process")
        assert set(r["latency"]) == {"1", "4", "poisson-20"}
        assert r["latency"]["4"]["completed"] == 4 and r["latency"]["4"]["failed"] == 0
        assert r["latency"]["4"]["output_throughput"] > 0 and r["peak_rss_mb"] > 0 and r["cold_start_s"] > 0
        for level in r["latency"].values():  # what else used the cores, per timed level
            assert 0 <= level["machine_load"]["other_cpu_share"] <= 1 and level["machine_load"]["cores"] >= 1
    by = {r["deployment"]: r for r in saved["results"]}
    assert by["merged"]["adapter_load_ms"] is None  # a full model, no adapter to load
    assert by["experts"]["accuracy_machine_load"]["wall_s"] > 0 and by["experts"]["agent_machine_load"]["wall_s"] > 0
    assert isinstance(by["experts"]["adapter_load_ms"], float)
    rec = saved["recommendation"]
    assert set(rec["routes"]) == {"generation", "completion", "review", "summarization"} and rec["fits_budget"]
    assert rec["evidence"]["generation"]["scored_on"] == "humaneval"
    assert set(rec["routes"].values()) <= {"base", "experts", "merged", "mixed"}
    tasks = {"generation", "completion", "review", "summarization", "humaneval"}
    assert set(saved["gains_over_base"]) == {"experts", "merged", "mixed"}
    for per_task in saved["gains_over_base"].values():
        assert set(per_task) == tasks
        for g in per_task.values():
            assert g["ci95"][0] <= g["diff"] <= g["ci95"][1] and g["at_or_below_base"] == (g["diff"] <= 0)
    assert saved["baselines"]["review"]["no issues"]["value"] == 0.0  # right on no buggy item: line accuracy 0
    assert set(saved["baselines"]["completion"]) == {"previous line", "constant"}
    assert saved["baselines"]["humaneval"]["pass"]["value"] == 0.0  # a body of `pass` solves nothing
    assert set(saved["detectable_difference"]) == tasks
    lines = (out / "answers" / "experts" / "review.jsonl").read_text().splitlines()
    review = load_items("review", "test", 4)
    assert [json.loads(line)["id"] for line in lines] == [it.id for it in review]
    assert json.loads(lines[0])["reference"] == review[0].reference and "answer" in json.loads(lines[0])
    hybrid_yaml = (out / "hybrid.yaml").read_text()
    assert "option: hybrid" in hybrid_yaml and "kind: fake" in hybrid_yaml
    (twin,) = set(rec["routes"].values())  # answers of the fake engine tie: one option is recommended,
    assert by["hybrid"]["same_as"] == twin and "hybrid/fake load" not in progress.phases  # not served again
    assert by["hybrid"]["latency"] == by[twin]["latency"]
    for r in saved["results"]:  # answers were asked shortest prompt first but are kept in item order
        scored = json.loads(Path(r["answers_file"]).read_text())["answers"]
        assert {t: [a["id"] for a in v] for t, v in scored.items()} == {
            t: [it.id for it in load_items(t, "test", 2 if t == "humaneval" else 4)] for t in scored}
    md = (out / "report.md").read_text()
    assert "## Recommendation" in md and "| experts | fake " in md and "| base | fake " in md
    assert "Gain over the untuned `base`" in md and "Trivial baselines" in md and "docstring echo" in md
    assert "| generation pass@1 (HumanEval) | generation chrf_pp |" in md
    assert ("its answers are one draw" in md) == any(r["dtype"] == "bfloat16" for r in saved["results"])
    humaneval = [json.loads(ln) for ln in (out / "answers" / "experts" / "humaneval.jsonl").read_text().splitlines()]
    assert [h["id"] for h in humaneval] == [it.id for it in load_items("humaneval", "test", 2)]
    agent = by["experts"]["agent"]  # the fake engine's answers solve nothing, but every step ran over HTTP
    assert agent["problems"] == 2 and agent["solved"] == agent["first_try"] == 0 and agent["errors"] == 0
    assert agent["mean_calls"] == 3 and "generation->experts/smollm2-lora-generation" in agent["calls_per_route"]
    assert len((out / "answers" / "experts" / "agent.jsonl").read_text().splitlines()) == 2
    assert "Coding agent on HumanEval's first 2 problems" in md and "agent solved" in md
    assert "## Where the time went" in md and "| experts | fake |" in md.split("## Where the time went")[1]
    assert set(saved["zoo"]["models"]) == {"smollm2-135m"} and saved["zoo"]["models"]["smollm2-135m"]["kind"] == "base"
    assert saved["experts_option"] == "experts" and set(saved["retention"]) == {"merged", "mixed"}
    experts = json.loads(Path(by["experts"]["answers_file"]).read_text())["answers"]
    assert {a["route"]["adapter"] for a in experts["humaneval"]} == {"smollm2-lora-generation"}  # generation's route
    for chart in ("accuracy_vs_throughput.png", "accuracy_per_task.png", "latency.png"):
        assert (out / chart).stat().st_size > 1000 and f"]({chart})" in md
    assert report.wall_s > 0 and saved == report.model_dump(mode="json")  # report.json is the model dumped

    # a second run reuses every measured phase: no server is started
    again = Recorder()
    cached = run_bench(cfg, out, again)
    assert not [p for p in again.phases if p.endswith(("load", "accuracy"))]
    assert all(r.cached for r in cached.results if not r.same_as)  # the breakdown says which phases were read
    assert all(r.score_wall_s is not None for r in cached.results if not r.same_as)  # scored again this run
    assert "cached (measured before)" in (out / "report.md").read_text()
    assert sum("measured before" in s for s in again.said) == 4

    # a phase measured one option on one engine: a run of fewer options under another budget reuses it
    narrower = Recorder()
    budget = cfg.budget.model_copy(update={"memory_mb": 50000})
    run_bench(cfg.model_copy(update={"deployments": ["experts"], "budget": budget}), out, narrower)
    assert not [p for p in narrower.phases if p.endswith(("load", "accuracy"))]

    # answers are cached by content: a fresh measurement does not score the same models again
    fresh = Recorder()
    Bench(cfg, out, fresh, fresh=True).measure("experts", "fake", None)
    assert not [p for p in fresh.phases if p.endswith("accuracy")] and fresh.phases[-1].endswith("load")

    # a measured phase whose scored answers are gone is measured again, not read with a dangling path
    shutil.rmtree(ModelStore().home / "cache" / "bench-accuracy")
    cfg_one = cfg.model_copy(update={"deployments": ["merged"]})
    lost = Recorder()
    run_bench(cfg_one, out, lost)
    assert "merged/fake accuracy" in lost.phases


def test_a_per_task_plan_is_served_and_measured_as_its_own_option(tiny_zoo, tmp_path, monkeypatch):
    import runtime.bench.run as bench_run

    def mixed_plan(*args, **kwargs):  # the real recommendation, then made per-task
        rec = recommend(*args, **kwargs)
        return rec.model_copy(update={"routes": {"generation": "experts", "summarization": "mixed",
                                                 "completion": "experts", "review": "mixed"}})

    monkeypatch.setattr(bench_run, "recommend", mixed_plan)
    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, [
        "zoo.train=[]", "zoo.merge_sweep=null", "zoo.adapter_merge=null", "engines=[fake]",
        "deployments=[experts, mixed, hybrid]", "accuracy.n=2", "accuracy.humaneval_n=0", "agent.n=0",
        "accuracy.bootstrap=100",
        "load.requests={1: 2}", "load.concurrency=[1]", "load.rate=null", "budget.memory_mb=100000"])
    progress = Recorder()
    report = run_bench(cfg, tmp_path / "bench", progress)
    hybrid = next(r for r in report.results if r.deployment == "hybrid")
    assert hybrid.same_as is None and "hybrid/fake load" in progress.phases
    answers = json.loads(Path(hybrid.answers_file).read_text())["answers"]
    assert [a["route"]["adapter"] for a in answers["review"]] == ["smollm2-lora-mix"] * 2
    # every task goes to weights that experts or mixed already answered it with: taken, not asked again
    assert hybrid.shared_answers == 8 and hybrid.resumed_answers is None
    by = {r.deployment: json.loads(Path(r.answers_file).read_text())["answers"] for r in report.results}
    for task, option in {"generation": "experts", "summarization": "mixed", "completion": "experts",
                         "review": "mixed"}.items():
        assert answers[task] == by[option][task]
    assert "8 of 8 answers shared" in " ".join(progress.said)
    assert "Deploy **hybrid** with generation → `experts`" in (tmp_path / "bench" / "report.md").read_text()


def test_a_task_cache_file_that_is_not_one_is_not_read(tmp_path):
    from runtime.bench.answers import task_answers
    from runtime.bench.results import TaskAnswers

    good = TaskAnswers(task="review", option="mixed", engine="hf",
                       answers=[{"id": "review/a", "answer": "no issues", "route": {"adapter": "x"}}])
    (tmp_path / "good.json").write_text(good.model_dump_json())
    assert task_answers(tmp_path / "good.json").answers[0].model_dump()["route"] == {"adapter": "x"}
    for i, text in enumerate(['{"task": "review", "option": "m", "engine": "hf", "answers": [{"answer": "x"}]}',
                              '[1, 2]', '{"task": "review", "answers": [', '']):
        (tmp_path / f"bad{i}.json").write_text(text)
        assert task_answers(tmp_path / f"bad{i}.json") is None  # no id / not an object / torn / empty
    assert task_answers(tmp_path / "missing.json") is None


def test_an_option_is_scored_on_the_engine_named_for_it(tiny_zoo, tmp_path):
    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, [
        "zoo.train=[]", "zoo.merge_sweep=null", "zoo.adapter_merge=null", "engines=[fake, hf]",
        "deployments=[mixed]", "accuracy.n=2", "accuracy.humaneval_n=0", "agent.n=0",
        "accuracy.agreement_n=1", "accuracy.engine=fake",
        "accuracy.engine_for={mixed: hf}", "load.requests={1: 1}", "load.concurrency=[1]", "load.rate=null",
        "load.warmup=0", "load.max_tokens=2"])
    report = run_bench(cfg, tmp_path / "bench", Recorder())
    rows = {r.engine: r for r in report.results}
    assert rows["hf"].accuracy_engine == "hf" and rows["hf"].agreement is None
    assert rows["fake"].agreement.n == 4  # one item per task, answered by the other engine


def test_a_phase_of_folded_weights_is_keyed_apart_from_the_same_models_as_adapters(tiny_zoo, tmp_path, monkeypatch):
    """A hybrid routes to deployments by name: folding the mix it routes to (fold: true) leaves the hybrid's file
    and its models as they were, yet other weights serve on another engine: the phase is not the same."""
    import runtime.bench.run as bench_run

    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, ["engines=[fake]"])
    bench = Bench(cfg, tmp_path / "bench", Recorder())
    path, lora_plan = bench.plan("mixed")
    real = bench_run.Bench.deployment

    def folded(self, option):
        path, deployment = real(self, option)
        return path, deployment.model_copy(update={"fold": True})

    monkeypatch.setattr(bench_run.Bench, "deployment", folded)
    same_path, folded_plan = bench.plan("mixed")
    assert same_path == path and models_key(folded_plan) == models_key(lora_plan)
    keys = [bench.phase_key("mixed", "fake", plan, path, "scores") for plan in (lora_plan, folded_plan)]
    assert keys[0] != keys[1]
    assert bench.phase_key("mixed", "fake", lora_plan, path, "scores") == keys[0]  # (a key is stable)


def test_an_option_that_cannot_be_served_is_reported_not_fatal(tiny_zoo, tmp_path):
    ModelStore().remove("smollm2-merged")
    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, [
        "zoo.train=[]", "zoo.merge_sweep=null", "zoo.adapter_merge=null", "engines=[fake]",
        "deployments=[merged, hybrid]", "accuracy.n=2", "accuracy.humaneval_n=0", "agent.n=0"])
    report = run_bench(cfg, tmp_path / "bench", Recorder())
    assert [r.deployment for r in report.results] == ["base", "hybrid"]  # the plan falls back to base
    assert report.results[1].same_as == "base" and [f.deployment for f in report.failures] == ["merged"]
    assert "unknown model 'smollm2-merged'" in report.failures[0].error
    assert "**Failed**: merged on fake" in (tmp_path / "bench" / "report.md").read_text()


def test_a_pair_the_config_skips_is_not_served_and_the_report_says_why(tiny_zoo, tmp_path, monkeypatch):
    from runtime.bench import environment as bench_environment

    args = ["zoo.train=[]", "zoo.merge_sweep=null", "zoo.adapter_merge=null", "engines=[fake]",
            "deployments=[mixed, experts]", "accuracy.n=2", "accuracy.humaneval_n=0", "agent.n=0",
            "accuracy.bootstrap=100", "load.requests={1: 1}",
            "load.concurrency=[1]", "load.rate=null", "load.warmup=0"]
    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig,
                      [*args, "skip={mixed/fake: too slow here, experts/fake-cpu: no GPU}"])
    monkeypatch.setattr(bench_environment, "gpu_name", lambda: "a GPU")  # -cpu keys do not apply with a GPU
    report = run_bench(cfg, tmp_path / "gpu", Recorder())
    assert [r.deployment for r in report.results] == ["base", "experts"]
    assert [s.model_dump() for s in report.skipped] == [{"deployment": "mixed", "engine": "fake",
                                                          "reason": "too slow here"}]
    assert "**Not run** (config `skip`): mixed on fake: too slow here" in (tmp_path / "gpu" / "report.md").read_text()
    monkeypatch.setattr(bench_environment, "gpu_name", lambda: None)
    report = run_bench(cfg, tmp_path / "cpu", Recorder())
    assert [r.deployment for r in report.results] == ["base"]
    assert [s.deployment for s in report.skipped] == ["mixed", "experts"]
    with pytest.raises(ConfigError, match="skip: 'mixed/gpu' is not option/engine"):
        load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, [*args, "skip={mixed/gpu: x}"])


def test_answers_are_keyed_by_the_weights_that_answer_each_task(tiny_zoo, tmp_path):
    from runtime.config import DeploymentConfig
    from runtime.deploy import build_plan

    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig,
                      ["accuracy.n=2", "accuracy.humaneval_n=0", "agent.n=0"])
    bench = Bench(cfg, tmp_path / "bench", Recorder())
    experts = bench.plan("experts")[1]
    all_experts = DeploymentConfig(name="hybrid", option="hybrid", base_model="smollm2-135m",
                                   routes=dict.fromkeys(("generation", "completion", "review", "summarization"),
                                                        "experts"))
    one_mixed = all_experts.model_copy(update={"routes": all_experts.routes | {"review": "mixed"}})

    def plan(deployment):
        return build_plan(deployment, ModelStore())

    def files(p, engine="hf"):
        return bench.answer_cache.files(p, engine, None)

    assert files(plan(all_experts)) == files(experts)
    assert files(plan(one_mixed)).answers != files(experts).answers
    # a task routed to the same weights shares its answers; the one routed elsewhere does not
    assert {t: p == files(experts).tasks[t] for t, p in files(plan(one_mixed)).tasks.items()} == {
        "generation": True, "completion": True, "summarization": True, "review": False}
    # what computes the answers is in the key too: another engine's greedy answers can differ in the last bit
    assert files(experts, "vllm").answers != files(experts).answers
    # an engine checked against the scorer's answers reads the scorer's file and shares no task's
    checked = bench.answer_cache.files(experts, "vllm", "hf")
    assert checked.answers == files(experts).answers and checked.tasks == {}


def test_the_load_asks_for_fixed_length_answers_and_counts_short_ones():
    import asyncio

    from serving_fakes import Upstream

    from runtime.bench.load import RequestSpec, run_load

    messages = [{"role": "user", "content": "x"}]
    with Upstream() as server:
        fixed = asyncio.run(run_load(f"{server.url}/v1", [RequestSpec("merged", messages, 5)] * 2, concurrency=2))
        natural = asyncio.run(run_load(f"{server.url}/v1", [RequestSpec("merged", messages, 5, False)], concurrency=1))
        calls = [c.params for c in server.engines["/models/merged"].calls]
    assert [(p.ignore_eos, p.min_tokens) for p in calls] == [(True, 5), (True, 5), (False, 0)]
    assert fixed["completed"] == 2 and fixed["short_answers"] == 0 and natural["short_answers"] == 0
    short = [RequestRecord(ok=True, start=0, ttft=0.1, e2el=1.0, output_tokens=n, max_tokens=5) for n in (5, 3)]
    assert summarize(short, duration=1.0)["short_answers"] == 1


def test_the_detectable_difference_of_a_share_is_finite_when_base_scores_zero(store_home):
    from runtime.bench.compare import detectable_difference, detectable_share

    assert detectable_share(0, 29) == pytest.approx(0.213, abs=0.001)  # d = 2.8 sqrt(d (1 - d) / 29)
    assert detectable_share(24, 48) > detectable_share(0, 48) > 0
    build_dataset()
    items = {"review": load_items("review", "test", 12)}
    out = detectable_difference(items, {"review": ["nonsense"] * 12}, 100)  # base finds no bug: 0 of the buggy
    assert 20 < out["review"] < 100  # not 0: a base at 0/N does not make every difference detectable
