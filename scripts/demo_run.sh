#!/usr/bin/env bash
# End to end on the 2-core CPU, on the abstracts of ../shared/data/tasks (under 30 minutes):
# learn BPE -> build corpus -> pre-train a small model -> fine-tune on HoC -> evaluate on the HoC test set.
# Note: the task abstracts include test documents, so this run demonstrates the pipeline, not a clean result.
set -euo pipefail
TASKS=${TASKS:-../shared/data/tasks}
RUN=${RUN:-runs/demo}
mkdir -p "$RUN"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "export the task abstracts as JSONL"
python -c "
import json, sys
from biogpt.tasks.texts import task_abstracts
with open('$RUN/abstracts.jsonl', 'w') as f:
    for i, a in enumerate(task_abstracts('$TASKS')):
        f.write(json.dumps({'id': i, 'title': '', 'abstract': a}) + '\n')
"
python -c "
import json
from biogpt.training.corpus import read_records
with open('$RUN/abstracts.txt', 'w') as f:
    for r in read_records('$RUN/abstracts.jsonl'):
        f.write(r.text + '\n')
"
stamp "learn BPE (16000 merges)"
biogpt bpe learn "$RUN/abstracts.txt" --output "$RUN/vocab" --merges 16000
stamp "build the corpus"
biogpt corpus build "$RUN/abstracts.jsonl" --vocab "$RUN/vocab" --output "$RUN/corpus" --workers 2 --valid-per-mille 20
stamp "pre-train (small preset, bf16 autocast)"
biogpt pretrain --corpus "$RUN/corpus" --vocab "$RUN/vocab" --output "$RUN/pretrain" --preset small --block 256 \
  --lr 1e-3 --warmup 20 --max-updates 120 --tokens-per-update 8192 --micro-batch-tokens 2048 --dtype bf16 \
  --eval-every 20 --save-every 40 | tee "$RUN/pretrain.log"
stamp "fine-tune on HoC"
biogpt finetune hoc --model "$RUN/pretrain/last" --data "$TASKS" --output "$RUN/hoc" --max-updates 40 --lr 5e-4 \
  --warmup 10 --tokens-per-update 8192 --micro-batch-tokens 2048 --dtype bf16 --average-last 1 | tee "$RUN/finetune.log"
stamp "evaluate on the HoC test set"
biogpt eval hoc --model "$RUN/hoc/final" --data "$TASKS" --batch-size 64 --output "$RUN/hoc_test.json"
python scripts/plot_curve.py "$RUN/pretrain/last/train_log.json" docs/demo_learning_curve.svg
stamp "done"
