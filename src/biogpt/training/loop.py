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
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from biogpt.api import family_of
from biogpt.checkpoints.io import read_tensors
from biogpt.errors import CheckpointError, TrainingError
from biogpt.models.biogpt import PAD_ID, BioGPT, BioGPTConfig
from biogpt.training.dist import barrier, gather_objects, init, log0
from biogpt.training.loss import lm_loss

DTYPES = ("fp32", "bf16")
ON_EXISTING = ("resume", "overwrite")  # what `train` does with an earlier run in cfg.out_dir

# the lowest allowed value of each numeric TrainConfig field, and whether that value itself is allowed
_LIMITS = {"max_updates": (1, True), "tokens_per_update": (1, True), "micro_batch_tokens": (1, True),
           "eval_every": (1, True), "save_every": (1, True), "keep_last": (1, True), "warmup_updates": (0, True),
           "lr": (0, False), "warmup_init_lr": (0, True), "weight_decay": (0, True), "eps": (0, False),
           "clip_norm": (0, True), "peak_tflops": (0, True)}  # fmt: skip
# TrainConfig fields a resumed run may change: where it is, how long it runs, how often it logs and saves, and
# how the model is laid out over the ranks (checkpoints hold full, unsharded state either way)
_MAY_CHANGE = ("out_dir", "max_updates", "eval_every", "save_every", "keep_last", "peak_tflops", "fsdp")


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
    return {k: v for k, v in asdict(cfg).items() if k not in _MAY_CHANGE}


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
    out = Path(cfg.out_dir)
    run = {**run_settings(cfg), **(settings or {})}
    if out.exists() and not out.is_dir():  # on every rank: one failing alone would leave the others waiting
        raise TrainingError(f"{out}: exists and is not a folder; choose another output folder")
    if rank == 0:
        _prepare_out_dir(out, on_existing)
    barrier(world)  # the others look for a checkpoint only once rank 0 has cleared the folder
    torch.manual_seed(cfg.seed + rank)
    step, log = 0, []
    state = None
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        state = _read_trainer_state(ckpt / "trainer.pt")
        _check_resumable(state, run, cfg, ckpt)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:  # a checkpoint from before settings were recorded, with another model
            raise TrainingError(f"{ckpt}: its weights do not fit this model ({str(e).splitlines()[0]}); it was "
                                "trained with other settings: start again with on_existing='overwrite' "
                                "(--overwrite) or use another output folder") from None  # fmt: skip
        step, log = state["step"], state["log"]
        saved = state["position"] if isinstance(state["position"], list) else [state["position"]]
        position.clear()
        position.update(saved[min(rank, len(saved) - 1)])  # every rank walks the same global stream
        _restore_rng(state["rng"], rank, device)
        log0(rank, f"resumed from {ckpt} at update {step}" + (f" ({len(saved)} ranks then, {world} now)"
                                                              if len(saved) != world else ""))  # fmt: skip
    fsdp = cfg.fsdp and world > 1
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
            log0(rank, json.dumps({k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in entry.items()}))
        if valid_batches is not None and (step % cfg.eval_every == 0 or step == cfg.max_updates):
            entry["valid_loss"] = evaluate(model, valid_batches(), autocast)
            entry["valid_ppl"] = math.exp(min(entry["valid_loss"], 50))
            model.train()
            log0(rank, f"update {step}: valid loss {entry['valid_loss']:.4f}, ppl {entry['valid_ppl']:.2f}")
        log.append(entry)
        if step % cfg.save_every == 0 or step == cfg.max_updates:
            positions = gather_objects(dict(position), world)
            rngs = gather_objects(_rng_state(device), world)
            model_sd, opt_sd = _full_state(model, opt, fsdp)
            if rank == 0:
                state = {"model": model_sd, "optimizer": opt_sd, "step": step, "log": log, "position": positions,
                         "rng": rngs, "config": asdict(cfg), "settings": run}  # fmt: skip
                _checkpoint(model.config, state, out, cfg.keep_last, save)
            barrier(world)
    model.eval()
    return log


def latest_checkpoint(out: str | Path) -> Path | None:
    """The last committed checkpoint of a run: `out/last`, or, if a crash came between writing a checkpoint
    and pointing `last` at it, the newest complete `out/update_*`; None for a new run."""
    out = Path(out)
    if (out / "last" / "trainer.pt").is_file():
        return out / "last"
    done = sorted(p for p in out.glob("update_*") if (p / "trainer.pt").is_file())
    return done[-1] if done else None


