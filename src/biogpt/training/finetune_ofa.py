"""`biogpt finetune meqsum --model M`: BiomedGPT (OFA) fine-tuned on MeQSum through the one training
loop (loop.py: accumulation, bf16 autocast, DDP, resumable checkpoints), with the original's loss.

Each example is OFA's summarisation instruction (` what is the summary of article " {question} "?`, at most 512
words, tasks/biomedgpt/summary.py) as the encoder input and the lower-cased summary as the target: decoder input
<s> + ids, target ids + </s> (at most 128 target tokens), as `make_batch` builds them. The loss is
fairseq's label-smoothed cross-entropy (eps 0.1) summed over target tokens and divided by the update's token
count, as OFA's criterion without constraints; optimiser as OFA's fine-tuning scripts: AdamW betas (0.9, 0.999),
eps 1e-8, weight decay 0.01, gradient clipping at 1.0. The schedule is the loop's (linear warm-up, then inverse
square root), not OFA's polynomial decay.

Micro-batches are `batch_size` examples in a seeded shuffle per epoch; `update_freq` of them make one update
(across all ranks). `out/final` is a BiomedGPT directory (save_ofa) that `biogpt.load` reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from biogpt.api import family_of, load
from biogpt.checkpoints.ofa import save_ofa
from biogpt.errors import TrainingError
from biogpt.generation.seq2seq import right_pad
from biogpt.models.ofa import OFA
from biogpt.tasks.biomedgpt.common import Record
from biogpt.tasks.biomedgpt.summary import read_meqsum
from biogpt.text.ofa import OFATokenizer
from biogpt.training.dist import device_for, init, log0
from biogpt.training.loop import TrainConfig, train
from biogpt.training.loss import label_smoothed_nll
from biogpt.training.runs import ON_EXISTING, FinetuneRun

TASKS = ("meqsum",)
DEFAULT_DATA = "../shared/data/biomedgpt/tasks/MeQSum"  # beside the repository, as `eval meqsum`
MAX_TARGET = 128  # OFA's max_tgt_length for summarisation


def training_pairs(tok: OFATokenizer, records: Sequence[Record], max_positions: int) -> list[tuple[list, list]]:
    """(source ids, target ids) per record: <s> + instruction + </s> within max_positions, and the lower-cased
    summary's ids (at most MAX_TARGET, leaving room for </s>)."""
    room = min(MAX_TARGET, max_positions - 1)
    return [
        (tok.encode_source(r.text, max_positions - 2), tok.encode(" " + next(iter(r.refs)).lower())[:room])
        for r in records
    ]


def make_batch(tok: OFATokenizer, pairs: Sequence[tuple[list, list]]) -> tuple[torch.Tensor, ...]:
    """(source ids, decoder inputs <s> + target, targets target + </s>), each right-padded with PAD_ID."""
    src = right_pad([s for s, _ in pairs])
    prev = right_pad([[tok.bos_token_id, *t] for _, t in pairs])
    target = right_pad([[*t, tok.eos_token_id] for _, t in pairs])
    return src, prev, target


def seq2seq_batches(
    tok: OFATokenizer, pairs: Sequence[tuple[list, list]], batch_size: int, seed: int, position: dict,
    rank: int = 0, world: int = 1,
) -> Callable[[], tuple[torch.Tensor, ...]]:  # fmt: skip
    """next_batch() for the loop: micro-batch k of epoch e is examples [k*B, (k+1)*B) of a shuffle seeded with
    seed + e; `position` ({"epoch", "index"}: the next global micro-batch) is what a checkpoint saves, and every
    rank reads the same global stream, rank r taking micro-batch index + r."""
    n_micro = math.ceil(len(pairs) / batch_size)
    cache: dict = {}

    def next_batch():
        while position["index"] >= n_micro:
            position["epoch"] += 1
            position["index"] -= n_micro
        epoch, k = position["epoch"], (position["index"] + rank) % n_micro
        if cache.get("epoch") != epoch:
            g = torch.Generator().manual_seed(seed + epoch)
            cache.update(epoch=epoch, order=torch.randperm(len(pairs), generator=g).tolist())
        position["index"] += world
        return make_batch(tok, [pairs[i] for i in cache["order"][k * batch_size : (k + 1) * batch_size]])

    return next_batch


