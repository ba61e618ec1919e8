#!/bin/bash
# interleaved decode_step.py before (bf5970b) / after (b0aebc0): base, mix, four experts
export MIXMERGE_HOME=/work/runs/s21/home
E="qwen-lora-generation qwen-lora-summarization qwen-lora-completion qwen-lora-review"
for round in 1 2; do
for a in "" "qwen-lora-mix" "$E"; do
for w in before after; do
  echo "== round $round $w adapters: ${a:-none}"
  PYTHONPATH=/work/runs/s22/wt-$w /work/main/.venv/bin/python /work/runs/s22/wt-$w/benchmarks/decode_step.py --rows 16 --prefill 512 ${a:+--adapters $a} 2>&1 | grep -E "^prefill|^decode"
done; done; done
