"""The accuracy runner behind ``runtime eval`` (and the bench): fixed items, greedy decoding, task metrics.

Writes ``DIR/eval.json`` (per task: metrics, N, model, decoding settings, data card hash, wall time),
``DIR/eval.md`` (a table) and ``DIR/predictions/<task>.jsonl`` (every prompt's answer next to its reference).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.api_types import route_from_headers
from runtime.config import TasksConfig, configs_dir, load_config
from runtime.engines.base import SamplingParams
from runtime.tasks import TASKS, TaskItem, load_card, load_items
from runtime.tasks.prompts import messages_for, task_config
from runtime.tasks.sandbox import Sandbox

if TYPE_CHECKING:
    from runtime.engines.offline import OfflineRunner

SCHEMA = 1
Progress = Callable[[str, int, int], None]  # (label, done, total)


def sampling_for(tasks: TasksConfig, task: str) -> SamplingParams:
    cfg = task_config(tasks, task)
    return SamplingParams(max_new_tokens=cfg.max_new_tokens, stop=tuple(cfg.stop))


def cap_tokens(tasks: TasksConfig, max_tokens: int | dict[str, int] | None) -> TasksConfig:
    """The task prompts with output lengths capped, every task's by one number or each by its own (faster runs;
    the cap is in each task's ``sampling`` in eval.json and the bench report)."""
    if max_tokens is None:
        return tasks
    caps = max_tokens if isinstance(max_tokens, dict) else dict.fromkeys(tasks.tasks, max_tokens)
    capped = {name: cfg.model_copy(update={"max_new_tokens": min(cfg.max_new_tokens, caps.get(name, 10**6))})
              for name, cfg in tasks.tasks.items()}
    return tasks.model_copy(update={"tasks": capped})


def evaluate(runner: OfflineRunner, task_names: list[str], split: str, limit: int | None, out: Path,
             tasks: TasksConfig | None = None, progress: Progress | None = None,
             sandbox: Sandbox | None = None) -> dict:
    tasks = tasks or load_config(configs_dir() / "tasks.yaml", TasksConfig)
    selected = {t: load_items(t, "test" if t == "humaneval" else split, limit) for t in task_names}
    if sandbox is None and any(TASKS[t].runs_code for t in selected):  # HumanEval runs model code (may refuse, as root)
        sandbox = Sandbox()
    report: dict = {
        "schema": SCHEMA,
        "model": str(runner.model_path),
        "adapter": str(runner.adapter_path) if runner.adapter_path else None,
        "split": split,
        "limit": limit,
        "decoding": {"greedy": True, "dtype": runner.dtype, "device": runner.device,
                     "batch_size": runner.max_batch_size, "chat_template": runner.is_chat},
        "data_card": load_card()["content_hash"],
        "environment": {"python": platform.python_version(), "machine": platform.machine()},
        "tasks": {},
    }
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report["tasks"] = _run_tasks(runner, tasks, selected, out, progress, sandbox)
    report["wall_s"] = round(time.perf_counter() - start, 1)  # answers and scoring
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "eval.md").write_text(markdown_table(report))
    return report


def _run_tasks(runner: OfflineRunner, tasks: TasksConfig, selected: dict[str, list[TaskItem]], out: Path,
               progress: Progress | None, sandbox: Sandbox | None) -> dict[str, dict]:
    """Every task's items asked together (the engine's batches mix them, the most work first, as the bench asks a
    server), then each task scored; its ``wall_s`` is the time until its last answer."""
    start = time.perf_counter()
    messages = {t: [messages_for(tasks, t, it) for it in items] for t, items in selected.items()}
    order = asking_order(tasks, messages)
    done = dict.fromkeys(selected, 0)
    finished: dict[str, float] = {}

    def step(j: int, _answer) -> None:
        task = order[j][0]
        done[task] += 1
        if done[task] == len(selected[task]):
            finished[task] = time.perf_counter() - start
        if progress:  # one count over every task: their answers arrive interleaved
            progress("answers", sum(done.values()), len(order))

    answers = runner.generate([runner.render(messages[t][i]) for t, i in order],
                              [sampling_for(tasks, t) for t, _ in order], on_answer=step)
    by_task: dict[str, list] = {t: [None] * len(items) for t, items in selected.items()}
    for (task, i), gen in zip(order, answers, strict=True):
        by_task[task][i] = gen
    results = {}
    for task, items in selected.items():
        generations = by_task[task]
        metrics = TASKS[task].score(items, [g.text for g in generations], sandbox)
        write_answers(out / "predictions" / f"{task}.jsonl", items, [
            {"answer": g.text, "finish_reason": g.finish_reason, "completion_tokens": g.completion_tokens}
            for g in generations])
        sampling = sampling_for(tasks, task)
        results[task] = {"n": len(items), "metrics": metrics, "headline": TASKS[task].headline,
                         "sampling": asdict(sampling) | {"stop": list(sampling.stop)},
                         "completion_tokens": sum(g.completion_tokens for g in generations),
                         "wall_s": round(finished.get(task, 0.0), 1)}
    return results


