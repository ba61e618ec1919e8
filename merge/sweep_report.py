"""What a merge sweep writes: ``sweep.json`` (the choice and every candidate), ``sweep.csv`` (one row per
candidate) and ``sweep.png`` (each candidate's validation scores against the base and the experts)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from runtime.tasks import TASKS


def write_outputs(results: list[dict], summary: dict, tasks: list[str], out: Path) -> None:
    write_csv(results, tasks, out / "sweep.csv")
    plot(results, tasks, summary["base_val"], summary["expert_val"], out / "sweep.png")
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")


def csv_row(result: dict, tasks: list[str]) -> dict[str, Any]:
    """One candidate flattened: method, settings, weights, then per task its score, retention and score/expert,
    then the objective and the verdict (``below_base`` names each failing task with both numbers)."""
    row: dict[str, Any] = {"name": result["name"], "method": result["method"],
                           "parameters": ";".join(f"{k}={v}" for k, v in sorted(result["parameters"].items())),
                           "density": "" if result["density"] is None else result["density"]}
    row |= {f"w{i}": w for i, w in enumerate(result["weights"])}
    for task in tasks:
        row[f"val_{task}"] = _round(result["val"].get(task))
        row[f"retention_{task}"] = _round(result["retention"].get(task))
        row[f"of_expert_{task}"] = _round(result["of_expert"].get(task))
    row |= {"objective": _round(result["objective"]), "rejected": result["rejected"],
            "below_base": "; ".join(f"{b['task']} {b['score']:.2f} < base {b['base']:.2f}"
                                    for b in result["below_base"])}
    return row


def write_csv(results: list[dict], tasks: list[str], path: Path) -> None:
    rows = [csv_row(r, tasks) for r in results]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot(results: list[dict], tasks: list[str], base: dict[str, float], expert: dict[str, float],
         path: Path) -> None:
    """One line per task over the candidates (x: the weight on the first expert when the sweep is one method's
    weight grid, else each candidate in turn); dashed: the expert, dotted: the base; x marks a rejected one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one_method = len({r["method"] for r in results}) == 1 and len({r["weights"][0] for r in results}) == len(results)
    x = [r["weights"][0] for r in results] if one_method else list(range(len(results)))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(results)), 4.5))
    for task in tasks:
        ys = [r["val"].get(task, float("nan")) for r in results]  # a rejected one may stop before a task
        line = ax.plot(x, ys, marker="o", label=f"{task} ({TASKS[task].headline})")[0]
        color = line.get_color()
        ax.scatter([xi for xi, r in zip(x, results, strict=True) if r["rejected"]],
                   [y for y, r in zip(ys, results, strict=True) if r["rejected"]], marker="x", s=60, color="black",
                   zorder=3)
        if task in expert:
            ax.axhline(expert[task], linestyle="--", linewidth=0.8, color=color)
        if task in base:
            ax.axhline(base[task], linestyle=":", linewidth=0.8, color=color)
    if one_method:
        ax.set_xlabel("weight on the first expert")
    else:
        ax.set_xticks(x, [r["name"].split("--", 1)[-1] for r in results], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("validation score")
    ax.set_title("merge sweep (dashed: each expert, dotted: the base, x: rejected, below the base)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)