def _prepare_out_dir(out: Path, on_existing: str) -> None:
    """Create `out`; remove what an interrupted checkpoint left (`.update_*.tmp`), and for "overwrite" the
    earlier run's checkpoints too. Only files this loop writes are touched."""
    out.mkdir(parents=True, exist_ok=True)
    stale = list(out.glob(".update_*.tmp")) + [out / ".last.tmp"]
    if on_existing == "overwrite":
        stale += list(out.glob("update_*")) + [out / "last"]
    for p in stale:
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


def _read_trainer_state(path: Path) -> dict:
    """trainer.pt through `torch.load(weights_only=True)`: tensors and plain values only, nothing executed."""
    state = read_tensors(path)
    need = ("model", "optimizer", "step", "log", "position", "rng")
    if not isinstance(state, dict) or any(k not in state for k in need):
        raise CheckpointError(f"{path}: not a biogpt trainer state (needs {', '.join(need)})")
    return state


def _plain(v: object) -> object:
    """Tuples as lists, so that a value compares equal however it was stored."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def settings_differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """`name: saved value in the checkpoint, new value now` for every setting that differs (nested: a.b)."""
    out = []
    for k in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(k, "(not recorded)"), now.get(k, "(not given)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, f"{prefix}{k}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return out


def _check_resumable(state: dict, run: dict, cfg: TrainConfig, ckpt: Path) -> None:
    saved = state.get("settings")
    now = run
    if saved is None:  # a checkpoint from before settings were recorded: its TrainConfig is all there is
        saved = {k: v for k, v in state.get("config", {}).items() if k not in _MAY_CHANGE}
        now = {k: v for k, v in run_settings(cfg).items() if k in saved}
    diffs = settings_differences(saved, now)
    if diffs:
        raise TrainingError(f"{ckpt.parent} holds a run with other settings ({'; '.join(diffs)}): resume it with "
                            "the same settings, or start again with on_existing='overwrite' (--overwrite), or use "
                            "another output folder")  # fmt: skip


def _rng_state(device: torch.device) -> dict:
    """This rank's random state: the CPU generator, and its GPU's for a CUDA run (dropout draws there)."""
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _restore_rng(rngs: list, rank: int, device: torch.device) -> None:
    if rank >= len(rngs):  # more ranks than the run was saved from: the new ones keep their seed
        return
    rng = rngs[rank] if isinstance(rngs[rank], dict) else {"cpu": rngs[rank]}  # older: the CPU state only
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)


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


def _model_class(config) -> type[torch.nn.Module]:
    """The model class a config belongs to."""
    return family_of(config).model_class


def _checkpoint(config: BioGPTConfig, state: dict, out: Path, keep_last: int, save) -> None:
    """Write `update_{step}/` (HF directory + trainer.pt) atomically, point `last/` at it, keep the newest.

    Everything is written under `.update_{step}.tmp/` and renamed; `last` is replaced by a rename too, so an
    interruption at any point leaves the previous checkpoint as the last one (and `_prepare_out_dir` removes
    the leftovers on the next run).
    """
    step = state["step"]
    tmp = out / f".update_{step:07d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if save is not None:
        # an unsharded copy to write the HF directory from; built on meta and never initialised, so that it
        # draws nothing from the RNG (an uninterrupted run must see the same random stream as a resumed one)
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            plain = _model_class(config)(config)
        plain.load_state_dict(state["model"], assign=True)
        save(plain, tmp)
    torch.save(state, tmp / "trainer.pt")
    (tmp / "train_log.json").write_text(json.dumps(state["log"]))
    final = out / f"update_{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    link = out / ".last.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(final.name)
    last = out / "last"
    if last.is_dir() and not last.is_symlink():  # a real folder cannot be replaced by a rename
        shutil.rmtree(last)
    os.replace(link, last)
    kept = sorted(p for p in out.glob("update_*") if p.is_dir())
    for old in kept[:-keep_last]:
        shutil.rmtree(old)


def average_checkpoints(dirs: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (fairseq average_checkpoints.py)."""
    total: dict[str, torch.Tensor] = {}
    for d in dirs:
        sd = read_tensors(d / "trainer.pt")["model"]
        for k, v in sd.items():
            total[k] = total.get(k, 0) + v.double()
    return {k: (v / len(dirs)).float() for k, v in total.items()}
