"""Supervised fine-tuning recipe: `runtime train --config configs/train/NAME.yaml [key=value ...]`.

Setup (base model, LoRA or full, task rows with the prompt masked, the data mix), train on the Hugging Face
Trainer (val loss on the val split for the curve, resume from the last checkpoint), keep the last step's weights,
save one artifact directory atomically with its manifest. Checkpoints live in $MIXMERGE_HOME/runs/NAME until the
artifact is saved, so an interrupted run resumes where it stopped and never leaves a directory that looks finished.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from runtime.artifacts import Build
from runtime.config import TasksConfig, configs_dir, load_config
from runtime.errors import ConfigError
from runtime.hardware import bf16_supported, gpu_present
from runtime.models import ModelEntry, ModelStore
from runtime.tasks import VIEW, load_card, load_items
from runtime.tasks.prompts import messages_for
from training.budget import budget, items_per_step, task_rows
from training.config import TrainConfig
from training.examples import IGNORE, BuildStats, PadCollator, Row, build_row, pack
from training.mixing import mix

__all__ = ["TrainingRecord", "train"]
log = logging.getLogger(__name__)
Step = Callable[[str], None]
Rewrite = Callable[[list], dict[str, str]]  # task items -> {item id: target}: training/distill.py's Distiller


class TrainingRecord(BaseModel):
    """What a training run adds to its manifest (``training.lr_sweep`` and the budget check read it back)."""

    base_model: dict[str, str]  # name and path
    tasks: list[str]
    method: str
    precision: str
    data_card: str  # the task data's content hash
    mixture: dict[str, Any]  # what build_rows realised: rows, tokens, budget, every item dropped, cut or cropped
    steps: int
    resumed_from: str | None
    best_checkpoint_step: int | None  # the lowest val loss (recorded; kept only with load_best_model_at_end)
    weights_step: int | None = None  # the step whose weights were saved (None in manifests before 461913a)
    loss_curve: dict[str, list[tuple[int, float]]]  # train and val: (step, loss)
    val_loss_before: float | None
    val_loss_after: float


# ------------------------------------------------------------------------------------------------ setup
def build_rows(config: TrainConfig, tokenizer, tasks: TasksConfig, rewrite: Rewrite | None = None,
               ) -> tuple[list[Row], list[Row], dict]:
    """Training rows from the data mix, validation rows from each task's val split, and what was realised: per
    task the rows, tokens, and every item dropped (prompt too long; replaced by the next draw), cut (response
    past max_length) or cropped (tasks.views), so that nothing leaves the budget unrecorded. The tasks of
    ``data.self_distill`` train on ``rewrite``'s targets for the items they use (training/distill.py)."""
    train_items = {t: load_items(t, "train") for t in config.tasks}
    max_steps = int(config.training.get("max_steps", -1))
    batch = items_per_step(config)
    total = config.mixing.total or (max_steps * batch if max_steps > 0 else None)
    mixture = mix({t: len(v) for t, v in train_items.items()}, config.mixing.strategy, total, config.seed,
                  dict(config.mixing.weights), config.mixing.temperature)
    build = partial(_row, tokenizer, tasks, config.data.max_length)
    distilled: dict[str, dict[str, int]] = {}
    splits = [(task, "train", train_items[task], partial(mixture.draws, task), count)
              for task, count in mixture.counts.items()]
    for task in config.tasks:  # the first max_val_items usable val items: a fixed sample, none lost
        items = load_items(task, "val")
        splits.append((task, "val", items, partial(iter, range(len(items))), config.data.max_val_items))
    targets = _rewrites(config, build, rewrite, splits, distilled)
    rows: list[Row] = []
    val: list[Row] = []
    train_record, val_record = {}, {}
    for task, split, items, draws, count in splits:
        built, record = task_rows(items, draws(), count, partial(build, targets=targets))
        (rows if split == "train" else val).extend(built)
        (train_record if split == "train" else val_record)[task] = record
    random.Random(config.seed).shuffle(rows)  # the sampler shuffles too; packing below sees tasks interleaved
    epochs = float(config.training.get("num_train_epochs", 3.0))  # TrainingArguments' default
    steps = max_steps if max_steps > 0 else math.ceil(len(rows) / batch * epochs)
    if config.data.packing:
        rows = pack(rows, config.data.max_length)
    if not rows or not val:
        raise ConfigError(config.name, [f"no examples fit data.max_length={config.data.max_length}; raise it"])
    realised = {"strategy": config.mixing.strategy, "target_shares": mixture.shares, "items": mixture.counts,
                "train_rows": len(rows), "val_rows": len(val), "views": VIEW,
                "train_tokens": sum(len(r.input_ids) for r in rows),
                "response_tokens": sum(sum(1 for x in r.labels if x != IGNORE) for r in rows),
                "budget": budget(train_record, steps, batch),
                "val": {t: asdict(r) for t, r in val_record.items()}}
    if distilled:
        realised["self_distilled"] = distilled  # per task/split: targets rewritten, and references kept
    return rows, val, realised


