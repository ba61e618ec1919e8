"""Fixtures of the bench tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from loras import make_lora

from runtime.models import ModelStore
from runtime.tasks import build_dataset


@pytest.fixture()
def tiny_zoo(store_home: Path, tiny_model_dir: Path) -> ModelStore:
    """The default deployments' model names, filled with tiny models (no training needed)."""
    store = ModelStore()
    store.models_dir.mkdir(parents=True)
    base = store.models_dir / "smollm2-135m"
    shutil.copytree(tiny_model_dir, base)
    (base / "manifest.json").write_text(json.dumps({"kind": "base"}))
    for seed, name in enumerate(("generation", "summarization", "completion", "review", "mix", "merged"), 1):
        make_lora(base, store.models_dir / f"smollm2-lora-{name}", seed, parent="smollm2-135m")
    merged = store.models_dir / "smollm2-merged"
    shutil.copytree(tiny_model_dir, merged)
    (merged / "manifest.json").write_text(json.dumps({"kind": "merged"}))
    build_dataset()
    return store
