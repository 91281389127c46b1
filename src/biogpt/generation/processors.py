"""Logits processing in transformers' order (repetition penalty, no-repeat n-grams, min length, constraints)
and sampling (temperature, top-k, top-p).

Never NaN: a row whose every token got masked (a minimum length that bans the end token where a constraint
allows nothing else) keeps its end token; a temperature below MIN_TEMPERATURE samples greedily; a row whose
probabilities are not finite (logits / temperature overflowed, a penalty pushed a logit to inf) takes its
most likely token instead of reaching `torch.multinomial`, which would raise for the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from biogpt.generation.constraints import Constraint


def process(
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
        for r, row in enumerate(seqs.tolist()):
            banned = banned_ngrams(row, no_repeat_ngram_size)
            if banned:
                scores[r, banned] = -float("inf")
    if new_len < min_new_tokens:
        scores = scores.clone()
        scores[:, eos] = -float("inf")
    if constraints is not None:
        scores = scores.clone()  # never write into the caller's logits: its log-probabilities are the model's own
        generated = seqs[:, prompt_len:].tolist()
        for r, c in enumerate(constraints):
            allowed = c.allowed(generated[r]) if c is not None else None
            if allowed is not None:
                keep = torch.full_like(scores[r], -float("inf"))
                keep[allowed] = scores[r, allowed]
                scores[r] = keep
    return keep_end_token(scores, eos)


def banned_ngrams(row: list[int], n: int) -> list[int]:
    """The ids that would repeat an n-gram of `row` as its next token: those that followed an earlier occurrence
    of its last n - 1 tokens. transformers' NoRepeatNGramLogitsProcessor and fairseq's NGramRepeatBlock ban the
    same ids (fairseq also walks the unfilled, padded end of its token buffer, which only ever bans <pad>, a
    token its search has banned already)."""
    if n <= 0 or len(row) + 1 < n:
        return []
    key = tuple(row[len(row) - n + 1 :]) if n > 1 else ()
    return sorted({row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == key})


def keep_end_token(scores: torch.Tensor, eos: int) -> torch.Tensor:
    """scores [N, V] with the end token's score restored (0) in rows where no token is allowed at all."""
    dead = ~(scores > -float("inf")).any(-1)  # [N]; NaN rows count as dead too
    if bool(dead.any()):
        scores = scores.clone()
        scores[dead] = -float("inf")
        scores[dead, eos] = 0.0
    return scores


MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (as vLLM): logits / temperature would overflow


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, g: torch.Generator | None):
    """One token per row of logits [N, V]; a row whose probabilities are not finite gets its argmax."""
    logits = torch.nan_to_num(logits, nan=-float("inf"))
    best = logits.argmax(-1)  # [N]
    if temperature < MIN_TEMPERATURE:
        return best
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
    probs = logits.softmax(-1)  # [N, V]
    bad = ~torch.isfinite(probs).all(-1) | ~(probs.sum(-1) > 0)  # [N]
    if bool(bad.any()):
        probs = torch.where(bad[:, None], F.one_hot(best, probs.shape[-1]).to(probs.dtype), probs)
    return torch.multinomial(probs, 1, generator=g).squeeze(1)
