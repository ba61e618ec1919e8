"""Pydantic models for every YAML file, and ``load_config(path, overrides)``.

Every file is loaded into a frozen model that forbids unknown keys. A bad file raises one :class:`ConfigError` that
lists every problem at once, each naming the file, the field and the fix. ``key=value`` overrides (dotted keys
reach nested fields; values are parsed as YAML scalars) are applied before validation, so they are checked too.
"""

from __future__ import annotations

import difflib
import importlib
import re
import string
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.errors import ConfigError

TaskName = Literal["generation", "completion", "review", "summarization"]
TASKS: tuple[str, ...] = ("generation", "completion", "review", "summarization")
DeploymentOption = Literal["base", "mixed", "merged", "experts", "folded", "merged-adapter", "hybrid"]
EngineKind = Literal["hf", "vllm", "remote", "fake"]


class _Loader(yaml.SafeLoader):
    """YAML 1.1, as PyYAML reads it, but with YAML 1.2's floats: ``1e-4`` is a float, not the string "1e-4" (1.1
    wants a dot in the mantissa), so a learning rate written the usual way reaches TrainingArguments as a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Every YAML file and override value the runtime reads goes through here (see ``_Loader``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # dotted keys that do not change what a build makes (where it is written, what is reported beside it): a
    # finished artifact built from the same config but for these is the same recipe (runtime/artifacts.py)
    NOT_RECIPE: ClassVar[frozenset[str]] = frozenset({"output_dir"})

    @classmethod
    def accepted_keys(cls) -> list[str]:
        """Keys this model accepts; unknown keys are matched against these for 'did you mean'."""
        return list(cls.model_fields)


# ---------------------------------------------------------------------------------------------- tasks.yaml
class TaskConfig(Frozen):
    description: str
    system: str | None = None  # system message for instruct models; None sends none
    prompt: str  # user message; `{input}` is replaced by the item's input
    max_new_tokens: int = Field(128, gt=0, le=4096)  # longer answers cost latency linearly
    stop: list[str] = Field(default_factory=list)

    @field_validator("prompt")
    @classmethod
    def _only_input_placeholder(cls, value: str) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        if fields != {"input"}:
            raise ValueError(f"prompt must use exactly the placeholder {{input}}, found {sorted(fields) or 'none'}")
        return value


class TasksConfig(Frozen):
    tasks: dict[TaskName, TaskConfig]

    @field_validator("tasks")
    @classmethod
    def _all_tasks(cls, value: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        missing = [t for t in TASKS if t not in value]
        if missing:
            raise ValueError(f"missing task(s) {', '.join(missing)}; every task needs a prompt")
        return value


# ------------------------------------------------------------------------------------- deployments/*.yaml
class AdaptiveConfig(Frozen):
    """Traffic-aware placement (hf engine): an adapter with most of the recent requests is served from a copy of
    the model with its LoRA folded in (merged speed), and from LoRA again once its share falls."""

    window: int = Field(64, gt=0)  # recent requests whose adapters are counted
    min_requests: int = Field(16, gt=0)  # no decision before this many requests are in the window
    fold_share: float = Field(0.6, gt=0, le=1)  # fold an adapter with at least this share of the window
    unfold_share: float = Field(0.4, ge=0, lt=1)  # back to LoRA below this share (the gap stops flapping)
    memory_mb: float = Field(2048, ge=0)  # memory the folded copy may take (one copy of the weights)

    @model_validator(mode="after")
    def _hysteresis(self) -> AdaptiveConfig:
        if self.unfold_share >= self.fold_share:
            raise ValueError(f"adaptive.unfold_share ({self.unfold_share}) must be below fold_share "
                             f"({self.fold_share}), or placement flaps")
        return self


class EngineConfig(Frozen):
    kind: EngineKind = "hf"
    # auto = bfloat16 where the hardware computes it natively (AVX512-BF16/AMX CPUs, bf16 GPUs), else float32
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # hf: auto = the first GPU where torch sees one, else the CPU (vLLM runs where its build runs)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch_size: int = Field(8, gt=0)  # requests merged into one forward pass; more = throughput, not latency
    max_loras: int = Field(4, gt=0)  # adapters resident at once; the rest are loaded on demand (LRU)
    max_lora_rank: int = Field(16, gt=0)  # vLLM reserves memory for this rank
    pinned_adapters: list[str] = Field(default_factory=list)  # never evicted
    max_model_len: int = Field(2048, gt=0)
    # vLLM: torch.compile the model at start. None = on a GPU only: on this 2-core CPU it took 35-50 s of each
    # full model's start and made 8 concurrent answers ~6% faster (3.1 vs 3.3 s); LoRA servers never compile
    compile: bool | None = None
    upstreams: list[str] = Field(default_factory=list)  # remote engine: OpenAI-compatible base URLs
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    # hf: fold a dominant adapter into a copy of the model while it dominates; `true` takes the defaults
    adaptive: AdaptiveConfig | None = None
    # hf, bf16 on a CPU: every linear's weight reordered once for oneDNN at load (runtime/engines/prepacked.py: the
    # same numbers, a 0.5B batch-1 step ~1.9x faster); false keeps the dense weights that modules_to_save adapters
    # copy (the engine keeps them on its own when such an adapter is known at start)
    prepack: bool = True

    @field_validator("adaptive", mode="before")
    @classmethod
    def _adaptive_flag(cls, value: object) -> object:
        return {} if value is True else None if value is False else value

    @model_validator(mode="after")
    def _remote_needs_upstreams(self) -> EngineConfig:
        if self.kind == "remote" and not self.upstreams:
            raise ValueError("engine.kind 'remote' needs at least one URL in engine.upstreams")
        return self


class DeploymentConfig(Frozen):
    name: str
    option: DeploymentOption
    description: str = ""
    base_model: str  # a name from `runtime models list` or a model directory
    model: str | None = None  # mixed / merged: the model that serves every task
    adapters: dict[TaskName, str] = Field(default_factory=dict)  # experts / folded: one LoRA per task
    adapter: str | None = None  # merged-adapter: the one adapter merged from the task adapters
    # mixed / merged / merged-adapter: a LoRA artifact served folded into its base model's weights
    # (merge_and_unload, built once and cached) as a full model: full-model speed for one more copy of the weights
    fold: bool = False
    routes: dict[TaskName, str] = Field(default_factory=dict)  # hybrid: task -> deployment name
    fallback: list[str] = Field(default_factory=list)  # deployments tried in order when this one fails
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @model_validator(mode="after")
    def _option_fields(self) -> DeploymentConfig:
        needs = {"mixed": "model", "merged": "model", "merged-adapter": "adapter"}
        field = needs.get(self.option)
        if field and not getattr(self, field):
            raise ValueError(f"option '{self.option}' needs '{field}' (the artifact that serves every task)")
        if self.option in ("experts", "folded") and not self.adapters:
            raise ValueError(f"option '{self.option}' needs 'adapters': a LoRA adapter per task")
        if self.option == "hybrid" and not self.routes:
            raise ValueError("option 'hybrid' needs 'routes': a deployment name per task")
        if self.fold and self.option not in needs:
            raise ValueError(f"'fold' folds the one artifact of options {', '.join(needs)}; option '{self.option}' "
                             "has none" + (" (option 'folded' serves each expert folded)" if self.option == "experts"
                                           else " (it folds its experts already)" if self.option == "folded" else ""))
        return self


# ------------------------------------------------------------------------------------------- train/*.yaml
# ---------------------------------------------------------------------------------------------- loading
ConfigT = TypeVar("ConfigT", bound=Frozen)

# configs/FOLDER/*.yaml -> its schema; each command's schema lives beside its code and registers its folder
# (training/config.py: train, merge/config.py: merge and adapters, runtime/bench/config.py: bench)
CONFIG_KINDS: dict[str, type[Frozen]] = {"tasks": TasksConfig, "deployments": DeploymentConfig}
KNOWN_FOLDERS = {"tasks": "runtime.config", "deployments": "runtime.config", "train": "training.config",
                 "merge": "merge.config", "adapters": "merge.config", "bench": "runtime.bench.config"}


def config_kind(folder: str) -> Callable[[type[ConfigT]], type[ConfigT]]:
    """Class decorator: files under configs/FOLDER/ are validated by this schema (``load_config`` without a kind)."""

    def register(cls: type[ConfigT]) -> type[ConfigT]:
        CONFIG_KINDS[folder] = cls
        return cls

    return register


def configs_dir() -> Path:
    """The shipped ``configs/`` folder: the checkout's in an editable install, else the installed data files."""
    here = Path(__file__).resolve().parent.parent / "configs"
    return here if here.is_dir() else Path(sys.prefix) / "share" / "mixmerge" / "configs"