def write_answers(path: Path, items: list[TaskItem], answers: list[dict]) -> None:
    """One JSON line per item, in item order: id, reference, answer, finish_reason, completion_tokens, so a score
    can be checked by eye (`runtime eval`'s predictions/ and the bench's answers/)."""
    rows = [{"id": it.id, "reference": it.reference, "answer": a["answer"], "finish_reason": a["finish_reason"],
             "completion_tokens": a["completion_tokens"]} for it, a in zip(items, answers, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def evaluate_served(url: str, tasks: TasksConfig, items: dict[str, list[TaskItem]], concurrency: int = 8,
                    progress: Progress | None = None, api_key: str | None = None,
                    known: dict[str, dict[str, dict]] | None = None,
                    on_answer: Callable[[str, dict], None] | None = None) -> dict[str, list[dict]]:
    """Every item's answer from a running server, greedy, with ``model`` set to the task so the deployment's
    router picks the model (HumanEval asks ``generation`` with its prompt, as `runtime eval` does):
    {task: [{"id", "answer", "finish_reason", "completion_tokens", "route"}]}. The tasks' sampling
    (``max_new_tokens`` after any cap, stop strings) goes into each request. Answers come back in item order
    whatever order they were asked in. ``known`` ({task: {id: answer}}) are not asked again (a resumed phase);
    ``on_answer(task, answer)`` is called as each new answer arrives (its journal)."""
    import asyncio

    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def run() -> dict[str, list[dict]]:
        gate = asyncio.Semaphore(concurrency)
        done: dict[str, int] = dict.fromkeys(items, 0)
        async with httpx.AsyncClient(timeout=900, headers=headers) as client:

            async def one(task: str, i: int) -> dict:
                item, sampling = items[task][i], sampling_for(tasks, task)
                body = {"model": TASKS[task].prompt_task, "messages": messages[task][i], "temperature": 0,
                        "max_tokens": sampling.max_new_tokens, "stop": list(sampling.stop) or None}
                async with gate:
                    r = await client.post(f"{url}/chat/completions", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"{task} item {item.id}: HTTP {r.status_code}: {r.text[:300]}")
                data = r.json()
                answer = {"id": item.id, "answer": data["choices"][0]["message"]["content"] or "",
                          "finish_reason": data["choices"][0]["finish_reason"],
                          "completion_tokens": data["usage"]["completion_tokens"],
                          "route": route_from_headers(r.headers)}
                if on_answer:
                    on_answer(task, answer)
                done[task] += 1
                if progress:
                    progress(task, done[task], len(items[task]))
                return answer

            pairs = [(t, i) for t, i in asking_order(tasks, messages) if items[t][i].id not in have.get(t, {})]
            answers = await asyncio.gather(*(one(t, i) for t, i in pairs))
        out: dict[str, list[dict]] = {t: [have.get(t, {}).get(it.id, {}) for it in its] for t, its in items.items()}
        for (task, i), answer in zip(pairs, answers, strict=True):
            out[task][i] = answer
        return out

    have = known or {}
    messages = {t: [messages_for(tasks, t, it) for it in its] for t, its in items.items()}  # built once: sorted, sent
    return asyncio.run(run())


def asking_order(tasks: TasksConfig, messages: dict[str, list[list[dict]]]) -> list[tuple[str, int]]:
    """(task, item index) in the order ``evaluate_served`` asks them: the most work first (the tasks with the
    longest answer cap, each task's longest prompt first), so the long answers start while the short ones fill the
    free rows, instead of a few long answers decoding alone at the end. The engines batch continuously and pack
    prompts, so requests in flight need not have similar lengths; the hf engine's greedy answers do not depend
    on their neighbours (its numerics), vLLM's bf16 answers do (a batching draw either way)."""
    def work(pair: tuple[str, int]) -> tuple[int, int]:
        task, i = pair
        return (-sampling_for(tasks, task).max_new_tokens, -sum(len(m["content"]) for m in messages[task][i]))
    return sorted(((t, i) for t, msgs in messages.items() for i in range(len(msgs))), key=work)


def markdown_table(report: dict) -> str:
    lines = [f"# Evaluation of `{report['model']}`" + (f" + `{report['adapter']}`" if report["adapter"] else ""),
             "", f"Split `{report['split']}`, greedy, {report['decoding']['dtype']}, data card "
             f"`{report['data_card'][:12]}`.", "",
             "| task | N | metrics | last answer at s |", "|---|---:|---|---:|"]
    for task, r in report["tasks"].items():
        shown = ", ".join(f"{k} {v:.1f}" if k != r["headline"] else f"**{k} {v:.1f}**"
                          for k, v in r["metrics"].items() if isinstance(v, float))
        lines.append(f"| {task} | {r['n']} | {shown} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"
