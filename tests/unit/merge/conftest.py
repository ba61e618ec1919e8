"""A tiny base and its experts: full fine-tunes (base + a seeded delta; two of them single-task experts, with the
task in their manifest) and two LoRAs with non-zero B."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from loras import make_lora

from runtime.models import ModelStore


def _perturbed(base: Path, out: Path, seed: int, scale: float = 0.02, task: str | None = None) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    for f in base.glob("tokenizer*"):
        shutil.copy(f, out / f.name)
    (out / "manifest.json").write_text(json.dumps({"name": out.name, "kind": "expert"}
                                                  | ({"tasks": [task]} if task else {})))
    return out


@pytest.fixture(scope="module")
def merge_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("experts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIXMERGE_HOME", str(home))
        store = ModelStore()
        store.register("tiny", tiny_model_dir)
        store.register("exp-a", _perturbed(tiny_model_dir, root / "exp-a", 1), "expert")
        store.register("exp-b", _perturbed(tiny_model_dir, root / "exp-b", 2), "expert")
        store.register("exp-gen", _perturbed(tiny_model_dir, root / "exp-gen", 5, task="generation"), "expert")
        store.register("exp-sum", _perturbed(tiny_model_dir, root / "exp-sum", 6, task="summarization"), "expert")
        store.register("lora-c", make_lora(tiny_model_dir, root / "lora-c", 3, parent="tiny"), "expert",
                       parent="tiny")
        store.register("lora-d", make_lora(tiny_model_dir, root / "lora-d", 4, parent="tiny"), "expert",
                       parent="tiny")
        yield home
