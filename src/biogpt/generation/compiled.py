"""The decoding step captured once: a static KV cache and `torch.compile` (CUDA graphs on a GPU).

A decoding step of a batch of rows is a few hundred small kernels; on a GPU launching them from Python takes
longer than running them, so the step is compiled once with static shapes (`model.decode_step`: attention over
the whole pre-allocated cache with a mask, the slot and positions as tensors) and, on CUDA, replayed as a CUDA
graph (`mode="reduce-overhead"`). The engine uses it for greedy decoding and sampling, and the
continuous-batching scheduler for its decoding steps, where `compile_decode` was called; everything else
(prefill, beam search, constraints, logits processing) is unchanged, so the tokens are the eager path's
(tests/test_compiled.py checks it).

It runs the plain fp32 and bf16 forms; the CPU int8 and prepacked bf16 forms call native kernels that a graph
cannot hold, and are already fused where it pays.
"""

from __future__ import annotations

import torch
from torch import nn

from biogpt.errors import GenerationError
from biogpt.models.cache import KVCache


class CompiledDecoder:
    """`model.decode_step` compiled once per batch size; call it as step(ids [B, 1], cache) -> logits [B, V]."""

    def __init__(self, model: nn.Module, backend: str | None = None, mode: str | None = None):
        self.model = model
        if backend == "eager":  # the static step without compiling it (the reference for the compiled one)
            self.fn = model.decode_step
            return
        cuda = model.tok_emb.weight.device.type == "cuda"
        mode = mode or ("reduce-overhead" if cuda and (backend or "inductor") == "inductor" else None)
        self.fn = torch.compile(model.decode_step, backend=backend or "inductor", mode=mode, fullgraph=True,
                                dynamic=False)  # fmt: skip

    def __call__(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The logits [B, V] after the new tokens ids [B, 1]; the cache gains one slot."""
        if cache.length >= cache.max_len:
            raise GenerationError(f"cache holds {cache.max_len} tokens; {cache.length + 1} needed")
        if not getattr(cache, "static_ready", False):  # once per cache: finite zeros past the prompt
            cache.zero_unfilled()
            _mark_static(cache)
        slot = torch.tensor([cache.length], device=ids.device)
        logits = self.fn(ids, cache.k, cache.v, cache.valid, cache.next_pos, slot)
        cache.length += 1
        return logits


    def rows(self, ids: torch.Tensor, cache: KVCache, n: int) -> torch.Tensor:
        """The continuous-batching scheduler's step: rows [0, n) of `cache` (all sharing its length) take one
        token each, ids [n, 1] -> logits [n, V]. It runs the next power of two of rows (at most the cache's), so
        that a handful of shapes are compiled whatever the batch; the spare rows are free rows and compute on
        zeros (their results are dropped, and a row is rewritten when a sequence takes it)."""
        rows = cache.k.shape[1]
        b = min(1 << (n - 1).bit_length(), rows)
        if not getattr(cache, "static_ready", False):  # finite numbers wherever a step may read with weight 0
            for buf in (cache.k, cache.v):
                buf[:, n:].zero_()
                buf[:, :n, :, cache.length :].zero_()
            _mark_static(cache)
        if cache.length >= cache.max_len:
            raise GenerationError(f"cache holds {cache.max_len} tokens; {cache.length + 1} needed")
        view = cache.rows(b)
        full = torch.zeros(b, 1, dtype=ids.dtype, device=ids.device)
        full[:n] = ids
        slot = torch.tensor([cache.length], device=ids.device)
        logits = self.fn(full, view.k, view.v, view.valid, view.next_pos, slot)
        cache.length += 1
        return logits[:n]


def _mark_static(cache: KVCache) -> None:
    """The cache is ready for the static step; on CUDA its buffers are marked as staying where they are, so a
    captured graph reads and writes them in place instead of copying them in and out."""
    if cache.k.device.type == "cuda":
        for t in (cache.k, cache.v, cache.valid, cache.next_pos):
            torch._dynamo.mark_static_address(t)
    cache.static_ready = True


def compile_decode(model: nn.Module, backend: str | None = None, mode: str | None = None) -> nn.Module:
    """Make `generate` decode greedy and sampled rows of `model` through one compiled static-shape step (in
    place; returns the model). backend/mode: torch.compile's (default inductor, with CUDA graphs on CUDA);
    "eager" runs the static step uncompiled. Raises GenerationError for a model in a CPU kernel form."""
    if model.head is not None or not isinstance(model.blocks[0].qkv, nn.Linear):
        raise GenerationError(
            f"compiled decoding runs the plain fp32 and bf16 forms, not {type(model.blocks[0].qkv).__name__}"
        )
    model.compiled_step = CompiledDecoder(model, backend, mode)
    return model
