"""The continuous-batching scheduler against offline `generate` (itself exact to transformers) and transformers'
generate directly, on tiny random models in fp32: the same prompts served alone, together and interleaved with
others arriving at different steps give the same tokens; seeds, stops, limits and cancellation."""

import pytest
import torch

from biogpt.errors import GenerationError
from biogpt.generation import AllowedSequences, QueueFull, SamplingParams, Scheduler, generate

from .test_model import CONFIGS, ours_from, random_hf

NO_EOS = -1  # an id no model produces: runs go to max_tokens, so long stretches are compared


@pytest.fixture(scope="module")
def hf():
    return random_hf(**{**CONFIGS[0], "max_position_embeddings": 512})


@pytest.fixture(scope="module")
def model(hf):
    return ours_from(hf)


def prompts_of(lengths, seed=5, vocab=500):
    g = torch.Generator().manual_seed(seed)
    return [[2] + torch.randint(4, vocab, (n - 1,), generator=g).tolist() for n in lengths]


class Collect:
    """The deltas of every sequence, by sequence id."""

    def __init__(self):
        self.tokens, self.text, self.finish, self.lps, self.stop = {}, {}, {}, {}, {}

    def __call__(self, seq, d):
        self.tokens.setdefault(seq.id, []).extend(d.tokens)
        self.lps.setdefault(seq.id, []).extend(d.logprobs)
        self.text[seq.id] = self.text.get(seq.id, "") + d.text
        if d.finish_reason is not None:
            assert seq.id not in self.finish, "a sequence finished twice"
            self.finish[seq.id], self.stop[seq.id] = d.finish_reason, d.stop_reason


def run(sch, steps_between=(), prompts=(), params=None, cb=None):
    """Submit prompts[i] after steps_between[i] more steps, then step until idle."""
    cb = cb or Collect()
    seqs = []
    for i, p in enumerate(prompts):
        for _ in range(steps_between[i] if steps_between else 0):
            sch.step()
        seqs += sch.submit([p], [params[i] if isinstance(params, list) else params or SamplingParams()], cb)
    guard = 0
    while not sch.idle:
        sch.step()
        guard += 1
        assert guard < 10_000
    return seqs, cb


def offline(model, prompt, n, **kw):
    return generate(model, [prompt], max_new_tokens=n, **kw).sequences[0, len(prompt) :].tolist()


LENGTHS = (3, 17, 40, 9, 100, 1, 60)
N = 150


@pytest.fixture(scope="module")
def greedy_ref(model):
    prompts = prompts_of(LENGTHS)
    return prompts, [offline(model, p, N, eos_token_id=NO_EOS) for p in prompts]


@pytest.mark.parametrize("how", ["alone", "together", "interleaved"])
def test_greedy_equals_offline_generate(model, greedy_ref, how):
    prompts, ref = greedy_ref
    params = SamplingParams(max_tokens=N)
    if how == "alone":
        outs = []
        for p in prompts:
            sch = Scheduler(model, max_batch=1, eos_token_id=NO_EOS, max_len=512)
            seqs, cb = run(sch, prompts=[p], params=params)
            outs.append(cb.tokens[seqs[0].id])
    else:
        # interleaved: arrivals at different steps, fewer rows than sequences (a queue), a prefill chunk smaller
        # than most prompts, and a buffer short enough that the batch compacts its leading columns
        kw = dict(max_batch=8, prefill_chunk=512, max_len=512) if how == "together" else \
            dict(max_batch=3, prefill_chunk=7, max_len=260)  # fmt: skip
        sch = Scheduler(model, eos_token_id=NO_EOS, **kw)
        # the buffers start uninitialised: whatever they hold (here NaN) must never reach a live row
        sch.cache.k.fill_(float("nan"))
        sch.cache.v.fill_(float("nan"))
        steps = [0] * len(prompts) if how == "together" else [0, 5, 1, 30, 2, 17, 44]
        seqs, cb = run(sch, steps, prompts, params)
        outs = [cb.tokens[s.id] for s in seqs]
        if how == "interleaved":
            assert sch.compactions > 0
    assert len(outs) == len(ref) == len(prompts)
    for p, o, r in zip(prompts, outs, ref, strict=True):
        assert len(o) == N
        first = next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), None)
        assert o == r, f"prompt of {len(p)} tokens: first difference at step {first}"
    assert sch.idle and sch.cache.length == 0


