"""List BiomedGPT's fairseq state-dict keys and shapes by building the original model (taokz/BiomedGPT).

    python scripts/derive_ofa_fairseq_keys.py GIT_DIR_OF_taokz/BiomedGPT tests/data/ofa_fairseq_keys.json

Reads models/ofa/{ofa,unify_transformer,unify_transformer_layer,unify_multihead_attention,resnet,frozen_bn}.py
from the bare git repository GIT_DIR (HEAD), imports them with minimal stand-ins for the few fairseq names they
use (module containers, LayerNorm, no-op dropout/quant-noise/registration decorators), builds OFAModel (weights
left uninitialised) for ofa_tiny/ofa_medium/ofa_base with the flags of the original's training scripts
(scripts/pretrain/pretrain_tiny.sh, scripts/vqa/*.sh) and the 59,457-entry dictionary of the released
checkpoints, and writes state_dict() key -> shape per arch. No weights are loaded; nothing from the original is
copied into biogpt: the output is only names and shapes, which tests/test_ofa.py checks the loader against.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FILES = ("ofa", "unify_transformer", "unify_transformer_layer", "unify_multihead_attention", "resnet", "frozen_bn")
VOCAB = 59457  # len(dict.txt) + 4 specials + 1000 location bins + 8192 image codes, as the released checkpoints
# the flags every BiomedGPT training/fine-tuning script passes (the arch functions give the rest)
SCRIPT_FLAGS = dict(
    encoder_normalize_before=True, decoder_normalize_before=True, share_decoder_input_output_embed=True,
    share_all_embeddings=True, layernorm_embedding=True, patch_layernorm_embedding=True,
    code_layernorm_embedding=True, add_type_embedding=True, scale_attn=True, scale_fc=True, scale_heads=True,
    disable_entangle=True, resnet_drop_path_rate=0.0, encoder_drop_path_rate=0.1, decoder_drop_path_rate=0.1,
    dropout=0.1, attention_dropout=0.0,
)  # fmt: skip


# the scripts' --patch-image-size (a task setting the encoder also reads; no shape depends on it)
IMAGE_SIZE = {"ofa_tiny": 256, "ofa_medium": 256, "ofa_base": 384}


def _module(name: str, **attrs) -> types.ModuleType:
    """A stand-in module registered in sys.modules (and as an attribute of its parent)."""
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    parent, _, leaf = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], leaf, mod)
    return mod


class _Dropout(nn.Module):
    """fairseq's FairseqDropout holds no parameters; only its presence matters here."""

    def __init__(self, p: float = 0.0, module_name: str | None = None) -> None:
        super().__init__()
        self.p = p


class _LayerDropList(nn.ModuleList):
    """fairseq's LayerDropModuleList is an nn.ModuleList whose first argument is the drop rate."""

    def __init__(self, p: float, modules=None) -> None:
        super().__init__(modules)


class _Encoder(nn.Module):
    def __init__(self, dictionary) -> None:
        super().__init__()
        self.dictionary = dictionary


class _EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder


class _Dictionary:
    """The joined source/target dictionary: only its size and special ids are read at build time."""

    def __len__(self) -> int:
        return VOCAB

    def pad(self) -> int:
        return 1

    def eos(self) -> int:
        return 2

    def bos(self) -> int:
        return 0

    def unk(self) -> int:
        return 3


def _layer_norm(normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, export: bool = False):
    """fairseq's LayerNorm: torch's, with an `export` flag that picks an implementation, not parameters."""
    return nn.LayerNorm(normalized_shape, eps, elementwise_affine)


def _decorator(*_a, **_k):
    return lambda x: x


