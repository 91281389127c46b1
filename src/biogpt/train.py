"""Pre-training and fine-tuning BioGPT: one written-out training loop, the fairseq recipe.

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
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biogpt.model import PAD_ID, BioGPT, BioGPTConfig

PRESETS = {
    "tiny": dict(n_layer=2, d_model=64, n_head=4, d_ffn=256, max_positions=256),
    "small": dict(n_layer=4, d_model=256, n_head=4, d_ffn=1024, max_positions=512),
    "base": dict(n_layer=24, d_model=1024, n_head=16, d_ffn=4096, max_positions=1024),
    "large": dict(n_layer=48, d_model=1600, n_head=25, d_ffn=6400, max_positions=2048),
}


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


# ---------------------------------------------------------------------------------------------------
# the loss: output head + cross-entropy in row chunks


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, y_i) over rows with y_i != ignore, never holding all [N, V] logits at once.

    The gradients are formed during the forward pass (softmax - one-hot, then the two matmuls) and kept
    for backward: [N, d] and [V, d] instead of [N, V] logits in fp32, which for a 42k-token vocabulary are
    the bulk of a small model's training memory traffic. Softmax rows are formed `chunk` at a time, so
    that they stay in cache. In bf16 their rounded copies are gathered into groups of GROUP_ROWS rows,
    and the weight gradient is accumulated once per group: converting and adding a [V, d] fp32 product
    per chunk would cost more than the chunk's own work. In fp32 it is accumulated in place per chunk.
    """

    GROUP_ROWS = 1024

    @staticmethod
    def forward(ctx, h, W, y, ignore_index: int, chunk: int):
        N, V = h.shape[0], W.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        gh = torch.empty_like(h) if need else None
        gW = torch.zeros(W.shape, dtype=torch.float32, device=W.device) if need else None
        exact = h.dtype == torch.float32
        group = chunk if exact else max(chunk, _LinearCrossEntropy.GROUP_ROWS // chunk * chunk)
        buf = None if exact or not need else torch.empty(min(group, N), V, dtype=h.dtype, device=h.device)
        # per-chunk scratch, allocated once: fresh [chunk, V] tensors each chunk cost page faults
        c = min(chunk, N)
        logits_buf = torch.empty(c, V, dtype=h.dtype, device=h.device)
        f32_buf = None if exact else torch.empty(c, V, dtype=torch.float32, device=h.device)
        lp_buf = torch.empty(c, V, dtype=torch.float32, device=h.device)
        rows = torch.arange(c, device=h.device)
        for g0 in range(0, N, group):
            hg, yg = h[g0 : g0 + group], y[g0 : g0 + group]
            for s in range(0, len(yg), chunk):
                ys = yg[s : s + chunk]
                n = len(ys)
                logits = torch.mm(hg[s : s + chunk], W.t(), out=logits_buf[:n])  # [n, V]
                if not exact:
                    logits = f32_buf[:n].copy_(logits)
                lp = torch.log_softmax(logits, -1, out=lp_buf[:n])  # fp32 log-probabilities
                valid = ys != ignore_index
                yc = ys.clamp_min(0)
                loss -= (lp.gather(1, yc[:, None]).squeeze(1) * valid).sum()
                if need:
                    g = lp.exp_()  # softmax, in place
                    g[rows[:n], yc] -= 1
                    if not bool(valid.all()):
                        g[~valid] = 0
                    if exact:
                        torch.mm(g, W, out=gh[g0 + s : g0 + s + n])
                        gW.addmm_(g.t(), hg[s : s + chunk])
                    else:
                        buf[s : s + n] = g
            if need and not exact:
                G = buf[: len(yg)]  # [rows of the group, V] in h's dtype
                torch.mm(G, W, out=gh[g0 : g0 + len(yg)])
                gW += (G.t() @ hg).float()
        if need:  # validation runs without gradients and keeps nothing
            ctx.save_for_backward(gh, gW.to(W.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad):
        gh, gW = ctx.saved_tensors
        return gh * grad, gW * grad, None, None, None


def lm_loss(model, x: torch.Tensor, y: torch.Tensor, fused: bool = True, chunk: int = 128) -> torch.Tensor:
    """Summed next-token cross-entropy of targets y [B, T] (PAD_ID ignored) for inputs x [B, T].

    `model` may be DDP-wrapped. fused=False computes the full logits (needed under FSDP, where the tied
    weight is sharded outside the forward)."""
    mask = (x != PAD_ID).long() if (x == PAD_ID).any() else None
    if not fused:
        logits = model(x, mask)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=PAD_ID, reduction="sum")
    h = model(x, mask, return_hidden=True)
    W = getattr(model, "module", model).tok_emb.weight
    if torch.is_autocast_enabled(h.device.type):
        W = W.to(torch.get_autocast_dtype(h.device.type))
        h = h.to(W.dtype)
    return _LinearCrossEntropy.apply(h.flatten(0, 1), W, y.flatten(), PAD_ID, chunk)


# ---------------------------------------------------------------------------------------------------
# distributed helpers


def dist_info() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------
# data


class BlockData:
    """Fixed-length blocks from token shards; a deterministic order per epoch (seeded permutation).

    Block i is tokens[i*L : i*L + L + 1] of one shard: inputs are its first L tokens, targets its last L.
    """

    def __init__(self, shards: list[np.ndarray], block: int, seed: int):
        self.shards, self.block, self.seed = shards, block, seed
        self.index = [(s, i) for s, arr in enumerate(shards) for i in range((len(arr) - 1) // block)]
        if not self.index:
            raise ValueError(f"the corpus is shorter than one block of {block + 1} tokens")

    def __len__(self) -> int:
        return len(self.index)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(len(self.index))

    def get(self, k: int) -> torch.Tensor:
        s, i = self.index[k]
        return torch.from_numpy(self.shards[s][i * self.block : i * self.block + self.block + 1].astype(np.int64))


def lm_batches(data: BlockData, blocks_per_micro: int, position: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) micro-batches forever, continuing from `position` ({"epoch", "block"}), updating it."""
    while True:
        order = data.order(position["epoch"])
        while position["block"] + blocks_per_micro <= len(order):
            ks = order[position["block"] : position["block"] + blocks_per_micro]
            position["block"] += blocks_per_micro
            x = torch.stack([data.get(int(k)) for k in ks])
            yield x[:, :-1], x[:, 1:]
        position["epoch"] += 1
        position["block"] = 0


# ---------------------------------------------------------------------------------------------------
# the loop


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
        state = torch.load(last / "trainer.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        step, log = state["step"], state["log"]
        position.clear()
        position.update(state["position"][rank] if isinstance(state["position"], list) else state["position"])
        torch.set_rng_state(state["rng"][rank])
        _log(rank, f"resumed from {last} at update {step}")
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
            _log(rank, json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}))
        if valid_batches is not None and (step % cfg.eval_every == 0 or step == cfg.max_updates):
            entry["valid_loss"] = evaluate(model, valid_batches(), autocast)
            entry["valid_ppl"] = math.exp(min(entry["valid_loss"], 50))
            model.train()
            _log(rank, f"update {step}: valid loss {entry['valid_loss']:.4f}, ppl {entry['valid_ppl']:.2f}")
        log.append(entry)
        if step % cfg.save_every == 0 or step == cfg.max_updates:
            positions = _gather_objects(dict(position), world)
            rngs = _gather_objects(torch.get_rng_state(), world)
            model_sd, opt_sd = _full_state(model, opt, fsdp)
            if rank == 0:
                _checkpoint(model, model_sd, opt_sd, step, log, positions, rngs, out, cfg, save)
            if world > 1:
                torch.distributed.barrier()
    model.eval()
    return log


def _gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


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
        sd = torch.load(d / "trainer.pt", map_location="cpu", weights_only=False)["model"]
        for k, v in sd.items():
            total[k] = total.get(k, 0) + v.double()
    return {k: (v / len(dirs)).float() for k, v in total.items()}


# ---------------------------------------------------------------------------------------------------
# pre-training


def _rank_batches(stream: Iterator, rank: int, world: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Every rank walks the same global stream and keeps every world-th micro-batch."""

    def next_batch():
        got = None
        for w in range(world):
            b = next(stream)
            if w == rank:
                got = b
        return got

    return next_batch


def pretrain(
    corpus_dir: str | Path,
    vocab_dir: str | Path,
    cfg: TrainConfig,
    preset: str = "tiny",
    block: int | None = None,
    model_overrides: dict | None = None,
    device: str = "cpu",
) -> list[dict]:
    """Causal LM training from scratch on a built corpus; checkpoints under cfg.out_dir (cfg.fsdp to shard)."""
    from biogpt.checkpoint import save_hf
    from biogpt.corpus import load_shards
    from biogpt.tokenizer import Tokenizer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    rank, world = dist_info()
    tok = Tokenizer.from_pretrained(vocab_dir)
    mcfg = BioGPTConfig(vocab_size=tok.vocab_size, **{**PRESETS[preset], **(model_overrides or {})})
    block = block or mcfg.max_positions
    torch.manual_seed(cfg.seed)
    model = BioGPT(mcfg)
    model.init_weights(seed=cfg.seed)
    model.to(device)
    data = BlockData(load_shards(corpus_dir, "train"), block, cfg.seed)
    per_micro = max(1, cfg.micro_batch_tokens // block)
    micro_per_update = max(1, cfg.tokens_per_update // (per_micro * block * world))
    position = {"epoch": 0, "block": 0}
    next_batch = _rank_batches(lm_batches(data, per_micro, position), rank, world)
    valid = None
    valid_shards = load_shards(corpus_dir, "valid")
    if valid_shards and sum(map(len, valid_shards)) > block + 1:
        vdata = BlockData(valid_shards, block, cfg.seed)

        def valid():
            ks = list(range(min(len(vdata), 16)))
            xs = [vdata.get(k) for k in ks]
            return [(torch.stack(xs[i : i + per_micro])[:, :-1], torch.stack(xs[i : i + per_micro])[:, 1:])
                    for i in range(0, len(xs), per_micro)]  # fmt: skip

    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    _log(rank, f"model {preset}: {model.num_parameters() / 1e6:.2f}M parameters; {len(data)} blocks of {block}; "
               f"{micro_per_update} x {per_micro} blocks per update on each of {world} ranks")  # fmt: skip
    return train(model, cfg, next_batch, micro_per_update, position, valid, lambda m, d: save_hf(m, tok, d))


# ---------------------------------------------------------------------------------------------------
# fine-tuning

# The original per-task recipes (examples/*/train.sh): learning rate, warm-up, and epochs or updates.
RECIPES = {
    "bc5cdr": dict(lr=1e-5, warmup_updates=100, epochs=100),
    "ddi": dict(lr=1e-4, warmup_updates=500, epochs=100),
    "kd-dti": dict(lr=1e-5, warmup_updates=1000, epochs=30),
    "hoc": dict(lr=1e-5, warmup_updates=1000, max_updates=20000),
    "pubmedqa": dict(lr=1e-5, warmup_updates=100, epochs=100),
}


def add_prompt_tokens(model: BioGPT, k: int, seed: int = 1) -> BioGPT:
    """A copy of `model` with k more vocabulary rows (learned1..k), initialised N(0, d^-0.5) as fairseq."""
    cfg = model.config
    new_cfg = BioGPTConfig(
        **{**cfg.to_dict(), "vocab_size": cfg.vocab_size + k, "num_prompt_tokens": cfg.num_prompt_tokens + k}
    )
    out = BioGPT(new_cfg).to(model.tok_emb.weight.device, model.tok_emb.weight.dtype)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, cfg.d_model, generator=g) * cfg.d_model**-0.5
    sd["tok_emb.weight"] = torch.cat([sd["tok_emb.weight"], rows.to(sd["tok_emb.weight"])], 0)
    out.load_state_dict(sd)
    return out


def finetune(
    task_name: str,
    model_path: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    epochs: int | None = None,
    max_updates: int | None = None,
    lr: float | None = None,
    warmup_updates: int | None = None,
    tokens_per_update: int = 1024 * 32,
    micro_batch_tokens: int = 1024,
    target_only: bool = False,
    average_last: int = 5,
    seed: int = 1,
    dtype: str = "fp32",
    device: str = "cpu",
) -> Path:
    """Fine-tune for a task with the original recipe; returns the final checkpoint directory (`out/final`),
    the average of the last `average_last` epoch checkpoints (HoC: the last one), which `biogpt eval` takes."""
    from biogpt.checkpoint import load_pretrained, save_hf
    from biogpt.tasks import get_task
    from biogpt.tasks.common import encode_source
    from biogpt.tokenizer import Tokenizer

    rank, world = dist_info()
    task = get_task(task_name)
    model, tok = load_pretrained(model_path)
    if tok is None:
        raise ValueError(f"{model_path}: no vocabulary beside the weights")
    k = task.num_prompt_tokens
    if model.config.num_prompt_tokens == 0:
        model = add_prompt_tokens(model, k, seed)
    elif model.config.num_prompt_tokens != k:
        raise ValueError(f"{task_name} needs {k} prompt tokens; the model has {model.config.num_prompt_tokens}")
    tok = Tokenizer(tok.vocab, num_prompt_tokens=k)
    model.to(device)
    from biogpt.tasks import training_pair

    examples = task.examples(data_dir, "train")
    pairs = []
    for ex in examples:
        x, y = training_pair(task, tok, ex)
        if target_only:  # score the target only: source and prompt positions ignored
            n = len(encode_source(tok, ex.source, task.max_source_tokens)) + k
            y = [PAD_ID] * n + y[n:]
        pairs.append((x, y))
    recipe = {**RECIPES[task_name]}
    lr = lr if lr is not None else recipe["lr"]
    warmup = warmup_updates if warmup_updates is not None else recipe["warmup_updates"]

    def epoch_batches(epoch: int) -> list[list[int]]:
        """fairseq batch_by_size: shuffle, stable sort by length, fill batches up to micro_batch_tokens."""
        perm = np.random.default_rng(seed + epoch).permutation(len(pairs))
        perm = sorted(perm, key=lambda i: len(pairs[i][0]))
        batches, cur, longest = [], [], 0
        for i in perm:
            longest2 = max(longest, len(pairs[i][0]))
            if cur and longest2 * (len(cur) + 1) > micro_batch_tokens:
                batches.append(cur)
                cur, longest2 = [], len(pairs[i][0])
            cur.append(int(i))
            longest = longest2
        if cur:
            batches.append(cur)
        return [batches[j] for j in np.random.default_rng(seed + epoch).permutation(len(batches))]

    n_micro = len(epoch_batches(0))
    micro_per_update = max(1, tokens_per_update // (micro_batch_tokens * world))
    updates_per_epoch = max(1, n_micro // (micro_per_update * world))
    n_epochs = epochs if epochs is not None else recipe.get("epochs")
    total = max_updates if max_updates is not None else (recipe.get("max_updates") or n_epochs * updates_per_epoch)
    position = {"epoch": 0, "block": 0}

    def stream():
        while True:
            batches = epoch_batches(position["epoch"])
            while position["block"] < len(batches):
                idx = batches[position["block"]]
                position["block"] += 1
                T = max(len(pairs[i][0]) for i in idx)
                x = torch.full((len(idx), T), PAD_ID, dtype=torch.long)
                y = torch.full((len(idx), T), PAD_ID, dtype=torch.long)
                for r, i in enumerate(idx):  # right padding
                    x[r, : len(pairs[i][0])] = torch.tensor(pairs[i][0])
                    y[r, : len(pairs[i][1])] = torch.tensor(pairs[i][1])
                yield x, y
            position["epoch"] += 1
            position["block"] = 0

    save_every = updates_per_epoch if "epochs" in recipe or epochs is not None else max(1, total // 20)
    cfg = TrainConfig(out_dir=str(out_dir), lr=lr, warmup_updates=warmup, max_updates=total, seed=seed,
                      tokens_per_update=tokens_per_update, micro_batch_tokens=micro_batch_tokens, dtype=dtype,
                      save_every=save_every, keep_last=max(average_last, 1), eval_every=10**9)  # fmt: skip
    _log(rank, f"{task_name}: {len(pairs)} training pairs, {updates_per_epoch} updates per epoch, {total} updates")
    train(model, cfg, _rank_batches(stream(), rank, world), micro_per_update, position,
          save=lambda m, d: save_hf(m, tok, d))  # fmt: skip
    final = Path(out_dir) / "final"
    if rank == 0:
        dirs = sorted(p for p in Path(out_dir).glob("update_*") if p.is_dir())[-max(average_last, 1) :]
        if len(dirs) > 1 and task_name != "hoc":
            model.load_state_dict(average_checkpoints(dirs))
        save_hf(model, tok, final)
    return final
