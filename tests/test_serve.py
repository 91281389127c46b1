"""`biogpt serve` with real clients: the official `openai` client in-process (httpx's ASGI transport) for the API,
raw httpx for the error statuses, and a real uvicorn subprocess on 127.0.0.1 for client disconnects and the
SIGTERM drain. Expected texts come from offline `generate` on the demo model (exact to transformers)."""

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

import biogpt
from biogpt.generation import generate
from biogpt.generation.regex import NFA, RegexError
from biogpt.generation.scheduler import HOLD_ENV
from biogpt.mining import Extractor
from biogpt.mining.linking import default_linker
from biogpt.mining.readers import Document, Passage, title_abstract
from biogpt.mining.writers import bioc_document, jsonl_line, pubtator_document
from biogpt.serve import create_app

NAME = "demo"
PROMPT = "Aspirin is"
LONG = "The patient"


@pytest.fixture(scope="module")
def demo():
    return biogpt.load("demo")


def greedy_text(demo, prompt: str, n: int) -> tuple[str, list[int], str]:
    """(text, new ids, finish_reason) of offline greedy generate for the prompt alone."""
    model, tok = demo
    ids = tok.encode(prompt)
    new = generate(model, [ids], max_new_tokens=n).sequences[0, len(ids) :].tolist()
    if 2 in new:
        return tok.decode(new[: new.index(2)]), new[: new.index(2) + 1], "stop"
    return tok.decode(new), new, "length"


def serve(app, fn, key: str = "none"):
    """Run `await fn(http, client)` against the app in-process, its lifespan (scheduler thread) around it."""

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                client = openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, max_retries=0,
                                            http_client=httpx.AsyncClient(transport=transport))  # fmt: skip
                return await fn(http, client)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def app(demo):
    return create_app(*demo, model_name=NAME)


def test_completion_equals_offline_greedy_and_usage(app, demo):
    text, new, finish = greedy_text(demo, PROMPT, 24)
    text2, new2, finish2 = greedy_text(demo, "The patient", 7)

    async def go(http, client):
        one = await client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0)
        two = await client.completions.create(model=NAME, prompt=[PROMPT, "The patient"], max_tokens=7,
                                              temperature=0)  # fmt: skip
        ids = demo[1].encode(PROMPT)
        as_ids = await client.completions.create(model=NAME, prompt=ids, max_tokens=24, temperature=0)
        return one, two, as_ids

    one, two, as_ids = serve(app, go)
    assert one.choices[0].text == text and one.choices[0].finish_reason == finish
    assert as_ids.choices[0].text == text
    n_prompt = len(demo[1].encode(PROMPT))
    assert (one.usage.prompt_tokens, one.usage.completion_tokens) == (n_prompt, len(new))
    assert one.usage.total_tokens == n_prompt + len(new)
    short, _, short_finish = greedy_text(demo, PROMPT, 7)
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.text for c in two.choices] == [short, text2]
    assert two.choices[1].finish_reason == finish2
    assert one.object == "text_completion" and one.model == NAME and one.id.startswith("cmpl-")