def kind_for(path: Path) -> type[Frozen]:
    """Pick the model from the file's place: ``tasks.yaml`` or the folder it sits in (``deployments/``...)."""
    key = path.stem if path.stem in KNOWN_FOLDERS else next((p.name for p in path.parents if p.name in KNOWN_FOLDERS),
                                                            "")
    # the nearest folder decides: configs/merge/adapters/x.yaml is an adapter merge, not a mergekit merge
    if key not in KNOWN_FOLDERS:
        known = ", ".join(f"configs/{k}/" for k in KNOWN_FOLDERS if k != "tasks")
        raise ConfigError(str(path), [f"cannot tell what kind of config this is; put it under {known} or tasks.yaml"])
    if key not in CONFIG_KINDS:  # the command's schema registers itself when its module is first imported
        importlib.import_module(KNOWN_FOLDERS[key])
    return CONFIG_KINDS[key]


def load_config(
    path: str | Path, kind: type[ConfigT] | None = None, overrides: Iterable[str] = ()
) -> ConfigT:
    """Read ``path``, apply ``key=value`` overrides, validate; raise ConfigError listing every problem."""
    path = Path(path)
    model = kind or kind_for(path)
    if not path.is_file():
        raise ConfigError(str(path), ["no such file; check the path (shipped configs are under configs/)"])
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}".replace("\n", " ")]) from e
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of keys to values"])
    problems: list[str] = []
    for item in overrides:
        try:
            apply_override(data, item)
        except ValueError as e:
            problems.append(str(e))
    try:
        config = model.model_validate(data)
    except ValidationError as e:
        problems.extend(describe_errors(e, model))
    if problems:
        raise ConfigError(str(path), problems)
    return config  # type: ignore[return-value]


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in ``data``; the value is parsed as YAML (``3`` is an int, ``[a, b]`` a list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override '{item}' is not key=value; write e.g. engine.max_batch_size=4")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override '{item}': '{part}' is not a mapping, so it has no field '{parts[-1]}'")
        node = child
    try:
        node[parts[-1]] = load_yaml(raw) if raw.strip() else raw
    except yaml.YAMLError as e:
        raise ValueError(f"override '{item}': value is not valid YAML ({e.problem})") from e


def describe_errors(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per pydantic error: the field's dotted path, what is wrong, and how to fix it."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field{_did_you_mean(err['loc'], model)}; remove it"
        elif err["type"] == "missing":
            msg = "required field is missing; add it"
        elif not isinstance(err.get("input"), dict | list):
            msg = f"got {err.get('input')!r}: {msg}"
        lines.append(f"{loc}: {msg}")
    return lines


def _did_you_mean(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """Walk ``loc`` through nested models and suggest the closest known field name."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return ""
        current = fields[part].annotation
    if not hasattr(current, "accepted_keys"):
        return ""
    known = current.accepted_keys()
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    shown = ", ".join(list(current.model_fields))
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {shown})"


def as_plain(config: Frozen) -> Mapping[str, Any]:
    """The config as JSON-ready data (for manifests and config hashes)."""
    return config.model_dump(mode="json")
