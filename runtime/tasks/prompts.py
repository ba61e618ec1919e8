"""Task prompts from configs/tasks.yaml: the messages a model sees for an item, in training and evaluation."""

from __future__ import annotations

from runtime.config import TaskConfig, TasksConfig
from runtime.tasks.builders import TaskItem
from runtime.tasks.registry import get_task


def task_config(tasks: TasksConfig, task: str) -> TaskConfig:
    """The prompt and sampling the task uses (HumanEval is generation on other problems: generation's)."""
    return tasks.tasks[get_task(task).prompt_task]  # type: ignore[index]


def messages_for(tasks: TasksConfig, task: str, item: TaskItem) -> list[dict[str, str]]:
    cfg = task_config(tasks, task)
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return messages + [{"role": "user", "content": cfg.prompt.format(input=item.input)}]
