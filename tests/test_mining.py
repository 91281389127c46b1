"""`biogpt extract`: readers, grounding, grounded decoding, writers (read back by the `bioc` library), the
resumable pipeline (including a real kill -9), and bad input."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from biogpt import BioGPT, BioGPTConfig, Tokenizer
from biogpt.checkpoints import save_hf
from biogpt.cli import main
from biogpt.errors import InputError, TaskError
from biogpt.mining import Document, Extractor, Grounder, Problem, detect_format, pipeline, read_documents, render
from biogpt.mining.readers import title_abstract

from .conftest import TASKS, VOCABS

PUBMED = """<?xml version="1.0"?>
<PubmedArticleSet>
<PubmedArticle><MedlineCitation><PMID>101</PMID><Article><ArticleTitle>Aspirin and <i>COX-1</i>.</ArticleTitle>
<Abstract><AbstractText Label="A">Aspirin inhibits COX-1.</AbstractText><AbstractText>TNF-alpha rises.</AbstractText>
</Abstract></Article></MedlineCitation></PubmedArticle>
<PubmedArticle><MedlineCitation><Article><ArticleTitle>No id</ArticleTitle></Article></MedlineCitation></PubmedArticle>
<PubmedArticle><MedlineCitation><PMID>102</PMID><Article><ArticleTitle>Title only</ArticleTitle></Article>
</MedlineCitation></PubmedArticle>
<DeleteCitation><PMID>99</PMID></DeleteCitation>
</PubmedArticleSet>
"""

PUBTATOR = """123|t|Famotidine-associated delirium.
123|a|Famotidine is a histamine H2-receptor antagonist.
123\t0\t10\tFamotidine\tChemical\tD015738
123\t22\t30\tdelirium\tDisease\tD003693
123\tCID\tD015738\tD003693

124|t|Second doc.
124|a|Text here.
124\t5\t99\tbad\tChemical\tX
"""


def bioc_json_doc(doc_id="7", offset_end=None):
    text = "Cisplatin causes nephrotoxicity."
    loc = {"offset": 0, "length": 9 if offset_end is None else offset_end}
    return {"id": doc_id, "infons": {}, "relations": [],
            "passages": [{"infons": {"type": "title"}, "offset": 0, "text": text, "sentences": [], "relations": [],
                          "annotations": [{"id": "1", "infons": {"type": "Chemical"}, "text": "Cisplatin",
                                           "locations": [loc]}]}]}  # fmt: skip


def check_record(r: dict) -> None:
    """What every written record must satisfy: each span is the entity's surface text in the document."""
    for e in r["entities"]:
        assert e["grounded"] == bool(e["spans"])
        for sp in e["spans"]:
            assert 0 <= sp["start"] < sp["end"] <= len(r["text"])
            assert r["text"][sp["start"] : sp["end"]] == sp["text"]
            assert "".join(sp["text"].lower().split()) == "".join(e["text"].lower().split())
    refs = {e["ref"]: e for e in r["entities"]}
    assert all(x["head"] in refs and x["tail"] in refs for x in r["relations"])
    assert all((x["head_id"], x["tail_id"]) == (refs[x["head"]]["id"], refs[x["tail"]]["id"]) for x in r["relations"])


# --- readers --------------------------------------------------------------------------------------------


def test_pubmed_xml_plain_and_gz(tmp_path):
    (tmp_path / "a.xml").write_text(PUBMED)
    with gzip.open(tmp_path / "b.xml.gz", "wt") as f:
        f.write(PUBMED)
    for name in ("a.xml", "b.xml.gz"):
        assert detect_format(tmp_path / name) == "pubmed-xml"
        items = list(read_documents(tmp_path / name))
        docs = [x for x in items if isinstance(x, Document) and not x.deleted]
        assert [d.id for d in docs] == ["101", "102"]
        assert docs[0].text == "Aspirin and COX-1. Aspirin inhibits COX-1. TNF-alpha rises."
        assert docs[0].passages[1].offset == len("Aspirin and COX-1.") + 1  # PubTator's offsets
        assert docs[1].text == "Title only"
        assert [str(x) for x in items if isinstance(x, Problem)] == [f"{name}:record 2: PubmedArticle without PMID"]
        assert [x.id for x in items if isinstance(x, Document) and x.deleted] == ["99"]


