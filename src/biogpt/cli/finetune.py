"""`biogpt finetune TASK... --model M`: the model's family decides the recipe, and its descriptor names the
fine-tuning driver in training/ (resolved here, lazily). BioGPT: prompt-token task models, one task or several;
the GPT-2 family (BioMedLM): PubMedQA in the generative format; BiomedGPT: MeQSum with OFA's label-smoothed
loss. `finetune-biomedgpt` is the old name of the last, kept as an alias."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from biogpt.cli.args import (
    DEFAULT_DATA,
    FamilyTasks,
    check_device,
    check_task,
    data_dir,
    deprecated,
    nonneg_int,
    positive_float,
    positive_int,
    refuse_options,
    set_threads,
    writable_dir,
)
from biogpt.cli.training import common_training
from biogpt.errors import BioGPTError
from biogpt.recipes import describe

DEFAULT_MEQSUM = "../shared/data/biomedgpt/tasks/MeQSum"  # the project's layout: shared data beside the repo
# options of one kind of recipe, with the value meaning "not given"
SEQ2SEQ = {"split": "train", "vocab": None, "batch_size": 8, "update_freq": 4, "label_smoothing": 0.1, "limit": None}
PROMPTED = {"tokens_per_update": 1024 * 32, "micro_batch_tokens": 1024, "target_only": False, "average_last": 5,
            "save_every": None, "fsdp": False}  # fmt: skip


def cmd_finetune(args: argparse.Namespace) -> int:
    """Resolve the model's family and its driver, then run the family's recipe."""
    import torch

    from biogpt.api import family_for

    tasks = [args.task] if isinstance(args.task, str) else list(dict.fromkeys(args.task))
    owners = check_task(tasks, "finetune_tasks", "finetune")
    if owners and all(d.encoder_decoder for d in owners):
        return _finetune_seq2seq(args, tasks[0], owners[0].title)
    refuse_options(args, SEQ2SEQ, " ".join(tasks))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    set_threads(args.threads)
    writable_dir(args.output, "--output")
    if args.warmup == 0:
        raise BioGPTError("--warmup: must be >= 1 for this recipe, got 0")
    desc = family_for(args.model)
    if desc.byte_level:
        return _finetune_generative(args, tasks, device, desc)
    if args.fsdp:
        raise BioGPTError("--fsdp shards a GPT-2 family model (BioMedLM); a BioGPT fine-tune runs on one device per "
                          "rank (DDP): leave --fsdp out")  # fmt: skip
    _check_tasks(desc, tasks)
    splits = {}
    if "kd-dti" in tasks and not (Path(data_dir(args.data or DEFAULT_DATA)) / "KD-DTI" / "train.json").exists():
        splits["kd-dti"] = "valid"  # KD-DTI's train file was never released
        print("kd-dti: no train split; training on its valid split", file=sys.stderr)
    task = tasks if len(tasks) > 1 else tasks[0]
    final = driver(desc)(task, args.model, data_dir(args.data or DEFAULT_DATA), args.output, epochs=args.epochs,
                         max_updates=args.max_updates, lr=args.lr, warmup_updates=args.warmup,
                         tokens_per_update=args.tokens_per_update, micro_batch_tokens=args.micro_batch_tokens,
                         target_only=args.target_only, average_last=args.average_last, save_every=args.save_every,
                         seed=args.seed, dtype=args.dtype, device=device, on_existing=_on_existing(args),
                         splits=splits)  # fmt: skip
    print(f"final checkpoint: {final}")
    return 0


def driver(desc):
    """The family's fine-tuning function, imported from the "module:function" its descriptor names."""
    if desc.finetune is None:
        raise BioGPTError(f"{desc.title} models have no fine-tuning recipe")
    module, _, name = desc.finetune.partition(":")
    return getattr(importlib.import_module(module), name)


def _check_tasks(desc, tasks: list[str]) -> None:
    bad = [t for t in tasks if t not in desc.finetune_tasks]
    if bad:
        raise BioGPTError(f"{bad[0]}: a {desc.title} model is fine-tuned for {', '.join(desc.finetune_tasks)}")


def _on_existing(args: argparse.Namespace) -> str:
    return "overwrite" if args.overwrite else "resume"


def _finetune_generative(args: argparse.Namespace, tasks: list[str], device: str, desc) -> int:
    if tasks != ["pubmedqa"]:
        raise BioGPTError(f"{' '.join(tasks)}: a GPT-2 family model (BioMedLM) is fine-tuned for pubmedqa only (the "
                          "generative `question: ... context: ... answer:` format, loss on the answer)")  # fmt: skip
    final = driver(desc)("pubmedqa", args.model, data_dir(args.data or DEFAULT_DATA), args.output, epochs=args.epochs,
                         max_updates=args.max_updates, lr=args.lr, warmup_updates=args.warmup,
                         tokens_per_update=args.tokens_per_update, micro_batch_tokens=args.micro_batch_tokens,
                         average_last=args.average_last, save_every=args.save_every, seed=args.seed,
                         dtype=args.dtype, device=device, on_existing=_on_existing(args), fsdp=args.fsdp)  # fmt: skip
    print(f"final checkpoint: {final}")
    return 0


