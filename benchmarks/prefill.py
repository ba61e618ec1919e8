"""A padded batch's prompt pass against prompts prefilled a row at a time (``runtime.engines.hf.prefill_rows``).

    .venv/bin/python benchmarks/prefill.py [--model smollm2-135m] [--task review] [--n 16] [--new-tokens 24]

The task's first --n test prompts, sorted by length, in batches of 8 (the hf engine's default), greedy, float32;
each way after a warm-up batch, side by side in one process, so the ratio holds on a noisy machine. The answers of
both ways are compared token for token.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime.config import TasksConfig, configs_dir, load_config
from runtime.engines.hf import generate_prefilled
from runtime.models import ModelStore
from runtime.tasks import load_items
from runtime.tasks.prompts import messages_for


def run(model, batches: list[dict], new_tokens: int, pad_id: int, by_row: bool) -> tuple[float, list[list[int]]]:
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    start, out = time.perf_counter(), []
    with torch.inference_mode():
        for inputs in batches:
            ids = generate_prefilled(model, inputs, **kwargs) if by_row else model.generate(**inputs, **kwargs)
            out += ids[:, inputs["input_ids"].shape[1]:].tolist()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="review")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    path = ModelStore().get(args.model).path
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    prompts = sorted((tokenizer.apply_chat_template(messages_for(tasks, args.task, it), add_generation_prompt=True,
                                                    tokenize=False) for it in load_items(args.task, "test", args.n)),
                     key=len)
    batches = [tokenizer(prompts[i:i + 8], return_tensors="pt", padding=True, add_special_tokens=False)
               for i in range(0, len(prompts), 8)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    run(model, batches[:1], 1, tokenizer.pad_token_id, True)  # warm-up
    rows = {}
    for new_tokens in (1, args.new_tokens):
        padded, a = run(model, batches, new_tokens, tokenizer.pad_token_id, False)
        by_row, b = run(model, batches, new_tokens, tokenizer.pad_token_id, True)
        same = sum(x == y for x, y in zip(a, b, strict=True))
        rows[new_tokens] = {"padded_s": round(padded, 1), "by_row_s": round(by_row, 1),
                            "ratio": round(padded / by_row, 2), "same_answers": same, "n": len(a)}
        print(f"new tokens {new_tokens:>3}: padded batch {padded:6.1f} s, rows prefilled {by_row:6.1f} s "
              f"({padded / by_row:.2f}x), identical answers {same}/{len(a)}", flush=True)
    print(json.dumps({"model": args.model, "task": args.task, "prompt_tokens": tokens, "threads":
                      torch.get_num_threads(), "torch": torch.__version__, "results": rows}))


if __name__ == "__main__":
    main()
