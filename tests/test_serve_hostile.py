"""A hostile client against `biogpt serve`: every request ends in bounded time in a 200 or an OpenAI error
envelope, and nobody else notices. In-process (httpx's ASGI transport) for each limit and error path; then
the proof against a real uvicorn subprocess: hostile requests fired a few at a time while a prober polls
/health and a normal client asks for short completions. Expected texts come from offline greedy `generate`
on the demo model (exact to transformers)."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import biogpt
from biogpt.cli import main
from biogpt.generation import SamplingParams, Scheduler, generate
from biogpt.serve import create_app
from biogpt.serve.middleware import INTERNAL
from biogpt.serve.protocol import MAX_EXTRACT_DOCS, MAX_STOP, MAX_STOP_CHARS
from biogpt.text.fastbpe import MAX_WORD

from .test_model import CONFIGS, ours_from, random_hf

NAME = "demo"
PROMPT = "Aspirin is"


@pytest.fixture(scope="module")
def demo():
    return biogpt.load("demo")


def greedy_text(demo, prompt: str, n: int) -> str:
    model, tok = demo
    ids = tok.encode(prompt)
    new = generate(model, [ids], max_new_tokens=n).sequences[0, len(ids) :].tolist()
    return tok.decode(new[: new.index(2)] if 2 in new else new)


def serve(app, fn):
    """Run `await fn(http)` against the app in-process, its lifespan (scheduler thread) around it; an exception
    in the app becomes its response, as under uvicorn."""

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
                return await fn(http)

    return asyncio.run(go())


def envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def body(**kw) -> dict:
    return {"model": NAME, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, **kw}


# --- limits and error paths, in-process ----------------------------------------------------------------------


def test_request_limits_are_400s_that_name_them(demo):
    app = create_app(*demo, model_name=NAME, max_queue=8, max_body=4 << 20)
    letters = "a" * 900_000

    async def go(http):
        post = http.post
        return {
            "seed": await post("/v1/completions", json=body(seed=1 << 64)),
            "seed_neg": await post("/v1/completions", json=body(seed=-(1 << 70))),
            "nan": await post("/v1/completions", content=json.dumps(body(temperature=float("nan"))),
                              headers={"content-type": "application/json"}),  # fmt: skip
            "inf": await post("/v1/completions", content=json.dumps(body(repetition_penalty=float("inf"))),
                              headers={"content-type": "application/json"}),  # fmt: skip
            "stops": await post("/v1/completions", json=body(stop=[f"s{i}" for i in range(MAX_STOP + 1)])),
            "stop_long": await post("/v1/completions", json=body(stop="x" * 500_000)),
            "stop_ids": await post("/v1/completions", json=body(stop_token_ids=[5] * 100_000)),
            "many": await post("/v1/completions", json=body(prompt=["a"] * 5, n=2)),
            "long": await post("/v1/completions", json=body(prompt=letters)),
            "surrogate": await post("/v1/completions", content=b'{"model": "demo", "prompt": "a \\ud800 b"}',
                                    headers={"content-type": "application/json"}),  # fmt: skip
            "pair": await post("/v1/completions", content=b'{"model": "demo", "prompt": "a \\ud83d\\ude00", '
                                                          b'"max_tokens": 1, "echo": true}',
                               headers={"content-type": "application/json"}),  # fmt: skip
            "nested": await post("/v1/completions", content=b"[" * 200_000 + b"]" * 200_000,
                                 headers={"content-type": "application/json"}),  # fmt: skip
            "docs": await post("/v1/extract", json={"task": "bc5cdr", "documents": [
                {"id": str(i), "text": "x"} for i in range(MAX_EXTRACT_DOCS + 1)]}),  # fmt: skip
            "chars": await post("/v1/extract", json={"task": "bc5cdr", "documents": [
                {"id": "1", "text": "word " * 300_000}]}),  # fmt: skip
        }

    out = serve(app, go)
    assert envelope(out["seed"], 400)["param"] == "seed" and envelope(out["seed_neg"], 400)["param"] == "seed"
    assert envelope(out["nan"], 400)["param"] == "temperature"
    assert envelope(out["inf"], 400)["param"] == "repetition_penalty"
    assert f"at most {MAX_STOP} stop strings" in envelope(out["stops"], 400)["message"]
    assert f"{MAX_STOP_CHARS} characters" in envelope(out["stop_long"], 400)["message"]
    assert envelope(out["stop_ids"], 400)["param"] == "stop_token_ids"
    assert "queues at most 8" in envelope(out["many"], 429)["message"]
    assert "context of 1024 tokens" in envelope(out["long"], 400)["message"]
    assert "lone surrogate" in envelope(out["surrogate"], 400)["message"]
    assert out["pair"].status_code == 200 and out["pair"].json()["choices"][0]["text"].startswith("a \U0001f600")
    envelope(out["nested"], 400)
    assert f"send at most {MAX_EXTRACT_DOCS}" in envelope(out["docs"], 400)["message"]
    assert "characters" in envelope(out["chars"], 400)["message"]


def test_extraction_documents_count_against_the_queue(demo):
    app = create_app(*demo, model_name=NAME, max_queue=3)
    docs = [{"id": str(i), "text": "Aspirin caused bleeding."} for i in range(4)]

    async def go(http):
        return await http.post("/v1/extract", json={"task": "bc5cdr", "documents": docs})

    err = envelope(serve(app, go), 429)
    assert "queue is full" in err["message"] and err["type"] == "rate_limit_error"


def test_an_extraction_runs_in_batches_and_stops_when_its_client_goes_away(demo, monkeypatch):
    import biogpt.serve.extraction as app_module

    calls = []

    class Counting(app_module.Extractor):
        def extract(self, docs):
            calls.append(len(docs))
            return super().extract(docs)

    monkeypatch.setattr(app_module, "Extractor", Counting)
    app = create_app(*demo, model_name=NAME)
    docs = [{"id": str(i), "text": "Aspirin caused bleeding."} for i in range(20)]
    raw = json.dumps({"task": "bc5cdr", "documents": docs}).encode()
    sent = []

    async def gone():  # the client sends its body and goes away at once
        async with app.router.lifespan_context(app):
            msgs = [{"type": "http.request", "body": raw, "more_body": False}]

            async def receive():
                return msgs.pop(0) if msgs else {"type": "http.disconnect"}

            async def send(m):
                sent.append(m)

            scope = {"type": "http", "method": "POST", "path": "/v1/extract", "query_string": b"",
                     "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
                     "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": "",
                     "asgi": {"version": "3.0"}}  # fmt: skip
            await app(scope, receive, send)

    asyncio.run(gone())
    assert sent[0]["status"] == 499 and calls == []

    async def stays(http):
        return await http.post("/v1/extract", json={"task": "bc5cdr", "documents": docs})

    r = serve(app, stays)
    assert r.status_code == 200 and [x["id"] for x in r.json()["records"]] == [d["id"] for d in docs]
    assert calls == [8, 8, 4]  # one batch per scheduler call: other requests decode in between


class Exploding:
    """A tokenizer whose pieces fail: the logprobs path raises an unexpected error with a path in it."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        if name == "pieces":
            raise RuntimeError("/secret/path/to/something broke")
        return getattr(self._tok, name)


