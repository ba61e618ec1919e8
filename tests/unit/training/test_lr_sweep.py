"""The learning-rate sweep on the tiny model: val loss per rate and step, the choice, nothing left in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.models import ModelStore
from training.lr_sweep import choose, main


def test_the_sweep_records_val_loss_per_rate_and_step_and_leaves_no_artifact(tmp_path: Path, tiny_model_dir: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MIXMERGE_HOME", str(tmp_path / "home"))
    ModelStore().register("tiny", tiny_model_dir)
    config = tmp_path / "train" / "e.yaml"
    config.parent.mkdir()
    config.write_text(json.dumps({
        "name": "e", "kind": "expert", "base_model": "tiny", "tasks": ["completion"], "precision": "fp32",
        "data": {"max_length": 768, "max_val_items": 4},
        "training": {"per_device_train_batch_size": 2, "warmup_steps": 0, "logging_steps": 1}}))
    out = tmp_path / "sweep.json"
    main(["--config", str(config), "--lrs", "1e-5,3e-3", "--max-steps", "4", "--eval-steps", "2", "--out", str(out)])
    record = json.loads(out.read_text())
    assert [t["learning_rate"] for t in record["trials"]] == [1e-5, 3e-3]
    for trial in record["trials"]:
        assert [s for s, _ in trial["val"]] == [0, 2, 4]  # at the start and every 2 steps
        assert trial["budget"]["rows"] == 8 and trial["best_step"] in (2, 4)
    assert record["chosen"] == choose(record["trials"])
    assert record["chosen"]["learning_rate"] == 3e-3  # 1e-5 barely moves in 4 steps
    assert [e.name for e in ModelStore().list()] == ["tiny"]


def test_choose_takes_the_lowest_val_loss_and_its_step():
    trials = [{"learning_rate": 1e-4, "best_step": 20, "best_val_loss": 1.2},
              {"learning_rate": 1e-3, "best_step": 10, "best_val_loss": 0.9}]
    assert choose(trials) == {"learning_rate": 1e-3, "steps": 10, "val_loss": 0.9}
