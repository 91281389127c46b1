"""Training data streams: fixed-length blocks from token shards for pre-training, deterministic and resumable."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch


class BlockData:
    """Fixed-length blocks from token shards; a deterministic order per epoch (seeded permutation).

    Block i is tokens[i*L : i*L + L + 1] of one shard: inputs are its first L tokens, targets its last L.
    """

    def __init__(self, shards: list[np.ndarray], block: int, seed: int):
        self.shards, self.block, self.seed = shards, block, seed
        self.index = [(s, i) for s, arr in enumerate(shards) for i in range((len(arr) - 1) // block)]
        if not self.index:
            raise ValueError(f"the corpus is shorter than one block of {block + 1} tokens")

    def __len__(self) -> int:
        return len(self.index)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(len(self.index))

    def get(self, k: int) -> torch.Tensor:
        s, i = self.index[k]
        return torch.from_numpy(self.shards[s][i * self.block : i * self.block + self.block + 1].astype(np.int64))


def lm_batches(data: BlockData, blocks_per_micro: int, position: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) micro-batches forever, continuing from `position` ({"epoch", "block"}), updating it."""
    while True:
        order = data.order(position["epoch"])
        while position["block"] + blocks_per_micro <= len(order):
            ks = order[position["block"] : position["block"] + blocks_per_micro]
            position["block"] += blocks_per_micro
            x = torch.stack([data.get(int(k)) for k in ks])
            yield x[:, :-1], x[:, 1:]
        position["epoch"] += 1
        position["block"] = 0


def rank_batches(stream: Iterator, rank: int, world: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Every rank walks the same global stream and keeps every world-th micro-batch."""

    def next_batch():
        got = None
        for w in range(world):
            b = next(stream)
            if w == rank:
                got = b
        return got

    return next_batch
