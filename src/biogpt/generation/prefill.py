"""Running left-padded prompts into an empty KV cache without computing the padding.

A batch of prompts of different lengths is left-padded to the longest; a padded forward spends every layer's
work on the padding too (a third of it on 16 BC5CDR abstracts in file order). On the CPU, when the padding is
more than a tenth of the batch, each prompt runs alone on its real tokens and its keys and values are placed
right-aligned into the batch's cache: the same slots, positions and validity a padded forward leaves, so
decoding goes on exactly as after one. (On a GPU the padded batch stays one forward: that trade-off was not
measured.)
"""

from __future__ import annotations

import torch
from torch import nn

from biogpt.models.cache import KVCache

MIN_PADDING = 0.1  # below this share of padding one padded forward is cheaper than a forward per prompt


def prefill(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run prompts ids [B, T] (left-padded; mask [B, T], 1 for real tokens) into the empty `cache`; return the
    logits at each prompt's last token, [B, V]."""
    B, T = ids.shape
    lens = mask.ne(0).sum(1)  # [B]
    left_padded = torch.equal(mask.ne(0), torch.arange(T, device=ids.device)[None, :] >= (T - lens)[:, None])
    if (ids.device.type != "cpu" or B == 1 or not left_padded or int(lens.min()) == 0
            or int(lens.sum()) >= (1 - MIN_PADDING) * B * T or cache.length):  # fmt: skip
        return model(ids, mask, cache=cache, last_only=True)[:, -1]
    cache.length = T
    out = []
    for i, n in enumerate(lens.tolist()):
        row = model.new_cache(1, n)
        out.append(model(ids[i : i + 1, T - n :], None, cache=row, last_only=True)[:, -1])  # [1, V]
        cache.put_row(i, row)
    return torch.cat(out, 0)
