"""`biogpt finetune pubmedqa --model GPT2DIR`: a GPT-2 family model (BioMedLM) fine-tuned on PubMedQA in the
generative format, through the one training loop (loop.py: the schedule, accumulation, bf16 autocast, DDP or
FSDP per block, resumable checkpoints).

Each training sequence is the prompt `question: Q context: C answer:` (tasks/pubmedqa_gpt2.py, cut as its
inference cuts it), the label as the model writes it (" yes") and <|endoftext|>; the loss is on the label's
tokens and <|endoftext|> only (target-only: the prompt positions are ignored).

Batches are right-padded (training/data.py). In a causal model a real position never sees the padding after
it, and each row's positions start at 0, so the logits of the real positions are the same with or without an
attention mask. The loop derives one from PAD_ID = 1, which in a byte-level vocabulary is an ordinary token
(`"`), so for this model the mask is dropped by a forward pre-hook for the run; targets use PAD_ID for the
ignored positions, which is safe because no label token is PAD_ID (checked).
"""

from __future__ import annotations

from pathlib import Path

import torch

from biogpt.api import family_of, load
from biogpt.checkpoints import gpt2 as gpt2_checkpoints
from biogpt.errors import TrainingError
from biogpt.models.biogpt import PAD_ID
from biogpt.models.gpt2 import GPT2
from biogpt.recipes import RECIPES
from biogpt.tasks import pubmedqa_gpt2 as qa
from biogpt.text.bytelevel import ByteLevelTokenizer
from biogpt.training.data import pair_batches, rank_batches
from biogpt.training.dist import device_for, init, log0
from biogpt.training.finetune import schedule
from biogpt.training.loop import TrainConfig, train
from biogpt.training.runs import FinetuneRun, average_checkpoints, check_run

TASKS = ("pubmedqa",)


def training_pairs(tok: ByteLevelTokenizer, examples: list, max_positions: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) per example: seq = prompt + label + <|endoftext|>, inputs seq[:-1], targets seq[1:]
    with every position that predicts a prompt token set to PAD_ID (ignored)."""
    labels = dict(zip(qa.LABELS, qa.label_ids(tok)))
    if any(PAD_ID in ids for ids in labels.values()) or tok.eos_token_id == PAD_ID:
        raise TrainingError(f"the tokenizer gives a label or <|endoftext|> the id {PAD_ID}, which training ignores")
    pairs = []
    for ex in examples:
        prompt = qa.prompt_ids(tok, ex.source, max_positions - qa.ANSWER_ROOM)
        answer = labels[ex.gold] + [tok.eos_token_id]
        seq = prompt + answer
        pairs.append((seq[:-1], [PAD_ID] * (len(prompt) - 1) + answer))
    return pairs


def _drop_mask(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the right-padded training rows need no attention mask (module docstring)."""
    kwargs.pop("attention_mask", None)
    return args[:1], kwargs


def finetune_gpt2(
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
    average_last: int = 5,
    save_every: int | None = None,
    seed: int = 1,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
    on_existing: str = "resume",
    fsdp: bool = False,
    split: str = "train",
) -> Path:
    """Fine-tune a GPT-2 family model on PubMedQA (generative format); returns `out/final`, the average of the
    last `average_last` checkpoints (one per epoch, or every `save_every` updates), a Hugging Face directory that
    `biogpt.load` and transformers' GPT2LMHeadModel read. Length, learning rate and warm-up default to the
    PubMedQA recipe's (recipes.py), as for BioGPT. `fsdp` shards each block and the rest across torchrun ranks
    (the 2.7B model on GPUs).
    """
    if task_name not in TASKS:
        raise TrainingError(f"{task_name}: a GPT-2 family model (BioMedLM) is fine-tuned for pubmedqa only (the "
                            "generative `question: ... context: ... answer:` format)")  # fmt: skip
    check_run(epochs=epochs, max_updates=max_updates, average_last=average_last, save_every=save_every,
              on_existing=on_existing)  # fmt: skip
    recipe = RECIPES[task_name]
    cfg = TrainConfig(out_dir=str(out_dir), lr=lr if lr is not None else recipe["lr"], seed=seed,
                      warmup_updates=warmup_updates if warmup_updates is not None else recipe["warmup_updates"],
                      tokens_per_update=tokens_per_update, micro_batch_tokens=micro_batch_tokens, dtype=dtype,
                      keep_last=average_last, eval_every=10**9, fsdp=fsdp)  # fmt: skip
    dev = device_for(device)
    model, tok = load(model_path, dtype=torch.float32)  # fp32 master weights; bf16 is autocast
    if not family_of(model).byte_level:
        raise TrainingError(f"{model_path}: not a GPT-2 family model; `biogpt finetune TASK` picks each family's "
                            "fine-tuning by the model")  # fmt: skip
    if tok is None:
        raise TrainingError(f"{model_path}: no tokenizer beside the weights; fine-tuning needs the model's vocabulary")
    with torch.no_grad():  # own, contiguous storage: loaded fp32 weights may be (transposed) views of the file
        for p in model.parameters():
            p.data = p.data.clone(memory_format=torch.contiguous_format)
    pairs = training_pairs(tok, qa.examples(data_dir, split), model.config.max_positions)
    if not pairs:
        raise TrainingError(f"{data_dir}: no PubMedQA {split} examples to fine-tune on")
    rank, world = init(dev)
    model.to(dev)

    cfg, micro_per_update, updates_per_epoch = schedule(cfg, pairs, task_name, epochs, max_updates, save_every,
                                                        world)  # fmt: skip
    position = {"epoch": 0, "block": 0}
    stream = pair_batches(pairs, micro_batch_tokens, seed, position)
    run = FinetuneRun(out_dir, model_path, on_existing, rank)
    settings = {"task": task_name, "format": "generative", "model_path": run.model, "split": split,
                "target_only": True, "training_pairs": len(pairs)}  # fmt: skip
    log0(rank, f"{task_name} (generative): {len(pairs)} training pairs, {updates_per_epoch} updates per epoch, "
               f"{cfg.max_updates} updates")  # fmt: skip
    hook = model.register_forward_pre_hook(_drop_mask, with_kwargs=True)
    try:
        train(model, cfg, rank_batches(stream, rank, world), micro_per_update, position,
              save=lambda m, d: gpt2_checkpoints.save_hf(m, tok, d), settings=settings,
              on_existing=on_existing)  # fmt: skip
    finally:
        hook.remove()

    def save_final(folder: Path, dirs: list[Path]) -> None:
        # from the checkpoints' full states, not from `model`, whose parameters FSDP leaves sharded
        with torch.device("meta"):
            plain = GPT2(model.config)
        plain.load_state_dict(average_checkpoints(dirs), assign=True)
        gpt2_checkpoints.save_hf(plain, tok, folder)

    return run.finish(save_final, average_last)