def test_an_unexpected_error_is_the_envelope_and_a_stream_ends_with_an_error_frame(demo):
    app = create_app(*demo, model_name=NAME)

    async def go(http):
        app.state.biogpt.tok = Exploding(app.state.biogpt.tok)
        plain = await http.post("/v1/completions", json=body(logprobs=1))
        streamed = await http.post("/v1/completions", json=body(logprobs=1, stream=True))
        return plain, streamed

    plain, streamed = serve(app, go)
    err = envelope(plain, 500)
    assert err["message"] == INTERNAL and "secret" not in plain.text and "Traceback" not in plain.text
    frames = [x[6:] for x in streamed.text.split("\n\n") if x.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2]) == {"error": {"message": INTERNAL, "type": "server_error", "param": None,
                                                "code": 500}}  # fmt: skip
    assert "secret" not in streamed.text


def test_tiny_temperature_and_a_choice_under_min_tokens_answer(demo):
    app = create_app(*demo, model_name=NAME)
    want = greedy_text(demo, PROMPT, 6)

    async def go(http):
        tiny = await http.post("/v1/completions", json=body(max_tokens=6, temperature=1e-40, seed=3))
        pen = await http.post("/v1/completions", json=body(temperature=1e-30, repetition_penalty=1e-30))
        choice = await http.post("/v1/completions", json=body(max_tokens=8, temperature=0.8, min_tokens=6,
                                                              structured_outputs={"choice": ["yes"]}))  # fmt: skip
        return tiny, pen, choice

    tiny, pen, choice = serve(app, go)
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["text"] == want
    assert pen.status_code == 200 and pen.json()["choices"][0]["finish_reason"] == "length"
    assert choice.status_code == 200
    assert choice.json()["choices"][0]["text"] == "yes" and choice.json()["choices"][0]["finish_reason"] == "stop"


