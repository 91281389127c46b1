"""Sampling never turns into NaN, and one sequence's failure stays its own: tiny temperatures, penalties that
overflow the logits, a minimum length that bans the only allowed token, and a constraint that raises, each
next to a normal sequence whose tokens must equal offline greedy `generate` (itself exact to transformers)."""

import pytest
import torch

from biogpt.generation import AllowedSequences, SamplingParams, Scheduler, generate
from biogpt.generation.constraints import Constraint
from biogpt.generation.processors import keep_end_token, process, sample

from .test_model import CONFIGS, ours_from, random_hf

EOS = 2


@pytest.fixture(scope="module")
def model():
    return ours_from(random_hf(**{**CONFIGS[0], "max_position_embeddings": 128}))


def greedy(model, prompt, n):
    return generate(model, [prompt], max_new_tokens=n, eos_token_id=-1).sequences[0, len(prompt) :].tolist()


def drive(sch, prompts, params):
    """Submit each (prompt, params), step until idle; {seq index: (tokens, finish_reason, error)}."""
    out = {}

    def cb(seq, d):
        toks, _, _ = out.get(seq.id, ([], None, None))
        out[seq.id] = (toks + d.tokens, d.finish_reason, d.error)

    seqs = sch.submit(prompts, params, cb)
    for _ in range(1000):
        if sch.idle:
            break
        sch.step()
    return [out[s.id] for s in seqs]


def test_tiny_temperature_is_greedy_and_overflowing_logits_take_the_argmax():
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0], [1.0, -2.0, 4.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert sample(logits, 1e-40, 0, 1.0, g).tolist() == [1, 2]
    inf = torch.tensor([[0.0, float("inf"), 1.0, float("inf")], [float("nan"), 1.0, 5.0, 2.0]])
    assert sample(inf, 1.0, 0, 1.0, g).tolist()[0] == 1  # probabilities NaN: the first maximum
    assert sample(inf, 1e-3, 0, 0.9, g).tolist()[1] == 2  # NaN logit ignored, 5 / 1e-3 still finite
    huge = torch.tensor([[1e38, -1e38, 0.0, 3e38]])  # / 0.01 overflows to +-inf
    assert sample(huge, 0.01, 2, 1.0, g).tolist() == [3]


def test_a_row_with_nothing_allowed_keeps_its_end_token():
    scores = torch.tensor([[-float("inf")] * 5, [0.0, 1.0, -float("inf"), 2.0, 3.0]])
    kept = keep_end_token(scores, EOS)
    assert kept[0].tolist() == [-float("inf"), -float("inf"), 0.0, -float("inf"), -float("inf")]
    assert torch.equal(kept[1], scores[1])
    # min_tokens bans </s>; the finished choice allows only </s>: </s> stays allowed
    choice = AllowedSequences([[7]], EOS)
    seqs = torch.tensor([[EOS, 5, 7]])
    out = process(torch.zeros(1, 10), seqs, 1, 1.0, 0, 4, EOS, [choice], 2, torch.zeros(1, dtype=torch.long))
    assert out[0].argmax().item() == EOS and torch.isfinite(out[0, EOS])


class Raises(Constraint):
    def allowed(self, generated):
        raise RuntimeError("a broken constraint")


def test_hostile_sampling_settings_finish_and_neighbours_are_unaffected(model):
    prompt = [EOS, 11, 42, 7, 99]
    ref = greedy(model, prompt, 6)
    sch = Scheduler(model, max_batch=8, eos_token_id=-1)
    normal = SamplingParams(max_tokens=6)
    params = [
        normal,
        SamplingParams(max_tokens=6, temperature=1e-40, seed=1),  # greedy
        SamplingParams(max_tokens=6, temperature=1e-30, repetition_penalty=1e-30, seed=2),
        SamplingParams(max_tokens=6, temperature=0.7, top_p=0.5, min_tokens=4, constraint=AllowedSequences([[9]], 1)),
        SamplingParams(max_tokens=6, constraint=Raises()),
        normal,
    ]
    res = drive(sch, [prompt] * len(params), params)
    assert res[0] == (ref, "length", None) and res[5] == (ref, "length", None)
    assert res[1] == (ref, "length", None)
    assert res[2][1] == "length" and len(res[2][0]) == 6
    assert res[3][0][:2] == [9, 1]  # after the choice only its end (1) is allowed, never NaN
    assert res[4] == ([], "error", "generation failed: RuntimeError")
    # the scheduler goes on serving
    assert drive(sch, [prompt], [normal])[0] == (ref, "length", None)
    # min_tokens bans the end token the finished choice needs: the end token still comes, the run stops
    sch = Scheduler(model, max_batch=8, eos_token_id=EOS)
    choice = SamplingParams(max_tokens=6, temperature=0.5, min_tokens=4, constraint=AllowedSequences([[9]], EOS))
    assert drive(sch, [prompt], [choice])[0] == ([9, EOS], "stop", None)
