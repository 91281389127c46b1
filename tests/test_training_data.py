"""BPE learning and corpus building."""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from biogpt import Tokenizer
from biogpt.errors import CorpusError
from biogpt.tasks.texts import task_abstracts
from biogpt.text import moses
from biogpt.training.bpe_learn import count_words, fastbpe_word_order, learn, learn_merges
from biogpt.training.corpus import build_corpus, load_shards, read_manifest, vocab_fingerprint

from .conftest import TASKS, VOCABS


def naive_merges(word_counts, num_merges, min_frequency):
    """Recount every pair after every merge: slow but obviously right. Tokens are numbered as fastBPE numbers
    them (characters in `fastbpe_word_order`, then a new number per merge); ties go to the smallest id pair."""
    ids, names, words = {}, [], {}
    for w in fastbpe_word_order(word_counts):
        symbols = list(w)
        symbols[-1] += "</w>"
        for s in symbols:
            if s not in ids:
                ids[s] = len(names)
                names.append(s)
        words[tuple(ids[s] for s in symbols)] = word_counts[w]
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(((names[best[0]], names[best[1]]), pairs[best]))
        merged = len(names)
        names.append(names[best[0]] + names[best[1]])
        new = {}
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + f
        words = new
    return merges


def test_incremental_learner_equals_naive():
    docs = list(task_abstracts(TASKS))[:40]
    counts = count_words(" ".join(moses.tokenize(d)) for d in docs)
    counts["aaaa"] = 7  # overlapping pairs
    assert learn_merges(counts, 300, 2) == naive_merges(counts, 300, 2)


def test_learned_vocabulary_loads_and_round_trips(tmp_path):
    docs = list(task_abstracts(TASKS))[:200]
    lines = [" ".join(moses.tokenize(d)) for d in docs]
    vocab = learn(lines, tmp_path, num_merges=2000, min_frequency=2)
    assert len(vocab.pieces) % 8 == 0 and vocab.pieces[:4] == ("<s>", "<pad>", "</s>", "<unk>")
    first = (tmp_path / "bpecodes").read_text().splitlines()[0].split()
    assert len(first) == 3 and int(first[2]) > 0
    tok = Tokenizer.from_pretrained(tmp_path)
    for d in docs[:50]:
        ids = tok.encode(d)
        assert 3 not in ids  # every piece of the training text is in the dictionary
        assert tok.decode(ids) == moses.detokenize(moses.tokenize(d))
    with pytest.raises(ValueError, match="empty"):
        learn([], tmp_path / "x")


def _write_inputs(d):
    xml = """<?xml version="1.0"?><PubmedArticleSet>
<PubmedArticle><MedlineCitation><PMID>1</PMID><Article><ArticleTitle>First title.</ArticleTitle>
<Abstract><AbstractText Label="BACKGROUND">Alpha beta.</AbstractText><AbstractText>Gamma <i>delta</i>.</AbstractText></Abstract>
</Article></MedlineCitation></PubmedArticle>
<PubmedArticle><MedlineCitation><PMID>2</PMID><Article><ArticleTitle>No abstract here.</ArticleTitle></Article></MedlineCitation></PubmedArticle>
<PubmedArticle><MedlineCitation><PMID>3</PMID><Article><ArticleTitle>Third.</ArticleTitle><Abstract><AbstractText>Old text.</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>
<PubmedArticle><MedlineCitation><PMID>4</PMID><Article><ArticleTitle>Fourth.</ArticleTitle><Abstract><AbstractText>To be deleted.</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>
</PubmedArticleSet>"""
    with gzip.open(d / "pubmed0001.xml.gz", "wt") as f:
        f.write(xml)
    update = """<?xml version="1.0"?><PubmedArticleSet>
<PubmedArticle><MedlineCitation><PMID>3</PMID><Article><ArticleTitle>Third, revised.</ArticleTitle><Abstract><AbstractText>New text.</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>
<DeleteCitation><PMID>4</PMID></DeleteCitation></PubmedArticleSet>"""
    with gzip.open(d / "pubmed0002.xml.gz", "wt") as f:
        f.write(update)
    abstracts = list(task_abstracts(TASKS))[:30]
    rows = [json.dumps({"pmid": f"j{i}", "title": "T", "abstract": a}) for i, a in enumerate(abstracts)]
    rows.insert(3, "{not json")
    rows.append(json.dumps({"id": "j-empty", "title": "only a title", "abstract": ""}))
    (d / "more.jsonl").write_text("\n".join(rows) + "\n")
    return [d / "pubmed0001.xml.gz", d / "pubmed0002.xml.gz", d / "more.jsonl"], abstracts


