"""`biogpt tokenize` and `biogpt bpe learn`."""

from __future__ import annotations

import argparse
import sys
import time

from biogpt.cli.args import input_files, positive_int, writable_dir
from biogpt.errors import BioGPTError


def _stdin_lines():
    """Lines of standard input as text; a line that is not UTF-8 is an error naming it, never `<unk>`s."""
    for n, raw in enumerate(sys.stdin.buffer, 1):
        try:
            yield raw.decode("utf-8").rstrip("\n").rstrip("\r")
        except UnicodeDecodeError as e:
            raise BioGPTError(f"standard input line {n} is not UTF-8 ({e.reason} at byte {e.start}); "
                              "convert it first (e.g. iconv -t utf-8)") from None  # fmt: skip


def cmd_tokenize(args: argparse.Namespace) -> int:
    from biogpt.text import Tokenizer

    tok = Tokenizer.from_pretrained(args.vocab, lowercase=args.lowercase)
    out = sys.stdout
    for n, text in enumerate(_stdin_lines(), 1):
        if args.decode:
            try:
                ids = [int(x) for x in text.split()]
            except ValueError:
                raise BioGPTError(f"--decode expects lines of integer ids; line {n} is {text[:60]!r}") from None
            out.write(tok.decode(ids) + "\n")
        elif args.tokens:
            out.write(" ".join(tok.tokens(text)) + "\n")
        elif args.offsets:
            ids, spans = tok.encode_with_offsets(text)
            out.write(" ".join(f"{i}:{a}-{b}" for i, (a, b) in zip(ids, spans)) + "\n")
        else:
            out.write(" ".join(map(str, tok.encode(text))) + "\n")
    return 0


def cmd_bpe_learn(args: argparse.Namespace) -> int:
    from biogpt.text import moses
    from biogpt.training.bpe_learn import learn

    input_files(args.input)
    writable_dir(args.output, "--output")

    def lines():
        for path in args.input:
            with open(path, "rb") as f:
                for n, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        why = f"{path} line {n} is not UTF-8 ({e.reason}); convert the file first"
                        raise BioGPTError(why) from None
                    yield line if args.pretokenized else " ".join(moses.tokenize(line))

    t = time.perf_counter()
    vocab = learn(lines(), args.output, num_merges=args.merges, min_frequency=args.min_frequency)
    secs = time.perf_counter() - t
    print(f"wrote {args.output}/bpecodes ({len(vocab.merges)} merges) and dict.txt ({len(vocab.pieces) - 4} "
          f"tokens) in {secs:.1f}s")  # fmt: skip
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("tokenize", help="text lines on stdin -> one line of ids (or tokens) per line")
    p.add_argument("--vocab", required=True, help="folder with dict.txt + bpecodes, or vocab.json + merges.txt")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tokens", action="store_true", help="print BPE pieces (fairseq spelling) instead of ids")
    mode.add_argument("--offsets", action="store_true", help="print id:start-end character spans")
    mode.add_argument("--decode", action="store_true", help="read lines of ids and print their text")
    p.add_argument("--lowercase", action="store_true", help="lowercase the input first (as some task pipelines did)")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("bpe", help="vocabulary tools")
    bsub = p.add_subparsers(dest="bpe_command", required=True)
    q = bsub.add_parser("learn", help="learn BPE merges and a dictionary (bpecodes + dict.txt)")
    q.add_argument("input", nargs="+", help="UTF-8 text files, one document or sentence per line")
    q.add_argument("--output", required=True, help="folder for bpecodes and dict.txt")
    q.add_argument("--merges", type=positive_int, default=40000,
                   help="number of merges (default: %(default)s, BioGPT's; BioGPT-Large: 50000)")  # fmt: skip
    q.add_argument("--min-frequency", type=positive_int, default=2,
                   help="stop when the best pair occurs fewer times than this (default: %(default)s)")  # fmt: skip
    q.add_argument("--pretokenized", action="store_true", help="the input already went through Moses")
    q.set_defaults(func=cmd_bpe_learn)
