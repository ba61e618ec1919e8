"""Greedy generation tokens/s of a model through transformers, at batch 1 and 8, float32 and bfloat16.

    .venv/bin/python benchmarks/generation_speed.py [--model smollm2-135m] [--new-tokens 64] [--repeats 3]

Each cell generates exactly --new-tokens tokens per sequence (min_new_tokens = max_new_tokens), after a warm-up
run, and reports the median of --repeats runs. Cells run side by side in one process, so their ratios are
comparable even on a noisy shared machine; absolute numbers are not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime.models import ModelStore

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain what a context manager is in Python.",
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists.\"\"\"",
    "Review this code: for i in range(len(xs)): print(xs[i+1])",
    "Summarize: def area(r): return 3.14159 * r * r",
    "Write a function that parses an ISO date string.",
    "What is the difference between a list and a tuple?",
    "Complete the next line: with open(path) as f:",
]


def tokens_per_second(model, tokenizer, batch: int, new_tokens: int, repeats: int) -> float:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in PROMPTS[:batch]]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        model.generate(**inputs, **kwargs)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(**inputs, **kwargs)
            times.append(time.perf_counter() - start)
    return batch * new_tokens / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = ModelStore().get(args.model).path
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        for batch in (1, 8):
            tps = tokens_per_second(model, tokenizer, batch, args.new_tokens, args.repeats)
            rows.append({"dtype": str(dtype).removeprefix("torch."), "batch": batch, "tokens_per_s": round(tps, 1)})
            print(f"{rows[-1]['dtype']:>8}  batch {batch}:  {tps:7.1f} tokens/s", flush=True)
    print(json.dumps({"model": args.model, "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
                      "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "results": rows}))


if __name__ == "__main__":
    main()
