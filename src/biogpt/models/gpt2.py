"""The GPT-2 family (BioMedLM, formerly PubMedGPT 2.7B), numerically as `transformers.GPT2LMHeadModel`.

- token embedding (no scale) + learned positions starting at 0, positions derived from the attention mask
  (the first real token of a row is position 0), as transformers' generate() derives them, so a left-padded
  row gives the same logits as the row alone
- pre-LN blocks: causal self-attention with biases (q, k, v fused; the checkpoint's Conv1D weights are
  [in, out], checkpoints/gpt2.py transposes them into Linears), logits scaled by 1/sqrt(D) and, with
  `scale_attn_by_inverse_layer_idx` (BioMedLM), also by 1/(layer + 1); MLP with tanh-approximated GELU
  (`gelu_new`) or exact GELU (`gelu`)
- final LayerNorm `ln_f`; output head tied to the token embedding, no bias

The module and attribute names (tok_emb, blocks[i].qkv/out/fc1/fc2, head, cache_dtype, decode_attention) are
those of models/biogpt.py, so the CPU inference forms (backends/cpu/forms.py) apply to both families.

Shapes: B batch, T new tokens, S cached + new tokens, H heads, D head dim, d model width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biogpt.models.cache import KVCache, causal_mask, positions, static_attention, static_mask

ACTIVATIONS = {"gelu_new": "tanh", "gelu": "none"}  # HF activation_function -> nn.GELU(approximate=...)


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    d_ffn: int = 3072  # HF n_inner; null there means 4 * d
    max_positions: int = 1024
    activation: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    scale_attn_weights: bool = True  # logits / sqrt(D)
    scale_attn_by_inverse_layer_idx: bool = False  # logits also / (layer + 1) (BioMedLM: True)
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    dropout: float = 0.1  # HF resid_pdrop and embd_pdrop (training only)
    attention_dropout: float = 0.1  # HF attn_pdrop

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")

    @property
    def pad_token_id(self) -> int:
        """GPT-2 has no padding token: generation pads finished rows with <|endoftext|>, as transformers does."""
        return self.eos_token_id

    @classmethod
    def biomedlm(cls, **overrides) -> GPT2Config:
        """stanford-crfm/BioMedLM: 32 layers, width 2560, 20 heads, vocabulary 28896 (<|endoftext|> = 28895)."""
        kw = dict(vocab_size=28896, n_layer=32, d_model=2560, n_head=20, d_ffn=10240, max_positions=1024,
                  scale_attn_by_inverse_layer_idx=True, bos_token_id=28895, eos_token_id=28895)  # fmt: skip
        return cls(**{**kw, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.attn_dropout = cfg.attention_dropout
        D = d // cfg.n_head
        # the attention logits' scale, as transformers computes it (in Python floats)
        scale = D**-0.5 if cfg.scale_attn_weights else 1.0
        self.scale = scale / float(layer + 1) if cfg.scale_attn_by_inverse_layer_idx else scale
        self.ln1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)  # rows: q, then k, then v
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.d_ffn)
        self.fc2 = nn.Linear(cfg.d_ffn, d)
        self.act = nn.GELU(approximate=ACTIVATIONS[cfg.activation])
        self.drop = nn.Dropout(cfg.dropout)
        # (qkv [B, 1, 3d], cache, layer) -> [B, 1, d] for one new token per row, scaling logits by 1/sqrt(D);
        # backends/cpu/forms.py sets a kernel
        self.decode_attention: nn.Module | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, d = x.shape
        H = self.n_head
        qkv = self.qkv(self.ln1(x))  # [B, T, 3d]
        if cache is not None and T == 1 and self.decode_attention is not None:
            # the kernels scale by 1/sqrt(D): any further factor (1/(layer + 1)) goes onto q first
            extra = self.scale * math.sqrt(d // H)
            if extra != 1.0:
                qkv = torch.cat([qkv[..., :d] * extra, qkv[..., d:]], -1)
            a = self.decode_attention(qkv, cache, layer)  # also writes this token's k, v into the cache
        else:
            q, k, v = qkv.view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
            if cache is not None:
                k, v = cache.update(layer, k, v)  # [B, H, S, D]: every slot so far
            drop = self.attn_dropout if self.training else 0.0
            causal = mask is None and cache is None and T > 1
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal,
                                               scale=self.scale)  # fmt: skip
            a = a.transpose(1, 2).reshape(B, T, d)
        if not self.training:  # no dropout modules to call: 2 fewer calls per layer and decoding step
            x = x + self.out(a)
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))
        x = x + self.drop(self.out(a))
        return x + self.drop(self.fc2(self.act(self.fc1(self.ln2(x)))))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.head: nn.Module | None = None  # None: the head is tied to tok_emb; the CPU forms set a packed one
        self.cache_dtype: torch.dtype | None = None  # KV cache dtype; None: the weights' (the int8 form sets bf16)

    # --- construction ---------------------------------------------------------------------------------

    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights and embeddings, zero biases, unit LayerNorms, and the
        residual projections (out, fc2) at 0.02 / sqrt(2 * n_layer)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        std = 0.02
        with torch.no_grad():
            for emb in (self.tok_emb, self.pos_emb):
                emb.weight.normal_(0.0, std, generator=g)
            for b in self.blocks:
                for name in ("qkv", "out", "fc1", "fc2"):
                    lin = getattr(b, name)
                    resid = name in ("out", "fc2")
                    lin.weight.normal_(0.0, std / math.sqrt(2 * self.config.n_layer) if resid else std, generator=g)
                    lin.bias.zero_()
            for ln in [self.ln_f] + [x for b in self.blocks for x in (b.ln1, b.ln2)]:
                ln.weight.fill_(1.0)
                ln.bias.zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- forward ----------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, V] (float32) for input_ids [B, T]; attention_mask [B, T] marks real tokens (1) vs pad (0).
        `return_hidden` returns the final hidden states [B, T, d] instead.

        With a cache, input_ids are the new tokens and attention_mask covers them only; the cache remembers
        earlier ones. `last_only` computes the head for the last position only ([B, 1, V]).
        """
        B, T = input_ids.shape
        device = input_ids.device
        real = attention_mask.bool() if attention_mask is not None else None
        # positions from the mask: the first real token of each row is position 0; padding gets 0 (never read)
        pos = positions(real, cache, T, device)
        if int(pos.max()) >= self.config.max_positions:
            raise ValueError(f"sequence longer than the model's {self.config.max_positions} positions")
        x = self.emb_drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        mask = causal_mask(real, cache, T, device)  # [B, 1, T, S] or None (plain causal is exact)

        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i)
        if cache is not None:
            cache.advance(T, real)
        if last_only:
            x = x[:, -1:]
        x = self.ln_f(x)
        if return_hidden:  # [B, T, d] before the head
            return x
        if self.head is not None:
            return self.head(x).float()
        return F.linear(x, self.tok_emb.weight).float()  # tied head, no bias

    def decode_step(
        self, ids: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, next_pos: torch.Tensor,
        slot: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """One new token per row in static shapes (see BioGPT.decode_step): ids [B, 1] -> logits [B, V] float32."""
        x = self.tok_emb(ids) + self.pos_emb(next_pos[:, None])  # [B, 1, d]
        valid.index_fill_(1, slot, True)
        mask = static_mask(valid, slot)  # [B, 1, 1, S_max]
        for i, b in enumerate(self.blocks):
            x = x + b.out(static_attention(b.qkv(b.ln1(x)), k[i], v[i], slot, mask, b.n_head, b.scale))
            x = x + b.fc2(b.act(b.fc1(b.ln2(x))))
        next_pos.add_(1)
        x = self.ln_f(x)
        logits = self.head(x) if self.head is not None else F.linear(x, self.tok_emb.weight)
        return logits[:, -1].float()

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache for `batch` rows of up to `max_len` tokens (prompt + new), in `cache_dtype`."""
        cfg = self.config
        if max_len > cfg.max_positions:
            raise ValueError(f"cache length {max_len} exceeds the model's {cfg.max_positions} positions")
        p = self.tok_emb.weight
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head, self.cache_dtype or p.dtype,
                       p.device)  # fmt: skip
