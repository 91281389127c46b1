"""The training loop shared by pre-training and fine-tuning, written out once: the fairseq recipe.

- Adam with betas (0.9, 0.98), eps 1e-8 and decoupled weight decay 0.01 on every parameter (fairseq's Adam is
  AdamW-style), inverse-square-root schedule after a linear warm-up from 1e-7;
- gradient accumulation up to a target number of tokens per update; the loss of an update is the sum of
  its token losses divided by its token count (fairseq's normalisation);
- optional gradient clipping, bf16 autocast, periodic validation loss and perplexity, tokens/s and MFU;
- checkpoints are Hugging Face directories (so `biogpt generate` / `eval` load them) plus `trainer.pt`
  (optimizer, step, data position, RNG states): a resumed run continues with the same data order and the
  same losses as one that never stopped;
- several processes through `torchrun` (DDP; gloo on CPU, NCCL on GPU): each update's micro-batches are
  dealt out across ranks, so N ranks compute the same update as one process accumulating N times as much.

`biogpt pretrain` reads token shards from `biogpt corpus build`; `biogpt finetune` reads a task's pairs.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from biogpt.checkpoints.io import read_tensors
from biogpt.models.biogpt import PAD_ID, BioGPT, BioGPTConfig
from biogpt.training.dist import dist_info, gather_objects, log0
from biogpt.training.loss import lm_loss


@dataclass
class TrainConfig:
    out_dir: str
    lr: float = 2e-4
    warmup_updates: int = 100
    warmup_init_lr: float = 1e-7
    max_updates: int = 1000
    tokens_per_update: int = 16384  # across all ranks
    micro_batch_tokens: int = 4096  # per forward/backward on one rank
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    clip_norm: float = 0.0  # 0: no clipping (fairseq's setting)
    dtype: str = "fp32"  # "bf16": autocast
    eval_every: int = 100
    save_every: int = 100
    keep_last: int = 5
    seed: int = 1
    peak_tflops: float = 0.0  # for MFU; 0: unknown (not logged)
    fsdp: bool = False  # shard parameters, gradients and optimizer state across ranks (for Large)
    extra: dict = field(default_factory=dict)


def inverse_sqrt_lr(cfg: TrainConfig, update: int) -> float:
    """fairseq inverse_sqrt: linear warm-up from warmup_init_lr, then lr * sqrt(warmup / update)."""
    if update < cfg.warmup_updates:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * update / cfg.warmup_updates
    return cfg.lr * math.sqrt(max(cfg.warmup_updates, 1) / max(update, 1))


def flops_per_token(cfg: BioGPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x parameters (without the position table) + attention scores and mixing."""
    n = cfg.n_layer * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_ffn) + cfg.vocab_size * cfg.d_model
    return 6 * n + 12 * cfg.n_layer * cfg.d_model * seq_len