def test_greedy_equals_transformers_with_eos(model, hf):
    prompts = prompts_of((4, 12, 30), seed=9)
    sch = Scheduler(model, max_batch=4, max_len=512)
    seqs, cb = run(sch, [0, 3, 1], prompts, SamplingParams(max_tokens=40))
    for p, s in zip(prompts, seqs):
        ref = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=40, eos_token_id=2, pad_token_id=1)
        expect = ref[0, len(p) :].tolist()
        assert cb.tokens[s.id] == expect
        assert cb.finish[s.id] == ("stop" if expect[-1] == 2 else "length")


def test_seeded_sampling_matches_offline_and_ignores_the_batch(model):
    prompts = prompts_of((5, 30, 12), seed=3)
    kw = dict(temperature=0.8, top_k=20, top_p=0.9)
    p = SamplingParams(max_tokens=50, seed=7, **kw)
    ref = offline(model, prompts[0], 50, do_sample=True, seed=7, eos_token_id=NO_EOS, **kw)
    alone, cb = run(Scheduler(model, max_batch=1, eos_token_id=NO_EOS, max_len=512), prompts=[prompts[0]], params=p)
    assert cb.tokens[alone[0].id] == ref
    others = SamplingParams(max_tokens=50, temperature=1.0)  # unseeded neighbours
    seqs, cb2 = run(Scheduler(model, max_batch=4, eos_token_id=NO_EOS, max_len=512), [0, 0, 4],
                    [prompts[1], prompts[0], prompts[2]], [others, p, others])  # fmt: skip
    assert cb2.tokens[seqs[1].id] == ref
    different = SamplingParams(max_tokens=50, seed=8, **kw)
    seqs, cb3 = run(Scheduler(model, eos_token_id=NO_EOS, max_len=512), prompts=[prompts[0]], params=different)
    assert cb3.tokens[seqs[0].id] != ref


def test_penalties_min_tokens_logprobs_and_constraints_match_offline(model):
    prompts = prompts_of((6, 20), seed=11)
    allowed = [[30, 31], [40], [50, 51, 52]]
    trie = AllowedSequences(allowed)
    cases = [
        (SamplingParams(max_tokens=30, repetition_penalty=1.3), dict(repetition_penalty=1.3)),
        (SamplingParams(max_tokens=12, min_tokens=12), dict(min_new_tokens=12)),
        (SamplingParams(max_tokens=8, constraint=trie), dict(constraints=trie)),
    ]  # fmt: skip
    for params, kw in cases:
        sch = Scheduler(model, max_len=512)
        seqs, cb = run(sch, [0, 2], prompts, params)
        for p, s in zip(prompts, seqs):
            ref = offline(model, p, params.max_tokens, **kw)
            ref = ref[: ref.index(2) + 1] if 2 in ref else ref
            assert cb.tokens[s.id] == ref
    # log-probabilities: the model's own log-softmax of the chosen tokens, as offline output_logprobs
    params = SamplingParams(max_tokens=20, logprobs=3)
    seqs, cb = run(Scheduler(model, eos_token_id=NO_EOS, max_len=512), [0, 1], prompts, params)
    for p, s in zip(prompts, seqs):
        out = generate(model, [p], max_new_tokens=20, eos_token_id=NO_EOS, output_logprobs=True)
        assert cb.tokens[s.id] == out.sequences[0, len(p) :].tolist()
        assert torch.allclose(torch.tensor(cb.lps[s.id]), out.logprobs[0], atol=1e-5, rtol=0)