def test_streaming_adds_up_to_the_completion(app, demo):
    text, new, finish = greedy_text(demo, PROMPT, 24)

    async def go(http, client):
        chunks = []
        stream = await client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})  # fmt: skip
        async for c in stream:
            chunks.append(c)
        body = {"model": NAME, "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stream": True, "ignore_eos": True}
        raw = await http.post("/v1/completions", json=body)
        return chunks, raw

    chunks, raw = serve(app, go)
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(new)
    assert raw.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in raw.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames) and frames[-1] == "data: [DONE]"
    assert len(frames) > 2  # it streamed as tokens came (a frame may carry several when the loop falls behind)
    assert json.loads(frames[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_logprobs_echo_and_n_with_seeds(app, demo):
    model, tok = demo
    ids = tok.encode(PROMPT)
    out = generate(model, [ids], max_new_tokens=6, output_logprobs=True)
    new = out.sequences[0, len(ids) :].tolist()

    async def go(http, client):
        lp = await client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
        echo = await client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0, echo=True,
                                               logprobs=1)  # fmt: skip
        kw = dict(model=NAME, prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.95, n=3, seed=1234)
        a = await client.completions.create(**kw)
        b = await client.completions.create(**kw)
        c = await client.completions.create(**{**kw, "seed": 99})
        return lp, echo, a, b, c

    lp, echo, a, b, c = serve(app, go)
    n = new.index(2) + 1 if 2 in new else len(new)
    block = lp.choices[0].logprobs
    assert len(block.tokens) == len(block.token_logprobs) == len(block.top_logprobs) == n
    for got, ref in zip(block.token_logprobs, out.logprobs[0, :n].tolist()):
        assert abs(got - ref) <= 1e-5
    for top, chosen in zip(block.top_logprobs, block.token_logprobs):  # greedy: the chosen token is the top one
        assert len(top) <= 3 and abs(max(top.values()) - chosen) <= 1e-6
    assert echo.choices[0].text == PROMPT + lp.choices[0].text
    eb = echo.choices[0].logprobs
    assert len(eb.tokens) == len(ids) + n and eb.token_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0 for x in eb.token_logprobs[1:])
    texts = [x.text for x in a.choices]
    assert [x.text for x in b.choices] == texts  # same seed, same texts
    assert [x.text for x in c.choices] != texts
    assert len(set(texts)) > 1  # the n choices are seeded apart


@pytest.fixture(scope="module")
def wordy(demo):
    """A random model with the demo's vocabulary: its greedy continuations are words, never an early end
    (the small demo model often ends at once)."""
    from biogpt.models.biogpt import BioGPT, BioGPTConfig

    m = BioGPT(BioGPTConfig(vocab_size=demo[0].config.vocab_size, n_layer=1, d_model=32, n_head=2, d_ffn=64))
    m.init_weights(seed=0)
    return m.eval(), demo[1]


def test_stop_strings_and_stop_ids(wordy):
    app = create_app(*wordy, model_name=NAME)
    text, new, _ = greedy_text(wordy, LONG, 24)
    words = text.split()
    assert len(words) >= 3 and 2 not in new[:3], text
    stop = " " + words[2]

    async def go(http, client):
        s = await client.completions.create(model=NAME, prompt=LONG, max_tokens=24, temperature=0,
                                            stop=["zzzz", stop])  # fmt: skip
        i = await client.completions.create(model=NAME, prompt=LONG, max_tokens=24, temperature=0,
                                            extra_body={"stop_token_ids": [new[2]]})  # fmt: skip
        return s, i

    s, i = serve(app, go)
    assert s.choices[0].text == text[: text.index(stop)] and s.choices[0].finish_reason == "stop"
    assert i.choices[0].finish_reason == "stop"
    assert i.usage.completion_tokens == new.index(new[2]) + 1


def test_structured_choice_and_regex(app):
    choices = ["yes", "no", "maybe"]
    pattern = r"[0-9]+ (mg|ml)"

    async def go(http, client):
        c = await client.completions.create(model=NAME, prompt="Does aspirin help?", max_tokens=5, temperature=0,
                                            extra_body={"structured_outputs": {"choice": choices}})  # fmt: skip
        r = await client.completions.create(model=NAME, prompt="The dose was", max_tokens=10, temperature=0.7,
                                            seed=3, extra_body={"structured_outputs": {"regex": pattern}})  # fmt: skip
        return c, r

    c, r = serve(app, go)
    assert c.choices[0].text in choices and c.choices[0].finish_reason == "stop"
    assert re.fullmatch(pattern, r.choices[0].text), r.choices[0].text
    assert r.choices[0].finish_reason == "stop"


def test_regex_never_ends_on_a_word_no_match_can_follow(app):
    """`[a-z]*b` after "Aspirin is": a token ending a word ("...pty") is followed by a space the pattern cannot
    take, so it is not allowed; a greedy answer that stops matches (it used to end "emempty" + </s>)."""

    async def go(http, client):
        return await client.completions.create(model=NAME, prompt="Aspirin is", max_tokens=12, temperature=0,
                                               extra_body={"structured_outputs": {"regex": "[a-z]*b"}})  # fmt: skip

    r = serve(app, go).choices[0]
    assert r.finish_reason == "length" or re.fullmatch("[a-z]*b", r.text), (r.text, r.finish_reason)
    assert " " not in r.text