def train(
    model: BioGPT,
    cfg: TrainConfig,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    micro_batches_per_update: int,
    position: dict,
    valid_batches: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    save: Callable[[BioGPT, Path], None] | None = None,
    log_every: int = 10,
) -> list[dict]:
    """Run updates until cfg.max_updates; resume from `cfg.out_dir/last` if it exists. Returns the log.

    `next_batch()` yields (inputs, targets) for this rank, targets padded with PAD_ID (ignored). Each update
    takes `micro_batches_per_update` of them on every rank.
    """
    rank, world = dist_info()
    device = next(model.parameters()).device
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed + rank)
    step, log = 0, []
    last = out / "last"
    state = None
    if (last / "trainer.pt").exists():
        state = read_tensors(last / "trainer.pt")
        model.load_state_dict(state["model"])
        step, log = state["step"], state["log"]
        position.clear()
        position.update(state["position"][rank] if isinstance(state["position"], list) else state["position"])
        torch.set_rng_state(state["rng"][rank])
        log0(rank, f"resumed from {last} at update {step}")
    fsdp = cfg.fsdp and world > 1
    if fsdp:  # FSDP2: every block, then the rest (embeddings, final LayerNorm), sharded across ranks
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if state is not None:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            opt.load_state_dict(state["optimizer"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 and not fsdp else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    model.train()
    seq_len = model.config.max_positions
    t0, tokens_since = time.perf_counter(), 0
    while step < cfg.max_updates:
        step += 1
        lr = inverse_sqrt_lr(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        batches = [next_batch() for _ in range(micro_batches_per_update)]
        n_tokens = torch.tensor(float(sum(int((y != PAD_ID).sum()) for _, y in batches)), device=device)
        if world > 1:
            torch.distributed.all_reduce(n_tokens)
        total_loss = torch.zeros((), device=device)
        for j, (x, y) in enumerate(batches):
            x, y = x.to(device), y.to(device)
            sync = j == len(batches) - 1
            if fsdp:
                model.set_requires_gradient_sync(sync)
            ctx = ddp.no_sync() if world > 1 and not fsdp and not sync else contextlib.nullcontext()
            with ctx, autocast:
                loss = lm_loss(ddp, x, y, fused=not fsdp)
                # sum over tokens / all tokens of the update on all ranks; DDP averages over ranks, so x world
                (loss * world / n_tokens).backward()
            total_loss += loss.detach()
        if world > 1:
            torch.distributed.all_reduce(total_loss)
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens_since += int(n_tokens)
        entry = {"update": step, "lr": lr, "loss": float(total_loss / n_tokens)}
        if step % log_every == 0 or step == cfg.max_updates:
            dt = time.perf_counter() - t0
            entry["tokens_per_s"] = tokens_since / dt
            if cfg.peak_tflops > 0:
                entry["mfu"] = tokens_since * flops_per_token(model.config, seq_len) / dt / (cfg.peak_tflops * 1e12)
            t0, tokens_since = time.perf_counter(), 0
            log0(rank, json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}))
        if valid_batches is not None and (step % cfg.eval_every == 0 or step == cfg.max_updates):
            entry["valid_loss"] = evaluate(model, valid_batches(), autocast)
            entry["valid_ppl"] = math.exp(min(entry["valid_loss"], 50))
            model.train()
            log0(rank, f"update {step}: valid loss {entry['valid_loss']:.4f}, ppl {entry['valid_ppl']:.2f}")
        log.append(entry)
        if step % cfg.save_every == 0 or step == cfg.max_updates:
            positions = gather_objects(dict(position), world)
            rngs = gather_objects(torch.get_rng_state(), world)
            model_sd, opt_sd = _full_state(model, opt, fsdp)
            if rank == 0:
                _checkpoint(model, model_sd, opt_sd, step, log, positions, rngs, out, cfg, save)
            if world > 1:
                torch.distributed.barrier()
    model.eval()
    return log


@torch.no_grad()
def evaluate(model: BioGPT, batches: list[tuple[torch.Tensor, torch.Tensor]], autocast) -> float:
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast:
            logits = model(x, (x != PAD_ID).long() if (x == PAD_ID).any() else None)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=PAD_ID, reduction="sum"))
        n += int((y != PAD_ID).sum())
    return total / max(n, 1)


def _full_state(model: BioGPT, opt, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state (a collective under FSDP: every rank calls it)."""
    if not fsdp:
        return model.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, opt, options=options)


def _checkpoint(model, model_sd, opt_sd, step, log, positions, rngs, out: Path, cfg: TrainConfig, save) -> None:
    """Write `update_{step}/` (HF directory + trainer.pt) atomically, point `last/` at it, keep the newest."""
    tmp = out / f".update_{step:07d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if save is not None:
        # an unsharded copy to write the HF directory from; built on meta and never initialised, so that it
        # draws nothing from the RNG (an uninterrupted run must see the same random stream as a resumed one)
        with torch.random.fork_rng(), torch.device("meta"):
            plain = BioGPT(model.config)
        plain.load_state_dict(model_sd, assign=True)
        save(plain, tmp)
    state = {"model": model_sd, "optimizer": opt_sd, "step": step, "log": log,
             "position": positions, "rng": rngs, "config": asdict(cfg)}  # fmt: skip
    torch.save(state, tmp / "trainer.pt")
    (tmp / "train_log.json").write_text(json.dumps(log))
    final = out / f"update_{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    last = out / "last"
    if last.is_symlink() or last.exists():
        last.unlink() if last.is_symlink() else shutil.rmtree(last)
    last.symlink_to(final.name)
    kept = sorted(p for p in out.glob("update_*") if p.is_dir())
    for old in kept[: -cfg.keep_last]:
        shutil.rmtree(old)


def average_checkpoints(dirs: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (fairseq average_checkpoints.py)."""
    total: dict[str, torch.Tensor] = {}
    for d in dirs:
        sd = read_tensors(d / "trainer.pt")["model"]
        for k, v in sd.items():
            total[k] = total.get(k, 0) + v.double()
    return {k: (v / len(dirs)).float() for k, v in total.items()}
