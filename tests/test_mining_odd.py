"""`biogpt extract` on the odd text real dumps hold: line separators (U+2028, U+2029, U+0085), lone surrogates,
XML-illegal control characters, ids with `|`, tabs and newlines, over-long lines, unreasonable BioC offsets,
PubmedBookArticle records; through every output format, each rerun giving the same bytes and every output
read back (BioC XML validated against BioC.dtd by xmllint). Also the resume guards and one-line errors."""

import fcntl
import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest
import torch

from biogpt import BioGPT, BioGPTConfig, Tokenizer
from biogpt.checkpoints import save_hf
from biogpt.cli import main
from biogpt.errors import InputError
from biogpt.mining import Document, Problem, documents, pipeline, read_documents, render
from biogpt.mining.tasks import base_record

from .conftest import VOCABS

DTD = Path(__file__).parent / "data" / "BioC.dtd"
ODD = "a\u2028b\u2029c\x85d\x0ce\x01f\x00g\rh\ufffei\x1fj"  # line separators and XML-illegal characters
XML_ILLEGAL = "".join(chr(c) for c in range(32) if chr(c) not in "\t\n\r") + "\ufffe\uffff"  # not in XML 1.0
NOT_IN_PUBTATOR = set("\u2028\u2029\x85\x0c\r\x1f\x01\x00\t\n")  # line ends, tabs, controls


def _jsonl(path: Path, objs: list) -> None:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random BioGPT with BC5CDR's 9 prompt tokens and the base vocabulary."""
    cfg = BioGPTConfig(vocab_size=42384 + 9, n_layer=1, d_model=32, n_head=4, d_ffn=64, num_prompt_tokens=9)
    torch.manual_seed(0)
    m = BioGPT(cfg)
    m.init_weights(seed=0)
    d = tmp_path_factory.mktemp("model")
    save_hf(m.eval(), Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=9), d)
    return d


def odd_inputs(d: Path) -> tuple[list[Path], int, int]:
    """One file per input format, each with odd text; (files, documents expected, problems expected)."""
    d.mkdir(parents=True, exist_ok=True)
    _jsonl(d / "odd.jsonl", [
        {"id": "u2028", "title": "Cisplatin\u2028nephrotoxicity.", "abstract": "Rats\u2029got\x85cisplatin " + ODD},
        {"id": "pipe|tab\tnl\nsep\u2028id", "text": "Aspirin and\x0cbleeding."},
        '{"id": "surrogate", "text": "bad \\ud800 text"}',  # a JSON escape with no UTF-8 form: a problem
        '{"id": "\\udc00", "text": "an id that cannot be written"}',
        {"id": "long", "text": "x" * 5000},  # over the (lowered) line cap: a problem
        {"id": "after", "text": "Still read after the odd lines."},
    ])  # fmt: skip
    (d / "odd.txt").write_bytes("Heparin\u2028and thrombocytopenia\x0b here.\nline\rwith cr\x1c.\n".encode())
    (d / "odd.pubtator").write_text(
        "7|t|Lithium\u2028toxicity.\n7|a|Lithium\x85causes tremor\x0c.\n7\t0\t7\tLithium\tChemical\tD008094\n\n",
        encoding="utf-8", newline="")  # fmt: skip
    (d / "odd.xml").write_text(
        "<?xml version='1.0' encoding='UTF-8'?><collection><source/><date/><key/>"
        "<document><id>x1</id><passage><offset>0</offset><text>Digoxin\u2028and&#13;arrhythmia\x85.</text></passage>"
        "</document><document><id>x2</id><passage><offset>10000000000</offset><text>far</text></passage></document>"
        "<document><id>x3</id><passage><offset>-3</offset><text>before</text></passage></document></collection>",
        encoding="utf-8")  # fmt: skip
    passage = {"infons": {}, "offset": 0, "text": "Warfarin\u2029bleeding " + ODD, "annotations": []}
    (d / "odd.json").write_text(json.dumps({"documents": [
        {"id": "j1", "passages": [passage]},
        {"id": "j2", "passages": [{**passage, "offset": 1e10}]},
        {"id": "j3", "passages": [{**passage, "offset": -1}]},
    ]}), encoding="utf-8")  # fmt: skip
    (d / "odd-pubmed.xml").write_text(
        "<?xml version='1.0'?><PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article>"
        "<ArticleTitle>Tamoxifen\u2028and cancer.</ArticleTitle></Article></MedlineCitation></PubmedArticle>"
        "<PubmedBookArticle><BookDocument><PMID>2</PMID><Book><BookTitle>Drug-Induced Liver Injury</BookTitle>"
        "</Book><Abstract><AbstractText>Acetaminophen\u2029hepatotoxicity.</AbstractText></Abstract></BookDocument>"
        "</PubmedBookArticle></PubmedArticleSet>", encoding="utf-8")  # fmt: skip
    files = [d / n for n in ("odd.jsonl", "odd.txt", "odd.pubtator", "odd.xml", "odd.json", "odd-pubmed.xml")]
    return files, 3 + 2 + 1 + 1 + 1 + 2, 3 + 2 + 2


