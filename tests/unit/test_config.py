from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.config import (
    DeploymentConfig,
    TasksConfig,
    apply_override,
    configs_dir,
    load_config,
)
from runtime.errors import ConfigError

SHIPPED = sorted(configs_dir().rglob("*.yaml"))


def test_configs_dir_is_the_checkout_folder():
    assert (configs_dir() / "tasks.yaml").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(configs_dir())))
def test_every_shipped_config_validates_and_opens_with_its_command(path: Path):
    load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# runtime "), f"{path} must open with the command that runs it"


def test_tasks_yaml_has_the_four_tasks():
    tasks = load_config(configs_dir() / "tasks.yaml")
    assert isinstance(tasks, TasksConfig)
    assert set(tasks.tasks) == {"generation", "completion", "review", "summarization"}
    assert "{input}" in tasks.tasks["review"].prompt


def test_overrides_reach_nested_fields_and_are_parsed_as_yaml():
    cfg = load_config(configs_dir() / "deployments" / "experts.yaml",
                      overrides=["engine.max_batch_size=3", "engine.pinned_adapters=[a, b]", "fallback=[]"])
    assert isinstance(cfg, DeploymentConfig)
    assert cfg.engine.max_batch_size == 3
    assert cfg.engine.pinned_adapters == ["a", "b"]
    assert cfg.fallback == []


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path: Path):
    """YAML 1.1 reads ``1e-4`` as a string, which reached TrainingArguments and failed inside the optimizer."""
    from training.config import TrainConfig

    path = tmp_path / "train.yaml"
    path.write_text("name: t\nkind: expert\nbase_model: smollm2-135m\ntasks: [review]\n"
                    "training: {learning_rate: 5e-4}\n")
    assert load_config(path, TrainConfig).training["learning_rate"] == 5e-4
    cfg = load_config(path, TrainConfig, overrides=["training.learning_rate=1e-4", "training.weight_decay=1.5E-2"])
    assert cfg.training["learning_rate"] == 1e-4 and isinstance(cfg.training["learning_rate"], float)
    assert cfg.training["weight_decay"] == 0.015
    data: dict = {}
    apply_override(data, "name=1e")  # not a number: stays a string
    assert data["name"] == "1e"


def test_configs_are_frozen():
    cfg = load_config(configs_dir() / "deployments" / "base.yaml")
    with pytest.raises(ValidationError):
        cfg.name = "other"  # type: ignore[misc]


def test_every_error_is_reported_at_once_with_file_field_and_fix(tmp_path: Path):
    bad = tmp_path / "deployments" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("name: x\noption: experts\nbase_model: m\nadapters: {generation: a}\n"
                   "engine: {kind: vlm, max_btch_size: 4, max_batch_size: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, overrides=["nonsense"])
    problems = info.value.problems
    assert len(problems) == 4, problems
    text = str(info.value)
    assert str(bad) in text
    assert any(p.startswith("engine.kind: got 'vlm'") and "'vllm'" in p for p in problems)
    assert any("engine.max_btch_size" in p and "did you mean 'max_batch_size'" in p for p in problems)
    assert any(p.startswith("engine.max_batch_size: got 0") for p in problems)
    assert any("not key=value" in p for p in problems)


def test_option_needs_its_artifact(tmp_path: Path):
    bad = tmp_path / "deployments" / "m.yaml"
    bad.parent.mkdir()
    bad.write_text("name: m\noption: merged\nbase_model: b\n")
    with pytest.raises(ConfigError, match="option 'merged' needs 'model'"):
        load_config(bad)


def test_remote_engine_needs_upstreams(tmp_path: Path):
    with pytest.raises(ConfigError, match="needs at least one URL"):
        load_config(configs_dir() / "deployments" / "base.yaml", overrides=["engine.kind=remote"])


def test_prompt_must_use_only_the_input_placeholder(tmp_path: Path):
    text = (configs_dir() / "tasks.yaml").read_text().replace("\n      {input}", "\n      {code}", 1)
    path = tmp_path / "tasks.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"exactly the placeholder \{input\}, found \['code'\]"):
        load_config(path)


def test_missing_task_is_named(tmp_path: Path):
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  generation: {description: d, prompt: '{input}'}\n")
    with pytest.raises(ConfigError, match="missing task\\(s\\) completion, review, summarization"):
        load_config(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("a: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_malformed_files_are_one_clear_problem(tmp_path: Path, content: str, expected: str):
    path = tmp_path / "tasks.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_missing_file_and_unknown_kind(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "deployments" / "nope.yaml")
    odd = tmp_path / "elsewhere" / "x.yaml"
    odd.parent.mkdir()
    odd.write_text("a: 1\n")
    with pytest.raises(ConfigError, match="cannot tell what kind of config"):
        load_config(odd)


def test_override_into_a_scalar_is_refused():
    data = {"engine": "hf"}
    with pytest.raises(ValueError, match="'engine' is not a mapping"):
        apply_override(data, "engine.kind=vllm")
