"""`biogpt eval`: run a task model on a benchmark split and score it as the original scorer, or score outputs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from biogpt.cli.args import (
    DEFAULT_DATA,
    FamilyTasks,
    add_model_options,
    check_task,
    data_dir,
    load_for_inference,
    positive_int,
    refuse_options,
    set_threads,
    writable_file,
)
from biogpt.errors import BioGPTError
from biogpt.mining.tasks import output_stats
from biogpt.tasks.pubmedqa import LABELS
from biogpt.tasks.templates import grammar


def _write_atomic(path: str, text: str) -> None:
    """Write a file whole or not at all: a failed write never leaves a half-written report."""
    tmp = Path(f"{path}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


SEQ2SEQ_OPTIONS = {"ema": False, "image_size": None, "answers": None, "inference": "beamsearch", "beam": None}
PROMPT_OPTIONS = {"grounded": False, "linked": False, "dictionary": [], "setting": None}


def cmd_eval(args: argparse.Namespace) -> int:
    """`biogpt eval TASK`: the task and the model's family decide how it runs. A task only encoder-decoder
    families have (BiomedGPT's) runs as cli/biomedgpt.py runs it; the others as below (a byte-level GPT-2 family
    model: the generative format)."""
    owners = check_task([args.task], "tasks", "eval")
    seq2seq = all(d.encoder_decoder for d in owners)
    refuse_options(args, PROMPT_OPTIONS if seq2seq else SEQ2SEQ_OPTIONS, args.task)
    if seq2seq:
        from biogpt.cli.biomedgpt import cmd_eval_biomedgpt

        return cmd_eval_biomedgpt(args)
    if args.split not in ("train", "valid", "test"):
        raise BioGPTError(f"--split {args.split[:40]!r}: {args.task} has the splits train, valid and test")
    args.data = args.data or DEFAULT_DATA
    return _eval_prompted(args)


def _eval_prompted(args: argparse.Namespace) -> int:
    """BioGPT's task models (prompt tokens) and GPT-2 family models on the BioGPT benchmarks."""
    from biogpt.tasks import get_task, predict, read_predictions, task_for_model

    if args.model and args.predictions:
        raise BioGPTError("give one of --model PATH (run inference) or --predictions FILE (score outputs)")
    writable_file(args.output, "--output")
    writable_file(args.save_outputs, "--save-outputs")
    if args.grounded and args.predictions:
        raise BioGPTError("--grounded constrains decoding; with --predictions nothing is generated")
    if args.linked and not args.grounded:
        raise BioGPTError("--linked restricts --grounded decoding's entity spans to dictionary names; add --grounded")
    if args.dictionary and not args.linked:
        raise BioGPTError("--dictionary is for --linked decoding here (the scorer maps names as the original does)")
    if args.save_outputs and args.predictions:
        raise BioGPTError("--save-outputs saves generated outputs; with --predictions nothing is generated")
    if args.setting is not None and args.task != "pubmedqa":
        raise BioGPTError(f"--setting applies to pubmedqa; {args.task} has one input format")
    if not args.predictions and _gpt2_model(args):
        return _eval_generative(args)
    args.setting = args.setting or "reasoning-free"  # BioGPT's paper setting
    options = {"setting": args.setting} if args.task == "pubmedqa" else {}
    model = tok = None
    if args.predictions:
        task = get_task(args.task, **options)
    else:
        set_threads(args.threads)
        model, tok = load_for_inference(args)
        task = task_for_model(args.task, model.config, **options)  # the settings this model was trained with
    examples = task.examples(data_dir(args.data), args.split)
    if args.limit is not None:
        examples = examples[: args.limit]
    if args.predictions:
        outputs = read_predictions(args.predictions, len(examples))
        if args.task == "pubmedqa":  # a GPT-2 model's saved outputs are bare labels: score them as its run did
            outputs = [task.target(o.strip()) if o.strip() in LABELS else o for o in outputs]
    else:
        is_name = _eval_linker(args)
        constraint = (lambda src: grammar(args.task, tok, src, is_name)) if args.grounded else None
        outputs = predict(task, model, tok, examples, batch_size=args.batch_size, constraint=constraint,
                          log=lambda m: print(f"  generated {m}", file=sys.stderr))  # fmt: skip
        if args.save_outputs:
            _write_atomic(args.save_outputs, "".join(o.replace("\n", " ") + "\n" for o in outputs))
    metrics = task.score([task.parse(o) for o in outputs], examples)
    metrics.update(output_stats(args.task, outputs, [ex.source for ex in examples]))
    report = {"task": args.task, "split": args.split, "n": len(examples), "metrics": metrics}
    if args.task == "pubmedqa":
        report["setting"] = args.setting
    if model is not None:
        report["settings"] = {"max_source_tokens": task.max_source_tokens, "max_length": task.max_length,
                              "num_prompt_tokens": task.num_prompt_tokens, "grounded": args.grounded,
                              "linked": args.linked}  # fmt: skip
    _print_report(args, report)
    return 0


