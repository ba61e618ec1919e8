"""`runtime eval` end to end on the real SmolLM2-135M, through the installed console script."""

import json
import os
import subprocess
import sys
from pathlib import Path

from runtime.models import ModelEntry


def test_runtime_eval_scores_every_task_on_smollm2(smollm2: ModelEntry, tmp_path: Path):
    runtime = Path(sys.executable).parent / "runtime"
    proc = subprocess.run([str(runtime), "eval", "--model", "smollm2-135m", "--limit", "2", "--max-tokens", "24",
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["tasks"]) == {"generation", "summarization", "completion", "review", "humaneval"}
    for task, result in report["tasks"].items():
        assert result["n"] == 2, task
        answers = [json.loads(line)["answer"] for line in (tmp_path / "predictions" / f"{task}.jsonl").open()]
        assert any(a.strip() for a in answers), f"{task}: the real model said nothing"
    assert 0 <= report["tasks"]["summarization"]["metrics"]["chrf_pp"] <= 100
    assert report["tasks"]["humaneval"]["metrics"]["sandbox"]["mode"] in ("namespaces", "process")
    assert report["tasks"]["generation"]["sampling"]["max_new_tokens"] == 24  # the cap is recorded


def test_runtime_eval_rejects_a_bad_task_in_one_line():
    runtime = Path(sys.executable).parent / "runtime"
    proc = subprocess.run([str(runtime), "eval", "--model", "smollm2-135m", "--tasks", "reveiw"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown task(s) reveiw; use a comma-separated list of: generation, summarization, completion, "
        "review, humaneval"]
