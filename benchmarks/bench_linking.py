"""Linker speed: loading a dictionary of N names (TSV) and linking mentions on one core, against the targets
(1M names in seconds, at least 100k mentions/s).

    python benchmarks/bench_linking.py [--names 1000000] [--mentions 200000]

Wall and CPU time are both printed (one thread). The dictionary is synthetic (names like `compound 123456
acid`, two types, MeSH-shaped ids) and written to a temporary TSV first; the mentions mix exact hits, names
that link only after normalisation (Moses spacing and case: `COMPOUND 123 - acid`), and misses, a third each.
Every link is checked against the name it came from.
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

from biogpt.mining.linking import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--mentions", type=int, default=200_000)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "names.tsv"
        with open(path, "w", encoding="utf-8") as f:
            for i in range(args.names):
                kind = "Chemical" if i % 2 else "Disease"
                f.write(f"compound {i} {'acid' if i % 2 else 'syndrome'}-{i % 97}\t{kind}\tD{i:06d}\n")
        t, c = time.perf_counter(), time.process_time()
        linker = load([path])
        load_s, load_cpu = time.perf_counter() - t, time.process_time() - c
    mentions = []
    for _ in range(args.mentions):
        i, way = rng.randrange(args.names), rng.randrange(3)
        kind, word = ("Chemical", "acid") if i % 2 else ("Disease", "syndrome")
        name = [f"compound {i} {word}-{i % 97}", f"COMPOUND {i} {word} - {i % 97}", f"unknown {i} {word}"][way]
        mentions.append((name, kind, None if way == 2 else f"D{i:06d}"))
    t, c = time.perf_counter(), time.process_time()
    links = [linker.link(name, kind) for name, kind, _ in mentions]
    link_s, link_cpu = time.perf_counter() - t, time.process_time() - c
    assert [x.id for x in links] == [want for _, _, want in mentions], "a link differs from its name's id"
    # CPU time beside wall time: on a shared machine the wall time includes waiting for a core
    print(f"load: {linker.names:,} names in {load_s:.2f} s wall, {load_cpu:.2f} s CPU (target: seconds)")
    print(f"link: {len(mentions):,} mentions in {link_s:.2f} s wall, {link_cpu:.2f} s CPU = "
          f"{len(mentions) / link_s:,.0f} mentions/s wall, {len(mentions) / link_cpu:,.0f}/s CPU, one core "
          "(target >= 100,000/s)")


if __name__ == "__main__":
    main()
