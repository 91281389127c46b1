"""`biogpt finetune TASK`: prompt fine-tuning with the original per-task recipe, then checkpoint averaging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biogpt.api import load
from biogpt.checkpoints.convert import save_hf
from biogpt.errors import TrainingError
from biogpt.models.biogpt import PAD_ID, BioGPT, BioGPTConfig
from biogpt.tasks import get_task, training_pair
from biogpt.tasks.common import encode_source
from biogpt.text.tokenizer import Tokenizer
from biogpt.training.data import rank_batches
from biogpt.training.dist import dist_info, log0
from biogpt.training.loop import TrainConfig, average_checkpoints, train

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
    rank, world = dist_info()
    task = get_task(task_name)
    model, tok = load(model_path)
    if tok is None:
        raise TrainingError(f"{model_path}: no vocabulary beside the weights; fine-tuning needs the model's vocabulary")
    k = task.num_prompt_tokens
    if model.config.num_prompt_tokens == 0:
        model = add_prompt_tokens(model, k, seed)
    elif model.config.num_prompt_tokens != k:
        raise TrainingError(f"{task_name} needs {k} prompt tokens; the model has {model.config.num_prompt_tokens}")
    tok = Tokenizer(tok.vocab, num_prompt_tokens=k)
    model.to(device)
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
    log0(rank, f"{task_name}: {len(pairs)} training pairs, {updates_per_epoch} updates per epoch, {total} updates")
    train(model, cfg, rank_batches(stream(), rank, world), micro_per_update, position,
          save=lambda m, d: save_hf(m, tok, d))  # fmt: skip
    final = Path(out_dir) / "final"
    if rank == 0:
        dirs = sorted(p for p in Path(out_dir).glob("update_*") if p.is_dir())[-max(average_last, 1) :]
        if len(dirs) > 1 and task_name != "hoc":
            model.load_state_dict(average_checkpoints(dirs))
        save_hf(model, tok, final)
    return final