# --- the readers ----------------------------------------------------------------------------------------------


def test_reader_problems_for_what_no_output_can_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "MAX_LINE_BYTES", 4096)
    files, n_docs, n_problems = odd_inputs(tmp_path)
    items = [x for f in files for x in read_documents(f)]
    docs = [x for x in items if isinstance(x, Document)]
    problems = [str(x) for x in items if isinstance(x, Problem)]
    assert len(docs) == n_docs and len(problems) == n_problems, problems
    assert [x for x in problems if "surrogate" in x] == [
        "odd.jsonl:3 (id surrogate): a lone surrogate ('\\ud800') that UTF-8 cannot hold",
        "odd.jsonl:4 (id \\udc00): a lone surrogate ('\\udc00') that UTF-8 cannot hold",
    ]
    assert "odd.jsonl:5: a line over 4,096 bytes (skipped: no document is that long)" in problems
    assert sum("passage offset 10000000000 is outside 0..1000000" in x for x in problems) == 2
    assert sum("passage offset -" in x for x in problems) == 2
    by_id = {d.id: d for d in docs}
    assert by_id["u2028"].text == "Cisplatin\u2028nephrotoxicity. Rats\u2029got\x85cisplatin " + ODD
    assert by_id["x1"].text == "Digoxin\u2028and\rarrhythmia\x85."
    assert by_id["2"].text == "Drug-Induced Liver Injury Acetaminophen hepatotoxicity."  # a book, not dropped
    assert by_id["odd.txt:2"].text == "line\rwith cr\x1c."  # only "\n" ends a line
    assert by_id["7"].annotations[0]["text"] == "Lithium" and "after" in by_id