def test_broken_and_truncated_files_keep_what_came_before(tmp_path):
    broken = PUBMED.replace("<PMID>102</PMID>", "<PMID>102</PMD>")
    (tmp_path / "broken.xml").write_text(broken)
    items = list(read_documents(tmp_path / "broken.xml"))
    assert [x.id for x in items if isinstance(x, Document)] == ["101"]
    assert "broken XML" in str(items[-1]) and isinstance(items[-1], Problem)
    body = PUBMED.split("<PubmedArticleSet>")[1].split("</PubmedArticleSet>")[0]
    data = gzip.compress(("<PubmedArticleSet>" + body * 3000 + "</PubmedArticleSet>").encode())
    (tmp_path / "cut.xml.gz").write_bytes(data[: len(data) // 2])
    items = list(read_documents(tmp_path / "cut.xml.gz"))
    assert isinstance(items[-1], Problem) and sum(isinstance(x, Document) for x in items) > 10


def test_pubtator_bioc_jsonl_text(tmp_path):
    (tmp_path / "p.txt").write_text(PUBTATOR)
    assert detect_format(tmp_path / "p.txt") == "pubtator"
    items = list(read_documents(tmp_path / "p.txt"))
    d = items[0]
    assert d.text == "Famotidine-associated delirium. Famotidine is a histamine H2-receptor antagonist."
    assert [(a["start"], a["end"], d.text[a["start"] : a["end"]]) for a in d.annotations] == [
        (0, 10, "Famotidine"), (22, 30, "delirium")]  # fmt: skip
    assert d.relations[0]["type"] == "CID" and d.relations[0]["nodes"] == ["D015738", "D003693"]
    assert isinstance(items[1], Problem) and "lies outside the text" in str(items[1]) and items[1].id == "124"

    (tmp_path / "c.json").write_text(json.dumps({"source": "x", "documents": [bioc_json_doc()]}))
    (tmp_path / "pt3.json").write_text(json.dumps({"PubTator3": [bioc_json_doc("8"), bioc_json_doc("9", 99)]}))
    assert detect_format(tmp_path / "c.json") == detect_format(tmp_path / "pt3.json") == "bioc-json"
    (doc,) = read_documents(tmp_path / "c.json")
    assert doc.id == "7" and doc.annotations[0]["text"] == doc.text[0:9] == "Cisplatin"
    ok, bad = read_documents(tmp_path / "pt3.json")
    assert ok.id == "8" and isinstance(bad, Problem) and "lies outside its passage" in str(bad)

    # BioC XML, written by the bioc library, read by ours
    import bioc
    from bioc import biocxml

    coll = bioc.BioCCollection()
    bdoc = bioc.BioCDocument()
    bdoc.id = "55"
    for off, kind, text in ((0, "title", "Aspirin."), (9, "abstract", "It helps.")):
        p = bioc.BioCPassage()
        p.offset, p.text, p.infons["type"] = off, text, kind
        bdoc.add_passage(p)
    coll.add_document(bdoc)
    (tmp_path / "b.xml").write_text(biocxml.dumps(coll))
    assert detect_format(tmp_path / "b.xml") == "bioc-xml"
    (doc,) = read_documents(tmp_path / "b.xml")
    assert doc.id == "55" and doc.text == "Aspirin. It helps."

    (tmp_path / "d.jsonl").write_text('{"id": 1, "title": "T", "abstract": "A."}\nnot json\n{"id": "x", "text": "Z", '
                                      '"question": "Q?"}\n{"title": "no id"}\n')  # fmt: skip
    items = list(read_documents(tmp_path / "d.jsonl"))
    assert [type(x).__name__ for x in items] == ["Document", "Problem", "Document", "Problem"]
    assert items[0].text == "T A." and items[2].question == "Q?" and "d.jsonl:2: not JSON" in str(items[1])
    (tmp_path / "t.txt").write_bytes(b"first doc\n\nsecond \xff doc\nthird\n")
    items = list(read_documents(tmp_path / "t.txt"))
    assert [x.id if isinstance(x, Document) else "P" for x in items] == ["t.txt:1", "P", "t.txt:4"]


def test_unknown_formats_are_one_error(tmp_path):
    (tmp_path / "e.txt").write_text("")
    (tmp_path / "x.xml").write_text("<html><body/></html>")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 20)
    assert detect_format(tmp_path / "e.txt") == "text" and list(read_documents(tmp_path / "e.txt")) == []
    for name, message in (("x.xml", "neither PubMed"), ("bin.dat", "not text")):
        with pytest.raises(InputError, match=message):
            detect_format(tmp_path / name)


def test_pubmed_baseline_streams_in_constant_memory(tmp_path):
    import tracemalloc

    record = ("<PubmedArticle><MedlineCitation><PMID>{}</PMID><Article><ArticleTitle>T {}</ArticleTitle><Abstract>"
              "<AbstractText>" + "word " * 150 + "</AbstractText></Abstract></Article></MedlineCitation>"
              "</PubmedArticle>\n")  # fmt: skip
    peaks = []
    for n in (3000, 30000):
        path = tmp_path / f"b{n}.xml.gz"
        with gzip.open(path, "wt", compresslevel=1) as f:
            f.write("<PubmedArticleSet>\n")
            for i in range(n):
                f.write(record.format(i, i))
            f.write("</PubmedArticleSet>\n")
        tracemalloc.start()
        count = sum(1 for _ in read_documents(path))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == n
    assert peaks[1] < 1.5 * peaks[0] + 256 * 1024, peaks  # 10x the records, about the same peak


# --- grounding --------------------------------------------------------------------------------------------


def test_grounding_across_case_and_moses_spacing():
    text = "TNF-alpha and (R)-warfarin; tnf-alpha again. Concatenate cat. İstanbul"
    g = Grounder(text)
    assert g.spans("tnf - alpha") == [(0, 9), (28, 37)]
    assert [text[s:e] for s, e in g.spans("( r ) - warfarin")] == ["(R)-warfarin"]
    assert [text[s:e] for s, e in g.spans("cat")] == ["cat"]  # not inside "Concatenate"
    assert g.spans("dog") == [] and g.spans("  ") == []
    assert [text[s:e] for s, e in g.spans("İstanbul")] == ["İstanbul"]


# --- the extractor on tiny random task models ------------------------------------------------------------


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    """{k: directory} for tiny random BioGPT task models with k prompt tokens and the base vocabulary."""
    out = {}
    for k in (1, 9):
        cfg = BioGPTConfig(vocab_size=42384 + k, n_layer=2, d_model=32, n_head=4, d_ffn=64, num_prompt_tokens=k)
        torch.manual_seed(k)
        m = BioGPT(cfg)
        m.init_weights(seed=k)
        d = tmp_path_factory.mktemp(f"task{k}")
        save_hf(m.eval(), Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=k), d)
        out[k] = d
    return out


