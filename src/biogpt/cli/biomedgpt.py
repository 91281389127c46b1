"""BiomedGPT (OFA) on the command line: `biogpt generate --image`, and `biogpt eval TASK` for the encoder-decoder
tasks (MeQSum summaries, VQA, NLI, MedMNIST classification, report captions) with the original's templates,
decoding settings and metrics (tasks/biomedgpt.py); `eval-biomedgpt` is that verb's old name, kept as an alias."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from biogpt import jsonfile
from biogpt.cli.args import (
    add_model_options,
    deprecated,
    input_files,
    load_for_inference,
    positive_int,
    set_threads,
    writable_file,
)
from biogpt.errors import BioGPTError

if TYPE_CHECKING:
    from biogpt.tasks.biomedgpt import Decoding

DEFAULT_MEQSUM = "../shared/data/biomedgpt/tasks/MeQSum"  # the project's layout: shared data beside the repo
TASKS = ("meqsum", "vqa", "nli", "medmnist", "caption")
NLI_LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe", "yes": "yes", "no": "no",
              "maybe": "maybe"}  # fmt: skip


def is_ofa_model(args: argparse.Namespace) -> bool:
    """Whether --model names an encoder-decoder (BiomedGPT) checkpoint (no --model: the demo, a BioGPT model)."""
    from biogpt.api import family_for

    return args.model is not None and family_for(args.model).encoder_decoder


# --- biogpt generate with a BiomedGPT model --------------------------------------------------------------

# `biogpt generate` options that do not apply to BiomedGPT's beam search, with the value meaning "not given"
UNSUPPORTED = (("do_sample", False), ("num_return_sequences", 1), ("early_stopping", False), ("top_k", 50),
               ("repetition_penalty", 1.0), ("temperature", 1.0), ("top_p", 1.0), ("seed", None))  # fmt: skip


def decoding_for(args: argparse.Namespace, task: str) -> Decoding:
    """One task's decoding settings as the original evaluates it (see `tasks.biomedgpt.task_of`), then the
    options given."""
    from biogpt.tasks.biomedgpt import DECODING

    d = DECODING[task]
    d = type(d)(**d.kwargs())  # a copy: the table is shared
    if args.num_beams is not None:
        d.beam_size = args.num_beams
    if args.max_new_tokens is not None:
        d.max_len_b = args.max_new_tokens
    if args.min_new_tokens is not None:
        d.min_len = max(1, args.min_new_tokens)
    if args.length_penalty is not None:
        d.len_penalty = args.length_penalty
    if args.no_repeat_ngram_size is not None:
        d.no_repeat_ngram_size = args.no_repeat_ngram_size
    if d.min_len > d.max_len_b:
        raise BioGPTError(f"--min-new-tokens {d.min_len} exceeds the {d.max_len_b} new tokens allowed ("
                          f"{'--max-new-tokens' if args.max_new_tokens is not None else 'the task default'}); "
                          "lower it or raise --max-new-tokens")  # fmt: skip
    return d


def generate_ofa(args: argparse.Namespace, model, tok) -> list[str]:
    """`biogpt generate` for a BiomedGPT model: each prompt an instruction (with --image: a question about the
    image, normalised as OFA's datasets do; alone: lower-cased, as the text tasks' templates are), decoded by beam
    search with its own task's settings (see `decoding_for`): a batch that mixes a caption request and a question
    is decoded as two batches, each as it would be alone."""
    from biogpt.images import open_image
    from biogpt.tasks.biomedgpt import Record, generate_text, group_by_task, vqa_text

    for name, off in UNSUPPORTED:
        if getattr(args, name, off) != off:
            flag = "--" + name.replace("_", "-")
            raise BioGPTError(f"{flag} does not apply to BiomedGPT, which decodes by beam search as the original "
                              "does; drop it (--num-beams, --max-new-tokens, --length-penalty and "
                              "--no-repeat-ngram-size set the search)")  # fmt: skip
    image = None
    if args.image is not None:
        input_files([args.image])
        image = open_image(args.image)  # decoded once; one clear error naming the file if it is not an image we read
    texts = [vqa_text(p) if image is not None else " " + p.strip().lower() for p in args.prompt]
    records = [Record(str(i), t, image) for i, t in enumerate(texts)]
    out = [""] * len(records)
    for task, rows in group_by_task(texts, image is not None).items():  # each prompt with its own task's settings
        for i, text in zip(rows, generate_text(model, tok, [records[i] for i in rows], decoding_for(args, task))):
            out[i] = text
    return out


# --- biogpt eval TASK: the encoder-decoder tasks ------------------------------------------------------


def _split_file(data: str, split: str) -> Path:
    p = Path(data)
    if p.is_dir():
        p = p / f"{split}.tsv"
    if not p.exists():
        raise BioGPTError(f"{p}: no such file; pass --data FILE (or a folder with {split}.tsv)")
    return p


def read_nli(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """MedNLI's JSONL (sentence1, sentence2, gold_label) or a TSV premise<TAB>hypothesis<TAB>label; labels
    entailment/contradiction/neutral (or yes/no/maybe)."""
    pairs, golds = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                row = jsonfile.loads(line)
                p, h, label = row["sentence1"], row["sentence2"], row["gold_label"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise BioGPTError(f"{path}:{n}: not a MedNLI line (sentence1, sentence2, gold_label): {e}") from None
        else:
            cols = line.split("\t")
            if len(cols) < 3:
                raise BioGPTError(f"{path}:{n}: expected premise<TAB>hypothesis<TAB>label, got {len(cols)} columns")
            p, h, label = cols[0], cols[1], cols[2]
        if str(label).strip().lower() not in NLI_LABELS:
            raise BioGPTError(f"{path}:{n}: label {label!r} is not entailment, contradiction or neutral")
        pairs.append((p, h))
        golds.append(NLI_LABELS[str(label).strip().lower()])
    return pairs, golds


def _answers(args: argparse.Namespace) -> list[str]:
    from biogpt.generation.seq2seq import load_answer_set

    if args.answers is None:
        raise BioGPTError(f"{args.task} needs --answers FILE: the answer set (trainval_ans2label.json for VQA, "
                          "<dataset>_class2label.json for MedMNIST)")  # fmt: skip
    return load_answer_set(args.answers)


def read_saved(path: str, ids: list[str]) -> list[str]:
    """The predictions `--save-outputs` wrote (JSON lines of id, prediction), in the order of `ids`: each id once,
    none missing, none extra."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BioGPTError(f"{p}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise BioGPTError(f"{p}: not UTF-8; give the JSON lines --save-outputs wrote") from None
    found: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        try:
            row = jsonfile.loads(line)
            key, pred = row["id"], row["prediction"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BioGPTError(f"{p}:{n}: not a line of --save-outputs ({{\"id\": ..., \"prediction\": ...}})") from None
        if not isinstance(key, str) or not isinstance(pred, str) or key in found:
            raise BioGPTError(f"{p}:{n}: id and prediction must be strings, each id once")
        found[key] = pred
    missing = [i for i in ids if i not in found]
    extra = sorted(set(found) - set(ids))
    if missing or extra:
        why = f"example {missing[0]!r} has no prediction" if missing else f"id {extra[0]!r} is not an example"
        raise BioGPTError(f"{p}: {why} of --data ({len(found)} predictions, {len(ids)} examples); use the --data, "
                          "--split and --limit of the run that saved them")  # fmt: skip
    return [found[i] for i in ids]


def run_eval(args: argparse.Namespace, model, tok) -> tuple[dict, list[tuple[str, str]]]:
    """(metrics, [(id, prediction)]) of one task; with --predictions, the saved outputs are scored (no model)."""
    from biogpt.generation.seq2seq import AnswerTrie
    from biogpt.tasks import biomedgpt as bt

    def head(records):
        return records[: args.limit] if args.limit is not None else records

    if args.predictions:
        return _score_saved(args, head)
    recs, golds = _records(args, head)
    if args.task == "meqsum":
        dec = bt.DECODING["summarize"]
        if args.beam is not None:
            dec = bt.Decoding(**{**dec.kwargs(), "beam_size": args.beam})
        preds = bt.generate_text(model, tok, recs, dec, batch_size=args.batch_size)
    elif args.task == "vqa":
        answers = _answers(args)
        if args.inference == "allcand":
            preds = bt.rank_answers(model, tok, recs, answers, args.batch_size)
        else:
            dec = bt.DECODING["vqa"]
            if args.beam is not None:
                dec = bt.Decoding(**{**dec.kwargs(), "beam_size": args.beam})
            trie = AnswerTrie.from_answers(answers, tok.encode)
            preds = bt.generate_text(model, tok, recs, dec, trie=trie, batch_size=args.batch_size)
    elif args.task == "caption":
        dec = bt.DECODING["caption"]
        if args.beam is not None:
            dec = bt.Decoding(**{**dec.kwargs(), "beam_size": args.beam})
        preds = bt.generate_text(model, tok, recs, dec, batch_size=args.batch_size)
    elif args.task == "medmnist":
        preds = bt.rank_answers(model, tok, recs, _answers(args), args.batch_size)
    else:
        pairs, _ = read_nli(_split_file(args.data or "", args.split))
        preds = bt.predict_nli(model, tok, pairs[: len(recs)], args.batch_size)
    return score(args.task, recs, golds, preds), [(r.id, p) for r, p in zip(recs, preds)]


def _records(args: argparse.Namespace, head):
    """(records, golds) of the task's split: what both a run and a scoring of saved outputs read."""
    from biogpt.tasks import biomedgpt as bt

    if args.task == "meqsum":
        recs = head(bt.read_meqsum(_split_file(args.data or DEFAULT_MEQSUM, args.split)))
    elif args.task == "vqa":
        recs = head(bt.read_vqa(_split_file(args.data or "", args.split)))
    elif args.task == "caption":
        recs = head(bt.read_report_captions(_split_file(args.data or "", args.split)))
    elif args.task == "medmnist":
        recs = head(bt.read_captions(_split_file(args.data or "", args.split), labels=_answers(args)))
    else:
        pairs, golds = read_nli(_split_file(args.data or "", args.split))
        return [bt.Record(str(i), "") for i in range(len(head(pairs)))], head(golds)
    return recs, None


def _score_saved(args: argparse.Namespace, head) -> tuple[dict, list[tuple[str, str]]]:
    """The metrics of saved predictions, computed as the run that saved them computed its own."""
    recs, golds = _records(args, head)
    preds = read_saved(args.predictions, [r.id for r in recs])
    return score(args.task, recs, golds, preds), [(r.id, p) for r, p in zip(recs, preds)]


def score(task: str, recs: list, golds: list[str] | None, preds: list[str]) -> dict:
    """One task's metrics of predictions against the records' references (NLI: against `golds`)."""
    from biogpt.tasks import biomedgpt as bt

    if task == "meqsum":
        scores = [bt.summary_rouge_l(p, next(iter(r.refs))) for p, r in zip(preds, recs)]
        return {"rouge_l": sum(scores) / len(scores), "n": len(recs)}
    if task == "vqa":
        return bt.vqa_accuracy(preds, recs)
    if task == "caption":
        return bt.caption_scores(preds, recs)
    if task == "medmnist":
        return {"accuracy": bt.accuracy(preds, [next(iter(r.refs)) for r in recs]), "n": len(recs)}
    return {"accuracy": bt.accuracy(preds, golds), "n": len(recs)}


def cmd_eval_biomedgpt(args: argparse.Namespace) -> int:
    if args.predictions:
        return _cmd_score_saved(args)
    if args.model is None:
        raise BioGPTError("give --model: a BiomedGPT checkpoint (fairseq .pt, OFA-port or converted directory)")
    writable_file(args.output, "--output")
    writable_file(args.save_outputs, "--save-outputs")
    if args.task in ("vqa", "medmnist", "nli", "caption") and args.data is None:
        raise BioGPTError(f"{args.task} needs --data FILE (its TSV{', or MedNLI JSONL' if args.task == 'nli' else ''})")
    if args.task in ("vqa", "medmnist"):
        _answers(args)  # before the model loads: a missing or bad answer set is one error now
    if not is_ofa_model(args):
        raise BioGPTError(f"{args.model} is not a BiomedGPT (OFA) model; {args.task} is a BiomedGPT task")
    set_threads(args.threads)
    model, tok = load_for_inference(args)
    metrics, outputs = run_eval(args, model, tok)
    report = json.dumps({"task": args.task, **metrics}, indent=2)
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n", encoding="utf-8")
    if args.save_outputs:
        lines = [json.dumps({"id": i, "prediction": p}, ensure_ascii=False) for i, p in outputs]
        Path(args.save_outputs).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"{args.task}: {len(outputs)} examples scored", file=sys.stderr)
    return 0