def test_long_lines_are_read_in_bounded_memory(tmp_path, monkeypatch):
    """A 6 MiB line without a newline, with the cap at 1 MiB: a problem, read holding about the cap, never the
    line (reading it whole and splitting it again at every piece was quadratic)."""
    monkeypatch.setattr(documents, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "long.txt"
    path.write_bytes(b"y" * (6 << 20) + b"\nshort line\n" + b"z" * 100)
    tracemalloc.start()
    items = list(read_documents(path, "text"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [str(x) if isinstance(x, Problem) else x.text for x in items] == [
        "long.txt:1: a line over 1,048,576 bytes (skipped: no document is that long)", "short line", "z" * 100]
    assert peak < 3 << 20, peak
    path.write_bytes(b"ab\ncde\n\nfghij\nk")
    for piece in (1, 2, 3, 4, 7, 100):  # every piece boundary: the lines bytes.split gives, long ones as None
        with documents.open_binary(path) as f:
            f.PIECE = piece
            assert list(f.lines()) == [b"ab\n", b"cde\n", b"\n", b"fghij\n", b"k"]
        with documents.open_binary(path) as f:
            f.PIECE = piece
            assert list(f.lines(4)) == [b"ab\n", b"cde\n", b"\n", None, b"k"]


def test_a_text_beyond_the_cap_is_a_problem(tmp_path, monkeypatch):
    """Whatever the format (here a PubMed abstract, no line in sight), a text over MAX_DOCUMENT_CHARS is a
    problem: BioC readers refuse such a text element, and no abstract is that long."""
    monkeypatch.setattr(documents, "MAX_DOCUMENT_CHARS", 1000)
    (tmp_path / "big.xml").write_text(
        "<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>5</PMID><Article><ArticleTitle>T</ArticleTitle>"
        f"<Abstract><AbstractText>{'w ' * 600}</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>"
        "<PubmedArticle><MedlineCitation><PMID>6</PMID></MedlineCitation></PubmedArticle></PubmedArticleSet>"
    )
    big, small = read_documents(tmp_path / "big.xml")
    assert str(big) == "big.xml:record 1 (id 5): a text of 1201 characters (more than 1000)"
    assert isinstance(small, Document) and small.id == "6"


# --- the writers ------------------------------------------------------------------------------------------------


def fake_extract(docs: list[Document]) -> list[dict]:
    """Records with an entity on every odd character's neighbourhood, and ids and types that need escaping."""
    out = []
    for d in docs:
        r = base_record("bc5cdr", d)
        spans = [{"start": s, "end": s + 3, "text": d.text[s : s + 3]} for p in d.passages
                 for s in range(p.offset, p.offset + len(p.text) - 3, 5)]  # fmt: skip
        r.update(entities=[{"ref": "E|1\t\n", "id": "D|1\t\n", "curie": "MESH:D|1\t\n", "link": "exact", "text": "x",
                            "type": "Chemical\u2028\t", "grounded": bool(spans), "spans": spans},
                           {"ref": "E2", "id": None, "curie": None, "link": None, "text": "y", "type": "Disease",
                            "grounded": False, "spans": []}],
                 relations=[{"id": "R1", "type": "CID\t|", "head": "E|1\t\n", "tail": "E2", "head_id": "D|1\t\n",
                             "tail_id": None, "score": -1.0, "grounded": False}],
                 parsed=True, sequence_logprob=-1.0, output="odd\u2028output\x01")  # fmt: skip
        out.append(r)
    return out


def xmllint_valid(path: Path) -> None:
    shutil.copy(DTD, path.parent / "BioC.dtd")  # where the DOCTYPE's system id points
    done = subprocess.run(["xmllint", "--noout", "--dtdvalid", str(DTD), str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr


def check_outputs(out: dict[str, Path], records: list[dict]) -> None:
    """Every output reads back: JSONL exactly; BioC XML valid against BioC.dtd and read by the bioc library and
    ours, with each XML-illegal character a space; BioC JSON exactly; PubTator to the same documents."""
    from bioc import biocjson, biocxml

    lines = out["jsonl"].read_text(encoding="utf-8").split("\n")
    assert [json.loads(x) for x in lines if x] == records and lines[-1] == ""
    xmllint_valid(out["bioc-xml"])
    safe = str.maketrans(dict.fromkeys(XML_ILLEGAL, " "))
    coll = biocxml.loads(out["bioc-xml"].read_text(encoding="utf-8"))
    assert [d.id for d in coll.documents] == [r["id"].translate(safe) for r in records]
    back = [x for x in read_documents(out["bioc-xml"]) if isinstance(x, Document)]
    assert [d.text for d in back] == [r["text"].translate(safe) for r in records]
    coll = biocjson.loads(out["bioc-json"].read_text(encoding="utf-8"))
    assert [[p.text for p in d.passages] for d in coll.documents] == [[p["text"] for p in r["passages"]]
                                                                     for r in records]  # fmt: skip
    back = [x for x in read_documents(out["pubtator"]) if isinstance(x, Document)]
    assert [d.id for d in back] == [_pubtator(r["id"]) for r in records]
    for d, r in zip(back, records):
        assert len(d.text) == len(r["text"]) and not set(d.text) & NOT_IN_PUBTATOR
        spans = sorted((a["start"], a["end"]) for a in d.annotations)
        assert spans == sorted((s["start"], s["end"]) for e in r["entities"] for s in e["spans"])
        assert all(d.text[a["start"] : a["end"]] == a["text"] for a in d.annotations)
        pairs = dict.fromkeys((x["type"], x["head_id"] or "-1", x["tail_id"] or "-1") for x in r["relations"])
        assert [x["nodes"] for x in d.relations] == [[_pubtator(h), _pubtator(t)] for _, h, t in pairs]  # one a pair


def _pubtator(text: str) -> str:
    """An id as the PubTator writer must spell it (as the tests expect it, written out here)."""
    return "".join(" " if c in NOT_IN_PUBTATOR else "_" if c == "|" else c for c in text)


def test_every_output_of_odd_text_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "MAX_LINE_BYTES", 4096)
    files, n_docs, n_problems = odd_inputs(tmp_path / "in")
    out = {}
    for fmt in ("jsonl", "bioc-xml", "bioc-json", "pubtator"):
        out[fmt] = tmp_path / f"out.{fmt}"
        s = pipeline.run([str(f) for f in files], str(out[fmt]), fmt, fake_extract, {}, {"odd": "\x01\u2028"},
                         chunk_size=2, progress=False)  # fmt: skip
        assert (s.documents, s.malformed) == (n_docs, n_problems)
    records = [json.loads(x) for x in out["jsonl"].read_text(encoding="utf-8").split("\n") if x]
    assert len(records) == n_docs and records[1]["id"] == "pipe|tab\tnl\nsep\u2028id"
    check_outputs(out, records)
    # an empty text (no passages) still makes a valid BioC document
    empty = fake_extract([Document("empty", [])])
    (tmp_path / "empty.xml").write_text(render(empty, "bioc-xml", {}), encoding="utf-8")
    xmllint_valid(tmp_path / "empty.xml")


def test_extract_odd_inputs_every_format_twice_same_bytes(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(documents, "MAX_LINE_BYTES", 4096)
    files, n_docs, n_problems = odd_inputs(tmp_path / "in")
    out = {}
    for fmt, ext in (("jsonl", "jsonl"), ("bioc-xml", "xml"), ("bioc-json", "json"), ("pubtator", "pubtator")):
        a, b = tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"
        for path in (a, b):
            argv = ["extract", "--task", "bc5cdr", "--model", str(model_dir), *map(str, files), "-o", str(path),
                    "--quiet", "--chunk-size", "3", "--grounded", "--batch-size", "4"]  # fmt: skip
            assert main(argv) == 0
            err = capsys.readouterr().err
            assert f"done: {n_docs} documents (0 skipped, {n_problems} malformed records)" in err, err
            assert "Traceback" not in err
        assert a.read_bytes() == b.read_bytes()
        assert not Path(f"{a}.parts").exists()
        out[fmt] = a
    records = [json.loads(x) for x in out["jsonl"].read_text(encoding="utf-8").split("\n") if x]
    assert len(records) == n_docs and records[0]["text"].startswith("Cisplatin\u2028nephrotoxicity.")
    check_outputs(out, records)


# --- resuming: the same inputs, weights and manifest version, one run at a time ---------------------------------


def _settings_run(files, out, **kw):
    return pipeline.run([str(f) for f in files], str(out), "jsonl", fake_extract, {"task": "bc5cdr"}, {},
                        chunk_size=1, progress=False, **kw)  # fmt: skip


def test_resume_refuses_changed_inputs_a_second_run_and_another_version(model_dir, tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    _jsonl(src, [{"id": str(i), "text": f"text {i}"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _settings_run([src], out, _stop_after=2)
    parts = tmp_path / "out.jsonl.parts"
    # a second run while the first holds the lock is refused, and leaves the first one's state alone
    with open(parts / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InputError, match="in use by another biogpt extract"):
            _settings_run([src], out)
        assert main(["extract", "--task", "bc5cdr", "--model", str(model_dir), str(src), "-o", str(out)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "out.jsonl.parts is in use by another biogpt extract" in last
    assert len(json.loads((parts / "manifest.json").read_text())["chunks"]) == 2
    # the same bytes with another mtime, or another content of the same size: not the same input
    st = src.stat()
    src.write_text(src.read_text().replace("text 3", "text 9"))
    with pytest.raises(InputError, match=r"other settings \(input_files\)"):
        _settings_run([src], out)
    src.write_text(src.read_text().replace("text 9", "text 3"))
    with pytest.raises(InputError, match=r"\(input_files\)"):
        _settings_run([src], out)
    import os

    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    manifest = json.loads((parts / "manifest.json").read_text())
    (parts / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(InputError, match="manifest version 99, not 1"):
        _settings_run([src], out)
    (parts / "manifest.json").write_text(json.dumps(manifest))
    assert _settings_run([src], out).documents == 4  # the original input again: resumed
    assert not parts.exists()


def test_resume_refuses_other_weights(model_dir, tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    _jsonl(src, [{"id": str(i), "text": f"Aspirin {i}."} for i in range(3)])
    weights = tmp_path / "model"
    shutil.copytree(model_dir, weights)
    out = tmp_path / "out.jsonl"
    argv = ["extract", "--task", "bc5cdr", "--model", str(weights), str(src), "-o", str(out), "--quiet",
            "--chunk-size", "1"]  # fmt: skip
    pipeline_run = pipeline.run

    def crash(*a, **kw):
        return pipeline_run(*a, **kw, _stop_after=1)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "run", crash)
        assert main(argv) == 130
    f = next(weights.glob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[-1] ^= 1  # the same size; another last byte
    f.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "(weights)" in err and "Traceback" not in err


def test_stdout_leaves_no_temporary_folder(model_dir, tmp_path, monkeypatch, capsys):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    src = tmp_path / "docs.jsonl"
    _jsonl(src, [{"id": "1", "text": "Aspirin\u2028and bleeding."}])
    assert main(["extract", "--task", "bc5cdr", "--model", str(model_dir), str(src), "-o", "-", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Aspirin\u2028and bleeding."
    assert list(scratch.iterdir()) == []


# --- every verb: bad input is one error line --------------------------------------------------------------------


def test_bpe_learn_on_an_empty_corpus_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "one.txt").write_text("a a\n")
    for name, message in (("empty.txt", "the corpus is empty"), ("one.txt", "no pair occurs at least 2 times")):
        assert main(["bpe", "learn", str(tmp_path / name), "--output", str(tmp_path / "v")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_json_nested_deeper_than_the_parser_is_one_problem_or_one_error(tmp_path, capsys):
    """A JSONL line `[[[[...` (the parser raises RecursionError, not a ValueError) is a reported problem and the
    documents around it are read; a whole BioC JSON file or a model's config.json nested so is one error line."""
    deep = "[" * 200_000
    (tmp_path / "d.jsonl").write_text('{"id": "1", "text": "Aspirin."}\n' + deep + '\n{"id": "2", "text": "Rats."}\n')
    items = list(read_documents(tmp_path / "d.jsonl"))
    assert [x.id for x in items if isinstance(x, Document)] == ["1", "2"]
    assert [str(x) for x in items if isinstance(x, Problem)] == ["d.jsonl:2: not JSON (nested too deeply)"]
    (tmp_path / "c.json").write_text('{"documents": ' + deep)
    with pytest.raises(InputError, match="not valid BioC JSON \\(nested too deeply"):
        list(read_documents(tmp_path / "c.json"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(deep)
    assert main(["info", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "Traceback" not in err