@pytest.fixture(scope="module")
def short_task_models(tmp_path_factory):
    """Like task_models, but recording fairseq's max_source_positions 600 and max_target_positions 660: answers
    of at most 660 - 600 - K tokens in every task, so that a random model's free decoding stays short."""
    out = {}
    for k in (1, 9):
        cfg = BioGPTConfig(vocab_size=42384 + k, n_layer=2, d_model=32, n_head=4, d_ffn=64, num_prompt_tokens=k,
                           task_settings={"max_source_positions": 600, "max_target_positions": 660})  # fmt: skip
        torch.manual_seed(k)
        m = BioGPT(cfg)
        m.init_weights(seed=k)
        d = tmp_path_factory.mktemp(f"short{k}")
        save_hf(m.eval(), Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=k), d)
        out[k] = d
    return out


@pytest.fixture(scope="module")
def abstracts(tmp_path_factory):
    """24 BC5CDR test abstracts as JSONL (with a PubMedQA-style question on each)."""
    docs = json.loads((TASKS / "BC5CDR" / "test.json").read_text())
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    with open(path, "w") as f:
        for pmid, d in list(docs.items())[:24]:
            f.write(json.dumps({"id": pmid, "title": d["title"], "abstract": d["abstract"],
                                "question": "Does it cause harm?"}) + "\n")  # fmt: skip
    return path


@pytest.mark.parametrize("task,k", [("bc5cdr", 9), ("ddi", 9), ("kd-dti", 9), ("hoc", 1), ("pubmedqa", 9)])
def test_grounded_decoding_always_parses_and_grounds(task, k, task_models, abstracts):
    import biogpt

    model, tok = biogpt.load(task_models[k])
    docs = [d for d in read_documents(abstracts) if isinstance(d, Document)][:6]
    free = Extractor(model, tok, task, batch_size=4).extract(docs)
    grounded = Extractor(model, tok, task, grounded=True, batch_size=4).extract(docs)
    for r in free + grounded:
        check_record(r)
    assert all(r["parsed"] for r in grounded), [r["output"] for r in grounded if not r["parsed"]]
    assert all(e["grounded"] for r in grounded for e in r["entities"])
    if task in ("bc5cdr", "ddi", "kd-dti"):
        assert sum(len(r["relations"]) for r in grounded) >= len(docs)
        labels = {"ddi": biogpt.tasks.ddi.LABELS, "kd-dti": biogpt.tasks.kd_dti.LABELS}.get(task, ("CID",))
        assert {x["type"] for r in grounded for x in r["relations"]} <= set(labels)
        # confidence: each relation's log-probability is a part of its sequence's
        for r in grounded:
            assert all(r["sequence_logprob"] <= x["score"] < 0 for x in r["relations"])
    elif task == "hoc":
        assert all(x["known"] and x["score"] < 0 for r in grounded for x in r["labels"])
    else:
        assert all(r["answer"]["text"] in ("yes", "no", "maybe") for r in grounded)


def test_extractor_refuses_a_model_of_another_task(task_models):
    import biogpt

    model, tok = biogpt.load(task_models[1])
    with pytest.raises(TaskError, match="bc5cdr uses 9 learned prompt tokens but the model has 1"):
        Extractor(model, tok, "bc5cdr")


# --- writers ----------------------------------------------------------------------------------------------


def _records(task_models, abstracts, n=4):
    import biogpt

    model, tok = biogpt.load(task_models[9])
    docs = [d for d in read_documents(abstracts) if isinstance(d, Document)][:n]
    docs.append(title_abstract("no-title", "", "cisplatin and nephrotoxicity."))
    return Extractor(model, tok, "bc5cdr", grounded=True, batch_size=4).extract(docs)


