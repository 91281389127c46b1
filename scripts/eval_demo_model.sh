#!/usr/bin/env bash
# The demo model's scores on every task's test split, beside a random-weights twin and constant-output
# baselines; the relation tasks with and without --grounded (parse and grounding rates too).
#   bash scripts/eval_demo_model.sh        -> runs/demo-eval/*.json and a table on stdout
#   KEEP=1 bash scripts/eval_demo_model.sh -> only the evaluations whose report is missing, then the table
set -euo pipefail
TASKS=${TASKS:-../shared/data/tasks}
RUN=${RUN:-runs/demo-eval}
mkdir -p "$RUN"
# on this 2-core CPU the whole KD-DTI test split (1,159 abstracts) and the random model's free-running relation
# outputs (hundreds of tokens each) take too long: LIMIT_KD (300) and LIMIT_RANDOM_RE (100) cap them
LIMIT_KD=${LIMIT_KD:-300}
LIMIT_RANDOM_RE=${LIMIT_RANDOM_RE:-100}
python scripts/demo_baselines.py "$TASKS" "$RUN" "$LIMIT_KD"
for task in pubmedqa bc5cdr ddi kd-dti hoc; do
  for model in demo random; do
    path=$([ "$model" = demo ] && echo demo || echo "$RUN/random")
    limit=()
    [ "$task" = kd-dti ] && limit=(--limit "$LIMIT_KD")
    case "$model-$task" in random-bc5cdr|random-ddi|random-kd-dti) limit=(--limit "$LIMIT_RANDOM_RE") ;; esac
    for grounded in "" --grounded; do
      name="$model-$task${grounded:+-grounded}"
      [ -n "${KEEP:-}" ] && [ -f "$RUN/$name.json" ] && continue  # KEEP=1: only the reports not there yet
      biogpt eval "$task" --model "$path" --data "$TASKS" --batch-size 32 ${limit[@]+"${limit[@]}"} $grounded \
        --output "$RUN/$name.json" 2>/dev/null
    done
  done
  limit=()
  [ "$task" = kd-dti ] && limit=(--limit "$LIMIT_KD")
  biogpt eval "$task" --predictions "$RUN/constant-$task.txt" --data "$TASKS" ${limit[@]+"${limit[@]}"} \
    --output "$RUN/constant-$task.json"
done
python - "$RUN" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
main = {"pubmedqa": "accuracy", "bc5cdr": "f1", "ddi": "doc_f1", "kd-dti": "doc_f1", "hoc": "micro_f1"}
print("| task (metric) | n | demo | demo --grounded | random weights | random --grounded | constant output |")
print("|---|---|---|---|---|---|")
for task, key in main.items():
    n = json.loads((run / f"demo-{task}.json").read_text())["n"]

    def cell(name):
        p = run / f"{name}.json"
        if not p.exists():
            return "—"
        rep = json.loads(p.read_text())
        m = rep["metrics"]
        first = f"first {rep['n']}, " if rep["n"] != n else ""
        extra = f" ({first}parsed {m['parse_rate']:.0%}" + (f", grounded {m['grounding_rate']:.0%}" if "grounding_rate" in m else "") + ")"
        return f"{m[key]:.4f}{extra}"
    print(f"| {task} ({key}) | {n} | {cell('demo-' + task)} | {cell('demo-' + task + '-grounded')} | {cell('random-' + task)} "
          f"| {cell('random-' + task + '-grounded')} | {cell('constant-' + task)} |")
PY
