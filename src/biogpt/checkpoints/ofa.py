"""BiomedGPT (OFA) checkpoints: fairseq `.pt` files, the Hugging Face OFA port's directories, and ours.

- fairseq (`biomedgpt_base.pt`, fine-tuned task checkpoints): a pickled dict with `model` (state dict), `args`
  (argparse Namespace) and/or `cfg` (OmegaConf; `cfg.model` holds the same fields), `extra_state` (`ema`: the
  exponential-moving-average weights the original evaluation uses, `ema=True` here). Read through the
  allow-list unpickler of checkpoints/io.py; nothing in it runs.
- Hugging Face OFA port (`PanaceaAI/BiomedGPT-*`): config.json (`model_type` "ofa") + pytorch_model.bin, with the
  port's parameter names, which are ours; vocab.json + merges.txt.
- ours (`save_ofa`, `biogpt convert`): config.json (`model_type` "biomedgpt") + model.safetensors + vocab.json +
  merges.txt.

Key maps are explicit tables; a key that is neither mapped nor listed as dropped, a missing key, or a tensor of the
wrong shape is one CheckpointError naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from biogpt import jsonfile
from biogpt.checkpoints.io import (
    plain,
    read_fairseq_checkpoint,
    read_json,
    read_safetensors,
    read_tensors,
    write_json,
    write_safetensors,
)
from biogpt.errors import CheckpointError, VocabError
from biogpt.models.ofa import OFA, OFAConfig, image_buckets, token_buckets
from biogpt.models.vision import RESNET_LAYERS
from biogpt.text.ofa import OFATokenizer

MODEL_TYPE = "biomedgpt"  # our config.json
HF_MODEL_TYPE = "ofa"  # the Hugging Face OFA port's

# fairseq -> ours, per layer: (side, fairseq sub-module, ours)
FAIRSEQ_LAYER_RENAMES = (
    ("encoder", "attn_ln", "self_attn_mid_layer_norm"),
    ("encoder", "ffn_layernorm", "ffn_layer_norm"),
    ("decoder", "self_attn_ln", "self_attn_mid_layer_norm"),
    ("decoder", "cross_attn_ln", "cross_attn_mid_layer_norm"),
    ("decoder", "encoder_attn_layer_norm", "cross_attn_layer_norm"),
    ("decoder", "encoder_attn", "cross_attn"),
    ("decoder", "ffn_layernorm", "ffn_layer_norm"),
)
# one embedding, shared by the encoder, the decoder and the output head (BiomedGPT: --share-all-embeddings)
TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")
EMBED = "embed_tokens.weight"
# what checkpoints hold that the model rebuilds from its config (bucket tables) or never needs
DROPPED = (
    "encoder.version", "decoder.version", "encoder.token_rp_bucket", "decoder.token_rp_bucket",
    "encoder.image_rp_bucket", "decoder.image_rp_bucket", "decoder.image_position_idx",
)  # fmt: skip
DROPPED_SUFFIXES = (".num_batches_tracked",)  # BatchNorm's step counter: the stem's statistics are frozen

# fairseq arch -> our preset (taokz/BiomedGPT: models/ofa/ofa.py)
ARCH_PRESETS = {"ofa_tiny": OFAConfig.tiny, "ofa_medium": OFAConfig.medium, "ofa_base": OFAConfig.base}
# fairseq args that must hold BiomedGPT's value for this model to be exact: name -> required value
REQUIRED_ARGS = {
    "scale_resids": False, "share_all_embeddings": True, "layernorm_embedding": True, "no_scale_embedding": True,
    "add_type_embedding": True, "scale_attn": True, "scale_fc": True, "scale_heads": True,
    "encoder_normalize_before": True, "decoder_normalize_before": True, "share_attn_bias": False,
    "patch_layernorm_embedding": True, "activation_fn": "gelu",
}  # fmt: skip
# encoder/decoder settings biogpt's OFA holds once
PAIRED_ARGS = (
    ("encoder_embed_dim", "decoder_embed_dim"), ("encoder_attention_heads", "decoder_attention_heads"),
    ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim"), ("max_source_positions", "max_target_positions"),
)  # fmt: skip
REQUIRED_HF = {
    "use_ofasys": False, "normformer": True, "share_attn_bias": False, "add_type_embedding": True,
    "scale_embedding": False, "use_gamma_feature": False, "encoder_normalize_before": True,
    "decoder_normalize_before": True, "layernorm_embedding": True, "patch_layernorm_embedding": True,
    "share_decoder_input_output_embed": True, "activation_function": "gelu",
}  # fmt: skip


# --- configs --------------------------------------------------------------------------------------------


def _resnet_layers(resnet_type: str, where: str) -> tuple[int, int, int]:
    if resnet_type not in RESNET_LAYERS:
        raise CheckpointError(f"{where}: resnet_type {resnet_type!r} is not one of {sorted(RESNET_LAYERS)}")
    return RESNET_LAYERS[resnet_type]


def _require(settings: dict, required: dict, where: str) -> None:
    for name, want in required.items():
        if name in settings and settings[name] is not None and settings[name] != want:
            raise CheckpointError(
                f"{where}: {name}={settings[name]!r}, but BiomedGPT's model has {name}={want!r}; this is another OFA "
                "variant, which biogpt does not implement"
            )


def config_from_fairseq(ckpt: dict, where: str) -> OFAConfig:
    """The model config of a fairseq checkpoint, from `args` (Namespace) or `cfg.model` / `cfg.task`."""
    args = plain(ckpt.get("args"))
    cfg = plain(ckpt.get("cfg"))
    model, task = {}, {}
    if isinstance(cfg, dict):
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    if isinstance(args, dict):
        model, task = {**model, **args}, {**task, **args}
    if not model:
        raise CheckpointError(f"{where}: neither 'args' nor 'cfg.model' says how the model was built")
    _require(model, REQUIRED_ARGS, where)
    arch = model.get("arch") or model.get("_name")
    preset = ARCH_PRESETS.get(arch, OFAConfig.base)
    if arch not in ARCH_PRESETS and "encoder_embed_dim" not in model:
        raise CheckpointError(f"{where}: arch {arch!r} is not one of {sorted(ARCH_PRESETS)} and args give no sizes")
    kw = {}
    for ours, theirs in (
        ("d_model", "encoder_embed_dim"), ("d_ffn", "encoder_ffn_embed_dim"), ("encoder_layers", "encoder_layers"),
        ("decoder_layers", "decoder_layers"), ("n_head", "encoder_attention_heads"),
        ("max_positions", "max_source_positions"), ("token_bucket_size", "token_bucket_size"),
        ("image_bucket_size", "image_bucket_size"), ("attn_scale_factor", "attn_scale_factor"),
        ("entangle_position_embedding", "entangle_position_embedding"), ("disable_entangle", "disable_entangle"),
        ("dropout", "dropout"), ("attention_dropout", "attention_dropout"),
        ("activation_dropout", "activation_dropout"),
    ):  # fmt: skip
        if model.get(theirs) is not None:
            kw[ours] = model[theirs]
    for a, b in PAIRED_ARGS:
        if model.get(a) is not None and model.get(b) is not None and model[a] != model[b]:
            raise CheckpointError(f"{where}: {a}={model[a]} but {b}={model[b]}; biogpt's OFA needs them equal")
    if model.get("resnet_type") is not None:
        kw["resnet_layers"] = _resnet_layers(model["resnet_type"], where)
    if task.get("patch_image_size") is not None:
        kw["image_size"] = int(task["patch_image_size"])
    kw["disable_entangle"] = bool(kw.get("disable_entangle", False))  # fairseq's default: entangled
    kw["entangle_position_embedding"] = bool(kw.get("entangle_position_embedding", False))
    return preset(**kw)


def _size_by_width(d_model: int) -> int:
    """The evaluation image size of a config that does not state one: 256 for BiomedGPT-S/-M (width 256, 512),
    384 for -B (768) and wider, as the original's scripts set `patch_image_size`."""
    return 256 if d_model <= 512 else 384