def test_echo_logprobs_stream_like_the_plain_answer_and_offsets_are_the_decoded_lengths(demo):
    _, tok = demo
    app = create_app(*demo, model_name=NAME)
    prompt = "Aspirin (acetylsalicylic acid) inhibits COX-1 & COX-2, i.e. prostaglandin synthesis."
    req = body(prompt=prompt, echo=True, logprobs=2, max_tokens=5)

    async def go(http):
        return await http.post("/v1/completions", json=req), await http.post("/v1/completions", json=req | {
            "stream": True})

    plain, streamed = serve(app, go)
    lp = plain.json()["choices"][0]["logprobs"]
    ids = tok.encode(prompt)
    n = len(ids)
    assert lp["text_offset"][:n] == [len(tok.decode(ids[:i])) for i in range(n)]
    assert lp["token_logprobs"][0] is None and all(isinstance(x, float) for x in lp["token_logprobs"][1:])
    frames = [json.loads(x[6:]) for x in streamed.text.split("\n\n") if x.startswith("data: {")]
    first = frames[0]["choices"][0]
    assert first["text"] == prompt
    assert first["logprobs"]["token_logprobs"] == pytest.approx(lp["token_logprobs"][:n], abs=1e-4)
    assert first["logprobs"]["text_offset"] == lp["text_offset"][:n]


def test_an_empty_api_key_is_refused(capsys, monkeypatch):
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(model_name=NAME, loader=lambda: None, api_key="")
    assert main(["serve", "--api-key", ""]) == 2
    assert capsys.readouterr().err.startswith("error: --api-key is empty")
    monkeypatch.setenv("BIOGPT_API_KEY", " ")
    assert main(["serve"]) == 2
    assert "$BIOGPT_API_KEY is empty" in capsys.readouterr().err


def test_long_words_are_cut_the_same_way_offline_and_served(demo):
    _, tok = demo
    word = "x" + "ab" * 1500  # a merge straddles every MAX_WORD boundary
    parts = [word[i : i + MAX_WORD] for i in range(0, len(word), MAX_WORD)]
    want = [p for k, part in enumerate(parts) for p in tok.bpe._apply(part, k == len(parts) - 1)]
    assert tok.bpe(word) == want
    app = create_app(*demo, model_name=NAME)

    async def go(http):
        return await http.post("/tokenize", json={"prompt": f"The {word} here."})

    assert serve(app, go).json()["tokens"] == tok.encode(f"The {word} here.")


def test_a_biomedgpt_request_takes_at_most_max_ofa_prompts(tmp_path):
    from biogpt.checkpoints.ofa import save_ofa
    from biogpt.serve.protocol import MAX_OFA_PROMPTS
    from biogpt.text.ofa import OFATokenizer

    from .test_ofa_cli import BPE, tiny_ofa

    save_ofa(tiny_ofa(seed=5), OFATokenizer.from_pretrained(BPE), tmp_path)
    app = create_app(*biogpt.load(tmp_path), model_name="ofa")

    async def go(http):
        many = {"model": "ofa", "prompt": ["what is it?"] * (MAX_OFA_PROMPTS + 1), "max_tokens": 2}
        return await http.post("/v1/completions", json=many)

    err = envelope(serve(app, go), 400)
    assert err["param"] == "prompt" and f"at most {MAX_OFA_PROMPTS}" in err["message"]


def test_tokenizer_caches_are_bounded_by_characters(demo, monkeypatch):
    import biogpt.text.fastbpe as fastbpe
    from biogpt.text.tokenizer import Tokenizer

    monkeypatch.setattr(fastbpe, "_CACHE_CHARS", 10_000)
    tok = Tokenizer(demo[1].vocab)
    words = [f"w{i}x" * 40 for i in range(200)]  # 200 distinct 160-character chunks: ~64k characters cached
    ids = tok.encode(" ".join(words))
    assert 0 < tok._cache.chars <= 10_000 and 0 < tok.bpe.cache.chars <= 10_000
    assert ids == demo[1].encode(" ".join(words))  # emptied caches change nothing


# --- the scheduler ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return ours_from(random_hf(**{**CONFIGS[0], "max_position_embeddings": 128}))


