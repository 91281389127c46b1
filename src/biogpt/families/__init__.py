"""Model families: each one (BioGPT, the GPT-2 family, BiomedGPT) described once, by a `Family`.

A family says how to recognise a path, load, save and describe it, its special token ids, which tasks and
precision forms it takes and where its fine-tuning driver lives. `biogpt.api` holds the table of families and
the lookups (`family_for(path)`, `family_of(model)`); every command asks the descriptor instead of testing
classes, so a new family is one module here plus one `register` call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from biogpt import jsonfile
from biogpt.errors import BioGPTError

Loader = Callable[..., tuple[nn.Module, Any]]  # (resolved path, dtype, device, vocab, **options) -> (model, tok)


@dataclass(frozen=True)
class Family:
    """One model family. Callables rather than methods, so that a family is data: a test can build one."""

    name: str  # short key: "biogpt", "gpt2", "ofa"
    title: str  # how messages name it: "BioGPT", "GPT-2 family (BioMedLM)", "BiomedGPT (OFA)"
    model_class: type[nn.Module]
    config_class: type
    recognise: Callable[[Path], bool]  # does this resolved path hold a model of the family
    load: Loader
    save: Callable[[nn.Module, Any, Path], None]  # model + tokenizer -> a folder `load` reads back
    describe: Callable[[str], list[str]]  # the lines of `biogpt info PATH`
    tokenizer: Callable[[Path, bool], Any]  # (folder, lowercase) -> the family's tokenizer
    encode: Callable[[Any, str, bool], tuple[list[int], list[tuple[int, int]]]]  # ids + spans the model is fed
    special_ids: Callable[[Any], dict[str, int]]  # tokenizer -> eos_token_id / pad_token_id for generation
    short: str = ""  # the model's name in a list: "BioGPT", "GPT-2", "BiomedGPT"
    tasks: tuple[str, ...] = ()  # `biogpt eval` / `extract` tasks it has a format for
    finetune_tasks: tuple[str, ...] = ()
    finetune: str | None = None  # "module:function" of its fine-tuning driver (training/ is above families/)
    forms: tuple[str, ...] = ()  # CPU precision forms it takes (backends/cpu/forms.py): "bf16-packed", "int8"
    load_options: tuple[str, ...] = ()  # keyword options its loader takes beyond dtype/device/vocab
    encoder_decoder: bool = False  # seq2seq (instruction + optional image in, text out); no scheduler
    byte_level: bool = False  # byte-level BPE, no leading special token on a prompt
    moses: bool = False  # Moses + fastBPE tokenizer: it lowercases and checks ids itself


def vocab_family(d: Path) -> str:
    """The family name of a folder of vocabulary files alone (no config.json): dict.txt + bpecodes: BioGPT;
    encoder.json + vocab.bpe (+ dict.txt: BiomedGPT) else GPT-2; tokenizer.json: GPT-2; vocab.json + merges.txt:
    BioGPT's `</w>` pieces, BiomedGPT's `<mask>`, else GPT-2's. Else "biogpt", whose loader names the files."""
    if (d / "dict.txt").exists() and (d / "bpecodes").exists():
        return "biogpt"
    if (d / "encoder.json").exists() and (d / "vocab.bpe").exists():
        return "ofa" if (d / "dict.txt").exists() else "gpt2"
    if (d / "tokenizer.json").exists():
        return "gpt2"
    if (d / "vocab.json").exists():
        try:
            vocab = jsonfile.loads((d / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BioGPTError(f"{d / 'vocab.json'}: not a JSON vocabulary ({e})") from None
        if not isinstance(vocab, dict):
            raise BioGPTError(f"{d / 'vocab.json'}: not a JSON object of token -> id")
        if "<mask>" in vocab:
            return "ofa"
        return "biogpt" if any(k.endswith("</w>") for k in vocab) else "gpt2"
    return "biogpt"


def config_names(p: Path) -> tuple[Any, list]:
    """(model_type, architectures) of a folder's config.json, (None, []) where there is none or it is unreadable
    (the family's loader then reports it)."""
    try:
        cfg = jsonfile.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, []
    if not isinstance(cfg, dict):
        return None, []
    archs = cfg.get("architectures")
    return cfg.get("model_type"), archs if isinstance(archs, list) else []
