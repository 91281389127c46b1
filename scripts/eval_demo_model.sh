#!/usr/bin/env bash
# The demo model's scores on every task's test split, beside a random-weights twin and constant-output
# baselines; the relation tasks with and without --grounded (parse and grounding rates too).
#   bash scripts/eval_demo_model.sh        -> runs/demo-eval/*.json and a table on stdout
set -euo pipefail
TASKS=${TASKS:-../shared/data/tasks}
RUN=${RUN:-runs/demo-eval}
mkdir -p "$RUN"
python scripts/demo_baselines.py "$TASKS" "$RUN"
for task in pubmedqa bc5cdr ddi kd-dti hoc; do
  biogpt eval "$task" --predictions "$RUN/constant-$task.txt" --data "$TASKS" --output "$RUN/constant-$task.json"
  for model in demo random; do
    path=$([ "$model" = demo ] && echo demo || echo "$RUN/random")
    biogpt eval "$task" --model "$path" --data "$TASKS" --batch-size 32 --output "$RUN/$model-$task.json" 2>/dev/null
    case "$task" in bc5cdr|ddi|kd-dti)
      biogpt eval "$task" --model "$path" --data "$TASKS" --batch-size 32 --grounded \
        --output "$RUN/$model-$task-grounded.json" 2>/dev/null ;;
    esac
  done
done
python - "$RUN" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
main = {"pubmedqa": "accuracy", "bc5cdr": "f1", "ddi": "doc_f1", "kd-dti": "doc_f1", "hoc": "micro_f1"}
print("| task (metric) | demo | demo --grounded | random weights | random --grounded | constant |")
print("|---|---|---|---|---|---|")
for task, key in main.items():
    def cell(name):
        p = run / f"{name}.json"
        if not p.exists():
            return "—"
        m = json.loads(p.read_text())["metrics"]
        extra = f" (parsed {m['parse_rate']:.0%}" + (f", grounded {m['grounding_rate']:.0%}" if "grounding_rate" in m else "") + ")"
        return f"{m[key]:.4f}{extra}"
    print(f"| {task} ({key}) | {cell('demo-' + task)} | {cell('demo-' + task + '-grounded')} | {cell('random-' + task)} "
          f"| {cell('random-' + task + '-grounded')} | {cell('constant-' + task)} |")
PY
