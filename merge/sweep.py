"""`runtime merge sweep`: choose a merge on the validation split, then test only the chosen merge.

The paper picked its merge weights on test data; here every candidate (the config's method over a weight grid --
the paper's (w, 1 - w) for two experts, points of the simplex for more -- plus a ``sweep.grid`` of other methods
and settings, see merge/grid.py) is scored on the *validation* split. The untuned base model and each expert are
scored once on the same items (cached in ``OUT/val-scores.json``, with every candidate's scores, so an interrupted
sweep resumes). Each candidate is merged once and scored on every task in one pass of the serving engine (a
rejected one too: the report shows every candidate's numbers); a candidate below the base on any task is rejected.
The best survivor by the objective (default: mean over tasks of
(score - base) / (expert - base), see merge/selection.py) is kept under the config's name (where none survives, the
best of all, and the summary says so); the others are deleted.
Every candidate's per-task scores, retention and verdict go to ``sweep.csv``, ``sweep.json`` and ``sweep.png``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from merge.config import MergeConfig
from merge.grid import Candidate, candidates, weight_grid
from merge.selection import MIN_GAP, below_base, choose, judge, objective, objective_tasks
from merge.sweep_report import write_outputs
from runtime.artifacts import MANIFEST, Build, Manifest
from runtime.config import as_plain
from runtime.engines.attention import NUMERICS
from runtime.errors import ConfigError, ModelStoreError
from runtime.models import ModelEntry, ModelStore

__all__ = ["objective", "run_sweep", "weight_grid", "eval_score"]
log = logging.getLogger(__name__)
Score = Callable[[Path, str | None, list[str], str, int, Path], dict[str, float]]  # model, adapter -> headline
MIN_ITEMS = 40  # fewer validation items per task and one item moves a score by more than 2.5 points


def eval_score(model: Path, adapter: str | None, tasks: list[str], split: str, limit: int, out: Path,
               max_tokens: dict[str, int] | None = None) -> dict[str, float]:
    """The headline metric per task from ``runtime eval``'s runner (greedy, the fixed first ``limit`` items,
    answers capped at ``max_tokens`` per task where given)."""
    from runtime.config import TasksConfig, configs_dir, load_config
    from runtime.engines.offline import OfflineRunner
    from runtime.evaluate import cap_tokens, evaluate

    task_config = cap_tokens(load_config(configs_dir() / "tasks.yaml", TasksConfig), dict(max_tokens or {}))
    # scored in the dtype the bench serves (auto: bf16 on this CPU, 2-3x faster than fp32 here) on the serving
    # engine, 16 rows at once, every task's prompts together
    with OfflineRunner(model, adapter, dtype="auto", max_batch_size=16) as runner:
        report = evaluate(runner, tasks, split, limit, out, tasks=task_config)
    return {t: r["metrics"][r["headline"]] for t, r in report["tasks"].items()}


class ScoreCache:
    """Validation scores kept in the sweep's output folder, keyed by what was scored and how: the base model's
    and the experts' are computed once, and an interrupted sweep does not score a finished candidate again."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def _key(self, what: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(what | self.settings, sort_keys=True).encode()).hexdigest()[:16]

    def peek(self, what: dict[str, Any]) -> dict[str, float] | None:
        """The cached scores, or None."""
        entry = self.data.get(self._key(what))
        return dict(entry["scores"]) if entry else None

    def get(self, what: dict[str, Any], compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        key = self._key(what)
        if key not in self.data:
            self.data[key] = {"what": what, "scores": compute()}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            tmp.replace(self.path)
        return dict(self.data[key]["scores"])


def run_sweep(config: MergeConfig, out: Path, store: ModelStore, score: Score | None = None,
              step: Callable[[str], None] = log.info) -> dict:
    """Merge and score every candidate on val; keep the best that is not below the base as ``config.name``;
    score it on test unless ``sweep.score_test`` is off (``chosen_test`` is then None)."""
    sweep = config.sweep
    if sweep is None:
        raise ConfigError(config.name, ["no `sweep:` section; add one (see configs/merge/*-sweep.yaml)"])
    base = store.get(config.base_model)
    with store.build(config.name, "merged", source="runtime merge sweep", parent=base.name, config=config,
                     inputs=config.recipe_inputs) as build:
        if build.reused:
            step(f"{config.name} was already chosen by a sweep; `runtime models remove {config.name}` to redo it")
            return _summary_of(build, out)
        score = score or functools.partial(eval_score, max_tokens=sweep.max_tokens)
        summary, results, tasks = _sweep(config, out, store, build, score, step)
        build.record(sweep=summary)  # its choice on val; the chosen model is scored on test once in place
    if sweep.score_test:
        summary["chosen_test"] = score(build.path, None, tasks, "test", sweep.limit, out / "chosen-test")
    write_outputs(results, summary, tasks, out)
    return summary


def _sweep(config: MergeConfig, out: Path, store: ModelStore, build: Build, score: Score,
           step: Callable[[str], None]) -> tuple[dict, list[dict], list[str]]:
    """Score the base, the experts and every candidate on val and move the chosen one into the build: the summary,
    every candidate's row and the tasks."""
    sweep = config.sweep
    assert sweep is not None
    todo = candidates(config)
    if not todo:
        raise ConfigError(config.name, ["the sweep has no candidates; list sweep.weights or sweep.grid"])
    expert_tasks = {m.model: _task_of(m.model, store) for m in config.models}
    tasks = list(sweep.tasks) or sorted({t for t in expert_tasks.values() if t})
    if not tasks:
        raise ConfigError(config.name, ["the inputs are not single-task experts; list sweep.tasks"])
    if sweep.limit < MIN_ITEMS:
        log.warning("%s: %d validation items per task (< %d): one item moves a score by %.1f points, so the choice "
                    "is mostly noise", config.name, sweep.limit, MIN_ITEMS, 100 / sweep.limit)
    out.mkdir(parents=True, exist_ok=True)
    cache = ScoreCache(out / "val-scores.json", {"split": "val", "limit": sweep.limit,  # numerics: the engine's
                                                 "max_tokens": dict(sweep.max_tokens), "numerics": NUMERICS})
    base, expert = _reference_scores(config, tasks, expert_tasks, score, cache, out, store, step)
    if sweep.objective == "mean_retention" and not expert:
        raise ConfigError(config.name, ["mean_retention divides by each task's expert score, but no input is a "
                                        "single-task expert of the swept tasks; set sweep.objective: mean_score"])
    scoring = _Scoring(score, cache, sweep.limit, out,
                       {m.model: _identity(store.get(m.model)) for m in config.models})
    results = _score_candidates(todo, scoring, tasks, base, expert, config, store, step)
    best, none_survived = choose(results)
    if none_survived:
        log.warning("%s: every candidate scores below the base on some task; keeping the best by the objective, "
                    "%s (sweep.json: no_candidate_at_or_above_base)", config.name, best["name"])
    _keep(best, results, build, none_survived, store)
    return _summary(config, best, results, base, expert, tasks, None, none_survived), results, tasks


def _score_candidates(todo: list[Candidate], scoring: _Scoring, tasks: list[str], base: dict[str, float],
                      expert: dict[str, float], config: MergeConfig, store: ModelStore,
                      step: Callable[[str], None]) -> list[dict]:
    """Merge each candidate and score it on every task, a rejected one too (the sweep shows every candidate's
    per-task numbers, and where none passes the floor the best of them is kept). Only the candidate ``choose``
    would keep so far stays in the store (each is a full model: 1.2 GB for Qwen2.5-Coder-0.5B in bfloat16, and a
    sweep that kept all seven beside the folded experts filled this machine's disk); a candidate whose scores a
    resumed sweep finds cached is merged again only if it is the one kept."""
    sweep = config.sweep
    assert sweep is not None
    scored: list[tuple[Candidate, dict[str, float]]] = []
    for i, cand in enumerate(todo, 1):
        step(f"candidate {i}/{len(todo)} {cand.name}")
        scores = scoring.cached(cand, tasks)
        if scores is None:
            scores = scoring.candidate(cand, _merged(cand, store, step).path, tasks)
        scored.append((cand, scores))
        if below := below_base(scores, base):
            step(f"rejected {cand.name}: below the base on " + ", ".join(
                f"{b['task']} ({b['score']:.1f} < {b['base']:.1f})" for b in below))
        best, _ = choose([{"name": c.name} | judge(sc, base, expert, sweep.objective) for c, sc in scored])
        for c, _ in scored:
            if c.name != best["name"] and store.has(c.config.name):
                store.remove(c.config.name)
    kept = next(c for c, _ in scored if c.name == best["name"])
    path = _merged(kept, store, step).path  # in the store already unless its scores came from the cache
    return [_describe(c) | judge(scores, base, expert, sweep.objective)
            | {"path": str(path) if c is kept else None} for c, scores in scored]


def _merged(cand: Candidate, store: ModelStore, step: Callable[[str], None]) -> ModelEntry:
    """The candidate's merged model, from the store or merged now (a candidate left by an interrupted sweep and
    merged from another recipe is merged again)."""
    from merge.run import merge

    if changes := store.recipe_changes(cand.config.name, cand.config, cand.config.recipe_inputs):
        step(f"removing {cand.config.name}, merged from another recipe ({'; '.join(changes[:2])})")
        store.remove(cand.config.name)
    return merge(cand.config, store, step=lambda _: None)


def _summary_of(build: Build, out: Path) -> dict:
    """A finished sweep's summary: OUT/sweep.json, else the one its model's manifest keeps."""
    if (out / "sweep.json").is_file():
        return json.loads((out / "sweep.json").read_text())
    assert build.manifest is not None
    if "sweep" not in build.manifest.extras:
        raise ModelStoreError(f"{build.name} was chosen by a sweep whose summary is neither in {out} nor in its "
                              "manifest", fix=f"pass the --out that sweep wrote, or `runtime models remove "
                              f"{build.name}` to sweep again")
    return dict(build.manifest.extras["sweep"])


class SweepChoice(BaseModel):
    """Why the kept merge was chosen, in its manifest (beside its merge record and the sweep's summary)."""

    candidate: str
    config: dict[str, Any] | None  # the candidate's merge config
    objective: float | None
    retention: dict[str, float | None]
    rejected: bool
    no_candidate_at_or_above_base: bool


@dataclass(frozen=True)
class _Scoring:
    """Scores a candidate on every task at once (one engine, the tasks' prompts interleaved in its batches), through
    the cache."""

    score: Score
    cache: ScoreCache
    limit: int
    out: Path
    inputs: dict[str, str]  # the experts' identities: a retrained expert makes every candidate new

    def _what(self, cand: Candidate, tasks: list[str]) -> dict[str, Any]:
        return {"candidate": as_plain(cand.config), "inputs": self.inputs, "tasks": tasks}

    def cached(self, cand: Candidate, tasks: list[str]) -> dict[str, float] | None:
        return self.cache.peek(self._what(cand, tasks))

    def candidate(self, cand: Candidate, path: Path, tasks: list[str]) -> dict[str, float]:
        return self.cache.get(self._what(cand, tasks), functools.partial(
            self.score, path, None, tasks, "val", self.limit, self.out / "candidates" / cand.name))


def _reference_scores(config: MergeConfig, tasks: list[str], expert_tasks: dict[str, str | None], score: Score,
                      cache: ScoreCache, out: Path, store: ModelStore,
                      step: Callable[[str], None]) -> tuple[dict[str, float], dict[str, float]]:
    """The base model's val score on every task and each expert's on its own task (cached in the output)."""
    base_entry = store.get(config.base_model)
    step(f"scoring the base model {base_entry.name} on val")
    limit = config.sweep.limit
    base = cache.get({"base": _identity(base_entry), "tasks": tasks},
                     functools.partial(score, base_entry.path, None, tasks, "val", limit, out / "base"))
    expert: dict[str, float] = {}
    for m in config.models:
        task = expert_tasks[m.model]
        if task in tasks and task not in expert:
            entry = store.get(m.model)
            model, adapter = _model_and_adapter(entry, store)
            step(f"scoring the expert {m.model} on {task} val")
            expert[task] = cache.get({"expert": _identity(entry), "tasks": [task]},
                                     functools.partial(score, model, adapter, [task], "val", limit,
                                                       out / "experts" / m.model))[task]
    return base, expert


def _describe(cand: Candidate) -> dict[str, Any]:
    return {"name": cand.name, "method": cand.method, "parameters": dict(cand.shared),
            "weights": list(cand.weights), "density": cand.density}


def _keep(best: dict, results: list[dict], build: Build, none_survived: bool, store: ModelStore) -> None:
    """Delete every other candidate and move the best into the build (its merge record is kept)."""
    for row in results:
        if row is not best and store.has(row["name"]):
            store.remove(row["name"])
    assert best["path"], "the kept candidate is in the store"
    chosen = Path(best["path"])
    kept = Manifest.load(chosen)
    assert build.tmp is not None
    for f in chosen.iterdir():
        if f.name != MANIFEST:
            f.rename(build.tmp / f.name)
    store.remove(best["name"])
    build.record(chosen_by_sweep=SweepChoice(
        candidate=best["name"], config=kept.config, objective=best["objective"], retention=best["retention"],
        rejected=best["rejected"], no_candidate_at_or_above_base=none_survived), **kept.extras)


def _summary(config: MergeConfig, best: dict, results: list[dict], base: dict[str, float],
             expert: dict[str, float], tasks: list[str], test: dict[str, float] | None, none_survived: bool) -> dict:
    sweep = config.sweep
    assert sweep is not None
    return {
        "chosen": best["name"], "method": best["method"], "parameters": best["parameters"],
        "weights": best["weights"], "density": best["density"],
        "objective": sweep.objective, "min_gap": MIN_GAP, "objective_tasks": objective_tasks(base, expert),
        "base_val": base, "expert_val": expert,
        "chosen_val": {t: best["val"][t] for t in tasks}, "chosen_retention": best["retention"],
        "chosen_of_expert": best["of_expert"], "chosen_objective": best["objective"],
        "chosen_below_base": best["below_base"], "no_candidate_at_or_above_base": none_survived,
        "rejected": [{"name": r["name"], "below_base": r["below_base"]} for r in results if r["rejected"]],
        "chosen_test": test, "candidates": len(results), "limit": sweep.limit,
        "max_tokens": dict(sweep.max_tokens),
        "results": [{k: v for k, v in r.items() if k != "path"} for r in results],
    }


def _identity(entry: ModelEntry) -> str:
    """What a stored model is, for the score cache: its manifest's hash (a rebuilt model gets a new one)."""
    manifest = entry.path / "manifest.json"
    text = manifest.read_bytes() if manifest.is_file() else str(entry.path.resolve()).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _task_of(name: str, store: ModelStore) -> str | None:
    """The task of a single-task expert (from its manifest), else None."""
    try:
        tasks = Manifest.load(store.get(name).path).extras.get("tasks") or []
    except ModelStoreError:  # no manifest of ours (a directory registered from elsewhere)
        return None
    return tasks[0] if len(tasks) == 1 else None


def _model_and_adapter(entry: ModelEntry, store: ModelStore) -> tuple[Path, str | None]:
    if entry.format == "lora":
        return store.get(entry.parent).path, str(entry.path)
    return entry.path, None
