"""The charts beside report.md (PNG), drawn from report.json's dict form, so any version's report renders.

Each chart shows the noise and the floor: 95% intervals on every score, the untuned base as a line, and value axes
that start at zero (or below, where an interval does), so a gap on the page is a gap in the numbers.
"""

from __future__ import annotations

from pathlib import Path

from runtime.bench.compare import BASE
from runtime.bench.results import top_level

MARKERS = {"hf": "o", "vllm": "s", "remote": "^", "fake": "D"}


def plot(report: dict, out: Path) -> list[str]:
    """The charts beside report.md (PNG, in ``out``); their file names."""
    import matplotlib

    matplotlib.use("Agg")
    results = [r for r in report["results"] if not r.get("same_as")]  # a repeated row would hide its twin
    if not results:
        return []
    return [gain_vs_throughput_chart(report, results, out), accuracy_per_task_chart(report, results, out),
            latency_chart(results, out)]


def gain_vs_throughput_chart(report: dict, results: list[dict], out: Path) -> str:
    """The decision rule's normalized gain (0 = base, 1 = the best option on every task; 95% interval) against
    output tokens/s at the top load level; marker area ~ peak RSS. Reports from before the rule plot the mean of
    the headline metrics (no interval), on an axis from 0."""
    import matplotlib.pyplot as plt

    gains = (report.get("recommendation") or {}).get("option_gains")
    top = top_level(results[0])
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = {o: plt.cm.tab10(i % 10) for i, o in enumerate(dict.fromkeys(r["deployment"] for r in results))}
    lows, highs = [0.0], [1.0 if gains else 0.0]
    for r in results:
        x = r["latency"][top]["output_throughput"]
        y, err = _gain(r, gains, report["recommendation"]["normalized_gain"]) if gains else (r["mean_accuracy"], None)
        if y is None:
            continue
        if err:
            ax.errorbar(x, y, yerr=[[y - err[0]], [err[1] - y]], color=colors[r["deployment"]], capsize=3, lw=1)
            lows.append(err[0])
            highs.append(err[1])
        ax.scatter(x, y, s=max(30, r["peak_rss_mb"] / 12), alpha=0.75, color=colors[r["deployment"]],
                   marker=MARKERS.get(r["engine"], "o"), label=f"{r['deployment']} ({r['engine']})",
                   edgecolors="black", linewidths=0.5, zorder=3)
        highs.append(y)
    if gains:
        ax.axhline(0, color="grey", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], 0, " base", va="bottom", fontsize=7, color="grey")
        ax.set_ylabel("normalized gain over base (1 = best on every task), 95% CI")
    else:
        ax.set_ylabel("mean accuracy (headline metrics, 0-100)")
    span = max(highs) - min(lows)
    ax.set_ylim(min(lows) - 0.05 * span, max(highs) + 0.05 * span)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=0.6)
    ax.set_xlim(left=0)
    ax.set_xlabel(f"output tokens/s at concurrency {top}")
    ax.set_title("Accuracy against throughput (marker area ~ peak RSS; circle hf, square vllm)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_throughput.png", dpi=120)
    plt.close(fig)
    return "accuracy_vs_throughput.png"


def _gain(result: dict, gains: dict, plan_gain: float | None = None) -> tuple[float | None,
                                                                              tuple[float, float] | None]:
    """(normalized gain, its interval) of a result's option: base is 0 by definition; a hybrid plan served on its
    own has the recommendation's point estimate, without an interval."""
    if result["deployment"] == BASE:
        return 0.0, None
    if result["deployment"] == "hybrid":
        return plan_gain, None
    g = gains.get(result["deployment"])
    return (g["diff"], (g["ci_low"], g["ci_high"])) if g else (None, None)


def accuracy_per_task_chart(report: dict, results: list[dict], out: Path) -> str:
    """Per scored set, one bar per option with its 95% interval, and the base's score as a dashed line across the
    set's bars; the value axis starts at 0."""
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(report["n_per_task"])
    options = [next(r for r in results if r["deployment"] == o) for o in dict.fromkeys(r["deployment"] for r in
                                                                                       results)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(options)
    xs = np.arange(len(tasks))
    for i, r in enumerate(options):
        vals = [r["accuracy"][t]["value"] for t in tasks]
        err = np.array([[v - r["accuracy"][t]["ci95"][0], r["accuracy"][t]["ci95"][1] - v]
                        for v, t in zip(vals, tasks, strict=True)]).T.clip(min=0)
        ax.bar(xs + i * width, vals, width, yerr=err, capsize=2, label=r["deployment"])
    base = next((r for r in options if r["deployment"] == BASE), None)
    if base:
        for x, t in zip(xs, tasks, strict=True):
            ax.hlines(base["accuracy"][t]["value"], x - width / 2, x + width * (len(options) - 0.5), colors="black",
                      linestyles="dashed", lw=1, label="base" if x == 0 else None)
    ax.set_xticks(xs + width * (len(options) - 1) / 2,
                  [f"{t}\n({report['headline_metrics'][t]})" for t in tasks], fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("score (0-100), 95% CI")
    ax.set_title("Per-task accuracy by option (dashed: the untuned base)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_task.png", dpi=120)
    plt.close(fig)
    return "accuracy_per_task.png"


def latency_chart(results: list[dict], out: Path) -> str:
    """E2E latency p50 / p90 / p99 per option and engine, one panel per fixed concurrency."""
    import matplotlib.pyplot as plt
    import numpy as np

    levels = [k for k in results[0]["latency"] if k.isdigit()]
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 4.5), sharey=True, squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        labels = [f"{r['deployment']} / {r['engine']}" for r in results]
        xs = np.arange(len(results))
        for j, pct in enumerate(("median", "p90", "p99")):
            ax.bar(xs + j * 0.27, [r["latency"][level][f"{pct}_e2el_ms"] / 1000 for r in results], 0.27,
                   label=pct.replace("median", "p50"))
        ax.set_xticks(xs + 0.27, labels, fontsize=7, rotation=45, ha="right")
        ax.set_title(f"concurrency {level}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("E2E latency (s)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Request latency percentiles per concurrency")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
    return "latency.png"
