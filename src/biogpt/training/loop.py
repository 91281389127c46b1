"""The training loop shared by pre-training and fine-tuning, written out once: the fairseq recipe.

- Adam with betas (0.9, 0.98), eps 1e-8 and decoupled weight decay 0.01 on every parameter (fairseq's Adam is
  AdamW-style), inverse-square-root schedule after a linear warm-up from 1e-7;
- gradient accumulation up to a target number of tokens per update; the loss of an update is the sum of
  its token losses divided by its token count (fairseq's normalisation);
- optional gradient clipping, bf16 autocast, periodic validation loss and perplexity, tokens/s and MFU;
- checkpoints are Hugging Face directories (so `biogpt generate` / `eval` load them) plus `trainer.pt`
  (optimizer, step, data position, RNG states): a resumed run continues with the same data order and the
  same losses as one that never stopped;
- several processes through `torchrun` (DDP, or FSDP2 with cfg.fsdp; gloo on CPU, NCCL on GPU, one GPU per
  rank): each update's micro-batches are dealt out across ranks, so N ranks compute the same update as one
  process accumulating N times as much;
- a run directory is resumed only with the settings it was started with (`run_settings` plus the caller's
  model and data settings, recorded in trainer.pt); `on_existing="overwrite"` starts it again instead.

`biogpt pretrain` reads token shards from `biogpt corpus build`; `biogpt finetune` reads a task's pairs.
The run folder itself (preparing it, the resume check, checkpoints, random states) is training/runs.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from biogpt.errors import TrainingError
from biogpt.models.biogpt import PAD_ID, BioGPT, BioGPTConfig
from biogpt.training.dist import barrier, gather_objects, init, log0
from biogpt.training.loss import lm_loss
from biogpt.training.runs import (
    MAY_CHANGE,
    ON_EXISTING,
    check_resumable,
    latest_checkpoint,
    prepare_out_dir,
    read_trainer_state,
    restore_rng,
    rng_state,
    write_checkpoint,
)

DTYPES = ("fp32", "bf16")

# the lowest allowed value of each numeric TrainConfig field, and whether that value itself is allowed
_LIMITS = {"max_updates": (1, True), "tokens_per_update": (1, True), "micro_batch_tokens": (1, True),
           "eval_every": (1, True), "save_every": (1, True), "keep_last": (1, True), "warmup_updates": (0, True),
           "lr": (0, False), "warmup_init_lr": (0, True), "weight_decay": (0, True), "eps": (0, False),
           "clip_norm": (0, True), "peak_tflops": (0, True)}  # fmt: skip


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

    def __post_init__(self) -> None:
        """Refuse values that would divide by zero, train nothing, or never save (TrainingError, all at once)."""
        types = {f.name: f.type for f in fields(self)}
        problems = []
        for name, (low, inclusive) in _LIMITS.items():
            v = getattr(self, name)
            kind = numbers.Integral if types[name] == "int" else numbers.Real
            ok = isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or not (v >= low if inclusive else v > low):
                rule = f"{'an integer' if kind is numbers.Integral else 'a number'} {'>=' if inclusive else '>'} {low}"
                problems.append(f"{name} must be {rule}, got {v!r}")
        if len(self.betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if problems:
            raise TrainingError("; ".join(problems))


def run_settings(cfg: TrainConfig) -> dict:
    """The TrainConfig fields a resumed run must share with the run it continues (not its length or cadence)."""
    return {k: v for k, v in asdict(cfg).items() if k not in MAY_CHANGE}


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
    settings: dict | None = None,
    on_existing: str = "resume",
    loss_fn: Callable[[torch.nn.Module, tuple], torch.Tensor] | None = None,
) -> list[dict]:
    """Run updates until cfg.max_updates on the model's device; returns the log.

    `next_batch()` yields (inputs [B, T], targets [B, T]) for this rank, targets padded with PAD_ID (ignored).
    Each update takes `micro_batches_per_update` of them on every rank. `settings`: what else the run is
    made of (model, data), recorded with `run_settings(cfg)` in every checkpoint. An earlier run in
    cfg.out_dir is resumed from its last checkpoint if these match (else TrainingError naming the
    differences) when on_existing="resume", or deleted first when on_existing="overwrite".

    `loss_fn(model, batch)`, for other models (BiomedGPT: training/finetune_ofa.py): the summed loss of one
    micro-batch, a tuple of tensors (moved to the device) whose last one is the targets, PAD_ID ignored and the
    rest counted as the update's tokens; the model given is the one to call (DDP-wrapped over several ranks).
    None: next-token cross-entropy of (inputs, targets), as BioGPT and GPT-2 train.
    """
    if on_existing not in ON_EXISTING:
        raise TrainingError(f"on_existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")
    if micro_batches_per_update < 1:
        raise TrainingError(f"micro_batches_per_update must be >= 1, got {micro_batches_per_update}")
    device = next(model.parameters()).device
    rank, world = init(device)
    at = _Ranks(device, rank, world, cfg.fsdp and world > 1)
    run = {**run_settings(cfg), **(settings or {})}
    step, log, state = _open_run(model, cfg, position, run, on_existing, at)
    opt, ddp = _distribute(model, cfg, state, at)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    model.train()
    meter = _Throughput(model.config, cfg)
    while step < cfg.max_updates:
        step += 1
        lr = inverse_sqrt_lr(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        batches = [next_batch() for _ in range(micro_batches_per_update)]
        total_loss, n_tokens = _accumulate(ddp, model, batches, loss_fn, at, autocast)
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        meter.tokens += int(n_tokens)
        entry = {"update": step, "lr": lr, "loss": float(total_loss / n_tokens)}
        if step % log_every == 0 or step == cfg.max_updates:
            log0(rank, json.dumps(meter.report(entry)))
        if valid_batches is not None and (step % cfg.eval_every == 0 or step == cfg.max_updates):
            _validate(model, valid_batches(), autocast, entry, rank)
        log.append(entry)
        if step % cfg.save_every == 0 or step == cfg.max_updates:
            _save(model, opt, at, cfg, {"step": step, "log": log, "settings": run}, position, save)
    model.eval()
    return log


@dataclass
class _Ranks:
    """Where this process trains: its device, its rank of `world`, and whether the model is sharded (FSDP)."""

    device: torch.device
    rank: int
    world: int
    fsdp: bool


def _open_run(model: BioGPT, cfg: TrainConfig, position: dict, run: dict, on_existing: str, at: _Ranks) -> tuple:
    """(step, log, trainer state or None): the run folder prepared on rank 0, the model, data position and random
    state restored from its last checkpoint if there is one, else this rank's seed set."""
    device, rank, world = at.device, at.rank, at.world
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():  # on every rank: one failing alone would leave the others waiting
        raise TrainingError(f"{out}: exists and is not a folder; choose another output folder")
    if rank == 0:
        prepare_out_dir(out, on_existing)
    barrier(world)  # the others look for a checkpoint only once rank 0 has cleared the folder
    torch.manual_seed(cfg.seed + rank)
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return 0, [], None
    state = read_trainer_state(ckpt / "trainer.pt")
    check_resumable(state, run, run_settings(cfg), ckpt)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # a checkpoint from before settings were recorded, with another model
        raise TrainingError(f"{ckpt}: its weights do not fit this model ({str(e).splitlines()[0]}); it was "
                            "trained with other settings: start again with on_existing='overwrite' "
                            "(--overwrite) or use another output folder") from None  # fmt: skip
    saved = state["position"] if isinstance(state["position"], list) else [state["position"]]
    position.clear()
    position.update(saved[min(rank, len(saved) - 1)])  # every rank walks the same global stream
    restore_rng(state["rng"], rank, device)
    log0(rank, f"resumed from {ckpt} at update {state['step']}" + (f" ({len(saved)} ranks then, {world} now)"
                                                                  if len(saved) != world else ""))  # fmt: skip
    return state["step"], state["log"], state


