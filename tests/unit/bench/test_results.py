"""The bench's typed results: report.json is ``Report`` dumped, files written before the models still load, and a
field of the wrong type is refused with the file and the field named."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.bench.report import markdown, write_report
from runtime.bench.results import AnswersFile, PhaseFile, PhaseResult, Report, read_record
from runtime.bench.run import Bench
from runtime.errors import ConfigError

COMMITTED = Path(__file__).parents[3] / "benchmarks/results/2026-11-26-smollm2-135m-cpu/bench/report.json"

LEVEL = {"completed": 2, "failed": 0, "duration_s": 1.5, "empty_answers": 0, "short_answers": 0,
         "total_output_tokens": 32, "request_throughput": 1.3, "output_throughput": 21.0, "errors": [],
         **{f"{s}_{m}_ms": 40.0 for s in ("mean", "median", "p90", "p99") for m in ("ttft", "tpot", "itl", "e2el")},
         "concurrency": 1, "request_rate": None}
# a phase file as the bench wrote it before the models (no accuracy, no agent, no agreement)
OLD_PHASE = {"key": "k1", "result": {
    "deployment": "mixed", "engine": "hf", "models": {"smollm2-135m": "6f59"}, "adapters": ["smollm2-lora-mix"],
    "dtype": "bfloat16", "cold_start_s": 4.71, "accuracy_wall_s": 15.6, "latency": {"1": LEVEL},
    "adapter_load_ms": 190.9, "wall_s": 34.0, "peak_rss_mb": 1223.0, "gpu_memory_mb": None,
    "answers_file": "/x/bench-accuracy/76cb.json"}}


def _contains(original, dumped, where: str = "") -> None:
    """Every field of ``original`` is in ``dumped`` with the same value (added fields are allowed)."""
    if isinstance(original, dict):
        for k, v in original.items():
            assert k in dumped, f"{where}/{k} was dropped"
            _contains(v, dumped[k], f"{where}/{k}")
    elif isinstance(original, list):
        assert len(original) == len(dumped), where
        for i, (a, b) in enumerate(zip(original, dumped, strict=True)):
            _contains(a, b, f"{where}[{i}]")
    else:
        assert original == dumped, f"{where}: {original!r} != {dumped!r}"


def test_a_committed_report_round_trips_through_the_model_keeping_every_field():
    original = json.loads(COMMITTED.read_text())  # written before ranked_by, gains_over_base, ci_method, ...
    report = Report.model_validate(original)
    assert report.recommendation.routes["review"] == "experts" and report.ranked_by is None
    dumped = json.loads(report.model_dump_json())
    _contains(original, dumped)
    assert Report.model_validate(dumped) == report


def test_write_report_writes_the_model_and_renders_it_as_before(tmp_path):
    original = json.loads(COMMITTED.read_text())
    report = Report.model_validate(original)
    write_report(report, tmp_path)
    saved = read_record(tmp_path / "report.json", Report)
    assert saved == report and saved.results[0].mean_accuracy is not None
    charts = ["accuracy_vs_throughput.png", "accuracy_per_task.png", "latency.png"]
    assert (tmp_path / "report.md").read_text() == markdown(original, charts)  # nulls added render as before


def test_a_phase_file_written_before_the_models_still_loads_and_keeps_unknown_fields(tmp_path):
    path = tmp_path / "mixed-hf.json"
    path.write_text(json.dumps(OLD_PHASE | {"result": OLD_PHASE["result"] | {"from_a_newer_bench": [1, 2]}}))
    phase = read_record(path, PhaseFile)
    assert phase.key == "k1" and phase.result.latency["1"].p90_e2el_ms == 40.0
    assert phase.result.accuracy is None and phase.result.agent is None
    assert json.loads(phase.model_dump_json())["result"]["from_a_newer_bench"] == [1, 2]


def test_a_field_of_the_wrong_type_is_refused_naming_the_file_and_the_field(tmp_path):
    path = tmp_path / "base-hf.json"
    path.write_text(json.dumps(OLD_PHASE | {"result": OLD_PHASE["result"] | {"peak_rss_mb": "a lot"}}))
    with pytest.raises(ConfigError, match=r"base-hf\.json.*\n.*result\.peak_rss_mb: Input should be a valid number"):
        read_record(path, PhaseFile)
    result = PhaseResult.model_validate(OLD_PHASE["result"])
    with pytest.raises(ValueError, match="cold_start_s"):
        result.cold_start_s = "soon"  # an assigned field is validated too


def test_an_unreadable_phase_cache_is_measured_again_and_said_so(tmp_path):
    said: list[str] = []
    bench = SimpleNamespace(progress=SimpleNamespace(say=said.append))
    path = tmp_path / "merged-hf.json"
    path.write_text(json.dumps({"key": "k1", "result": {"deployment": "merged"}}))
    assert Bench.cached_phase(bench, path, "k1") is None and "measuring again" in said[0]
    path.write_text(json.dumps(OLD_PHASE))
    assert Bench.cached_phase(bench, path, "another key") is None
    assert Bench.cached_phase(bench, path, "k1").deployment == "mixed"


def test_the_accuracy_cache_keeps_each_answers_extra_fields(tmp_path):
    path = tmp_path / "76cb.json"
    answer = {"id": "c-1", "answer": "x = 1", "finish_reason": "stop", "completion_tokens": 3,
              "route": {"adapter": "smollm2-lora-mix"}}
    path.write_text(json.dumps({"option": "mixed", "engine": "hf", "answers": {"completion": [answer]}}))
    assert read_record(path, AnswersFile).as_dicts() == {"completion": [answer]}


def test_the_schema_describes_the_fields():
    props = PhaseResult.model_json_schema()["properties"]
    assert "0.2 s" in props["peak_rss_mb"]["description"] and "schema_version" in Report.model_json_schema()[
        "properties"]
