#!/usr/bin/env bash
# GPU check (run where a GPU is available; CI has none), one prepared script:
# 1. the training recipe: pre-train the base preset in bf16 on the task abstracts, kill it mid-run, resume, and
#    check that the resumed run's losses equal an uninterrupted run's; tokens/s and MFU;
# 2. decoding at batch 1, 16 and 64, bf16, biogpt eager and with the compiled step (CUDA graphs) against
#    transformers bf16 with SDPA attention, same weights, same run; `extract` documents/s (benchmarks/bench_gpu.py);
# 3. `biogpt serve --device cuda --dtype bf16 --compile` at 16 and 64 clients (benchmarks/bench_serve.py).
# Every figure is printed and written to $RUN/gpu_figures.json (the GPU table in docs/performance.md is made from it).
#   bash scripts/gpu_check.sh [PEAK_TFLOPS]     (default 989, an H100/H200's dense bf16 peak)
#   SKIP_TRAIN=1 bash scripts/gpu_check.sh      (parts 2 and 3 only)
set -euo pipefail
TASKS=${TASKS:-../shared/data/tasks}
RUN=${RUN:-runs/gpu-check}
PEAK=${1:-989}
rm -rf "$RUN" && mkdir -p "$RUN"
if [ -z "${SKIP_TRAIN:-}" ]; then
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
json.dump({"pretrain tokens_s": rates[-1]["tokens_per_s"], "pretrain mfu": rates[-1].get("mfu"),
           "losses equal after resume": f"{sum(same)}/{len(same)}"}, open(f"{run}/train_figures.json", "w"))
PY
fi
python benchmarks/bench_gpu.py --device cuda --batches 1 16 64 --json "$RUN/decode_figures.json"
python benchmarks/bench_serve.py --model random-base --dtype bf16 --device cuda --compile --threads 4 \
    --clients 16 64 --rounds 1 --json "$RUN/serve_figures.json"
python - "$RUN" <<'PY'
import json, os, sys
run = sys.argv[1]
figures = {}
for part in ("train", "decode", "serve"):
    path = f"{run}/{part}_figures.json"
    figures[part] = json.load(open(path)) if os.path.exists(path) else "not measured"
json.dump(figures, open(f"{run}/gpu_figures.json", "w"), indent=1)
print(json.dumps(figures, indent=1))
print(f"wrote {run}/gpu_figures.json")
PY
