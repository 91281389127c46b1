"""`biogpt finetune TASK [TASK ...]`: prompt fine-tuning with the original per-task recipe, then checkpoint averaging.

With several tasks, one model learns them all: each task gets its own learned prompt tokens (a slice of
learned1..K, recorded in the config as `prompt_tasks`), and the tasks' training pairs are mixed in one run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from biogpt.api import load
from biogpt.checkpoints.convert import save_hf
from biogpt.errors import TrainingError
from biogpt.models.biogpt import PAD_ID, BioGPT, BioGPTConfig
from biogpt.recipes import RECIPES  # the original per-task recipes (examples/*/train.sh)
from biogpt.tasks import get_task, task_for_model, training_pair
from biogpt.tasks.common import encode_source
from biogpt.text.tokenizer import Tokenizer
from biogpt.training.data import batch_by_size, pair_batches, rank_batches
from biogpt.training.dist import device_for, init, log0
from biogpt.training.loop import TrainConfig, train
from biogpt.training.runs import FinetuneRun, average_checkpoints, check_run

__all__ = ["RECIPES", "add_prompt_tokens", "finetune", "run_length", "schedule"]


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


def with_prompt_tokens(model: BioGPT, tasks: list, seed: int) -> BioGPT:
    """The model with the tasks' prompt tokens: added to a pre-trained model (several tasks: one slice of them
    each, in order, recorded in the config as `prompt_tasks`); a fine-tuned model must already have exactly
    one task's."""
    k = sum(t.num_prompt_tokens for t in tasks)
    if model.config.num_prompt_tokens == 0:
        model = add_prompt_tokens(model, k, seed)
    elif model.config.num_prompt_tokens != k or len(tasks) > 1:
        raise TrainingError(f"{'+'.join(t.name for t in tasks)} needs {k} new prompt tokens; the model already has "
                            f"{model.config.num_prompt_tokens}: fine-tune a pre-trained model")  # fmt: skip
    if len(tasks) > 1:  # a slice of the prompt tokens per task, in the order given
        first = 0
        model.config.prompt_tasks = {}
        for t in tasks:
            t.prompt_slice = (first, t.num_prompt_tokens)
            model.config.prompt_tasks[t.name] = [first, t.num_prompt_tokens]
            first += t.num_prompt_tokens
    return model


def _task_pairs(task, tok: Tokenizer, data_dir: str | Path, split: str, target_only: bool) -> list[tuple[list, list]]:
    """(inputs, targets) of a task's split; target_only: the source and prompt positions ignored (PAD_ID)."""
    pairs = []
    for ex in task.examples(data_dir, split):
        x, y = training_pair(task, tok, ex)
        if target_only:  # score the target only: source and prompt positions ignored
            n = len(encode_source(tok, ex.source, task.max_source_tokens)) + task.num_prompt_tokens
            y = [PAD_ID] * n + y[n:]
        pairs.append((x, y))
    return pairs


