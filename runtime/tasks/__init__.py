"""The code tasks: their registry (runtime/tasks/registry.py), data built from real code (stdlib functions and
HumanEval), prompts, scoring, metrics and the sandbox that runs model-written code."""

from runtime.tasks.builders import NO_ISSUES, TaskItem
from runtime.tasks.dataset import SPLIT_NAMES, build_dataset, load_card, load_items
from runtime.tasks.registry import TASKS, TRAINED, Task, get_task, ranked_sets
from runtime.tasks.views import VIEW, crop_counts, view

__all__ = ["NO_ISSUES", "SPLIT_NAMES", "TASKS", "TRAINED", "VIEW", "Task", "TaskItem", "build_dataset", "crop_counts",
           "get_task", "load_card", "load_items", "ranked_sets", "view"]