def _row(tokenizer, tasks: TasksConfig, max_length: int, item, stats: BuildStats,
         targets: Mapping[str, str] = MappingProxyType({})) -> Row | None:
    return build_row(tokenizer, messages_for(tasks, item.task, item), targets.get(item.id, item.reference),
                     max_length, stats)


def _rewrites(config: TrainConfig, build: Callable[..., Row | None], rewrite: Rewrite | None, splits: list,
              distilled: dict[str, dict[str, int]]) -> dict[str, str]:
    """The targets of the ``data.self_distill`` tasks' rows (item id -> rewrite), every split's asked of ``rewrite``
    in one call: the engine then waits once a task for the last long answers, not once a split (Qwen 0.5B's
    generation rewrites: 298 s for the 80 train ones, then 61 s for the 16 val ones; 342 s for the 96 at once, the
    same rewrites). Records each split's counts in ``distilled``."""
    used: dict[tuple[str, str], list] = {}
    for task, split, items, draws, count in splits:
        if task in config.data.self_distill:
            if rewrite is None:
                raise ConfigError(config.name, ["data.self_distill needs the base model's rewrites (runtime train)"])
            # which items the rows use depends on prompt lengths only: a dry pass finds them
            task_rows(items, draws(), count, partial(_probe, build, used.setdefault((task, split), [])))
    if not used:
        return {}
    targets = rewrite([item for items in used.values() for item in items])
    for (task, split), items in used.items():
        rewritten = sum(it.id in targets for it in items)  # per row (an item may be drawn twice)
        distilled[f"{task}/{split}"] = {"rewritten": rewritten, "kept_reference": len(items) - rewritten} | (
            {"cache": rewrite.key_hash(task)} if hasattr(rewrite, "key_hash") else {})
    return targets


def _probe(build: Callable[..., Row | None], used: list, item, stats: BuildStats) -> Row | None:
    """``build``, noting each item it made a row of."""
    row = build(item, stats)
    if row is not None:
        used.append(item)
    return row


class RowDataset:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.rows[i].input_ids, "labels": self.rows[i].labels}


def build_model(config: TrainConfig, base: ModelEntry):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    if config.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def build_args(config: TrainConfig, work: Path, bf16: bool):
    from transformers import TrainingArguments

    defaults = dict(
        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=2e-4, lr_scheduler_type="cosine",
        warmup_steps=0.03, logging_steps=5, eval_strategy="steps", eval_steps=20, save_strategy="steps",
        # the last step's weights are kept: the steps are the recipe (a mix matches its experts' steps), and val
        # loss on a few items is a poor judge of a checkpoint: on 16 items it picked step 40 of 60 for Qwen's
        # seed-1 review expert (0.345 vs 0.360), whose answers then named "negation" for all 96 test items (line
        # accuracy 4.5 against 28.8 for seed 0 at step 60). The lowest-loss step is still recorded.
        eval_on_start=True, load_best_model_at_end=False, metric_for_best_model="eval_loss", greater_is_better=False,
        save_total_limit=2, report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        # batches of similar lengths: rows padded to the longest in a random batch of 4 cost 1.37x the real
        # tokens on the embedded tasks; grouped, a step costs about what its tokens do
        train_sampling_strategy="group_by_length",
    )
    merged = defaults | dict(config.training)
    merged.setdefault("save_steps", merged["eval_steps"])  # best-checkpoint tracking needs them aligned
    try:
        return TrainingArguments(output_dir=str(work), seed=config.seed, bf16=bf16,
                                 use_cpu=not gpu_present(), **merged)
    except (ValueError, TypeError) as e:
        raise ConfigError(config.name, [f"training: {e}"]) from e


# ------------------------------------------------------------------------------------------------ train
def train(config: TrainConfig, store: ModelStore, step: Step = log.info, callbacks: list | None = None) -> ModelEntry:
    """Run one training config; a finished artifact of the same name and recipe is reused, not retrained
    (another recipe under that name is refused: runtime/artifacts.py)."""
    out = Path(config.output_dir).expanduser() if config.output_dir else None
    base = store.get(config.base_model)
    work = store.home / "runs" / config.name
    with store.build(config.name, config.kind, source="runtime train", parent=base.name, config=config,
                     path=out, inputs=config.recipe_inputs) as build:
        if build.reused:
            step(f"{config.name} is already trained at {build.path}; `runtime models remove {config.name}` to "
                 "retrain")
            if note := best_not_last(build.manifest):
                step(note)
            return build.entry
        fit(config, base, build, work, step, callbacks)
    shutil.rmtree(work, ignore_errors=True)
    step(f"saved {config.name} to {build.path}")
    return build.entry


