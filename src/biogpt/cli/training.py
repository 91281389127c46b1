"""`biogpt corpus build`, `biogpt pretrain` and `biogpt finetune`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from biogpt.cli.args import (
    check_device,
    input_files,
    nonneg_float,
    per_mille,
    positive_float,
    positive_int,
    set_threads,
    writable_dir,
)
from biogpt.errors import BioGPTError


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _vocab_dir(path: str) -> str:
    if not Path(path).is_dir():
        raise BioGPTError(f"--vocab {path}: no such folder (expected dict.txt + bpecodes or vocab.json + merges.txt)")
    return path


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from biogpt.training.corpus import build_corpus

    input_files(args.input)
    writable_dir(args.output, "--output")
    m = build_corpus(
        args.input,
        _vocab_dir(args.vocab),
        args.output,
        workers=args.workers,
        validation_per_mille=args.valid_per_mille,
        shard_tokens=args.shard_tokens,
    )
    d = m["documents"]
    print(f"{args.output}: {d['train']} train documents ({sum(m['train'])} tokens), {d['valid']} validation "
          f"documents ({sum(m['valid'])} tokens)")  # fmt: skip
    for problem, n in sorted(m["problems"].items()):
        print(f"  skipped {n}: {problem}")
    return 0


def _on_existing(args: argparse.Namespace) -> str:
    return "overwrite" if args.overwrite else "resume"


def cmd_pretrain(args: argparse.Namespace) -> int:
    from biogpt.training import TrainConfig, pretrain

    device = args.device or _default_device()
    check_device(device)
    set_threads(args.threads)
    if not (Path(args.corpus) / "manifest.json").exists():
        raise BioGPTError(f"--corpus {args.corpus}: no manifest.json; build one with `biogpt corpus build`")
    writable_dir(args.output, "--output")
    cfg = TrainConfig(out_dir=args.output, lr=args.lr, warmup_updates=args.warmup, max_updates=args.max_updates,
                      tokens_per_update=args.tokens_per_update, micro_batch_tokens=args.micro_batch_tokens,
                      clip_norm=args.clip_norm, dtype=args.dtype, eval_every=args.eval_every,
                      save_every=args.save_every, seed=args.seed, peak_tflops=args.peak_tflops,
                      fsdp=args.fsdp)  # fmt: skip
    pretrain(args.corpus, _vocab_dir(args.vocab), cfg, preset=args.preset, block=args.block, device=device,
             on_existing=_on_existing(args))  # fmt: skip
    return 0


def common_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: autocast, fp32 master weights (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--device", help="cpu or cuda (default: cuda where available, else cpu; torchrun: one GPU per rank)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: PyTorch's, one per core)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in --output and start again (default: resume it, if its settings "
                        "are the same)")  # fmt: skip


def add_parsers(sub) -> None:
    p = sub.add_parser("corpus", help="pre-training corpus tools")
    csub = p.add_subparsers(dest="corpus_command", required=True)
    q = csub.add_parser("build", help="PubMed XML(.gz) / JSONL / text -> tokenized uint16 shards (resumable)")
    q.add_argument("input", nargs="+", help="pubmed*.xml.gz, *.jsonl ({pmid|id, title, abstract}) or text files")
    q.add_argument("--vocab", required=True, help="vocabulary folder (dict.txt + bpecodes or vocab.json + merges.txt)")
    q.add_argument("--output", required=True, help="output folder; rerun the same command to resume")
    q.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="tokenizer processes (default: one per core, %(default)s here)")  # fmt: skip
    q.add_argument("--valid-per-mille", type=per_mille, default=5,
                   help="documents held out for validation, per 1000, 0..1000 (default: %(default)s)")  # fmt: skip
    q.add_argument("--shard-tokens", type=positive_int, default=1 << 28,
                   help="tokens per shard file (default: %(default)s = 512 MiB of uint16)")  # fmt: skip
    q.set_defaults(func=cmd_corpus_build)

    p = sub.add_parser("pretrain", help="causal LM pre-training from scratch on a built corpus (torchrun for DDP)")
    p.add_argument("--corpus", required=True, help="output folder of biogpt corpus build")
    p.add_argument("--vocab", required=True, help="the vocabulary the corpus was built with")
    p.add_argument("--output", required=True, help="checkpoint folder; rerun to resume")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "demo", "base", "large"],
                   help="model size (default: %(default)s)")  # fmt: skip
    p.add_argument("--block", type=positive_int, help="tokens per training block (default: the preset's positions)")
    p.add_argument("--lr", type=positive_float, default=2e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=positive_int, default=100, help="warm-up updates (default: %(default)s)")
    p.add_argument("--max-updates", type=positive_int, default=1000, help="optimizer updates (default: %(default)s)")
    p.add_argument("--tokens-per-update", type=positive_int, default=16384,
                   help="tokens per optimizer update, all ranks together (default: %(default)s)")  # fmt: skip
    p.add_argument("--micro-batch-tokens", type=positive_int, default=4096,
                   help="tokens per forward/backward pass on one rank (default: %(default)s)")  # fmt: skip
    p.add_argument("--clip-norm", type=nonneg_float, default=0.0,
                   help="gradient norm clipping; 0: off, as fairseq's recipe (default: %(default)s)")  # fmt: skip
    p.add_argument("--eval-every", type=positive_int, default=100,
                   help="updates between validations (default: %(default)s)")  # fmt: skip
    p.add_argument("--save-every", type=positive_int, default=100,
                   help="updates between checkpoints (default: %(default)s)")  # fmt: skip
    p.add_argument("--peak-tflops", type=nonneg_float, default=0.0,
                   help="the device's peak TFLOP/s, to log MFU; 0: not logged (default: %(default)s)")  # fmt: skip
    p.add_argument("--fsdp", action="store_true", help="shard the model across torchrun ranks (FSDP; for Large)")
    common_training(p)
    p.set_defaults(func=cmd_pretrain)