def drain(sch):
    for _ in range(1000):
        if sch.idle:
            break
        sch.step()


def test_beam_search_honours_stop_token_ids_and_cancellation(tiny):
    prompt = [2, 11, 42, 7, 99]
    full = generate(tiny, [prompt], max_new_tokens=8, num_beams=3, eos_token_id=-1).sequences[0, 5:].tolist()
    sch = Scheduler(tiny, eos_token_id=-1)
    got = {}

    def cb(seq, d):
        toks, _, _ = got.get(seq.id, ([], None, None))
        got[seq.id] = (toks + d.tokens, d.finish_reason, d.stop_reason)

    beam = SamplingParams(max_tokens=8, num_beams=3, stop_token_ids=(full[3],))
    cut = full.index(full[3])
    (s,) = sch.submit([prompt], [beam], cb)
    (c,) = sch.submit([prompt], [SamplingParams(max_tokens=8, num_beams=3)], cb)
    sch.cancel([c])
    drain(sch)
    assert got[s.id] == (full[: cut + 1], "stop", full[3])
    assert got[c.id] == ([], "cancelled", None)


def test_a_beam_search_cancelled_mid_search_stops_at_the_next_step(tiny):
    """The client goes away during the search (a forward hook cancels it at the third model call): the search ends
    at its next step, long before its 100 tokens, and the sequence finishes as cancelled."""
    sch = Scheduler(tiny, eos_token_id=-1)
    got, calls = {}, []
    (c,) = sch.submit([[2, 11, 42, 7, 99]], [SamplingParams(max_tokens=100, num_beams=3)],
                      lambda seq, d: got.setdefault(seq.id, d.finish_reason))  # fmt: skip

    def hook(module, args, out):
        calls.append(1)
        if len(calls) == 3:
            sch.cancel([c])

    handle = tiny.register_forward_hook(hook)
    try:
        drain(sch)
    finally:
        handle.remove()
    assert got[c.id] == "cancelled"
    assert len(calls) == 3, f"the search made {len(calls)} model calls; it was cancelled during the third"


def test_stop_returns_within_its_timeout_while_a_step_runs(tiny):
    sch = Scheduler(tiny)
    sch.start()
    inside, release = threading.Event(), threading.Event()
    sch.call(lambda: (inside.set(), release.wait(30)))
    assert inside.wait(30)
    stopper = threading.Thread(target=sch.stop, kwargs={"timeout": 0.2})
    stopper.start()
    stopper.join(20)
    stopped = not stopper.is_alive()
    release.set()
    assert stopped, "stop() waited for the running step past its timeout"


