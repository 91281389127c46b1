"""`biogpt serve` with a BiomedGPT (OFA) model: /v1/completions with a base64 image through the official `openai`
client in-process (httpx's ASGI transport), errors through raw httpx. Expected texts come from the library's
beam search (generation/seq2seq.py, tested against the reference generator) on the same tiny random model."""

from __future__ import annotations

import argparse
import asyncio
import base64

import httpx
import openai
import pytest

import biogpt
from biogpt.checkpoints.ofa import save_ofa
from biogpt.cli.args import load_for_inference as load_model
from biogpt.generation.seq2seq import beam_search, right_pad
from biogpt.models.ofa import OFA
from biogpt.serve import create_app
from biogpt.tasks.biomedgpt import CAPTION_PROMPT, DECODING, Decoding, Record, generate_text
from biogpt.text.ofa import OFATokenizer

from .test_ofa_cli import BPE, png_bytes, tiny_ofa

NAME = "biomedgpt-tiny"
B64 = base64.b64encode(png_bytes()).decode()


@pytest.fixture(scope="module")
def ofa_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ofa")
    save_ofa(tiny_ofa(seed=5), OFATokenizer.from_pretrained(BPE), d)
    return d


@pytest.fixture(scope="module")
def loaded(ofa_dir):
    return biogpt.load(ofa_dir)


def serve(app, fn):
    """`await fn(http, client)` against the app in-process, its lifespan around it; waits until it has loaded."""

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                for _ in range(600):
                    if (await http.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="none", max_retries=0,
                                            http_client=httpx.AsyncClient(transport=transport))  # fmt: skip
                return await fn(http, client)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def app(ofa_dir):
    """Loaded as `biogpt serve --model DIR` loads it: the CLI's loader, through biogpt.load."""
    args = argparse.Namespace(model=str(ofa_dir), vocab=None, dtype="fp32", threads=None)
    return create_app(loader=lambda: load_model(args), model_name=NAME)


def test_cli_loader_gives_the_ofa_model(ofa_dir, loaded):
    model, tok = load_model(argparse.Namespace(model=str(ofa_dir), vocab=None, dtype="fp32", threads=None))
    assert isinstance(model, OFA) and isinstance(tok, OFATokenizer)
    want = loaded[0].state_dict()
    assert all(v.equal(want[k]) for k, v in model.state_dict().items())


def test_caption_of_an_image(app, loaded):
    model, tok = loaded
    (want,) = generate_text(model, tok, [Record("0", CAPTION_PROMPT, png_bytes())], DECODING["caption"])

    async def go(http, client):
        prompt = "What does the image describe?"
        a = await client.completions.create(model=NAME, prompt=prompt, extra_body={"image": B64})
        b = await client.completions.create(model=NAME, prompt="what does the image describe?",
                                            extra_body={"image": "data:image/png;base64," + B64})  # fmt: skip
        return a, b

    a, b = serve(app, go)
    assert a.choices[0].text == want and b.choices[0].text == want
    assert a.choices[0].finish_reason in ("stop", "length") and a.model == NAME
    n_src = len(tok.encode_source(CAPTION_PROMPT))
    assert a.usage.prompt_tokens == n_src and a.usage.completion_tokens >= 1


def test_text_prompts_n_best_and_overrides(app, loaded):
    model, tok = loaded
    prompts = ['What is the summary of article " chest pain after meals "?', "what is aspirin?"]
    src = right_pad([tok.encode_source(" " + p.lower()) for p in prompts])
    dec = Decoding(**{**DECODING["summarize"].kwargs(), "beam_size": 3, "max_len_b": 6, "len_penalty": 1.0})
    hyps = beam_search(model, src, constraint_range=(4, tok.code_start), **dec.kwargs())
    want = [tok.decode(h.tokens).strip() for per in hyps for h in per[:2]]
    finish = ["length" if len(h.tokens) - 1 >= 6 else "stop" for per in hyps for h in per[:2]]

    async def go(http, client):
        return await client.completions.create(model=NAME, prompt=prompts, n=2, max_tokens=6,
                                               extra_body={"num_beams": 3, "length_penalty": 1.0})  # fmt: skip

    out = serve(app, go)
    assert [c.text for c in out.choices] == want and [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.finish_reason for c in out.choices] == finish


def test_requests_in_parallel_equal_serial(app, loaded):
    model, tok = loaded
    dec = Decoding(**{**DECODING["vqa"].kwargs(), "max_len_b": 5})
    want = generate_text(model, tok, [Record("0", " is it normal?", png_bytes())], dec)[0]

    async def go(http, client):
        calls = [client.completions.create(model=NAME, prompt="Is it normal", max_tokens=5, extra_body={"image": B64})
                 for _ in range(3)]  # fmt: skip
        return await asyncio.gather(*calls)

    assert [r.choices[0].text for r in serve(app, go)] == [want] * 3


def test_models_and_tokenize(app, loaded):
    tok = loaded[1]

    async def go(http, client):
        return (await http.get("/v1/models")).json(), (await http.post("/tokenize", json={"prompt": " a chest"})).json()

    models, toks = serve(app, go)
    assert models["data"][0]["max_model_len"] == 1024
    assert toks["tokens"] == [0, *tok.encode(" a chest"), 2]


BAD = [
    ({"image": base64.b64encode(b"not a picture").decode()}, "the request's image: not an image Pillow can read", None),
    ({"stream": True}, "`stream` is not supported for BiomedGPT", "stream"),
    ({"logprobs": 2}, "`logprobs` is not supported for BiomedGPT", "logprobs"),
    ({"top_k": 5}, "`top_k` is not supported for BiomedGPT", "top_k"),
    ({"prompt": [5, 6, 7]}, "BiomedGPT takes text prompts", "prompt"),
    ({"n": 3, "num_beams": 2}, "n=3 exceeds the beam (2)", "n"),
    ({"prompt": "word " * 1100}, "positions", None),
]


@pytest.mark.parametrize("body, message, param", BAD, ids=[next(iter(b)) for b, _, _ in BAD[:-2]] + ["n", "long"])
def test_bad_requests_are_400(app, body, message, param):
    async def go(http, client):
        return await http.post("/v1/completions", json={"model": NAME, "prompt": "what is it?", **body})

    r = serve(app, go)
    err = r.json()["error"]
    assert r.status_code == 400 and message in err["message"] and err["param"] == param, err


def test_image_to_a_text_model_is_400():
    demo = create_app(*biogpt.load("demo"), model_name="demo")

    async def go(http, client):
        a = await http.post("/v1/completions", json={"model": "demo", "prompt": "Aspirin is", "image": B64})
        b = await http.post("/v1/completions", json={"model": "demo", "prompt": "Aspirin is", "max_tokens": 2})
        return a, b

    a, b = serve(demo, go)
    assert a.status_code == 400 and a.json()["error"]["param"] == "image"
    assert "`demo` is a text-only model; `image` needs a BiomedGPT (OFA) model" in a.json()["error"]["message"]
    assert b.status_code == 200


def test_extract_is_bioGPTs(app):
    async def go(http, client):
        return await http.post("/v1/extract", json={"task": "hoc", "documents": [{"id": "1", "text": "x"}]})

    r = serve(app, go)
    assert r.status_code == 400 and "serves a BiomedGPT model" in r.json()["error"]["message"]