DTD_ELEMENTS = {"collection", "source", "date", "key", "infon", "document", "id", "passage", "offset", "text",
                "sentence", "annotation", "location", "relation", "node"}  # fmt: skip


def test_bioc_written_is_read_back_by_the_bioc_library(task_models, abstracts):
    import xml.etree.ElementTree as ET

    from bioc import biocjson, biocxml

    records = _records(task_models, abstracts)
    infons = {"task": "bc5cdr"}
    xml = render(records, "bioc-xml", infons)
    assert {el.tag for el in ET.fromstring(xml.split("\n", 2)[2]).iter()} <= DTD_ELEMENTS
    for coll in (biocxml.loads(xml), biocjson.loads(render(records, "bioc-json", infons))):
        assert [d.id for d in coll.documents] == [r["id"] for r in records]
        for d, r in zip(coll.documents, records):
            anns = {a.id: a for p in d.passages for a in p.annotations}
            grounded = [(sp["start"], sp["end"]) for e in r["entities"] for sp in e["spans"]]
            located = [(a.locations[0].offset, a.locations[0].end) for a in anns.values() if a.locations]
            assert sorted(located) == sorted(grounded)
            for a in anns.values():
                assert all(isinstance(v, str) for v in a.infons.values())
                for loc in a.locations:
                    assert r["text"][loc.offset : loc.end] == a.text
            assert len(d.relations) == len(r["relations"])
            for rel in d.relations:
                assert {n.refid for n in rel.nodes} <= set(anns)
                assert all(isinstance(v, str) for v in rel.infons.values())


def test_pubtator_round_trip(task_models, abstracts, tmp_path):
    records = _records(task_models, abstracts)
    (tmp_path / "out.pubtator").write_text(render(records, "pubtator", {}))
    back = list(read_documents(tmp_path / "out.pubtator"))
    assert [d.id for d in back] == [r["id"] for r in records]
    for d, r in zip(back, records):
        assert d.text == r["text"]
        want = sorted((sp["start"], sp["end"], sp["text"], e["type"]) for e in r["entities"] for sp in e["spans"])
        assert sorted((a["start"], a["end"], a["text"], a["type"]) for a in d.annotations) == want
        pairs = dict.fromkeys((x["type"], x["head_id"] or "-1", x["tail_id"] or "-1") for x in r["relations"])
        assert [(x["type"], *x["nodes"]) for x in d.relations] == list(pairs)  # one line per identifier pair


# --- the command: formats, determinism, resuming, kill -9 ---------------------------------------------------


def test_extract_every_format_is_deterministic(task_models, abstracts, tmp_path, capsys):
    model = str(task_models[9])
    for ext in ("jsonl", "xml", "json", "pubtator"):
        a, b = tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"
        for out in (a, b):
            assert main(["extract", "--task", "bc5cdr", "--model", model, str(abstracts), "-o", str(out), "--grounded",
                         "--quiet", "--chunk-size", "7"]) == 0  # fmt: skip
        assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 0
        assert not Path(f"{a}.parts").exists()
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        r = json.loads(line)
        check_record(r)
        assert r["model"]["sha256"] and r["decoding"]["grounded"] is True
    err = capsys.readouterr().err
    assert "done: 24 documents (0 skipped, 0 malformed records), 100.0% parsed" in err
    assert "grounding rate 100.0%" in err


def test_resume_after_a_crash_gives_the_same_bytes(task_models, abstracts, tmp_path):
    import biogpt
    from biogpt.mining import pipeline

    model, tok = biogpt.load(task_models[9])
    ex = Extractor(model, tok, "bc5cdr", grounded=True, batch_size=4)
    settings = {"task": "bc5cdr"}
    full = tmp_path / "full.jsonl"
    pipeline.run([str(abstracts)], str(full), "jsonl", ex.extract, settings, {}, chunk_size=5, progress=False)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run([str(abstracts)], str(out), "jsonl", ex.extract, settings, {}, chunk_size=5, progress=False,
                     _stop_after=2)  # fmt: skip
    manifest = json.loads((tmp_path / "resumed.jsonl.parts/manifest.json").read_text())
    assert not out.exists() and len(manifest["chunks"]) == 2
    # a shard and a manifest half-written when the process died are ignored
    (tmp_path / "resumed.jsonl.parts" / "000002.jsonl.tmp").write_text('{"id": "half')
    (tmp_path / "resumed.jsonl.parts" / "manifest.json.tmp").write_text("{")
    calls = []
    summary = pipeline.run([str(abstracts)], str(out), "jsonl", lambda d: calls.append(len(d)) or ex.extract(d),
                           settings, {}, chunk_size=5, progress=False)  # fmt: skip
    assert calls == [5, 5, 4] and summary.documents == 24  # only the unfinished chunks ran again
    assert out.read_bytes() == full.read_bytes()
    # another command into the same unfinished output is refused, naming what differs
    with pytest.raises(KeyboardInterrupt):
        pipeline.run([str(abstracts)], str(out), "jsonl", ex.extract, settings, {}, chunk_size=5, progress=False,
                     _stop_after=1)  # fmt: skip
    with pytest.raises(InputError, match=r"other settings \(task\)"):
        pipeline.run([str(abstracts)], str(out), "jsonl", ex.extract, {"task": "ddi"}, {}, chunk_size=5)


