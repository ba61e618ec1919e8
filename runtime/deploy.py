"""From deployment configs to a serving plan: which engines to start (one per distinct model, with its
adapters) and the routing table the router reads. No engine is started here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import TASKS, DeploymentConfig, EngineConfig, configs_dir, load_config
from runtime.errors import ConfigError, MixmergeError, ModelNotFoundError
from runtime.hardware import served_on
from runtime.models import ModelEntry, ModelStore
from runtime.router import RoutingTable, Target

log = logging.getLogger(__name__)


@dataclass
class EngineSpec:
    key: str  # the model directory the engine serves
    model_path: Path
    config: EngineConfig
    adapters: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingPlan:
    table: RoutingTable
    engines: dict[str, EngineSpec]
    deployments: dict[str, DeploymentConfig]
    models: dict[str, ModelEntry]  # every store entry the plan serves, by name (for /v1/models)


def load_deployment(name_or_path: str) -> DeploymentConfig:
    """A shipped deployment by name (configs/deployments/NAME.yaml) or a file by path. A route or fallback that is
    a relative path names a file beside this one (a bench's hybrid.yaml routes to its own base.yaml), so the
    folder can move to another machine."""
    path = Path(name_or_path)
    if not path.suffix:
        path = configs_dir() / "deployments" / f"{name_or_path}.yaml"
    config = load_config(path, DeploymentConfig)

    def beside(ref: str) -> str:
        return str(path.parent / ref) if Path(ref).suffix and not Path(ref).is_absolute() else ref

    return config.model_copy(update={"routes": {t: beside(r) for t, r in config.routes.items()},
                                     "fallback": [beside(f) for f in config.fallback]})


def single_model_deployment(name: str, store: ModelStore) -> DeploymentConfig:
    """`runtime serve --model NAME`: every task routes to one model (an adapter is served on its parent)."""
    entry = store.get(name)
    if entry.format == "lora":
        if not entry.parent:
            raise ModelNotFoundError(f"adapter '{name}' does not name its base model",
                                     fix="register it with --parent BASE")
        return DeploymentConfig(name=entry.name, option="merged-adapter", base_model=entry.parent, adapter=name)
    return DeploymentConfig(name=entry.name, option="base", base_model=name)


Fold = Callable[..., Path]  # (LoRA expert, base model name, dtype=served dtype) -> a full model directory


class PlanBuilder:
    def __init__(self, store: ModelStore, engine_kind: str | None,
                 load: Callable[[str], DeploymentConfig] = load_deployment, fold: Fold | None = None) -> None:
        self.store = store
        self.engine_kind = engine_kind
        self.load = load
        self.fold = fold  # how `folded` and `fold: true` turn a LoRA into a full model (merge.run.fold_lora)
        self.engines: dict[str, EngineSpec] = {}
        self.models: dict[str, ModelEntry] = {}
        self.deployments: dict[str, DeploymentConfig] = {}
        self.targets: dict[str, dict[str, Target]] = {}

    def build(self, primary: DeploymentConfig) -> ServingPlan:
        self.add(primary, required=True)
        adapters = {name: Target(spec.key, name) for spec in self.engines.values() for name in spec.adapters}
        fallbacks = {d.name: [f for f in d.fallback if f in self.targets] for d in self.deployments.values()}
        for name, d in self.deployments.items():  # the last resort is the base model, where it is loaded anyway
            base_key = str(self._entry(d.base_model).path)  # (a merged model alone does not carry a second model)
            if base_key in self.engines:
                base_dep = f"{name}:base"
                self.targets[base_dep] = {"*": Target(base_key)}
                fallbacks[name] = fallbacks[name] + [base_dep]
        table = RoutingTable(primary.name, self.targets, adapters, fallbacks)
        return ServingPlan(table, self.engines, self.deployments, self.models)

    def add(self, d: DeploymentConfig, required: bool = False) -> None:
        if d.name in self.deployments:
            return
        try:
            self.targets[d.name] = self._targets(d)
        except MixmergeError as e:
            if required:
                raise
            log.warning("deployment %s is left out of the plan: %s", d.name, e)
            return
        self.deployments[d.name] = d
        for other in [*d.routes.values(), *d.fallback]:
            try:
                self.add(self.load(other))
            except (ConfigError, ModelNotFoundError) as e:
                log.warning("deployment %s (named by %s) is left out: %s", other, d.name, e)

    def _targets(self, d: DeploymentConfig) -> dict[str, Target]:
        engine_cfg = d.engine if self.engine_kind is None else d.engine.model_copy(update={"kind": self.engine_kind})
        base = self._entry(d.base_model)
        if d.option in ("mixed", "merged", "merged-adapter"):
            entry = self._entry((d.adapter if d.option == "merged-adapter" else d.model) or "")
            return {"*": self._folded(entry, base, engine_cfg) if d.fold else self._artifact(entry, base, engine_cfg)}
        base_key = self._engine(base, engine_cfg)
        if d.option == "base":
            return {"*": Target(base_key)}
        if d.option in ("experts", "folded"):
            out = {"*": Target(base_key)}
            for task, name in d.adapters.items():
                try:
                    entry = self._entry(name)
                    out[task] = self._folded(entry, base, engine_cfg) if d.option == "folded" else \
                        self._artifact(entry, base, engine_cfg)
                except ModelNotFoundError as e:
                    log.warning("no %s expert for %s (%s): that task falls back", task, d.name, e.message)
                    out.pop(task, None)
            return out
        # hybrid: each task takes its target from the deployment it routes to (the base model if that is missing)
        out = {"*": Target(base_key)}
        for task in TASKS:
            out[task] = Target(base_key)
            if task not in d.routes:
                continue
            try:
                routed = self.load(d.routes[task])  # type: ignore[index]
            except (ConfigError, ModelNotFoundError) as e:
                log.warning("hybrid %s: %s route %s is missing (%s); the base model answers", d.name, task,
                            d.routes[task], e)  # type: ignore[index]
                continue
            self.add(routed)
            if routed.name in self.targets:
                out[task] = self.targets[routed.name].get(task) or self.targets[routed.name]["*"]
        return out

    def _entry(self, name: str) -> ModelEntry:
        entry = self.store.get(name)
        self.models[entry.name] = entry
        return entry

    def _engine(self, entry: ModelEntry | Path, config: EngineConfig) -> str:
        """The engine serving a model directory (a store entry's, or a folded expert's), created once."""
        path = entry if isinstance(entry, Path) else entry.path
        key = str(path)
        if key not in self.engines:
            self.engines[key] = EngineSpec(key, path, config)
        return key

    def _folded(self, entry: ModelEntry, base: ModelEntry, config: EngineConfig) -> Target:
        """A LoRA artifact folded into its own full model (merge_and_unload): its answers at full-model speed, one
        engine (and one copy of the weights) each (option 'folded': per task; ``fold: true``: the one artifact)."""
        if entry.format != "lora":
            return Target(self._engine(entry, config))
        if self.fold is None:
            raise ConfigError("deployment", ["option 'folded' and 'fold: true' need a way to fold LoRA; runtime "
                                             "serve and runtime bench pass merge.run.fold_lora"])
        return Target(self._engine(self.fold(entry, base.name, dtype=served_on(config)[1]), config))

    def _artifact(self, entry: ModelEntry, base: ModelEntry, config: EngineConfig) -> Target:
        """A full model gets its own engine; a LoRA adapter rides on its base model's engine."""
        if entry.format != "lora":
            return Target(self._engine(entry, config))
        key = self._engine(base, config)
        self.engines[key].adapters[entry.name] = entry.path
        return Target(key, entry.name)


def build_plan(primary: DeploymentConfig, store: ModelStore, engine_kind: str | None = None,
               load: Callable[[str], DeploymentConfig] = load_deployment, fold: Fold | None = None) -> ServingPlan:
    return PlanBuilder(store, engine_kind, load, fold).build(primary)
