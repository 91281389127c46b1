"""BiomedGPT's configuration (the sizes of BiomedGPT-S/-M/-B) and OFA's fixed relative-position bucket tables:
the data the model (models/ofa.py) and the checkpoint key maps (checkpoints/ofa.py) both build from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from biogpt.models.biogpt import FairseqIds
from biogpt.models.vision import RESNET_LAYERS

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
BUCKET_MAX_POSITION = 1024  # the text bucket table is always built for 1024 positions, whatever the config says


@dataclass
class OFAConfig(FairseqIds):
    vocab_size: int = 59457  # text (50265 incl. <mask>) + 8192 <code_i> + 1000 <bin_i>
    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    n_head: int = 12
    d_ffn: int = 3072
    max_positions: int = 1024  # source and target
    resnet_layers: tuple[int, int, int] = RESNET_LAYERS["resnet101"]
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    attn_scale_factor: float = 2.0
    entangle_position_embedding: bool = False  # encoder: add raw positions to tokens and patches
    disable_entangle: bool = True  # decoder: do NOT add raw target positions to the tokens
    text_vocab_size: int = 50265  # ids below are text and <mask>; image codes and box bins follow
    image_size: int = 384  # evaluation resolution: 256 for -S/-M, 384 for -B
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    extra: dict = field(default_factory=dict)  # what the checkpoint said that the model does not need

    def __post_init__(self):
        self.resnet_layers = tuple(self.resnet_layers)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.max_positions > BUCKET_MAX_POSITION:
            raise ValueError(f"max_positions {self.max_positions} > {BUCKET_MAX_POSITION}, OFA's bucket table size")

    @classmethod
    def tiny(cls, **overrides) -> OFAConfig:
        """BiomedGPT-S (fairseq arch ofa_tiny, ~33M parameters)."""
        kw = dict(d_model=256, encoder_layers=4, decoder_layers=4, n_head=4, d_ffn=1024)
        return cls(**{**kw, "resnet_layers": RESNET_LAYERS["resnet50"], "image_size": 256, **overrides})

    small = tiny  # BiomedGPT's name for the same size

    @classmethod
    def medium(cls, **overrides) -> OFAConfig:
        """BiomedGPT-M (ofa_medium, ~93M parameters)."""
        kw = dict(d_model=512, encoder_layers=4, decoder_layers=4, n_head=8, d_ffn=2048, image_size=256)
        return cls(**{**kw, **overrides})

    @classmethod
    def base(cls, **overrides) -> OFAConfig:
        """BiomedGPT-B (ofa_base, ~182M parameters)."""
        return cls(**overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# --- relative position buckets (fixed tables, rebuilt at load: never stored in our checkpoints) -------------


def token_buckets(bucket_size: int, max_position: int = BUCKET_MAX_POSITION) -> torch.Tensor:
    """[max_position, max_position] bucket of (query - key): exact within ±bucket_size/2, log-spaced beyond."""
    rel = torch.arange(max_position)[:, None] - torch.arange(max_position)[None, :]
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), mid - 1, rel.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(abs_pos.le(mid), rel, log_pos.int() * torch.sign(rel))
    return bucket.long() + bucket_size - 1


def image_buckets(bucket_size: int) -> torch.Tensor:
    """[n*n + 1, n*n + 1] index of the 2-D offset between patch ids (id = row * n + col + 1; id 0 is a
    placeholder row/column with its own three entries at the end of the table)."""
    n = bucket_size
    coords = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")).flatten(1)  # [2, n*n]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (n - 1)  # [n*n, n*n, 2], from 0
    num = (2 * n - 1) ** 2 + 3
    out = torch.zeros(n * n + 1, n * n + 1, dtype=torch.long)
    out[1:, 1:] = rel[..., 0] * (2 * n - 1) + rel[..., 1]
    out[0, :] = num - 3
    out[:, 0] = num - 2
    out[0, 0] = num - 1
    return out
