"""The server's request fields change the output exactly as offline `generate` does with the same setting, over
HTTP (in-process, httpx's ASGI transport), on models whose outputs are not empty; the prompt's echoed
log-probabilities; seeded choices; a failure inside generation (500, and an SSE error frame then [DONE]); 503
while the model loads; and `$BIOGPT_API_KEY`."""

import asyncio
import json
import threading

import pytest
import torch

import biogpt
from biogpt.generation import generate
from biogpt.serve import create_app

from .test_model import ours_from, random_hf
from .test_serve import serve as serve_in_process

EOS = 2


@pytest.fixture(scope="module")
def demo():
    return biogpt.load("demo")


@pytest.fixture(scope="module")
def wordy(demo):
    """A random model of the demo's vocabulary: long, varied continuations, almost never an early end."""
    tok = demo[1]
    hf = random_hf(seed=5, vocab_size=len(tok.pieces), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=160)  # fmt: skip
    return ours_from(hf), tok


def serve(app, fn):
    """test_serve's in-process client, for a `fn(http)` that needs only the raw HTTP one."""
    return serve_in_process(app, lambda http, client: fn(http))


def post_all(app, bodies: list[dict]) -> list[dict]:
    """The JSON answers to these completion requests (each must be a 200)."""

    async def go(http):
        out = []
        for b in bodies:
            r = await http.post("/v1/completions", json={"model": "m", **b})
            assert r.status_code == 200, (b, r.text)
            out.append(r.json())
        return out

    return serve(app, go)


def offline(model, tok, prompt: str, n: int, eos_stops: bool = True, **kw) -> str:
    """The text offline `generate` gives for the prompt alone: the new tokens up to </s> (excluded)."""
    ids = tok.encode(prompt)
    new = generate(model, [ids], max_new_tokens=n, **kw).sequences[0, len(ids) :].tolist()
    if eos_stops and EOS in new:
        new = new[: new.index(EOS)]
    return tok.decode([t for t in new if t not in (EOS, 1)])


PROMPTS = ["The patient", "Aspirin is", "warfarin and bleeding"]


def test_beam_search_and_penalties_give_offline_generate(wordy):
    model, tok = wordy
    cases = [  # (request fields, offline generate's arguments)
        ({"num_beams": 3}, {"num_beams": 3}),
        ({"use_beam_search": True, "num_beams": 4}, {"num_beams": 4}),
        ({"repetition_penalty": 2.5}, {"repetition_penalty": 2.5}),
        ({"repetition_penalty": 0.5}, {"repetition_penalty": 0.5}),
    ]
    bodies = [{"prompt": p, "max_tokens": 12, "temperature": 0, **f} for f, _ in cases for p in PROMPTS]
    got = [r["choices"][0]["text"] for r in post_all(create_app(model, tok, model_name="m"), bodies)]
    want = [offline(model, tok, p, 12, **kw) for _, kw in cases for p in PROMPTS]
    assert got == want
    plain = [offline(model, tok, p, 12) for p in PROMPTS]
    for k in range(len(cases)):  # every setting changed some output: equal texts would prove nothing
        assert want[k * 3 : k * 3 + 3] != plain, cases[k]
    assert all(w.strip() for w in want)


def test_length_penalty_gives_offline_generate(demo):
    """On the demo model, whose beams end at different lengths (on a random model every beam runs to the limit,
    and the penalty changes nothing)."""
    model, tok = demo
    prompts, penalties = ["Cisplatin", "Cisplatin induced", "The drug"], (-2.0, 1.0, 3.0)
    bodies = [{"prompt": p, "max_tokens": 16, "temperature": 0, "num_beams": 4, "length_penalty": lp}
              for lp in penalties for p in prompts]  # fmt: skip
    got = [r["choices"][0]["text"] for r in post_all(create_app(model, tok, model_name="m"), bodies)]
    want = [offline(model, tok, p, 16, num_beams=4, length_penalty=lp) for lp in penalties for p in prompts]
    assert got == want
    assert len({tuple(want[k : k + 3]) for k in (0, 3, 6)}) == 3  # each penalty gave other outputs