def config_from_hf(hf: dict, where: str) -> OFAConfig:
    """The model config of an OFA-port config.json."""
    _require(hf, REQUIRED_HF, where)
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(a) != hf.get(b):
            raise CheckpointError(f"{where}: {a}={hf.get(a)} but {b}={hf.get(b)}; biogpt's OFA needs them equal")
    try:
        return OFAConfig(
            vocab_size=hf["vocab_size"], d_model=hf["d_model"], encoder_layers=hf["encoder_layers"],
            decoder_layers=hf["decoder_layers"], n_head=hf["encoder_attention_heads"], d_ffn=hf["encoder_ffn_dim"],
            max_positions=hf.get("max_position_embeddings", 1024),
            resnet_layers=_resnet_layers(hf.get("resnet_type", "resnet101"), where),
            token_bucket_size=hf.get("token_bucket_size", 256), image_bucket_size=hf.get("image_bucket_size", 42),
            attn_scale_factor=hf.get("attn_scale_factor", 2.0),
            entangle_position_embedding=bool(hf.get("entangle_position_embedding", False)),
            # the port's decoder adds positions only when entangle_position_embedding is also set
            disable_entangle=bool(hf.get("disable_entangle", False))
            or not hf.get("entangle_position_embedding", False),
            dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
            activation_dropout=hf.get("activation_dropout", 0.0),
            image_size=int(hf.get("patch_image_size") or hf.get("image_size") or _size_by_width(hf["d_model"])),
        )  # fmt: skip
    except KeyError as e:
        raise CheckpointError(f"{where}: config.json has no {e.args[0]!r}") from None


