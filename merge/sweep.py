"""`runtime merge sweep`: choose merge weights on the validation split, then test only the chosen merge.

The paper picked its merge weights on test data; here every candidate of a grid (weight on one expert 0.1-0.9
and the rest on the other, or a simplex grid for more experts; times densities) is scored on the *validation*
split under a declared objective (default: mean over tasks of score / expert score), the best is kept under the
config's name, the others are deleted, and the chosen merge alone is evaluated on test. Every point goes to
``sweep.csv`` and ``sweep.png``.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from runtime.bench.accuracy import HEADLINE
from runtime.config import MergeConfig, MergeModel
from runtime.models import ModelStore

log = logging.getLogger(__name__)
Score = Callable[[Path, str | None, list[str], str, int, Path], dict[str, float]]  # model, adapter -> headline


def weight_grid(n_models: int, weights: list[float]) -> list[tuple[float, ...]]:
    """Every assignment of the listed weights to the models that sums to 1. Two experts and 0.1..0.9 give the
    paper's grid (w, 1 - w); more experts give points of the simplex, e.g. [0.25, 0.4, 0.2] over four experts
    gives equal weights and each expert in turn at 0.4."""
    return [c for c in itertools.product(weights, repeat=n_models) if abs(sum(c) - 1) < 1e-6]


def candidates(config: MergeConfig) -> list[tuple[str, MergeConfig, dict[str, float]]]:
    sweep = config.sweep
    assert sweep is not None
    out = []
    for weights in weight_grid(len(config.models), sweep.weights):
        for density in sweep.densities:
            params = {"weights": weights, "density": density}
            models = []
            for m, w in zip(config.models, weights, strict=True):
                extra = m.parameters | {"weight": w}
                if "density" in _per_model_params(config.method):
                    extra["density"] = density
                models.append(MergeModel(model=m.model, **extra))
            tag = "-".join(f"{w:g}" for w in weights) + (f"-d{density:g}" if "density" in
                                                         _per_model_params(config.method) else "")
            name = f"{config.name}--{tag}"
            out.append((name, config.model_copy(update={"name": name, "models": models, "output_dir": None}),
                        params))
    return out


def _per_model_params(method: str) -> set[str]:
    from merge.plans import method_specs

    return {p.name for p in method_specs()[method].input_parameters}


def objective(scores: dict[str, float], expert: dict[str, float], kind: str) -> float:
    if kind == "mean_score":
        return sum(scores.values()) / len(scores)
    ratios = [scores[t] / expert[t] for t in scores if expert.get(t)]
    return sum(ratios) / len(ratios) if ratios else 0.0


def eval_score(model: Path, adapter: str | None, tasks: list[str], split: str, limit: int, out: Path,
               max_tokens: dict[str, int] | None = None) -> dict[str, float]:
    """The headline metric per task from ``runtime eval``'s runner (greedy, the fixed first ``limit`` items,
    answers capped at ``max_tokens`` per task where given)."""
    from runtime.bench.accuracy import cap_tokens, evaluate
    from runtime.config import TasksConfig, configs_dir, load_config
    from runtime.engines.hf import HFRunner

    task_config = cap_tokens(load_config(configs_dir() / "tasks.yaml", TasksConfig), dict(max_tokens or {}))
    report = evaluate(HFRunner(model, adapter), tasks, split, limit, out, tasks=task_config)
    return {t: r["metrics"][r["headline"]] for t, r in report["tasks"].items()}


def run_sweep(config: MergeConfig, out: Path, score: Score | None = None,
              step: Callable[[str], None] = log.info) -> dict:
    """Merge and score every candidate on val; keep the best as ``config.name``; score it on test unless
    ``sweep.score_test`` is off (``chosen_test`` is then None)."""
    from merge.run import merge

    sweep = config.sweep
    if sweep is None:
        raise ValueError(f"{config.name} has no `sweep:` section; add one (see configs/merge/*-sweep.yaml)")
    score = score or functools.partial(eval_score, max_tokens=sweep.max_tokens)
    store = ModelStore()
    if (store.models_dir / config.name / "manifest.json").is_file() and (out / "sweep.json").is_file():
        step(f"{config.name} was already chosen by a sweep; `runtime models remove {config.name}` to redo it")
        return json.loads((out / "sweep.json").read_text())
    expert_tasks = {m.model: _task_of(m.model, store) for m in config.models}
    tasks = list(sweep.tasks) or sorted({t for t in expert_tasks.values() if t})
    if not tasks:
        raise ValueError(f"{config.name}: the inputs are not single-task experts; list sweep.tasks")
    out.mkdir(parents=True, exist_ok=True)
    expert = {}
    for m in config.models:
        task = expert_tasks[m.model]
        if task in tasks and task not in expert:
            entry = store.get(m.model)
            base, adapter = _model_and_adapter(entry, store)
            expert[task] = score(base, adapter, [task], "val", sweep.limit, out / "experts" / m.model)[task]
    if sweep.objective == "mean_retention" and not expert:
        raise ValueError(f"{config.name}: mean_retention divides by each task's expert score, but no input is a "
                         "single-task expert of the swept tasks; set sweep.objective: mean_score")
    rows = []
    for name, candidate, params in candidates(config):
        step(f"candidate {name}")
        entry = merge(candidate, step=lambda _: None)
        scores = score(entry.path, None, tasks, "val", sweep.limit, out / "candidates" / name)
        rows.append({"name": name, **{f"w{i}": w for i, w in enumerate(params["weights"])},
                     "density": params["density"], **{f"val_{t}": s for t, s in scores.items()},
                     "objective": objective(scores, expert, sweep.objective), "path": str(entry.path)})
    best = max(rows, key=lambda r: r["objective"])
    for row in rows:
        if row is not best:
            if store.has(row["name"]):
                store.remove(row["name"])
    final = store.models_dir / config.name
    if final.exists():
        shutil.rmtree(final)
    Path(best["path"]).rename(final)
    _rename_manifest(final, config.name, best)
    test = score(final, None, tasks, "test", sweep.limit, out / "chosen-test") if sweep.score_test else None
    summary = {"chosen": best["name"], "weights": [best[k] for k in best if k.startswith("w")],
               "density": best["density"], "objective": sweep.objective, "expert_val": expert,
               "chosen_val": {t: best[f"val_{t}"] for t in tasks}, "chosen_test": test, "candidates": len(rows),
               "limit": sweep.limit, "max_tokens": dict(sweep.max_tokens)}
    _write_csv(rows, out / "sweep.csv")
    _plot(rows, tasks, expert, out / "sweep.png")
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _task_of(name: str, store: ModelStore) -> str | None:
    """The task of a single-task expert (from its manifest), else None."""
    try:
        tasks = json.loads((store.get(name).path / "manifest.json").read_text()).get("tasks") or []
    except (OSError, ValueError):
        return None
    return tasks[0] if len(tasks) == 1 else None


def _model_and_adapter(entry, store: ModelStore) -> tuple[Path, str | None]:
    if entry.format == "lora":
        return store.get(entry.parent).path, str(entry.path)
    return entry.path, None


def _rename_manifest(path: Path, name: str, best: dict) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(name=name, chosen_by_sweep={"candidate": best["name"], "objective": best["objective"]})
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "path"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plot(rows: list[dict], tasks: list[str], expert: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["w0"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for task in tasks:
        ax.plot(x, [r[f"val_{task}"] for r in rows], marker="o", label=f"{task} ({HEADLINE[task]})")
        if task in expert:
            ax.axhline(expert[task], linestyle="--", linewidth=0.8, color=ax.lines[-1].get_color())
    ax.set_xlabel("weight on the first expert")
    ax.set_ylabel("validation score")
    ax.set_title("merge sweep (dashed: each expert alone)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