def test_stop_ids_min_tokens_and_ignore_eos_give_offline_generate(wordy, demo):
    model, tok = wordy
    ids = tok.encode(PROMPTS[0])
    free = generate(model, [ids], max_new_tokens=12).sequences[0, len(ids) :].tolist()
    stop = free[4]
    (r,) = post_all(create_app(model, tok, model_name="m"),
                    [{"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0, "stop_token_ids": [stop]}])  # fmt: skip
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == tok.decode(free[: free.index(stop)])  # ends before the first stop id
    assert r["usage"]["completion_tokens"] == free.index(stop) + 1

    model, tok = demo  # ends at once after these prompts: what min_tokens and ignore_eos change
    assert offline(model, tok, "The patients", 8) == "" and offline(model, tok, "The patient", 8) == ""
    bodies = [{"prompt": "The patients", "max_tokens": 8, "temperature": 0, "min_tokens": 5},
              {"prompt": "The patient", "max_tokens": 8, "temperature": 0, "ignore_eos": True}]  # fmt: skip
    mt, ie = post_all(create_app(model, tok, model_name="m"), bodies)
    assert mt["choices"][0]["text"] == offline(model, tok, "The patients", 8, min_new_tokens=5) != ""
    assert mt["usage"]["completion_tokens"] >= 5
    # ignore_eos: </s> is an ordinary token (it decodes to nothing); offline, an end id no token has
    ids = tok.encode("The patient")
    new = generate(model, [ids], max_new_tokens=8, eos_token_id=-1).sequences[0, len(ids) :].tolist()
    assert new[0] == EOS and len(new) == 8
    assert ie["choices"][0]["text"] == tok.decode([t for t in new if t != EOS])
    assert ie["usage"]["completion_tokens"] == 8 and ie["choices"][0]["finish_reason"] == "length"


def test_echo_logprobs_are_the_prompts_log_softmax_and_seeded_choices(wordy):
    model, tok = wordy
    ids = tok.encode(PROMPTS[2])
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].double(), -1)
    want = lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    kw = {"prompt": PROMPTS[2], "max_tokens": 10, "temperature": 0.9, "top_p": 0.9, "seed": 77}
    echo, seeded = post_all(create_app(model, tok, model_name="m"),
                            [{"prompt": PROMPTS[2], "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 1},
                             {**kw, "n": 3}])  # fmt: skip
    got = echo["choices"][0]["logprobs"]["token_logprobs"]
    assert got[0] is None and got[1 : len(ids)] == pytest.approx(want, abs=1e-5)
    texts = [c["text"] for c in sorted(seeded["choices"], key=lambda c: c["index"])]
    offline_texts = [offline(model, tok, PROMPTS[2], 10, do_sample=True, temperature=0.9, top_p=0.9, top_k=0,
                             seed=77 + j) for j in range(3)]  # the server's top_k default: none  # fmt: skip
    assert texts == offline_texts and len(set(texts)) == 3


def test_a_failure_inside_generation_is_a_500_and_an_sse_error_frame(wordy):
    model, tok = wordy
    calls = {"n": 0}
    real = type(model).forward

    def failing(self, *a, **kw):  # the prompt's forward passes, then a failure on the third decoding step
        calls["n"] += 1
        if kw.get("last_only") and calls["n"] > 3:
            raise RuntimeError("injected failure")
        return real(self, *a, **kw)

    app = create_app(model, tok, model_name="m")
    body = {"model": "m", "prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0}

    async def go(http):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(model), "forward", failing)
            plain = await http.post("/v1/completions", json=body)
            calls["n"] = 0
            streamed = await http.post("/v1/completions", json={**body, "stream": True})
        return plain, streamed

    plain, streamed = serve(app, go)
    assert plain.status_code == 500, plain.text
    assert plain.json()["error"]["type"] == "server_error"
    frames = [line[len("data: ") :] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]" and "error" in json.loads(frames[-2]), frames
    assert json.loads(frames[-2])["error"]["type"] == "server_error"


def test_503_while_loading_then_served(wordy):
    model, tok = wordy
    release = threading.Event()

    def loader():
        assert release.wait(60)
        return model, tok

    app = create_app(loader=loader, model_name="m")

    async def go(http):
        body = {"model": "m", "prompt": PROMPTS[0], "max_tokens": 2, "temperature": 0}
        early = await http.post("/v1/completions", json=body)
        health = await http.get("/health")
        release.set()
        for _ in range(6000):  # until the loader thread has attached the model
            if (await http.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        return early, health, await http.post("/v1/completions", json=body)

    early, health, late = serve(app, go)
    assert early.status_code == 503 and early.json()["error"]["type"] == "service_unavailable"
    assert "loading" in early.json()["error"]["message"]
    assert health.status_code == 503 and health.json() == {"status": "loading"}
    assert late.status_code == 200 and late.json()["choices"][0]["text"] == offline(model, tok, PROMPTS[0], 2)


def test_api_key_from_the_environment(monkeypatch):
    import biogpt.serve
    import biogpt.serve.server
    from biogpt.cli import main

    seen = {}
    monkeypatch.setattr(biogpt.serve, "create_app", lambda **kw: seen.update(kw) or "app")
    monkeypatch.setattr(biogpt.serve.server, "run", lambda app, *a: None)
    monkeypatch.setenv("BIOGPT_API_KEY", "from-env")
    assert main(["serve"]) == 0 and seen["api_key"] == "from-env"
    assert main(["serve", "--api-key", "given"]) == 0 and seen["api_key"] == "given"
    monkeypatch.delenv("BIOGPT_API_KEY")
    assert main(["serve"]) == 0 and seen["api_key"] is None
