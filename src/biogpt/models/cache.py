"""The KV cache every decoder-only family shares: pre-allocated keys and values, and which slots are real.

The generation engine drives it through `model.new_cache(batch, max_len)` and the model's forward; beam
search reorders rows in place, and runs the prompt once per input before repeating its rows per beam.
"""

from __future__ import annotations

import torch


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
