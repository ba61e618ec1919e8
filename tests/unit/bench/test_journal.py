"""A bench phase stopped midway keeps what it finished: served answers and agent problems are journaled as they
arrive, and the next run asks only for the rest."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.bench.config import BenchConfig
from runtime.bench.journal import Journal
from runtime.bench.run import Progress, run_bench
from runtime.config import configs_dir, load_config


def test_a_journal_keeps_its_own_keys_lines_and_skips_a_torn_one(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", "k1")
    journal.add({"id": "a"})
    Journal(tmp_path / "j.jsonl", "k0").add({"id": "old"})  # another key's line: not ours
    journal.add({"id": "b"})
    with (tmp_path / "j.jsonl").open("a") as f:
        f.write('{"key": "k1", "record": {"id": "c"')  # killed mid-write
    assert [r["id"] for r in journal.done()] == ["a", "b"]
    journal.add({"id": "d"})  # written after the torn line, on a line of its own
    assert [r["id"] for r in journal.done()] == ["a", "b", "d"]
    journal.remove()
    assert journal.done() == [] and not (tmp_path / "j.jsonl").exists()


class Phases(Progress):
    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.said: list[str] = []

    def phase(self, name: str, total: int) -> None:
        self.totals[name] = total

    def say(self, message: str) -> None:
        self.said.append(message)


def test_a_stopped_accuracy_and_agent_phase_resume_from_their_journals(tiny_zoo, tmp_path):
    cfg = load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, [
        "zoo.train=[]", "zoo.merge_sweep=null", "zoo.adapter_merge=null", "engines=[fake]", "deployments=[experts]",
        "accuracy.n=2", "accuracy.humaneval_n=1", "agent.n=2", "agent.max_revisions=0", "accuracy.bootstrap=100",
        "load.requests={1: 2}", "load.concurrency=[1]", "load.rate=null", "load.warmup=0"])
    out = tmp_path / "bench"
    first = run_bench(cfg, out, Phases())
    experts = next(r for r in first.results if r.deployment == "experts")
    answers_file, phase_file = Path(experts.answers_file), out / "phases" / "experts-fake.json"
    answers = json.loads(answers_file.read_text())["answers"]
    key = json.loads(phase_file.read_text())["key"]
    agent_records = [json.loads(ln) for ln in (out / "answers" / "experts" / "agent.jsonl").read_text().splitlines()]

    # stop it "midway": the phase and its answers are gone, the journals hold one answer and one agent problem
    answers_file.unlink()
    # (each task's answers are still in bench-accuracy/task/, but an option does not take its own back)
    phase_file.unlink()
    answers_journal = Journal(answers_file.with_suffix(".partial.jsonl"), answers_file.stem)
    answers_journal.add({"task": "review", "engine": "fake", **answers["review"][0], "answer": "JOURNALED"})
    answers_journal.add({"task": "review", "engine": "vllm", **answers["review"][1], "answer": "OTHER ENGINE"})
    Journal(out / "phases" / "experts-fake.agent.jsonl", key).add(agent_records[0] | {"seconds": 4242.0})

    progress = Phases()
    second = run_bench(cfg, out, progress)
    assert progress.totals["experts/fake accuracy"] == 2 + 2 + 2 + 2 + 1 - 1  # every item but the journaled one
    assert progress.totals["experts/fake agent"] == 1
    assert any("1 of 9 answers kept" in s for s in progress.said)
    resumed = json.loads(answers_file.read_text())["answers"]
    assert resumed["review"][0]["answer"] == "JOURNALED"  # not asked again
    assert resumed["review"][1]["answer"] != "OTHER ENGINE"  # another engine's answer is asked again
    assert [a["id"] for a in resumed["review"]] == [a["id"] for a in answers["review"]]  # item order kept
    again = [json.loads(ln) for ln in (out / "answers" / "experts" / "agent.jsonl").read_text().splitlines()]
    assert [r["id"] for r in again] == [r["id"] for r in agent_records] and again[0]["seconds"] == 4242.0
    result = next(r for r in second.results if r.deployment == "experts")
    assert result.agent.problems == 2 and result.resumed_answers == 1 and result.resumed_agent == 1
    assert result.cached is False  # measured in this run (the first run's phase file was gone)
    assert result.git_sha == second.environment.git_sha  # the commit that measured it, kept when cached
    breakdown = (out / "report.md").read_text().split("## Where the time went")[1]
    assert "(1 resumed)" in breakdown
    assert not answers_file.with_suffix(".partial.jsonl").exists()
    assert not (out / "phases" / "experts-fake.agent.jsonl").exists()
