"""BioGPT checkpoints: Hugging Face directories and original fairseq `checkpoint.pt` files, by explicit key maps.

Every format is first mapped to Hugging Face key names (`biogpt.layers.{i}.self_attn.q_proj.weight`, ...),
then to ours by one table. Loading fails on any missing or unexpected key, on shapes that do not fit the
config, on an untied output head, and on a vocabulary that does not fit the weights. Nothing is guessed: a
config value that cannot be read is an error that names it.

Prompt tokens: a task checkpoint's vocabulary is its dictionary plus K learned tokens `learned1..K`. K is
read from `prompt_tokens.json` or config.json (written by `biogpt convert`), from fairseq's
`cfg.task.learned_prompt`, or, for Hub task models whose tokenizer lists only the dictionary (e.g.
`microsoft/BioGPT-Large-PubMedQA`: 57,726 rows, 57,717 tokens), from a small surplus of embedding rows
(1 to MAX_PROMPT_TOKENS). A larger mismatch means weights and vocabulary do not belong together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from biogpt.checkpoints.io import plain, read_fairseq_checkpoint, read_hf_weights, read_json, resolve
from biogpt.errors import CheckpointError, VocabError
from biogpt.models.biogpt import POSITION_OFFSET, BioGPT, BioGPTConfig
from biogpt.text.fastbpe import load_vocab

MAX_PROMPT_TOKENS = 64  # a surplus of embedding rows up to this many is read as learned prompt tokens

# fairseq architectures BioGPT's checkpoints name, with the head count their defaults set (fairseq
# transformer_lm_gpt2_small / _big), for legacy args that do not spell decoder_attention_heads out
_ARCH_HEADS = {
    "transformer_lm_gpt2_small": 16,
    "transformer_lm_prompt_biogpt": 16,
    "transformer_lm_gpt2_big": 25,
    "transformer_lm_prompt_biogpt_large": 25,
}
# fairseq cfg.task values kept with a task model (they set its source truncation and length budget)
_TASK_KEYS = ("max_source_positions", "max_target_positions", "learned_prompt")


# ---------------------------------------------------------------------------------------------------
# key maps

_LAYER = re.compile(r"biogpt\.layers\.(\d+)\.(.+)")
# ours <- HF, per layer; a tuple of HF names is concatenated along dim 0 (q, k, v -> fused qkv)
_LAYER_MAP = {
    "ln1.weight": "self_attn_layer_norm.weight",
    "ln1.bias": "self_attn_layer_norm.bias",
    "qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "out.weight": "self_attn.out_proj.weight",
    "out.bias": "self_attn.out_proj.bias",
    "ln2.weight": "final_layer_norm.weight",
    "ln2.bias": "final_layer_norm.bias",
    "fc1.weight": "fc1.weight",
    "fc1.bias": "fc1.bias",
    "fc2.weight": "fc2.weight",
    "fc2.bias": "fc2.bias",
}
_TOP_MAP = {
    "tok_emb.weight": "biogpt.embed_tokens.weight",
    "pos_emb.weight": "biogpt.embed_positions.weight",
    "ln_f.weight": "biogpt.layer_norm.weight",
    "ln_f.bias": "biogpt.layer_norm.bias",
}
_TIED_HEAD = "output_projection.weight"


def hf_to_ours(hf: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Map an HF BioGptForCausalLM state dict to ours; raise on missing or unexpected keys."""
    hf = dict(hf)
    head = hf.pop(_TIED_HEAD, None)
    out: dict[str, torch.Tensor] = {}
    missing = []

    def take(name: str):
        if name not in hf:
            missing.append(name)
            return None
        return hf.pop(name)

    for ours, theirs in _TOP_MAP.items():
        out[ours] = take(theirs)
    for i in range(n_layer):
        for ours, theirs in _LAYER_MAP.items():
            if isinstance(theirs, tuple):
                parts = [take(f"biogpt.layers.{i}.{t}") for t in theirs]
                out[f"blocks.{i}.{ours}"] = None if None in parts else torch.cat(parts, 0)
            else:
                out[f"blocks.{i}.{ours}"] = take(f"biogpt.layers.{i}.{theirs}")
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")
    if hf:
        extra = sorted(hf)
        raise CheckpointError(f"checkpoint has {len(extra)} unexpected weights, e.g. {extra[:3]}")
    if head is not None and (head.shape != out["tok_emb.weight"].shape or not torch.equal(head, out["tok_emb.weight"])):
        raise CheckpointError(
            f"the checkpoint's output head (output_projection.weight, {tuple(head.shape)}) differs from its token "
            f"embedding ({tuple(out['tok_emb.weight'].shape)}); BioGPT ties them, and an untied head is not a BioGPT "
            "checkpoint biogpt can load"
        )
    return out


