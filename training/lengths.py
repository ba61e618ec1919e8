"""Token lengths of the task rows as a model's tokenizer sees them (cropped items through the chat template), the
measurement a recipe's ``data.max_length`` is chosen from:

    python -m training.lengths --model qwen2.5-coder-0.5b [--split train] [--limit 800] [--max-length 512]

Prints per task the p50/p90/p95/p99/max of the prompt, the answer and the whole row, and with ``--max-length``
how many prompts would not fit (the row builder replaces them) and how many answers would be cut.
"""

from __future__ import annotations

import argparse
import json
import logging

from runtime.config import TasksConfig, configs_dir, load_config
from runtime.tasks import load_items
from runtime.tasks.prompts import messages_for

log = logging.getLogger(__name__)
TASKS = ("generation", "summarization", "completion", "review")
PERCENTILES = (50, 90, 95, 99)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles and the maximum of ``values``."""
    ordered = sorted(values)
    out = {f"p{q}": ordered[min(len(ordered) - 1, max(0, -(-q * len(ordered) // 100) - 1))] for q in PERCENTILES}
    return out | {"max": ordered[-1]}


def row_lengths(tokenizer, tasks: TasksConfig, task: str, split: str, limit: int | None) -> list[tuple[int, int]]:
    """(prompt tokens, answer tokens) per item, the way ``training.examples.build_row`` counts them."""
    out = []
    for item in load_items(task, split, limit):
        messages = messages_for(tasks, task, item)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": item.reference}],
                                             tokenize=False)
        count = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        out.append((count, len(tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])))
    return out


def summary(lengths: list[tuple[int, int]], max_length: int | None = None) -> dict:
    result = {"n": len(lengths), "prompt": percentiles([p for p, _ in lengths]),
              "answer": percentiles([a for _, a in lengths]), "row": percentiles([p + a for p, a in lengths])}
    if max_length:
        result["prompt_does_not_fit"] = sum(p > max_length - 16 for p, _ in lengths)
        result["answer_cut"] = sum(p <= max_length - 16 and p + a > max_length for p, a in lengths)
    return result


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    from runtime.models import ModelStore

    parser = argparse.ArgumentParser(prog="python -m training.lengths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model in the store (its tokenizer is used)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=800, help="items per task (the split's fixed sample)")
    parser.add_argument("--max-length", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tokenizer = AutoTokenizer.from_pretrained(ModelStore().get(args.model).path)
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    report = {t: summary(row_lengths(tokenizer, tasks, t, args.split, args.limit), args.max_length) for t in TASKS}
    log.info("%s", json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