@pytest.mark.slow
def test_kill_9_at_several_points_then_the_same_command(task_models, abstracts, tmp_path):
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "biogpt.cli", "extract", "--task", "bc5cdr", "--model", str(task_models[9]),
           str(abstracts), "-o", str(out), "--chunk-size", "2", "--quiet", "--batch-size", "2"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    want = out.read_bytes()
    out.unlink()
    manifest = tmp_path / "out.jsonl.parts" / "manifest.json"
    for target in (1, 4, 8):  # the run stops once the manifest holds `target` chunks (pipeline's test hook) ...
        env = {**os.environ, pipeline.PAUSE_ENV: str(target)}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for _ in range(60000):  # ... which is an event to wait for, not a time (at most 20 minutes: a hang guard)
            if manifest.exists() and len(json.loads(manifest.read_text())["chunks"]) >= target:
                break
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # ... and is killed there
        proc.wait()
        assert not out.exists() and len(json.loads(manifest.read_text())["chunks"]) == target
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_bytes() == want


def test_extract_bad_input(task_models, abstracts, tmp_path, capsys):
    model = str(task_models[9])
    (tmp_path / "bad.jsonl").write_text('{"id": "1", "text": "ok"}\n{oops\n')
    (tmp_path / "x.xml").write_text("<html/>")
    cases = [
        (["--task", "bc5cdr", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")], "no such file"),
        (["--task", "bc5cdr", str(tmp_path / "x.xml"), "-o", str(tmp_path / "o.jsonl")], "neither PubMed"),
        (["--task", "bc5cdr", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--strict"],
         "malformed record: bad.jsonl:2: not JSON"),
        (["--task", "hoc", str(abstracts), "-o", str(tmp_path / "o.jsonl")], "hoc uses 1 learned prompt tokens"),
        (["--task", "bc5cdr", str(abstracts), "-o", str(tmp_path / "no" / "dir" / "o.jsonl")], "does not exist"),
        (["--task", "bc5cdr", str(abstracts), "-o", str(tmp_path / "o.unknown")], "cannot tell the output format"),
        (["--task", "bc5cdr", str(abstracts), "-o", "-", "--format", "pubtator"], "writes JSONL to standard output"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(["extract", "--model", model, "--quiet", *argv]) == 2
        err = capsys.readouterr().err  # at most a status line about the model, then one error line
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and err.count("error:") == 1, err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "x.xml"]  # nothing half-written
    # without --strict the bad line is counted and reported, and the run goes on
    assert main(["extract", "--model", model, "--task", "bc5cdr", "--quiet", str(tmp_path / "bad.jsonl"), "-o",
                 str(tmp_path / "o.jsonl")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "malformed: bad.jsonl:2: not JSON" in err and "1 documents (0 skipped, 1 malformed records)" in err


def test_stdout_and_questions(task_models, abstracts, capsys):
    assert main(["extract", "--task", "pubmedqa", "--model", str(task_models[9]), str(abstracts), "-o", "-",
                 "--grounded", "--quiet"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 24
    r = json.loads(lines[0])
    assert r["question"] == "Does it cause harm?" and r["answer"]["text"] in ("yes", "no", "maybe")


@pytest.mark.slow
def test_ray_gives_the_single_process_output(task_models, tmp_path, monkeypatch):
    import ray

    docs = json.loads((TASKS / "BC5CDR" / "train.json").read_text())
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for pmid, d in list(docs.items())[:200]:
            f.write(json.dumps({"id": pmid, "title": d["title"], "abstract": d["abstract"]}) + "\n")
    common = ["extract", "--task", "bc5cdr", "--model", str(task_models[9]), str(path), "--grounded", "--quiet",
              "--threads", "1", "--chunk-size", "16", "--batch-size", "8"]  # fmt: skip
    assert main([*common, "-o", str(tmp_path / "local.jsonl")]) == 0
    # an interrupted local run (3 of 13 chunks committed), finished on Ray: the manifest's chunks pass through
    real_run = pipeline.run
    with monkeypatch.context() as m:
        m.setattr(pipeline, "run", lambda *a, **k: real_run(*a, **k, _stop_after=3))
        assert main([*common, "-o", str(tmp_path / "resumed.jsonl")]) == 130
    manifest = json.loads((tmp_path / "resumed.jsonl.parts" / "manifest.json").read_text())
    assert sorted(manifest["chunks"]) == ["0:0-16", "0:16-32", "0:32-48"]
    try:
        assert main([*common, "-o", str(tmp_path / "ray.jsonl"), "--ray", "--workers", "2"]) == 0
        assert main([*common, "-o", str(tmp_path / "resumed.jsonl"), "--ray", "--workers", "2"]) == 0
    finally:
        ray.shutdown()
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert not (tmp_path / "resumed.jsonl.parts").exists()
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 200


def get_task_parse(task: str, text: str):
    from biogpt.tasks import get_task

    return get_task(task).parse(text)


def test_template_never_steps_into_a_dead_end():
    """A span may not grow into tokens it could never end after (here: the source's final "." ), so every
    path the template allows can be completed."""
    from biogpt.tasks.templates import grammar

    tok = Tokenizer.from_pretrained(VOCABS["base"])
    src = tok.encode("warfarin raises the effect .", add_eos_prefix=False)
    g = grammar("ddi", tok, src)
    prefix = list(tok.encode("the interaction between", add_eos_prefix=False))
    after_effect = g.allowed(prefix + [tok.piece_to_id["effect</w>"]])
    assert tok.piece_to_id[".</w>"] not in after_effect  # "effect ." could never end: not offered
    assert tok.piece_to_id["and</w>"] in after_effect  # ending the span ("effect") is
    # every step of a random walk through the template reaches </s>
    import random

    rng = random.Random(0)
    for _ in range(20):
        out = list(prefix)
        for _ in range(200):
            options = g.allowed(out)
            assert options, out
            out.append(rng.choice(options))
            if out[-1] == 2:
                break
        assert out[-1] == 2 and get_task_parse("ddi", tok.decode(out))


def test_jsonl_with_a_long_first_record_is_jsonl(tmp_path):
    long = json.dumps({"id": "1", "title": "T", "abstract": "word " * 2000})  # 10 KB: beyond the first read
    (tmp_path / "long.jsonl").write_text(long + "\n" + json.dumps({"id": "2", "text": "x"}) + "\n")
    assert detect_format(tmp_path / "long.jsonl") == "jsonl"
    assert [d.id for d in read_documents(tmp_path / "long.jsonl")] == ["1", "2"]


def test_template_ends_after_a_repeated_statement():
    """A statement said twice can only be followed by the end ("." </s>), not by a third: a model that loops
    on one relation stops instead of running to the length limit. A new statement may still follow."""
    from biogpt.tasks.templates import grammar

    tok = Tokenizer.from_pretrained(VOCABS["base"])
    src = tok.encode("warfarin and aspirin .", add_eos_prefix=False)
    g = grammar("bc5cdr", tok, src)
    ids = lambda text: list(tok.encode(text, add_eos_prefix=False))  # noqa: E731
    semicolon, dot = tok.piece_to_id[";</w>"], tok.piece_to_id[".</w>"]
    once = ids("the relation between warfarin and aspirin exists")
    other = ids("the relation between aspirin and warfarin exists")
    assert {semicolon, dot} <= set(g.allowed(once))
    assert {semicolon, dot} <= set(g.allowed(once + [semicolon] + other))
    assert g.allowed(once + [semicolon] + once) == [dot]
    assert g.allowed(once + [semicolon] + other + [semicolon] + once) == [dot]


def test_template_spans_never_end_on_an_escaped_bracket():
    """Moses writes "[" as "&#91;" (digits!) and "&" as "&amp;": a span may not end on them, or the detokenized
    output glues the bracket to the next template word ("n- [and") and no longer parses."""
    from biogpt.tasks.templates import grammar

    tok = Tokenizer.from_pretrained(VOCABS["base"])
    src = tok.encode("novel n- and 2-substituted-3alpha-[bis(4-fluoro & chloro)", add_eos_prefix=False)
    pieces = [tok.pieces[i] for i in src]
    g = grammar("kd-dti", tok, src)
    start = list(tok.encode("the interaction between", add_eos_prefix=False))
    upto_bracket = start + src[: pieces.index("&#91;") + 1]
    upto_amp = start + src[pieces.index("4") : pieces.index("&amp;") + 1]
    and_id = tok.piece_to_id["and</w>"]
    assert and_id not in g.allowed(upto_bracket) and and_id not in g.allowed(upto_amp)
    assert and_id in g.allowed(start + src[: pieces.index("novel") + 1])  # a word ends: "and" may follow


def test_template_spans_never_start_on_an_apostrophe():
    """"'s" (Moses: "&apos;s") glues to the word before it when detokenized ("between's"): no span starts there."""
    from biogpt.tasks.templates import grammar

    tok = Tokenizer.from_pretrained(VOCABS["base"])
    src = tok.encode("the patient's dose", add_eos_prefix=False)
    g = grammar("ddi", tok, src)
    first = g.allowed(list(tok.encode("the interaction between", add_eos_prefix=False)))
    assert tok.piece_to_id["&apos;s</w>"] in src and tok.piece_to_id["&apos;s</w>"] not in first
    assert tok.piece_to_id["dose</w>"] in first and tok.piece_to_id["patient</w>"] in first


# --- extraction feeds the model exactly what evaluation feeds it ---------------------------------------------

TASK_FOLDERS = {"bc5cdr": "BC5CDR", "ddi": "DDI", "kd-dti": "KD-DTI", "hoc": "HoC", "pubmedqa": "PubMedQA"}


def _tsv_lines(path: Path) -> list[str]:
    return [line.rsplit("\t", 1)[0] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def split_as_documents(task: str, setting: str = "reasoning-free") -> list[dict]:
    """The task's test split as a user would hand it to `extract` (JSONL), one record per scored example, in
    split order: title and abstract (BC5CDR, KD-DTI), the abstract (DDI), the sentence (HoC), the question and
    its context (PubMedQA: with the long answer in the reasoning-free setting, the contexts otherwise)."""
    root = TASKS / TASK_FOLDERS[task]
    if task in ("bc5cdr", "ddi", "kd-dti"):
        docs = json.loads((root / "test.json").read_text(encoding="utf-8"))
        key = "relations" if task == "bc5cdr" else "triples"  # examples() drops documents without any
        if task == "ddi":
            return [{"id": k, "text": d["abstract"]} for k, d in docs.items() if d.get(key)]
        return [{"id": k, "title": d["title"], "abstract": d["abstract"]} for k, d in docs.items() if d.get(key)]
    if task == "hoc":
        return [{"id": str(n), "text": line} for n, line in enumerate(_tsv_lines(root / "test.tsv"))]
    if setting == "reasoning-required":
        items = json.loads((root / "ori_pqal.json").read_text(encoding="utf-8"))
        ids = json.loads((root / "test_ground_truth.json").read_text(encoding="utf-8"))
        return [{"id": i, "question": items[i]["QUESTION"], "text": " ".join(items[i]["CONTEXTS"])} for i in ids]
    out = []
    for n, line in enumerate(_tsv_lines(root / "test.tsv")):
        q, context = line.removeprefix("question: ").split(" context: ", 1)
        out.append({"id": str(n), "question": q, "text": context})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("task,setting,lowercase", [
    ("bc5cdr", "", True), ("ddi", "", True), ("kd-dti", "", True), ("hoc", "", True),
    ("pubmedqa", "reasoning-free", True), ("pubmedqa", "reasoning-required", False),
])  # fmt: skip
def test_extract_builds_the_ids_eval_builds(task, setting, lowercase, tmp_path):
    """For every test example of every task, the prefix `extract` feeds the model (its reader, then
    mining.tasks) equals the one `biogpt eval` feeds it (tasks/*: examples() then inference_prefix), id for id."""
    from biogpt.mining import tasks as mtasks
    from biogpt.tasks import get_task, inference_prefix

    options = {"setting": setting, "lowercase": lowercase} if task == "pubmedqa" else {}
    t = get_task(task, **options)
    tok = Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=t.num_prompt_tokens)
    examples = t.examples(TASKS, "test")
    path = _write_jsonl(tmp_path / "docs.jsonl", split_as_documents(task, setting or "reasoning-free"))
    docs = list(read_documents(path))
    assert len(docs) == len(examples) > 100 and all(isinstance(d, Document) for d in docs)
    for doc, ex in zip(docs, examples):
        got = mtasks.encode_prefix(t, tok, mtasks.source_text(task, t, doc))[0]
        assert got == inference_prefix(t, tok, ex.source), (task, ex.id)


@pytest.mark.slow
@pytest.mark.parametrize("task,k", [("bc5cdr", 9), ("ddi", 9), ("kd-dti", 9), ("hoc", 1), ("pubmedqa", 9)])
def test_extract_outputs_equal_eval_saved_outputs(task, k, short_task_models, tmp_path, capsys):
    """On a tiny random task model, `extract` writes, for the first test documents, the very outputs `biogpt eval
    --save-outputs` saves for the same examples: free and `--grounded`."""
    n, model = 4, str(short_task_models[k])
    docs = _write_jsonl(tmp_path / "docs.jsonl", split_as_documents(task)[:n])
    for grounded in ([], ["--grounded"]):
        saved, out = tmp_path / "eval.txt", tmp_path / "extract.jsonl"
        assert main(["eval", task, "--model", model, "--data", str(TASKS), "--limit", str(n), "--batch-size", "4",
                     "--save-outputs", str(saved), "--json", *grounded]) == 0  # fmt: skip
        assert main(["extract", "--task", task, "--model", model, str(docs), "-o", str(out), "--batch-size", "4",
                     "--quiet", *grounded]) == 0  # fmt: skip
        capsys.readouterr()
        want = saved.read_text(encoding="utf-8").split("\n")[:-1]
        got = [json.loads(line)["output"] for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(want) == len(got) == n
        assert got == want, grounded
        assert any(o.strip() for o in got)  # outputs that say something: equal empties would prove nothing


# --- scores are values, not bounds ---------------------------------------------------------------------------


def _reference_logprobs(hf, prefix: list[int], new: list[int]) -> list[float]:
    """log p(new[i] | prefix + new[:i]) from transformers' model (float64), one unpadded forward pass."""
    ids = torch.tensor([prefix + new])
    with torch.no_grad():  # the head on the positions that chose the new tokens only
        logits = hf.output_projection(hf.biogpt(ids).last_hidden_state[0, len(prefix) - 1 : -1])
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(new)[:, None])[:, 0].tolist()


def _expected_scores(task: str, tok: Tokenizer, new: list[int], lps: list[float]) -> list[float]:
    """The score each relation / label / answer must carry: the generated tokens (up to </s>) cut at the task's
    separator, each statement's reference log-probabilities summed; statements parsed as the record's are."""
    from biogpt.mining import tasks as mtasks

    sep = set(tok.encode("|" if task == "hoc" else ";", add_eos_prefix=False))  # HoC's "|" is Moses' "&#124;"
    parts, cur, cur_lp = [], [], 0.0
    for t, lp in zip(new, lps):
        if t == 2:
            break
        if t in sep and task != "pubmedqa":
            parts.append(mtasks.Part(tok.decode(cur), cur_lp))
            cur, cur_lp = [], 0.0
        else:
            cur.append(t)
            cur_lp += lp
    parts.append(mtasks.Part(tok.decode(cur), cur_lp))
    parts = [p for p in parts if p.text.strip()]
    if task == "hoc":
        return [x["logprob"] for x in mtasks.read_labels(parts)]
    if task == "pubmedqa":
        answer = mtasks.read_answer(parts)
        return [] if answer is None else [answer["logprob"]]
    seen, out = set(), []
    for r in mtasks.read_relations(task, parts):
        key = (r["head"].lower(), r["tail"].lower(), r["type"])
        if key not in seen:  # a repeated relation is recorded once, with its first score
            seen.add(key)
            out.append(r["logprob"])
    return out


@pytest.mark.parametrize("task,k", [("bc5cdr", 9), ("ddi", 9), ("kd-dti", 9), ("hoc", 1), ("pubmedqa", 9)])
def test_scores_are_the_models_logprobs(task, k, short_task_models, abstracts, monkeypatch):
    """Each record's `sequence_logprob` and each relation's / label's / answer's `score` equal transformers'
    log-probabilities of those tokens (one forward pass over the prefix and the generated tokens), free and
    grounded: within 1e-5 per token summed (fp32 decoding against a float64 reference)."""
    from transformers import BioGptForCausalLM

    import biogpt
    from biogpt.mining import extractor as mex
    from biogpt.mining import tasks as mtasks

    model, tok = biogpt.load(short_task_models[k])
    hf = BioGptForCausalLM.from_pretrained(short_task_models[k]).double().eval()
    docs = [d for d in read_documents(abstracts) if isinstance(d, Document)][:4]
    produced: dict[tuple, list[int]] = {}
    real = mex.generate

    def spy(m, prompts, **kw):  # the generated ids behind each record
        out = real(m, prompts, **kw)
        longest = max(len(p) for p in prompts)
        for p, row in zip(prompts, out.sequences.tolist()):
            produced[tuple(p)] = row[longest:]
        return out

    monkeypatch.setattr(mex, "generate", spy)
    checked = 0
    for grounded in (False, True):
        ex = Extractor(model, tok, task, grounded=grounded, batch_size=4)
        for doc, r in zip(docs, ex.extract(docs)):
            prefix = mtasks.encode_prefix(ex.task, tok, mtasks.source_text(task, ex.task, doc))[0]
            new = produced[tuple(prefix)]
            new = new[: new.index(2) + 1] if 2 in new else new
            lps = _reference_logprobs(hf, prefix, new)
            assert r["sequence_logprob"] == pytest.approx(sum(lps), rel=0, abs=1e-5 * len(new))
            scores = {"hoc": [x["score"] for x in r.get("labels", [])],
                      "pubmedqa": [r["answer"]["score"]] if r.get("answer") else []}.get(
                task, [x["score"] for x in r["relations"]])  # fmt: skip
            want = _expected_scores(task, tok, new, lps)
            assert len(scores) == len(want), (r["output"], scores, want)
            assert scores == pytest.approx(want, rel=0, abs=1e-5 * len(new)), r["output"]
            checked += len(want)
    assert checked >= len(docs)  # grounded decoding parses every output: at least one score per record


@pytest.mark.slow
def test_two_workers_give_the_bytes_of_one_process(short_task_models, abstracts, tmp_path):
    """Chunks shared out to two worker processes come back as one process writes them, byte for byte (one
    thread each, as the single process: another thread count may change a log-probability's last digit)."""
    common = ["extract", "--task", "bc5cdr", "--model", str(short_task_models[9]), str(abstracts), "--quiet",
              "--chunk-size", "5", "--batch-size", "4", "--threads", "1"]  # fmt: skip
    assert main([*common, "-o", str(tmp_path / "one.jsonl")]) == 0
    assert main([*common, "-o", str(tmp_path / "two.jsonl"), "--workers", "2"]) == 0
    one = (tmp_path / "one.jsonl").read_bytes()
    assert len(one.splitlines()) == 24 and (tmp_path / "two.jsonl").read_bytes() == one
