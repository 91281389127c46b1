"""Checkpoint formats and key maps: Hugging Face directories, original fairseq `checkpoint.pt`, hub ids.

Every format is first mapped to Hugging Face key names (`biogpt.layers.{i}.self_attn.q_proj.weight`, ...),
then to ours by one explicit table. Loading fails on any missing or unexpected key, on shapes that do not
fit the config, and on a vocabulary that does not fit the dictionary beside the weights.

fairseq checkpoints are unpickled with an allow-list: tensors, storages and plain containers are rebuilt,
any other class (fairseq meters, numpy scalars, ...) becomes an inert stub. No code from a checkpoint runs.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from biogpt.model import POSITION_OFFSET, BioGPT, BioGPTConfig
from biogpt.tokenizer import PROMPT_PATTERN, Tokenizer, VocabError, load_vocab


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, or does not fit its config or vocabulary."""


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
    if head is not None and head.shape != out["tok_emb.weight"].shape:
        raise CheckpointError(
            f"output_projection.weight {tuple(head.shape)} does not match embed_tokens "
            f"{tuple(out['tok_emb.weight'].shape)}; BioGPT ties them"
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
    if cfg.get("model_type", "biogpt") != "biogpt":
        raise CheckpointError(f"config.json is for model_type {cfg.get('model_type')!r}, not 'biogpt'")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {cfg['hidden_act']!r} is not supported (BioGPT uses exact 'gelu')")
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
    }