def test_beam_search_runs_offline_beams(model):
    p = prompts_of((8,), seed=2)[0]
    seqs, cb = run(Scheduler(model, max_len=512), prompts=[p], params=SamplingParams(max_tokens=15, num_beams=3))
    ref = offline(model, p, 15, num_beams=3)
    ref = ref[: ref.index(2) + 1] if 2 in ref else ref
    assert cb.tokens[seqs[0].id] == ref


def test_stop_ids_stop_strings_and_max_tokens(model):
    p = prompts_of((10,), seed=4)[0]
    ref = offline(model, p, 30, eos_token_id=NO_EOS)
    stop_id = ref[7]
    first = ref.index(stop_id)
    seqs, cb = run(Scheduler(model, eos_token_id=NO_EOS, max_len=512), prompts=[p],
                   params=SamplingParams(max_tokens=30, stop_token_ids=(stop_id,)))  # fmt: skip
    assert cb.tokens[seqs[0].id] == ref[: first + 1]
    assert (cb.finish[seqs[0].id], cb.stop[seqs[0].id]) == ("stop", stop_id)

    # stop strings on the decoded text: a decoder that spells every id, so the expected text is known
    def spell(ids):
        return "".join(f"<{i}>" for i in ids)

    stop = f"<{ref[5]}><{ref[6]}>"
    at = spell(ref).index(stop)
    sch = Scheduler(model, spell, eos_token_id=NO_EOS, max_len=512)
    seqs, cb = run(sch, prompts=[p], params=SamplingParams(max_tokens=30, stop=("<never>", stop)))
    s = seqs[0]
    assert cb.text[s.id] == spell(ref)[:at]  # streamed deltas add up to the text before the stop string
    assert (cb.finish[s.id], cb.stop[s.id]) == ("stop", stop)
    k = next(k for k in range(1, 31) if stop in spell(ref[:k]))  # it ends at the token completing the stop string
    assert k <= 7 and cb.tokens[s.id] == ref[:k]

    seqs, cb = run(Scheduler(model, spell, eos_token_id=NO_EOS, max_len=512), prompts=[p],
                   params=SamplingParams(max_tokens=9))  # fmt: skip
    assert cb.tokens[seqs[0].id] == ref[:9] and cb.finish[seqs[0].id] == "length"
    assert cb.text[seqs[0].id] == spell(ref[:9])


def test_cancel_frees_the_row_and_spares_the_others(model):
    prompts = prompts_of((12, 7), seed=6)
    ref = offline(model, prompts[1], 60, eos_token_id=NO_EOS)
    sch = Scheduler(model, max_batch=2, eos_token_id=NO_EOS, max_len=512)
    cb = Collect()
    a, b = sch.submit(prompts, [SamplingParams(max_tokens=300), SamplingParams(max_tokens=60)], cb)
    for _ in range(10):
        sch.step()
    assert sch.batch_size == 2
    sch.cancel([a])
    sch.step()
    assert sch.batch_size == 1 and sch.running == [b]
    assert cb.finish[a.id] == "cancelled" and len(cb.tokens[a.id]) == 11  # step 1: prefill token + a decode
    # the freed row takes a new sequence at once
    c = sch.submit([prompts[0]], [SamplingParams(max_tokens=5)], cb)[0]
    sch.step()
    assert sch.batch_size == 2 and c in sch.running
    while not sch.idle:
        sch.step()
    assert cb.tokens[b.id] == ref
    # cancelled while still queued
    w = sch.submit([prompts[0]], [SamplingParams(max_tokens=5)], cb)[0]
    sch.cancel([w])
    sch.step()
    assert cb.finish[w.id] == "cancelled" and cb.tokens.get(w.id, []) == [] and sch.idle


