"""The generation engine: ids in, ids out; it never sees text.

One pre-allocated KV cache per call; prompts of different lengths are left-padded (and run without computing
the padding where it is a large share: generation/prefill.py). Greedy and beam search
follow `transformers` generate() rule for rule (same logits processors in the same order, same beam
bookkeeping, length normalisation and early-stopping heuristic), so outputs are identical token for token
on the same weights. Sampling (temperature, top-k, top-p, seeded) and constrained decoding (forced prefix,
a set of allowed strings, spans of a source text) are ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from biogpt.errors import GenerationError
from biogpt.generation.beam import beam_search
from biogpt.generation.constraints import Constraint, ForcedPrefix, bind_eos
from biogpt.generation.decode import Sampling, decode_steps, special_ids


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B * num_return_sequences, T + n]: prompt (left-padded) + new tokens, pad-filled
    scores: torch.Tensor | None = None  # beam search: the length-normalised score of each returned sequence
    # with output_logprobs: [B * num_return_sequences, n] the model's own log-probability of each new token
    # (log-softmax of its logits, before any penalty or constraint), 0 where the row had already ended
    logprobs: torch.Tensor | None = None


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (input_ids, attention_mask), left-padded."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("every prompt needs at least one token (BioGPT's start with </s>)")
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 20,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    forced_tokens: Sequence[Sequence[int]] | None = None,
    constraints: Sequence[Constraint | None] | Constraint | None = None,
    output_logprobs: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationOutput:
    """Generate up to `max_new_tokens` after each prompt. See the module docstring for what matches what.
    `should_stop()`, asked before each beam-search step, ends the search with GenerationCancelled: a server's
    beam search, which runs whole between two decoding steps, stops soon after its client goes away.
    eos_token_id / pad_token_id: the model config's where None."""
    eos_token_id, pad_token_id = special_ids(model, eos_token_id, pad_token_id)
    if not isinstance(input_ids, torch.Tensor):
        input_ids, attention_mask = left_pad(input_ids, pad_token_id)
    dev = next(model.parameters()).device
    input_ids = input_ids.to(dev)
    attention_mask = attention_mask.to(dev) if attention_mask is not None else torch.ones_like(input_ids)
    B, T0 = input_ids.shape
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if T0 + max_new_tokens > model.config.max_positions:
        max_new_tokens = model.config.max_positions - T0
        if max_new_tokens < 1:
            raise GenerationError(
                f"the prompt ({T0} tokens) fills the model's {model.config.max_positions} positions: no room for new "
                "tokens; shorten the prompt"
            )
    _check_search(num_beams, num_return_sequences, do_sample, temperature, top_k, top_p)
    rows = _row_constraints(B, constraints, forced_tokens, eos_token_id)
    opts = dict(
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        min_new_tokens=min_new_tokens,
        eos=eos_token_id,
        prompt_len=T0,
        pad_lens=(attention_mask != 0).int().argmax(1),
    )
    if num_beams == 1:
        g = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
        how = Sampling(do_sample, temperature, top_k, top_p, g)
        return _greedy_or_sample(model, input_ids, attention_mask, max_new_tokens, rows, how, pad_token_id, opts,
                                 output_logprobs)  # fmt: skip
    seqs, scores = beam_search(
        model, input_ids, attention_mask, max_new_tokens, rows, num_beams, num_return_sequences, length_penalty,
        early_stopping, pad_token_id, opts, should_stop,
    )  # fmt: skip
    logprobs = None
    if output_logprobs:
        prompt_mask = attention_mask.repeat_interleave(num_return_sequences, 0)
        logprobs = token_logprobs(model, seqs, prompt_mask, eos_token_id, pad_token_id)
    return GenerationOutput(seqs, scores, logprobs)


def _check_search(num_beams: int, n_return: int, do_sample: bool, temperature: float, top_k: int,
                  top_p: float) -> None:  # fmt: skip
    """GenerationError for a search or sampling setting no decoding can honour."""
    if num_beams < 1 or n_return > num_beams:
        raise GenerationError("need num_beams >= 1 and num_return_sequences <= num_beams")
    if do_sample and (not temperature > 0 or not 0 < top_p <= 1 or top_k < 0):
        raise GenerationError(
            f"sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0 (got {temperature}, {top_p}, {top_k}); "
            "for deterministic output use greedy decoding (do_sample=False)"
        )
    if num_beams > 1 and do_sample:
        raise GenerationError("beam sampling is not supported: use num_beams=1 with do_sample, or do_sample=False")


def _row_constraints(B: int, constraints, forced_tokens, eos: int) -> list[Constraint | None] | None:
    """One constraint per row (a forced prefix first, then the row's constraint), ending with `eos` where built
    without an end token; None where there is none at all."""
    if constraints is None and forced_tokens is None:
        return None
    base = list(constraints) if isinstance(constraints, Sequence) else [constraints] * B
    if len(base) != B:
        raise GenerationError(f"{len(base)} constraints for {B} prompts")
    if forced_tokens is not None:
        if len(forced_tokens) != B:
            raise GenerationError(f"{len(forced_tokens)} forced prefixes for {B} prompts")
        base = [ForcedPrefix(f, c) if len(f) else c for f, c in zip(forced_tokens, base)]
    return _with_eos(base, eos)


def _with_eos(rows: list[Constraint | None], eos: int) -> list[Constraint | None]:
    """Each row's constraint ending with `eos` where it was built without an end token; a constraint shared by
    rows stays shared."""
    bound = {id(c): bind_eos(c, eos) for c in rows if c is not None}
    return [bound[id(c)] if c is not None else None for c in rows]


@torch.inference_mode()
def token_logprobs(model, seqs: torch.Tensor, prompt_mask: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """log p(token | everything before it) of the new tokens of seqs [N, T0 + n] (prompt_mask [N, T0]), in one
    forward pass; 0 after a row's first </s>."""
    T0 = prompt_mask.shape[1]
    new = seqs[:, T0:]
    ended = torch.cumsum((new == eos).long(), 1) - (new == eos).long() > 0  # after the first </s>
    mask = torch.cat([prompt_mask, (~ended).long()], 1)
    logits = model(seqs, mask)[:, T0 - 1 : -1].float()  # [N, n, V]: the logits that chose each new token
    lp = torch.log_softmax(logits, -1).gather(2, new[:, :, None]).squeeze(2)
    return lp.masked_fill(ended | (new == pad), 0.0)


def _greedy_or_sample(model, ids, mask, max_new, rows, how, pad, opts, want_lp) -> GenerationOutput:
    """Offline greedy / sampled decoding: the steps of `decode_steps`, gathered into one output."""
    step, lps = None, []
    for step in decode_steps(model, ids, mask, max_new, opts, constraints=rows, how=how, pad_token_id=pad,
                             output_logprobs=want_lp):  # fmt: skip
        lps.append(step.logprobs)
    return GenerationOutput(step.sequences, logprobs=torch.stack(lps, 1) if want_lp else None)