def _tokens(out, split):
    shards = load_shards(out, split)
    return np.concatenate(shards) if shards else np.zeros(0, np.uint16)


def test_corpus_build_dedup_problems_and_resume(tmp_path):
    inputs, abstracts = _write_inputs(tmp_path)
    tok = Tokenizer.from_pretrained(VOCABS["base"])
    full = tmp_path / "full"
    m = build_corpus(
        inputs, VOCABS["base"], full, workers=1, validation_per_mille=100, shard_tokens=500, progress=False
    )
    assert m["problems"] == {
        "no abstract": 2,
        "malformed": 1,
        "replaced by a later record": 1,
        "deleted (DeleteCitation)": 1,
    }
    assert m["documents"]["train"] + m["documents"]["valid"] == 2 + 30  # pmid 1, revised 3, 30 JSONL documents
    stream = np.concatenate([_tokens(full, "train"), _tokens(full, "valid")]).tolist()
    n_docs = stream.count(2)
    assert n_docs == 32
    train = _tokens(full, "train").tolist()
    first = tok.encode("First title. Alpha beta. Gamma delta.", add_eos_prefix=False) + [2]
    revised = tok.encode("Third, revised. New text.", add_eos_prefix=False) + [2]
    all_docs = [first, revised] + [tok.encode(f"T {a}", add_eos_prefix=False) + [2] for a in abstracts]
    joined = sorted(map(tuple, all_docs))
    # every document appears exactly once, in train or valid, and nothing else does
    got = []
    for split in ("train", "valid"):
        cur = []
        for t in _tokens(full, split).tolist():
            cur.append(t)
            if t == 2:
                got.append(tuple(cur))
                cur = []
    assert sorted(got) == joined
    assert "Old" not in tok.decode(train) and "deleted" not in tok.decode(train)
    assert len(load_shards(full, "train")) > 1  # several shards

    # interrupted after the first input, then resumed: byte-identical to the uninterrupted build
    part = tmp_path / "part"
    build_corpus(inputs, VOCABS["base"], part, validation_per_mille=100, shard_tokens=500, progress=False,
                 _stop_after_inputs=1)  # fmt: skip
    (part / "train_00000.bin").open("ab").write(b"\x05\x00" * 7)  # a half-written batch from the crash
    m2 = build_corpus(
        inputs, VOCABS["base"], part, workers=2, validation_per_mille=100, shard_tokens=500, progress=False
    )
    assert m2 == m
    for f in sorted(full.glob("*.bin")):
        assert (part / f.name).read_bytes() == f.read_bytes()
    with pytest.raises(ValueError, match="other inputs or settings"):
        build_corpus(inputs[:1], VOCABS["base"], part, progress=False)
    assert m["vocab_sha256"] == vocab_fingerprint(tok)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(shard_tokens=0), "shard_tokens must be >= 1, got 0"),
        (dict(shard_tokens=-1), "shard_tokens must be >= 1, got -1"),
        (dict(validation_per_mille=2000), "validation_per_mille must be in 0..1000, got 2000"),
        (dict(validation_per_mille=-1), "validation_per_mille must be in 0..1000, got -1"),
        (dict(workers=0), "workers must be >= 1, got 0"),
        (dict(workers=0, shard_tokens=0), "workers must be >= 1, got 0; shard_tokens must be >= 1, got 0"),
    ],
)
def test_corpus_build_refuses_bad_options_and_writes_nothing(tmp_path, kw, message):
    inputs, _ = _write_inputs(tmp_path)
    with pytest.raises(CorpusError, match=re.escape(message)):
        build_corpus(inputs, VOCABS["base"], tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()


def test_corpus_build_without_documents_is_an_error_and_writes_nothing(tmp_path):
    rows = ['{"pmid": "1", "title": "only a title", "abstract": ""}', "{not json", '{"id": "2", "abstract": " "}']
    (tmp_path / "empty.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "blank.txt").write_text("\n\n")
    inputs = [tmp_path / "empty.jsonl", tmp_path / "blank.txt"]
    with pytest.raises(CorpusError, match=re.escape("no documents in 2 input file(s)")):
        build_corpus(inputs, VOCABS["base"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(CorpusError, match=re.escape(f"input file(s) not found: {tmp_path / 'nope.jsonl'}")):
        build_corpus([tmp_path / "nope.jsonl"], VOCABS["base"], tmp_path / "out", progress=False)


def test_vocabulary_fingerprint_follows_the_vocabulary_not_its_files(tmp_path):
    tok = Tokenizer.from_pretrained(VOCABS["base"])
    tok.save_pretrained(tmp_path / "hf", format="hf")
    assert vocab_fingerprint(Tokenizer.from_pretrained(tmp_path / "hf")) == vocab_fingerprint(tok)
    assert vocab_fingerprint(Tokenizer.from_pretrained(VOCABS["large"])) != vocab_fingerprint(tok)


def test_a_damaged_corpus_is_one_error(tmp_path):
    inputs, _ = _write_inputs(tmp_path)
    out = tmp_path / "out"
    m = build_corpus(inputs, VOCABS["base"], out, validation_per_mille=0, progress=False, _stop_after_inputs=2)
    n = m["train"][0]
    with open(out / "train_00000.bin", "r+b") as f:  # a shard cut short after its commit
        f.truncate(10)
    message = f"train_00000.bin: 5 tokens, but manifest.json records {n}"
    with pytest.raises(CorpusError, match=re.escape(message)):
        load_shards(out, "train")
    with pytest.raises(CorpusError, match=re.escape(message)):  # resuming would pad the lost tokens with zeros
        build_corpus(inputs, VOCABS["base"], out, validation_per_mille=0, progress=False)
    (out / "manifest.json").write_text('{"inputs": [')
    with pytest.raises(CorpusError, match="manifest.json: damaged"):
        load_shards(out, "train")
    with pytest.raises(CorpusError, match=re.escape(f"{tmp_path}: no manifest.json; build a corpus there")):
        read_manifest(tmp_path)


BUILD_SCRIPT = textwrap.dedent("""
    import sys

    from biogpt.training.corpus import build_corpus

    if __name__ == "__main__":  # the spawned workers import this file too
        vocab, out, *inputs = sys.argv[1:]
        try:
            build_corpus(inputs, vocab, out, workers=2, validation_per_mille=100, shard_tokens=20000, progress=False)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
""")


def _proc_state(pid):
    """(state letter, parent pid) of a process from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)"
    return fields[0], int(fields[1])


def _alive(pid):
    state = _proc_state(pid)
    return state is not None and state[0] != "Z"  # a zombie has exited; only its parent has not reaped it


def _children(pid):
    """The processes whose parent is `pid`."""
    states = {int(d.name): _proc_state(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()}
    return [child for child, state in states.items() if state is not None and state[1] == pid]


@pytest.fixture(scope="module")
def many_inputs(tmp_path_factory):
    """48 JSONL files of 100 abstracts each and their uninterrupted build (one process)."""
    d = tmp_path_factory.mktemp("many")
    abstracts = list(task_abstracts(TASKS))[:4800]
    inputs = []
    for n in range(48):
        rows = [json.dumps({"pmid": f"{n}-{i}", "title": "T", "abstract": a})
                for i, a in enumerate(abstracts[n * 100 : n * 100 + 100])]  # fmt: skip
        inputs.append(d / f"part{n:02d}.jsonl")
        inputs[-1].write_text("\n".join(rows) + "\n")
    m = build_corpus(inputs, VOCABS["base"], d / "reference", validation_per_mille=100, shard_tokens=20000,
                     progress=False)  # fmt: skip
    return inputs, d / "reference", m


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_parallel_build_stops_at_once_and_resumes(many_inputs, tmp_path, sig):
    inputs, reference, expected = many_inputs
    out = tmp_path / "out"
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    cmd = [sys.executable, str(script), str(VOCABS["base"]), str(out), *map(str, inputs)]
    # its own process group, as a shell job: Ctrl-C signals the whole group, the workers as well as the parent
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists():  # the first input committed: the workers are at work
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the build did not commit its first input in 2 minutes"
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert len(workers) >= 2  # two tokenizer processes (and multiprocessing's resource tracker)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()  # the parent only: its workers must notice by themselves
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the build still runs 10 s after {sig.name}")
        gone_by = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert [w for w in workers if _alive(w)] == []
        _, err = proc.communicate(timeout=10)
    finally:
        try:  # whatever of the group is left, if the test failed
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = read_manifest(out)["done"]
    assert 1 <= done < len(inputs), f"stopped after {done} of {len(inputs)} inputs: not mid-build"
    if sig == signal.SIGINT:
        assert (proc.returncode, err) == (130, "interrupted\n")  # no traceback from any worker
    else:
        assert "Traceback" not in err and "BrokenPipeError" not in err, err

    m = build_corpus(inputs, VOCABS["base"], out, workers=2, validation_per_mille=100, shard_tokens=20000,
                     progress=False)  # fmt: skip
    assert m == expected
    assert sorted(p.name for p in out.glob("*.bin")) == sorted(p.name for p in reference.glob("*.bin"))
    for f in reference.glob("*.bin"):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
