"""`runtime merge --config configs/merge/NAME.yaml`: fold LoRA experts, run mergekit, save one artifact.

Merging goes through mergekit's Python API (``run_merge``); LoRA experts are first folded into full task models
(``merge_and_unload``) and cached under $MIXMERGE_HOME/cache/folded, keyed by the adapter's contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from merge.config import MergeConfig
from runtime.artifacts import MANIFEST, Build
from runtime.errors import ModelStoreError
from runtime.models import ModelEntry, ModelStore

log = logging.getLogger(__name__)
Step = Callable[[str], None]


def adapter_key(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if (path / name).is_file():
            h.update((path / name).read_bytes())
    return h.hexdigest()[:12]


def fold_lora(entry: ModelEntry, base_name: str, store: ModelStore, step: Step = log.info,
              dtype: str | None = None) -> Path:
    """The LoRA expert as a full model directory (base + B A scaling folded in, in float32), built once and
    cached. ``dtype``: saved in it (a served fold: the engine's dtype, rounded once, as the engine would on
    loading; in bf16 half the disk, and no float32 file read and converted at every start); None keeps float32
    (mergekit's inputs: task vectors not rounded before they are merged)."""
    dtype = None if dtype == "float32" else dtype  # the float32 fold is the one merges read
    name = "-".join([entry.name, adapter_key(entry.path), *([dtype] if dtype else [])])
    target = store.home / "cache" / "folded" / name
    if (target / "config.json").is_file() and not (target / MANIFEST).is_file():
        return target  # folded before folds had manifests
    base = store.get(entry.parent or base_name)
    kind = "merged" if entry.kind == "adapter" else entry.kind
    with store.build(target.name, kind, source="fold_lora", parent=base.name, path=target) as build:  # type: ignore[arg-type]
        if not build.reused:
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

            step(f"folding LoRA {entry.name} into {base.name}" + (f" ({dtype})" if dtype else ""))
            model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
            folded = PeftModel.from_pretrained(model, entry.path).merge_and_unload()
            if dtype:
                folded = folded.to(getattr(torch, dtype))
            folded.save_pretrained(build.tmp, safe_serialization=True)
            AutoTokenizer.from_pretrained(base.path).save_pretrained(build.tmp)
            build.record(adapter={"name": entry.name, "path": str(entry.path), "key": adapter_key(entry.path)},
                         **({"dtype": dtype} if dtype else {}))
    return target


def input_path(name: str, base_name: str, store: ModelStore, step: Step = log.info) -> Path:
    entry = store.get(name)
    return fold_lora(entry, base_name, store, step) if entry.format == "lora" else entry.path


@contextlib.contextmanager
def topk_trimming():
    """mergekit's magnitude trimming (TIES, breadcrumbs' lower cut) argsorts every whole tensor to keep its top
    ``density`` share: 32 of the 43 s a TIES merge of four 135M experts took on 2 cores. ``torch.topk`` with
    ``sorted=False`` picks the same entries about 5x faster on a CPU (a tie at the cut is broken arbitrarily by
    either; a test checks equality with mergekit's own). Swapped in for CPU tensors, only while we merge."""
    import mergekit.sparsify as sparsify
    import torch

    original = sparsify.magnitude

    def magnitude(tensor: torch.Tensor, density: float, rescale_norm=None) -> torch.Tensor:
        if tensor.device.type != "cpu" or not 0 < density < 1 or tensor.numel() == 0:
            return original(tensor, density, rescale_norm)
        k = max(1, int(density * tensor.numel()))
        mask = torch.zeros(tensor.numel(), dtype=tensor.dtype)
        mask[torch.topk(tensor.abs().reshape(-1).float(), k, sorted=False).indices] = 1
        return sparsify.rescaled_masked_tensor(tensor, mask.reshape_as(tensor), rescale_norm)

    sparsify.magnitude = magnitude
    try:
        yield
    finally:
        sparsify.magnitude = original


class MergeRecord(BaseModel):
    """What a mergekit merge adds to its manifest (the sweep copies it to the merge it keeps)."""

    method: str
    seed: int
    inputs: list[dict[str, Any]]  # each input's name, the path merged (a LoRA's folded copy) and its parameters
    parameters: dict[str, Any]
    mergekit: dict[str, Any]  # the plan handed to mergekit


def merge(config: MergeConfig, store: ModelStore, step: Step = log.info) -> ModelEntry:
    """Run one merge; a finished artifact of the same name and recipe (config, inputs) is reused."""
    base = store.get(config.base_model)
    out = Path(config.output_dir).expanduser() if config.output_dir else None
    with store.build(config.name, "merged", source="runtime merge", parent=base.name, config=config,
                     path=out, inputs=config.recipe_inputs) as build:
        if build.reused:
            step(f"{config.name} is already merged at {build.path}; `runtime models remove {config.name}` to redo it")
            return build.entry
        run_mergekit(config, base, build, store, step)
    step(f"saved {config.name} to {build.path}")
    return build.entry


def run_mergekit(config: MergeConfig, base: ModelEntry, build: Build, store: ModelStore, step: Step) -> None:
    """Merge into ``build.tmp`` with mergekit (LoRA inputs folded first), with the base model's tokenizer."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from merge.plans import to_mergekit

    inputs = [(input_path(m.model, base.name, store, step), m.parameters) for m in config.models]
    plan = to_mergekit(config.method, base.path, inputs, config.parameters, config.dtype,
                       out_dtype=config.out_dtype)
    step(f"merging {len(inputs)} models with {config.method}")
    with topk_trimming():
        try:
            run_merge(plan, str(build.tmp), MergeOptions(random_seed=config.seed, copy_tokenizer=True, quiet=True,
                                                         write_model_card=False))
        except (RuntimeError, ValueError, TypeError) as e:
            raise ModelStoreError(f"mergekit failed for {config.name}: {e}", fix="check the merge config") from e
    if not (build.tmp / "tokenizer_config.json").is_file():
        for f in base.path.glob("*"):
            if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy(f, build.tmp / f.name)
    build.record(MergeRecord(
        method=config.method, seed=config.seed, parameters=config.parameters, mergekit=plan.model_dump(mode="json"),
        inputs=[{"model": m.model, "path": str(p), **m.parameters}
                for m, (p, _) in zip(config.models, inputs, strict=True)]))