def test_regex_compiler_agrees_with_re():
    patterns = [r"a|b", r"(ab)+c?", r"[a-z]{2,4}", r"\d+(\.\d+)?", r"(?:yes|no|maybe)", r"x*y+", r"[^0-9 ]{3}",
                r"^a.c$", r"(a|bc){0,3}d", r"\w+ \w+", r"colou?r", r"[a\-c]\s\S"]  # fmt: skip
    rng = random.Random(0)
    alphabet = "abcdxy019. _-\t"
    for p in patterns:
        nfa = NFA(p)
        for _ in range(1500):
            t = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 7)))
            assert nfa.matches(t) == bool(re.fullmatch(p, t)), (p, t)
    for bad in ["a(b", "a)", "*a", r"\1", "a{3,1}", "(?=x)", "a+?", "[b-a]", "[abc", "a^b", r"\bword"]:
        with pytest.raises(RegexError, match="regex"):
            NFA(bad)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    return body["error"]


def test_error_statuses(demo):
    app = create_app(*demo, model_name=NAME, api_key="s3cret", max_queue=1, max_body=4096)
    base = {"model": NAME, "prompt": PROMPT, "max_tokens": 2}

    async def go(http, client):
        auth = {"Authorization": "Bearer s3cret"}
        post = lambda body, **kw: http.post("/v1/completions", json=body, headers=kw.get("headers", auth))  # noqa: E731
        out = {
            "ok": await post(base),
            "no key": await post(base, headers={}),
            "wrong key": await post(base, headers={"Authorization": "Bearer s3cret!"}),
            "unknown field": await post({**base, "frobnicate": 1}),
            "bad type": await post({**base, "max_tokens": "many"}),
            "too long": await post({**base, "max_tokens": 1021}),  # 4 prompt tokens + 1021 > 1024
            "bad regex": await post({**base, "structured_outputs": {"regex": "(a"}}),
            "empty choice": await post({**base, "structured_outputs": {"choice": []}}),
            "bad id": await post({**base, "prompt": [2, 10**7]}),
            "unknown model": await post({**base, "model": "gpt-4"}),
            "queue full": await post({**base, "n": 2}),
            "too large": await http.post("/v1/completions", content=b"x" * 5000, headers=auth),
            "no route": await http.get("/v2/nothing", headers=auth),
            "chat": await http.post("/v1/chat/completions", json={"model": NAME, "messages": []}, headers=auth),
            "health": await http.get("/health"),
        }
        try:
            await client.completions.create(model="gpt-4", prompt="x")
        except openai.NotFoundError as e:
            out["client"] = e
        app.state.biogpt.draining = True
        out["draining"] = await post(base)
        out["health draining"] = await http.get("/health")
        app.state.biogpt.draining = False
        return out

    out = serve(app, go, key="s3cret")
    assert out["ok"].status_code == 200 and out["health"].status_code == 200
    assert "API key" in error_of(out["no key"], 401)["message"]
    error_of(out["wrong key"], 401)
    e = error_of(out["unknown field"], 400)
    assert (e["message"], e["param"]) == ("unknown field 'frobnicate'", "frobnicate")
    assert error_of(out["bad type"], 400)["param"] == "max_tokens"
    assert "exceeds the model's context of 1024 tokens" in error_of(out["too long"], 400)["message"]
    assert "missing ')'" in error_of(out["bad regex"], 400)["message"]
    assert "empty" in error_of(out["empty choice"], 400)["message"]
    assert "outside the vocabulary" in error_of(out["bad id"], 400)["message"]
    assert error_of(out["unknown model"], 404)["param"] == "model"
    assert error_of(out["queue full"], 429)["type"] == "rate_limit_error"
    assert out["queue full"].headers["retry-after"] == "1"
    assert "4096 bytes" in error_of(out["too large"], 413)["message"]
    error_of(out["no route"], 404)
    assert "/v1/completions" in error_of(out["chat"], 400)["message"]
    assert out["client"].status_code == 404
    error_of(out["draining"], 503)
    assert out["health draining"].status_code == 503 and out["health draining"].json() == {"status": "draining"}


