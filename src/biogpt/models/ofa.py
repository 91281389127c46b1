"""BiomedGPT's model: OFA, a BART-style encoder-decoder over text and image patches (fairseq `unify_transformer`).

- one token embedding shared by the encoder, the decoder and the output head (no scale, no bias on the head);
  a type embedding (0 text, 1 image patch) and `layernorm_embedding` / `patch_layernorm_embedding` after it
- image patches: ResNet stem + 3 stages (models/vision.py, stride 16) -> `image_proj` -> prepended to the text
- absolute positions are not added to the tokens (unless the config entangles them): they enter every attention
  as a per-head bias (pos_q · pos_kᵀ) from `pos_ln(embed_positions)` through `pos_q_linear`/`pos_k_linear`;
  the decoder has self (`self_pos_*`) and cross (`cross_pos_*`, keys from the encoder's position embeddings)
  variants. Text positions are 0..T-1 whatever the padding (fairseq's OFA right-pads the source)
- per-layer relative-position bias tables: log-bucketed 1-D for text, 2-D offsets for image patches
- pre-LN blocks with NormFormer extras: a LayerNorm after each attention, one on the FFN hidden, and a learned
  per-head scale `c_attn` on the attention output; attention logits scaled by (head_dim * attn_scale_factor)^-0.5
- the decoder adds its raw target position embeddings to the tokens unless `disable_entangle`, as the original
  (its test is `entangle_position_embedding is not None`, true for False too); BiomedGPT runs with it set

Module and parameter names are those of OFA's Hugging Face port, so its state dicts load as they are;
checkpoints/ofa.py maps fairseq's names. The decoder's image-code parts (`embed_image_positions`,
`image_pos_ln`, `code_layernorm_embedding`, `image_rel_pos_table_list`) exist in every checkpoint and are held
here, but serve only image-code generation (pretraining's image infilling), which this model does not run.

Shapes: B batch, T new tokens (text T_src in the encoder), P image patches, S source length (P + T_src),
L decoder positions so far, H heads, D head dim, d model width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biogpt.errors import GenerationError, InputError
from biogpt.models.cache import Seq2SeqCache
from biogpt.models.ofa_config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, OFAConfig, image_buckets, token_buckets
from biogpt.models.vision import OUT_CHANNELS, ResNetStem

__all__ = ["BOS_ID", "EOS_ID", "OFA", "PAD_ID", "UNK_ID", "EncoderOut", "OFAConfig", "Seq2SeqCache", "image_buckets",
           "token_buckets"]


# --- blocks ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with an additive bias (positions + mask) and NormFormer's per-head output scale."""

    def __init__(self, cfg: OFAConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head, self.head_dim = cfg.n_head, d // cfg.n_head
        self.scaling = (self.head_dim * cfg.attn_scale_factor) ** -0.5
        self.dropout = cfg.attention_dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.c_attn = nn.Parameter(torch.ones(cfg.n_head))

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> [B, H, T, D]
        return x.unflatten(-1, (self.n_head, self.head_dim)).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, T, d]; k, v [B, H, S, D]; bias [B or 1, H or 1, T, S] (-inf where masked) -> [B, T, d]."""
        q = self.heads(self.q_proj(x))
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p, scale=self.scaling)
        o = o * self.c_attn.to(o.dtype)[:, None, None]
        return self.out_proj(o.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: OFAConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.d_ffn)
        self.fc2 = nn.Linear(cfg.d_ffn, d)
        self.ffn_layer_norm = nn.LayerNorm(cfg.d_ffn)
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.act_drop = nn.Dropout(cfg.activation_dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ffn_layer_norm(self.act_drop(F.gelu(self.fc1(self.final_layer_norm(x)))))
        return x + self.drop(self.fc2(h))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.project_kv(h)
        x = x + self.drop(self.self_attn_mid_layer_norm(self.self_attn(h, k, v, bias)))
        return self.ffn(x)


class DecoderLayer(EncoderLayer):
    def __init__(self, cfg: OFAConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.cross_attn = Attention(cfg)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d)

    def forward(
        self, x: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor], self_bias: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor], cross_bias: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """self_kv: keys/values of every decoder position so far [B, H, L, D], this step's included."""
        h = self.self_attn_layer_norm(x)
        x = x + self.drop(self.self_attn_mid_layer_norm(self.self_attn(h, *self_kv, self_bias)))
        h = self.cross_attn_layer_norm(x)
        x = x + self.drop(self.cross_attn_mid_layer_norm(self.cross_attn(h, *cross_kv, cross_bias)))
        return self.ffn(x)