def ours_to_hf(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_ours` (the tied head is not stored, as `save_pretrained` does)."""
    out = {theirs: sd[ours] for ours, theirs in _TOP_MAP.items()}
    for i in range(n_layer):
        for ours, theirs in _LAYER_MAP.items():
            t = sd[f"blocks.{i}.{ours}"]
            if isinstance(theirs, tuple):
                for name, part in zip(theirs, t.chunk(3, 0)):
                    out[f"biogpt.layers.{i}.{name}"] = part
            else:
                out[f"biogpt.layers.{i}.{theirs}"] = t
    return {k: v.contiguous() for k, v in out.items()}


def fairseq_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq `decoder.*` keys -> HF names, as the transformers conversion script maps them."""
    out = {}
    for k, v in sd.items():
        if k == "decoder.version":
            continue
        if k == "decoder.output_projection.weight":
            out[_TIED_HEAD] = v
        elif k.startswith("decoder."):
            out["biogpt." + k[len("decoder.") :]] = v
        else:
            raise CheckpointError(f"unexpected key {k!r} in a fairseq checkpoint (expected decoder.*)")
    return out


# ---------------------------------------------------------------------------------------------------
# configs


def config_from_hf(cfg: dict, num_prompt_tokens: int = 0) -> BioGPTConfig:
    """BioGPTConfig from a Hugging Face config.json (BioGptConfig fields)."""
    if cfg.get("model_type", "biogpt") != "biogpt":
        raise CheckpointError(f"config.json is for model_type {cfg.get('model_type')!r}, not 'biogpt'")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {cfg['hidden_act']!r} is not supported (BioGPT uses exact 'gelu')")
    need = ("vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
            "max_position_embeddings")  # fmt: skip
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise CheckpointError(f"config.json lacks integer {', '.join(missing)}; is it a BioGPT config?")
    settings = cfg.get("biogpt_task_settings")
    prompt_tasks = cfg.get("biogpt_prompt_tasks")
    return BioGPTConfig(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["num_hidden_layers"],
        d_model=cfg["hidden_size"],
        n_head=cfg["num_attention_heads"],
        d_ffn=cfg["intermediate_size"],
        max_positions=cfg["max_position_embeddings"],
        scale_embedding=cfg.get("scale_embedding", True),
        num_prompt_tokens=num_prompt_tokens,
        dropout=cfg.get("hidden_dropout_prob", 0.1),
        attention_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
        activation_dropout=cfg.get("activation_dropout", 0.0),
        task_settings=settings if isinstance(settings, dict) else None,
        prompt_tasks=prompt_tasks if isinstance(prompt_tasks, dict) else None,
    )


def config_to_hf(cfg: BioGPTConfig) -> dict:
    return {
        "architectures": ["BioGptForCausalLM"],
        "model_type": "biogpt",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.d_ffn,
        "max_position_embeddings": cfg.max_positions,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "layerdrop": 0.0,
        "layer_norm_eps": 1e-12,  # as the hub configs say; the model always uses 1e-5
        "initializer_range": 0.02,
        "scale_embedding": cfg.scale_embedding,
        "use_cache": True,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "biogpt_num_prompt_tokens": cfg.num_prompt_tokens,
        **({"biogpt_task_settings": cfg.task_settings} if cfg.task_settings else {}),
        **({"biogpt_prompt_tasks": cfg.prompt_tasks} if cfg.prompt_tasks else {}),
    }


def _fairseq_config(model_cfg: dict, sd: dict[str, torch.Tensor], num_prompt_tokens: int, task: dict) -> BioGPTConfig:
    """BioGPTConfig from a fairseq cfg["model"] (or legacy args) and the weights' shapes."""
    emb = sd["biogpt.embed_tokens.weight"]
    n_layer = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.match(k)))
    d = emb.shape[1]
    for flag, want in (("share_decoder_input_output_embed", True), ("decoder_normalize_before", True)):
        if flag in model_cfg and model_cfg[flag] is not None and bool(model_cfg[flag]) != want:
            raise CheckpointError(f"fairseq cfg has {flag}={model_cfg[flag]}; BioGPT needs {want}")
    act = model_cfg.get("activation_fn") or "gelu"
    if act != "gelu":
        raise CheckpointError(f"fairseq cfg has activation_fn={act!r}; BioGPT uses 'gelu'")
    heads = model_cfg.get("decoder_attention_heads")
    if heads is None:
        heads = _ARCH_HEADS.get(str(model_cfg.get("arch") or model_cfg.get("_name") or ""))
    if not isinstance(heads, int) or heads < 1 or d % heads:
        raise CheckpointError(
            "the checkpoint's cfg does not give the number of attention heads (cfg.model.decoder_attention_heads"
            f" is {model_cfg.get('decoder_attention_heads')!r}, arch {model_cfg.get('arch')!r}); biogpt does not "
            "guess it from the width. Convert it with fairseq's own tools, or write the field into the cfg"
        )
    settings = {k: int(task[k]) for k in _TASK_KEYS[:2] if isinstance(task.get(k), int)}
    return BioGPTConfig(
        vocab_size=emb.shape[0],
        n_layer=n_layer,
        d_model=d,
        n_head=heads,
        d_ffn=sd["biogpt.layers.0.fc1.weight"].shape[0],
        max_positions=sd["biogpt.embed_positions.weight"].shape[0] - POSITION_OFFSET,
        scale_embedding=not model_cfg.get("no_scale_embedding", False),
        num_prompt_tokens=num_prompt_tokens,
        dropout=float(model_cfg.get("dropout", 0.1) or 0.0),
        attention_dropout=float(model_cfg.get("attention_dropout", 0.1) or 0.0),
        activation_dropout=float(model_cfg.get("activation_dropout", 0.0) or 0.0),
        task_settings=settings or None,
    )


# ---------------------------------------------------------------------------------------------------
# loading


@dataclass
class BioGPTState:
    """What a BioGPT checkpoint holds, before a model is built from it."""

    config: BioGPTConfig
    state_dict: dict[str, torch.Tensor]
    vocab_dir: Path | None  # the vocabulary beside the weights, if any
    format: str  # "hf" or "fairseq"
    prompt_source: str  # how the number of prompt tokens was found


def load_state(path: str | Path) -> BioGPTState:
    """Config, our state dict and the vocabulary directory (or None) of any BioGPT checkpoint."""
    p = resolve(path)
    if p.is_dir() and (p / "config.json").exists():
        return _load_hf(p)
    ckpt = p / "checkpoint.pt" if p.is_dir() else p
    if not ckpt.exists():
        raise CheckpointError(f"{p}: no config.json (Hugging Face directory) or checkpoint.pt (fairseq checkpoint)")
    return _load_fairseq(ckpt)


def _load_hf(p: Path) -> BioGPTState:
    cfg_json = read_json(p / "config.json")
    config_from_hf(cfg_json)  # a config that is not BioGPT's fails here, before anything else is read
    hf = read_hf_weights(p)
    vocab_dir = p if any((p / f).exists() for f in ("vocab.json", "dict.txt")) else None
    rows = hf.get("biogpt.embed_tokens.weight")
    declared, source = None, "none"
    if (p / "prompt_tokens.json").exists():
        declared, source = read_json(p / "prompt_tokens.json").get("num_prompt_tokens"), "prompt_tokens.json"
    elif "biogpt_num_prompt_tokens" in cfg_json:
        declared, source = cfg_json["biogpt_num_prompt_tokens"], "config.json"
    if declared is not None and not isinstance(declared, int):
        raise CheckpointError(f"{p / source}: num_prompt_tokens must be an integer, got {declared!r}")
    k, source = _prompt_count(rows.shape[0] if rows is not None else None, declared, source, vocab_dir, p)
    cfg = config_from_hf(cfg_json, k)
    return _finish(cfg, hf, vocab_dir, "hf", source, p)


def _load_fairseq(ckpt: Path) -> BioGPTState:
    raw = read_fairseq_checkpoint(ckpt)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{ckpt}: not a fairseq checkpoint (no 'model' state dict)")
    hf = fairseq_to_hf(raw["model"])
    if "biogpt.embed_tokens.weight" not in hf:
        raise CheckpointError(f"{ckpt}: no decoder.embed_tokens.weight; is this a BioGPT checkpoint?")
    cfg_all = plain(raw.get("cfg")) or {}
    if not isinstance(cfg_all, dict):
        cfg_all = {}
    model_cfg = cfg_all.get("model") if isinstance(cfg_all.get("model"), dict) else {}
    task_cfg = cfg_all.get("task") if isinstance(cfg_all.get("task"), dict) else {}
    if not model_cfg and raw.get("args") is not None:  # legacy: everything in one argparse Namespace
        model_cfg = task_cfg = plain(raw["args"]) or {}
    vocab_dir = ckpt.parent if (ckpt.parent / "dict.txt").exists() else None
    declared = task_cfg.get("learned_prompt")
    rows = hf["biogpt.embed_tokens.weight"].shape[0]
    k, source = _prompt_count(rows, declared if isinstance(declared, int) else None, "cfg.task.learned_prompt",
                              vocab_dir, ckpt)  # fmt: skip
    cfg = _fairseq_config(model_cfg, hf, k, task_cfg)
    return _finish(cfg, hf, vocab_dir, "fairseq", source, ckpt)


def _prompt_count(rows: int | None, declared: int | None, source: str, vocab_dir: Path | None, where: Path):
    """(K, how K was found). A declared K must fit the vocabulary; otherwise a surplus of 1..64 rows is K."""
    if rows is None or vocab_dir is None:
        return (declared or 0), (source if declared is not None else "none")
    n = _vocab_size(vocab_dir)
    if declared is not None:
        if n + declared != rows:
            raise CheckpointError(_mismatch(rows, n, declared, vocab_dir, where))
        return declared, source
    surplus = rows - n
    if surplus == 0:
        return 0, "none"
    if 0 < surplus <= MAX_PROMPT_TOKENS:
        return surplus, f"inferred: {surplus} embedding rows beyond the {n}-token vocabulary"
    raise CheckpointError(_mismatch(rows, n, 0, vocab_dir, where))


def _mismatch(rows: int, n: int, k: int, vocab_dir: Path, where: Path) -> str:
    return (
        f"{where} has {rows} embedding rows but the vocabulary in {vocab_dir} has {n} tokens"
        + (f" + {k} prompt tokens = {n + k}" if k else "")
        + ". The weights and the vocabulary do not belong together (e.g. BioGPT-Large weights with the base "
        "vocabulary): put the model's own dict.txt + bpecodes (or vocab.json + merges.txt) beside the weights"
    )


def _vocab_size(vocab_dir: Path) -> int:
    try:
        return len(load_vocab(vocab_dir).pieces)
    except VocabError as e:
        raise CheckpointError(str(e)) from None


def check_vocab(cfg: BioGPTConfig, n_vocab: int, where: str) -> None:
    """A tokenizer of n_vocab dictionary tokens (+ the config's prompt tokens) must fill the embedding exactly."""
    if n_vocab + cfg.num_prompt_tokens != cfg.vocab_size:
        raise CheckpointError(
            f"the model has {cfg.vocab_size} embedding rows but the vocabulary in {where} has {n_vocab} tokens"
            f" + {cfg.num_prompt_tokens} prompt tokens = {n_vocab + cfg.num_prompt_tokens}; they do not belong "
            "together (e.g. BioGPT-Large weights with the base vocabulary)"
        )


def _finish(cfg, hf, vocab_dir, fmt, source, where) -> BioGPTState:
    sd = hf_to_ours(hf, cfg.n_layer)
    want = {k: tuple(v.shape) for k, v in meta_model(cfg).state_dict().items()}
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{where}: {k} has shape {tuple(sd[k].shape)}, the config needs {shape}")
    return BioGPTState(cfg, sd, vocab_dir, fmt, source)


def meta_model(cfg: BioGPTConfig) -> BioGPT:
    """The model on the meta device: shapes without memory, to be filled by load_state_dict(assign=True)."""
    with torch.device("meta"):
        return BioGPT(cfg)


def build_model(state: BioGPTState, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> BioGPT:
    """The model (eval mode) from a loaded state; weights stay memory-mapped where the file allows."""
    model = meta_model(state.config)
    model.load_state_dict(state.state_dict, strict=True, assign=True)
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()