def test_models_health_tokenize_detokenize_metrics(app, demo):
    tok = demo[1]

    async def go(http, client):
        models = await client.models.list()
        t = await http.post("/tokenize", json={"prompt": PROMPT})
        d = await http.post("/detokenize", json={"tokens": t.json()["tokens"]})
        await http.post("/v1/completions", json={"model": NAME, "prompt": PROMPT, "max_tokens": 3})
        await http.post("/tokenize", json={"prompt": PROMPT, "nope": 1})
        m = await http.get("/metrics")
        return models, t, d, m, await http.get("/health")

    models, t, d, m, health = serve(app, go)
    assert [x.id for x in models.data] == [NAME]
    assert t.json() == {"tokens": tok.encode(PROMPT), "count": len(tok.encode(PROMPT)), "max_model_len": 1024}
    assert d.json() == {"prompt": PROMPT}
    assert health.json() == {"status": "ok"}
    text = m.text
    assert re.search(r'^biogpt_requests_total\{route="/v1/completions",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^biogpt_requests_total\{route="/tokenize",status="400"\} 1$', text, re.M)
    for name in ("biogpt_queue_length", "biogpt_running_batch_size", "biogpt_prompt_tokens_total",
                 "biogpt_generation_tokens_total", "biogpt_time_to_first_token_seconds_bucket",
                 "biogpt_time_per_output_token_seconds_count"):  # fmt: skip
        assert re.search(rf"^{name}\b", text, re.M), name
    count = int(re.search(r"^biogpt_time_to_first_token_seconds_count (\d+)$", text, re.M)[1])
    assert count >= 1


@pytest.mark.slow
def test_extract_is_the_mining_pipeline(app, demo):
    model, tok = demo
    docs = [
        {"id": "d1", "title": "Aspirin and bleeding.", "abstract": "Aspirin induced gastric bleeding in rats."},
        {"id": "d2", "text": "Cisplatin caused nephrotoxicity in two patients."},
    ]
    ref_docs = [title_abstract("d1", docs[0]["title"], docs[0]["abstract"]),
                Document("d2", [Passage("text", 0, docs[1]["text"])])]  # fmt: skip
    ref = Extractor(model, tok, "bc5cdr", grounded=True, model_info={"name": NAME},
                    linker=default_linker("bc5cdr")).extract(ref_docs)  # fmt: skip

    async def go(http, client):
        out = {}
        for fmt in ("jsonl", "bioc_json", "pubtator"):
            out[fmt] = await http.post("/v1/extract", json={"task": "bc5cdr", "documents": docs, "grounded": True,
                                                            "format": fmt})  # fmt: skip
        out["bad"] = await http.post("/v1/extract", json={"task": "ner", "documents": docs})
        out["empty"] = await http.post("/v1/extract", json={"task": "bc5cdr", "documents": [{"id": "x"}]})
        return out

    out = serve(app, go)
    body = out["jsonl"].json()
    assert body["records"] == ref
    assert body["data"] == "".join(jsonl_line(r) for r in ref)
    assert out["bioc_json"].json()["data"] == [bioc_document(r) for r in ref]
    assert out["pubtator"].json()["data"] == "".join(pubtator_document(r) for r in ref)
    assert error_of(out["bad"], 400)["param"] == "task"
    assert "no text" in error_of(out["empty"], 400)["message"]


