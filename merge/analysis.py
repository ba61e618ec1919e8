"""`runtime analyze`: the paper's weight analysis of task vectors (fine-tuned minus base), per layer.

For each model, the task vector's entries below 0.3 x the tensor's max |delta| are zeroed, the survivors are
concatenated per layer, and the Pearson correlation of each pair of models is taken per layer and over all
layers. Per layer and model it also reports the relative L2 change ||delta|| / ||base|| and the cosine between
the fine-tuned and the base weights. Embeddings, the final norm and lm_head are groups of their own. LoRA experts
are read as their delta (B A x scaling) without writing a merged copy.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

THRESHOLD = 0.3  # the paper: keep entries with |delta| >= 0.3 x max |delta| of their tensor
_LAYER = re.compile(r"layers\.(\d+)\.")


def group_of(name: str) -> str:
    match = _LAYER.search(name)
    if match:
        return f"layer.{int(match.group(1)):03d}"
    if "embed_tokens" in name or "wte" in name:
        return "embeddings"
    if "lm_head" in name:
        return "lm_head"
    if "norm" in name:
        return "final_norm"
    return "other"


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                out[key] = st.get_tensor(key).float()
    return out


def full_deltas(model: Path, base: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, value in load_tensors(model).items():
        if name in base and base[name].shape == value.shape:
            yield name, value - base[name]


def lora_deltas(adapter: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Delta W = B @ A x (alpha / r) (alpha / sqrt(r) with rsLoRA) for each adapted weight."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_tensors(adapter)
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        name = key.replace("base_model.model.", "", 1).replace(".lora_A", "")
        yield name, (b @ a) * scale


def thresholded(delta: torch.Tensor) -> torch.Tensor:
    peak = delta.abs().max()
    return torch.where(delta.abs() >= THRESHOLD * peak, delta, torch.zeros_like(delta)) if peak > 0 else delta


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def analyze(base_path: Path, models: dict[str, Path], out: Path) -> dict:
    """Write analysis.csv, correlation.png, relative_change.png and summary.json under ``out``."""
    base = load_tensors(base_path)
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    for label, path in models.items():
        source = lora_deltas(path) if (path / "adapter_config.json").is_file() else full_deltas(path, base)
        deltas[label] = {name: d for name, d in source if name in base}
    names = sorted({n for d in deltas.values() for n in d}, key=lambda n: (group_of(n), n))
    groups = sorted({group_of(n) for n in names})
    rows: list[dict] = []
    vectors: dict[str, dict[str, np.ndarray]] = {label: {} for label in models}
    for group in groups:
        members = [n for n in names if group_of(n) == group]
        base_norm = math.sqrt(sum(float(base[n].pow(2).sum()) for n in members))
        for label, d in deltas.items():
            parts = [thresholded(d[n]).flatten() if n in d else torch.zeros(base[n].numel()) for n in members]
            vectors[label][group] = torch.cat(parts).double().numpy()
            rows.extend(_model_rows(group, label, members, d, base, base_norm))
        for a, b in itertools.combinations(models, 2):
            rows.append({"group": group, "a": a, "b": b, "metric": "pearson",
                         "value": pearson(vectors[a][group], vectors[b][group])})
    overall = {f"{a}~{b}": pearson(np.concatenate([vectors[a][g] for g in groups]),
                                    np.concatenate([vectors[b][g] for g in groups]))
               for a, b in itertools.combinations(models, 2)}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "analysis.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["group", "a", "b", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"threshold": THRESHOLD, "models": {k: str(v) for k, v in models.items()},
               "base": str(base_path), "overall_pearson": overall, "groups": groups}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(rows, out)
    return summary


def _model_rows(group: str, label: str, members: list[str], d: dict[str, torch.Tensor],
                base: dict[str, torch.Tensor], base_norm: float) -> list[dict]:
    delta_sq = sum(float(d[n].pow(2).sum()) for n in members if n in d)
    dot = sum(float((base[n] * (base[n] + d.get(n, 0))).sum()) for n in members)
    tuned_norm = math.sqrt(sum(float((base[n] + d.get(n, 0)).pow(2).sum()) for n in members))
    relative = math.sqrt(delta_sq) / base_norm if base_norm else float("nan")
    cosine = dot / (base_norm * tuned_norm) if base_norm and tuned_norm else float("nan")
    return [{"group": group, "a": label, "b": "", "metric": "relative_l2_change", "value": relative},
            {"group": group, "a": label, "b": "", "metric": "cosine_to_base", "value": cosine}]


def _plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(metric: str, key) -> dict[str, tuple[list[int], list[float]]]:
        found: dict[str, tuple[list[int], list[float]]] = {}
        for r in rows:
            if r["metric"] == metric and r["group"].startswith("layer."):
                xs, ys = found.setdefault(key(r), ([], []))
                xs.append(int(r["group"].split(".")[1]))
                ys.append(r["value"])
        return found

    for metric, key, fname, ylabel in (
        ("pearson", lambda r: f"{r['a']} ~ {r['b']}", "correlation.png", "Pearson r of thresholded task vectors"),
        ("relative_l2_change", lambda r: r["a"], "relative_change.png", "||delta|| / ||base||"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, (xs, ys) in series(metric, key).items():
            ax.plot(xs, ys, marker=".", label=label)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
