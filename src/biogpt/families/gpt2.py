"""The GPT-2 family (BioMedLM): Hugging Face GPT2LMHeadModel directories with a byte-level BPE tokenizer;
PubMedQA in the generative `question: ... context: ... answer:` format."""

from __future__ import annotations

from pathlib import Path

import torch

from biogpt.checkpoints import gpt2 as ckpt
from biogpt.families import Family, config_names
from biogpt.models.gpt2 import GPT2, GPT2Config
from biogpt.text.bytelevel import ByteLevelTokenizer


def recognise(p: Path) -> bool:
    """config.json with model_type "gpt2" or a GPT2LMHeadModel architecture."""
    if not (p.is_dir() and (p / "config.json").exists()):
        return False
    model_type, archs = config_names(p)
    return model_type == "gpt2" or "GPT2LMHeadModel" in archs


def load(p: Path, dtype: torch.dtype | None, device: str | torch.device, vocab: str | Path | None):
    """(model, tokenizer or None): the tokenizer from `vocab`, else the files beside the weights."""
    state = ckpt.load_state(p)
    vocab_dir = Path(vocab) if vocab is not None else state.vocab_dir
    tok = ckpt.load_tokenizer(vocab_dir, state.config) if vocab_dir is not None else None
    return ckpt.build_model(state, dtype, device), tok


def describe(path: str) -> list[str]:
    """`biogpt info`: config, parameters, dtype and vocabulary of a GPT-2 family directory."""
    state = ckpt.load_state(path)
    cfg, sd = state.config, state.state_dict
    n = sum(v.numel() for v in sd.values())
    lines = [f"model: {path} (GPT-2 family, as BioMedLM; Hugging Face directory)",
             *(f"  {k}: {v}" for k, v in cfg.to_dict().items()),
             f"parameters: {n:,} ({n / 1e6:.1f}M; output head tied to the token embedding)",
             f"dtype: {next(iter(sd.values())).dtype}"]  # fmt: skip
    if state.vocab_dir is not None:
        tok = ByteLevelTokenizer.from_pretrained(state.vocab_dir)
        lines.append(f"vocabulary: {state.vocab_dir} (byte-level BPE, {tok.vocab_size} tokens; <|endoftext|> = "
                     f"{tok.eos_token_id})")  # fmt: skip
    else:
        lines.append("vocabulary: none beside the weights")
    return lines


def encode(tok: ByteLevelTokenizer, text: str, lowercase: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Plain ids and spans: a GPT-2 prompt starts with no special token."""
    return tok.encode_with_offsets(text.lower() if lowercase else text)


GPT2_FAMILY = Family(
    name="gpt2",
    title="GPT-2 family (BioMedLM)",
    short="GPT-2",
    model_class=GPT2,
    config_class=GPT2Config,
    recognise=recognise,
    load=load,
    save=ckpt.save_hf,
    describe=describe,
    tokenizer=lambda d, lowercase: ByteLevelTokenizer.from_pretrained(d),
    encode=encode,
    special_ids=lambda tok: {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.eos_token_id},  # <|endoftext|>
    tasks=("pubmedqa",),
    finetune_tasks=("pubmedqa",),
    finetune="biogpt.training.finetune_gpt2:finetune_gpt2",
    forms=("bf16-packed", "int8"),
    byte_level=True,
)
