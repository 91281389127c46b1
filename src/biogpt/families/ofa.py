"""The BiomedGPT (OFA) family: an encoder-decoder reading text and images; fairseq `.pt` checkpoints, Hugging
Face OFA-port directories and ours. Needs the ofa extra (tokenizers); without it a BiomedGPT path is one error
and every other family still loads."""

from __future__ import annotations

from pathlib import Path

import torch

from biogpt.errors import BioGPTError, CheckpointError
from biogpt.families import Family, config_names
from biogpt.models.ofa import OFA, OFAConfig

try:
    from biogpt.checkpoints import ofa as ckpt
    from biogpt.text.ofa import OFATokenizer
except ImportError:
    ckpt = OFATokenizer = None

MODEL_TYPES = ("biomedgpt", "ofa")


def recognise(p: Path) -> bool:
    """A BiomedGPT checkpoint (checkpoints/ofa.py `is_ofa`); without the ofa extra, a config.json naming one is
    an error saying how to install it."""
    if ckpt is not None:
        return ckpt.is_ofa(p)
    if p.is_dir() and config_names(p)[0] in MODEL_TYPES:
        raise CheckpointError(f"{p}: a BiomedGPT (OFA) model needs the ofa extra: pip install 'biogpt[ofa]'")
    return False


def load(p: Path, dtype: torch.dtype | None, device: str | torch.device, vocab: str | Path | None,
         ema: bool = False, image_size: int | None = None):  # fmt: skip
    """(model, tokenizer); `ema`: a fairseq checkpoint's EMA weights; `image_size`: the side images are resized
    to (only the preprocessing reads it)."""
    model, tok = ckpt.load_ofa(p, dtype, device, ema=ema, bpe_dir=vocab)
    if image_size is not None:
        model.config.image_size = int(image_size)
    return model, tok


def size_name(cfg: OFAConfig) -> str:
    """BiomedGPT-S/-M/-B by shape (the fairseq archs ofa_tiny/ofa_medium/ofa_base), else "custom size"."""
    shape = ("d_model", "encoder_layers", "decoder_layers", "n_head", "d_ffn", "resnet_layers")
    for name, preset in (("BiomedGPT-S", OFAConfig.tiny), ("BiomedGPT-M", OFAConfig.medium),
                         ("BiomedGPT-B", OFAConfig.base)):  # fmt: skip
        ref = preset()
        if all(getattr(cfg, k) == getattr(ref, k) for k in shape):
            return name
    return "custom size"


def describe(path: str) -> list[str]:
    """`biogpt info`: size, config, parameters (BatchNorm statistics counted apart), dtype, vocabulary."""
    cfg, sd, where = ckpt.read_state(path)
    stats = (".running_mean", ".running_var", ".num_batches_tracked")  # BatchNorm buffers: not learned weights
    n = sum(v.numel() for k, v in sd.items() if not k.endswith(stats))
    m = sum(v.numel() for k, v in sd.items() if k.endswith(stats))
    lines = [f"model: {path} (BiomedGPT / OFA encoder-decoder, {size_name(cfg)})",
             *(f"  {k}: {v}" for k, v in cfg.to_dict().items()),
             f"parameters: {n:,} ({n / 1e6:.1f}M; one token embedding shared by encoder, decoder and output head; "
             f"plus {m:,} BatchNorm running statistics)", f"dtype: {next(iter(sd.values())).dtype}"]  # fmt: skip
    try:
        tok = ckpt.load_tokenizer(where, cfg)
        lines.append(f"vocabulary: {tok.source} ({tok.vocab_size} ids: text + <mask>, <code_0>.. at "
                     f"{tok.code_start}, <bin_0>.. at {tok.bin_start})")  # fmt: skip
    except BioGPTError:
        lines.append("vocabulary: none beside the weights (pass --vocab with encoder.json + vocab.bpe + dict.txt)")
    return lines


def tokenizer(d: Path, lowercase: bool):
    """The OFATokenizer of a model or vocabulary folder."""
    if OFATokenizer is None:
        raise CheckpointError(f"{d}: a BiomedGPT (OFA) vocabulary needs the ofa extra: pip install 'biogpt[ofa]'")
    return OFATokenizer.from_pretrained(d)


def encode(tok, text: str, lowercase: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """The encoder's source: <s> ids </s> (the specials span nothing: (0, 0) before, (n, n) after)."""
    ids, spans = tok.encode_with_offsets(text.lower() if lowercase else text)
    n = len(text)
    return [tok.bos_token_id, *ids, tok.eos_token_id], [(0, 0), *spans, (n, n)]


OFA_FAMILY = Family(
    name="ofa",
    title="BiomedGPT (OFA)",
    short="BiomedGPT",
    model_class=OFA,
    config_class=OFAConfig,
    recognise=recognise,
    load=load,
    save=lambda model, tok, d: ckpt.save_ofa(model, tok, d),
    describe=describe,
    tokenizer=tokenizer,
    encode=encode,
    special_ids=lambda tok: {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                             "pad_token_id": tok.pad_token_id},  # fmt: skip
    tasks=("meqsum", "vqa", "nli", "medmnist", "caption"),
    finetune_tasks=("meqsum",),
    finetune="biogpt.training.finetune_ofa:finetune_ofa",
    load_options=("ema", "image_size"),
    encoder_decoder=True,
)
