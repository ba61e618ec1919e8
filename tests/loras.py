"""Real LoRA adapters with non-zero B (so they change outputs), built in a second."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_lora(base: Path, out: Path, seed: int, parent: str | None = None, rank: int = 4, **lora) -> Path:
    """``lora``: LoraConfig settings over these (e.g. ``use_dora=True``, ``modules_to_save=[...]``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(**{"r": rank, "lora_alpha": 4 * rank, "target_modules": "all-linear",
                                         "init_lora_weights": False, **lora}))
    model.save_pretrained(out)
    if parent:
        (out / "manifest.json").write_text(json.dumps({"kind": "expert", "parent": parent}))
    return out
