#!/usr/bin/env bash
# GPU check of the training recipe (run where a GPU is available; CI has none): pre-train the base preset in
# bf16 on the task abstracts, kill it mid-run, resume, and check that the resumed run's losses equal an
# uninterrupted run's; prints tokens/s and MFU.
#   bash scripts/gpu_check.sh [PEAK_TFLOPS]     (default 989, an H100/H200's dense bf16 peak)
set -euo pipefail
TASKS=${TASKS:-../shared/data/tasks}
RUN=${RUN:-runs/gpu-check}
PEAK=${1:-989}
rm -rf "$RUN" && mkdir -p "$RUN"
python scripts/task_documents.py "$TASKS" "$RUN/docs.jsonl" "$RUN/docs.txt"
biogpt corpus build "$RUN/docs.jsonl" --vocab ../shared/data/vocab/biogpt --output "$RUN/corpus" --workers 4
common=(--corpus "$RUN/corpus" --vocab ../shared/data/vocab/biogpt --preset base --dtype bf16 --device cuda
        --max-updates 60 --warmup 10 --tokens-per-update 262144 --micro-batch-tokens 16384 --save-every 20
        --eval-every 60 --peak-tflops "$PEAK")
biogpt pretrain "${common[@]}" --output "$RUN/full" | tee "$RUN/full.log"
biogpt pretrain "${common[@]}" --output "$RUN/resumed" > "$RUN/first.log" 2>&1 &
pid=$!
until grep -q '"update": 30' "$RUN/first.log" 2>/dev/null; do sleep 1; done
sleep 2 && kill -9 "$pid" || true
biogpt pretrain "${common[@]}" --output "$RUN/resumed" | tee "$RUN/resumed.log"
python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
full = json.load(open(f"{run}/full/last/train_log.json"))
resumed = json.load(open(f"{run}/resumed/last/train_log.json"))
same = [a["loss"] == b["loss"] for a, b in zip(full, resumed)]
print(f"losses equal after resume: {sum(same)}/{len(same)}")
rates = [e for e in full if "tokens_per_s" in e]
print(f"tokens/s {rates[-1]['tokens_per_s']:.0f}, MFU {rates[-1].get('mfu', 0):.1%}")
PY
