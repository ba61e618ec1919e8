from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merge.config import MergeConfig
from merge.run import merge, topk_trimming
from runtime.config import load_config
from runtime.engines.base import SamplingParams
from runtime.engines.offline import OfflineRunner
from runtime.errors import ConfigError
from runtime.models import ModelStore


def _config(tmp: Path, **fields) -> MergeConfig:
    data = {"name": "m", "base_model": "tiny", "method": "linear",
            "models": [{"model": "exp-a", "weight": 0.3}, {"model": "exp-b", "weight": 0.7}]} | fields
    path = tmp / "merge" / f"{data['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return load_config(path, MergeConfig)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out |= load_file(f)
    return out


def test_linear_equals_the_hand_computed_weighted_average(merge_home, tmp_path):
    entry = merge(_config(tmp_path, name="lin", parameters={"normalize": False}), ModelStore())
    store = ModelStore()
    a, b, m = _weights(store.get("exp-a").path), _weights(store.get("exp-b").path), _weights(entry.path)
    assert set(m) <= set(a)
    for name, value in m.items():
        torch.testing.assert_close(value, 0.3 * a[name] + 0.7 * b[name], rtol=1e-5, atol=1e-6)


def test_task_arithmetic_equals_base_plus_weighted_task_vectors(merge_home, tmp_path):
    entry = merge(_config(tmp_path, name="ta", method="task_arithmetic", parameters={"lambda": 1.0}), ModelStore())
    store = ModelStore()
    base, a, b = (_weights(store.get(n).path) for n in ("tiny", "exp-a", "exp-b"))
    for name, value in _weights(entry.path).items():
        expected = base[name] + 0.3 * (a[name] - base[name]) + 0.7 * (b[name] - base[name])
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_a_bfloat16_output_is_the_float32_merge_rounded_as_a_bfloat16_server_loads_it(merge_home, tmp_path):
    fields = {"method": "task_arithmetic", "parameters": {"lambda": 1.0}}
    wide = _weights(merge(_config(tmp_path, name="ta-f32", **fields), ModelStore()).path)
    narrow = _weights(merge(_config(tmp_path, name="ta-bf16", out_dtype="bfloat16", **fields), ModelStore()).path)
    assert set(wide) == set(narrow) and {t.dtype for t in narrow.values()} == {torch.bfloat16}
    assert all(torch.equal(narrow[k], wide[k].to(torch.bfloat16)) for k in wide)


@pytest.mark.parametrize(
    ("method", "per_model", "shared"),
    [
        ("ties", {"density": 0.5}, {}),
        ("dare_linear", {"density": 0.5}, {}),
        ("dare_ties", {"density": 0.5}, {}),
        ("della", {"density": 0.5, "epsilon": 0.1}, {}),
        ("slerp", {}, {"t": 0.4}),
    ],
)
def test_each_method_gives_a_loadable_model_without_nan(merge_home, tmp_path, method, per_model, shared):
    models = [{"model": "exp-a", **per_model}, {"model": "exp-b", **per_model}]
    if method != "slerp":
        models = [m | {"weight": w} for m, w in zip(models, (0.5, 0.5), strict=True)]
    entry = merge(_config(tmp_path, name=f"x-{method.replace('_', '-')}", method=method, models=models,
                          parameters=shared), ModelStore())
    weights = _weights(entry.path)
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    with OfflineRunner(entry.path) as runner:
        out = runner.generate([runner.render([{"role": "user", "content": "def f():"}])],
                              SamplingParams(max_new_tokens=3))
    assert out[0].completion_tokens == 3
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["kind"] == "merged" and manifest["seed"] == 0


