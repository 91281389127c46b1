"""GPT-2 family checkpoints (BioMedLM): Hugging Face `GPT2LMHeadModel` directories, by one explicit key map.

Weights come from `model.safetensors`, its shards (`model.safetensors.index.json`), `pytorch_model.bin` or its
shards (`pytorch_model.bin.index.json`). A .bin is read by `torch.load(weights_only=True, mmap=True)`: the
tensors stay views of the mapped file, and the Conv1D weights ([in, out]) become our Linears' [out, in] as
transposed views, so loading in fp32 never holds a second copy (another dtype: see build_model).
The causal-mask buffers `attn.bias` / `attn.masked_bias` that old checkpoints carry are dropped; `lm_head.weight`
is accepted when it equals the token embedding (tied, as every GPT2LMHeadModel is) and refused otherwise: this
family has no separate output head. Any other unexpected, missing or mis-shaped key is a CheckpointError, and
so is a config this model does not implement.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from biogpt.checkpoints.io import read_hf_weights, read_json, read_tensors, resolve, write_json, write_safetensors
from biogpt.errors import CheckpointError, VocabError
from biogpt.models.gpt2 import ACTIVATIONS, GPT2, GPT2Config
from biogpt.text.bytelevel import ByteLevelTokenizer

# ---------------------------------------------------------------------------------------------------
# key maps

# ours <- HF (under "transformer."); True: a Conv1D weight, stored [in, out], transposed into a Linear's [out, in]
_LAYER_MAP = {
    "ln1.weight": ("ln_1.weight", False),
    "ln1.bias": ("ln_1.bias", False),
    "qkv.weight": ("attn.c_attn.weight", True),
    "qkv.bias": ("attn.c_attn.bias", False),
    "out.weight": ("attn.c_proj.weight", True),
    "out.bias": ("attn.c_proj.bias", False),
    "ln2.weight": ("ln_2.weight", False),
    "ln2.bias": ("ln_2.bias", False),
    "fc1.weight": ("mlp.c_fc.weight", True),
    "fc1.bias": ("mlp.c_fc.bias", False),
    "fc2.weight": ("mlp.c_proj.weight", True),
    "fc2.bias": ("mlp.c_proj.bias", False),
}
_TOP_MAP = {
    "tok_emb.weight": "wte.weight",
    "pos_emb.weight": "wpe.weight",
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
}
_PREFIX = "transformer."
_HEAD = "lm_head.weight"
_BUFFERS = re.compile(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)")  # causal masks, not weights


def hf_to_ours(hf: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Map an HF GPT2LMHeadModel (or GPT2Model, without the "transformer." prefix) state dict to ours; raise on
    missing or unexpected keys and on an output head that differs from the token embedding."""
    hf = {k: v for k, v in hf.items() if not _BUFFERS.fullmatch(k)}
    head = hf.pop(_HEAD, None)
    prefix = _PREFIX if any(k.startswith(_PREFIX) for k in hf) else ""
    out: dict[str, torch.Tensor] = {}
    missing = []

    def take(name: str, transpose: bool = False) -> torch.Tensor | None:
        if prefix + name not in hf:
            missing.append(prefix + name)
            return None
        t = hf.pop(prefix + name)
        return t.t() if transpose and t.dim() == 2 else t  # a view: no copy of the mapped file

    for ours, theirs in _TOP_MAP.items():
        out[ours] = take(theirs)
    for i in range(n_layer):
        for ours, (theirs, conv) in _LAYER_MAP.items():
            out[f"blocks.{i}.{ours}"] = take(f"h.{i}.{theirs}", conv)
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")
    if hf:
        extra = sorted(hf)
        raise CheckpointError(f"checkpoint has {len(extra)} unexpected weights, e.g. {extra[:3]}")
    emb = out["tok_emb.weight"]
    if head is not None and head is not emb and (head.shape != emb.shape or not torch.equal(head, emb)):
        raise CheckpointError(
            f"the checkpoint's output head ({_HEAD}, {tuple(head.shape)}) differs from its token embedding "
            f"({tuple(emb.shape)}); biogpt's GPT-2 family ties them (as GPT2LMHeadModel does), so an untied head "
            "cannot be loaded"
        )
    return out


def hf_name(ours: str) -> str:
    """The GPT2LMHeadModel name of one of our keys (for messages)."""
    if ours in _TOP_MAP:
        return _PREFIX + _TOP_MAP[ours]
    _, i, rest = ours.split(".", 2)
    return f"{_PREFIX}h.{i}.{_LAYER_MAP[rest][0]}" + (" transposed" if _LAYER_MAP[rest][1] else "")


