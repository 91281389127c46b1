#!/usr/bin/env bash
# Builds the demo model embedded in the package (src/biogpt/demo/) with biogpt's own commands only, on the
# task datasets' documents outside their test splits (so the test scores stay honest):
#   bpe learn -> corpus build -> pretrain -> multi-task prompt fine-tuning (all five tasks, one model) -> average
# Seeds are fixed; the run records its time and versions in src/biogpt/demo/build.json.
#   bash scripts/build_demo_model.sh            (about 30 minutes on a 2-core CPU)
set -euo pipefail
TASKS=${TASKS:-../shared/data/tasks}
RUN=${RUN:-runs/demo-model}
OUT=${OUT:-src/biogpt/demo}
PRETRAIN_UPDATES=${PRETRAIN_UPDATES:-600}
FINETUNE_UPDATES=${FINETUNE_UPDATES:-400}
mkdir -p "$RUN"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "documents outside the test splits"
python scripts/task_documents.py "$TASKS" "$RUN/documents.jsonl" "$RUN/documents.txt"
stamp "learn BPE (8000 merges)"
biogpt bpe learn "$RUN/documents.txt" --output "$RUN/vocab" --merges 8000
stamp "build the corpus"
biogpt corpus build "$RUN/documents.jsonl" --vocab "$RUN/vocab" --output "$RUN/corpus" --workers 2 --valid-per-mille 20
# blocks of 512 tokens (a step costs about half what 1,024 would; every HoC sentence and most other sources fit,
# and fine-tuning trains the positions beyond) and many small updates at a high rate: a model this small learns
# far more per CPU minute that way (validation perplexity 192 after 600 updates of 4,096 tokens, against 1,035
# after 160 of 16,384 in blocks of 1,024 at 1e-3)
stamp "pre-train (demo preset: 4 layers, width 256, 1024 positions; blocks of 512; bf16 autocast)"
biogpt pretrain --corpus "$RUN/corpus" --vocab "$RUN/vocab" --output "$RUN/pretrain" --preset demo --block 512 \
  --lr 3e-3 --warmup 40 --max-updates "$PRETRAIN_UPDATES" --tokens-per-update 4096 --micro-batch-tokens 4096 \
  --dtype bf16 --eval-every 100 --save-every 100 --seed 1 --overwrite | tee "$RUN/pretrain.log"
stamp "multi-task fine-tuning: pubmedqa bc5cdr ddi kd-dti hoc, each with its own prompt tokens, target only"
biogpt finetune pubmedqa bc5cdr ddi kd-dti hoc --model "$RUN/pretrain/last" --data "$TASKS" --output "$RUN/finetune" \
  --max-updates "$FINETUNE_UPDATES" --lr 1.5e-3 --warmup 40 --tokens-per-update 8192 --micro-batch-tokens 2048 \
  --target-only --save-every 20 --average-last 3 --dtype bf16 --seed 1 --overwrite | tee "$RUN/finetune.log"
stamp "copy into the package"
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
cp "$RUN/finetune/final/"{model.safetensors,config.json,vocab.json,merges.txt,tokenizer_config.json,prompt_tokens.json} "$OUT.tmp/"
python - "$RUN" "$OUT.tmp" "$start" "$PRETRAIN_UPDATES" "$FINETUNE_UPDATES" <<'PY'
import json, platform, sys, time
import torch, biogpt
run, out, start, pre, ft = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
manifest = json.load(open(f"{run}/corpus/manifest.json"))
log = json.load(open(f"{run}/pretrain/last/train_log.json"))
ftlog = json.load(open(f"{run}/finetune/final/../last/train_log.json"))
build = {
    "seconds": int(time.time()) - start,
    "biogpt": biogpt.__version__, "torch": torch.__version__, "python": platform.python_version(),
    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    "corpus_tokens": {"train": sum(manifest["train"]), "valid": sum(manifest["valid"])},
    "corpus_documents": manifest["documents"],
    "pretrain_updates": pre, "finetune_updates": ft,
    "pretrain_last_loss": log[-1]["loss"], "pretrain_valid_loss": next((e["valid_loss"] for e in reversed(log) if "valid_loss" in e), None),
    "finetune_last_loss": ftlog[-1]["loss"],
}
json.dump(build, open(f"{out}/build.json", "w"), indent=1)
print(json.dumps(build))
PY
[ -f "$OUT/MODEL_CARD.md" ] && cp "$OUT/MODEL_CARD.md" "$OUT.tmp/"  # the card is written by hand from the scores
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
stamp "done: $(du -sh "$OUT" | cut -f1) in $OUT"
