"""`runtime merge adapters`: one LoRA adapter from several with PEFT ``add_weighted_adapter``.

The result serves the `merged-adapter` deployment: the base model plus a single adapter for every task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from merge.config import AdapterMergeConfig
from runtime.artifacts import Manifest
from runtime.errors import ModelStoreError
from runtime.models import ModelEntry, ModelStore

log = logging.getLogger(__name__)
Step = Callable[[str], None]


class AdapterMergeRecord(BaseModel):
    """What an adapter merge adds to its manifest."""

    method: str  # PEFT's combination_type
    tasks: list[str]  # every task its inputs were trained on
    inputs: list[dict[str, Any]]  # each adapter's name and weight


def merge_adapters(config: AdapterMergeConfig, store: ModelStore, step: Step = log.info) -> ModelEntry:
    """One LoRA adapter from several; a finished artifact of the same name and recipe is reused."""
    base = store.get(config.base_model)
    with store.build(config.name, "adapter", source="runtime merge adapters", parent=base.name,
                     config=config, inputs=config.recipe_inputs) as build:
        if build.reused:
            step(f"{config.name} already exists at {build.path}; `runtime models remove {config.name}` to redo it")
            return build.entry
        entries = [store.get(a.adapter) for a in config.adapters]
        not_lora = [e.name for e in entries if e.format != "lora"]
        if not_lora:
            raise ModelStoreError(f"not LoRA adapters: {', '.join(not_lora)}", fix="list LoRA experts under adapters")
        combine(config, base, entries, build.tmp, step)
        build.record(AdapterMergeRecord(
            method=config.combination, tasks=sorted({t for e in entries for t in _tasks(e)}),
            inputs=[{"adapter": a.adapter, "weight": a.weight} for a in config.adapters]))
    step(f"saved {config.name} to {build.path}")
    return build.entry


def combine(config: AdapterMergeConfig, base: ModelEntry, entries: list[ModelEntry], out: Path, step: Step) -> None:
    """Load the adapters on the base model, combine them with PEFT and save the result (only) to ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    names = [f"a{i}" for i in range(len(entries))]
    model = PeftModel.from_pretrained(model, entries[0].path, adapter_name=names[0])
    for name, entry in zip(names[1:], entries[1:], strict=True):
        model.load_adapter(str(entry.path), adapter_name=name)
    if config.combination == "cat":
        _check_cat_is_exact(model, names)
    step(f"combining {len(entries)} adapters with {config.combination}")
    try:
        model.add_weighted_adapter(names, [a.weight for a in config.adapters], "merged",
                                   combination_type=config.combination, svd_rank=config.svd_rank,
                                   density=config.density, majority_sign_method=config.majority_sign_method)
    except ValueError as e:  # e.g. 'linear' needs adapters of one rank
        raise ModelStoreError(f"PEFT could not combine the adapters: {e}", fix="try combination: cat or svd") from e
    model.set_adapter("merged")
    for name in names:
        model.delete_adapter(name)
    model.save_pretrained(out, selected_adapters=["merged"], safe_serialization=True)
    nested = out / "merged"  # PEFT saves a non-default adapter in a subfolder; keep the usual layout
    if nested.is_dir():
        for f in nested.iterdir():
            f.rename(out / f.name)
        nested.rmdir()
    AutoTokenizer.from_pretrained(base.path).save_pretrained(out)


def _check_cat_is_exact(model, names: list[str]) -> None:
    """cat's delta is the weighted sum of the inputs' deltas only for plain LoRA: PEFT gives the stacked adapter
    lora_alpha = r (scaling 1) but copies the first input's rsLoRA flag (scaling would become sqrt(r)) and has no
    rule for DoRA's magnitudes."""
    odd = [n for n in names if model.peft_config[n].use_rslora or model.peft_config[n].use_dora]
    if odd:
        raise ModelStoreError(f"cat would not add the adapters' deltas exactly: {len(odd)} of them use rsLoRA or "
                              "DoRA", fix="use combination: svd, or adapters trained without use_rslora/use_dora")


def _tasks(entry: ModelEntry) -> list[str]:
    try:
        return list(Manifest.load(entry.path).extras.get("tasks", []))
    except ModelStoreError:  # a registered adapter without a manifest of ours
        return []
