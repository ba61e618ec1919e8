"""`runtime merge adapters`: one LoRA adapter from several with PEFT ``add_weighted_adapter``.

The result serves the `merged-adapter` deployment: the base model plus a single adapter for every task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from runtime.bench.memory import peak_rss_mb
from runtime.config import AdapterMergeConfig, as_plain
from runtime.errors import ModelStoreError
from runtime.models import MANIFEST, ModelEntry, ModelStore, atomic_dir, write_manifest

log = logging.getLogger(__name__)


def merge_adapters(config: AdapterMergeConfig, step: Callable[[str], None] = log.info) -> ModelEntry:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = ModelStore()
    out = store.models_dir / config.name
    if (out / MANIFEST).is_file():
        step(f"{config.name} already exists at {out}; `runtime models remove {config.name}` to redo it")
        return store.get(config.name)
    base = store.get(config.base_model)
    entries = [store.get(a.adapter) for a in config.adapters]
    not_lora = [e.name for e in entries if e.format != "lora"]
    if not_lora:
        raise ModelStoreError(f"not LoRA adapters: {', '.join(not_lora)}", fix="list LoRA experts under adapters")
    start = time.time()
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
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, selected_adapters=["merged"], safe_serialization=True)
        nested = tmp / "merged"  # PEFT saves a non-default adapter in a subfolder; keep the usual layout
        if nested.is_dir():
            for f in nested.iterdir():
                f.rename(tmp / f.name)
            nested.rmdir()
        AutoTokenizer.from_pretrained(base.path).save_pretrained(tmp)
        write_manifest(tmp, name=config.name, kind="adapter", format="lora", parent=base.name,
                       source="runtime merge adapters", method=config.combination,
                       tasks=sorted({t for e in entries for t in _tasks(e)}),
                       inputs=[{"adapter": a.adapter, "weight": a.weight} for a in config.adapters],
                       config=as_plain(config), wall_s=round(time.time() - start, 2),
                       peak_rss_mb=peak_rss_mb())
    step(f"saved {config.name} to {out}")
    return store.get(config.name)


def _check_cat_is_exact(model, names: list[str]) -> None:
    """cat's delta is the weighted sum of the inputs' deltas only for plain LoRA: PEFT gives the stacked adapter
    lora_alpha = r (scaling 1) but copies the first input's rsLoRA flag (scaling would become sqrt(r)) and has no
    rule for DoRA's magnitudes."""
    odd = [n for n in names if model.peft_config[n].use_rslora or model.peft_config[n].use_dora]
    if odd:
        raise ModelStoreError(f"cat would not add the adapters' deltas exactly: {len(odd)} of them use rsLoRA or "
                              "DoRA", fix="use combination: svd, or adapters trained without use_rslora/use_dora")


def _tasks(entry: ModelEntry) -> list[str]:
    import json

    try:
        return list(json.loads((entry.path / MANIFEST).read_text()).get("tasks", []))
    except (OSError, ValueError):
        return []
