"""Output caps from the references: the tokens a task's reference answer takes under a model's tokenizer, and the
cap that lets it be written in full for a given share of items (the figure behind ``max_new_tokens`` in
configs/tasks.yaml and ``accuracy.max_tokens`` in configs/bench/*.yaml):

    python -m runtime.tasks.caps --model smollm2-135m --model qwen2.5-coder-0.5b [--split test] [--coverage 0.95]

A reference is counted as the model would write it: its text plus one end-of-turn token. HumanEval shares
generation's route and prompt, so its canonical solutions are measured beside generation's stdlib bodies.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable

from runtime.tasks import TaskItem, load_items

log = logging.getLogger(__name__)
TASKS = ("generation", "humaneval", "summarization", "completion", "review")
Count = Callable[[str], int]  # text -> tokens


def reference_tokens(count: Count, items: list[TaskItem]) -> list[int]:
    """Tokens each item's reference takes, plus the end-of-turn token that closes it."""
    return [count(it.reference) + 1 for it in items]


def covering_cap(lengths: list[int], coverage: float = 0.95) -> int:
    """The smallest cap under which at least ``coverage`` of the lengths fit (nearest-rank percentile)."""
    if not lengths:
        raise ValueError("no lengths to cover")
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(coverage * len(ordered)) - 1)]


def fits_share(lengths: list[int], cap: int) -> float:
    """The share of references written in full under ``cap`` tokens."""
    return sum(n <= cap for n in lengths) / len(lengths)


def measure(count: Count, split: str = "test", coverage: float = 0.95, tasks: tuple[str, ...] = TASKS) -> dict:
    """{task: {n, cap (covers ``coverage``), p50, max}} of the references on ``split`` (HumanEval: its test)."""
    out = {}
    for task in tasks:
        lengths = reference_tokens(count, load_items(task, "test" if task == "humaneval" else split, None))
        out[task] = {"n": len(lengths), "cap": covering_cap(lengths, coverage), "p50": covering_cap(lengths, 0.5),
                     "max": max(lengths)}
    return out


def tokenizer_count(model: str) -> Count:
    from transformers import AutoTokenizer

    from runtime.models import ModelStore

    tokenizer = AutoTokenizer.from_pretrained(ModelStore().get(model).path)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.tasks.caps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a model in the store (its tokenizer)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--coverage", type=float, default=0.95)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {m: measure(tokenizer_count(m), args.split, args.coverage) for m in args.model}
    log.info("%s", json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
