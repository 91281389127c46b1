"""`biogpt.load`: the one entry point that decides what a path holds and returns a ready model and tokenizer.

Every command and every caller loads through here, so a new model family or checkpoint format is added in
one place.
"""

from __future__ import annotations

from pathlib import Path

import torch

from biogpt.checkpoints.biogpt import build_model, check_vocab, load_state
from biogpt.checkpoints.convert import save_hf
from biogpt.checkpoints.io import DEMO, DEMO_DIR, demo_path

__all__ = ["DEMO", "DTYPES", "convert", "demo_path", "is_demo", "load"]
from biogpt.errors import CheckpointError
from biogpt.models.biogpt import BioGPT
from biogpt.text.tokenizer import Tokenizer

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def load(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    vocab: str | Path | None = None,
) -> tuple[BioGPT, Tokenizer | None]:
    """The model (eval mode) and its tokenizer from a Hugging Face directory, a fairseq checkpoint (file, or
    directory with checkpoint.pt), a hub id, or "demo" (the small model embedded in the package).

    The tokenizer comes from the vocabulary beside the weights, or from `vocab` (a directory with dict.txt +
    bpecodes or vocab.json + merges.txt); None when there is neither. It always has the model's prompt tokens.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise CheckpointError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    state = load_state(path)
    cfg = state.config
    vocab_dir = Path(vocab) if vocab is not None else state.vocab_dir
    tok = None
    if vocab_dir is not None:
        tok = Tokenizer.from_pretrained(vocab_dir, num_prompt_tokens=cfg.num_prompt_tokens)
        check_vocab(cfg, len(tok.vocab.pieces), str(vocab_dir))
    return build_model(state, dtype, device), tok


def is_demo(path: str | Path | None) -> bool:
    return path is not None and (str(path) == DEMO or Path(path).resolve() == DEMO_DIR)


def convert(src: str | Path, dst: str | Path) -> None:
    """Any supported checkpoint -> a Hugging Face directory (weights, config, tokenizer, prompt-token count)."""
    model, tok = load(src)
    save_hf(model, tok, dst)