def _eval_linker(args: argparse.Namespace):
    """`--linked`: the dictionary's name test for the grounded template's entity slots (the shipped default of
    the task, or `--dictionary` files), else None."""
    from biogpt.mining import linking

    if not args.linked:
        return None
    linker = linking.load(args.dictionary) if args.dictionary else linking.default_linker(args.task)
    if linker is None or args.task not in ("bc5cdr", "ddi", "kd-dti"):
        raise BioGPTError(f"--linked needs a relation task and a dictionary for it (--dictionary FILE); {args.task}")
    return linker.is_name


def _print_report(args: argparse.Namespace, report: dict) -> None:
    text = json.dumps(report, indent=2)
    if args.output:
        _write_atomic(args.output, text + "\n")
    if args.json:
        print(text)
    else:
        print(f"{args.task} ({args.split}, n={report['n']})")
        for k, v in report["metrics"].items():
            print(f"  {k:<18}{v:.4f}" if isinstance(v, float) else f"  {k:<18}{v}")


def _gpt2_model(args: argparse.Namespace) -> bool:
    """Whether --model is a GPT-2 family model (BioMedLM), told from its config without loading the weights."""
    from biogpt.api import family_for, is_demo

    return args.model is not None and not is_demo(args.model) and family_for(args.model).byte_level


def _eval_generative(args: argparse.Namespace) -> int:
    """PubMedQA in the generative format (tasks/pubmedqa_gpt2.py): the one task a GPT-2 family model has a format
    for; the answer is decoded greedily under the yes/no/maybe trie, so every output is a label."""
    from biogpt.tasks import pubmedqa_gpt2 as qa

    if args.task != "pubmedqa":
        raise BioGPTError(f"{args.task}: a GPT-2 family model (BioMedLM) has a format for pubmedqa only (the "
                          "generative `question: ... context: ... answer:` format); evaluate a BioGPT checkpoint "
                          f"fine-tuned for {args.task} instead")  # fmt: skip
    setting = args.setting or "reasoning-required"  # BioMedLM's PubMedQA format: the contexts without the long answer
    set_threads(args.threads)
    model, tok = load_for_inference(args)
    examples = qa.examples(data_dir(args.data), args.split, setting)
    if args.limit is not None:
        examples = examples[: args.limit]
    outputs = qa.predict(model, tok, examples, batch_size=args.batch_size)
    if args.save_outputs:
        _write_atomic(args.save_outputs, "".join(o + "\n" for o in outputs))
    metrics = {"accuracy": qa.score(outputs, examples)["accuracy"],
               "parse_rate": sum(o in qa.LABELS for o in outputs) / len(outputs) if outputs else 0.0}  # fmt: skip
    fmt = "question: Q context: C" + (" LONG_ANSWER" if setting == "reasoning-free" else "") + " answer:"
    report = {"task": args.task, "split": args.split, "n": len(examples), "metrics": metrics, "setting": setting,
              "settings": {"format": fmt, "constrained": True,
                           "max_prompt_tokens": model.config.max_positions - qa.ANSWER_ROOM}}  # fmt: skip
    _print_report(args, report)
    return 0


def add_parsers(sub) -> None:
    from biogpt.cli.biomedgpt import DATA_HELP, add_seq2seq_options

    p = sub.add_parser("eval", help="run a task model on a benchmark split and score it, or score outputs",
                       description="Run a task model (any family: the task and the model decide) on a benchmark "
                                   "split and score it as the original scorer, or score saved outputs.")  # fmt: skip
    p.add_argument("task", metavar="TASK", help=FamilyTasks("the task; each model family has its own", "tasks"))
    add_model_options(p)
    p.add_argument("--predictions", help="score these outputs instead (BioGPT tasks: one generated output per line, "
                                         "in split order; BiomedGPT tasks: the JSON lines --save-outputs wrote)")
    p.add_argument("--data", help=f"BioGPT tasks: folder with BC5CDR/ DDI/ KD-DTI/ HoC/ PubMedQA/ (default: "
                                  f"{DEFAULT_DATA}, relative to the current folder); BiomedGPT tasks: {DATA_HELP}")
    p.add_argument("--split", default="test", help="train, valid or test; BiomedGPT: the split file name in a --data "
                                                   "folder (default: %(default)s)")  # fmt: skip
    p.add_argument("--setting", choices=["reasoning-free", "reasoning-required"],
                   help="PubMedQA input: with the long answer or without (default: reasoning-free for BioGPT, the "
                        "paper's setting; reasoning-required for a GPT-2 model, BioMedLM's)")  # fmt: skip
    p.add_argument("--limit", type=positive_int, help="only the first N examples (default: the whole split)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per batch (default: %(default)s)")
    p.add_argument("--save-outputs", help="also write the generated outputs here")
    p.add_argument("--output", help="write the JSON report to this file")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table (also with "
                                                       "--output)")  # fmt: skip
    p.add_argument("--grounded", action="store_true",
                   help="decode within the task's template (entities from the source, its own labels)")  # fmt: skip
    p.add_argument("--linked", action="store_true",
                   help="with --grounded: entity slots hold only dictionary names of their type (bc5cdr: the "
                        "shipped BC5CDR train+dev dictionary, else --dictionary)")  # fmt: skip
    p.add_argument("--dictionary", action="append", default=[], metavar="FILE",
                   help="dictionaries for --linked (as biogpt extract --dictionary)")
    add_seq2seq_options(p)
    p.set_defaults(func=cmd_eval, needs_model_or_predictions=True)