def test_a_lora_expert_is_folded_before_merging(merge_home, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    store = ModelStore()
    entry = merge(_config(tmp_path, name="with-lora", models=[{"model": "lora-c", "weight": 1.0}]), ModelStore())
    base = AutoModelForCausalLM.from_pretrained(store.get("tiny").path, dtype=torch.float32)
    folded = PeftModel.from_pretrained(base, store.get("lora-c").path).merge_and_unload().state_dict()
    merged = _weights(entry.path)
    for name, value in merged.items():
        torch.testing.assert_close(value, folded[name], rtol=1e-5, atol=1e-6)
    assert len(list((merge_home / "cache" / "folded").iterdir())) == 1


def test_bad_merge_configs_report_every_error(tmp_path):
    path = tmp_path / "merge" / "bad.yaml"
    path.parent.mkdir()
    path.write_text(json.dumps({"name": "b", "base_model": "tiny", "method": "ties",
                                "models": [{"model": "a", "weight": 1, "lambda": 2}, {"model": "b", "dens": 0.5}],
                                "parameters": {"lamda": 1}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "parameters.lamda" in text and "models.0.lambda: mergekit reads 'lambda' only from the top-level" in text
    assert "models.1.dens" in text and "needs 'weight' on every model" in text
    path.write_text(json.dumps({"name": "b", "base_model": "tiny", "method": "tie", "models": [{"model": "a"}]}))
    with pytest.raises(ConfigError, match="did you mean 'ties'"):
        load_config(path)


@pytest.mark.parametrize("combination", ["linear", "cat", "ties", "svd"])
def test_adapter_merge_makes_one_loadable_adapter(merge_home, tmp_path, tiny_model_dir, combination):
    from merge.adapters import merge_adapters
    from merge.config import AdapterMergeConfig

    cfg = AdapterMergeConfig(name=f"merged-{combination}", base_model="tiny", combination=combination,
                             adapters=[{"adapter": "lora-c", "weight": 0.5}, {"adapter": "lora-d", "weight": 0.5}],
                             density=0.5 if combination == "ties" else None)
    entry = merge_adapters(cfg, ModelStore())
    assert entry.kind == "adapter" and entry.format == "lora"
    assert (entry.path / "adapter_model.safetensors").is_file()
    with OfflineRunner(ModelStore().get("tiny").path, adapter_path=entry.path) as runner:
        out = runner.generate([runner.render([{"role": "user", "content": "x"}])], SamplingParams(max_new_tokens=3))
    assert out[0].completion_tokens == 3


@pytest.mark.parametrize("weights", [(0.3, 0.7), (1.0, 1.0)])  # 1.0 each: task arithmetic in LoRA space
def test_cat_adapter_merge_is_the_weighted_sum_of_deltas(merge_home, tmp_path, weights):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from merge.adapters import merge_adapters
    from merge.config import AdapterMergeConfig

    store = ModelStore()
    wc, wd = weights
    entry = merge_adapters(AdapterMergeConfig(name=f"cat-exact-{wc:g}-{wd:g}", base_model="tiny", combination="cat",
                                              adapters=[{"adapter": "lora-c", "weight": wc},
                                                        {"adapter": "lora-d", "weight": wd}]), ModelStore())

    def folded(path: Path) -> dict[str, torch.Tensor]:
        base = AutoModelForCausalLM.from_pretrained(store.get("tiny").path, dtype=torch.float32)
        return PeftModel.from_pretrained(base, path).merge_and_unload().state_dict()

    base = AutoModelForCausalLM.from_pretrained(store.get("tiny").path, dtype=torch.float32).state_dict()
    c, d, m = folded(store.get("lora-c").path), folded(store.get("lora-d").path), folded(entry.path)
    changed = 0
    for name in base:
        expected = base[name] + wc * (c[name] - base[name]) + wd * (d[name] - base[name])
        torch.testing.assert_close(m[name], expected, rtol=1e-4, atol=1e-5)
        changed += int(not torch.equal(c[name], base[name]))
    assert changed > 0  # the adapters do move weights, so the equality is not 0 == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("density,norm", [(0.5, None), (0.2, "l1"), (0.9, "l2")])
def test_topk_trimming_keeps_what_mergekits_magnitude_keeps(dtype, density, norm):
    import mergekit.sparsify as sparsify

    signs = torch.randint(0, 2, (16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
    tensor = (torch.randperm(256).add(1).reshape(16, 16) * signs).to(torch.float32).div(64).to(dtype)  # no ties
    rescale = sparsify.RescaleNorm(norm) if norm else None
    expected = sparsify.sparsify(tensor, density, sparsify.SparsificationMethod.magnitude, rescale_norm=rescale)
    with topk_trimming():
        ours_name = sparsify.magnitude.__qualname__
        got = sparsify.sparsify(tensor, density, sparsify.SparsificationMethod.magnitude, rescale_norm=rescale)
    assert "topk_trimming" in ours_name and "topk_trimming" not in sparsify.magnitude.__qualname__  # restored
    assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_topk_trimming_keeps_exactly_the_share_when_magnitudes_tie():
    import mergekit.sparsify as sparsify

    tensor = torch.tensor([3.0, -1.0, 1.0, 1.0, -1.0, 0.5, 0.0, 2.0])
    with topk_trimming():
        got = sparsify.magnitude(tensor, 0.5)
    kept = got != 0
    assert int(kept.sum()) == 4 and kept[0] and kept[7]  # 3 and 2, then two of the four tied 1s
    assert got[kept].abs().min() >= tensor[~kept].abs().max()


def test_cat_refuses_rslora_adapters_whose_sum_it_would_get_wrong(merge_home, tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from merge.adapters import merge_adapters
    from merge.config import AdapterMergeConfig
    from runtime.errors import ModelStoreError

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True))
    model.save_pretrained(tmp_path / "rs")
    ModelStore().register("lora-rs", tmp_path / "rs", "expert", parent="tiny")
    with pytest.raises(ModelStoreError, match="rsLoRA or DoRA"):
        merge_adapters(AdapterMergeConfig(name="cat-rs", base_model="tiny", combination="cat",
                                          adapters=[{"adapter": "lora-rs"}, {"adapter": "lora-c"}]), ModelStore())
    assert not ModelStore().has("cat-rs")
