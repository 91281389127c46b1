"""Write the task datasets' documents outside their test splits, for the demo model's vocabulary and corpus.

    python scripts/task_documents.py ../shared/data/tasks out.jsonl out.txt

out.jsonl: {"id", "abstract"} per document (biogpt corpus build); out.txt: one document per line (biogpt bpe learn).
"""

import json
import sys

from biogpt.tasks.texts import training_documents

tasks_dir, jsonl, txt = sys.argv[1:4]
with open(jsonl, "w", encoding="utf-8") as fj, open(txt, "w", encoding="utf-8") as ft:
    n = 0
    for doc_id, text in training_documents(tasks_dir):
        fj.write(json.dumps({"id": doc_id, "abstract": text}, ensure_ascii=False) + "\n")
        ft.write(" ".join(text.split()) + "\n")
        n += 1
print(f"{n} documents (no test-split document) -> {jsonl}, {txt}", file=sys.stderr)