def install_fairseq_stand_ins() -> None:
    """Just the fairseq names models/ofa imports; each holds no parameters of its own, as in fairseq."""
    acts = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "linear": lambda x: x}
    _module("fairseq")
    _module(
        "fairseq.utils", get_activation_fn=lambda activation: acts[activation],
        get_available_activation_fns=lambda: list(acts),
        new_arange=lambda x, *size: torch.arange(x.size(-1), device=x.device).expand_as(x).contiguous(),
        fill_with_neg_inf=lambda t: t.float().fill_(float("-inf")).type_as(t),
    )  # fmt: skip
    _module("fairseq.distributed", fsdp_wrap=lambda m, **_k: m)
    _module(
        "fairseq.models", FairseqEncoder=_Encoder, FairseqIncrementalDecoder=_Encoder,
        FairseqEncoderDecoderModel=_EncoderDecoder, register_model=_decorator,
        register_model_architecture=_decorator,
    )  # fmt: skip
    _module(
        "fairseq.modules", AdaptiveSoftmax=None, BaseLayer=None, FairseqDropout=_Dropout,
        LayerDropModuleList=_LayerDropList, LayerNorm=_layer_norm, SinusoidalPositionalEmbedding=type("S", (), {}),
        GradMultiply=None,
    )  # fmt: skip
    _module("fairseq.modules.fairseq_dropout", FairseqDropout=_Dropout)
    _module("fairseq.modules.checkpoint_activations", checkpoint_wrapper=lambda m, **_k: m)
    _module("fairseq.modules.quant_noise", quant_noise=lambda m, p, block_size: m)
    _module("fairseq.modules.transformer_sentence_encoder", init_bert_params=lambda m: None)
    _module("fairseq.incremental_decoding_utils", with_incremental_state=lambda cls: cls)


def import_original(git_dir: str, into: Path):
    """models/ofa/*.py at HEAD of `git_dir`, written under `into` as package `ofa_original` and imported."""
    pkg = into / "ofa_original"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for f in FILES:
        src = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"HEAD:models/ofa/{f}.py"], capture_output=True, text=True,
            check=True,
        ).stdout  # fmt: skip
        (pkg / f"{f}.py").write_text(src)
    sys.path.insert(0, str(into))
    import ofa_original.ofa as ofa  # noqa: PLC0415 (written just above)

    return ofa


def derive(ofa, arch: str) -> dict[str, list[int]]:
    """state_dict() key -> shape of the original OFAModel for `arch`, built without initialising weights."""
    args = argparse.Namespace(**SCRIPT_FLAGS, patch_image_size=IMAGE_SIZE[arch])
    getattr(ofa, f"{arch}_architecture")(args)
    for name in ("encoder_layers_to_keep", "decoder_layers_to_keep", "encoder_embed_path", "decoder_embed_path"):
        setattr(args, name, getattr(args, name, None))
    d = _Dictionary()
    task = types.SimpleNamespace(source_dictionary=d, target_dictionary=d)
    # the CPU, not the meta device: the ResNet reads its drop-path rates with .item(); no init, memory untouched
    inits = {n: getattr(nn.init, n) for n in ("kaiming_uniform_", "uniform_", "normal_", "xavier_uniform_")}
    try:
        for n in inits:
            setattr(nn.init, n, lambda t, *_a, **_k: t)
        model = ofa.OFAModel.build_model(args, task)
    finally:
        for n, f in inits.items():
            setattr(nn.init, n, f)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _one_key_a_line(doc: dict) -> str:
    """JSON with one `"key": [shape]` per line, so a diff of two derivations reads key by key."""
    lines = ["{", f'"_derived": {json.dumps(doc["_derived"])},']
    archs = [a for a in doc if a != "_derived"]
    for i, arch in enumerate(archs):
        rows = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc[arch].items()]
        lines += [f"{json.dumps(arch)}: {{", ",\n".join(rows), "}" + ("," if i + 1 < len(archs) else "")]
    return "\n".join(lines + ["}"]) + "\n"


def main() -> None:
    """Write {arch: {key: shape}} with a header saying where it came from."""
    git_dir, out = sys.argv[1:3]
    commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True, text=True)
    install_fairseq_stand_ins()
    with tempfile.TemporaryDirectory() as tmp:
        ofa = import_original(git_dir, Path(tmp))
        archs = {arch: derive(ofa, arch) for arch in ("ofa_tiny", "ofa_medium", "ofa_base")}
    doc = {
        "_derived": (
            f"scripts/derive_ofa_fairseq_keys.py: taokz/BiomedGPT@{commit.stdout.strip()} models/ofa built with "
            f"fairseq stand-ins, vocab {VOCAB}, flags {sorted(k for k, v in SCRIPT_FLAGS.items() if v is True)}"
        ),
        **archs,
    }
    Path(out).write_text(_one_key_a_line(doc))
    print({a: len(k) for a, k in archs.items()}, file=sys.stderr)


if __name__ == "__main__":
    main()