def _fairseq_config(model_cfg: dict, sd: dict[str, torch.Tensor], num_prompt_tokens: int) -> BioGPTConfig:
    """BioGPTConfig from a fairseq cfg["model"] (or legacy args), shapes filling anything absent."""
    emb = sd["biogpt.embed_tokens.weight"]
    n_layer = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.match(k)))
    d = emb.shape[1]
    for flag, want in (("share_decoder_input_output_embed", True), ("decoder_normalize_before", True)):
        if flag in model_cfg and bool(model_cfg[flag]) != want:
            raise CheckpointError(f"fairseq cfg has {flag}={model_cfg[flag]}; BioGPT needs {want}")
    act = model_cfg.get("activation_fn", "gelu")
    if act != "gelu":
        raise CheckpointError(f"fairseq cfg has activation_fn={act!r}; BioGPT uses 'gelu'")
    return BioGPTConfig(
        vocab_size=emb.shape[0],
        n_layer=n_layer,
        d_model=d,
        n_head=int(model_cfg.get("decoder_attention_heads") or d // 64),
        d_ffn=sd["biogpt.layers.0.fc1.weight"].shape[0],
        max_positions=sd["biogpt.embed_positions.weight"].shape[0] - POSITION_OFFSET,
        scale_embedding=not model_cfg.get("no_scale_embedding", False),
        num_prompt_tokens=num_prompt_tokens,
        dropout=float(model_cfg.get("dropout", 0.1)),
        attention_dropout=float(model_cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(model_cfg.get("activation_dropout", 0.0) or 0.0),
    )


# ---------------------------------------------------------------------------------------------------
# safe unpickling of fairseq checkpoints


class _Stub:
    """Stands in for any class a checkpoint names that we do not allow; holds its state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return _Stub()


def _allowed(module: str, name: str):
    import argparse
    import collections

    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "argparse" and name == "Namespace":
        return argparse.Namespace
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_tensor"):
        return getattr(torch._utils, name)
    if module == "torch" and (name.endswith("Storage") or name in ("Size", "device")):
        return getattr(torch, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "builtins" and name in ("set", "frozenset", "slice", "complex"):
        return getattr(__import__("builtins"), name)
    return None


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        cls = _allowed(module, name)
        if cls is not None:
            return cls
        return type(name, (_Stub,), {"__module__": "biogpt.checkpoint.stub." + module})


class _safe_pickle:  # a pickle "module" for torch.load(pickle_module=...)
    Unpickler = _SafeUnpickler
    load = staticmethod(lambda f, **kw: _SafeUnpickler(f, **kw).load())
    __name__ = "biogpt_safe_pickle"


def read_fairseq_checkpoint(path: Path) -> dict:
    """torch.load with an allow-list unpickler; mmap when the file is in the zip format."""
    size = path.stat().st_size
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_safe_pickle, mmap=mmap)
        except RuntimeError as e:
            if mmap and "mmap" in str(e):
                continue  # legacy (non-zip) serialization: load normally
            raise CheckpointError(f"{path}: cannot read ({e}); the file may be truncated ({size} bytes)") from None
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint ({e}); truncated ({size} bytes)?"
            ) from None
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------
# loading


def _read_hf_weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if (d / "model.safetensors").exists():
        try:
            return load_file(d / "model.safetensors")  # memory-mapped
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{d / 'model.safetensors'}: cannot read ({e}); truncated or corrupt?") from None
    index = d / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                out.update(load_file(d / f))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{d / f}: cannot read ({e}); truncated or corrupt?") from None
        return out
    if (d / "pytorch_model.bin").exists():
        sd = read_fairseq_checkpoint(d / "pytorch_model.bin")
        return dict(sd)
    raise CheckpointError(f"{d}: no model.safetensors or pytorch_model.bin next to config.json")


def _prompt_count_from_dir(d: Path) -> int | None:
    meta = d / "prompt_tokens.json"
    if meta.exists():
        return int(json.loads(meta.read_text())["num_prompt_tokens"])
    return None


def load_state(path: str | Path) -> tuple[BioGPTConfig, dict[str, torch.Tensor], Path | None]:
    """Config, our state dict and the vocabulary directory (or None) of any supported checkpoint."""
    p = _resolve(path)
    if p.is_dir() and (p / "config.json").exists():
        cfg_json = json.loads((p / "config.json").read_text())
        hf = _read_hf_weights(p)
        k = _prompt_count_from_dir(p)
        if k is None:
            k = int(cfg_json.get("biogpt_num_prompt_tokens", 0))
        cfg = config_from_hf(cfg_json, k)
        vocab_dir = p if any((p / f).exists() for f in ("vocab.json", "dict.txt")) else None
    else:
        ckpt = p / "checkpoint.pt" if p.is_dir() else p
        if not ckpt.exists():
            raise CheckpointError(
                f"{p}: no config.json (Hugging Face directory) or checkpoint.pt (fairseq checkpoint) found"
            )
        raw = read_fairseq_checkpoint(ckpt)
        if not isinstance(raw, dict) or "model" not in raw:
            raise CheckpointError(f"{ckpt}: not a fairseq checkpoint (no 'model' entry)")
        hf = fairseq_to_hf(raw["model"])
        if "biogpt.embed_tokens.weight" not in hf:
            raise CheckpointError(f"{ckpt}: no decoder.embed_tokens.weight; is this a BioGPT checkpoint?")
        cfg_dict = raw.get("cfg") or {}
        model_cfg = dict(cfg_dict.get("model") or {}) if isinstance(cfg_dict, dict) else {}
        if not model_cfg and raw.get("args") is not None:
            model_cfg = dict(vars(raw["args"]))
        task_cfg = cfg_dict.get("task") or {} if isinstance(cfg_dict, dict) else {}
        vocab_dir = ckpt.parent if (ckpt.parent / "dict.txt").exists() else None
        k = _fairseq_prompt_count(hf["biogpt.embed_tokens.weight"].shape[0], task_cfg, vocab_dir, ckpt)
        cfg = _fairseq_config(model_cfg, hf, k)
    sd = hf_to_ours(hf, cfg.n_layer)
    _check_shapes(cfg, sd, p)
    if vocab_dir is not None:
        check_vocab(cfg, vocab_dir)
    return cfg, sd, vocab_dir


def _fairseq_prompt_count(rows: int, task_cfg: dict, vocab_dir: Path | None, ckpt: Path) -> int:
    declared = task_cfg.get("learned_prompt") if isinstance(task_cfg, dict) else None
    if vocab_dir is None:
        return int(declared or 0)
    n_dict = len(load_vocab(vocab_dir).pieces)
    k = rows - n_dict
    if k < 0 or (declared is not None and int(declared) != k):
        raise CheckpointError(
            f"{ckpt} has {rows} embedding rows but {vocab_dir / 'dict.txt'} gives {n_dict} tokens"
            + (f" + {declared} learned prompt tokens" if declared else "")
            + ". The checkpoint and dictionary do not belong together (e.g. Large weights with the base "
            "dict.txt): put the model's own dict.txt and bpecodes beside checkpoint.pt."
        )
    return k


def check_vocab(cfg: BioGPTConfig, vocab_dir: Path) -> None:
    try:
        n = len(load_vocab(vocab_dir).pieces)
    except VocabError as e:
        raise CheckpointError(str(e)) from None
    if n + cfg.num_prompt_tokens != cfg.vocab_size:
        raise CheckpointError(
            f"the model has {cfg.vocab_size} embedding rows but the vocabulary in {vocab_dir} has {n} tokens"
            f" + {cfg.num_prompt_tokens} prompt tokens = {n + cfg.num_prompt_tokens}; they do not belong together"
            " (e.g. BioGPT-Large weights with the base vocabulary)"
        )


def _check_shapes(cfg: BioGPTConfig, sd: dict[str, torch.Tensor], where: Path) -> None:
    want = {k: tuple(v.shape) for k, v in meta_model(cfg).state_dict().items()}
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{where}: {k} has shape {tuple(sd[k].shape)}, the config needs {shape}")


def meta_model(cfg: BioGPTConfig) -> BioGPT:
    with torch.device("meta"):
        return BioGPT(cfg)


def load_pretrained(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[BioGPT, Tokenizer | None]:
    """The model (eval mode) and, when a vocabulary sits beside the weights, its tokenizer."""
    cfg, sd, vocab_dir = load_state(path)
    model = meta_model(cfg)
    model.load_state_dict(sd, strict=True, assign=True)  # weights stay memory-mapped where the file allows
    if dtype is not None:
        model = model.to(dtype)
    tok = Tokenizer.from_pretrained(vocab_dir, num_prompt_tokens=cfg.num_prompt_tokens) if vocab_dir else None
    return model.to(device).eval(), tok


def load_model(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> BioGPT:
    return load_pretrained(path, dtype, device)[0]


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise CheckpointError(
                f"{path!r} is not a local path; to fetch hub ids install huggingface_hub "
                "(pip install 'biogpt[hub]'), or download the model and pass its directory"
            ) from None
        try:
            return Path(snapshot_download(str(path), local_files_only=True))
        except Exception:
            pass
        try:
            return Path(snapshot_download(str(path)))
        except Exception as e:
            raise CheckpointError(
                f"cannot fetch {path!r} from the Hugging Face Hub ({type(e).__name__}); offline? Download it "
                "elsewhere (huggingface-cli download " + str(path) + " --local-dir DIR) and pass DIR instead"
            ) from None
    raise CheckpointError(f"{path}: no such file or directory")


# ---------------------------------------------------------------------------------------------------
# writing


def save_hf(model: BioGPT, tokenizer: Tokenizer | None, directory: str | Path) -> None:
    """A Hugging Face directory that transformers.BioGptForCausalLM / BioGptTokenizer load unchanged."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    tmp = d / "model.safetensors.tmp"
    save_file(ours_to_hf(sd, cfg.n_layer), tmp, metadata={"format": "pt"})
    tmp.replace(d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
    gen = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(d, format="hf")
        if tokenizer.num_prompt_tokens:
            _add_prompt_tokens_to_hf_config(d, tokenizer)


def _add_prompt_tokens_to_hf_config(d: Path, tokenizer: Tokenizer) -> None:
    """Declare learned1..K as added tokens so that transformers decodes those ids to their names."""
    path = d / "tokenizer_config.json"
    conf = json.loads(path.read_text())
    conf["added_tokens_decoder"] = {
        str(i): {
            "content": f"{PROMPT_PATTERN}{k}",
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for k, i in enumerate(tokenizer.prompt_ids, 1)
    }
    path.write_text(json.dumps(conf, indent=2) + "\n")


def convert(src: str | Path, dst: str | Path) -> None:
    """Any supported checkpoint -> a Hugging Face directory (weights, config, tokenizer, prompt-token count)."""
    save_hf(*load_pretrained(src), dst)
