"""Task prompts from configs/tasks.yaml: the messages a model sees for an item, in training and evaluation."""

from __future__ import annotations

from runtime.config import TaskConfig, TasksConfig
from training.tasks.builders import TaskItem


def template_task(task: str) -> str:
    """HumanEval is generation on other problems: it uses the generation prompt."""
    return "generation" if task == "humaneval" else task


def task_config(tasks: TasksConfig, task: str) -> TaskConfig:
    return tasks.tasks[template_task(task)]  # type: ignore[index]


def messages_for(tasks: TasksConfig, task: str, item: TaskItem) -> list[dict[str, str]]:
    cfg = task_config(tasks, task)
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return messages + [{"role": "user", "content": cfg.prompt.format(input=item.input)}]
