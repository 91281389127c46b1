"""`biogpt serve`: the OpenAI-compatible server (needs the `serve` extra: pip install biogpt[serve]).

A BiomedGPT (OFA) model loads through `biogpt.load` too and answers /v1/completions (with an optional base64
`image`) one request at a time (serve/ofa.py).

SIGTERM (or Ctrl-C) drains: new requests and /health get 503, running requests finish for up to
--shutdown-timeout seconds, what is left is cancelled, and the process exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys

from biogpt.cli.args import add_model_options, load_for_inference, nonneg_float, positive_int, set_threads
from biogpt.errors import BioGPTError


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from biogpt.serve import create_app
        from biogpt.serve.server import run
    except ImportError as e:
        need = f"biogpt serve needs the serve extra ({e.name} is missing): pip install 'biogpt[serve]'"
        raise BioGPTError(need) from e
    api_key = args.api_key if args.api_key is not None else os.environ.get("BIOGPT_API_KEY")
    if api_key is not None and not api_key.strip():  # an empty key would let every client in
        where = "--api-key" if args.api_key is not None else "$BIOGPT_API_KEY"
        raise BioGPTError(f"{where} is empty: give a key, or leave it out to serve without authentication")
    dictionaries = _dictionaries(args.dictionary)
    set_threads(args.threads)
    name = args.served_model_name or str(args.model or "demo")
    info = {"name": name, "sha256": "", "dtype": args.dtype}  # /v1/extract's records, as `biogpt extract` writes

    def loader():
        from biogpt.checkpoints.io import weights_sha256

        loaded = load_for_inference(args)
        info["sha256"] = weights_sha256(args.model)
        return loaded

    app = create_app(loader=loader, model_name=name, api_key=api_key, model_info=info,
                     max_batch=args.max_concurrency, max_queue=args.max_queue, prefill_chunk=args.prefill_chunk,
                     max_len=args.max_model_len, max_body=args.max_body_mb * (1 << 20),
                     dictionaries=dictionaries)  # fmt: skip
    print(f"serving {name} on http://{args.host}:{args.port} (OpenAI API under /v1)", file=sys.stderr)
    load_error = run(app, args.host, args.port, args.shutdown_timeout, args.log_level)
    if load_error is not None:
        raise BioGPTError(f"{name}: {load_error}; the server stopped")
    return 0


def _dictionaries(specs: list[str]) -> dict:
    """`NAME=FILE` (or `FILE`, named by its file name up to the first dot) -> a linker, loaded before serving;
    requests name them, never paths."""
    from biogpt.mining.linking import load

    out = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or os.path.basename(path).split(".")[0]
        if not name or name in out:
            raise BioGPTError(f"--dictionary {spec}: give each dictionary its own name (NAME=FILE)")
        out[name] = load([path])
    return out


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching",
                       description="Serve a model over the OpenAI completions API (plus /v1/extract, /tokenize, "
                                   "/metrics). SIGTERM drains: 503 to new requests, running ones finish.")  # fmt: skip
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` (default: $BIOGPT_API_KEY, else none)")
    p.add_argument("--served-model-name", help="the model id clients send (default: the --model value)")
    p.add_argument("--max-concurrency", type=positive_int, default=32,
                   help="sequences decoded together: rows of the batch cache (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-model-len", type=positive_int,
                   help="tokens per sequence, prompt + output; the batch cache holds max-concurrency x this many "
                        "(default: the model's positions)")  # fmt: skip
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="sequences waiting for a row before new requests get 429 (default: %(default)s)")  # fmt: skip
    p.add_argument("--prefill-chunk", type=positive_int, default=256,
                   help="prompt tokens prefilled per step (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-body-mb", type=positive_int, default=1, help="request body limit in MiB (default: 1)")
    p.add_argument("--shutdown-timeout", type=nonneg_float, default=30.0,
                   help="seconds running requests get to finish after SIGTERM (default: %(default)s)")  # fmt: skip
    p.add_argument("--dictionary", action="append", default=[], metavar="[NAME=]FILE",
                   help="a linking dictionary /v1/extract requests may name (repeatable; NAME defaults to the file "
                        "name up to its first dot)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
