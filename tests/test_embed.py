"""Embeddings: pooled final hidden states equal to the same pooling over transformers' `last_hidden_state`
(BioGPT and GPT-2, tiny random models), `biogpt embed` (formats, resuming after kill -9), and /v1/embeddings
with the official `openai` client."""

import base64
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import biogpt
from biogpt.cli import main
from biogpt.errors import GenerationError
from biogpt.generation.embed import embed
from biogpt.serve import create_app

from . import test_gpt2, test_model
from .conftest import ROOT
from .test_serve import serve

EXAMPLES = ROOT / "examples" / "pubmed_sample.xml"
INPUTS = [[2, 5, 6, 7, 8, 9, 10, 11], [2, 12, 13], [2, 40, 41, 42, 43, 44], [2, 99], [2, 7, 8, 9, 10, 11, 12, 13]]


def reference(hidden_of, inputs, pooling: str, normalize: bool) -> torch.Tensor:
    """The pooling computed from transformers' last_hidden_state [1, T, d] of each input alone."""
    out = []
    for ids in inputs:
        with torch.no_grad():
            h = hidden_of(torch.tensor([ids]))[0]  # [T, d]
        v = h.mean(0) if pooling == "mean" else h[-1]
        out.append(v / v.norm() if normalize else v)
    return torch.stack(out)