# --- a real server ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start_server():
    """Starts `biogpt serve` (demo model) in a subprocess on a free loopback port: (base url, process)."""
    procs = []

    def start(*extra: str, hold: str | None = None):
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if hold is not None:  # N:PATH: requests stop at their N-th token while PATH exists (scheduler's hold point)
            env[HOLD_ENV] = hold
        cmd = [sys.executable, "-m", "biogpt.cli", "serve", "--port", str(port), "--threads", "1", "--log-level",
               "warning", *extra]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # a guard against a hang, far above any machine's start-up
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url, proc
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def metric(url: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", httpx.get(f"{url}/metrics").text, re.M)[1])


def wait_for(check, what: str) -> None:
    """Poll until check() holds: the wait is for an event; the bound only stops a hung test."""
    for _ in range(30000):
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def held(tmp_path, n: int) -> tuple[str, Path]:
    """The hold point's setting and file: requests stop at their n-th token until the file is removed."""
    gate = tmp_path / "hold"
    gate.touch()
    return f"{n}:{gate}", gate


@pytest.mark.slow
def test_real_server_streaming_and_disconnect_frees_the_row(start_server, demo, tmp_path):
    setting, gate = held(tmp_path, 5)
    url, _ = start_server(hold=setting)
    text, _, _ = greedy_text(demo, PROMPT, 4)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    stream = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=4, temperature=0, stream=True)
    got = "".join(c.choices[0].text for c in stream if c.choices)
    assert got == text  # 4 tokens: below the hold point
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True, "stream": True}
    before = metric(url, "biogpt_generation_tokens_total")
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
        lines = r.iter_lines()
        seen = [line for line in (next(lines) for _ in range(6)) if line.startswith("data: ")]
        assert len(seen) >= 2 and metric(url, "biogpt_running_batch_size") == 1
        # held at its 5th token: it cannot finish while the client is here, however fast the machine
        wait_for(lambda: metric(url, "biogpt_generation_tokens_total") - before == 5, "5 tokens generated")
    wait_for(lambda: metric(url, "biogpt_running_batch_size") == 0, "the disconnected client's row freed")
    gate.unlink()  # let everything run: a cancelled sequence that still ran would now add tokens
    short = {"model": NAME, "prompt": PROMPT, "max_tokens": 3, "ignore_eos": True}
    assert httpx.post(f"{url}/v1/completions", json=short, timeout=600).json()["usage"]["completion_tokens"] == 3
    assert metric(url, "biogpt_generation_tokens_total") - before == 5 + 3  # nothing more after the cancel


def stream_in_thread(url: str, body: dict) -> tuple[threading.Thread, list[str], threading.Event]:
    frames: list[str] = []
    first = threading.Event()

    def consume():
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    first.set()

    t = threading.Thread(target=consume)
    t.start()
    return t, frames, first


@pytest.mark.slow
def test_sigterm_drains_then_exits_zero(start_server, tmp_path):
    setting, gate = held(tmp_path, 5)
    url, proc = start_server("--shutdown-timeout", "600", hold=setting)
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 20, "ignore_eos": True, "stream": True}
    t, frames, first = stream_in_thread(url, body)
    assert first.wait(600)  # running, and held at its 5th token until the gate goes
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{url}/health").status_code != 200, "the signal handled")
    health = httpx.get(f"{url}/health")
    refused = httpx.post(f"{url}/v1/completions", json={"model": NAME, "prompt": PROMPT})
    assert t.is_alive()  # still streaming while the server drains
    gate.unlink()
    t.join(600)
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert refused.status_code == 503 and refused.json()["error"]["code"] == 503
    assert frames[-1] == "[DONE]"
    last = json.loads(frames[-2])
    assert last["choices"][0]["finish_reason"] == "length"  # the running request finished
    assert sum(len(json.loads(f)["choices"]) for f in frames[:-1]) >= 2
    assert proc.wait(600) == 0


@pytest.mark.slow
def test_shutdown_timeout_cancels_with_an_error_frame(start_server, tmp_path):
    setting, _ = held(tmp_path, 5)  # never released: the request cannot finish within any shutdown timeout
    url, proc = start_server("--shutdown-timeout", "0.5", hold=setting)
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 1000, "ignore_eos": True, "stream": True}
    t, frames, first = stream_in_thread(url, body)
    assert first.wait(600)
    proc.send_signal(signal.SIGTERM)
    t.join(600)
    assert frames[-1] == "[DONE]"
    err = json.loads(frames[-2])["error"]
    assert err["code"] == 503 and "shut down" in err["message"]
    assert proc.wait(600) == 0


