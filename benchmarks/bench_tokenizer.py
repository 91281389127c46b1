"""Tokenizer throughput: biogpt.Tokenizer against transformers.BioGptTokenizer, side by side in one process.

    python benchmarks/bench_tokenizer.py [--vocab ../shared/data/vocab/biogpt] [--tasks ../shared/data/tasks]

Both tokenizers are built fresh from the same vocabulary (cold caches) and encode the same documents
(title + abstract of every document in the task files); the ids are checked equal, then the ratio of
throughputs is printed. A second, warm pass (caches filled) is reported too. Rounds alternate between
the two tokenizers so machine noise hits both alike.
"""

import argparse
import tempfile
import time
from pathlib import Path

from biogpt import Tokenizer
from biogpt.tasks.texts import task_abstracts

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, docs):
    t = time.perf_counter()
    out = [fn(d) for d in docs]
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=str(ROOT.parent / "shared/data/vocab/biogpt"))
    ap.add_argument("--tasks", default=str(ROOT.parent / "shared/data/tasks"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from transformers import BioGptTokenizer

    docs = list(task_abstracts(args.tasks))
    n_chars = sum(map(len, docs))
    hf_dir = tempfile.mkdtemp()
    Tokenizer.from_pretrained(args.vocab).save_pretrained(hf_dir)
    print(f"{len(docs)} documents, {n_chars / len(docs):.0f} characters each on average; vocab {args.vocab}")

    results: dict[str, dict[str, list[float]]] = {name: {"cold": [], "warm": []} for name in ("biogpt", "transformers")}
    n_ids = 0
    for _ in range(args.rounds):
        ours = Tokenizer.from_pretrained(args.vocab)
        ref = BioGptTokenizer(f"{hf_dir}/vocab.json", f"{hf_dir}/merges.txt")
        for name, fn in (("biogpt", ours.encode), ("transformers", lambda d, ref=ref: ref(d)["input_ids"])):
            for phase in ("cold", "warm"):
                secs, out = timed(fn, docs)
                results[name][phase].append(secs)
                if name == "biogpt":
                    expected = out
                elif out != expected:
                    raise SystemExit("ids differ between biogpt and transformers")
        n_ids = sum(map(len, expected))

    print(f"{'tokenizer':<14}{'pass':<6}{'docs/s':>10}{'ids/s':>12}")
    for name, phases in results.items():
        for phase, times in phases.items():
            best = min(times)
            print(f"{name:<14}{phase:<6}{len(docs) / best:>10.0f}{n_ids / best:>12.0f}")
    for phase in ("cold", "warm"):
        ratio = min(results["transformers"][phase]) / min(results["biogpt"][phase])
        print(f"speed-up ({phase}): {ratio:.1f}x")


if __name__ == "__main__":
    main()