def seq2seq_loss(epsilon: float) -> Callable[[torch.nn.Module, tuple], torch.Tensor]:
    """The loop's loss_fn: label-smoothed cross-entropy of (source, decoder inputs, targets), summed."""

    def loss_fn(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        src, prev, target = batch
        return label_smoothed_nll(model(src, prev), target, epsilon)

    return loss_fn


def train_ofa(
    model: OFA, tok: OFATokenizer, records: Sequence[Record], out_dir: str | Path, max_updates: int,
    lr: float = 1e-4, warmup_updates: int = 100, batch_size: int = 8, update_freq: int = 4, epsilon: float = 0.1,
    seed: int = 1, dtype: str = "fp32", save_every: int | None = None, on_existing: str = "resume",
    settings: dict | None = None, log_every: int = 10,
) -> list[dict]:  # fmt: skip
    """Train `model` (in place, on its device) on (instruction, target) records through the loop; writes the
    loop's checkpoints under out_dir and returns its log (per update: lr, loss per target token)."""
    if not records:
        raise TrainingError("no training examples")
    bad = [f"{name} must be an integer >= 1, got {v!r}" for name, v in (("batch_size", batch_size),
           ("update_freq", update_freq)) if not (isinstance(v, int) and v >= 1)]  # fmt: skip
    if not 0 <= epsilon < 1:
        bad.append(f"label smoothing must be in [0, 1), got {epsilon!r}")
    if bad:
        raise TrainingError("; ".join(bad))
    device = next(model.parameters()).device
    rank, world = init(device)
    cfg = TrainConfig(out_dir=str(out_dir), lr=lr, warmup_updates=warmup_updates, max_updates=max_updates,
                      betas=(0.9, 0.999), clip_norm=1.0, dtype=dtype, eval_every=10**9, seed=seed, keep_last=1,
                      save_every=save_every or max_updates)  # fmt: skip
    pairs = training_pairs(tok, records, model.config.max_positions)
    position = {"epoch": 0, "index": 0}
    stream = seq2seq_batches(tok, pairs, batch_size, seed, position, rank, world)
    micro_per_update = max(1, update_freq // world)
    run = {"task": "seq2seq", "batch_size": batch_size, "update_freq": update_freq, "label_smoothing": epsilon,
           "training_pairs": len(pairs), **(settings or {})}  # fmt: skip
    return train(model, cfg, stream, micro_per_update, position, save=lambda m, d: save_ofa(m, tok, d),
                 log_every=log_every, settings=run, on_existing=on_existing, loss_fn=seq2seq_loss(epsilon))  # fmt: skip


def finetune_ofa(
    task_name: str, model_path: str | Path, out_dir: str | Path, data: str | Path | None = None,
    split: str = "train", max_updates: int | None = None, epochs: int = 10, lr: float = 1e-4,
    warmup_updates: int = 100, batch_size: int = 8, update_freq: int = 4, epsilon: float = 0.1,
    limit: int | None = None, seed: int = 1, dtype: str = "fp32", device: str | torch.device = "cpu",
    on_existing: str = "resume", vocab: str | Path | None = None,
) -> Path:  # fmt: skip
    """Fine-tune a BiomedGPT checkpoint on MeQSum (`data`: the split file or a folder with SPLIT.tsv); returns
    `out/final`, a BiomedGPT directory. Length: max_updates, else `epochs` passes over the data. `vocab`: the
    tokenizer folder, if not beside the checkpoint."""
    if task_name not in TASKS:
        raise TrainingError(f"{task_name}: BiomedGPT is fine-tuned here for {', '.join(TASKS)} only")
    if on_existing not in ON_EXISTING:
        raise TrainingError(f"on_existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")
    bad = [f"{name} must be an integer >= 1, got {v!r}" for name, v in (("max_updates", max_updates),
           ("epochs", epochs), ("limit", limit)) if v is not None and not (isinstance(v, int) and v >= 1)]  # fmt: skip
    if bad:
        raise TrainingError("; ".join(bad))
    path = Path(data if data is not None else DEFAULT_DATA)
    if path.is_dir():
        path = path / f"{split}.tsv"
    records = read_meqsum(path)[:limit]
    dev = device_for(device)
    model, tok = load(model_path, dtype=torch.float32, vocab=vocab)  # fp32 master weights; bf16 is autocast
    if not family_of(model).encoder_decoder:
        raise TrainingError(f"{model_path}: not a BiomedGPT (OFA) model; `biogpt finetune TASK` picks each family's "
                            "fine-tuning by the model")  # fmt: skip
    if tok is None:
        raise TrainingError(f"{model_path}: no tokenizer beside the weights; fine-tuning needs the model's vocabulary")
    with torch.no_grad():  # own, contiguous storage, not views of the loaded file
        for p in model.parameters():
            p.data = p.data.clone(memory_format=torch.contiguous_format)
    rank, world = init(dev)
    model.to(dev)
    if max_updates is None:
        max_updates = epochs * max(1, math.ceil(len(records) / batch_size) // update_freq)
    run = FinetuneRun(out_dir, model_path, on_existing, rank)
    log0(rank, f"{task_name}: {len(records)} training examples from {path}, {max_updates} updates")
    settings = {"task": task_name, "model_path": run.model, "data": str(path.resolve()), "limit": limit}
    train_ofa(model, tok, records, out_dir, max_updates, lr=lr, warmup_updates=warmup_updates,
              batch_size=batch_size, update_freq=update_freq, epsilon=epsilon, seed=seed, dtype=dtype,
              on_existing=on_existing, settings=settings)  # fmt: skip
    return run.finish(lambda folder, _: save_ofa(model, tok, folder))
