from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge.analysis import analyze, lora_deltas, thresholded
from runtime.models import ModelStore


def _with_delta(base: Path, out: Path, make) -> Path:
    out.mkdir()
    tensors = load_file(base / "model.safetensors")
    save_file({k: v + make(k, v) for k, v in tensors.items()}, out / "model.safetensors")
    shutil.copy(base / "config.json", out / "config.json")
    return out


def test_the_analysis_recovers_a_known_correlation(tiny_model_dir: Path, tmp_path: Path):
    gen = torch.Generator().manual_seed(0)
    signs = {k: torch.randint(0, 2, v.shape, generator=gen).float() * 2 - 1
             for k, v in load_file(tiny_model_dir / "model.safetensors").items()}

    def flip_tail(k: str, v: torch.Tensor) -> torch.Tensor:  # same sign on the first 70%, opposite on the rest
        s = torch.ones(v.numel())
        s[int(0.7 * v.numel()):] = -1
        return 0.01 * signs[k] * s.reshape(v.shape)

    a = _with_delta(tiny_model_dir, tmp_path / "a", lambda k, v: 0.01 * signs[k])
    b = _with_delta(tiny_model_dir, tmp_path / "b", flip_tail)
    summary = analyze(tiny_model_dir, {"a": a, "b": b}, tmp_path / "out")
    assert summary["overall_pearson"]["a~b"] == pytest.approx(0.4, abs=0.02)  # 2 x 0.7 - 1
    rows = list(csv.DictReader((tmp_path / "out" / "analysis.csv").open()))
    layer0 = [r for r in rows if r["group"] == "layer.000" and r["metric"] == "pearson"]
    assert float(layer0[0]["value"]) == pytest.approx(0.4, abs=0.05)
    base = load_file(tiny_model_dir / "model.safetensors")
    members = [k for k in base if "layers.0." in k]
    expected = 0.01 * sum(base[k].numel() for k in members) ** 0.5 / sum(
        float(base[k].pow(2).sum()) for k in members) ** 0.5
    change = [r for r in rows if r["group"] == "layer.000" and r["metric"] == "relative_l2_change" and r["a"] == "a"]
    assert float(change[0]["value"]) == pytest.approx(expected, rel=1e-4)
    assert {"embeddings", "final_norm"} <= set(summary["groups"])
    for png in ("correlation.png", "relative_change.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000


def test_thresholding_zeroes_entries_below_three_tenths_of_the_max():
    d = torch.tensor([1.0, -0.31, 0.29, -0.1, 0.0])
    assert thresholded(d).tolist() == pytest.approx([1.0, -0.31, 0.0, 0.0, 0.0])


def test_lora_delta_equals_the_folded_model_minus_base(merge_home):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    store = ModelStore()
    base = AutoModelForCausalLM.from_pretrained(store.get("tiny").path, dtype=torch.float32)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    folded = PeftModel.from_pretrained(base, store.get("lora-c").path).merge_and_unload().state_dict()
    deltas = dict(lora_deltas(store.get("lora-c").path))
    assert deltas
    for name, delta in deltas.items():
        torch.testing.assert_close(delta, folded[name] - base_sd[name], rtol=1e-4, atol=1e-6)


def test_summary_names_inputs(tiny_model_dir: Path, tmp_path: Path, merge_home):
    store = ModelStore()
    summary = analyze(store.get("tiny").path, {"c": store.get("lora-c").path, "a": store.get("exp-a").path},
                      tmp_path / "o")
    assert set(summary["overall_pearson"]) == {"c~a"}
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["threshold"] == 0.3