def test_cancel_all_reaches_every_state_in_the_schedulers_thread(model):
    """A shutdown deadline cancels what runs, what is half prefilled and what waits, whatever list each is in."""
    prompts = prompts_of((40, 7, 9), seed=8)
    sch = Scheduler(model, max_batch=1, prefill_chunk=16, eos_token_id=NO_EOS, max_len=512)
    cb = Collect()
    run_, half, queued = sch.submit(prompts[1:2] + prompts[:1] + prompts[2:], [SamplingParams(max_tokens=300)] * 3, cb)
    sch.step()
    sch.step()
    assert sch.running == [run_] and queued in sch.waiting
    sch.start()
    try:
        sch.cancel_all()
        assert sch.wait_idle(60)
    finally:
        sch.stop(5)
    assert {cb.finish[s.id] for s in (run_, half, queued)} == {"cancelled"}
    assert cb.tokens.get(queued.id, []) == []


def test_admission_errors(model):
    with pytest.raises(GenerationError, match="max_len 513 exceeds the model's 512 positions"):
        Scheduler(model, max_len=513)
    sch = Scheduler(model, max_queue=2, max_len=64)
    cb = Collect()
    with pytest.raises(GenerationError, match="exceeds the model's context of 64 tokens"):
        sch.submit([[2] * 60], [SamplingParams(max_tokens=5)], cb)
    with pytest.raises(GenerationError, match="logprobs must be between 0 and 20"):
        sch.submit([[2]], [SamplingParams(logprobs=21)], cb)
    with pytest.raises(GenerationError, match="at least one token"):
        sch.submit([[]], [SamplingParams()], cb)
    sch.submit([[2, 5], [2, 6]], [SamplingParams(), SamplingParams()], cb)
    with pytest.raises(QueueFull, match="the queue is full"):
        sch.submit([[2, 7]], [SamplingParams()], cb)
    assert sch.queue_length == 2  # all or nothing: the rejected one was not queued


def test_thread_serves_and_call_runs_between_steps(model):
    import threading

    p = prompts_of((9,), seed=1)[0]
    ref = offline(model, p, 20, eos_token_id=NO_EOS)
    sch = Scheduler(model, eos_token_id=NO_EOS, max_len=512)
    done = threading.Event()
    cb = Collect()

    def on(seq, d):
        cb(seq, d)
        if d.finish_reason:
            done.set()

    sch.start()
    try:
        s = sch.submit([p], [SamplingParams(max_tokens=20)], on)[0]
        assert done.wait(600)  # an event; the bound only stops a hung test
        assert cb.tokens[s.id] == ref
        assert sch.call(lambda: threading.current_thread().name).result(600) == "biogpt-scheduler"
    finally:
        sch.stop()


def test_native_decode_attention_serves_as_offline(greedy_ref):
    """biogpt's decode attention over a bf16 cache (int8's form on CPUs with AVX512-BF16) under continuous
    batching: the rows it reads are each row's own, so arrivals, queueing and compaction change no token."""
    from biogpt.backends.cpu import kernels
    from biogpt.backends.cpu.forms import DecodeAttention, _with_decode_attention

    from .test_cpu_kernels import require_native_kernels

    if kernels._unsupported() is not None:
        pytest.skip(kernels._unsupported())
    require_native_kernels()

    hf = random_hf(**{**CONFIGS[0], "num_attention_heads": 2, "max_position_embeddings": 512})  # head size 32
    m = _with_decode_attention(ours_from(hf), DecodeAttention)  # fp32 Linears: rows independent of each other
    assert m.new_cache(1, 4).k.dtype == torch.bfloat16
    prompts = greedy_ref[0]
    ref = [offline(m, p, N, eos_token_id=NO_EOS) for p in prompts]
    sch = Scheduler(m, eos_token_id=NO_EOS, max_batch=3, prefill_chunk=7, max_len=260)
    sch.cache.k.fill_(float("nan"))
    sch.cache.v.fill_(float("nan"))
    seqs, cb = run(sch, [0, 5, 1, 30, 2, 17, 44], prompts, SamplingParams(max_tokens=N))
    assert sch.compactions > 0
    assert [cb.tokens[s.id] for s in seqs] == ref
