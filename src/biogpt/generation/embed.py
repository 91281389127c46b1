"""Text embeddings from the decoder-only families (BioGPT, the GPT-2 family): pooled final hidden states.

The hidden states are those transformers calls `last_hidden_state`: after the final LayerNorm, before the
output head. Pooling over one input's tokens:

- "mean" (default): the mean over every token of the input, BioGPT's leading `</s>` included (it is part of
  the input `Tokenizer.encode` gives, as the model saw it in training);
- "last": the last token's state, the one position a causal model has read the whole input from.

`normalize` (default on) divides each vector by its L2 norm, so a dot product is the cosine similarity.

Batching: inputs are sorted by length and taken `batch_size` at a time. A batch with little padding runs as
one left-padded forward (positions come from the mask, so a padded row equals the row alone); one with more
padding than `MIN_PADDING` runs each input alone on its real tokens (the unpadded prefill's rule), so no
layer computes padding. Shapes: N inputs, B batch, T tokens, d model width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biogpt.errors import GenerationError
from biogpt.generation.prefill import MIN_PADDING

POOLINGS = ("mean", "last")


def check_inputs(model: nn.Module, inputs: list[list[int]]) -> None:
    """Every input non-empty, within the vocabulary and the model's positions: a GenerationError naming the first
    that is not."""
    limit, V = model.config.max_positions, model.config.vocab_size
    for i, ids in enumerate(inputs):
        if not ids:
            raise GenerationError(f"input {i} has no tokens")
        if not all(0 <= t < V for t in ids):
            raise GenerationError(f"input {i} holds a token id outside the vocabulary (0..{V - 1})")
        if len(ids) > limit:
            raise GenerationError(f"input {i} has {len(ids)} tokens; the model reads at most {limit}")


@torch.inference_mode()
def embed(
    model: nn.Module,
    inputs: list[list[int]],
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 16,
) -> torch.Tensor:
    """One float32 vector per input (token ids, as the tokenizer encodes them): [N, d], in input order."""
    if pooling not in POOLINGS:
        raise GenerationError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise GenerationError(f"batch_size must be >= 1, got {batch_size}")
    check_inputs(model, inputs)
    out = torch.empty(len(inputs), model.config.d_model)  # [N, d]
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for k in range(0, len(order), batch_size):
        rows = order[k : k + batch_size]
        out[rows] = _pooled_batch(model, [inputs[i] for i in rows], pooling)
    return F.normalize(out, dim=-1) if normalize else out


def _pooled_batch(model: nn.Module, batch: list[list[int]], pooling: str) -> torch.Tensor:
    """[B, d] pooled states for one length-sorted batch: one padded forward, or one forward per input."""
    device = model.tok_emb.weight.device
    lens = [len(x) for x in batch]
    T = max(lens)
    if device.type == "cpu" and len(batch) > 1 and sum(lens) < (1 - MIN_PADDING) * len(batch) * T:
        return torch.cat([_pooled_batch(model, [x], pooling) for x in batch])
    ids = torch.zeros(len(batch), T, dtype=torch.long)  # [B, T], left-padded
    mask = torch.zeros(len(batch), T, dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, T - len(x) :] = torch.tensor(x)
        mask[i, T - len(x) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    padded = len(set(lens)) > 1
    h = model(ids, mask if padded else None, return_hidden=True).float()  # [B, T, d]
    if pooling == "last":
        return h[:, -1].cpu()  # left padding: every row's last token is the last column
    m = mask.unsqueeze(-1).to(h.dtype)  # [B, T, 1]
    return ((h * m).sum(1) / m.sum(1)).cpu()