def _cmd_score_saved(args: argparse.Namespace) -> int:
    """`eval TASK --predictions FILE`: the metrics of saved outputs, printed as a run prints them."""
    if args.model is not None:
        raise BioGPTError("give one of --model (run inference) or --predictions FILE (score saved outputs)")
    if args.save_outputs:
        raise BioGPTError("--save-outputs saves generated outputs; with --predictions nothing is generated")
    writable_file(args.output, "--output")
    if args.task != "meqsum" and args.data is None:
        raise BioGPTError(f"{args.task} needs --data FILE: the split the predictions were made on")
    metrics, outputs = run_eval(args, None, None)
    report = json.dumps({"task": args.task, **metrics}, indent=2)
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n", encoding="utf-8")
    print(f"{args.task}: {len(outputs)} saved predictions scored", file=sys.stderr)
    return 0


def add_seq2seq_options(p: argparse.ArgumentParser) -> None:
    """The options of the encoder-decoder (BiomedGPT) tasks, in `biogpt eval` and its old name."""
    p.add_argument("--ema", action="store_true", help="use a fairseq checkpoint's EMA weights, as the original "
                                                      "evaluation does")  # fmt: skip
    p.add_argument("--image-size", type=positive_int,
                   help="resize images to this side (default: the checkpoint's, else 256 for -S/-M, 384 for -B)")
    p.add_argument("--answers", help="answer set JSON (answer -> label): trainval_ans2label.json, *_class2label.json")
    p.add_argument("--inference", choices=["beamsearch", "allcand"], default="beamsearch",
                   help="vqa: trie-constrained beam search, or every answer ranked exactly "
                        "(default: %(default)s)")  # fmt: skip
    p.add_argument("--beam", type=positive_int, help="beam size (default: the task's, as the original's scripts)")