def _distribute(model: BioGPT, cfg: TrainConfig, state: dict | None, at: _Ranks) -> tuple:
    """(optimizer, the model to call): the model sharded (FSDP2) or wrapped (DDP) over several ranks, and the
    optimizer's state restored from a resumed run's."""
    device, world, fsdp = at.device, at.world, at.fsdp
    if fsdp:  # FSDP2: every block, then the rest (embeddings, final LayerNorm), sharded across ranks
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # the mesh on the model's device: by default FSDP takes the machine's accelerator, wrong for --device cpu
        mesh = init_device_mesh(device.type, (world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if state is not None:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            opt.load_state_dict(state["optimizer"])
    ddp = model
    if world > 1 and not fsdp:  # one device per process: its index for CUDA, none for CPU modules
        ids = [device.index] if device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return opt, ddp


def _accumulate(ddp, model: BioGPT, batches: list[tuple], loss_fn, at: _Ranks, autocast) -> tuple:
    """(summed loss, token count) of one update over all ranks, its gradients accumulated: each micro-batch's
    loss divided by the update's token count, gradients synchronised on the last micro-batch only."""
    device, world, fsdp = at.device, at.world, at.fsdp
    n_tokens = torch.tensor(float(sum(int((b[-1] != PAD_ID).sum()) for b in batches)), device=device)
    if world > 1:
        torch.distributed.all_reduce(n_tokens)
    total_loss = torch.zeros((), device=device)
    for j, batch in enumerate(batches):
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        sync = j == len(batches) - 1
        if fsdp:
            model.set_requires_gradient_sync(sync)
        ctx = ddp.no_sync() if world > 1 and not fsdp and not sync else contextlib.nullcontext()
        with ctx, autocast:
            loss = lm_loss(ddp, *batch, fused=not fsdp) if loss_fn is None else loss_fn(ddp, batch)
            # sum over tokens / all tokens of the update on all ranks; DDP averages over ranks, so x world
            (loss * world / n_tokens).backward()
        total_loss += loss.detach()
    if world > 1:
        torch.distributed.all_reduce(total_loss)
    return total_loss, n_tokens


class _Throughput:
    """Tokens per second (and MFU, given the peak) since the last log line."""

    def __init__(self, config: BioGPTConfig, cfg: TrainConfig) -> None:
        self.config, self.cfg = config, cfg
        self.t0, self.tokens = time.perf_counter(), 0

    def report(self, entry: dict) -> dict:
        """`entry` with tokens_per_s (and mfu) added, rounded for the log line; the count starts again."""
        dt = time.perf_counter() - self.t0
        entry["tokens_per_s"] = self.tokens / dt
        if self.cfg.peak_tflops > 0:
            seq_len = self.config.max_positions
            entry["mfu"] = self.tokens * flops_per_token(self.config, seq_len) / dt / (self.cfg.peak_tflops * 1e12)
        self.t0, self.tokens = time.perf_counter(), 0
        return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in entry.items()}


def _validate(model: BioGPT, batches: list, autocast, entry: dict, rank: int) -> None:
    """Validation loss and perplexity into `entry`, logged; the model left in training mode."""
    entry["valid_loss"] = evaluate(model, batches, autocast)
    entry["valid_ppl"] = math.exp(min(entry["valid_loss"], 50))
    model.train()
    log0(rank, f"update {entry['update']}: valid loss {entry['valid_loss']:.4f}, ppl {entry['valid_ppl']:.2f}")


def _save(model: BioGPT, opt, at: _Ranks, cfg: TrainConfig, progress: dict, position: dict, save) -> None:
    """A checkpoint of every rank's state (collectives: every rank calls it), written by rank 0. `progress`:
    step, log and settings."""
    positions = gather_objects(dict(position), at.world)
    rngs = gather_objects(rng_state(at.device), at.world)
    model_sd, opt_sd = _full_state(model, opt, at.fsdp)
    if at.rank == 0:
        state = {"model": model_sd, "optimizer": opt_sd, "step": progress["step"], "log": progress["log"],
                 "position": positions, "rng": rngs, "config": asdict(cfg),
                 "settings": progress["settings"]}  # fmt: skip
        write_checkpoint(model.config, state, Path(cfg.out_dir), cfg.keep_last, save)
    barrier(at.world)


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
