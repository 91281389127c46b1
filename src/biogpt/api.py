"""`biogpt.load`: the one entry point that decides what a path holds and returns a ready model and tokenizer.

Every command and every caller loads through here. The model families (families/) are one table, `FAMILIES`:
`family_for(path)` recognises a path, `family_of(model)` names a loaded model's family, and `register(family)`
adds one (a new family is a descriptor module plus one call; nothing else in the package changes).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from biogpt.backends.cpu import native_bf16, pack_bf16, quantize_int8
from biogpt.checkpoints.io import DEMO, DEMO_DIR, demo_path, resolve
from biogpt.errors import CheckpointError
from biogpt.families import Family
from biogpt.families.biogpt import BIOGPT
from biogpt.families.gpt2 import GPT2_FAMILY
from biogpt.families.ofa import OFA_FAMILY
from biogpt.models.biogpt import BioGPT
from biogpt.models.gpt2 import GPT2
from biogpt.text.bytelevel import ByteLevelTokenizer
from biogpt.text.tokenizer import Tokenizer

if TYPE_CHECKING:
    from biogpt.models.ofa import OFA
    from biogpt.text.ofa import OFATokenizer

__all__ = ["DEMO", "DTYPES", "FAMILIES", "FORMS", "Family", "convert", "demo_path", "family", "family_for",
           "family_of", "is_demo", "load", "precision", "register"]  # fmt: skip

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}  # fmt: skip
# precision forms `load(form=)` takes: the CLI's --dtype choices, and the CPU forms by their own names
FORMS = ("fp32", "bf16", "auto", "bf16-packed", "int8")
FAMILIES: dict[str, Family] = {}
# what an option given to a family that takes none says
OPTION_ERRORS = {"image_size": "image_size applies to BiomedGPT models; this one reads no images",
                 "ema": "ema=True applies to BiomedGPT fairseq checkpoints; load this one without it"}  # fmt: skip


def register(family: Family) -> Family:
    """Add (or replace, by name) a model family. A new family is tried first when recognising a path, so it can
    claim paths a more general one would also take; a replaced one keeps its place (replacing BioGPT, the
    fallback that accepts any path, must not let it claim the other families' folders)."""
    FAMILIES[family.name] = family  # a dict keeps a replaced key where it was
    return family


for _f in (BIOGPT, GPT2_FAMILY, OFA_FAMILY):  # BioGPT first: tried last, the fallback
    register(_f)


def _recognise(p: Path) -> Family:
    """The family of a resolved path: the latest registered whose `recognise` accepts it."""
    for desc in reversed(FAMILIES.values()):
        if desc.recognise(p):
            return desc
    raise CheckpointError(f"{p}: no model family recognises this path")


def family_for(path: str | Path) -> Family:
    """The family of a model path (a folder, a fairseq checkpoint, a hub id, or "demo"), told from its files
    without loading the weights."""
    return _recognise(resolve(path))


def family(path: str | Path) -> str:
    """The name of `path`'s family: "biogpt", "gpt2", "ofa", or a registered family's."""
    return family_for(path).name


def family_of(obj: Any) -> Family:
    """The family of a model or a config: the family whose class is nearest in its class hierarchy (a
    registered subclass of GPT2 is its own family, not GPT-2's)."""
    order = type(obj).__mro__
    best = None
    for desc in FAMILIES.values():
        for cls in (desc.model_class, desc.config_class):
            if cls in order and (best is None or order.index(cls) < best[0]):
                best = (order.index(cls), desc)
    if best is None:
        raise CheckpointError(f"{type(obj).__name__} belongs to no registered model family")
    return best[1]


def precision(desc: Family, form: str, device: str | torch.device) -> tuple[torch.dtype | None, str | None]:
    """(dtype to load in, CPU form to apply after) for a precision choice: "fp32" (exact), "bf16" (bf16, packed
    for oneDNN where the family takes that form), "auto" (bf16 on a GPU or a CPU that runs it natively, else
    fp32), "bf16-packed", or "int8" (int8 weights, CPU only)."""
    if form not in FORMS:
        raise CheckpointError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if form in ("bf16-packed", "int8") and form not in desc.forms:
        takes = " and ".join(f.short or f.title for f in FAMILIES.values() if form in f.forms)
        raise CheckpointError(f"--dtype {form} applies to {takes} models; run {desc.short or desc.title} with fp32, "
                              "bf16 or auto")  # fmt: skip
    if form == "int8":
        if str(device) != "cpu":
            raise CheckpointError(f"--dtype int8 runs on the CPU; on --device {device} use bf16 (or fp32, the exact "
                                  "mode)")  # fmt: skip
        return None, "int8"
    if form == "auto":
        form = "bf16" if str(device) != "cpu" or native_bf16() else "fp32"
    if form == "fp32":
        return None, None
    return torch.bfloat16, "bf16-packed" if "bf16-packed" in desc.forms else None


def load(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    vocab: str | Path | None = None,
    ema: bool = False,
    image_size: int | None = None,
    *,
    form: str | None = None,
) -> tuple[BioGPT | GPT2 | OFA, Tokenizer | ByteLevelTokenizer | OFATokenizer | None]:
    """The model (eval mode) and its tokenizer from a Hugging Face directory, a fairseq checkpoint (file, or
    directory with checkpoint.pt), a hub id, or "demo" (the small model embedded in the package). The path is
    resolved once, recognised by its family (families/), and loaded by that family.

    `form` chooses the precision instead of `dtype` (see `precision`): "fp32", "bf16", "auto", "bf16-packed" or
    "int8"; the CPU forms (backends/cpu/forms.py) are applied once the weights are loaded.

    The tokenizer comes from the vocabulary beside the weights, or from `vocab`; None when there is neither.
    BioGPT: dict.txt + bpecodes or vocab.json + merges.txt, with the model's prompt tokens. GPT-2 family
    (BioMedLM: config.json with model_type "gpt2" or a GPT2LMHeadModel architecture): its byte-level BPE
    (tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe). BiomedGPT (OFA: a fairseq .pt of
    BiomedGPT or its folder, a Hugging Face OFA-port directory, or one `convert` wrote): an OFATokenizer.
    `ema=True` takes the EMA weights of a BiomedGPT fairseq checkpoint (extra_state["ema"]), which the original
    evaluation uses. `image_size` sets the side BiomedGPT's images are resized to (default: the checkpoint's
    `patch_image_size`, else 256 for BiomedGPT-S/-M and 384 for -B).
    """
    p = resolve(path)
    desc = _recognise(p)
    applied = None
    if form is not None:
        if dtype is not None:
            raise CheckpointError("give dtype or form, not both")
        dtype, applied = precision(desc, form, device)
    elif isinstance(dtype, str):
        if dtype not in DTYPES:
            raise CheckpointError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    options = {k: v for k, v in (("ema", ema), ("image_size", image_size)) if v is not None and v is not False}
    for name in options:
        if name not in desc.load_options:
            raise CheckpointError(f"{path}: {OPTION_ERRORS.get(name, f'{name} does not apply to this model')}")
    model, tok = desc.load(p, dtype, device, vocab, **options)
    if applied == "int8":
        quantize_int8(model)
    elif applied == "bf16-packed":
        pack_bf16(model)  # the CPU form: weights laid out once for oneDNN's bf16 kernels
    return model, tok


def is_demo(path: str | Path | None) -> bool:
    return path is not None and (str(path) == DEMO or Path(path).resolve() == DEMO_DIR)


def convert(src: str | Path, dst: str | Path, ema: bool = False, overwrite: bool = False) -> None:
    """Any supported checkpoint -> the folder its family writes: a Hugging Face directory (weights, config,
    tokenizer, prompt-token count); a BiomedGPT checkpoint -> biogpt's BiomedGPT directory (config.json,
    model.safetensors, vocab.json + merges.txt). `ema`: convert a BiomedGPT fairseq checkpoint's EMA weights.

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
        family_of(model).save(model, tok, tmp)
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