# --- encoder --------------------------------------------------------------------------------------------


@dataclass
class EncoderOut:
    """What the decoder needs from the encoder: states [B, S, d], padding [B, S] (True = pad), and the
    normalised source position embeddings [S, d] (the same for every row) for the cross-attention bias."""

    hidden: torch.Tensor
    padding_mask: torch.Tensor
    pos: torch.Tensor

    def index_select(self, index: torch.Tensor) -> EncoderOut:
        return EncoderOut(self.hidden.index_select(0, index), self.padding_mask.index_select(0, index), self.pos)


def _pos_bias(q_linear: nn.Linear, k_linear: nn.Linear, q_pos, k_pos, n_head: int, scaling: float) -> torch.Tensor:
    """Per-head absolute position bias [H, Tq, Tk] from position embeddings q_pos [Tq, d], k_pos [Tk, d]."""
    q = q_linear(q_pos).unflatten(-1, (n_head, -1)).transpose(0, 1) * scaling  # [H, Tq, D]
    k = k_linear(k_pos).unflatten(-1, (n_head, -1)).transpose(0, 1)  # [H, Tk, D]
    return q @ k.transpose(1, 2)


def _mask(padding: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] True = pad -> additive key mask [B, 1, 1, S]."""
    return torch.zeros(padding.shape, dtype=dtype, device=padding.device).masked_fill(padding, -math.inf)[:, None, None]


class Encoder(nn.Module):
    def __init__(self, cfg: OFAConfig):
        super().__init__()
        d, n = cfg.d_model, cfg.image_bucket_size
        self.cfg = cfg
        self.pos_scaling = (d / cfg.n_head * cfg.attn_scale_factor) ** -0.5
        self.embed_positions = nn.Embedding(cfg.max_positions + 2, d)
        self.type_embedding = nn.Embedding(2, d)
        self.layernorm_embedding = nn.LayerNorm(d)
        self.embed_images = ResNetStem(cfg.resnet_layers)
        self.image_proj = nn.Linear(OUT_CHANNELS, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d)
        self.embed_image_positions = nn.Embedding(n * n + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(2 * cfg.token_bucket_size - 1, cfg.n_head) for _ in range(cfg.encoder_layers)
        )
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding((2 * n - 1) ** 2 + 3, cfg.n_head) for _ in range(cfg.encoder_layers)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("image_rp_bucket", image_buckets(n), persistent=False)

    def patches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, S, S] -> (patch features [B, P, d] before the type embedding, patch ids [P])."""
        feats = self.embed_images(images)  # [B, 1024, h, w]
        h, w = feats.shape[-2:]
        n = self.cfg.image_bucket_size
        if h > n or w > n:
            raise InputError(f"an image of {images.shape[-2]}x{images.shape[-1]} px gives a {h}x{w} patch grid; "
                             f"this model has position ids for at most {n}x{n} ({n * 16} px): resize it")  # fmt: skip
        ids = (torch.arange(h)[:, None] * n + torch.arange(w)[None, :] + 1).flatten().to(images.device)
        return self.image_proj(feats.flatten(2).transpose(1, 2)), ids

    def forward(
        self, input_ids: torch.Tensor, embed_tokens: nn.Embedding, token_rp_bucket: torch.Tensor,
        patch_images: torch.Tensor | None = None, patch_masks: torch.Tensor | None = None,
    ) -> EncoderOut:  # fmt: skip
        B, T = input_ids.shape
        if T > self.cfg.max_positions:
            raise InputError(f"a source of {T} tokens is longer than the model's {self.cfg.max_positions} positions")
        pos = self.embed_positions.weight[:T]  # [T, d] positions 0..T-1, not offset
        x = embed_tokens(input_ids)
        if self.cfg.entangle_position_embedding:
            x = x + pos
        x = self.drop(self.layernorm_embedding(x + self.type_embedding.weight[0]))
        pos = self.pos_ln(pos)
        padding = input_ids.eq(PAD_ID)
        P = 0
        if patch_images is not None:
            img, img_ids = self.patches(patch_images.to(x.dtype))
            P = len(img_ids)
            img_pos = self.embed_image_positions(img_ids)  # [P, d]
            if self.cfg.entangle_position_embedding:
                img = img + img_pos
            img = self.drop(self.patch_layernorm_embedding(img + self.type_embedding.weight[1]))
            x = torch.cat([img, x], 1)
            has_image = torch.ones(B, dtype=torch.bool, device=x.device) if patch_masks is None else patch_masks
            padding = torch.cat([~has_image.bool()[:, None].expand(B, P), padding], 1)
            pos = torch.cat([self.image_pos_ln(img_pos), pos], 0)
        if padding.any():
            x = x.masked_fill(padding[..., None], 0.0)
        abs_bias = _pos_bias(self.pos_q_linear, self.pos_k_linear, pos, pos, self.cfg.n_head, self.pos_scaling)
        mask = _mask(padding, abs_bias.dtype)
        text_rp = token_rp_bucket[:T, :T]
        if P:
            img_rp = self.image_rp_bucket[img_ids][:, img_ids]
        for i, layer in enumerate(self.layers):
            bias = abs_bias.clone()  # [H, S, S]
            bias[:, P:, P:] += self.token_rel_pos_table_list[i](text_rp).permute(2, 0, 1)
            if P:
                bias[:, :P, :P] += self.image_rel_pos_table_list[i](img_rp).permute(2, 0, 1)
            x = layer(x, bias[None] + mask)
        return EncoderOut(self.layer_norm(x), padding, pos)