def _finetune_seq2seq(args: argparse.Namespace, task: str, title: str) -> int:
    """An encoder-decoder task (BiomedGPT's MeQSum): OFA's recipe, its defaults where an option is not given."""
    import torch

    from biogpt.api import family_for

    refuse_options(args, PROMPTED, task)
    if not 0 <= args.label_smoothing < 1:
        raise BioGPTError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    writable_dir(args.output, "--output")
    desc = family_for(args.model)
    if not desc.encoder_decoder:
        raise BioGPTError(f"{args.model} is not a {title} model; `biogpt finetune {task}` trains {title} models")
    _check_tasks(desc, [task])
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    set_threads(args.threads)
    given = {"max_updates": args.max_updates, "epochs": args.epochs, "lr": args.lr, "warmup_updates": args.warmup}
    final = driver(desc)(task, args.model, args.output, data=args.data, split=args.split, batch_size=args.batch_size,
                         update_freq=args.update_freq, epsilon=args.label_smoothing, limit=args.limit,
                         seed=args.seed, dtype=args.dtype, device=device, vocab=args.vocab,
                         on_existing=_on_existing(args), **{k: v for k, v in given.items() if v is not None})
    print(f"final checkpoint: {final}")
    return 0


def add_seq2seq_options(p: argparse.ArgumentParser) -> None:
    """BiomedGPT's fine-tuning options, in `finetune` and its old name."""
    p.add_argument("--split", default="train", help="BiomedGPT: the split file name in a --data folder "
                                                    "(default: %(default)s)")  # fmt: skip
    p.add_argument("--vocab", help="BiomedGPT: tokenizer folder, if not beside the checkpoint")
    p.add_argument("--batch-size", type=positive_int, default=8, help="BiomedGPT: examples per micro-batch "
                                                                      "(default: %(default)s)")  # fmt: skip
    p.add_argument("--update-freq", type=positive_int, default=4, help="BiomedGPT: micro-batches per update, "
                                                                       "across ranks (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="BiomedGPT (default: %(default)s, as OFA)")
    p.add_argument("--limit", type=positive_int, help="BiomedGPT: train on the first N examples only")


def _length_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=positive_int,
                   help=f"epochs (default: the task's recipe: {describe('epochs')}; hoc counts updates; BiomedGPT: "
                        "10)")  # fmt: skip
    p.add_argument("--max-updates", type=positive_int,
                   help=f"optimizer updates, instead of epochs (default: {describe('max_updates')})")  # fmt: skip
    p.add_argument("--lr", type=positive_float,
                   help=f"peak learning rate (default: the recipe's: {describe('lr')}; BiomedGPT: 1e-4)")
    p.add_argument("--warmup", type=nonneg_int,
                   help=f"warm-up updates (default: the recipe's: {describe('warmup_updates')}; BiomedGPT: "
                        "100)")  # fmt: skip


def add_parsers(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a checkpoint for a task (or several: one multi-task model)",
                       description="Fine-tune a model for a task; the model's family decides the recipe.")
    p.add_argument("task", nargs="+", metavar="TASK",
                   help=FamilyTasks("one task (the original recipe), or several (BioGPT): one model, each task its "
                                    "own prompt tokens", "finetune_tasks"))  # fmt: skip
    p.add_argument("--model", required=True, help="pre-trained checkpoint (folder or fairseq .pt) with its vocabulary")
    p.add_argument("--output", required=True, help="checkpoint folder; the result is OUTPUT/final")
    p.add_argument("--data", help=f"folder with the task data (default: {DEFAULT_DATA}, relative to the current "
                                  f"folder); BiomedGPT: the split file or a folder with SPLIT.tsv (default: "
                                  f"{DEFAULT_MEQSUM})")  # fmt: skip
    _length_options(p)
    p.add_argument("--tokens-per-update", type=positive_int, default=1024 * 32,
                   help="tokens per optimizer update (default: %(default)s = 1024 x 32, the recipe's)")  # fmt: skip
    p.add_argument("--micro-batch-tokens", type=positive_int, default=1024,
                   help="tokens per forward/backward pass (default: %(default)s, as --max-tokens)")  # fmt: skip
    p.add_argument("--target-only", action="store_true", help="score only the target (the original scores all)")
    p.add_argument("--average-last", type=positive_int, default=5,
                   help="average the last N checkpoints into final/ (default: %(default)s)")  # fmt: skip
    p.add_argument("--save-every", type=positive_int,
                   help="updates between the checkpoints that are averaged (default: one per epoch; hoc: 20 "
                        "checkpoints over the run)")  # fmt: skip
    p.add_argument("--fsdp", action="store_true",
                   help="shard a GPT-2 family model (BioMedLM) across torchrun ranks (FSDP); its PubMedQA loss is "
                        "always on the answer only")  # fmt: skip
    add_seq2seq_options(p)
    common_training(p)
    p.set_defaults(func=cmd_finetune)
    _add_old_parser(sub)


def _add_old_parser(sub) -> None:
    """`finetune-biomedgpt meqsum`: the old name of `finetune meqsum`, with the options it had."""
    p = sub.add_parser("finetune-biomedgpt", help="deprecated: use `biogpt finetune meqsum` (same arguments)",
                       description="Fine-tune BiomedGPT on a text task through the training loop, with OFA's "
                                   "label-smoothed cross-entropy; writes OUTPUT/final, a BiomedGPT directory. "
                                   "Deprecated: `biogpt finetune meqsum` does the same.")  # fmt: skip
    p.add_argument("task", choices=["meqsum"], help="meqsum: question -> summary")
    p.add_argument("--model", required=True, help="a BiomedGPT checkpoint (fairseq .pt, OFA-port or converted "
                                                  "directory)")  # fmt: skip
    p.add_argument("--output", required=True, help="run folder; rerun the same command to resume")
    p.add_argument("--data", help=f"the split file, or a folder with SPLIT.tsv (default: {DEFAULT_MEQSUM})")
    p.add_argument("--max-updates", type=positive_int, help="optimizer updates (default: --epochs passes)")
    p.add_argument("--epochs", type=positive_int, default=10, help="(default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=nonneg_int, default=100, help="warm-up updates (default: %(default)s)")
    add_seq2seq_options(p)
    common_training(p)
    p.set_defaults(func=deprecated("finetune-biomedgpt", "finetune", cmd_finetune))
