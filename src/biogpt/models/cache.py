"""The KV cache every decoder-only family shares: pre-allocated keys and values, and which slots are real;
and the encoder-decoder's (BiomedGPT) decoder state, `Seq2SeqCache`.

The generation engine drives it through `model.new_cache(batch, max_len)` and the model's forward; beam
search reorders rows in place, and runs the prompt once per input before repeating its rows per beam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Pre-allocated keys and values for every layer, plus which cached slots hold real tokens.

    k, v: [L, B, H, S_max, D]; valid: [B, S_max] (False for padding); next_pos: [B] next position id.
    """

    def __init__(
        self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):  # fmt: skip
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0  # slots filled (the same for every row)
        self.has_padding = False

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values k, v [B, H, T, D] of `layer` after the filled slots; return every
        slot's so far ([B, H, S, D], read back in k's dtype: the cache may be kept in another, e.g. bf16)."""
        s, T = self.length, k.shape[2]
        self.k[layer, :, :, s : s + T] = k
        self.v[layer, :, :, s : s + T] = v
        if not s:
            return k, v
        return self.k[layer, :, :, : s + T].to(k.dtype), self.v[layer, :, :, : s + T].to(v.dtype)

    def advance(self, T: int, real: torch.Tensor | None) -> None:
        """After every layer has written T new slots: count them, and each row's real tokens among them."""
        self.length += T
        self.next_pos += real.sum(-1) if real is not None else T

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search): every row becomes a copy of row index[row].

        Only the filled slots move (the buffers are allocated for the longest output)."""
        n = self.length
        # only rows that change parent are copied, one strided block each (a generic gather over all rows is
        # several times slower); sources are copied out first because a source may also be a destination
        dst = (index != torch.arange(len(index), device=index.device)).nonzero().flatten().tolist()
        src = index[dst].tolist()
        for buf in (self.k, self.v):
            moved = [buf[:, r, :, :n].clone() for r in src]  # each [L, H, n, D]
            for r, block in zip(dst, moved):
                buf[:, r, :, :n].copy_(block)
        self.valid = self.valid.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)

    def load_repeated(self, other: KVCache, n: int) -> None:
        """Fill this empty cache (B * n rows) from `other` (B rows), each row repeated n times: beam search
        runs the prompt once per input instead of once per beam."""
        s = other.length
        for dst, src in ((self.k, other.k), (self.v, other.v)):
            dst[:, :, :, :s].unflatten(1, (-1, n)).copy_(src[:, :, None, :, :s])  # [L, B, n, H, s, D]
        self.valid[:, :s] = other.valid[:, :s].repeat_interleave(n, 0)
        self.next_pos = other.next_pos.repeat_interleave(n)
        self.length, self.has_padding = s, other.has_padding

    def zero_unfilled(self) -> None:
        """Zero every slot past the filled ones: a static-shape step (static_attention) reads them with weight 0,
        and 0 x an uninitialised NaN would be NaN."""
        self.k[:, :, :, self.length :].zero_()
        self.v[:, :, :, self.length :].zero_()

    # --- slots for continuous batching (biogpt.generation.scheduler): rows come and go, all share `length` --

    def rows(self, n: int) -> KVCache:
        """A cache over the first n rows that shares this one's storage (k[:, :n] is contiguous per layer). The
        model updates its `length` only: copy it back after the forward."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, :n], self.v[:, :n]
        view.valid, view.next_pos = self.valid[:n], self.next_pos[:n]
        view.length, view.has_padding = self.length, self.has_padding
        return view

    def put_row(self, row: int, other: KVCache, src: int = 0) -> None:
        """Row `src` of `other` into row `row`, right-aligned so its last slot is this cache's last filled slot
        (length - 1); the slots before it are marked invalid and zeroed (attention gives them weight 0, and
        0 x garbage could be NaN: the buffers start uninitialised). Needs other.length <= length."""
        m, n = other.length, self.length
        if m > n:
            raise ValueError(f"a row of {m} slots does not fit before slot {n}; shift first")
        self.k[:, row, :, n - m : n].copy_(other.k[:, src, :, :m])
        self.v[:, row, :, n - m : n].copy_(other.v[:, src, :, :m])
        self.k[:, row, :, : n - m].zero_()
        self.v[:, row, :, : n - m].zero_()
        self.valid[row] = False
        self.valid[row, n - m : n] = other.valid[src, :m]
        self.next_pos[row] = other.next_pos[src]
        self.has_padding = True

    def move_row(self, src: int, dst: int) -> None:
        """Row src's filled slots into row dst (a freed row), src left as it was."""
        n = self.length
        self.k[:, dst, :, :n].copy_(self.k[:, src, :, :n])
        self.v[:, dst, :, :n].copy_(self.v[:, src, :, :n])
        self.valid[dst] = self.valid[src]
        self.next_pos[dst] = self.next_pos[src]

    def shift(self, d: int) -> None:
        """Move every row's filled slots by d columns: d < 0 drops the first -d (they must be invalid in the rows
        that matter), d > 0 opens d invalid, zeroed slots at the front (length grows by d)."""
        n = self.length
        if d < 0:
            for buf in (self.k, self.v):
                buf[:, :, :, : n + d] = buf[:, :, :, -d:n].clone()
            self.valid[:, : n + d] = self.valid[:, -d:n].clone()
            self.valid[:, n + d :] = False
        elif d > 0:
            if n + d > self.max_len:
                raise ValueError(f"cache holds {self.max_len} slots; {n + d} needed")
            for buf in (self.k, self.v):
                buf[:, :, :, d : n + d] = buf[:, :, :, :n].clone()
                buf[:, :, :, :d] = 0
            self.valid[:, d : n + d] = self.valid[:, :n].clone()
            self.valid[:, :d] = False
        self.length = n + d


