"""The schema of configs/train/*.yaml (`runtime train`): one training run, its adapter, data and mixing."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from runtime.config import Frozen, TaskName, config_kind


class LoraSettings(Frozen):
    r: int = Field(16, gt=0)  # adapter rank: capacity and size grow linearly with it
    alpha: int = Field(32, gt=0)  # scaling = alpha / r; the usual choice is 2 x r
    # PEFT's default, 0: dropout on each LoRA layer's input (a Bernoulli draw per element, slow on a CPU) cost a
    # quarter to a third of a step here (benchmarks/train_step.py, Qwen2.5-0.5B, 4 x 300 tokens: 9.9-10.8 s at
    # 0.05 against 7.6-8.1 s), and these runs of 20-120 steps under-fit rather than over-fit
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"  # PEFT's shorthand for every linear layer but the head


class DataSettings(Frozen):
    max_length: int = Field(256, gt=16)  # tokens per example; longer responses are cut, longer prompts dropped
    max_val_items: int = Field(64, gt=0)  # validation items per task (the val loss curve)
    packing: bool = False  # pack several short examples into one row of max_length tokens
    # tasks whose train and val targets are the base model's own rewrites of the references (SDFT: training/distill.py)
    self_distill: list[TaskName] = Field(default_factory=list)


class MixingSettings(Frozen):
    strategy: Literal["concat", "balanced", "weighted", "temperature"] = "concat"
    weights: dict[TaskName, float] = Field(default_factory=dict)  # weighted: share per task (normalised)
    temperature: float = Field(2.0, gt=0)  # temperature: share ~ n ** (1/T)
    total: int | None = Field(None, gt=0)  # items in the mix (default: what max_steps consumes, else all)


@config_kind("train")
class TrainConfig(Frozen):
    """One training run. Any field of transformers' TrainingArguments may sit under ``training`` or, as a
    shorthand (so ``max_steps=2`` works as an override), at the top level."""

    name: str  # the artifact's name in the model store
    kind: Literal["expert", "mixed"]
    base_model: str
    tasks: list[TaskName] = Field(min_length=1)
    method: Literal["lora", "full"] = "lora"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the CPU/GPU supports it
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    mixing: MixingSettings = Field(default_factory=MixingSettings)
    training: dict[str, Any] = Field(default_factory=dict)  # transformers.TrainingArguments fields
    output_dir: str | None = None  # default: $MIXMERGE_HOME/models/NAME
    # Trainer arguments that change what is shown, not what is trained (the bench turns the Trainer's bar off)
    NOT_RECIPE: ClassVar[frozenset[str]] = frozenset({"output_dir", "training.disable_tqdm", "training.logging_steps"})

    @property
    def recipe_inputs(self) -> list[str]:
        return [self.base_model]
    seed: int = 0

    @classmethod
    def accepted_keys(cls) -> list[str]:
        return list(cls.model_fields) + sorted(trainer_fields())

    @model_validator(mode="before")
    @classmethod
    def _lift_trainer_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = trainer_fields()
        lifted = {k: v for k, v in data.items() if k in known and k not in cls.model_fields}
        if not lifted:
            return data
        rest = {k: v for k, v in data.items() if k not in lifted}
        return rest | {"training": {**(data.get("training") or {}), **lifted}}

    @field_validator("training")
    @classmethod
    def _trainer_fields_exist(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = trainer_fields()
        problems = []
        reserved = {"output_dir", "seed", "bf16", "fp16"} & set(value)
        if reserved:
            problems.append(f"set {', '.join(sorted(reserved))} through the top-level output_dir, seed or precision")
        bad = [k for k in value if k not in known]
        if bad:
            hints = [f"'{k}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                     for k in bad]
            problems.append(f"not TrainingArguments field(s): {', '.join(hints)}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _kind_matches_tasks(self) -> TrainConfig:
        if self.kind == "expert" and len(self.tasks) != 1:
            raise ValueError("an expert trains on exactly one task; use kind: mixed for several")
        if self.mixing.strategy == "weighted" and set(self.mixing.weights) != set(self.tasks):
            raise ValueError(f"mixing.weights needs a share for each of: {', '.join(self.tasks)}")
        if stray := sorted(set(self.data.self_distill) - set(self.tasks)):
            raise ValueError(f"data.self_distill names {', '.join(stray)}, not among tasks: {', '.join(self.tasks)}")
        return self


def trainer_fields() -> frozenset[str]:
    import dataclasses

    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))
