import json
from pathlib import Path

import pytest

from runtime.config import TasksConfig, configs_dir, load_config
from runtime.engines.base import SamplingParams
from runtime.engines.offline import OfflineRunner
from runtime.evaluate import evaluate
from runtime.tasks import load_items
from runtime.tasks.prompts import messages_for


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path):
    with OfflineRunner(tiny_model_dir, dtype="float32", max_batch_size=4) as r:
        yield r


def test_batched_greedy_equals_one_by_one_in_input_order(runner: OfflineRunner):
    prompts = [runner.render([{"role": "user", "content": t}]) for t in ("def f(x):", "return x + 1", "a", "b = 2",
                                                                         "import os", "x")]
    params = SamplingParams(max_new_tokens=6)
    seen: list[int] = []
    batched = runner.generate(prompts, params, on_answer=lambda i, _: seen.append(i))
    single = [runner.generate([p], params)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single] and sorted(seen) == list(range(6))
    assert all(g.completion_tokens == 6 and g.finish_reason == "length" for g in batched)


def test_each_prompt_keeps_its_own_sampling_settings(runner: OfflineRunner):
    prompt = runner.render([{"role": "user", "content": "x"}])
    out = runner.generate([prompt, prompt], [SamplingParams(max_new_tokens=2), SamplingParams(max_new_tokens=5)])
    assert [g.completion_tokens for g in out] == [2, 5]
    with pytest.raises(ValueError, match="2 prompts but 1 sampling"):
        runner.generate([prompt, prompt], [SamplingParams(max_new_tokens=2)])


def test_stop_strings_cut_the_text(runner: OfflineRunner):
    prompt = runner.render([{"role": "user", "content": "x"}])
    full = runner.generate([prompt], SamplingParams(max_new_tokens=12))[0].text
    assert len(full) > 2
    stop = full[1:3]
    cut = runner.generate([prompt], SamplingParams(max_new_tokens=12, stop=(stop,)))[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_prompts_use_the_task_template():
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    item = load_items("review", "test", limit=1)[0]
    messages = messages_for(tasks, "review", item)
    assert messages[0]["role"] == "system" and item.input in messages[1]["content"]
    humaneval = load_items("humaneval", "test", limit=1)[0]
    assert messages_for(tasks, "humaneval", humaneval)[1]["content"].startswith("Complete the body")


def test_evaluate_writes_report_table_and_predictions(runner: OfflineRunner, store_home: Path, tmp_path: Path):
    calls: list[tuple[str, int, int]] = []
    report = evaluate(runner, ["completion", "review", "humaneval"], "test", 3, tmp_path,
                      progress=lambda *a: calls.append(a))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == report
    assert set(saved["tasks"]) == {"completion", "review", "humaneval"}
    for task, result in saved["tasks"].items():
        assert result["n"] == 3 and result["wall_s"] >= 0 and result["headline"] in result["metrics"]
        lines = (tmp_path / "predictions" / f"{task}.jsonl").read_text().splitlines()
        assert len(lines) == 3
    assert saved["tasks"]["humaneval"]["metrics"]["pass_at_1"] == 0.0  # a random model passes nothing
    assert saved["decoding"]["greedy"] and len(saved["data_card"]) == 64
    assert calls[-1] == ("answers", 9, 9) and [c[1] for c in calls] == sorted(c[1] for c in calls)
    assert "| review | 3 |" in (tmp_path / "eval.md").read_text()


def test_tasks_that_run_no_code_need_no_sandbox(runner: OfflineRunner, store_home: Path, tmp_path: Path, monkeypatch):
    import runtime.evaluate as accuracy

    def refused(*args, **kwargs):
        raise AssertionError("a sandbox was built for tasks that run no model code")

    monkeypatch.setattr(accuracy, "Sandbox", refused)  # as root without namespaces, building one refuses
    report = evaluate(runner, ["completion"], "test", 2, tmp_path)
    assert report["tasks"]["completion"]["n"] == 2


def test_a_prompt_beyond_the_context_is_a_clear_error(runner: OfflineRunner):
    from runtime.errors import BadRequestError

    long_prompt = "x " * 5000
    with pytest.raises(BadRequestError, match="exceeds the context of 4096 tokens.*lower max_tokens"):
        runner.generate([long_prompt], SamplingParams(max_new_tokens=8))


def test_cap_tokens_lowers_every_tasks_output_length_only():
    from runtime.evaluate import cap_tokens

    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    capped = cap_tokens(tasks, 24)
    assert {t: c.max_new_tokens for t, c in capped.tasks.items()} == {t: min(24, c.max_new_tokens)
                                                                       for t, c in tasks.tasks.items()}
    assert capped.tasks["review"].prompt == tasks.tasks["review"].prompt and cap_tokens(tasks, None) is tasks
    each = cap_tokens(tasks, {"summarization": 8})  # per task: the others keep their length
    assert each.tasks["summarization"].max_new_tokens == 8
    assert each.tasks["generation"].max_new_tokens == tasks.tasks["generation"].max_new_tokens


def test_served_scoring_asks_the_longest_work_first():
    from runtime.evaluate import asking_order

    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    caps = {t: cfg.max_new_tokens for t, cfg in tasks.tasks.items()}
    short, long = sorted(caps, key=caps.get)[0], sorted(caps, key=caps.get)[-1]
    assert caps[short] < caps[long]
    messages = {short: [[{"role": "user", "content": "x" * n}] for n in (5, 50, 20)],
                long: [[{"role": "user", "content": "y" * n}] for n in (3, 30)]}
    # the long-answer task first (its longest prompt first), the short-answer task's items fill in after
    assert asking_order(tasks, messages) == [(long, 1), (long, 0), (short, 1), (short, 2), (short, 0)]


def test_an_adapter_the_engine_refuses_leaves_no_engine_behind(tiny_model_dir: Path, tmp_path: Path):
    """A DoRA adapter (the engine cannot mix it by row) is a clear error, and the failed engine gives back its share
    of the cores and the caller's torch threads: a later engine in the process would run on half of them."""
    import torch
    from loras import make_lora

    from runtime.engines.threads import TEAMS
    from runtime.errors import BadRequestError

    dora = make_lora(tiny_model_dir, tmp_path / "dora", 3, use_dora=True)
    engines, threads = TEAMS.engines, torch.get_num_threads()
    with pytest.raises(BadRequestError, match="DoRA"):
        OfflineRunner(tiny_model_dir, dora)
    assert TEAMS.engines == engines and torch.get_num_threads() == threads