def positions(real: torch.Tensor | None, cache: KVCache | None, T: int, device: torch.device) -> torch.Tensor:
    """Position ids from 0, [B, T] (or [1, T] without a mask or cache), for T new tokens: counted over the
    real tokens only (real [B, T], True for a token, False for padding), continuing each row's count in the
    cache, so a left-padded row gets the positions of the row alone. Padding gets 0 (its output is never read)."""
    if real is None:
        start = cache.next_pos[:, None] if cache is not None else 0
        return torch.arange(T, device=device)[None, :] + start
    pos = (real.long().cumsum(-1) - 1).clamp_min(0)
    return pos + cache.next_pos[:, None] if cache is not None else pos


def causal_mask(
    real: torch.Tensor | None, cache: KVCache | None, T: int, device: torch.device
) -> torch.Tensor | None:
    """The boolean attention mask [B, 1, T, S] for T new tokens, or None where plain causal attention is exact
    (no padding anywhere, or a single new token). With a cache it also records which new slots are real.

    Query i (slot s + i) sees the real slots up to itself, and always itself, so that the rows of padding
    queries are never empty (their outputs are never read)."""
    padded = real is not None and not bool(real.all())
    if cache is None:
        if not padded:
            return None
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=device)
        return ((causal[None] & real[:, None, :]) | eye[None])[:, None]
    s = cache.length
    if s + T > cache.max_len:
        raise ValueError(f"cache holds {cache.max_len} tokens; {s + T} needed")
    cache.valid[:, s : s + T] = real if real is not None else True
    cache.has_padding = cache.has_padding or padded
    if not (cache.has_padding or T > 1):
        return None
    S = s + T
    keys, queries = torch.arange(S, device=device)[None, :], torch.arange(s, S, device=device)[:, None]
    return (((keys <= queries)[None] & cache.valid[:, None, :S]) | (keys == queries)[None])[:, None]


def static_mask(valid: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """The attention mask [B, 1, 1, S_max] of one new token per row written at `slot` (long [1]): the real slots
    up to it (valid [B, S_max], which must already mark the new slot). Static shape: no Python number depends
    on the step, so a compiled or captured step can be replayed."""
    keys = torch.arange(valid.shape[1], device=valid.device)
    return (valid & (keys <= slot))[:, None, None, :]


def static_attention(
    qkv: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor, n_head: int,
    scale: float | None = None,
) -> torch.Tensor:  # fmt: skip
    """Attention of one new token per row over one layer's whole cache, in static shapes: qkv [B, 1, 3d]; k, v
    [B, H, S_max, D] (this token's key and value are written at `slot`); mask [B, 1, 1, S_max] (static_mask).
    Slots past the filled ones get weight 0, so they must hold finite numbers (zeros: KVCache.zero_unfilled)."""
    B, _, d3 = qkv.shape
    d = d3 // 3
    q, kn, vn = qkv.view(B, 1, 3, n_head, d // n_head).permute(2, 0, 3, 1, 4)  # 3 x [B, H, 1, D]
    k.index_copy_(2, slot, kn.to(k.dtype))
    v.index_copy_(2, slot, vn.to(v.dtype))
    a = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale)
    return a.transpose(1, 2).reshape(B, 1, d)  # [B, 1, d]


class Seq2SeqCache:
    """Decoder state across steps. Self-attention keys/values are pre-allocated for `max_len` positions:
    self_k/self_v [n_layer, B, H, max_len, D]; `pad` [B, max_len] marks decoder inputs that are padding (masked
    as keys). Cross-attention keys/values [B, H, S, D] per layer are projected from the encoder once, at the
    first step. Beam search reorders rows with `reorder`."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, dtype, device):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.self_k = torch.empty(shape, dtype=dtype, device=device)
        self.self_v = torch.empty(shape, dtype=dtype, device=device)
        self.pad = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.self_k.shape[3]

    def reorder(self, index: torch.Tensor) -> None:
        """Row r becomes a copy of row index[r] (beam search); fewer rows when finished inputs leave."""
        n = self.length
        if len(index) == self.self_k.shape[1]:
            self.self_k[:, :, :, :n] = self.self_k[:, index, :, :n]
            self.self_v[:, :, :, :n] = self.self_v[:, index, :, :n]
        else:
            shape = (self.self_k.shape[0], len(index), *self.self_k.shape[2:])
            k, v = self.self_k.new_empty(shape), self.self_v.new_empty(shape)
            k[:, :, :, :n], v[:, :, :, :n] = self.self_k[:, index, :, :n], self.self_v[:, index, :, :n]
            self.self_k, self.self_v = k, v
        self.pad = self.pad.index_select(0, index)
        if self.cross is not None:
            self.cross = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross]
