"""The bench's zoo: every model the deployment options need, built only where the store lacks it (training,
the merge-weight sweep, the adapter merge; one built from another recipe is refused up front, see
``check_recipes``), and the separate store a ``--quick`` zoo lives in."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from transformers import TrainerCallback

from runtime.artifacts import Manifest
from runtime.bench.config import BenchConfig
from runtime.config import configs_dir, load_config
from runtime.errors import MixmergeError, ModelStoreError
from runtime.models import ModelStore
from runtime.process import in_child

log = logging.getLogger(__name__)


class Progress:
    """What the phases report to (the CLI shows rich bars with ETA; tests pass a recorder)."""

    def phase(self, name: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def say(self, message: str) -> None:
        log.info(message)

    def relayed(self, message: tuple) -> None:
        """A call made in a child process (``Relay``), made here."""
        method, *args = message
        getattr(self, method)(*args)


class Relay(Progress):
    """A child process's progress: each call goes to the parent's ``Progress.relayed`` through ``send``."""

    def __init__(self, send: Callable[[tuple], None]) -> None:
        self.send = send

    def phase(self, name: str, total: int) -> None:
        self.send(("phase", name, total))

    def advance(self, n: int = 1) -> None:
        self.send(("advance", n))

    def say(self, message: str) -> None:
        self.send(("say", message))


def build_step(kind: str, config, home: Path, folder: Path | None, send: Callable[[tuple], None]) -> None:
    """One zoo model built into the store at ``home`` (run by ``in_child``; ``config`` is the base model's name
    for a pull)."""
    store, progress = ModelStore(home), Relay(send)
    if kind == "pull":
        store.pull(config, step=progress.say)
    elif kind == "train":
        from training.sft import train

        train(config, store, step=progress.say, callbacks=[StepsToProgress(progress, config.name)])
    elif kind == "sweep":
        from merge.sweep import run_sweep

        run_sweep(config, folder, store, step=progress.say)
    elif kind == "adapters":
        from merge.adapters import merge_adapters

        merge_adapters(config, store, step=progress.say)
    else:
        raise ValueError(f"unknown zoo step kind {kind!r}")


@dataclass(frozen=True)
class ZooStep:
    name: str  # the artifact it builds
    what: str  # what runs, for the progress line
    config: BaseModel  # its recipe, with ``inputs``
    inputs: list[str]  # the artifacts it is built from (the base model, the experts a merge takes)
    kind: str  # "train", "sweep" or "adapters": what ``build_step`` runs
    folder: Path | None = None  # a sweep's working folder


def check_recipes(steps: list[ZooStep], store: ModelStore) -> None:
    """Refuse, before anything runs, a zoo whose finished artifacts were built from other recipes than the configs
    now name, or from inputs this zoo would rebuild: one error that lists them all and the one command that
    clears them (each would otherwise be refused in turn, hours apart)."""
    stale: dict[str, list[str]] = {}
    for step in steps:
        changes = store.recipe_changes(step.name, step.config, step.inputs)
        if not changes and store.has(step.name) and (redo := [i for i in step.inputs if i in stale]):
            changes = [f"built from {', '.join(redo)}, which must be rebuilt"]
        if changes:
            stale[step.name] = changes
    if stale:
        shown = "; ".join(f"{name} ({', '.join(changes[:2])}{', ...' if len(changes) > 2 else ''})"
                          for name, changes in stale.items())
        raise ModelStoreError(f"the zoo's configs changed since these were built: {shown}",
                              fix=f"`runtime models remove {' '.join(stale)}` builds them from the new recipes "
                                  f"(or restore the configs)")


def build_zoo(config: BenchConfig, out: Path, progress: Progress, store: ModelStore) -> dict:
    """Every model the options need, built in ``store`` only where missing; returns what was built and how long it
    took."""
    from merge.config import AdapterMergeConfig, MergeConfig
    from training.config import TrainConfig

    z = config.zoo

    def shipped(path: str) -> str:  # `configs/...` paths work from any folder
        return path if Path(path).is_file() else str(configs_dir().parent / path)

    steps: list[ZooStep] = []
    for path in z.train:  # the Trainer's own bar would fight the bench's: its steps go to a bench bar instead
        tc = load_config(shipped(path), TrainConfig, [*z.train_overrides, "disable_tqdm=true"])
        steps.append(ZooStep(tc.name, f"train {path}", tc, tc.recipe_inputs, "train"))
    if z.merge_sweep:
        # the bench scores the chosen merge on test itself, on more items: the sweep's own test score is skipped
        mc = load_config(shipped(z.merge_sweep), MergeConfig, ["sweep.score_test=false", *z.sweep_overrides])
        steps.append(ZooStep(mc.name, f"merge sweep {z.merge_sweep}", mc, mc.recipe_inputs, "sweep",
                             out / "zoo" / f"sweep-{mc.name}"))
    if z.adapter_merge:
        ac = load_config(shipped(z.adapter_merge), AdapterMergeConfig)
        steps.append(ZooStep(ac.name, f"merge adapters {z.adapter_merge}", ac, ac.recipe_inputs, "adapters"))
    check_recipes(steps, store)
    record: dict = {"built": {}, "reused": []}
    start = time.perf_counter()
    missing = [name for name in [config.base_model, *(step.name for step in steps)] if not store.has(name)]
    progress.say(f"zoo: {len(steps) + 1 - len(missing)} of {len(steps) + 1} models in the store"
                 + (f"; building {', '.join(missing)}" if missing else ""))
    # each build is a line, not a bar: a training run shows its own bar (a phase), which would end the zoo's
    if not store.has(config.base_model):
        in_child(build_step, "pull", config.base_model, store.home, None, on_message=progress.relayed)
        record["built"][config.base_model] = round(time.perf_counter() - start, 1)
    else:
        record["reused"].append(config.base_model)
    for step in steps:
        if store.has(step.name):
            record["reused"].append(step.name)
        else:
            progress.say(f"zoo: building {step.name} ({len(record['built']) + 1} of {len(missing)}): {step.what}")
            t0 = time.perf_counter()
            # in a child process: a training run's memory goes back to the system before the servers start
            in_child(build_step, step.kind, step.config, store.home, step.folder, on_message=progress.relayed)
            record["built"][step.name] = round(time.perf_counter() - t0, 1)
    record["wall_s"] = round(time.perf_counter() - start, 1)
    record["models"] = zoo_models(store, [config.base_model, *(step.name for step in steps)], record["built"],
                                  out / "zoo")
    return record


def zoo_models(store: ModelStore, names: list[str], built: dict[str, float], sweeps: Path | None = None
               ) -> dict[str, dict]:
    """Each zoo model as its manifest describes it: kind, its build's wall, a training run's budget and data
    accounting, a merge sweep's summary (``built``: the names built in this run; ``sweeps``: where the bench's
    sweeps write SWEEP-NAME/sweep.json, read for a merge whose manifest predates its ``sweep`` field)."""
    out = {}
    for name in names:
        try:
            entry = store.get(name)
        except MixmergeError:  # not in the store (a zoo step that failed): nothing to describe
            continue
        try:
            manifest = Manifest.load(entry.path)
        except MixmergeError:  # a pulled or registered model with no manifest of ours
            out[name] = {"kind": entry.kind, "built_this_run": name in built, "wall_s": built.get(name)}
            continue
        extras = manifest.extras
        out[name] = {"kind": manifest.kind, "built_this_run": name in built, "created": manifest.created,
                     "wall_s": manifest.wall_s if manifest.wall_s is not None else built.get(name),
                     "peak_rss_mb": manifest.peak_rss_mb, "training": training_budget(manifest),
                     "sweep": extras.get("sweep")
                     or sweep_summary(extras, sweeps / f"sweep-{name}" if sweeps else None)}
    return out


def sweep_summary(extras: dict, folder: Path | None) -> dict | None:
    """A merge sweep's summary where the manifest lacks it: the sweep's own sweep.json, else the choice the
    manifest keeps (``chosen_by_sweep``: the candidate and its objective, no per-candidate table)."""
    if folder is not None and (folder / "sweep.json").is_file():
        return json.loads((folder / "sweep.json").read_text())
    choice = extras.get("chosen_by_sweep")
    if not choice:
        return None
    return {"chosen": choice.get("candidate"), "chosen_objective": choice.get("objective"),
            "no_candidate_at_or_above_base": choice.get("no_candidate_at_or_above_base"), "results": []}


def training_budget(manifest: Manifest) -> dict | None:
    """A training run's budget from its manifest (training/sft.py's TrainingRecord and training/budget.py's
    record); None for a model that was not trained."""
    x, config = manifest.extras, manifest.config or {}
    if "steps" not in x or "mixture" not in x:
        return None
    budget, val = x["mixture"].get("budget") or {}, x["mixture"].get("val") or {}
    per_task = {}
    for task, r in (budget.get("per_task") or {}).items():
        v = val.get(task, {})
        per_task[task] = {"rows": r.get("rows"), "tokens": r.get("tokens"), "dropped": r.get("dropped_long_prompt"),
                          "cut": r.get("truncated_response"), "cropped": r.get("cropped_input"),
                          "val_rows": v.get("rows"), "val_dropped": v.get("dropped_long_prompt"),
                          "val_cut": v.get("truncated_response")}
    val_losses = [loss for s, loss in (x.get("loss_curve") or {}).get("val", []) if s > 0]  # 0: before training
    return {"seed": config.get("seed"), "tasks": list(x.get("tasks") or config.get("tasks") or per_task),
            "steps": x["steps"], "batch_size": budget.get("items_per_step"), "rows": budget.get("rows"),
            "epochs": budget.get("epochs"), "tokens_seen": budget.get("tokens_seen"),
            "learning_rate": (config.get("training") or {}).get("learning_rate"),
            "max_length": (config.get("data") or {}).get("max_length"), "val_loss_before": x.get("val_loss_before"),
            "val_loss_after": x.get("val_loss_after"),
            "best_val_loss": min(val_losses) if val_losses else x.get("val_loss_after"),
            "best_checkpoint_step": x.get("best_checkpoint_step"), "resumed_from": x.get("resumed_from"),
            "per_task": per_task}


class StepsToProgress(TrainerCallback):
    """Training steps as a bench phase with its ETA (instead of the Trainer's own bar)."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.progress, self.name = progress, name

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.progress.phase(f"train {self.name}", state.max_steps)
        self.progress.advance(state.global_step)  # resumed runs start part-way

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.progress.advance()


def zoo_store(config: BenchConfig, main: ModelStore) -> ModelStore:
    """The store the zoo lives in: ``main``, or for a zoo with its own home (``--quick``) a store in
    MAIN_HOME/HOME, with the base model borrowed from ``main`` when it is there (registered, not copied). Child
    servers are told it by $MIXMERGE_HOME."""
    if not config.zoo.home:
        return main
    store = ModelStore(main.home / config.zoo.home)
    if not store.has(config.base_model) and main.has(config.base_model):
        store.register(config.base_model, main.get(config.base_model).path, kind="base")
    return store
