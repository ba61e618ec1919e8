"""One LoRA training step of the default recipe, alone: Qwen2.5-Coder-0.5B from the store (float32 weights, bf16
autocast, as ``training/sft.py`` loads it), r16 on every linear layer, AdamW, a batch of ``--rows`` rows of
``--tokens`` random tokens whose last ``--response`` are the answer (the loss's logits only there, as
``PadCollator(response_logits=True)`` asks). Prints the median of ``--steps`` steps after one warm-up, per
``--dropout`` value given, side by side in one process.

    .venv/bin/python benchmarks/train_step.py [--dropout 0.0 0.05] [--rows 4] [--tokens 300] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

from runtime.models import mixmerge_home


def timed(dropout: float, args) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(mixmerge_home() / "models" / args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20000, (args.rows, args.tokens), generator=generator)
    first = args.tokens - args.response
    labels = ids.clone()[:, first - 1:]
    labels[:, :1] = -100
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids),
                        logits_to_keep=labels.shape[1])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    line = (f"dropout {dropout}: {statistics.median(times):.2f} s a step of {args.rows} x {args.tokens} tokens "
            f"({statistics.median(times) / (args.rows * args.tokens) * 1000:.2f} ms a token)")
    if args.profile:
        with torch.profiler.profile() as prof:
            step()
        line += "\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--response", type=int, default=60)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    for dropout in args.dropout:
        print(timed(dropout, args), flush=True)


if __name__ == "__main__":
    main()