# --- key maps -------------------------------------------------------------------------------------------

_LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.([^.]+)\.(.+)$")


def fairseq_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq parameter names -> ours (the tied embeddings become one, dropped keys go)."""
    renames = {(side, theirs): ours for side, theirs, ours in FAIRSEQ_LAYER_RENAMES}
    out = {}
    for k, v in sd.items():
        m = _LAYER_KEY.match(k)
        if m and (m[1], m[3]) in renames:
            k = f"{m[1]}.layers.{m[2]}.{renames[m[1], m[3]]}.{m[4]}"
        out[k] = v
    return out


def _ours_from_port(sd: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Port/fairseq names after the layer renames -> ours: tie the embeddings, drop rebuilt tables."""
    sd = dict(sd)
    tied = [k for k in TIED if k in sd]
    if not tied:
        raise CheckpointError(f"{where}: no token embedding ({' / '.join(TIED)})")
    first = sd[tied[0]]
    for k in tied[1:]:
        if sd[k].shape != first.shape or not torch.equal(sd[k], first):
            raise CheckpointError(
                f"{where}: {k} differs from {tied[0]}; BiomedGPT shares one embedding between the encoder, the "
                "decoder and the output head (--share-all-embeddings), and biogpt's OFA implements only that"
            )
    for k in tied:
        del sd[k]
    sd[EMBED] = first
    for k in ("encoder.token_rp_bucket", "decoder.token_rp_bucket"):
        if k in sd and sd[k].shape == (1024, 1024):
            cfg_bucket = int(sd[k][0, 0]) + 1  # position 0 vs 0 is bucket_size - 1
            if not torch.equal(sd[k].long(), token_buckets(cfg_bucket)):
                raise CheckpointError(f"{where}: {k} is not OFA's text bucket table; another relative-position scheme")
    return {k: v for k, v in sd.items() if k not in DROPPED and not k.endswith(DROPPED_SUFFIXES)}


def check_keys(sd: dict[str, torch.Tensor], model: OFA, where: str) -> None:
    """One CheckpointError for the first unexpected, missing or mis-shaped key, naming it."""
    want = model.state_dict()
    unexpected = sorted(set(sd) - set(want))
    if unexpected:
        hint = " (a --scale-resids model: another OFA variant)" if any(".w_resid" in k for k in unexpected) else ""
        raise CheckpointError(
            f"{where}: unexpected key {unexpected[0]!r}{hint} ({len(unexpected)} in all); the checkpoint is not "
            "BiomedGPT's OFA, or its config.json/args describe another model"
        )
    missing = sorted(set(want) - set(sd))
    if missing:
        raise CheckpointError(f"{where}: missing key {missing[0]!r} ({len(missing)} in all); truncated or not OFA?")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(v.shape)}, the config expects {tuple(want[k].shape)}; do the "
                "config and the weights belong together?"
            )


def build_model(cfg: OFAConfig, sd: dict[str, torch.Tensor], where: str, dtype=None, device="cpu") -> OFA:
    with torch.device("meta"):
        model = OFA(cfg)
    check_keys(sd, model, where)
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False)
    # the fixed tables are not in the state dict (and `to_empty` left them unset): rebuild them
    model.token_rp_bucket = token_buckets(cfg.token_bucket_size).to(device)
    model.encoder.image_rp_bucket = image_buckets(cfg.image_bucket_size).to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


# --- reading and writing --------------------------------------------------------------------------------


def _fairseq_file(p: Path) -> Path | None:
    """The fairseq checkpoint that `p` names: the file itself, or a directory's checkpoint.pt / only *.pt."""
    if p.is_file():
        return p if p.suffix == ".pt" else None
    if p.is_dir() and not (p / "config.json").exists():
        if (p / "checkpoint.pt").exists():
            return p / "checkpoint.pt"
        pts = sorted(p.glob("*.pt"))
        return pts[0] if len(pts) == 1 else None
    return None


def _is_ofa_state(sd) -> bool:
    return isinstance(sd, dict) and any(str(k).startswith("encoder.embed_images.") for k in sd)


