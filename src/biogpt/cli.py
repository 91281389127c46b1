"""The `biogpt` command line: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys


def cmd_tokenize(args: argparse.Namespace) -> int:
    from biogpt.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.vocab, lowercase=args.lowercase)
    out = sys.stdout
    for line in sys.stdin:
        text = line.rstrip("\n").rstrip("\r")
        if args.decode:
            try:
                ids = [int(x) for x in text.split()]
            except ValueError:
                raise SystemExit(f"error: --decode expects lines of integer ids, got {text[:60]!r}") from None
            out.write(tok.decode(ids) + "\n")
        elif args.tokens:
            out.write(" ".join(tok.tokens(text)) + "\n")
        elif args.offsets:
            ids, spans = tok.encode_with_offsets(text)
            out.write(" ".join(f"{i}:{a}-{b}" for i, (a, b) in zip(ids, spans)) + "\n")
        else:
            out.write(" ".join(map(str, tok.encode(text))) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="biogpt", description="BioGPT, exact and fast, without fairseq.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenize", help="text lines on stdin -> one line of ids (or tokens) per line")
    p.add_argument("--vocab", required=True, help="directory with dict.txt + bpecodes, or vocab.json + merges.txt")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tokens", action="store_true", help="print BPE pieces (fairseq spelling) instead of ids")
    mode.add_argument("--offsets", action="store_true", help="print id:start-end character spans")
    mode.add_argument("--decode", action="store_true", help="read lines of ids and print their text")
    p.add_argument("--lowercase", action="store_true", help="lowercase the input first (as some task pipelines did)")
    p.set_defaults(func=cmd_tokenize)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from biogpt.tokenizer import VocabError

    try:
        return args.func(args)
    except VocabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `biogpt ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
