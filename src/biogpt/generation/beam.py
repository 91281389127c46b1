"""Beam search, rule for rule as transformers' generate(): 2 x num_beams candidates per step, length-normalised
finished hypotheses, the same early-stopping heuristic (True, False or "never").

It shares the logits processors with greedy decoding (generation/processors.py) and the length normalisation
with the encoder-decoder search (generation/seq2seq.py), but not decode.py's step loop: a step here ranks
num_beams x V continuations per input and reorders the KV cache to the surviving beams, where decode_steps
chooses one token per row and keeps each row in its cache slot. Its bookkeeping of finished hypotheses is
transformers' (a pool of num_beams per input, vectorised, with the early-stopping heuristic); fairseq's, in
seq2seq.py, keeps the first beam_size hypotheses to end and drops an input from the batch once it has them, so
the two are kept apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from biogpt.errors import GenerationCancelled
from biogpt.generation.prefill import prefill
from biogpt.generation.processors import process

NEG = -1.0e9  # the "impossible" score of transformers' beam search (not -inf: it is added, not assigned)


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, K, ...] indexed along dim 1 by idx [B, J] -> [B, J, ...]."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def length_normalised(scores: torch.Tensor, length: int, penalty: float) -> torch.Tensor:
    """A hypothesis' summed log-probability / length ** penalty, length counting its new tokens with the end token:
    transformers' BeamHypotheses and fairseq's SequenceGenerator normalise alike."""
    return scores / (length**penalty)


def beam_search(model, ids, mask, max_new, rows, nb, n_return, lp, early_stopping, pad, opts, should_stop=None):
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
    logits = prefill(model, ids, mask, prompt_cache).repeat_interleave(nb, 0)
    cache = model.new_cache(B * nb, max_len)
    cache.load_repeated(prompt_cache, nb)
    del prompt_cache
    ones = torch.ones(B * nb, 1, dtype=torch.long, device=dev)
    cur = T0
    while True:
        if should_stop is not None and should_stop():
            raise GenerationCancelled("the beam search was cancelled")
        log_probs = F.log_softmax(logits.float(), -1)
        flat_seqs = running[:, :, :cur].reshape(B * nb, cur)
        log_probs = process(log_probs, flat_seqs, cur - T0, constraints=flat_rows, **beam_opts)
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
        fin_lp = length_normalised(top_lp, cur + 1 - T0, lp)
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
        best_running = length_normalised(running_scores[:, :1], best_len, lp)
        worst = torch.where(is_fin, scores_fin.min(1, keepdim=True)[0], NEG)
        can_improve = can_improve & (best_running > worst).any(-1, keepdim=True)
        go_on = bool(can_improve.any()) and not (bool(is_fin.all()) and early_stopping is True)
        if not go_on or bool(hits.all()):
            break
        logits = model(running[:, :, cur - 1].reshape(-1, 1), ones, cache=cache, last_only=True)[:, -1]

    seqs = finished[:, :n_return].reshape(B * n_return, max_len)
    scores = scores_fin[:, :n_return].reshape(-1)
    gen_len = int((fin_bi[:, :n_return] >= 0).sum(-1).max())
    return seqs[:, : T0 + gen_len], scores