def is_ofa(path: str | Path) -> bool:
    """Whether `path` is a BiomedGPT/OFA checkpoint: our directory, an OFA-port directory, or a fairseq .pt
    (a file, or a directory holding one) whose model has OFA's image stem."""
    p = Path(path)
    if p.is_dir() and (p / "config.json").exists():
        try:
            cfg = jsonfile.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return False
        archs = cfg.get("architectures") if isinstance(cfg, dict) else None
        return isinstance(cfg, dict) and (
            cfg.get("model_type") in (MODEL_TYPE, HF_MODEL_TYPE) or (isinstance(archs, list) and "OFAModel" in archs)
        )
    f = _fairseq_file(p)
    if f is None:
        return False
    try:
        ckpt = read_fairseq_checkpoint(f)
    except CheckpointError:
        return False
    return isinstance(ckpt, dict) and _is_ofa_state(ckpt.get("model"))


def read_state(path: str | Path, ema: bool = False) -> tuple[OFAConfig, dict[str, torch.Tensor], Path]:
    """(config, state dict in our names, directory the tokenizer files are looked for in)."""
    p = Path(path)
    if p.is_dir() and (p / "config.json").exists():
        hf = read_json(p / "config.json")
        where = str(p)
        if ema:
            raise CheckpointError(f"{p}: ema=True applies to fairseq checkpoints, whose extra_state holds EMA weights")
        if hf.get("model_type") == MODEL_TYPE:
            fields = {k: v for k, v in hf.items() if k in OFAConfig.__dataclass_fields__}
            try:
                cfg = OFAConfig(**fields)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{p / 'config.json'}: not a valid BiomedGPT config ({e})") from None
            return cfg, read_safetensors(p / "model.safetensors"), p
        cfg = config_from_hf(hf, str(p / "config.json"))
        from_dir = p / "pytorch_model.bin"
        sd = read_tensors(from_dir) if from_dir.exists() else read_safetensors(p / "model.safetensors")
        if isinstance(sd, dict) and sd and all(str(k).startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items()}
        return cfg, _ours_from_port(sd, where), p
    f = _fairseq_file(p)
    if f is None:
        raise CheckpointError(
            f"{p}: not a BiomedGPT checkpoint (a fairseq .pt, or a directory with config.json and its weights)"
        )
    ckpt = read_fairseq_checkpoint(f)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{f}: a fairseq checkpoint holds a 'model' state dict; this file has none")
    if not _is_ofa_state(ckpt["model"]):
        raise CheckpointError(f"{f}: the state dict has no OFA image stem (encoder.embed_images.*); not BiomedGPT")
    cfg = config_from_fairseq(ckpt, str(f))
    sd = ckpt["model"]
    if ema:
        extra = ckpt.get("extra_state")
        sd = extra.get("ema") if isinstance(extra, dict) else None
        if not isinstance(sd, dict) or not sd:
            raise CheckpointError(f"{f}: no EMA weights (extra_state['ema']); load it without ema")
        sd = {k: v.float() if v.dtype == torch.float16 else v for k, v in sd.items()}
    return cfg, _ours_from_port(fairseq_to_ours(sd), str(f)), f.parent


def load_tokenizer(directory: Path, cfg: OFAConfig) -> OFATokenizer:
    tok = OFATokenizer.from_pretrained(directory)
    if tok.vocab_size != cfg.vocab_size:
        raise VocabError(
            f"{tok.source}: {tok.vocab_size} ids, but the model has {cfg.vocab_size} embedding rows; these tokenizer "
            "files do not belong with this checkpoint"
        )
    return tok


def load_ofa(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", ema: bool = False,
    bpe_dir: str | Path | None = None,
) -> tuple[OFA, OFATokenizer]:  # fmt: skip
    """A BiomedGPT model and its tokenizer. The tokenizer files (encoder.json + vocab.bpe + dict.txt, or
    vocab.json + merges.txt) are read from `bpe_dir`, else from the checkpoint's directory."""
    cfg, sd, where = read_state(path, ema)
    tok = load_tokenizer(Path(bpe_dir) if bpe_dir is not None else where, cfg)
    return build_model(cfg, sd, str(path), dtype, device), tok


def save_ofa(model: OFA, tokenizer: OFATokenizer | None, directory: str | Path) -> None:
    """Our directory: config.json + model.safetensors (+ vocab.json + merges.txt)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": MODEL_TYPE, **model.config.to_dict()}
    write_json(d / "config.json", cfg)
    write_safetensors(d / "model.safetensors", model.state_dict())
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
