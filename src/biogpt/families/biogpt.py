"""The BioGPT family: fairseq checkpoints and Hugging Face BioGPT directories, Moses + fastBPE tokenizer,
prompt-token task models (tasks/)."""

from __future__ import annotations

from pathlib import Path

import torch

from biogpt.checkpoints.biogpt import build_model, check_vocab, load_state
from biogpt.checkpoints.convert import save_hf
from biogpt.families import Family
from biogpt.models.biogpt import BioGPT, BioGPTConfig
from biogpt.text import EOS_ID, PAD_ID, Tokenizer, load_vocab


def _load(p: Path, dtype: torch.dtype | None, device: str | torch.device, vocab: str | Path | None):
    """(model, tokenizer or None): the tokenizer from `vocab`, else the vocabulary beside the weights."""
    state = load_state(p)
    cfg = state.config
    vocab_dir = Path(vocab) if vocab is not None else state.vocab_dir
    tok = None
    if vocab_dir is not None:
        tok = Tokenizer.from_pretrained(vocab_dir, num_prompt_tokens=cfg.num_prompt_tokens)
        check_vocab(cfg, len(tok.vocab.pieces), str(vocab_dir))
    return build_model(state, dtype, device), tok


def _save(model: BioGPT, tok: Tokenizer | None, d: Path) -> None:
    """A Hugging Face directory (checkpoints/convert.py), looked up when called so a test can replace it."""
    save_hf(model, tok, d)


def _describe(path: str) -> list[str]:
    """`biogpt info`: format, config, parameters, dtype, vocabulary and prompt tokens."""
    state = load_state(path)
    cfg, sd = state.config, state.state_dict
    n = sum(v.numel() for v in sd.values())
    where = "Hugging Face directory" if state.format == "hf" else "fairseq checkpoint"
    lines = [f"model: {path} (BioGPT, {where})", *(f"  {k}: {v}" for k, v in cfg.to_dict().items()),
             f"parameters: {n:,} ({n / 1e6:.1f}M; output head tied to the token embedding)",
             f"dtype: {next(iter(sd.values())).dtype}"]  # fmt: skip
    if state.vocab_dir is not None:
        v = load_vocab(state.vocab_dir)
        lines.append(f"vocabulary: {state.vocab_dir} ({len(v.pieces)} tokens, {len(v.merges)} BPE merges)")
    else:
        lines.append("vocabulary: none beside the weights")
    k = cfg.num_prompt_tokens
    first = cfg.vocab_size - k
    how = f"; {state.prompt_source}" if k else ""
    ids = f" (learned1..learned{k} = ids {first}..{cfg.vocab_size - 1}{how})" if k else ""
    lines.append(f"prompt tokens: {k}{ids}")
    return lines


BIOGPT = Family(
    name="biogpt",
    title="BioGPT",
    short="BioGPT",
    model_class=BioGPT,
    config_class=BioGPTConfig,
    recognise=lambda p: True,  # the fallback: its loader reports whatever else is wrong with the path
    load=_load,
    save=_save,
    describe=_describe,
    tokenizer=lambda d, lowercase: Tokenizer.from_pretrained(d, lowercase=lowercase),
    encode=lambda tok, text, lowercase: tok.encode_with_offsets(text),  # its own lowercasing; leading </s>
    special_ids=lambda tok: {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID},  # fairseq's </s> and <pad>
    tasks=("pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc"),
    finetune_tasks=("pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc"),
    finetune="biogpt.training.finetune:finetune",
    forms=("bf16-packed", "int8"),
    moses=True,
)
