"""The BioGPT model: a fairseq `transformer_lm` decoder, numerically as `transformers.BioGptForCausalLM`.

- token embedding x sqrt(d) (no scale on positions) + learned positions, table offset by 2, positions
  derived from the attention mask so a padded row gives the same logits as the row alone
- pre-LN blocks (LayerNorm eps 1e-5, whatever HF's config says): causal self-attention with biases
  (q, k, v fused into one Linear here; checkpoint.py splits/joins them), exact erf GELU MLP with biases
- final LayerNorm; output head tied to the token embedding, no bias

Shapes: B batch, T new tokens, S cached + new tokens, H heads, D head dim, d model width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biogpt.models.cache import KVCache, causal_mask, positions, static_attention, static_mask

POSITION_OFFSET = 2  # fairseq: the first real token is row padding_idx + 1 = 2
PAD_ID = 1
EOS_ID = 2


class FairseqIds:
    """The end and padding tokens of fairseq's dictionary, which every BioGPT and BiomedGPT checkpoint shares (so
    properties, not config fields)."""

    @property
    def eos_token_id(self) -> int:
        """</s>: ends every sequence."""
        return EOS_ID

    @property
    def pad_token_id(self) -> int:
        """<pad>: fairseq's padding index."""
        return PAD_ID


@dataclass
class BioGPTConfig(FairseqIds):
    vocab_size: int = 42384  # dictionary + specials (+ K learned prompt tokens for task checkpoints)
    n_layer: int = 24
    d_model: int = 1024
    n_head: int = 16
    d_ffn: int = 4096
    max_positions: int = 1024
    scale_embedding: bool = True
    num_prompt_tokens: int = 0  # learned1..learnedK, the last K rows of the vocabulary
    # what a task checkpoint was fine-tuned with, as its fairseq cfg.task says (max_source_positions,
    # max_target_positions); None where the checkpoint does not say (tasks then use the original scripts')
    task_settings: dict | None = None
    # a multi-task model: task name -> [first, count] of its prompt tokens among learned1..K (None: one task,
    # all K prompt tokens)
    prompt_tasks: dict | None = None
    dropout: float = 0.1  # residual and embedding dropout (training only)
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")

    @classmethod
    def base(cls, **overrides) -> BioGPTConfig:
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides) -> BioGPTConfig:
        kw = dict(vocab_size=57717, n_layer=48, d_model=1600, n_head=25, d_ffn=6400, max_positions=2048)
        return cls(**{**kw, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, cfg: BioGPTConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.attn_dropout = cfg.attention_dropout
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * d)  # rows: q, then k, then v
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, cfg.d_ffn)
        self.fc2 = nn.Linear(cfg.d_ffn, d)
        self.act = nn.GELU()  # exact (erf)
        self.drop = nn.Dropout(cfg.dropout)
        self.act_drop = nn.Dropout(cfg.activation_dropout)
        # (qkv [B, 1, 3d], cache, layer) -> [B, 1, d] for one new token per row; cpu_inference.py sets a kernel
        self.decode_attention: nn.Module | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, d = x.shape
        H = self.n_head
        qkv = self.qkv(self.ln1(x))  # [B, T, 3d]
        if cache is not None and T == 1 and self.decode_attention is not None:
            a = self.decode_attention(qkv, cache, layer)  # also writes this token's k, v into the cache
        else:
            q, k, v = qkv.view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
            if cache is not None:
                k, v = cache.update(layer, k, v)  # [B, H, S, D]: every slot so far
            drop = self.attn_dropout if self.training else 0.0
            causal = mask is None and cache is None and T > 1
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal)
            a = a.transpose(1, 2).reshape(B, T, d)
        if not self.training:  # no dropout modules to call: 3 fewer calls per layer and decoding step
            x = x + self.out(a)
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))
        x = x + self.drop(self.out(a))
        return x + self.drop(self.fc2(self.act_drop(self.act(self.fc1(self.ln2(x))))))


class BioGPT(nn.Module):
    def __init__(self, cfg: BioGPTConfig):
        super().__init__()
        self.config = cfg
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.pos_emb = nn.Embedding(cfg.max_positions + POSITION_OFFSET, cfg.d_model)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.head: nn.Module | None = None  # None: the head is tied to tok_emb; cpu_inference.py sets a packed one
        self.cache_dtype: torch.dtype | None = None  # KV cache dtype; None: the weights' (cpu_inference.py sets bf16)

    # --- construction ---------------------------------------------------------------------------------

    def init_weights(self, seed: int | None = None) -> None:
        """fairseq initialisation: embeddings N(0, d^-0.5) with a zero pad row, q/k/v xavier (gain 1/sqrt 2)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        d = self.config.d_model
        with torch.no_grad():
            for emb in (self.tok_emb, self.pos_emb):
                emb.weight.normal_(0.0, d**-0.5, generator=g)
            self.tok_emb.weight[PAD_ID].zero_()
            for b in self.blocks:
                for part in b.qkv.weight.chunk(3):
                    nn.init.xavier_uniform_(part, gain=2**-0.5, generator=g)
                b.qkv.bias.zero_()
                nn.init.xavier_uniform_(b.out.weight, generator=g)
                b.out.bias.zero_()

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
        # positions from the mask: the first real token of each row is position 0 (table row 2)
        pos = positions(real, cache, T, device)
        if int(pos.max()) >= self.config.max_positions:
            raise ValueError(f"sequence longer than the model's {self.config.max_positions} positions")
        x = self.tok_emb(input_ids) * self.embed_scale + self.pos_emb(pos + POSITION_OFFSET)
        x = self.emb_drop(x) if self.training else x
        mask = causal_mask(real, cache, T, device)  # [B, 1, T, S] or None (plain causal is exact)

        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i)
        if cache is not None:
            cache.advance(T, real)
        if last_only:
            x = x[:, -1:]
        x = self.ln_f(x)
        if return_hidden:  # [B, T, d] before the head (training computes head + loss in one fused step)
            return x
        if self.head is not None:
            return self.head(x).float()
        return F.linear(x, self.tok_emb.weight).float()  # tied head, no bias

    def decode_step(
        self, ids: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, next_pos: torch.Tensor,
        slot: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """One new token per row in static shapes, the step torch.compile or a CUDA graph captures once
        (generation/compiled.py): ids [B, 1]; k, v, valid, next_pos: a KVCache's tensors, updated in place;
        slot: long [1], the slot this token fills. Logits [B, V] float32, as forward's with the cache."""
        pos = next_pos[:, None]  # [B, 1]
        x = self.tok_emb(ids) * self.embed_scale + self.pos_emb(pos + POSITION_OFFSET)
        valid.index_fill_(1, slot, True)
        mask = static_mask(valid, slot)  # [B, 1, 1, S_max]
        for i, b in enumerate(self.blocks):
            x = x + b.out(static_attention(b.qkv(b.ln1(x)), k[i], v[i], slot, mask, b.n_head))
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