# --- decoder --------------------------------------------------------------------------------------------


class Decoder(nn.Module):
    def __init__(self, cfg: OFAConfig):
        super().__init__()
        d, n = cfg.d_model, cfg.image_bucket_size
        self.cfg = cfg
        self.pos_scaling = (d / cfg.n_head * cfg.attn_scale_factor) ** -0.5
        self.embed_positions = nn.Embedding(cfg.max_positions + 2, d)
        self.layernorm_embedding = nn.LayerNorm(d)
        self.pos_ln = nn.LayerNorm(d)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(2 * cfg.token_bucket_size - 1, cfg.n_head) for _ in range(cfg.decoder_layers)
        )
        # image-code generation only (see the module docstring): held so checkpoints round-trip
        self.embed_image_positions = nn.Embedding(n * n + 1, d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.code_layernorm_embedding = nn.LayerNorm(d)
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding((2 * n - 1) ** 2 + 3, cfg.n_head) for _ in range(cfg.decoder_layers)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, ids: torch.Tensor, enc: EncoderOut, embed_tokens: nn.Embedding, token_rp_bucket: torch.Tensor,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """ids [B, T] new decoder inputs (after `cache.length` cached ones) -> final states [B, T, d]."""
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        end = start + T
        if end > self.cfg.max_positions:
            raise GenerationError(
                f"{end} decoder positions exceed the model's {self.cfg.max_positions}; ask for fewer new tokens"
            )
        if cache is not None and end > cache.max_len:
            raise GenerationError(f"the decoder cache holds {cache.max_len} positions, {end} are needed")
        raw = self.embed_positions.weight[:end]  # [L, d]
        pos = self.pos_ln(raw)
        n_head, s = self.cfg.n_head, self.pos_scaling
        self_abs = _pos_bias(self.self_pos_q_linear, self.self_pos_k_linear, pos[start:], pos, n_head, s)  # [H, T, L]
        cross_abs = _pos_bias(self.cross_pos_q_linear, self.cross_pos_k_linear, pos[start:], enc.pos, n_head, s)
        cross_bias = cross_abs[None] + _mask(enc.padding_mask, cross_abs.dtype)  # [B, H, T, S]

        x = embed_tokens(ids)
        if not self.cfg.disable_entangle:
            x = x + raw[start:]
        x = self.drop(self.layernorm_embedding(x))

        pad = ids.eq(PAD_ID)
        if cache is not None:
            cache.pad[:, start:end] = pad
            pad = cache.pad[:, :end]
        causal = torch.ones(T, end, dtype=torch.bool, device=ids.device).triu(start + 1)  # True = future key
        mask = torch.zeros(B, 1, T, end, dtype=self_abs.dtype, device=ids.device)
        mask = mask.masked_fill(causal | pad[:, None, None, :], -math.inf)
        text_rp = token_rp_bucket[start:end, :end]
        if cache is not None and cache.cross is None:
            cache.cross = [layer.cross_attn.project_kv(enc.hidden) for layer in self.layers]
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_layer_norm(x)
            k, v = layer.self_attn.project_kv(h)
            if cache is not None:
                cache.self_k[i, :, :, start:end] = k
                cache.self_v[i, :, :, start:end] = v
                k, v = cache.self_k[i, :, :, :end], cache.self_v[i, :, :, :end]
            self_bias = (self_abs + self.token_rel_pos_table_list[i](text_rp).permute(2, 0, 1))[None] + mask
            cross_kv = cache.cross[i] if cache is not None else layer.cross_attn.project_kv(enc.hidden)
            x = layer(x, (k, v), self_bias, cross_kv, cross_bias)
        if cache is not None:
            cache.length = end
        return self.layer_norm(x)


# --- the model ------------------------------------------------------------------------------------------


class OFA(nn.Module):
    """model(input_ids [B, T_src], decoder_input_ids [B, T], patch_images [B, 3, S, S] | None,
    patch_masks [B] | None) -> logits [B, T, V] float32.

    For generation: `encode(...)` once, then `decode(decoder_input_ids, encoder_out, cache=new_cache(...))` with
    the new tokens of each step."""

    def __init__(self, cfg: OFAConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("token_rp_bucket", token_buckets(cfg.token_bucket_size), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh weights as OFA's Hugging Face port draws them (for training from scratch; checkpoints replace
        them): Linear and Embedding N(0, 0.02), biases 0, the <pad> row 0; relative-position tables 0, as OFA
        zero-initialises them; LayerNorm, BatchNorm and the per-head scales at identity."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.02)
                m.bias.zero_()
            elif isinstance(m, nn.Embedding) and "rel_pos_table" in name:
                m.weight.zero_()
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 0.02)
        self.embed_tokens.weight[PAD_ID].zero_()

    def encode(
        self, input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
    ) -> EncoderOut:  # fmt: skip
        return self.encoder(input_ids, self.embed_tokens, self.token_rp_bucket, patch_images, patch_masks)

    def decode(
        self, decoder_input_ids: torch.Tensor, encoder_out: EncoderOut, cache: Seq2SeqCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        x = self.decoder(decoder_input_ids, encoder_out, self.embed_tokens, self.token_rp_bucket, cache)
        if last_only:
            x = x[:, -1:]
        return F.linear(x, self.embed_tokens.weight).float()

    def new_cache(self, batch: int, max_len: int) -> Seq2SeqCache:
        cfg, w = self.config, self.embed_tokens.weight
        return Seq2SeqCache(
            cfg.decoder_layers, batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head, w.dtype, w.device
        )

    def forward(
        self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None, encoder_out: EncoderOut | None = None,
        cache: Seq2SeqCache | None = None, last_only: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        if encoder_out is None:
            encoder_out = self.encode(input_ids, patch_images, patch_masks)
        return self.decode(decoder_input_ids, encoder_out, cache, last_only)
