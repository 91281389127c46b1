"""Constant-output baselines and a random-weights twin of the demo model, for its score table.

    python scripts/demo_baselines.py ../shared/data/tasks OUT_DIR [KD_DTI_LIMIT]

Writes OUT_DIR/constant-TASK.txt (one line per test example: the same output for every example, the one a
majority or most-frequent guess gives, as the original pipeline would print it) and OUT_DIR/random/ (the demo
model's architecture, vocabulary and prompt tokens with freshly initialised weights, seed 0).
"""

import sys
from collections import Counter
from pathlib import Path

import torch

import biogpt
from biogpt.checkpoints import save_hf
from biogpt.models.biogpt import BioGPT
from biogpt.tasks import get_task

tasks_dir, out = sys.argv[1], Path(sys.argv[2])
limits = {"kd-dti": int(sys.argv[3])} if len(sys.argv) > 3 else {}  # the first N test examples only
out.mkdir(parents=True, exist_ok=True)
train_split = {"kd-dti": "valid"}  # KD-DTI's train file was never released
for name in ("pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc"):
    task = get_task(name)
    train = task.examples(tasks_dir, train_split.get(name, "train"))
    if name in ("bc5cdr", "ddi", "kd-dti"):
        # the most frequent single relation statement of the training targets
        counts = Counter(part.strip().rstrip(".") for ex in train for part in ex.target.split(";"))
        line = counts.most_common(1)[0][0] + "."
    else:
        line = Counter(ex.target for ex in train).most_common(1)[0][0]  # the majority answer / label set
    n = min(len(task.examples(tasks_dir, "test")), limits.get(name, 10**9))
    (out / f"constant-{name}.txt").write_text((line + "\n") * n)
    print(f"{name}: constant output {line!r} x {n}")

model, tok = biogpt.load("demo")
torch.manual_seed(0)
rnd = BioGPT(model.config)
rnd.init_weights(seed=0)
save_hf(rnd.eval(), tok, out / "random")
print(f"random twin: {out / 'random'}")
