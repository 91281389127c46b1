"""Beam search for the encoder-decoder (BiomedGPT/OFA), as the original's fairseq `SequenceGenerator`, with a
decoder cache; closed answer sets through a token trie; exact "all candidates" ranking.

Search (per input, `beam_size` hypotheses): at each step the 2 x beam best (hypothesis, token) pairs by cumulative
log-probability; pairs ending in </s> among the first `beam_size` are finished (score / length ** len_penalty when
normalising), the rest continue; an input is done when `beam_size` hypotheses finished, or at `max_len` =
max_len_a * source length + max_len_b, where only </s> may follow. <pad> is never chosen, <unk> pays
`unk_penalty`, </s> is banned before `min_len`, repeated n-grams of `no_repeat_ngram_size` are banned, and forced
decoder prefix tokens (`prefix_tokens`) take their own log-probability while every other token gets less.

Constraints, exactly as BiomedGPT's generator applies them:
- trie, fine-tuned mode: on the logits (after the temperature) before the log-softmax, so probability renormalises
  over the allowed ids; the trie is walked from <s> over the tokens after the decoder prefix; steps inside the
  prefix are unconstrained.
- trie, zero-shot mode (`zero_shot=True`): on the log-probabilities after the log-softmax, walking the whole
  decoder input (no renormalisation).
- `constraint_range=(start, end)`: ids 4..start-1 and end.. are banned (the same two placements).
A trie walk that leaves the trie allows only </s>.

Shared with the decoder-only search: the trie (constraints.TokenTrie), n-gram blocking (processors.banned_ngrams:
fairseq's and transformers' rules ban the same ids) and length normalisation (beam.length_normalised). The
search's own loop stays: it decodes through the encoder-decoder's cache, reorders it and the encoder output to the
surviving beams, and finalises hypotheses by fairseq's rules (the first beam_size to end, inputs leave the batch
when done), which differ from transformers' (beam.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from biogpt import jsonfile
from biogpt.errors import GenerationError, InputError
from biogpt.generation.beam import length_normalised
from biogpt.generation.constraints import TokenTrie
from biogpt.generation.processors import banned_ngrams
from biogpt.models.ofa import BOS_ID, EOS_ID, OFA, PAD_ID, UNK_ID, EncoderOut

# --- the answer trie ------------------------------------------------------------------------------------


class AnswerTrie:
    """Token trie over closed-set answers, each inserted as [<s>] + ids + [</s>] (BiomedGPT's utils/trie.py). The
    trie is constraints.TokenTrie; unlike AllowedSequences, <s> and </s> are tokens of it, so nothing at all may
    follow an answer's </s> (BiomedGPT's rule, which its search relies on for beams that already ended)."""

    def __init__(self, sequences: Iterable[Sequence[int]], bos: int = BOS_ID, eos: int = EOS_ID):
        self.bos, self.eos = bos, eos
        self.sequences = [list(s) for s in sequences]
        self.tokens = TokenTrie([[bos, *seq, eos] for seq in self.sequences])
        self.root: dict = self.tokens.root

    @classmethod
    def from_answers(cls, answers: Iterable[str], encode, bos: int = BOS_ID, eos: int = EOS_ID) -> AnswerTrie:
        """Answers as text; each is encoded with a leading space, as BiomedGPT builds its trie."""
        return cls([encode(" " + a) for a in answers], bos, eos)

    @property
    def longest(self) -> int:
        """Tokens in the longest answer (without <s> and </s>): a search must be allowed this many steps, or that
        answer can never finish."""
        return max((len(s) for s in self.sequences), default=0)

    def next_ids(self, prefix: Sequence[int]) -> list[int]:
        """Ids allowed after `prefix` (which starts with <s>); [</s>] once the prefix leaves the trie."""
        node = self.tokens.walk(prefix)
        return [self.eos] if node is None else list(node)

    def masks(self, seq: Sequence[int], vocab_size: int) -> torch.Tensor:
        """[len(seq) + 1, V] allowed ids before each token of `seq` and before its </s>."""
        out = torch.zeros(len(seq) + 1, vocab_size, dtype=torch.bool)
        for i in range(len(seq) + 1):
            out[i, self.next_ids([self.bos, *seq[:i]])] = True
        return out


def load_answer_set(path: str | Path) -> list[str]:
    """The answers of a `trainval_ans2label` / `class2label` JSON map (answer -> label), in label order."""
    p = Path(path)
    try:
        data = jsonfile.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not JSON ({e}); an answer set is a JSON object of answer -> label") from None
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) and k.strip() for k in data):
        raise InputError(f"{p}: an answer set is a non-empty JSON object of answer text -> label")
    if not all(isinstance(v, int | str) and not isinstance(v, bool) for v in data.values()):
        raise InputError(f"{p}: labels must be integers (or their text); got {type(next(iter(data.values())))}")
    try:
        return [a for a, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
    except ValueError:
        raise InputError(f"{p}: a label is not an integer") from None


def right_pad(seqs: Sequence[Sequence[int]], pad: int = PAD_ID) -> torch.Tensor:
    """[B, longest] ids, right-padded: how OFA batches sources (positions count from each row's start)."""
    if not seqs:
        raise InputError("no sequences to batch")
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


# --- beam search ----------------------------------------------------------------------------------------


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, ending with </s> (no <s>)
    score: float  # sum of log-probabilities, / length ** len_penalty when normalised
    positional_scores: list[float]


@torch.no_grad()
def beam_search(
    model: OFA, input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
    patch_masks: torch.Tensor | None = None, *, beam_size: int = 5, max_len_a: float = 0.0, max_len_b: int = 200,
    min_len: int = 1, normalize_scores: bool = True, len_penalty: float = 1.0, unk_penalty: float = 0.0,
    temperature: float = 1.0, no_repeat_ngram_size: int = 0, constraint_trie: AnswerTrie | None = None,
    constraint_range: tuple[int, int] | None = None, zero_shot: bool = False,
    prefix_tokens: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:  # fmt: skip
    """Per input (rows of input_ids), its finished hypotheses, best first."""
    V = model.config.vocab_size
    beam = min(beam_size, V - 1)
    bsz, src_len = input_ids.shape
    max_len = int(max_len_a * src_len + max_len_b)
    _check(model, temperature, constraint_trie, constraint_range, min_len, max_len)
    prefix_len = prefix_tokens.size(1) if prefix_tokens is not None else 0
    device = input_ids.device
    rules = dict(beam=beam, max_len=max_len, min_len=min_len, unk_penalty=unk_penalty, ngram=no_repeat_ngram_size,
                 trie=constraint_trie, crange=constraint_range, zero_shot=zero_shot, prefix_len=prefix_len)

    enc: EncoderOut = model.encode(input_ids, patch_images, patch_masks)
    enc = enc.index_select(torch.arange(bsz, device=device).repeat_interleave(beam))  # each input's beams
    cache = model.new_cache(bsz * beam, max_len + 2)

    scores = torch.zeros(bsz * beam, max_len + 1, device=device)
    tokens = torch.full((bsz * beam, max_len + 2), PAD_ID, dtype=torch.long, device=device)
    tokens[:, 0] = BOS_ID
    cands_to_ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=device)
    finalized: list[list[Hypothesis]] = [[] for _ in range(bsz)]
    finished = [False] * bsz
    remaining = bsz
    bbsz_offsets = (torch.arange(bsz, device=device) * beam)[:, None]
    cand_offsets = torch.arange(2 * beam, device=device)
    reorder_state: torch.Tensor | None = None
    batch_idxs: torch.Tensor | None = None
    prefix_lens = (prefix_tokens.ne(PAD_ID).sum(1) if prefix_tokens is not None else None)  # fmt: skip

    for step in range(max_len + 1):
        if reorder_state is not None:
            if batch_idxs is not None:
                corr = batch_idxs - torch.arange(batch_idxs.numel(), device=device)
                reorder_state.view(-1, beam).add_(corr[:, None] * beam)
            cache.reorder(reorder_state)
            enc = enc.index_select(reorder_state)

        logits = model.decode(tokens[:, step : step + 1], enc, cache)[:, -1] / temperature  # [rows, V]
        lprobs = _next_lprobs(logits, tokens, scores, step, prefix_tokens, prefix_lens, rules)
        cand_scores, cand_beams, cand_indices = _candidates(lprobs, scores, step, beam)
        cand_bbsz_idx = cand_beams + bbsz_offsets
        eos_mask = cand_indices.eq(EOS_ID) & cand_scores.ne(-math.inf)
        eos_mask[:, :beam][cands_to_ignore] = False
        eos_bbsz_idx = torch.masked_select(cand_bbsz_idx[:, :beam], mask=eos_mask[:, :beam])
        finalized_sents: list[int] = []
        if eos_bbsz_idx.numel() > 0:
            eos_scores = torch.masked_select(cand_scores[:, :beam], mask=eos_mask[:, :beam])
            finalized_sents = _finalize(step, eos_bbsz_idx, eos_scores, tokens, scores, finalized, finished, beam,
                                        max_len, normalize_scores, len_penalty)  # fmt: skip
            remaining -= len(finalized_sents)
        if remaining == 0 or step >= max_len:
            break
        if finalized_sents:  # inputs with all their hypotheses leave the batch
            keep = torch.ones(bsz, dtype=torch.bool, device=device)
            keep[finalized_sents] = False
            batch_idxs = torch.arange(bsz, device=device).masked_select(keep)
            eos_mask, cand_beams, cand_scores, cand_indices, cands_to_ignore = (
                t[batch_idxs] for t in (eos_mask, cand_beams, cand_scores, cand_indices, cands_to_ignore))
            if prefix_tokens is not None:
                prefix_tokens, prefix_lens = prefix_tokens[batch_idxs], prefix_lens[batch_idxs]
            scores, tokens = (t.view(bsz, -1)[batch_idxs].view(batch_idxs.numel() * beam, -1) for t in (scores, tokens))
            bsz = batch_idxs.numel()
            bbsz_offsets = bbsz_offsets[:bsz]
            cand_bbsz_idx = cand_beams + bbsz_offsets
        else:
            batch_idxs = None

        # continue with the best `beam` candidates that did not end: rank ended ones after all others
        cands_to_ignore, reorder_state = _advance(step, eos_mask, cands_to_ignore, cand_bbsz_idx, cand_indices,
                                                  cand_scores, tokens, scores, cand_offsets)  # fmt: skip

    return [sorted(f, key=lambda h: -h.score) for f in finalized]


def _check(model: OFA, temperature, trie, crange, min_len: int, max_len: int) -> None:
    """GenerationError for settings the search cannot honour."""
    if temperature <= 0:
        raise GenerationError(f"temperature must be > 0, got {temperature}")
    if trie is not None and crange is not None:
        raise GenerationError("use a constraint trie or a constraint range, not both")
    if min_len > max_len:
        raise GenerationError(f"min_len {min_len} > max_len {max_len}")
    if max_len + 1 > model.config.max_positions:
        raise GenerationError(f"max_len {max_len} + 1 exceeds the model's {model.config.max_positions} positions")


def _candidates(lprobs: torch.Tensor, scores: torch.Tensor, step: int, beam: int):
    """The search step: the 2 x beam best (hypothesis, token) pairs per input by cumulative log-probability, as
    (their scores, the beam each extends, the token) [bsz, 2 * beam] each."""
    V = lprobs.size(-1)
    lp = lprobs.view(-1, beam, V)  # [bsz, beam, V]
    if step == 0:
        lp = lp[:, ::beam, :].contiguous()  # all beams are equal: use the first
    else:
        lp = lp + scores.view(lp.size(0), beam, -1)[:, :, step - 1].unsqueeze(-1)
    flat = lp.view(lp.size(0), -1)
    cand_scores, cand_flat = torch.topk(flat, k=min(2 * beam, flat.size(1) - 1))
    return cand_scores, torch.div(cand_flat, V, rounding_mode="floor"), cand_flat.fmod(V)


def _next_lprobs(logits, tokens, scores, step, prefix_tokens, prefix_lens, rules: dict) -> torch.Tensor:
    """The log-probabilities [rows, V] of each row's next token, from the decoder's logits [rows, V] (after the
    temperature), with fairseq's and BiomedGPT's rules applied in their order: the constraint, a forced prefix
    (which may copy rows of tokens and scores in place), min length, <pad>, <unk>, max length, n-grams."""
    beam, V, max_len, trie, crange = rules["beam"], logits.size(-1), rules["max_len"], rules["trie"], rules["crange"]
    zero_shot, n = rules["zero_shot"], rules["ngram"]
    if trie is not None or crange is not None:
        mask = _constraint_mask(tokens[:, : step + 1], trie, crange, zero_shot, prefix_lens, beam, V)
    if not zero_shot and (trie is not None or crange is not None):
        logits = logits.masked_fill(~mask, -math.inf)
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    if zero_shot and (trie is not None or crange is not None):
        lprobs = lprobs.masked_fill(~mask, -math.inf)
    if prefix_tokens is not None and step < rules["prefix_len"] and step < max_len:
        lprobs, _, _ = _force_prefix(step, lprobs, scores, tokens, prefix_tokens, beam, trie is not None)
    elif step < rules["min_len"]:
        lprobs[:, EOS_ID] = -math.inf
    lprobs[lprobs != lprobs] = -math.inf
    lprobs[:, PAD_ID] = -math.inf
    lprobs[:, UNK_ID] -= rules["unk_penalty"]
    if step >= max_len:
        lprobs[:, :EOS_ID] = -math.inf
        lprobs[:, EOS_ID + 1 :] = -math.inf
    if n > 0:
        if prefix_lens is not None:
            out_prefix = (prefix_lens.repeat_interleave(beam) < step + n - 1).tolist()
        else:
            out_prefix = [True] * logits.size(0)
        for r, row in enumerate(tokens[:, : step + 1].tolist()):
            banned = banned_ngrams(row, n) if out_prefix[r] else []
            if banned:
                lprobs[r, banned] = -math.inf
    return lprobs


def _advance(step, eos_mask, cands_to_ignore, cand_bbsz_idx, cand_indices, cand_scores, tokens, scores, cand_offsets):
    """Continue each input with its best `beam` candidates that did not end (ended ones rank after all others):
    tokens and scores are rewritten in place; returns the new cands_to_ignore and the rows each beam came from."""
    cand_size, beam = cand_offsets.numel(), cands_to_ignore.size(1)
    eos_mask[:, :beam] = cands_to_ignore | eos_mask[:, :beam]
    active_mask = eos_mask.long() * cand_size + cand_offsets[: eos_mask.size(1)]
    new_cands_to_ignore, active_hypos = torch.topk(active_mask, k=beam, dim=1, largest=False)
    cands_to_ignore = new_cands_to_ignore.ge(cand_size)[:, :beam]
    active_bbsz_idx = torch.gather(cand_bbsz_idx, 1, active_hypos).view(-1)
    tokens[:, : step + 1] = tokens[:, : step + 1].index_select(0, active_bbsz_idx)
    tokens.view(tokens.size(0) // beam, beam, -1)[:, :, step + 1] = torch.gather(cand_indices, 1, active_hypos)
    if step > 0:
        scores[:, :step] = scores[:, :step].index_select(0, active_bbsz_idx)
    scores.view(scores.size(0) // beam, beam, -1)[:, :, step] = torch.gather(cand_scores, 1, active_hypos)
    return cands_to_ignore, active_bbsz_idx


def _constraint_mask(prev, trie, crange, zero_shot, prefix_lens, beam, V) -> torch.Tensor:
    """[rows, V] allowed ids for the next token of each row of prev [rows, step + 1]."""
    rows = prev.size(0)
    mask = torch.zeros(rows, V, dtype=torch.bool, device=prev.device)
    if crange is not None:
        start, end = crange
        mask[:] = True
        mask[:, 4:start] = False
        mask[:, end:] = False
        return mask
    for r, toks in enumerate(prev.tolist()):
        if zero_shot:
            mask[r, trie.next_ids(toks)] = True
            continue
        plen = int(prefix_lens[r // beam]) if prefix_lens is not None else 0
        if len(toks) > plen:
            mask[r, trie.next_ids([BOS_ID, *toks[plen + 1 :]])] = True
        else:
            mask[r] = True
    return mask


def _force_prefix(step, lprobs, scores, tokens, prefix_tokens, beam, has_trie):
    """Forced decoder prefix: the prefix token keeps its log-probability, every other token gets less (-inf with a
    trie); a prefix that ends with </s> makes every beam a copy of the first."""
    toks = prefix_tokens[:, step].repeat_interleave(beam)
    tok_lprobs = lprobs.gather(-1, toks[:, None])
    m = toks.ne(PAD_ID)
    lprobs[m] = -math.inf if has_trie else torch.min(tok_lprobs) - 1
    lprobs[m] = lprobs[m].scatter(-1, toks[m][:, None], tok_lprobs[m])
    eos = toks.eq(EOS_ID)
    if eos.any():
        first = eos.view(-1, beam)[:, 0]
        for t in (tokens, scores, lprobs):
            v = t.view(-1, beam, t.size(-1))
            v[first] = v[first][:, :1, :]
    return lprobs, tokens, scores


def _finalize(step, bbsz_idx, eos_scores, tokens, scores, finalized, finished, beam, max_len, normalize, len_penalty):
    """Store hypotheses that ended in </s> with their sentence; return the sentences (current batch indices) that
    now have `beam` of them."""
    toks = tokens.index_select(0, bbsz_idx)[:, 1 : step + 2]
    toks[:, step] = EOS_ID
    pos = scores.index_select(0, bbsz_idx)[:, : step + 1]
    pos[:, step] = eos_scores
    pos[:, 1:] = pos[:, 1:] - pos[:, :-1]
    if normalize:
        eos_scores = length_normalised(eos_scores, step + 1, len_penalty)
    cum_unfin, prev = [], 0
    for f in finished:
        if f:
            prev += 1
        else:
            cum_unfin.append(prev)
    unfin_idx = torch.div(bbsz_idx, beam, rounding_mode="floor").tolist()
    sents = [u + cum_unfin[u] for u in unfin_idx]
    for i, s in enumerate(sents):
        if len(finalized[s]) < beam:
            finalized[s].append(Hypothesis(toks[i].tolist(), float(eos_scores[i]), pos[i].tolist()))
    newly = []
    for s, u in sorted(set(zip(sents, unfin_idx))):
        if not finished[s] and (len(finalized[s]) == beam or step == max_len):
            finished[s] = True
            newly.append(u)
    return newly


# --- exact ranking of every candidate ------------------------------------------------------------------


@torch.no_grad()
def rank_candidates(
    model: OFA, input_ids: torch.Tensor, candidates: Sequence[Sequence[int]], patch_images: torch.Tensor | None = None,
    patch_masks: torch.Tensor | None = None, trie: AnswerTrie | None = None, chunk: int = 20,
    decoder_prompts: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:  # fmt: skip
    """[B, n_candidates] score of each candidate answer (ids without <s>/</s>) for each input: the sum over its
    tokens and </s> of the log-probability under teacher forcing, with the trie's masks applied to the logits
    before the log-softmax (BiomedGPT's "allcand" evaluation); argmax is the prediction.

    decoder_prompts: per input, the decoder prompt starting with <s> (BiomedGPT's prompt_type "src": the source
    without its </s>); the decoder reads prompt + candidate and only the candidate's tokens are scored. Without
    it the prompt is <s> alone."""
    if not candidates:
        raise GenerationError("no candidates to rank")
    V, B, dev = model.config.vocab_size, input_ids.size(0), input_ids.device
    prompts = [list(p) for p in decoder_prompts] if decoder_prompts is not None else [[BOS_ID]] * B
    if len(prompts) != B or any(not p or p[0] != BOS_ID for p in prompts):
        raise GenerationError("decoder_prompts: one per input, each starting with <s> (id 0)")
    trie = trie if trie is not None else AnswerTrie(candidates)
    cand_masks = [trie.masks(list(c), V) for c in candidates]
    enc = model.encode(input_ids, patch_images, patch_masks)
    out = []
    for lo in range(0, len(candidates), chunk):
        part = [list(c) for c in candidates[lo : lo + chunk]]
        rows = [(b, j) for b in range(B) for j in range(len(part))]
        width = max(len(prompts[b]) + len(part[j]) for b, j in rows)
        prev = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        tgt = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        masks = torch.ones(len(rows), width, V, dtype=torch.bool)  # padded steps: all allowed, scores zeroed
        for r, (b, j) in enumerate(rows):
            p, c = prompts[b], part[j]
            prev[r, : len(p) + len(c)] = torch.tensor([*p, *c])
            tgt[r, : len(p) + len(c)] = torch.tensor([*p[1:], *c, EOS_ID])
            masks[r, : len(p) - 1] = False  # prompt positions: not scored
            masks[r, len(p) - 1 : len(p) + len(c)] = cand_masks[lo + j]
        prev, tgt, masks = prev.to(dev), tgt.to(dev), masks.to(dev)
        logits = model.decode(prev, enc.index_select(torch.tensor([b for b, _ in rows], device=dev)))
        lprobs = torch.log_softmax(logits.masked_fill(~masks, -math.inf), dim=-1)
        s = lprobs.gather(-1, tgt[..., None])[..., 0]
        s = s.masked_fill(tgt.eq(PAD_ID), 0.0).masked_fill((~masks).all(-1), 0.0)
        out.append(s.sum(1).view(B, len(part)))
    return torch.cat(out, 1)
