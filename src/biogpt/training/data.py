"""Training data streams, deterministic and resumable: fixed-length blocks from token shards (pre-training)
and length-sorted padded batches of (source, target) pairs (fine-tuning).

A stream yields *lazy* micro-batches: each entry advances the stream's position and is a function that builds
the batch. All ranks walk the same global sequence of entries and `rank_batches` deals them out round-robin;
a rank calls only its own entries, so it never reads, stacks or pads another rank's batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import torch

from biogpt.errors import CorpusError
from biogpt.models.biogpt import PAD_ID

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs [B, T], targets [B, T]) of int64 ids
LazyBatch = Callable[[], Batch]


class BlockData:
    """Fixed-length blocks from token shards; a deterministic order per epoch (seeded permutation).

    Block i is tokens[i*L : i*L + L + 1] of one shard: inputs are its first L tokens, targets its last L.
    """

    def __init__(self, shards: list[np.ndarray], block: int, seed: int):
        self.shards, self.block, self.seed = shards, block, seed
        self.index = [(s, i) for s, arr in enumerate(shards) for i in range((len(arr) - 1) // block)]
        if not self.index:
            raise CorpusError(f"the corpus is shorter than one block of {block + 1} tokens: use a smaller --block "
                              "or a larger corpus")  # fmt: skip

    def __len__(self) -> int:
        return len(self.index)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(len(self.index))

    def get(self, k: int) -> torch.Tensor:
        """Block k as int64 [L + 1]."""
        s, i = self.index[k]
        return torch.from_numpy(self.shards[s][i * self.block : i * self.block + self.block + 1].astype(np.int64))

    def batch(self, ks: Sequence[int]) -> Batch:
        """Blocks ks stacked [B, L + 1], split into inputs [B, L] and targets [B, L] (shifted by one)."""
        x = torch.stack([self.get(int(k)) for k in ks])
        return x[:, :-1], x[:, 1:]


def lm_batches(data: BlockData, blocks_per_micro: int, position: dict) -> Iterator[LazyBatch]:
    """Lazy micro-batches of `blocks_per_micro` blocks forever, continuing from `position` ({"epoch", "block"})
    and updating it; an epoch's last blocks that do not fill a micro-batch are skipped."""
    while True:
        order = data.order(position["epoch"])
        while position["block"] + blocks_per_micro <= len(order):
            ks = order[position["block"] : position["block"] + blocks_per_micro]
            position["block"] += blocks_per_micro
            yield partial(data.batch, ks)
        position["epoch"] += 1
        position["block"] = 0


def batch_by_size(lengths: Sequence[int], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """fairseq batch_by_size for one epoch: shuffle, stable sort by length, fill batches while
    longest x count <= max_tokens, then shuffle the batches. Returns lists of example indices."""
    perm = np.random.default_rng(seed + epoch).permutation(len(lengths))
    perm = sorted(perm, key=lambda i: lengths[i])
    batches, cur, longest = [], [], 0
    for i in perm:
        longest2 = max(longest, lengths[i])
        if cur and longest2 * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, longest2 = [], lengths[i]
        cur.append(int(i))
        longest = longest2
    if cur:
        batches.append(cur)
    return [batches[j] for j in np.random.default_rng(seed + epoch).permutation(len(batches))]


def pad_batch(pairs: Sequence[tuple[list[int], list[int]]], idx: Sequence[int]) -> Batch:
    """Examples idx right-padded with PAD_ID to the longest: inputs [B, T] and targets [B, T]."""
    T = max(len(pairs[i][0]) for i in idx)
    x = torch.full((len(idx), T), PAD_ID, dtype=torch.long)
    y = torch.full((len(idx), T), PAD_ID, dtype=torch.long)
    for r, i in enumerate(idx):
        x[r, : len(pairs[i][0])] = torch.tensor(pairs[i][0])
        y[r, : len(pairs[i][1])] = torch.tensor(pairs[i][1])
    return x, y


def pair_batches(
    pairs: Sequence[tuple[list[int], list[int]]], max_tokens: int, seed: int, position: dict
) -> Iterator[LazyBatch]:
    """Lazy padded micro-batches of (input ids, target ids) pairs forever, `batch_by_size` per epoch,
    continuing from `position` ({"epoch", "block"}: block counts batches) and updating it."""
    lengths = [len(x) for x, _ in pairs]
    while True:
        batches = batch_by_size(lengths, max_tokens, seed, position["epoch"])
        while position["block"] < len(batches):
            idx = batches[position["block"]]
            position["block"] += 1
            yield partial(pad_batch, pairs, idx)
        position["epoch"] += 1
        position["block"] = 0


def rank_batches(stream: Iterator[LazyBatch], rank: int, world: int) -> Callable[[], Batch]:
    """`next_batch()` for one rank: every rank advances the global stream by `world` entries and builds only
    entry `rank` of them, so the ranks' batches are disjoint and together are the one-process stream."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")

    def next_batch() -> Batch:
        mine = None
        for w in range(world):
            entry = next(stream)
            if w == rank:
                mine = entry
        return mine()

    return next_batch
