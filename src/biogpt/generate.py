"""The generation engine: ids in, ids out; it never sees text.

One pre-allocated KV cache per call; prompts of different lengths are left-padded. Greedy and beam search
follow `transformers` generate() rule for rule (same logits processors in the same order, same beam
bookkeeping, length normalisation and early-stopping heuristic), so outputs are identical token for token
on the same weights. Sampling (temperature, top-k, top-p, seeded) and constrained decoding (forced prefix,
a set of allowed strings, spans of a source text) are ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from biogpt.model import BioGPT

NEG = -1.0e9  # the "impossible" score of transformers' beam search (not -inf: it is added, not assigned)


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B * num_return_sequences, T + n]: prompt (left-padded) + new tokens, pad-filled
    scores: torch.Tensor | None = None  # beam search: the length-normalised score of each returned sequence


# ---------------------------------------------------------------------------------------------------
# constraints: per row, which tokens may come next given the tokens generated so far


class Constraint:
    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """Token ids allowed next, or None for no restriction."""
        raise NotImplementedError


class ForcedPrefix(Constraint):
    """Force these tokens first (fairseq's prefix_tokens), then `then` (or nothing)."""

    def __init__(self, tokens: Sequence[int], then: Constraint | None = None):
        self.tokens, self.then = list(tokens), then

    def allowed(self, generated):
        n = len(self.tokens)
        if len(generated) < n:
            return [self.tokens[len(generated)]]
        return self.then.allowed(generated[n:]) if self.then is not None else None


class AllowedSequences(Constraint):
    """The output must be one of these token sequences, then `</s>` (e.g. yes / no / maybe)."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int = 2):
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("AllowedSequences needs non-empty sequences")
        self.trie: dict = {}
        for seq in sequences:
            node = self.trie
            for t in seq:
                node = node.setdefault(t, {})
            node[None] = True  # a complete sequence ends here
        self.eos = eos_token_id

    def allowed(self, generated):
        node = self.trie
        for t in generated:
            if t not in node:
                return [self.eos]
            node = node[t]
        nxt = [t for t in node if t is not None]
        return nxt + [self.eos] if None in node else nxt


class SourceSpans(Constraint):
    """The output must be a contiguous span of `source` (at least one token), then `</s>`."""

    def __init__(self, source: Sequence[int], eos_token_id: int = 2):
        self.source, self.eos = list(source), eos_token_id

    def allowed(self, generated):
        n, src = len(generated), self.source
        if n == 0:
            return sorted(set(src))
        nxt = {src[i + n] for i in range(len(src) - n) if src[i : i + n] == list(generated)}
        return sorted(nxt) + [self.eos]


# ---------------------------------------------------------------------------------------------------
# logits processing, in transformers' order


def _process(
    scores: torch.Tensor,
    seqs: torch.Tensor,
    new_len: int,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
    min_new_tokens: int,
    eos: int,
    constraints: list[Constraint | None] | None,
    prompt_len: int,
    pad_lens: torch.Tensor,
) -> torch.Tensor:
    """scores [N, V] float32 for rows seqs [N, L] (prompt + generated so far); pad_lens [N] left padding."""
    if repetition_penalty != 1.0:
        # every token seen so far, left padding excluded (it points at an extra column, dropped after)
        V = scores.shape[-1]
        seen_ids = seqs.masked_fill(torch.arange(seqs.shape[1], device=seqs.device)[None] < pad_lens[:, None], V)
        padded = F.pad(scores, (0, 1))
        seen = torch.gather(padded, 1, seen_ids)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        scores = padded.scatter(1, seen_ids, seen)[:, :V]
    if no_repeat_ngram_size > 0 and seqs.shape[1] + 1 >= no_repeat_ngram_size:
        scores = scores.clone()
        n = no_repeat_ngram_size
        for r, row in enumerate(seqs.tolist()):
            prefix = row[len(row) - n + 1 :] if n > 1 else []
            banned = {row[i + n - 1] for i in range(len(row) - n + 1) if row[i : i + n - 1] == prefix}
            if banned:
                scores[r, list(banned)] = -float("inf")
    if new_len < min_new_tokens:
        scores = scores.clone()
        scores[:, eos] = -float("inf")
    if constraints is not None:
        generated = seqs[:, prompt_len:].tolist()
        for r, c in enumerate(constraints):
            allowed = c.allowed(generated[r]) if c is not None else None
            if allowed is not None:
                keep = torch.full_like(scores[r], -float("inf"))
                keep[allowed] = scores[r, allowed]
                scores[r] = keep
    return scores


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, g: torch.Generator | None):
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=g).squeeze(1)


# ---------------------------------------------------------------------------------------------------


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (input_ids, attention_mask), left-padded."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (BioGPT prompts start with </s> = 2)")
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model: BioGPT,
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
    eos_token_id: int = 2,
    pad_token_id: int = 1,
    forced_tokens: Sequence[Sequence[int]] | None = None,
    constraints: Sequence[Constraint | None] | Constraint | None = None,
) -> GenerationOutput:
    """Generate up to `max_new_tokens` after each prompt. See the module docstring for what matches what."""
    if not isinstance(input_ids, torch.Tensor):
        input_ids, attention_mask = left_pad(input_ids, pad_token_id)
    dev = model.tok_emb.weight.device
    input_ids = input_ids.to(dev)
    attention_mask = attention_mask.to(dev) if attention_mask is not None else torch.ones_like(input_ids)
    B, T0 = input_ids.shape
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if T0 + max_new_tokens > model.config.max_positions:
        max_new_tokens = model.config.max_positions - T0
        if max_new_tokens < 1:
            raise ValueError(f"the prompt ({T0} tokens) fills the model's {model.config.max_positions} positions")
    if num_beams < 1 or num_return_sequences > num_beams:
        raise ValueError("need num_beams >= 1 and num_return_sequences <= num_beams")
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling is not supported: use num_beams=1 with do_sample, or do_sample=False")
    # one constraint per row (forced prefix first)
    rows: list[Constraint | None] | None = None
    if constraints is not None or forced_tokens is not None:
        base = list(constraints) if isinstance(constraints, Sequence) else [constraints] * B
        if len(base) != B:
            raise ValueError(f"{len(base)} constraints for {B} prompts")
        if forced_tokens is not None:
            if len(forced_tokens) != B:
                raise ValueError(f"{len(forced_tokens)} forced prefixes for {B} prompts")
            base = [ForcedPrefix(f, c) if len(f) else c for f, c in zip(forced_tokens, base)]
        rows = base
    opts = dict(
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        min_new_tokens=min_new_tokens,
        eos=eos_token_id,
        prompt_len=T0,
        pad_lens=(attention_mask != 0).int().argmax(1),
    )
    if num_beams == 1:
        return _greedy_or_sample(
            model, input_ids, attention_mask, max_new_tokens, rows, do_sample, temperature, top_k, top_p, seed,
            pad_token_id, opts,
        )  # fmt: skip
    return _beam_search(
        model, input_ids, attention_mask, max_new_tokens, rows, num_beams, num_return_sequences, length_penalty,
        early_stopping, pad_token_id, opts,
    )  # fmt: skip


def _greedy_or_sample(model, ids, mask, max_new, rows, do_sample, temperature, top_k, top_p, seed, pad, opts):
    B, T0 = ids.shape
    eos = opts["eos"]
    g = torch.Generator(device=ids.device).manual_seed(seed) if seed is not None else None
    cache = model.new_cache(B, T0 + max_new)
    logits = model(ids, mask, cache=cache, last_only=True)[:, -1]
    seqs = ids
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    ones = torch.ones(B, 1, dtype=torch.long, device=ids.device)
    for step in range(max_new):
        scores = _process(logits, seqs, step, constraints=rows, **opts)
        if do_sample:
            nxt = _sample(scores, temperature, top_k, top_p, g)
        else:
            nxt = scores.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        seqs = torch.cat([seqs, nxt[:, None]], 1)
        done = done | (nxt == eos)
        if bool(done.all()) or step == max_new - 1:
            break
        logits = model(nxt[:, None], ones, cache=cache, last_only=True)[:, -1]
    return GenerationOutput(seqs)


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, K, ...] indexed along dim 1 by idx [B, J] -> [B, J, ...]."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def _beam_search(model, ids, mask, max_new, rows, nb, n_return, lp, early_stopping, pad, opts):
    B, T0 = ids.shape
    eos = opts["eos"]
    dev = ids.device
    max_len = T0 + max_new
    keep = 2 * nb  # candidates per step: enough that nb survive even if nb of them end
    top_nb = torch.arange(keep, device=dev) < nb
    flat_rows = [c for c in rows for _ in range(nb)] if rows is not None else None
    beam_opts = {**opts, "pad_lens": opts["pad_lens"].repeat_interleave(nb)}

    running = torch.full((B, nb, max_len), pad, dtype=torch.long, device=dev)
    running[:, :, :T0] = ids[:, None]
    finished = running.clone()
    running_scores = torch.zeros(B, nb, device=dev)
    running_scores[:, 1:] = NEG  # only beam 0 is live at the start
    scores_fin = torch.full((B, nb), NEG, device=dev)
    is_fin = torch.zeros(B, nb, dtype=torch.bool, device=dev)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=dev)
    running_bi = torch.full((B, nb, max_new), -1, dtype=torch.long, device=dev)
    fin_bi = running_bi.clone()
    batch_offset = torch.arange(B, device=dev)[:, None] * nb

    prompt_cache = model.new_cache(B, T0)
    logits = model(ids, mask, cache=prompt_cache, last_only=True)[:, -1].repeat_interleave(nb, 0)
    cache = model.new_cache(B * nb, max_len)
    cache.load_repeated(prompt_cache, nb)
    del prompt_cache
    ones = torch.ones(B * nb, 1, dtype=torch.long, device=dev)
    cur = T0
    while True:
        log_probs = F.log_softmax(logits.float(), -1)
        flat_seqs = running[:, :, :cur].reshape(B * nb, cur)
        log_probs = _process(log_probs, flat_seqs, cur - T0, constraints=flat_rows, **beam_opts)
        V = log_probs.shape[-1]
        log_probs = (log_probs.view(B, nb, V) + running_scores[:, :, None]).view(B, nb * V)
        top_lp, top_idx = torch.topk(log_probs, keep)
        beam, tok = top_idx // V, top_idx % V
        top_seqs = _gather(running, beam)
        top_seqs[:, :, cur] = tok
        top_bi = _gather(running_bi, beam)
        top_bi[:, :, cur - T0] = beam + batch_offset
        hits = (tok == eos) | (cur + 1 >= max_len)

        # the best nb candidates that did not end keep running
        run_lp = top_lp + hits.float() * NEG
        nxt = torch.topk(run_lp, nb)[1]
        running, running_scores, running_bi = _gather(top_seqs, nxt), _gather(run_lp, nxt), _gather(top_bi, nxt)

        # candidates among the top nb that ended join the finished pool if they beat its worst member
        just = hits & top_nb[None, :]
        fin_lp = top_lp / ((cur + 1 - T0) ** lp)
        fin_lp = fin_lp + (is_fin.all(-1, keepdim=True) & (early_stopping is True)).float() * NEG
        fin_lp = fin_lp + (~can_improve).float() * NEG
        fin_lp = fin_lp + (~just) * NEG
        merged = torch.topk(torch.cat([scores_fin, fin_lp], 1), nb)[1]
        finished = _gather(torch.cat([finished, top_seqs], 1), merged)
        scores_fin = _gather(torch.cat([scores_fin, fin_lp], 1), merged)
        fin_bi = _gather(torch.cat([fin_bi, top_bi], 1), merged)
        is_fin = _gather(torch.cat([is_fin, just], 1), merged)

        cache.reorder(running_bi[:, :, cur - T0].reshape(-1))
        cur += 1
        # can the running beams still beat the worst finished one?
        best_len = (max_len - T0) if (early_stopping == "never" and lp > 0) else (cur - T0)
        best_running = running_scores[:, :1] / (best_len**lp)
        worst = torch.where(is_fin, scores_fin.min(1, keepdim=True)[0], NEG)
        can_improve = can_improve & (best_running > worst).any(-1, keepdim=True)
        go_on = bool(can_improve.any()) and not (bool(is_fin.all()) and early_stopping is True)
        if not go_on or bool(hits.all()):
            break
        logits = model(running[:, :, cur - 1].reshape(-1, 1), ones, cache=cache, last_only=True)[:, -1]

    seqs = finished[:, :n_return].reshape(B * n_return, max_len)
    scores = scores_fin[:, :n_return].reshape(-1)
    gen_len = int((fin_bi[:, :n_return] >= 0).sum(-1).max())
    return GenerationOutput(seqs[:, : T0 + gen_len], scores)