DATA_HELP = (f"the split file, or a folder with SPLIT.tsv (meqsum default: {DEFAULT_MEQSUM}); vqa: OFA's VQA TSV "
             "(base64 images); medmnist, caption: OFA's caption TSV; nli: MedNLI JSONL or "
             "premise<TAB>hypothesis<TAB>label")  # fmt: skip


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=TASKS, help="meqsum (ROUGE-L), vqa (accuracy: overall/closed/open), nli "
                                               "(accuracy), medmnist (accuracy), caption (report generation: ROUGE-L, "
                                               "CIDEr-D)")  # fmt: skip
    add_model_options(p, biomedgpt=True)
    add_seq2seq_options(p)
    p.add_argument("--predictions", help="score these saved outputs instead of running a model (what "
                                         "--save-outputs wrote: JSON lines of id, prediction)")  # fmt: skip
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--split", default="test", help="split file name in a --data folder (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=positive_int, default=8, help="inputs per batch (default: %(default)s)")
    p.add_argument("--output", help="write the metrics (JSON) here too")
    p.add_argument("--save-outputs", help="write each prediction here (JSON lines: id, prediction)")


def add_parsers(sub) -> None:
    p = sub.add_parser("eval-biomedgpt", help="deprecated: use `biogpt eval TASK` (same arguments)",
                       description="Run a BiomedGPT task with the original's instruction template, decoding and "
                                   "metric, and print the metrics as JSON.")  # fmt: skip
    add_eval_arguments(p)
    p.set_defaults(func=deprecated("eval-biomedgpt", "eval", _cmd_eval))


def _cmd_eval(args: argparse.Namespace) -> int:
    from biogpt.cli.tasks import cmd_eval

    return cmd_eval(args)