def best_not_last(manifest) -> str | None:
    """A warning for an artifact trained when the best-val-loss checkpoint was kept, where that was not its last
    step: its recipe reads the same, but today's training would keep other weights."""
    extra = manifest.model_extra or {}
    best, steps = extra.get("best_checkpoint_step"), extra.get("steps")
    if extra.get("weights_step") is not None or best is None or best == steps:
        return None
    return (f"warning: {manifest.name} holds step {best}'s weights (its lowest val loss), not its last step "
            f"{steps}'s, which training keeps now: `runtime models remove {manifest.name}` and train it again")


def fit(config: TrainConfig, base: ModelEntry, build: Build, work: Path, step: Step, callbacks: list | None) -> None:
    """Train on the Trainer (checkpoints in ``work``; resumed from the last one), save the last step's weights
    (the best checkpoint's where ``training.load_best_model_at_end`` asks) and the tokenizer into ``build.tmp``
    and record the run."""
    from transformers import AutoTokenizer, Trainer
    from transformers.trainer_utils import get_last_checkpoint

    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    step("building training rows")
    rewrite = None
    if config.data.self_distill:
        from training.distill import Distiller

        rewrite = Distiller(base, tasks, build.store.home, load_card()["content_hash"], step)
    try:
        rows, val, realised = build_rows(config, tokenizer, tasks, rewrite)
    finally:
        if rewrite is not None:
            rewrite.close()  # its model and engine threads, before training loads its own
    if rewrite is not None:
        rewrite.save(build.tmp / "self_distilled.jsonl")
    bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_supported())
    # val rows by length, so a batch of 8 is padded little (Qwen's generation val: 53.7 s an evaluation of 16 rows
    # against 56.0 unsorted; ~40% of it is the vocabulary head and the float32 loss over the response positions)
    trainer = Trainer(model=build_model(config, base), args=build_args(config, work, bf16),
                      train_dataset=RowDataset(rows),
                      eval_dataset=RowDataset(sorted(val, key=lambda r: len(r.input_ids))),
                      data_collator=PadCollator(tokenizer.pad_token_id, response_logits=True), callbacks=callbacks)
    last = get_last_checkpoint(str(work)) if work.is_dir() else None
    step(f"training {config.name}: {len(rows)} rows, {config.method}, {'bf16 autocast' if bf16 else 'fp32'}"
         + (f", resuming from {Path(last).name}" if last else ""))
    trainer.train(resume_from_checkpoint=last)
    history = list(trainer.state.log_history)
    final_loss = _final_val_loss(trainer, history)
    trainer.model.save_pretrained(build.tmp, safe_serialization=True)
    tokenizer.save_pretrained(build.tmp)
    build.record(TrainingRecord(
        base_model={"name": base.name, "path": str(base.path)}, tasks=config.tasks, method=config.method,
        precision="bf16 autocast" if bf16 else "fp32", data_card=load_card()["content_hash"], mixture=realised,
        steps=trainer.state.global_step, resumed_from=Path(last).name if last else None,
        best_checkpoint_step=_step_of(trainer.state.best_model_checkpoint),
        weights_step=(_step_of(trainer.state.best_model_checkpoint) if trainer.args.load_best_model_at_end
                      else trainer.state.global_step),
        loss_curve={"train": [(h["step"], h["loss"]) for h in history if "loss" in h],
                    "val": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]},
        val_loss_before=next((h["eval_loss"] for h in history if "eval_loss" in h and h["step"] == 0), None),
        val_loss_after=final_loss))


def _final_val_loss(trainer, history: list[dict]) -> float:
    """Val loss of the weights kept: the best checkpoint's with ``load_best_model_at_end``, else the last step's,
    read from the history where training evaluated that step (evaluating the same weights again cost a whole
    evaluation per run: ~45 s for a Qwen expert, minutes for the mix), else evaluated now."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_metric is not None:
        return float(state.best_metric)
    last = [h["eval_loss"] for h in history if "eval_loss" in h and h.get("step") == state.global_step]
    return float(last[-1]) if last else float(trainer.evaluate()["eval_loss"])


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint and checkpoint.rsplit("-", 1)[-1].isdigit() else None
