"""`biogpt embed`: one vector per document (mean or last-token pooling), into .npy, .parquet or .jsonl, resumable."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from biogpt.cli.args import add_model_options, check_inputs_and_output, input_files, positive_int, set_threads
from biogpt.errors import BioGPTError

FAULT_ENV = "BIOGPT_EMBED_PAUSE_AFTER"  # tests: "N:MARKER": after N committed chunks, create MARKER and wait


def _pause_hook():
    """A fault-injection point for the kill -9 test: once N chunks are committed, the run signals it (a marker
    file) and waits to be killed, so the test kills at a known point instead of guessing a time."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    n, marker = spec.split(":", 1)

    def hook(committed: int) -> None:
        if committed == int(n):
            Path(marker).write_text(str(committed))
            while True:
                time.sleep(1)

    return hook


def cmd_embed(args: argparse.Namespace) -> int:
    from biogpt.api import family_of
    from biogpt.cli.args import load_for_inference
    from biogpt.mining import embedding

    if args.dtype == "auto":
        args.dtype = "fp32"
    fmt = embedding.output_format(args.output, args.format)
    check_inputs_and_output(args, fmt, ".npy or .parquet")
    set_threads(args.threads)
    model, tok = load_for_inference(args)
    if family_of(model).encoder_decoder:
        raise BioGPTError(f"{args.model}: embeddings come from BioGPT and GPT-2 family models; this is BiomedGPT (OFA)")
    settings = {"command": "embed", "model": str(args.model), "dtype": args.dtype, "pooling": args.pooling,
                "normalize": not args.no_normalize, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
                "input_format": args.input_format}  # fmt: skip
    embedder = embedding.Embedder(model, tok, args.pooling, not args.no_normalize, args.batch_size)
    summary = embedding.run(args.input, args.output, fmt, embedder, settings, input_format=args.input_format,
                            chunk_size=args.chunk_size, strict=args.strict, progress=not args.quiet,
                            after_commit=_pause_hook())  # fmt: skip
    print(f"done: {summary.line()}" + ("" if args.output == "-" else f" -> {args.output}"), file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from biogpt.cli.args import load_for_inference
    from biogpt.generation.embed import embed
    from biogpt.mining import embedding

    if args.dtype == "auto":  # as biogpt embed: the query's vector in the precision the documents' default is
        args.dtype = "fp32"
    input_files([args.vectors])
    ids, vectors = embedding.read_vectors(args.vectors)
    if not args.query.strip():
        raise BioGPTError("the query is empty")
    set_threads(args.threads)
    model, tok = load_for_inference(args)
    if vectors.shape[1] != model.config.d_model:
        raise BioGPTError(f"{args.vectors} holds {vectors.shape[1]}-dimensional vectors; {args.model} makes "
                          f"{model.config.d_model}: embed the query with the model that embedded the documents")
    q = tok.encode(args.query)[: model.config.max_positions]
    query = embed(model, [q], args.pooling)[0].numpy()
    for rank, (row, sim) in enumerate(embedding.nearest(vectors, query, args.top_k), 1):
        print(f"{rank}\t{sim:.4f}\t{ids[row]}")
    return 0


def add_parsers(sub) -> None:
    from biogpt.mining.readers import FORMATS

    p = sub.add_parser("embed", help="one vector per document: pooled final hidden states, resumable")
    p.add_argument("input", nargs="+", help="PubMed XML(.gz), PubTator, BioC XML/JSON, JSONL or text files")
    add_model_options(p)
    p.add_argument("-o", "--output", required=True, help="output file: .npy (ids in OUT.ids.jsonl), .parquet or "
                   ".jsonl, or - for JSONL on standard output; OUTPUT.parts/ holds the resumable state")  # fmt: skip
    p.add_argument("--format", choices=["npy", "parquet", "jsonl"], help="output format (default: the extension)")
    p.add_argument("--input-format", choices=FORMATS, help="input format (default: recognised from the content)")
    p.add_argument("--pooling", choices=["mean", "last"], default="mean",
                   help="mean over the input's tokens (the leading </s> included) or the last token's state "
                        "(default: %(default)s)")  # fmt: skip
    p.add_argument("--no-normalize", action="store_true", help="keep the vectors' length (default: unit length)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="documents per forward (default: %(default)s)")
    p.add_argument("--chunk-size", type=positive_int, default=256,
                   help="documents per committed shard: the most a crash can lose (default: %(default)s)")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="stop at the first malformed record instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help="the documents whose vectors are nearest to a query (cosine similarity)")
    p.add_argument("vectors", help="what biogpt embed wrote: .npy (with its .ids.jsonl), .parquet or .jsonl")
    p.add_argument("query", help="the query text, embedded with the same model and pooling")
    add_model_options(p)
    p.add_argument("--pooling", choices=["mean", "last"], default="mean", help="as the documents were embedded")
    p.add_argument("-k", "--top-k", type=positive_int, default=5, help="how many to list (default: %(default)s)")
    p.set_defaults(func=cmd_search)
