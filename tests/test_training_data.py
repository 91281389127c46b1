"""BPE learning and corpus building."""

import gzip
import json
from collections import Counter

import numpy as np
import pytest

from biogpt import Tokenizer
from biogpt.tasks.texts import task_abstracts
from biogpt.text import moses
from biogpt.training.bpe_learn import count_words, learn, learn_merges
from biogpt.training.corpus import build_corpus, load_shards

from .conftest import TASKS, VOCABS


def naive_merges(word_counts, num_merges, min_frequency):
    """Recount every pair after every merge: slow but obviously right."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): f for w, f in word_counts.items()}
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
        merges.append((best, pairs[best]))
        new = {}
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
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
