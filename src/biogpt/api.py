"""`biogpt.load`: the one entry point that decides what a path holds and returns a ready model and tokenizer.

Every command and every caller loads through here, so a new model family or checkpoint format is added in
one place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from biogpt.checkpoints import gpt2 as gpt2_checkpoints
from biogpt.checkpoints.biogpt import build_model, check_vocab, load_state
from biogpt.checkpoints.convert import save_hf
from biogpt.checkpoints.io import DEMO, DEMO_DIR, demo_path, read_json, resolve

__all__ = ["DEMO", "DTYPES", "convert", "demo_path", "family", "is_demo", "load"]
from biogpt.errors import CheckpointError
from biogpt.models.biogpt import BioGPT
from biogpt.models.gpt2 import GPT2
from biogpt.models.ofa import OFA
from biogpt.text.bytelevel import ByteLevelTokenizer
from biogpt.text.tokenizer import Tokenizer

try:  # BiomedGPT needs the ofa extra (tokenizers); without it every other family still loads
    from biogpt.checkpoints import ofa as ofa_checkpoints
except ImportError:
    ofa_checkpoints = None
if TYPE_CHECKING:
    from biogpt.text.ofa import OFATokenizer

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def load(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    vocab: str | Path | None = None,
    ema: bool = False,
    image_size: int | None = None,
) -> tuple[BioGPT | GPT2 | OFA, Tokenizer | ByteLevelTokenizer | OFATokenizer | None]:
    """The model (eval mode) and its tokenizer from a Hugging Face directory, a fairseq checkpoint (file, or
    directory with checkpoint.pt), a hub id, or "demo" (the small model embedded in the package).

    The tokenizer comes from the vocabulary beside the weights, or from `vocab` (a directory with dict.txt +
    bpecodes or vocab.json + merges.txt); None when there is neither. It always has the model's prompt tokens.

    A GPT-2 family directory (BioMedLM: config.json with model_type "gpt2" or a GPT2LMHeadModel architecture)
    gives a GPT2 model and its byte-level BPE tokenizer (tokenizer.json, vocab.json + merges.txt, or
    encoder.json + vocab.bpe, beside the weights or in `vocab`).

    A BiomedGPT (OFA) checkpoint (a fairseq .pt of BiomedGPT or its folder, a Hugging Face OFA-port directory, or
    one `convert` wrote) gives an OFA encoder-decoder and its OFATokenizer (encoder.json + vocab.bpe + dict.txt, or
    vocab.json + merges.txt, beside the weights or in `vocab`). `ema=True` takes the EMA weights of a BiomedGPT
    fairseq checkpoint (extra_state["ema"]), which the original evaluation uses. `image_size` sets the side images
    are resized to (default: the checkpoint's `patch_image_size`, else 256 for BiomedGPT-S/-M and 384 for -B).
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise CheckpointError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    kind = family(path)
    if kind == "ofa":
        model, otok = ofa_checkpoints.load_ofa(resolve(path), dtype, device, ema=ema, bpe_dir=vocab)
        if image_size is not None:
            model.config.image_size = int(image_size)  # only the preprocessing reads it
        return model, otok
    if image_size is not None:
        raise CheckpointError(f"{path}: image_size applies to BiomedGPT models; this one reads no images")
    if ema:
        raise CheckpointError(f"{path}: ema=True applies to BiomedGPT fairseq checkpoints; load this one without it")
    if kind == "gpt2":
        return _load_gpt2(resolve(path), dtype, device, vocab)
    state = load_state(path)
    cfg = state.config
    vocab_dir = Path(vocab) if vocab is not None else state.vocab_dir
    tok = None
    if vocab_dir is not None:
        tok = Tokenizer.from_pretrained(vocab_dir, num_prompt_tokens=cfg.num_prompt_tokens)
        check_vocab(cfg, len(tok.vocab.pieces), str(vocab_dir))
    return build_model(state, dtype, device), tok


def family(path: str | Path) -> str:
    """The model family of `path`: "gpt2" for a GPT-2 family Hugging Face directory (BioMedLM), "ofa" for a
    BiomedGPT checkpoint, else "biogpt" (whose loader reports any problem with the path)."""
    p = resolve(path)
    if ofa_checkpoints is not None and ofa_checkpoints.is_ofa(p):
        return "ofa"
    if p.is_dir() and (p / "config.json").exists():
        cfg = read_json(p / "config.json")
        if ofa_checkpoints is None and cfg.get("model_type") in ("biomedgpt", "ofa"):
            raise CheckpointError(f"{p}: a BiomedGPT (OFA) model needs the ofa extra: pip install 'biogpt[ofa]'")
        archs = cfg.get("architectures")
        if cfg.get("model_type") == "gpt2" or (isinstance(archs, list) and "GPT2LMHeadModel" in archs):
            return "gpt2"
    return "biogpt"


def _load_gpt2(p: Path, dtype: torch.dtype | None, device: str | torch.device, vocab: str | Path | None):
    state = gpt2_checkpoints.load_state(p)
    vocab_dir = Path(vocab) if vocab is not None else state.vocab_dir
    tok = gpt2_checkpoints.load_tokenizer(vocab_dir, state.config) if vocab_dir is not None else None
    return gpt2_checkpoints.build_model(state, dtype, device), tok


def is_demo(path: str | Path | None) -> bool:
    return path is not None and (str(path) == DEMO or Path(path).resolve() == DEMO_DIR)


def convert(src: str | Path, dst: str | Path, ema: bool = False, overwrite: bool = False) -> None:
    """Any supported checkpoint -> a Hugging Face directory (weights, config, tokenizer, prompt-token count); a
    BiomedGPT checkpoint -> biogpt's BiomedGPT directory (config.json, model.safetensors, vocab.json + merges.txt).
    `ema`: convert a BiomedGPT fairseq checkpoint's EMA weights.

    A non-empty `dst` is refused unless `overwrite`, and then replaced whole: the files of an earlier model (its
    tokenizer.json, generation_config.json, ...) left beside the new ones would make the folder load as a mix of
    two models. The new folder is written under a temporary name beside `dst` and renamed."""
    out = Path(dst)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} is not empty; choose a new folder, or pass --overwrite (overwrite=True) to "
                              "replace it whole")  # fmt: skip
    model, tok = load(src, ema=ema)
    tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if isinstance(model, OFA):
            ofa_checkpoints.save_ofa(model, tok, tmp)
        elif isinstance(model, GPT2):
            gpt2_checkpoints.save_hf(model, tok, tmp)
        else:
            save_hf(model, tok, tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, dst: Path) -> None:
    """Put folder `new` at `dst`, the old `dst` (if any) moved aside first and deleted after the rename."""
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        dst.rename(old)
    new.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
