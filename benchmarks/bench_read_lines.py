"""Reading one long line without a newline: the extract readers' line splitter against the naive one that
appends each piece to what it holds and splits it all again (quadratic in the line's length).

    python benchmarks/bench_read_lines.py [--mb 2 4 8]

For each size, a file holding one line of that many MB and no newline is read both ways (the naive reader
with no cap, biogpt's with its cap raised above the line, so both return the same bytes); the lines are
checked equal, then the times and their ratio are printed.
"""

import argparse
import tempfile
import time
from pathlib import Path

from biogpt.mining.documents import open_binary


def naive_lines(path: Path) -> list[bytes]:
    """The reference: hold the unfinished line, add each piece, split the whole of it again."""
    out, rest = [], b""
    with open_binary(path) as f:
        while piece := f.read():
            rest += piece
            *complete, rest = rest.split(b"\n")
            out += [line + b"\n" for line in complete]
    return out + ([rest] if rest else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for mb in args.mb:
            path = Path(d) / f"line{mb}.txt"
            path.write_bytes(b"x" * (mb << 20))
            t = time.perf_counter()
            want = naive_lines(path)
            naive = time.perf_counter() - t
            t = time.perf_counter()
            with open_binary(path) as f:
                got = list(f.lines((mb + 1) << 20))
            ours = time.perf_counter() - t
            assert got == want
            print(f"{mb:4d} MB line: naive {naive:7.3f} s  biogpt {ours:7.3f} s  ({naive / ours:6.1f}x)")


if __name__ == "__main__":
    main()