# --- the proof: a real server under hostile requests -----------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def hostile_requests() -> list[tuple[str, str, str, bytes]]:
    """(name, method, path, raw body): each a thing a client may send."""
    j = json.dumps

    def comp(**kw) -> bytes:
        return j(body(**kw)).encode()

    letters = "".join("abcdefghijklmnopqrstuvwxyz"[(i * 7) % 26] for i in range(300_000))
    ids = list(range(4, 1000)) * 200
    return [
        ("900 kB one-word prompt", "POST", "/v1/completions", comp(prompt="a" * 900_000)),
        ("900 kB spaced prompt", "POST", "/v1/completions", comp(prompt="ab " * 300_000)),
        ("300 kB /tokenize word", "POST", "/tokenize", j({"prompt": letters}).encode()),
        ("300 kB /tokenize text", "POST", "/tokenize", j({"prompt": "Aspirin, and (COX-2) " * 14_000}).encode()),
        ("200k ids /detokenize", "POST", "/detokenize", j({"tokens": ids}).encode()),
        ("10k prompts", "POST", "/v1/completions", comp(prompt=["a"] * 10_000)),
        ("temperature 1e-40", "POST", "/v1/completions", comp(temperature=1e-40, max_tokens=8)),
        ("temperature 1e-40 stream", "POST", "/v1/completions", comp(temperature=1e-40, stream=True)),
        ("repetition_penalty 1e-30", "POST", "/v1/completions",
         comp(temperature=1e-30, repetition_penalty=1e-30, max_tokens=8)),
        ("min_tokens over a choice", "POST", "/v1/completions",
         comp(temperature=1.0, min_tokens=6, max_tokens=8, structured_outputs={"choice": ["yes", "no"]})),
        ("seed 2^64", "POST", "/v1/completions", comp(seed=1 << 64)),
        ("NaN", "POST", "/v1/completions", comp(top_p=float("nan"))),
        ("5000 stop strings", "POST", "/v1/completions", comp(stop=[str(i) for i in range(5000)])),
        ("500 kB stop string", "POST", "/v1/completions", comp(stop="s" * 500_000)),
        ("100k stop ids", "POST", "/v1/completions", comp(stop_token_ids=[5] * 100_000)),
        ("echo logprobs 1000 tokens", "POST", "/v1/completions",
         comp(prompt=list(range(4, 1004)), echo=True, logprobs=20, max_tokens=1)),
        ("n=16 logprobs", "POST", "/v1/completions", comp(n=16, max_tokens=16, temperature=1.0, logprobs=5)),
        ("beam search", "POST", "/v1/completions", comp(num_beams=4, max_tokens=16)),
        ("5000 documents", "POST", "/v1/extract",
         j({"task": "bc5cdr", "documents": [{"id": str(i), "text": "x"} for i in range(5000)]}).encode()),
        ("extract 2 documents", "POST", "/v1/extract",
         j({"task": "bc5cdr", "documents": [{"id": "1", "text": "Aspirin caused bleeding.\u2028\x0c"},
                                             {"id": "2", "title": "\x01", "abstract": "Cisplatin."}]}).encode()),
        ("nested JSON", "POST", "/v1/completions", b"[" * 300_000 + b"]" * 300_000),
        ("not UTF-8", "POST", "/v1/completions", b'{"model": "demo", "prompt": "\xff\xfe"}'),
        ("lone surrogate", "POST", "/v1/completions", b'{"model": "demo", "prompt": "\\udfff"}'),
        ("odd characters", "POST", "/v1/completions", comp(prompt="a\u2028b\u2029c\x00\x1b\x7f\x85\ufeff", echo=True)),
        ("2 MiB body", "POST", "/v1/completions", b'{"prompt": "' + b"a" * (2 << 20) + b'"}'),
        ("empty body", "POST", "/v1/completions", b""),
        ("huge max_tokens", "POST", "/v1/completions", comp(max_tokens=10**30)),
        ("wrong types", "POST", "/v1/completions", j({"model": 1, "prompt": {"a": [None]}}).encode()),
        ("chat", "POST", "/v1/chat/completions", j({"model": NAME, "messages": []}).encode()),
        ("no route", "GET", "/v2/nothing", b""),
        # structured outputs: each of these took seconds per token, or minutes, before the DFA and its limits
        ("regex .* 200 tokens", "POST", "/v1/completions",
         comp(max_tokens=200, ignore_eos=True, structured_outputs={"regex": ".*"})),
        ("regex (.?){100} x3", "POST", "/v1/completions",
         comp(max_tokens=60, structured_outputs={"regex": "(.?){100}(.?){100}(.?){100}"})),
        ("regex 10k class x50", "POST", "/v1/completions",
         comp(structured_outputs={"regex": "[" + "".join(chr(0x4E00 + i) for i in range(10_000)) + "]{50}"})),
        ("regex 300 nested groups", "POST", "/v1/completions",
         comp(structured_outputs={"regex": "(" * 300 + "a" + ")" * 300})),
        ("regex non-ASCII digit", "POST", "/v1/completions", comp(structured_outputs={"regex": "a{\u0661,3}"})),
        ("choice 2000 long options", "POST", "/v1/completions",
         comp(structured_outputs={"choice": ["option " + "x" * 200 + str(i) for i in range(2000)]})),
    ]


PROBER = """
import json, sys, threading, time, httpx
url, pid = sys.argv[1], sys.argv[2]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with httpx.Client(timeout=10) as http:
    while not stop.is_set():
        t = time.monotonic()
        try:
            status = http.get(url + "/health").status_code
        except httpx.HTTPError:
            status = -1
        s = time.monotonic() - t
        rss = next(int(x.split()[1]) * 1024 for x in open(f"/proc/{pid}/status") if x.startswith("VmRSS:"))
        print(json.dumps({"t": t, "s": s, "status": status, "rss": rss}), flush=True)
        time.sleep(0.05)
"""


def fire(url: str, name: str, method: str, path: str, raw: bytes) -> tuple[str, float, int, str, float]:
    """(name, seconds, status, body, start)."""
    t = time.monotonic()
    try:
        r = httpx.request(method, url + path, content=raw, timeout=70,
                          headers={"content-type": "application/json"})  # fmt: skip
        status, text = r.status_code, r.text
    except httpx.HTTPError as e:
        status, text = -1, repr(e)
    return name, time.monotonic() - t, status, text, t


