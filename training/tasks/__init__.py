"""Code tasks built from real code: generation, summarization, completion, review (stdlib) and HumanEval."""

from training.tasks.builders import NO_ISSUES, TaskItem
from training.tasks.dataset import SPLIT_NAMES, TASK_NAMES, build_dataset, load_card, load_items
from training.tasks.views import VIEW, crop_counts, view

__all__ = ["NO_ISSUES", "SPLIT_NAMES", "TASK_NAMES", "VIEW", "TaskItem", "build_dataset", "crop_counts", "load_card",
           "load_items", "view"]