@pytest.mark.parametrize("family", ["biogpt", "gpt2"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooled_states_match_transformers(family, pooling, normalize):
    if family == "biogpt":
        hf = test_model.random_hf(**test_model.CONFIGS[1])
        ours, hidden_of = test_model.ours_from(hf), lambda x: hf.biogpt(x).last_hidden_state
    else:
        hf = test_gpt2.random_hf(**test_gpt2.CONFIGS[0])
        ours, hidden_of = test_gpt2.ours_from(hf), lambda x: hf.transformer(x).last_hidden_state
    want = reference(hidden_of, INPUTS, pooling, normalize)
    for batch_size in (1, 2, 5):  # alone, padded batches, and a batch with enough padding to run unpadded
        got = embed(ours, INPUTS, pooling=pooling, normalize=normalize, batch_size=batch_size)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_embed_refuses_bad_inputs():
    ours = test_model.ours_from(test_model.random_hf(**test_model.CONFIGS[1]))
    with pytest.raises(GenerationError, match="input 1 has no tokens"):
        embed(ours, [[2, 5], []])
    with pytest.raises(GenerationError, match="input 0 has 65 tokens; the model reads at most 64"):
        embed(ours, [[5] * 65])
    with pytest.raises(GenerationError, match="unknown pooling 'max'"):
        embed(ours, [[2, 5]], pooling="max")


# --- the demo model against transformers, the command and the server ------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return biogpt.load("demo")


@pytest.fixture(scope="module")
def demo_reference(demo):
    """(pooling, normalize, texts) -> the pooling of transformers' BioGPT (the demo's weights) over our ids."""
    from transformers import BioGptForCausalLM

    hf = BioGptForCausalLM.from_pretrained(str(biogpt.api.demo_path())).eval()
    tok = demo[1]
    return lambda pooling, texts: reference(lambda x: hf.biogpt(x).last_hidden_state,
                                            [tok.encode(t) for t in texts], pooling, True)  # fmt: skip


def example_texts() -> list[tuple[str, str]]:
    from biogpt.mining.readers import read_documents

    return [(d.id, d.text) for d in read_documents(EXAMPLES)]


def run_cli(*args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "biogpt.cli", "embed", str(EXAMPLES), "--quiet", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)


def test_embed_command_formats_equal_transformers(demo_reference, tmp_path, capsys):
    ids, texts = zip(*example_texts())
    want = demo_reference("mean", texts).numpy()
    for ext in ("npy", "parquet", "jsonl"):
        assert main(["embed", str(EXAMPLES), "-o", str(tmp_path / f"v.{ext}"), "--quiet", "--batch-size", "2"]) == 0
    done = "done: 5 documents embedded (0 without text skipped, 0 truncated, 0 malformed records)"
    assert done in capsys.readouterr().err
    got = np.load(tmp_path / "v.npy")
    assert got.dtype == np.float32 and got.shape == (5, 256)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert [json.loads(x) for x in (tmp_path / "v.ids.jsonl").read_text().splitlines()] == list(ids)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    assert table["id"] == list(ids) and np.array_equal(np.array(table["embedding"], dtype=np.float32), got)
    lines = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == list(ids) and all(r["truncated"] is False for r in lines)
    assert np.array_equal(np.array([r["embedding"] for r in lines], dtype=np.float32), got)
    assert not list(tmp_path.glob("*.parts"))


def test_embed_resumes_after_kill_9_byte_identical(tmp_path):
    """The run is killed with SIGKILL at a known point (a fault-injection hook: after 2 committed chunks it
    creates a marker and waits), then the same command finishes it: every output byte equals a clean run's."""
    full, out, marker = tmp_path / "full.npy", tmp_path / "out.npy", tmp_path / "marker"
    args = ("--chunk-size", "1", "--batch-size", "1")
    run_cli("-o", str(full), *args)
    proc = run_cli("-o", str(out), *args, env={"BIOGPT_EMBED_PAUSE_AFTER": f"2:{marker}"}, wait=False)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "2"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = tmp_path / "out.npy.parts"
    assert not out.exists() and len(json.loads((parts / "manifest.json").read_text())["chunks"]) == 2
    (parts / "000002.jsonl.tmp").write_text('{"id": "half')  # a shard half-written at the kill is ignored
    run_cli("-o", str(out), *args)
    assert out.read_bytes() == full.read_bytes() and not parts.exists()
    assert (tmp_path / "out.ids.jsonl").read_bytes() == (tmp_path / "full.ids.jsonl").read_bytes()


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_embed_interrupted_then_resumed_byte_identical(demo, ext, tmp_path):
    from biogpt.mining import embedding

    embedder = embedding.Embedder(*demo, batch_size=2)
    settings = {"model": "demo"}
    full, out = tmp_path / f"full.{ext}", tmp_path / f"out.{ext}"
    embedding.run([str(EXAMPLES)], str(full), ext, embedder, settings, chunk_size=2, progress=False)

    def stop(committed: int) -> None:
        raise KeyboardInterrupt  # as if killed once the first chunk is committed

    with pytest.raises(KeyboardInterrupt):
        embedding.run([str(EXAMPLES)], str(out), ext, embedder, settings, chunk_size=2, progress=False,
                      after_commit=stop)  # fmt: skip
    with pytest.raises(biogpt.errors.InputError, match=r"other settings \(model\)"):  # another command, same output
        embedding.run([str(EXAMPLES)], str(out), ext, embedder, {"model": "other"}, chunk_size=2, progress=False)
    calls = []
    real = embedder.records
    embedder.records = lambda docs: calls.append(len(docs)) or real(docs)
    summary = embedding.run([str(EXAMPLES)], str(out), ext, embedder, settings, chunk_size=2, progress=False)
    assert calls == [2, 1] and summary.documents == 5  # only the unfinished chunks ran again
    assert out.read_bytes() == full.read_bytes()


def test_embed_truncates_and_skips(demo, tmp_path, capsys):
    model, tok = demo
    long_text = "aspirin " * 1500
    docs = [{"id": "long", "text": long_text}, {"id": "empty", "text": " "}, {"id": "a", "title": "Aspirin.",
                                                                              "abstract": "It helps."}]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert main(["embed", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "v.jsonl"), "--quiet"]) == 0
    done = "done: 2 documents embedded (1 without text skipped, 1 truncated, 0 malformed records)"
    assert done in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    short = len(tok.encode("Aspirin. It helps."))
    assert [(r["id"], r["tokens"], r["truncated"]) for r in rows] == [("long", 1024, True), ("a", short, False)]
    want = embed(model, [tok.encode(long_text)[:1024]])[0]
    assert torch.equal(torch.tensor(rows[0]["embedding"]), want)


def test_embed_command_bad_input(tmp_path, capsys):
    (tmp_path / "x.xml").write_text("<html/>")
    cases = [
        (["embed", str(EXAMPLES), "-o", str(tmp_path / "v.csv")], "cannot tell the output format"),
        (["embed", str(EXAMPLES), "-o", "-", "--format", "npy"], "-o - writes JSONL"),
        (["embed", str(tmp_path / "x.xml"), "-o", str(tmp_path / "v.npy")], "neither PubMed"),
        (["embed", str(tmp_path / "missing"), "-o", str(tmp_path / "v.npy")], "no such file"),
        (["embed", str(EXAMPLES), "-o", str(tmp_path / "v.npy"), "--batch-size", "0"], "must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], err


def test_v1_embeddings_with_the_openai_client(demo, demo_reference):
    texts = [t for _, t in example_texts()][:3] + ["Aspirin is"]
    tok = demo[1]

    async def go(http, client):
        default = await client.embeddings.create(model="demo", input=texts)  # the client asks for base64
        floats = await client.embeddings.create(model="demo", input=texts[3], encoding_format="float",
                                                dimensions=256)  # fmt: skip
        as_ids = await client.embeddings.create(model="demo", input=[tok.encode(t) for t in texts[:2]])
        one_ids = await client.embeddings.create(model="demo", input=tok.encode(texts[3]))
        last = await client.embeddings.create(model="demo", input=texts, extra_body={"pooling": "last"})
        raw = (await http.post("/v1/embeddings", json={"input": "Aspirin is", "encoding_format": "base64"})).json()
        return default, floats, as_ids, one_ids, last, raw

    default, floats, as_ids, one_ids, last, raw = serve(create_app(*demo, model_name="demo"), go)
    want, want_last = demo_reference("mean", texts).numpy(), demo_reference("last", texts).numpy()
    got = np.array([d.embedding for d in default.data], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array([d.embedding for d in last.data]), want_last, atol=1e-5, rtol=0)
    assert [d.index for d in default.data] == [0, 1, 2, 3] and default.model == "demo"
    n = sum(len(tok.encode(t)) for t in texts)
    assert default.usage.prompt_tokens == n and default.usage.total_tokens == n
    assert floats.data[0].embedding == got[3].tolist() and floats.usage.prompt_tokens == len(tok.encode(texts[3]))
    assert np.array_equal(np.array([d.embedding for d in as_ids.data], dtype=np.float32), got[:2])
    assert np.array_equal(np.array(one_ids.data[0].embedding, dtype=np.float32), got[3])
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, got[3]) and raw["object"] == "list" and raw["data"][0]["object"] == "embedding"


def test_v1_embeddings_bad_requests(demo):
    V = demo[1].vocab_size
    cases = [
        ({"input": []}, 400, "input is an empty list"),
        ({"input": ""}, 400, "input[0] is an empty string"),
        ({"input": ["a", ""]}, 400, "input[1] is an empty string"),
        ({"input": [[]]}, 400, "input[0] has no tokens"),
        ({"input": [V]}, 400, f"token id {V} is outside the vocabulary"),
        ({"input": [True, 5]}, 400, "input"),
        ({"input": [1.5]}, 400, "input"),
        ({"input": {"a": 1}}, 400, "input"),
        ({"input": "x", "dimensions": 64}, 400, "have 256 dimensions and are not truncatable"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "x", "pooling": "max"}, 400, "pooling"),
        ({"input": "x", "bogus": 1}, 400, "unknown field 'bogus'"),
        ({"input": "x", "model": "gpt-4"}, 404, "does not exist"),
        ({"input": ["a"] * 2049}, 400, "at most 2048"),
        ({"input": [5] * 1025}, 400, "has 1025 tokens; the model reads at most 1024"),
        (b'{"input": "\\u2028 \\u0000 NaN \\ud83d\\ude00"}', 200, None),  # odd text is text: it is embedded
        (b'{"input": "\\ud800 x"}', 400, "lone surrogate"),  # not valid Unicode: refused as every route does
        (b'{"input": NaN}', 400, None),
        (b'{"input": "\xff\xfe"}', 400, None),  # not UTF-8
    ]

    async def go(http, client):
        return [await (http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
                       if isinstance(body, bytes) else http.post("/v1/embeddings", json=body))
                for body, _, _ in cases]  # fmt: skip

    for (body, status, message), r in zip(cases, serve(create_app(*demo, model_name="demo"), go)):
        assert r.status_code == status, (body, r.text)
        if message is not None:
            err = r.json()["error"]
            assert message in err["message"] and err["type"] in ("invalid_request_error", "not_found_error"), err


def test_search_ranks_as_transformers_vectors_do(demo_reference, tmp_path, capsys):
    ids, texts = zip(*example_texts())
    query = "cocaine and myocardial injury"
    docs, q = demo_reference("mean", texts), demo_reference("mean", [query])[0]
    want = [ids[i] for i in torch.argsort(docs @ q, descending=True).tolist()]
    for ext in ("npy", "jsonl"):
        assert main(["embed", str(EXAMPLES), "-o", str(tmp_path / f"v.{ext}"), "--quiet"]) == 0
        capsys.readouterr()
        assert main(["search", str(tmp_path / f"v.{ext}"), query, "-k", "5"]) == 0
        rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
        assert [r[2] for r in rows] == want and [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    for argv, message in ((["search", str(tmp_path / "bad.npy"), query], "not vectors `biogpt embed` wrote"),
                          (["search", str(tmp_path / "v.jsonl"), " "], "the query is empty")):  # fmt: skip
        assert main(argv) == 2 and message in capsys.readouterr().err