def finetune(
    task_name: str | list[str],
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
    device: str | torch.device = "cpu",
    on_existing: str = "resume",
    splits: dict[str, str] | None = None,
    save_every: int | None = None,
) -> Path:
    """Fine-tune for a task with the original recipe; returns the final checkpoint directory (`out/final`),
    the average of the last `average_last` checkpoints (HoC: the last one), which `biogpt eval` takes.

    Length: `max_updates` if given, else `epochs` if given, else the recipe's (epochs, or updates for HoC).
    Checkpoints (the ones averaged): every `save_every` updates if given, else as `run_length` says.
    An earlier run in out_dir is resumed if it has the same settings (task, model, data, target_only and
    the TrainConfig's), or started again with on_existing="overwrite". Bad values raise TrainingError before
    anything is loaded or written.

    Several task names train one multi-task model (see the module docstring); the recipe's lr, warm-up and
    length are then the first task's unless given, and `splits` may name another split than "train" for a
    task (KD-DTI's train file was never released: its "valid" split is the only one besides "test").
    """
    names = [task_name] if isinstance(task_name, str) else list(task_name)
    if not names or len(set(names)) != len(names):
        raise TrainingError(f"give each task once, got {names!r}")
    task_name = names[0]
    check_run(epochs=epochs, max_updates=max_updates, average_last=average_last, save_every=save_every,
              on_existing=on_existing)  # fmt: skip
    tasks = [get_task(name) for name in names]
    recipe = {**RECIPES[task_name]}
    # checked now (TrainConfig refuses bad values); its length and saving cadence follow from the data below
    cfg = TrainConfig(out_dir=str(out_dir), lr=lr if lr is not None else recipe["lr"], seed=seed,
                      warmup_updates=warmup_updates if warmup_updates is not None else recipe["warmup_updates"],
                      tokens_per_update=tokens_per_update, micro_batch_tokens=micro_batch_tokens, dtype=dtype,
                      keep_last=average_last, eval_every=10**9)  # fmt: skip
    dev = device_for(device)
    model, tok = load(model_path)
    if tok is None:
        raise TrainingError(f"{model_path}: no vocabulary beside the weights; fine-tuning needs the model's vocabulary")
    tasks = [task_for_model(t.name, model.config) for t in tasks]  # the model's settings (e.g. BioGPT-Large's)
    model = with_prompt_tokens(model, tasks, seed)
    k = sum(t.num_prompt_tokens for t in tasks)
    tok = Tokenizer(tok.vocab, num_prompt_tokens=k)
    pairs = [p for task in tasks for p in _task_pairs(task, tok, data_dir, (splits or {}).get(task.name, "train"),
                                                      target_only)]  # fmt: skip
    if not pairs:
        raise TrainingError(f"{data_dir}: no {'+'.join(names)} training examples to fine-tune on")
    rank, world = init(dev)
    model.to(dev)

    cfg, micro_per_update, updates_per_epoch = schedule(cfg, pairs, task_name, epochs, max_updates, save_every,
                                                        world)  # fmt: skip
    position = {"epoch": 0, "block": 0}
    stream = pair_batches(pairs, micro_batch_tokens, seed, position)
    run = FinetuneRun(out_dir, model_path, on_existing, rank)
    settings = {"task": "+".join(names), "model_path": run.model, "target_only": target_only,
                "training_pairs": len(pairs), "prompt_tokens": k}  # fmt: skip
    log0(rank, f"{'+'.join(names)}: {len(pairs)} training pairs, {updates_per_epoch} updates per epoch, "
               f"{cfg.max_updates} updates")  # fmt: skip
    train(model, cfg, rank_batches(stream, rank, world), micro_per_update, position,
          save=lambda m, d: save_hf(m, tok, d), settings=settings, on_existing=on_existing)  # fmt: skip

    def save_final(folder: Path, dirs: list[Path]) -> None:
        if len(dirs) > 1 and names != ["hoc"]:  # HoC's recipe keeps the last checkpoint
            model.load_state_dict(average_checkpoints(dirs))
        save_hf(model, tok, folder)

    return run.finish(save_final, average_last)


def schedule(cfg: TrainConfig, pairs: list, task_name: str, epochs: int | None, max_updates: int | None,
             save_every: int | None, world: int) -> tuple[TrainConfig, int, int]:
    """(cfg with the run's length and checkpoint cadence, micro-batches per update, updates per epoch) for
    training `pairs` on `world` ranks: the length as `run_length` says, checkpoints every `save_every` updates
    if given."""
    n_micro = len(batch_by_size([len(x) for x, _ in pairs], cfg.micro_batch_tokens, cfg.seed, 0))
    micro_per_update = max(1, cfg.tokens_per_update // (cfg.micro_batch_tokens * world))
    updates_per_epoch = max(1, n_micro // (micro_per_update * world))
    total, default_every = run_length(task_name, epochs, max_updates, updates_per_epoch)
    return replace(cfg, max_updates=total, save_every=save_every or default_every), micro_per_update, updates_per_epoch


def run_length(task_name: str, epochs: int | None, max_updates: int | None, updates_per_epoch: int) -> tuple[int, int]:
    """(updates, updates between checkpoints): `max_updates` if given, else `epochs` if given, else the recipe's
    epochs or updates. Checkpoints every epoch when the run counts epochs (the last ones are averaged), else
    20 over the run."""
    recipe = RECIPES[task_name]
    if max_updates is not None:
        total = max_updates
    elif epochs is not None:
        total = epochs * updates_per_epoch
    else:
        total = recipe.get("max_updates") or recipe["epochs"] * updates_per_epoch
    by_epoch = "epochs" in recipe or epochs is not None
    return total, updates_per_epoch if by_epoch else max(1, total // 20)
