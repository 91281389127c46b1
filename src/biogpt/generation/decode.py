"""The one greedy / sampling loop: prompts in, one `Step` per decoded position out.

`decode_steps` prefills the prompts into one pre-allocated KV cache, then per step processes the logits
(generation/processors.py, transformers' order), chooses a token per row (argmax, or seeded sampling) and runs
the model one position further (through the compiled static step where compile_decode set one). Offline
`generate` consumes it (generation/engine.py); the continuous-batching scheduler makes the same choice per
sequence with `choose` and the same model step (`model_step`, or the compiled step's `rows`).

A Step holds tensors the loop builds anyway: reading one costs nothing unless its consumer asks (`finished`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from biogpt.generation.constraints import Constraint
from biogpt.generation.prefill import prefill
from biogpt.generation.processors import process, sample


@dataclass(frozen=True)
class Sampling:
    """How a token is chosen from processed scores: greedy (argmax) unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    generator: torch.Generator | None = None


GREEDY = Sampling()


def choose(scores: torch.Tensor, how: Sampling) -> torch.Tensor:
    """The next token of each row of scores [N, V] (processed): [N]."""
    if how.do_sample:
        return sample(scores, how.temperature, how.top_k, how.top_p, how.generator)
    return scores.argmax(-1)


@dataclass
class Step:
    """What one decoding step produced for a batch of B rows."""

    tokens: torch.Tensor  # [B] the new token of each row (pad where the row had ended before)
    logprobs: torch.Tensor | None  # [B] log p(token) under the model's own logits, 0 where ended before
    done: torch.Tensor  # [B] bool: the row has ended, at this step or before
    before: torch.Tensor  # [B] bool: the row had ended before this step
    sequences: torch.Tensor  # [B, T0 + steps so far]: prompt (left-padded) + every token up to this one

    @property
    def finished(self) -> torch.Tensor:
        """[B] bool: the rows whose end token came at this step."""
        return self.done & ~self.before


def decode_steps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    opts: dict,
    *,
    constraints: list[Constraint | None] | None = None,
    how: Sampling = GREEDY,
    pad_token_id: int,
    output_logprobs: bool = False,
) -> Iterator[Step]:
    """Decode up to max_new_tokens after input_ids [B, T0] (left-padded, attention_mask [B, T0]); `opts`: the
    keyword arguments of processors.process (its `eos` ends a row). Stops after the step where every row ended."""
    B, T0 = input_ids.shape
    eos = opts["eos"]
    cache = model.new_cache(B, T0 + max_new_tokens)
    logits = prefill(model, input_ids, attention_mask, cache)  # [B, V]
    seqs = input_ids
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    ones = torch.ones(B, 1, dtype=torch.long, device=input_ids.device)
    for step in range(max_new_tokens):
        scores = process(logits, seqs, step, constraints=constraints, **opts)
        nxt = choose(scores, how)  # [B]
        lp = None
        if output_logprobs:
            lp = torch.log_softmax(logits.float(), -1).gather(1, nxt[:, None]).squeeze(1).masked_fill(done, 0.0)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        seqs = torch.cat([seqs, nxt[:, None]], 1)
        before, done = done, done | (nxt == eos)
        yield Step(nxt, lp, done, before, seqs)
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        logits = model_step(model, nxt[:, None], ones, cache)


def special_ids(model: nn.Module, eos: int | None, pad: int | None) -> tuple[int, int]:
    """(end token, padding token): the caller's where given, else the model's config's (BioGPT and BiomedGPT: 2
    and 1; GPT-2: <|endoftext|> for both)."""
    cfg = model.config
    eos = eos if eos is not None else getattr(cfg, "eos_token_id", 2)
    return eos, pad if pad is not None else getattr(cfg, "pad_token_id", 1)


def model_step(model: nn.Module, ids: torch.Tensor, ones: torch.Tensor, cache) -> torch.Tensor:
    """One decoding step, ids [B, 1] -> logits [B, V]: through the compiled static step where compile_decode set
    one (generation/compiled.py), else the model's forward."""
    compiled = getattr(model, "compiled_step", None)
    if compiled is not None:
        return compiled(ids, cache)
    return model(ids, ones, cache=cache, last_only=True)[:, -1]