@pytest.mark.slow
def test_a_model_that_fails_to_load_stops_the_server(tmp_path):
    missing = tmp_path / "no-model"
    cmd = [sys.executable, "-m", "biogpt.cli", "serve", "--model", str(missing), "--port", str(free_port()),
           "--log-level", "critical"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {missing}: the model failed to load (") and last.endswith("the server stopped")


def test_cli_options_are_checked_before_loading(capsys):
    from biogpt.cli import main

    assert main(["serve", "--max-concurrency", "0"]) == 2
    assert "--max-concurrency: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 127.0.0.1)" in out and "after SIGTERM (default: 30.0)" in out


def test_a_gpt2_family_model_is_served(tmp_path):
    """BioMedLM's family through the same server: greedy completions equal offline generate with
    <|endoftext|> as eos/pad, a choice constraint over byte-level tokens, PubMedQA extraction, and a 400 for
    regex (BioGPT's tokenizer only)."""
    from .test_gpt2 import hf_dir

    hf_dir(tmp_path / "gpt2")
    model, tok = biogpt.load(tmp_path / "gpt2")
    eos = tok.eos_token_id
    prompts = ["the patient", "aspirin reduces"]
    offline = []
    for p in prompts:
        ids = tok.encode(p)
        new = generate(model, [ids], max_new_tokens=12, eos_token_id=eos, pad_token_id=eos).sequences[0, len(ids) :]
        new = new.tolist()
        offline.append(tok.decode(new[: new.index(eos)] if eos in new else new))
    app = create_app(model, tok, model_name="gpt2")

    async def go(http, client):
        got = await client.completions.create(model="gpt2", prompt=prompts, max_tokens=12, temperature=0)
        yes_no = {"structured_outputs": {"choice": ["yes", "no"]}}
        choice = await client.completions.create(model="gpt2", prompt="is it", max_tokens=8, temperature=0,
                                                 extra_body=yes_no)  # fmt: skip
        regex = await http.post("/v1/completions", json={"model": "gpt2", "prompt": "x", "max_tokens": 4,
                                                         "structured_outputs": {"regex": "a+"}})  # fmt: skip
        tokens = (await http.post("/tokenize", json={"model": "gpt2", "prompt": "the patient"})).json()
        lp = await client.completions.create(model="gpt2", prompt=prompts[0], max_tokens=4, temperature=0, logprobs=2)
        ex = await http.post("/v1/extract", json={"model": "gpt2", "task": "pubmedqa", "documents": [
            {"id": "1", "text": "aspirin reduces pain.", "question": "does aspirin reduce pain?"}]})  # fmt: skip
        bad = await http.post("/v1/extract", json={"model": "gpt2", "task": "bc5cdr",
                                                   "documents": [{"id": "1", "text": "aspirin"}]})  # fmt: skip
        return got, choice, regex, tokens, ex, bad, lp

    got, choice, regex, tokens, ex, bad, lp = serve(app, go)
    assert "".join(lp.choices[0].logprobs.tokens) == lp.choices[0].text and len(lp.choices[0].logprobs.tokens) == 4
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == offline
    assert choice.choices[0].text in ("yes", "no")
    assert regex.status_code == 400 and "choice" in regex.json()["error"]["message"]
    assert tokens["tokens"] == tok.encode("the patient")
    assert ex.status_code == 200 and ex.json()["records"][0]["answer"]["text"] in ("yes", "no", "maybe")
    assert bad.status_code == 400 and "pubmedqa" in bad.json()["error"]["message"]


def test_merged_stream_deltas_keep_each_tokens_text_offset():
    """When the event loop falls behind, several deltas of a sequence go out in one frame: each token keeps the
    offset of the text its own delta began at, as separate frames would give it (not the frame's start)."""
    from biogpt.generation.scheduler import Delta
    from biogpt.serve.completions import coalesced

    class S:
        def __init__(self, id_):
            self.id = id_

    a, b = S(1), S(2)

    async def go():
        q = asyncio.Queue()
        for seq, d in [(a, Delta(text=" Aspirin", tokens=[5])), (b, Delta(text="x", tokens=[9])),
                       (a, Delta(text="", tokens=[6, 7])), (a, Delta(text=" is", tokens=[8], finish_reason="stop"))]:
            q.put_nowait((seq, d))
        return await coalesced(q)

    (sa, da, ra), (sb, db, rb) = asyncio.run(go())
    assert (sa, da.text, da.tokens, ra, da.finish_reason) == (a, " Aspirin is", [5, 6, 7, 8], [0, 8, 8, 8], "stop")
    assert (sb, db.text, db.tokens, rb) == (b, "x", [9], [0])
