"""Code tasks built from real code: generation, summarization, completion, review (stdlib) and HumanEval."""

from training.tasks.builders import NO_ISSUES, TaskItem
from training.tasks.dataset import SPLIT_NAMES, TASK_NAMES, build_dataset, load_card, load_items

__all__ = ["NO_ISSUES", "SPLIT_NAMES", "TASK_NAMES", "TaskItem", "build_dataset", "load_card", "load_items"]
