"""The one decoding loop (generation/decode.py), one sequence's bookkeeping (generation/stream.py), the n-gram
rule both beam searches share, and the special ids taken from the model: against transformers on tiny random
weights, and against hand-worked expectations."""

import torch

from biogpt.generation import AllowedSequences, generate, left_pad
from biogpt.generation.decode import GREEDY, decode_steps
from biogpt.generation.processors import banned_ngrams
from biogpt.generation.stream import Rules, SamplingParams, SequenceState

from . import test_gpt2, test_model

PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11], [2, 12, 13], [2, 40, 41, 42, 43, 44]]


def _opts(eos: int, mask: torch.Tensor, T0: int) -> dict:
    return dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, eos=eos, prompt_len=T0,
                pad_lens=(mask != 0).int().argmax(1))  # fmt: skip


def test_decode_steps_are_transformers_greedy_step_by_step():
    hf = test_model.random_hf(**test_model.CONFIGS[0])
    m = test_model.ours_from(hf)
    ids, mask = left_pad(PROMPTS)
    free = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=1, eos_token_id=None)
    eos = int(free[0, ids.shape[1] + 3])  # a token row 0 produces by its 4th step: it ends there
    ref = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=1, eos_token_id=eos,
                      output_scores=True, return_dict_in_generate=True)  # fmt: skip
    new = ref.sequences[:, ids.shape[1] :]  # [B, n]
    steps = list(decode_steps(m, ids, mask, 12, _opts(eos, mask, ids.shape[1]), how=GREEDY, pad_token_id=1,
                              output_logprobs=True))  # fmt: skip
    assert len(steps) == new.shape[1]
    assert torch.equal(torch.stack([s.tokens for s in steps], 1), new)
    assert torch.equal(steps[-1].sequences, ref.sequences)
    ends = (new == eos).long().cumsum(1)  # [B, n]: how many end tokens so far
    first_end = (ends == 1) & (new == eos)
    assert bool(first_end[0, :4].any()) and len(steps) > 4  # row 0 ends early, another row goes on
    assert torch.equal(torch.stack([s.finished for s in steps], 1), first_end)
    for t, s in enumerate(steps):  # the model's own log-probability of each token, 0 once a row had ended
        lp = torch.log_softmax(ref.scores[t].float(), -1).gather(1, new[:, t : t + 1]).squeeze(1)
        assert torch.allclose(s.logprobs, lp.masked_fill(s.before, 0.0), atol=1e-5)


def test_special_ids_come_from_the_model_when_not_given():
    hf = test_gpt2.random_hf(**test_gpt2.CONFIGS[0])
    m = test_gpt2.ours_from(hf)
    E = test_gpt2.EOS
    assert (m.config.eos_token_id, m.config.pad_token_id) == (E, E)
    ids, mask = left_pad(PROMPTS, pad_token_id=E)
    ref = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8, pad_token_id=E, eos_token_id=E)
    assert torch.equal(generate(m, ids, mask, max_new_tokens=8).sequences, ref)
    # a constraint built without an end token ends with the model's: [40, 41] then <|endoftext|> = 7, then padding
    out = generate(m, [[E, 5]], max_new_tokens=4, constraints=AllowedSequences([[40, 41]])).sequences
    assert out[0, 2:].tolist() == [40, 41, E]
    # also after a forced prefix, and for one sequence of the scheduler
    out = generate(m, [[E, 5]], max_new_tokens=5, forced_tokens=[[9]], constraints=AllowedSequences([[40, 41]]))
    assert out.sequences[0, 2:].tolist() == [9, 40, 41, E]
    s = SequenceState([E, 5], SamplingParams(max_tokens=4, constraint=AllowedSequences([[40]])))
    logits = torch.zeros(hf.config.vocab_size)
    assert [s.choose(logits, E), s.take(40, Rules(E, 64)).finish_reason] == [40, None]
    assert s.choose(logits, E) == E


def _fairseq_banned(tokens: list[int], step: int, n: int) -> list[int]:
    """fairseq's NGramRepeatBlock (its Python path), over the whole token buffer of a beam row."""
    if step + 2 - n < 0:
        return []
    gen: dict[tuple, list[int]] = {}
    for ngram in zip(*[tokens[i:] for i in range(n)]):
        gen.setdefault(tuple(ngram[:-1]), []).append(ngram[-1])
    return gen.get(tuple(tokens[step + 2 - n : step + 1]), [])


def test_ngram_blocking_bans_what_transformers_and_fairseq_ban():
    from transformers import NoRepeatNGramLogitsProcessor

    g = torch.Generator().manual_seed(0)
    pad = 1
    for n in (1, 2, 3, 4):
        rows = torch.randint(4, 9, (6, 10), generator=g)  # a small alphabet: many repeats
        scores = NoRepeatNGramLogitsProcessor(n)(rows, torch.zeros(6, 12))
        for r, row in enumerate(rows.tolist()):
            expected = sorted(torch.nonzero(scores[r] == -float("inf")).flatten().tolist())
            assert banned_ngrams(row, n) == expected
            buffer = row + [pad] * 5  # fairseq's buffer: the row's tokens, then padding to max_len
            fairseq = set(_fairseq_banned(buffer, len(row) - 1, n)) - {pad}  # <pad> is banned there already
            assert set(banned_ngrams(row, n)) == fairseq
    assert banned_ngrams([5, 6, 5], 2) == [6] and banned_ngrams([5], 3) == []


WORDS = {10: "a", 11: " cat", 12: " sat", 13: " STOP", 14: " on", 2: "</s>"}


def _decode(ids: list[int]) -> str:
    return "".join(WORDS[i] for i in ids)


def test_sequence_state_ends_on_a_stop_string_and_holds_back_the_last_word():
    s = SequenceState([2], SamplingParams(max_tokens=10, stop=(" STOP",)))
    rules = Rules(eos=2, max_len=100, decode=_decode)
    deltas = [s.take(t, rules) for t in (10, 11, 12, 13)]
    # held back while running: the last word (it may still change) and 4 characters (" STO" could begin " STOP"):
    # "a" -> nothing; "a cat" -> "a"; "a cat sat" -> " cat"; the stop string ends it: the rest, " sat"
    assert [d.text for d in deltas] == ["", "a", " cat", " sat"]
    assert [d.finish_reason for d in deltas] == [None, None, None, "stop"]
    assert deltas[-1].stop_reason == " STOP" and s.text == "a cat sat"
    assert "".join(d.text for d in deltas) + s.new_text(final=True) == "a cat sat"


def test_sequence_state_end_token_stop_ids_and_length():
    rules = Rules(eos=2, max_len=6, decode=_decode)
    s = SequenceState([2], SamplingParams(max_tokens=10))
    assert [s.take(t, rules).finish_reason for t in (10, 11, 2)] == [None, None, "stop"]
    assert s.text == "a cat"  # the end token is not text
    s = SequenceState([2], SamplingParams(max_tokens=10, stop_token_ids=(12,)))
    d = [s.take(t, rules) for t in (10, 12)][-1]
    assert (d.finish_reason, d.stop_reason, s.text) == ("stop", 12, "a")
    s = SequenceState([2], SamplingParams(max_tokens=10, ignore_eos=True))
    assert [s.take(t, rules).finish_reason for t in (10, 2, 11, 12, 14)] == [None, None, None, None, "length"]
    s = SequenceState([2], SamplingParams(max_tokens=2))
    assert [s.take(t, rules).finish_reason for t in (10, 11)] == [None, "length"]
