"""Training on the tiny model: loss goes down, artifacts reload and generate, resume continues, errors at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, TrainerCallback

from runtime.config import TasksConfig, configs_dir, load_config
from runtime.engines.base import SamplingParams
from runtime.engines.offline import OfflineRunner
from runtime.errors import ConfigError
from runtime.models import ModelStore
from runtime.tasks import load_items
from training.config import TrainConfig
from training.examples import IGNORE
from training.sft import build_rows, train


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIXMERGE_HOME", str(home))
        ModelStore().register("tiny", tiny_model_dir)
        yield home


def _config(tmp: Path, **fields) -> TrainConfig:
    base = {"name": "t", "kind": "expert", "base_model": "tiny", "tasks": ["completion"], "method": "lora",
            "precision": "fp32", "data": {"max_length": 768, "max_val_items": 8},
            "training": {"max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 3e-3,
                         "logging_steps": 1, "eval_steps": 4, "warmup_steps": 0}}
    path = tmp / "train" / "c.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(base))
    return load_config(path, TrainConfig, [f"{k}={json.dumps(v)}" for k, v in fields.items()])


def train_(config: TrainConfig, **kwargs):
    return train(config, ModelStore(), **kwargs)


def _manifest(entry) -> dict:
    return json.loads((entry.path / "manifest.json").read_text())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_lowers_the_loss_and_the_artifact_reloads_and_generates(home, tmp_path, method):
    entry = train_(_config(tmp_path, name=f"tiny-{method}", method=method))
    manifest = _manifest(entry)
    assert manifest["val_loss_after"] < manifest["val_loss_before"]
    losses = [loss for _, loss in manifest["loss_curve"]["train"]]
    assert losses[-1] < losses[0]
    assert manifest["steps"] == 8 and manifest["mixture"]["items"] == {"completion": 32}
    assert manifest["weights_step"] == 8  # the last step's weights are kept
    assert entry.kind == "expert" and entry.format == method
    assert (entry.path / ("adapter_config.json" if method == "lora" else "config.json")).is_file()
    if method == "lora":
        runner = OfflineRunner(ModelStore().get("tiny").path, adapter_path=entry.path)
    else:
        runner = OfflineRunner(entry.path)
    with runner:
        out = runner.generate([runner.render([{"role": "user", "content": "x = 1"}])], SamplingParams(max_new_tokens=4))
    assert out[0].completion_tokens > 0
    assert not (home / "runs" / f"tiny-{method}").exists()  # checkpoints are cleaned after the save
    assert any(e.name == f"tiny-{method}" for e in ModelStore().list())


def test_a_finished_artifact_is_reused_not_retrained(home, tmp_path):
    first = train_(_config(tmp_path, name="tiny-reuse", max_steps=2))
    created = _manifest(first)["created"]
    again = train_(_config(tmp_path, name="tiny-reuse", max_steps=2))
    assert _manifest(again)["created"] == created


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_an_interrupted_run_leaves_no_artifact_and_resumes_from_its_checkpoint(home, tmp_path):
    config = _config(tmp_path, name="tiny-resume", max_steps=4, save_steps=2, eval_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train_(config, callbacks=[_Interrupt()])
    assert not (home / "models" / "tiny-resume").exists()
    assert (home / "runs" / "tiny-resume" / "checkpoint-2").is_dir()
    entry = train_(config)
    manifest = _manifest(entry)
    assert manifest["resumed_from"] == "checkpoint-2" and manifest["steps"] == 4


def test_a_mixed_run_records_its_realised_mixture(home, tmp_path):
    entry = train_(_config(tmp_path, name="tiny-mix", kind="mixed", tasks=["completion", "summarization"],
                          mixing={"strategy": "balanced"}, max_steps=2))
    manifest = _manifest(entry)
    assert manifest["mixture"]["items"] == {"completion": 4, "summarization": 4}
    assert manifest["kind"] == "mixed" and manifest["tasks"] == ["completion", "summarization"]
    budget = manifest["mixture"]["budget"]
    assert (budget["steps"], budget["items_per_step"], budget["rows"], budget["epochs"]) == (2, 4, 8, 1.0)
    for task in ("completion", "summarization"):
        spent = budget["per_task"][task]
        assert spent["rows"] == 4 and spent["tokens"] == spent["tokens_seen"] > spent["response_tokens"] > 0
        assert {"dropped_long_prompt", "truncated_response", "cropped_input", "lines_hidden"} <= set(spent)
        assert manifest["mixture"]["val"][task]["rows"] == 8  # max_val_items, none lost
    assert manifest["mixture"]["views"]["review_window"] == 20


def test_overrides_reach_trainer_fields_and_output_dir(home, tmp_path):
    out = tmp_path / "elsewhere"
    entry = train_(_config(tmp_path, name="tiny-out", max_steps=1, output_dir=str(out)))
    assert entry.path == out.resolve() and _manifest(entry)["steps"] == 1
    assert ModelStore().get("tiny-out").path == out.resolve()


def test_the_last_steps_weights_are_kept_unless_the_config_asks_for_the_best(tmp_path):
    from training.sft import build_args

    assert build_args(_config(tmp_path), tmp_path / "w", bf16=False).load_best_model_at_end is False
    best = _config(tmp_path, load_best_model_at_end=True)
    assert build_args(best, tmp_path / "w", bf16=False).load_best_model_at_end is True


def test_an_artifact_that_kept_a_checkpoint_before_its_last_is_named_when_reused():
    from runtime.artifacts import Manifest
    from training.sft import best_not_last

    def manifest(**extra):
        return Manifest.model_validate({"name": "m", "kind": "expert", **extra})

    assert "holds step 40's weights" in best_not_last(manifest(steps=60, best_checkpoint_step=40))
    assert "runtime models remove m" in best_not_last(manifest(steps=60, best_checkpoint_step=40))
    assert best_not_last(manifest(steps=60, best_checkpoint_step=60)) is None
    assert best_not_last(manifest(steps=60, best_checkpoint_step=40, weights_step=60)) is None  # trained since
    assert best_not_last(manifest(kind="merged")) is None


def test_a_bad_training_config_reports_every_error(tmp_path):
    path = tmp_path / "train" / "bad.yaml"
    path.parent.mkdir()
    path.write_text("name: x\nkind: expert\nbase_model: b\ntasks: [generation, reveiw]\nmethod: qlora\n"
                    "lora: {r: 0}\ntraining: {max_step: 2, output_dir: o}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 4, text
    assert "tasks.1: got 'reveiw'" in text and "method: got 'qlora'" in text and "lora.r: got 0" in text
    assert "did you mean 'max_steps'" in text and "output_dir" in text


def test_shipped_train_configs_validate():
    paths = sorted((configs_dir() / "train").rglob("*.yaml"))
    assert paths
    for path in paths:
        load_config(path, TrainConfig)


def test_rows_are_batched_by_length_unless_the_config_says_otherwise(tmp_path):
    from training.sft import build_args

    assert build_args(_config(tmp_path), tmp_path / "w", False).train_sampling_strategy == "group_by_length"
    random = _config(tmp_path, **{"training.train_sampling_strategy": "random"})
    assert build_args(random, tmp_path / "w", False).train_sampling_strategy == "random"


def test_a_bench_zoo_training_runs_in_a_child_process_and_reports_its_steps_here(home, tmp_path):
    from runtime.bench.zoo import Progress, build_step
    from runtime.process import in_child

    class Seen(Progress):
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def phase(self, name: str, total: int) -> None:
            self.calls.append((name, total))

        def advance(self, n: int = 1) -> None:
            self.calls.append(("advance", n))

    seen = Seen()
    config = _config(tmp_path, name="tiny-child", **{"training.max_steps": 4, "training.eval_steps": 2})
    in_child(build_step, "train", config, ModelStore().home, None, on_message=seen.relayed)
    assert seen.calls[0] == ("train tiny-child", 4)
    assert sum(n for kind, n in seen.calls[1:] if kind == "advance") == 4
    assert _manifest(ModelStore().get("tiny-child"))["steps"] == 4


class _Evaluations(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_evaluate(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.mark.parametrize(("eval_steps", "evaluated"), [(4, [0, 4, 8]), (3, [0, 3, 6, 8])])
def test_the_last_steps_val_loss_is_evaluated_once(home, tmp_path, eval_steps, evaluated):
    seen = _Evaluations()
    entry = train_(_config(tmp_path, name=f"tiny-evals-{eval_steps}", **{"training.eval_steps": eval_steps}),
                   callbacks=[seen])
    manifest = _manifest(entry)
    assert seen.steps == evaluated  # step 8's weights are not evaluated a second time after training
    last_step, last_loss = manifest["loss_curve"]["val"][-1]
    if last_step == 8:
        assert manifest["val_loss_after"] == last_loss


# ------------------------------------------------------------------ self-distilled targets (training/distill.py)
def test_rows_of_a_distilled_task_train_on_the_rewrites_of_exactly_the_items_they_use(home, tmp_path, tiny_model_dir):
    config = _config(tmp_path, kind="mixed", tasks=["completion", "summarization"], mixing={"strategy": "balanced"},
                     max_steps=2, data={"max_length": 768, "max_val_items": 3, "self_distill": ["completion"]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    asked: list[list] = []

    def rewrite(items):
        asked.append(items)
        return {it.id: f"TARGET {it.id}" for i, it in enumerate(items) if i not in (0, 4)}  # (each split's first:
        # its reference)

    rows, val, realised = build_rows(config, tokenizer, load_config(configs_dir() / "tasks.yaml", TasksConfig), rewrite)
    # train (4) and val (3) asked in one call: the engine waits for the last long answers once
    assert [len(a) for a in asked] == [7] and all(it.task == "completion" for it in asked[0])
    assert realised["self_distilled"] == {"completion/train": {"rewritten": 3, "kept_reference": 1},
                                          "completion/val": {"rewritten": 2, "kept_reference": 1}}
    answers = [tokenizer.decode([t for t in r.labels if t != IGNORE]).removesuffix("<|im_end|>\n") for r in rows + val]
    got = sorted(a for a in answers if "TARGET" in a)
    want = sorted(f"TARGET {it.id}" for i, it in enumerate(asked[0]) if i not in (0, 4))
    assert len(got) == len(want) and all(w.startswith(g) for g, w in zip(got, want, strict=True))  # (cut to fit)
    val_ids = [it.id for it in load_items("completion", "val")[:3]]
    assert [it.id for it in asked[0][4:]] == val_ids  # val: the first usable items, as without distillation


def test_a_config_distilling_a_task_it_does_not_train_is_refused(tmp_path):
    with pytest.raises(Exception, match="data.self_distill names review, not among tasks: completion"):
        _config(tmp_path, data={"max_length": 768, "self_distill": ["review"]})


def test_training_with_self_distill_keeps_every_rewrite_with_the_artifact_and_reuses_the_cache(home, tmp_path):
    steps: list[str] = []
    entry = train_(_config(tmp_path, name="tiny-sdft", max_steps=2, eval_steps=2,
                           data={"max_length": 768, "max_val_items": 4, "self_distill": ["completion"]}),
                   step=steps.append)
    realised = _manifest(entry)["mixture"]["self_distilled"]
    for split, rows in (("train", 8), ("val", 4)):
        counts = realised[f"completion/{split}"]
        assert counts["rewritten"] + counts["kept_reference"] == rows and len(counts["cache"]) == 16
    kept = [json.loads(line) for line in (entry.path / "self_distilled.jsonl").read_text().splitlines()]
    assert len(kept) == 12 and {row["task"] for row in kept} == {"completion"}
    assert any(s.startswith("self-distilling 12 completion targets") for s in steps)  # train and val at once
    steps.clear()
    train_(_config(tmp_path, name="tiny-sdft-again", max_steps=2, eval_steps=2,
                   data={"max_length": 768, "max_val_items": 4, "self_distill": ["completion"]}),
           step=steps.append)
    assert not any("self-distilling" in s for s in steps)  # the same items: every rewrite from the cache
