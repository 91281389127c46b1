"""The compiled static-shape decoding step (generation/compiled.py) gives the eager engine's tokens.

torch.compile runs with the aot_eager backend here: the whole step is captured as one graph (fullgraph=True:
any graph break fails), as CUDA graphs need, without spending a test's time on Inductor's C++ code generation.
"""

import pytest
import torch

from biogpt.errors import GenerationError
from biogpt.generation import compile_decode, generate
from biogpt.models.biogpt import BioGPT, BioGPTConfig
from biogpt.models.gpt2 import GPT2, GPT2Config

PROMPTS = [[2, 17, 33, 9, 41, 8], [2, 5], [2, 60, 61, 62]]  # different lengths: left padding, per-prompt prefill


def tiny_biogpt() -> BioGPT:
    torch.manual_seed(0)
    m = BioGPT(BioGPTConfig(vocab_size=96, n_layer=2, d_model=32, n_head=4, d_ffn=64, max_positions=64)).eval()
    m.init_weights(seed=0)
    return m


def tiny_gpt2() -> GPT2:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=96, n_layer=2, d_model=32, n_head=4, d_ffn=64, max_positions=64,
                     scale_attn_by_inverse_layer_idx=True, bos_token_id=2, eos_token_id=2)  # fmt: skip
    return GPT2(cfg).eval()


def run(model, **kw):
    out = generate(model, PROMPTS, max_new_tokens=12, min_new_tokens=12, eos_token_id=2, pad_token_id=1, **kw)
    return out.sequences


@pytest.mark.parametrize("family", [tiny_biogpt, tiny_gpt2])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_gives_the_eager_tokens(family, backend):
    model = family()
    greedy = run(model)
    sampled = run(model, do_sample=True, temperature=0.9, top_k=20, top_p=0.95, seed=3)
    compile_decode(model, backend=backend)
    assert torch.equal(run(model), greedy)
    assert torch.equal(run(model, do_sample=True, temperature=0.9, top_k=20, top_p=0.95, seed=3), sampled)


def test_static_step_logits_match_the_forward():
    """Step by step, the static step's logits equal the cached forward's to fp32 rounding."""
    model = tiny_biogpt()
    ids = torch.tensor([[2, 17, 33, 9], [2, 5, 6, 7]])
    a, b = model.new_cache(2, 16), model.new_cache(2, 16)
    with torch.inference_mode():
        model(ids, None, cache=a, last_only=True)
        model(ids, None, cache=b, last_only=True)
        b.zero_unfilled()
        for t in range(5):
            nxt = torch.tensor([[10 + t], [20 + t]])
            want = model(nxt, torch.ones_like(nxt), cache=a, last_only=True)[:, -1]
            got = model.decode_step(nxt, b.k, b.v, b.valid, b.next_pos, torch.tensor([b.length]))
            b.length += 1
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.next_pos, b.next_pos) and torch.equal(a.valid, b.valid)


def serve(model, prompts, params, arrivals):
    """Tokens of each request through the continuous-batching scheduler, request i submitted after arrivals[i]
    more steps; rows come and go, so the compiled step runs at several batch sizes."""
    from biogpt.generation import Scheduler

    sch = Scheduler(model, max_batch=4, max_len=48, eos_token_id=-1)
    out: dict[int, list[int]] = {}
    seqs = []
    for p, sp, wait in zip(prompts, params, arrivals):
        for _ in range(wait):
            sch.step()
        seqs += sch.submit([p], [sp], lambda seq, d: out.setdefault(seq.id, []).extend(d.tokens))
    while not sch.idle:
        sch.step()
    return [out[s.id] for s in seqs]


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_in_the_scheduler_gives_the_eager_tokens(backend):
    from biogpt.generation import SamplingParams

    prompts = [*PROMPTS, [2, 7, 7, 8, 9], [2, 44]]
    lengths = [9, 4, 12, 6, 7]
    params = [SamplingParams(max_tokens=n, temperature=0.8 if i % 2 else 0.0, top_p=0.9, seed=i)
              for i, n in enumerate(lengths)]  # fmt: skip
    arrivals = [0, 0, 2, 1, 3]
    model = tiny_biogpt()
    eager = serve(model, prompts, params, arrivals)
    compile_decode(model, backend=backend)
    assert serve(model, prompts, params, arrivals) == eager
    assert [len(t) for t in eager] == lengths


def test_compiled_step_refuses_a_kernel_form():
    from biogpt.backends.cpu.forms import quantize_int8_reference

    model = quantize_int8_reference(tiny_biogpt())
    with pytest.raises(GenerationError, match="plain fp32 and bf16"):
        compile_decode(model)


@pytest.mark.parametrize("verb", [["generate", "x"], ["extract", "in.jsonl"], ["serve"]])
@pytest.mark.parametrize("device,message", [
    ("cuda", "CUDA is not available on this machine" if not torch.cuda.is_available() else None),
    ("tpu", "expected cpu, cuda or cuda:N, got 'tpu'"),
    ("cuda:\u0661", "expected cpu, cuda or cuda:N"),  # a non-ASCII digit
    ("cuda:0\u2028", "expected cpu, cuda or cuda:N"),
])  # fmt: skip
def test_device_is_checked_when_parsed(verb, device, message, capsys):
    from biogpt.cli import main

    if message is None:
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    code = main([verb[0], "--device", device, *verb[1:]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_int8_on_a_gpu_is_one_error(tmp_path):
    import argparse

    from biogpt.cli.args import load_for_inference
    from biogpt.errors import BioGPTError

    args = argparse.Namespace(model="demo", dtype="int8", device="cuda", vocab=None)
    with pytest.raises(BioGPTError, match="--dtype int8 runs on the CPU; on --device cuda use bf16"):
        load_for_inference(args)


def test_compile_with_int8_is_one_error(capsys):
    from biogpt.cli import main

    code = main(["generate", "--dtype", "int8", "--compile", "x"])
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "compiled decoding runs the plain fp32 and bf16 forms" in errors[0], err