def ours_to_hf(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_ours`, in GPT2LMHeadModel's names (the tied head is not stored, as save_pretrained
    does not store it)."""
    out = {_PREFIX + theirs: sd[ours] for ours, theirs in _TOP_MAP.items()}
    for i in range(n_layer):
        for ours, (theirs, conv) in _LAYER_MAP.items():
            t = sd[f"blocks.{i}.{ours}"]
            out[f"{_PREFIX}h.{i}.{theirs}"] = t.t() if conv else t
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# configs


def config_from_hf(cfg: dict) -> GPT2Config:
    """GPT2Config from a Hugging Face config.json (GPT2Config fields); one CheckpointError for any setting this
    model does not implement."""
    if cfg.get("model_type") != "gpt2":
        raise CheckpointError(
            f"config.json names architectures {cfg.get('architectures')} but model_type {cfg.get('model_type')!r}; "
            "biogpt's GPT-2 family needs model_type 'gpt2'"
        )
    unsupported = {
        "reorder_and_upcast_attn": cfg.get("reorder_and_upcast_attn", False),
        "add_cross_attention": cfg.get("add_cross_attention", False),
        "tie_word_embeddings": not cfg.get("tie_word_embeddings", True),
    }
    bad = [k + ("=false" if k == "tie_word_embeddings" else "=true") for k, v in unsupported.items() if v]
    act = cfg.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        bad.append(f"activation_function={act!r}")
    if bad:
        raise CheckpointError(
            f"config.json sets {', '.join(bad)}, which biogpt's GPT-2 family does not implement (it implements "
            f"activation {' or '.join(ACTIVATIONS)}, self-attention only, a tied head, scale_attn_weights and "
            "scale_attn_by_inverse_layer_idx); use transformers for this model"
        )
    n_pos = cfg.get("n_positions", cfg.get("n_ctx"))
    need = {"vocab_size": cfg.get("vocab_size"), "n_layer": cfg.get("n_layer"), "n_embd": cfg.get("n_embd"),
            "n_head": cfg.get("n_head"), "n_positions": n_pos}  # fmt: skip
    missing = [k for k, v in need.items() if not isinstance(v, int)]
    if missing:
        raise CheckpointError(f"config.json lacks integer {', '.join(missing)}; is it a GPT-2 config?")
    d = cfg["n_embd"]
    if d % cfg["n_head"]:
        raise CheckpointError(f"config.json: n_embd {d} is not divisible by n_head {cfg['n_head']}")
    eos = cfg.get("eos_token_id")
    bos = cfg.get("bos_token_id")
    return GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["n_layer"],
        d_model=d,
        n_head=cfg["n_head"],
        d_ffn=cfg.get("n_inner") or 4 * d,
        max_positions=n_pos,
        activation=act,
        layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        scale_attn_weights=bool(cfg.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)),
        bos_token_id=bos if isinstance(bos, int) else cfg["vocab_size"] - 1,
        eos_token_id=eos if isinstance(eos, int) else cfg["vocab_size"] - 1,
        dropout=float(cfg.get("resid_pdrop", 0.1)),
        attention_dropout=float(cfg.get("attn_pdrop", 0.1)),
    )


def config_to_hf(cfg: GPT2Config) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_layer": cfg.n_layer,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_head,
        "n_inner": cfg.d_ffn,
        "n_positions": cfg.max_positions,
        "n_ctx": cfg.max_positions,
        "activation_function": cfg.activation,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "scale_attn_weights": cfg.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attention_dropout,
        "initializer_range": 0.02,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": "float32",
    }


# ---------------------------------------------------------------------------------------------------
# loading and saving

MAX_PADDING_ROWS = 128  # embedding rows beyond the tokenizer's ids: padding to a multiple of at most 128
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "encoder.json")  # any one of these (with its merges) is a vocabulary


@dataclass
class GPT2State:
    """What a GPT-2 checkpoint holds, before a model is built from it."""

    config: GPT2Config
    state_dict: dict[str, torch.Tensor]
    vocab_dir: Path | None  # the tokenizer beside the weights, if any
    format: str  # "hf"


def load_state(path: str | Path) -> GPT2State:
    """Config and our state dict (views of the mapped weight files) of a GPT-2 Hugging Face directory."""
    p = resolve(path)
    if not (p.is_dir() and (p / "config.json").exists()):
        raise CheckpointError(f"{p}: not a Hugging Face directory (no config.json)")
    cfg = config_from_hf(read_json(p / "config.json"))  # an unsupported config fails before any weight is read
    sd = hf_to_ours(read_weights(p), cfg.n_layer)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in GPT2(cfg).state_dict().items()}
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{p}: {k} ({hf_name(k)}) has shape {tuple(sd[k].shape)}, the config needs {shape}")
    vocab_dir = p if any((p / f).exists() for f in TOKENIZER_FILES) else None
    return GPT2State(cfg, sd, vocab_dir, "hf")


def read_weights(p: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face directory (io.read_hf_weights), and also those of the sharded
    `pytorch_model-*.bin` + `pytorch_model.bin.index.json` that older save_pretrained wrote for larger models
    (each shard read with weights_only and memory-mapped)."""
    index = p / "pytorch_model.bin.index.json"
    single = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not index.exists() or any((p / f).exists() for f in single):
        return read_hf_weights(p)
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map' object; is the index complete?")
    out: dict[str, torch.Tensor] = {}
    for f in sorted(set(weight_map.values())):
        shard = read_tensors(p / f)
        if not isinstance(shard, dict):
            raise CheckpointError(f"{p / f}: not a state dict")
        out.update(shard)
    return out


def build_model(state: GPT2State, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> GPT2:
    """The model (eval mode) from a loaded state. In fp32 on the CPU its weights stay views of the mapped file;
    in another dtype each weight is cast block by block and the mapped source pages handed back, so that the
    peak stays near the cast weights' size instead of the file's plus theirs."""
    sd = state.state_dict
    if dtype is not None:
        sd = {k: _cast(t, dtype) for k, t in sd.items()}
    with torch.device("meta"):
        model = GPT2(state.config)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device).eval()


def _cast(t: torch.Tensor, dtype: torch.dtype, chunk_bytes: int = 1 << 24) -> torch.Tensor:
    """`t` in `dtype`, cast in blocks of rows of its storage (a transposed view is cast as its contiguous base),
    each block's source pages handed back once cast: at most one block of the source stays resident."""
    if t.dtype == dtype:
        return t
    transposed = t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()
    src = t.t() if transposed else t
    if src.dim() == 0 or not src.is_contiguous():
        return t.to(dtype)
    out = torch.empty(src.shape, dtype=dtype, device=src.device)
    rows = max(1, chunk_bytes // max(1, src[0].numel() * src.element_size()))
    for i in range(0, src.shape[0], rows):
        out[i : i + rows] = src[i : i + rows]
        _page_out(src[i : i + rows])
    _page_out(src)  # pages mapped in around a block's edges by the kernel's fault-around
    return out.t() if transposed else out


_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now; file-backed ones are read again if ever touched


def _page_out(t: torch.Tensor) -> None:
    """Ask the kernel to reclaim the memory pages wholly inside contiguous `t`. A hint that never changes data (a
    mapped file's pages are re-read on the next access; anonymous pages without swap simply stay), so it is
    safe whoever else holds the tensor; a no-op where madvise or MADV_PAGEOUT does not exist."""
    if t.device.type != "cpu" or _libc is None:
        return
    ptr, n = t.data_ptr(), t.numel() * t.element_size()
    start, end = -(-ptr // _PAGE) * _PAGE, (ptr + n) // _PAGE * _PAGE
    if end > start:
        _libc.madvise(start, end - start, _MADV_PAGEOUT)


def _load_libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc() if sys.platform.startswith("linux") else None
_PAGE = os.sysconf("SC_PAGE_SIZE") if _libc is not None else 4096


def load_tokenizer(vocab_dir: Path, cfg: GPT2Config) -> ByteLevelTokenizer:
    """The byte-level BPE tokenizer in `vocab_dir`, checked against the model's embedding: every id it makes
    must have a row, and the rows beyond it may only be the few that pad a vocabulary to a round size."""
    try:
        tok = ByteLevelTokenizer.from_pretrained(vocab_dir)
    except VocabError as e:
        raise CheckpointError(str(e)) from None
    n = tok.vocab_size
    if n > cfg.vocab_size or cfg.vocab_size - n >= MAX_PADDING_ROWS:
        raise CheckpointError(
            f"the model has {cfg.vocab_size} embedding rows but the tokenizer in {vocab_dir} has {n} tokens; they do "
            "not belong together: put the model's own tokenizer (tokenizer.json, or vocab.json + merges.txt) beside "
            "the weights, or pass --vocab"
        )
    return tok


def save_hf(model: GPT2, tokenizer: ByteLevelTokenizer | None, directory: str | Path) -> None:
    """model.safetensors + config.json (+ vocab.json, merges.txt, tokenizer.json): transformers' GPT2LMHeadModel
    and GPT2Tokenizer load it unchanged; each file is written under a temporary name and renamed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    write_safetensors(d / "model.safetensors", ours_to_hf(model.state_dict(), cfg.n_layer))
    write_json(d / "config.json", config_to_hf(cfg))
    write_json(d / "generation_config.json", {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id})
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
