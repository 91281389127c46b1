"""`biogpt extract`: a task model over documents, into JSONL, BioC XML/JSON or PubTator, resumable."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

from biogpt.cli.args import add_model_options, check_inputs_and_output, positive_int, set_threads, writable_file
from biogpt.errors import BioGPTError

_worker = None


def _build_extractor(args: argparse.Namespace, progress_note: bool):
    import biogpt
    from biogpt.api import family_of
    from biogpt.checkpoints.io import weights_sha256
    from biogpt.cli.args import load_for_inference
    from biogpt.mining import Extractor
    from biogpt.mining.generative import GenerativeExtractor

    linker = _linker(args)
    model, tok = load_for_inference(args)
    info = {"name": str(args.model), "sha256": weights_sha256(args.model), "dtype": args.dtype}
    if family_of(model).byte_level:  # BioMedLM: PubMedQA in the generative format
        ex = GenerativeExtractor(model, tok, args.task, batch_size=args.batch_size, model_info=info)
    else:
        ex = Extractor(model, tok, args.task, grounded=args.grounded, num_beams=args.num_beams,
                       batch_size=args.batch_size, model_info=info, linker=linker, linked=args.linked)  # fmt: skip
    if progress_note:
        print(f"model: {args.model} ({info['sha256'][:12]}), task {args.task}, biogpt {biogpt.__version__}",
              file=sys.stderr)  # fmt: skip
    return ex


def _linker(args: argparse.Namespace):
    """The dictionaries of `--dictionary` (they replace the task's default), the task's shipped default, or
    None (`--no-link`, or a task without one)."""
    from biogpt.mining import linking

    if args.no_link:
        return None
    if args.dictionary:
        return linking.load(args.dictionary, fallback=not args.exact_links)
    return linking.default_linker(args.task, fallback=not args.exact_links)


def _check_linking(args: argparse.Namespace) -> None:
    """Linking options that contradict each other, and dictionary files, are refused before the model loads."""
    if args.no_link and (args.dictionary or args.linked or args.exact_links):
        raise BioGPTError("--no-link turns linking off; drop --dictionary, --linked and --exact-links with it")
    if args.linked and not args.grounded:
        raise BioGPTError("--linked restricts --grounded decoding's entity spans to dictionary names; add --grounded")
    if args.linked and not args.dictionary and args.task != "bc5cdr":
        raise BioGPTError(f"--linked needs a dictionary for --task {args.task} (--dictionary FILE)")
    for path in args.dictionary:
        if not Path(path).is_file():
            raise BioGPTError(f"--dictionary {path}: file not found")


def _init_worker(args: argparse.Namespace) -> None:
    global _worker
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    torch.set_num_threads(max(1, (args.threads or torch.get_num_threads()) // args.workers))
    _worker = _build_extractor(args, False)


def _work(item):
    key, docs, problems = item  # docs None: a chunk an earlier run finished
    return key, None if docs is None else _worker.extract(docs), problems


def output_format(args: argparse.Namespace) -> str:
    from biogpt.mining.writers import EXTENSIONS

    if args.format:
        return args.format
    if args.output == "-":
        return "jsonl"
    fmt = EXTENSIONS.get(Path(args.output).suffix.lower())
    if fmt is None:
        raise BioGPTError(f"cannot tell the output format from {args.output!r}; pass --format "
                          "(jsonl, bioc-xml, bioc-json or pubtator)")  # fmt: skip
    return fmt


def cmd_extract(args: argparse.Namespace) -> int:
    import biogpt
    from biogpt.api import DEMO
    from biogpt.mining import pipeline
    from biogpt.mining.aggregate import Aggregate

    if args.dtype == "auto":  # the fastest mode the tests show equal to fp32 on the tasks: fp32 itself (bf16
        args.dtype = "fp32"  # and int8 change some demo-model outputs: tests/test_demo.py)
    fmt = output_format(args)
    check_inputs_and_output(args, fmt, "other formats")
    if args.summary is not None:
        writable_file(args.summary, "--summary")
    _check_linking(args)
    _check_gpt2(args)
    set_threads(args.threads)
    settings = {"task": args.task, "model": str(args.model), "dtype": args.dtype, "grounded": args.grounded,
                "num_beams": args.num_beams, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
                "input_format": args.input_format, "weights": _weights_fingerprint(args.model),
                "no_link": args.no_link, "linked": args.linked, "exact_links": args.exact_links,
                "dictionary": [str(Path(p).resolve()) for p in args.dictionary]}  # fmt: skip
    model_name = str(args.model) if args.model is not None else DEMO  # the default is named as the records name it
    infons = {"task": args.task, "model": model_name, "biogpt_version": biogpt.__version__}
    extract, map_chunks, stream, pool = None, None, None, None
    if args.ray is not None:
        from biogpt.mining.ray import ray_stream

        stream = ray_stream(args, _build_extractor)
    elif args.workers > 1:
        pool = mp.get_context("spawn").Pool(args.workers, initializer=_init_worker, initargs=(args,))
        map_chunks = lambda items: pool.imap(_work, items)  # noqa: E731  (ordered: shards are committed in order)
    else:
        extract = _build_extractor(args, True).extract
    agg = Aggregate()
    try:
        summary = pipeline.run(args.input, args.output, fmt, extract, settings, infons, input_format=args.input_format,
                               chunk_size=args.chunk_size, strict=args.strict, progress=not args.quiet,
                               map_chunks=map_chunks, stream=stream, on_record=agg.add)  # fmt: skip
    except BaseException:
        if pool is not None:
            pool.terminate()  # never wait for workers on Ctrl-C or an error
        raise
    if pool is not None:
        pool.close()
        pool.join()
    if args.summary is not None:
        _write_atomically(Path(args.summary), agg.tsv())
    for problem in summary.problems[:20]:
        print(f"  malformed: {problem}", file=sys.stderr)
    if len(summary.problems) > 20:
        print(f"  ... and {len(summary.problems) - 20} more malformed records", file=sys.stderr)
    print(f"done: {summary.line()}" + ("" if args.output == "-" else f" -> {args.output}"), file=sys.stderr)
    return 0


def _weights_fingerprint(model: str | None) -> list[dict]:
    """Each weight file's fingerprint (size, mtime, hash of its ends): a resumed run must use the same weights,
    and hashing a 10 GB checkpoint whole here would cost as much as loading it."""
    from biogpt.api import DEMO
    from biogpt.checkpoints.io import WEIGHT_FILES, resolve
    from biogpt.mining.pipeline import fingerprint

    p = resolve(DEMO if model is None else model)
    files = [p] if p.is_file() else sorted({f for pattern in WEIGHT_FILES for f in p.glob(pattern)})
    return [{"name": f.name, **fingerprint(f)} for f in files]


def _write_atomically(path: Path, text: str) -> None:
    """Written under a temporary name, then renamed: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _check_gpt2(args: argparse.Namespace) -> None:
    """A GPT-2 family model (BioMedLM) answers PubMedQA only, greedily under the label trie: other requests are
    refused before the model is loaded."""
    from biogpt.api import family_for, is_demo

    if args.model is None or is_demo(args.model) or not family_for(args.model).byte_level:
        return
    if args.task != "pubmedqa":
        raise BioGPTError(f"--task {args.task}: a GPT-2 family model (BioMedLM) has a format for pubmedqa only; use "
                          "--task pubmedqa, or a BioGPT checkpoint fine-tuned for that task")  # fmt: skip
    if args.num_beams != 1:
        raise BioGPTError("--num-beams: a GPT-2 family model's PubMedQA answers are decoded greedily under the "
                          "yes/no/maybe trie; leave --num-beams at 1")  # fmt: skip


def add_parsers(sub) -> None:
    from biogpt.mining.readers import FORMATS
    from biogpt.mining.writers import OUTPUT_FORMATS

    p = sub.add_parser("extract", help="a task model over documents: grounded relations, answers or labels")
    p.add_argument("input", nargs="+", help="PubMed XML(.gz), PubTator, BioC XML/JSON, JSONL or text files")
    p.add_argument("--task", required=True, choices=["bc5cdr", "ddi", "kd-dti", "hoc", "pubmedqa"])
    add_model_options(p)
    p.add_argument("-o", "--output", required=True, help="output file (its extension gives the format), or - for "
                   "JSONL on standard output; OUTPUT.parts/ holds the resumable state until the run ends")  # fmt: skip
    p.add_argument("--format", choices=OUTPUT_FORMATS, help="output format (default: from the extension: .jsonl, "
                   ".xml = bioc-xml, .json = bioc-json, .pubtator/.txt = pubtator)")  # fmt: skip
    p.add_argument("--input-format", choices=FORMATS, help="input format (default: recognised from the content)")
    p.add_argument("--grounded", action="store_true",
                   help="decode within the task's template: entities only from spans of the text, relation words "
                        "from the task's labels")  # fmt: skip
    p.add_argument("--num-beams", type=positive_int, default=1,
                   help="1: greedy, as the original (default: %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=8, help="documents per batch (default: %(default)s)")
    p.add_argument("--chunk-size", type=positive_int, default=64,
                   help="documents per committed shard: the most a crash can lose (default: %(default)s)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes, each with its own model, sharing the threads (default: %(default)s: one model, "
                        "all threads)")  # fmt: skip
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run on a Ray cluster (pip install 'biogpt[ray]'); ADDRESS as ray.init takes it "
                        "(default: auto, or a new local instance)")  # fmt: skip
    p.add_argument("--dictionary", action="append", default=[], metavar="FILE",
                   help="names -> identifiers (repeatable; earlier files win; they replace the task's default): "
                        "BioGPT's *.entities.json, a TSV name<TAB>type<TAB>identifier, or a PubTator file "
                        "(default for bc5cdr: the shipped BC5CDR train+dev MeSH dictionary)")  # fmt: skip
    p.add_argument("--no-link", action="store_true", help="no identifiers: every entity keeps id null")
    p.add_argument("--exact-links", action="store_true",
                   help="link names exactly (up to case and spacing), as `biogpt eval` maps them; no fallback")
    p.add_argument("--linked", action="store_true",
                   help="with --grounded: an entity slot holds only a span of the text that is a dictionary name "
                        "of the slot's type (where the text has one)")  # fmt: skip
    p.add_argument("--summary", metavar="TSV", help="also write one row per (head id, relation, tail id) across "
                   "all documents: documents, best score, PMIDs, sorted by support")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="stop at the first malformed record instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)
