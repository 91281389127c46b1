"""`biogpt extract --workers N` (N processes, each with its own model and threads/N threads) against one
process using all threads, on the same documents, side by side in one run.

    python benchmarks/bench_workers.py [--docs 64] [--threads 2] [--model demo] [--task bc5cdr]

Runs the `biogpt extract` command itself (BC5CDR test abstracts as JSONL, greedy, --grounded) once per setting,
checks that every setting generated the same outputs (log-probabilities may differ in the last digits: the
thread count per process changes the order of float sums), and prints documents/s and the ratio to one
process. On a machine shared with other work, a process with several threads suffers most (its threads wait
for each other): run it on a quiet machine.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT.parent / "shared" / "data" / "tasks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--task", default="bc5cdr")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: %(default)s)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    docs = list(json.loads((TASKS / "BC5CDR" / "test.json").read_text()).items())[: args.docs]
    inp = work / "docs.jsonl"
    inp.write_text("".join(json.dumps({"id": k, "title": d["title"], "abstract": d["abstract"]}) + "\n"
                           for k, d in docs))  # fmt: skip
    print(f"model {args.model}, task {args.task}, {len(docs)} BC5CDR test abstracts, --grounded, {args.threads} "
          "threads in all")  # fmt: skip
    base, first = None, None
    for w in (int(x) for x in args.workers.split(",")):
        out = work / f"out-{w}.jsonl"
        cmd = [sys.executable, "-m", "biogpt.cli", "extract", "--task", args.task, "--model", args.model, str(inp),
               "-o", str(out), "--grounded", "--quiet", "--threads", str(args.threads), "--workers", str(w),
               "--chunk-size", "16"]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        secs = time.perf_counter() - t0  # end to end, model loading included (once per worker)
        data = [json.loads(line)["output"] for line in out.read_text().splitlines()]
        first = first or data
        base = base or secs
        same = "same output" if data == first else "OUTPUT DIFFERS"
        print(f"--workers {w}: {len(docs) / secs:.2f} docs/s ({secs:.1f} s), {base / secs:.2f}x vs one process; "
              f"{same}")  # fmt: skip


if __name__ == "__main__":
    main()
