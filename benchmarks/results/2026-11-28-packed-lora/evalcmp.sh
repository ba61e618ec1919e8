#!/bin/bash
# the mix's answers with float32 LoRA terms (bf5970b) and packed bf16 ones (68e228d): runtime eval, 48 items a task
export MIXMERGE_HOME=/work/runs/s21/home PIP_NO_CACHE_DIR=1
for w in before after; do
  echo "== $w $(date +%T)"
  cd /work/runs/s22/wt-$w && PYTHONPATH=/work/runs/s22/wt-$w /work/main/.venv/bin/runtime eval --model qwen2.5-coder-0.5b --adapter qwen-lora-mix --tasks completion,review,summarization --limit 48 --out /work/runs/s22/eval-mix-$w 2>&1 | grep -v "Warn\|warn" | tail -12
done
echo "end $(date +%T)"