def well_formed(status: int, text: str) -> bool:
    if status == 200:
        return True
    if not 400 <= status < 500:
        return False
    err = json.loads(text).get("error", {})
    return set(err) == {"message", "type", "param", "code"} and err["code"] == status


@pytest.fixture
def server(tmp_path):
    """`biogpt serve` (demo model) in a subprocess on a free loopback port, ready: (url, process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "biogpt.cli", "serve", "--port", str(port), "--threads", "1", "--log-level",
           "critical", "--max-concurrency", "8"]  # fmt: skip
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.kill()
        proc.wait()
        log.close()


def metric(url: str, name: str) -> float:
    line = next(x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


@pytest.mark.slow
def test_a_non_streaming_request_notices_its_client_went_away(server):
    url, _ = server
    long = body(max_tokens=1000, ignore_eos=True)
    before = metric(url, "biogpt_generation_tokens_total")

    def impatient():
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(f"{url}/v1/completions", json=long, timeout=httpx.Timeout(60, read=1.5))

    t = threading.Thread(target=impatient)
    t.start()
    t.join(60)
    deadline = time.monotonic() + 30
    while metric(url, "biogpt_running_batch_size") != 0:
        assert time.monotonic() < deadline, "the abandoned request kept its row"
        time.sleep(0.05)
    assert metric(url, "biogpt_generation_tokens_total") - before < 1000  # cancelled before its 1000 tokens


@pytest.mark.slow
def test_hostile_requests_do_not_stall_the_server(demo, server):
    url, proc = server
    normal = body(max_tokens=4)
    reference = httpx.post(f"{url}/v1/completions", json=normal, timeout=60).json()["choices"][0]["text"]
    assert reference == greedy_text(demo, PROMPT, 4)

    done = threading.Event()
    answers: list[tuple[int, str]] = []
    rss = [rss_bytes(proc.pid)]
    # the prober is a process of its own: its latencies are the server's, not this process's GIL's
    prober = subprocess.Popen([sys.executable, "-c", PROBER, url, str(proc.pid)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip

    def client():
        while not done.is_set():
            try:
                r = httpx.post(f"{url}/v1/completions", json=normal, timeout=60)
                answers.append((r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text))
            except httpx.HTTPError as e:
                answers.append((-1, repr(e)))
            time.sleep(0.1)

    normal_client = threading.Thread(target=client)
    normal_client.start()
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(3) as pool:  # a few at a time
            results = list(pool.map(lambda h: fire(url, *h), hostile_requests()))
        wall = time.monotonic() - t0
        polls = [json.loads(line) for line in prober.communicate("", timeout=30)[0].splitlines()]
    finally:
        done.set()
        normal_client.join(70)
        prober.kill()
    health = [(p["s"], p["status"], p["t"]) for p in polls]  # (seconds, status, start)
    rss += [p["rss"] for p in polls]

    bad = [(n, s, text[:200]) for n, _, s, text, _ in results if not well_formed(s, text)]
    slow = [(n, round(dt, 1)) for n, dt, _, _, _ in results if dt > 60]
    lat = sorted(dt for dt, _, _ in health)
    # for a failure: the hostile requests in flight during each slow poll
    stalls = [(round(dt, 2), [n for n, d, _, _, s in results if s < t + dt and t < s + d]) for dt, _, t in health
              if dt > 0.5]  # fmt: skip
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    slowest = max(r[1] for r in results)
    figures = {"requests": len(results), "wall_s": round(wall, 1), "slowest_s": round(slowest, 1),
               "health_polls": len(lat), "health_p99_s": round(p99, 3), "health_max_s": round(lat[-1], 3),
               "normal_requests": len(answers), "max_rss_mib": max(rss) >> 20}  # fmt: skip
    print("hostile suite:", json.dumps(figures))
    assert not bad, bad
    assert not slow, slow
    assert all(code == 200 for _, code, _ in health), [c for _, c, _ in health if c != 200][:5]
    assert p99 < 1.0, (figures, stalls)
    assert answers and all(a == (200, reference) for a in answers), [a for a in answers if a != (200, reference)]
    assert max(rss) < 2 << 30, figures
    after = httpx.post(f"{url}/v1/completions", json=normal | {"max_tokens": 8}, timeout=60)
    assert after.json()["choices"][0]["text"] == greedy_text(demo, PROMPT, 8)
