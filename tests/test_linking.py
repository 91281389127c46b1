"""Linking entities to database identifiers: the linker and its dictionaries, identifiers in every output
format (the `bioc` library reads them back; the BioCreative V CDR kit scores our PubTator), the `--summary`
aggregate, `--linked` decoding, and bad dictionaries."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from biogpt import BioGPT, BioGPTConfig, Tokenizer
from biogpt.checkpoints import save_hf
from biogpt.cli import main
from biogpt.errors import InputError
from biogpt.mining import Document, Extractor, read_documents, render
from biogpt.mining.aggregate import Aggregate
from biogpt.mining.linking import DEFAULTS, Linker, curie, default_linker, load, long_forms
from biogpt.mining.readers import title_abstract

from .conftest import TASKS, VOCABS

ROOT = Path(__file__).resolve().parents[1]
CDR = TASKS / "BC5CDR"


def small_linker(fallback: bool = True) -> Linker:
    lk = Linker(fallback)
    for name, kind, ident in [("cyclosporin A", "Chemical", "D016572"), ("TNF-alpha", "Gene", "7124"),
                              ("type 2 diabetes", "Disease", "D003924"), ("nalozone", "Chemical", "-1"),
                              ("retinoic acid", "Chemical", "D014212"), ("RA", "Chemical", "D014212"),
                              ("RA", "Disease", "D001172"), ("CsA", "chemical", "D016572"),
                              ("hepatitis b", "Disease", "D006509"), ("hepatitis-b", "Disease", "D999999")]:
        lk.add(name, kind, ident)  # fmt: skip
    return lk


def test_linker_exact_then_each_fallback_and_never_a_guess():
    lk = small_linker()
    got = lambda name, kind, text="": (lambda x: (x.id, x.curie, x.how))(lk.link(name, kind, text))  # noqa: E731
    assert got("Cyclosporin  a", "chemical") == ("D016572", "MESH:D016572", "exact")  # case and spacing
    assert got("RA", "Disease") == ("D001172", "MESH:D001172", "exact")  # per type
    assert got("tnf - alpha", "Gene") == ("7124", None, "normalised")  # Moses spacing; a bare gene id has no prefix
    assert got("type ii diabetes", "Disease") == (None, None, None)  # Roman numerals go the other way only
    assert got("type 2-diabetes", "Disease") == ("D003924", "MESH:D003924", "normalised")
    assert got("all-trans retinoic acid (RA)", "Chemical") == ("D014212", "MESH:D014212", "parenthesis")
    assert got("nalozone", "Chemical") == (None, None, None)  # the curators' -1: unlinked, not the fallback
    assert got("hepatitis  b", "Disease") == ("D006509", "MESH:D006509", "exact")
    assert got("hepatitis - b", "Disease") == (None, None, None)  # two ids share the normalised key: no guess
    assert got("aspirin", "Chemical") == (None, None, None)
    assert got("cyclosporin A", "Drug") == (None, None, None)  # a type the dictionary lacks
    text = "Patients given tacrolimus or ciclosporin A (CyA) were followed; CyA levels fell."
    assert long_forms("CyA", text)[-1] == "ciclosporin A"
    lk.add("ciclosporin A", "Chemical", "D016572")
    assert got("CyA", "Chemical", text) == ("D016572", "MESH:D016572", "abbreviation")
    assert got("CyA", "Chemical") == (None, None, None)  # no definition in the document: unlinked
    exact = small_linker(fallback=False)
    assert exact.link("tnf - alpha", "Gene").id is None and exact.link("TNF-ALPHA", "gene").how == "exact"
    assert curie("D001241|D006261") == "MESH:D001241|MESH:D006261" and curie("NCBIGene:7124") == "NCBIGene:7124"
    assert lk.link("x" * 2000, "Chemical").id is None


def test_dictionaries_entities_json_tsv_and_pubtator(tmp_path):
    lk = load([CDR / "train.entities.json"])
    assert lk.link("suxamethonium chloride", "Chemical").id == "D013390"
    assert lk.link("[3h]-naloxone", "Chemical").id is None  # "-1" in the file
    (tmp_path / "ctd.tsv").write_text("# CTD\nAspirin\tChemical\tMESH:D001241\n\nHeadache\tDisease\tMESH:D006261\n")
    lk = load([tmp_path / "ctd.tsv"])
    assert (lk.link("aspirin", "chemical").id, lk.link("aspirin", "chemical").curie) == ("MESH:D001241",) * 2
    (tmp_path / "gold.pubtator").write_text(
        "1|t|Famotidine-associated delirium.\n1|a|Famotidine is an antagonist.\n"
        "1\t0\t10\tFamotidine\tChemical\tD015738\n1\t22\t30\tdelirium\tDisease\tD003693\n1\tCID\tD015738\tD003693\n\n"
    )
    lk = load([tmp_path / "gold.pubtator", tmp_path / "ctd.tsv"])
    assert lk.link("famotidine", "Chemical").id == "D015738" and lk.link("headache", "Disease").id == "MESH:D006261"
    assert lk.names == 4
    # earlier files win; a real id replaces a -1
    (tmp_path / "a.tsv").write_text("x\tChemical\t-1\ny\tChemical\tD1\n")
    (tmp_path / "b.tsv").write_text("x\tChemical\tD2\ny\tChemical\tD3\n")
    lk = load([tmp_path / "a.tsv", tmp_path / "b.tsv"])
    assert (lk.link("x", "Chemical").id, lk.link("y", "Chemical").id) == ("D2", "D1")


@pytest.mark.parametrize("content,why", [
    (b"a\tb\n", "expected name<TAB>type<TAB>identifier, got 2 columns"),
    (b"caf\xe9\tChemical\tD1\n", "not UTF-8"),
])  # fmt: skip
def test_bad_tsv_dictionaries_are_one_error(tmp_path, content, why):
    (tmp_path / "d.tsv").write_bytes(content)
    with pytest.raises(InputError, match=why):
        load([tmp_path / "d.tsv"])


def test_bad_json_dictionaries_and_missing_files(tmp_path):
    for text in ("[1, 2]", "{", '{"names": {"a": "b"}}', "\ud800"):
        (tmp_path / "d.json").write_text(text, errors="surrogatepass")
        with pytest.raises(InputError, match="d.json"):
            load([tmp_path / "d.json"])
    with pytest.raises(InputError, match="not found"):
        load([tmp_path / "missing.tsv"])


def test_the_shipped_bc5cdr_dictionary_is_train_and_dev_only():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", ROOT / "scripts" / "build_bc5cdr_dictionary.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    shipped = ROOT / "src" / "biogpt" / "mining" / "dictionaries" / DEFAULTS["bc5cdr"]
    assert json.loads(shipped.read_text()) == build.merge(CDR)  # regenerated from train + valid, byte for byte
    assert shipped.stat().st_size < 1_000_000
    train, valid = (json.loads((CDR / f"{s}.entities.json").read_text()) for s in ("train", "valid"))
    test = json.loads((CDR / "test.entities.json").read_text())
    shipped_names = {n for table in json.loads(shipped.read_text()).values() for n in table}
    seen = {n for d in (train, valid) for table in d.values() for n in table}
    test_only = {n for table in test.values() for n in table} - seen
    assert test_only and not (test_only & shipped_names)
    assert default_linker("bc5cdr").link("lidocaine", "Chemical").id == "D008012"
    assert default_linker("ddi") is None


def test_aggregate_keys_by_identifier_and_sorts_by_support():
    def rec(pmid, rels):
        ents, out = {}, []
        for k, (h, hid, t, tid, score) in enumerate(rels):
            for name, ident, kind in ((h, hid, "Chemical"), (t, tid, "Disease")):
                ents.setdefault((name, kind), {"ref": f"E{len(ents) + 1}", "id": ident, "text": name, "type": kind})
            out.append({"id": f"R{k}", "type": "CID", "head": ents[(h, "Chemical")]["ref"],
                        "tail": ents[(t, "Disease")]["ref"], "score": score})  # fmt: skip
        return {"id": pmid, "entities": list(ents.values()), "relations": out}

    agg = Aggregate()
    agg.add(rec("1", [("lidocaine", "D008012", "asystole", "D006323", -3.0)]))
    agg.add(rec("2", [("Lidocaine", "D008012", "asystole", "D006323", -1.5), ("the", None, "in", None, -9.0)]))
    agg.add(rec("3", [("xylocaine", "D008012", "cardiac asystole", "D006323", -2.0), ("The", None, "in", None, -8.0)]))
    agg.add(rec("4", [("lidocaine", "D008012", "asystole", "D006323", -4.0)] * 2))  # counted once per document
    assert agg.tsv().splitlines() == [
        "head_id\thead_name\trelation\ttail_id\ttail_name\tdocuments\tbest_score\tpmids",
        "D008012\tlidocaine\tCID\tD006323\tasystole\t4\t-1.500000\t1,2,3,4",
        "-1\tthe\tCID\t-1\tin\t2\t-8.000000\t2,3",
    ]


# --- extraction with identifiers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdr_model(tmp_path_factory):
    cfg = BioGPTConfig(vocab_size=42384 + 9, n_layer=2, d_model=32, n_head=4, d_ffn=64, num_prompt_tokens=9)
    torch.manual_seed(9)
    m = BioGPT(cfg)
    m.init_weights(seed=9)
    d = tmp_path_factory.mktemp("cdr9")
    save_hf(m.eval(), Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=9), d)
    return d


@pytest.fixture(scope="module")
def cdr_docs(tmp_path_factory):
    """Six BC5CDR test abstracts as JSONL, and their test-split dictionary."""
    docs = json.loads((CDR / "test.json").read_text())
    path = tmp_path_factory.mktemp("cdr") / "docs.jsonl"
    with open(path, "w") as f:
        for pmid, d in list(docs.items())[:6]:
            f.write(json.dumps({"id": pmid, "title": d["title"], "abstract": d["abstract"]}) + "\n")
    return path


def _records(cdr_model, cdr_docs, linked=False):
    import biogpt

    model, tok = biogpt.load(cdr_model)
    docs = [d for d in read_documents(cdr_docs) if isinstance(d, Document)]
    docs.append(title_abstract("no-title", "", "lidocaine and asystole."))
    lk = load([CDR / "test.entities.json"])
    return Extractor(model, tok, "bc5cdr", grounded=True, batch_size=4, linker=lk, linked=linked).extract(docs), lk


def test_linked_decoding_names_only_dictionary_entities(cdr_model, cdr_docs):
    free, lk = _records(cdr_model, cdr_docs)
    linked, _ = _records(cdr_model, cdr_docs, linked=True)
    assert all(r["parsed"] for r in linked)
    named = [e for r in linked for e in r["entities"]]
    assert named and all(e["grounded"] and e["id"] is not None and e["link"] for e in named), named
    assert all(lk.is_name(e["text"], e["type"]) for e in named)
    assert sum(e["id"] is None for r in free for e in r["entities"]) > 0  # grounded alone names non-entities


def test_records_and_every_format_carry_identifiers(cdr_model, cdr_docs):
    from bioc import biocjson, biocxml

    records, lk = _records(cdr_model, cdr_docs, linked=True)
    for r in records:
        for e in r["entities"]:
            want = lk.link(e["text"], e["type"], r["text"])
            assert (e["id"], e["curie"], e["link"]) == (want.id, want.curie, want.how)
            assert e["curie"] == "MESH:" + e["id"]
    pubtator = render(records, "pubtator", {})
    ids = {e["id"] for r in records for e in r["entities"]}
    for line in pubtator.splitlines():
        cols = line.split("\t")
        if len(cols) == 6:  # mention lines end in the concept id
            assert cols[5] in ids
        elif len(cols) == 4:  # relation lines: CID, chemical MeSH, disease MeSH
            assert cols[1] == "CID" and cols[2] in ids and cols[3] in ids
    for coll in (biocxml.loads(render(records, "bioc-xml", {})), biocjson.loads(render(records, "bioc-json", {}))):
        for d, r in zip(coll.documents, records):
            anns = {a.id: a for p in d.passages for a in p.annotations}
            by_ref = {e["ref"]: e for e in r["entities"]}
            assert anns and len(anns) == sum(max(1, len(e["spans"])) for e in r["entities"])
            for aid, a in anns.items():
                e = by_ref[aid.split(".")[0]]
                assert a.infons["identifier"] == e["curie"] and a.infons["type"] == e["type"]
                assert a.infons["biogpt_link"] == e["link"]
            for rel, x in zip(d.relations, r["relations"]):
                h, t = (anns[n.refid] for n in rel.nodes)
                want = ("MESH:" + x["head_id"], "MESH:" + x["tail_id"])
                assert (h.infons["identifier"], t.infons["identifier"]) == want
                assert rel.infons["role1"] == f"Chemical|MESH:{x['head_id']}"


def test_extract_command_links_by_default_and_writes_the_summary(cdr_model, cdr_docs, tmp_path, capsys):
    out, summary = tmp_path / "o.jsonl", tmp_path / "s.tsv"
    args = ["extract", "--task", "bc5cdr", "--model", str(cdr_model), str(cdr_docs), "--grounded", "--quiet"]
    assert main(args + ["-o", str(out), "--summary", str(summary), "--chunk-size", "4"]) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    shipped = default_linker("bc5cdr")
    for r in records:
        for e in r["entities"]:
            assert e["id"] == shipped.link(e["text"], e["type"], r["text"]).id
    agg = Aggregate()
    for r in records:
        agg.add(r)
    assert summary.read_text() == agg.tsv() and len(agg.tsv().splitlines()) > 1
    assert main(args + ["-o", str(tmp_path / "n.jsonl"), "--no-link"]) == 0
    assert all(e["id"] is None and e["link"] is None for x in (tmp_path / "n.jsonl").read_text().splitlines()
               for e in json.loads(x)["entities"])  # fmt: skip


@pytest.mark.parametrize("extra,why", [
    (["--linked"], "--linked restricts --grounded"),
    (["--grounded", "--no-link", "--dictionary", "x.tsv"], "--no-link turns linking off"),
    (["--grounded", "--dictionary", "missing.tsv"], "--dictionary missing.tsv: file not found"),
])  # fmt: skip
def test_extract_linking_options_refused_early(cdr_docs, tmp_path, capsys, extra, why):
    assert main(["extract", "--task", "bc5cdr", str(cdr_docs), "-o", str(tmp_path / "o.jsonl")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and why in err[0]


@pytest.mark.parametrize("extra,why", [
    (["--predictions", "p.txt", "--linked"], "--linked restricts --grounded"),
    (["--predictions", "p.txt", "--dictionary", "d.tsv"], "--dictionary is for --linked"),
    (["--grounded", "--linked", "--limit", "1"], "--linked needs a relation task and a dictionary for it"),
])  # fmt: skip
def test_eval_linked_options_refused(capsys, extra, why):
    assert main(["eval", "ddi" if "--limit" in extra else "bc5cdr"] + extra) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error: ")]
    assert len(err) == 1 and why in err[0]


def test_extract_with_a_dictionary_not_utf8_is_one_error(cdr_model, cdr_docs, tmp_path, capsys):
    (tmp_path / "d.tsv").write_bytes(b"\xff\xfe\tChemical\tD1\n")
    assert main(["extract", "--task", "bc5cdr", "--model", str(cdr_model), str(cdr_docs), "-o",
                 str(tmp_path / "o.jsonl"), "--dictionary", str(tmp_path / "d.tsv")]) == 2  # fmt: skip
    assert "not UTF-8" in capsys.readouterr().err


# --- the server ---------------------------------------------------------------------------------------------


def test_server_extract_links_with_a_dictionary_it_was_started_with():
    import asyncio

    import httpx

    import biogpt
    from biogpt.serve import create_app

    model, tok = biogpt.load("demo")
    test_dict = load([CDR / "test.entities.json"])
    app = create_app(model, tok, model_name="demo", dictionaries={"cdr-test": test_dict})
    doc = {"id": "d1", "title": "Lidocaine-induced cardiac asystole.",
           "abstract": "Intravenous administration of a single 50 mg bolus of lidocaine caused asystole."}  # fmt: skip
    ref_doc = title_abstract("d1", doc["title"], doc["abstract"])
    bodies = {
        "default": {"grounded": True},
        "named": {"grounded": True, "linked": True, "dictionary": "cdr-test", "format": "pubtator"},
        "off": {"grounded": True, "link": False},
        "unknown": {"dictionary": str(CDR / "test.entities.json")},
        "contradiction": {"link": False, "dictionary": "cdr-test"},
        "ungrounded": {"linked": True},
    }

    async def go():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http:
                return {k: await http.post("/v1/extract", json={"task": "bc5cdr", "documents": [doc], **b})
                        for k, b in bodies.items()}  # fmt: skip

    out = asyncio.run(go())

    def ref(**kw):
        return Extractor(model, tok, "bc5cdr", grounded=True, model_info={"name": "demo"}, **kw).extract([ref_doc])

    assert out["default"].json()["records"] == ref(linker=default_linker("bc5cdr"))
    named = ref(linker=test_dict, linked=True)
    assert out["named"].json()["records"] == named and out["named"].json()["data"] == render(named, "pubtator", {})
    assert all(e["id"] for e in named[0]["entities"]) and named[0]["relations"]
    assert out["off"].json()["records"] == ref()
    for key, param in (("unknown", "dictionary"), ("contradiction", "link"), ("ungrounded", "linked")):
        assert out[key].status_code == 400 and out[key].json()["error"]["param"] == param, out[key].text
    assert "this server has: cdr-test" in out["unknown"].json()["error"]["message"]


# --- the BioCreative V CDR evaluation kit reads our PubTator ------------------------------------------------

CDR_JAR = Path(os.environ.get("BIOGPT_CDR_JAR", ROOT.parent / "shared/tools/BC5CDR_Evaluation-0.0.3/bc5cdr_eval.jar"))


def cdr_jar() -> Path:
    """The kit's jar and Java, or a skip (a failure with BIOGPT_REQUIRE_CDR_JAR=1) saying where to put them."""
    missing = None
    if not CDR_JAR.is_file():
        missing = (f"the BioCreative V CDR evaluation jar is not at {CDR_JAR}: copy BC5CDR_Evaluation-0.0.3/ from "
                   "github.com/microsoft/BioGPT (data/BC5CDR/raw/) to ../shared/tools/")  # fmt: skip
    elif shutil.which("java") is None:
        missing = "java is not installed (apt-get install -y default-jre-headless)"
    if missing and os.environ.get("BIOGPT_REQUIRE_CDR_JAR") == "1":
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)
    return CDR_JAR


def jar_scores(jar: Path, gold: Path, pred: Path) -> dict[str, str]:
    """TP, FP, FN, Precision, Recall, F-score as the kit prints them (relation CID, PubTator)."""
    out = subprocess.run(["java", "-cp", str(jar), "ncbi.bc5cdr_eval.Evaluate", "relation", "CID", "PubTator",
                          str(gold), str(pred)], capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line and "\t" not in line)


@pytest.mark.slow
def test_cdr_kit_scores_our_pubtator_as_biogpt_eval(tmp_path, capsys):
    jar = cdr_jar()
    n = 12  # the first 12 test documents with relations: the demo model finds 2 of their 25 pairs
    docs = [(pmid, d) for pmid, d in json.loads((CDR / "test.json").read_text()).items() if d.get("relations")][:n]
    with open(tmp_path / "docs.jsonl", "w") as f, open(tmp_path / "gold.pubtator", "w") as g:
        for pmid, d in docs:
            f.write(json.dumps({"id": pmid, "title": d["title"], "abstract": d["abstract"]}) + "\n")
            g.write(f"{pmid}|t|{d['title']}\n{pmid}|a|{d['abstract']}\n")
            g.write("".join(f"{pmid}\tCID\t{r['chemical']}\t{r['disease']}\n" for r in d["relations"]) + "\n")
    report = tmp_path / "r.json"
    assert main(["eval", "bc5cdr", "--grounded", "--limit", str(n), "--json", "--output", str(report)]) == 0
    want = json.loads(report.read_text())["metrics"]
    assert main(["extract", "--task", "bc5cdr", "--grounded", "--exact-links", "--dictionary",
                 str(CDR / "test.entities.json"), str(tmp_path / "docs.jsonl"), "-o", str(tmp_path / "out.pubtator"),
                 "--quiet"]) == 0  # fmt: skip
    got = jar_scores(jar, tmp_path / "gold.pubtator", tmp_path / "out.pubtator")
    assert (int(got["TP"]), int(got["FP"]), int(got["FN"])) == (want["tp"], want["fp"], want["fn"]) == (2, 11, 23)
    for key, name in (("Precision", "precision"), ("Recall", "recall"), ("F-score", "f1")):
        digits = len(got[key].split(".")[1])
        assert abs(float(got[key]) - want[name]) < 10**-digits, (key, got[key], want[name])


def test_pubtator_relation_lines_one_per_identifier_pair_with_the_relation_type():
    none = {"id": None, "curie": None, "link": None, "type": "Drug"}
    ents = [{"ref": "E1", "id": "DB00945", "curie": "DRUGBANK:DB00945", "link": "exact", "text": "aspirin",
             "type": "Drug", "grounded": True, "spans": [{"start": 0, "end": 7, "text": "aspirin"}]},
            {"ref": "E2", **none, "text": "warfarin", "grounded": True, "spans": [{"start": 12, "end": 20,
                                                                                    "text": "warfarin"}]},
            {"ref": "E3", **none, "text": "coumadin", "grounded": False, "spans": []}]  # fmt: skip
    rels = [{"id": f"R{k}", "type": "effect", "head": "E1", "tail": t, "head_id": "DB00945", "tail_id": None,
             "score": -1.0, "grounded": True} for k, t in enumerate(("E2", "E3"))]  # fmt: skip
    record = {"id": "9", "text": "aspirin and warfarin.", "passages": [{"type": "text", "offset": 0,
              "text": "aspirin and warfarin."}], "entities": ents, "relations": rels}  # fmt: skip
    lines = render([record], "pubtator", {}).splitlines()
    assert lines[2:-1] == ["9\t0\t7\taspirin\tDrug\tDB00945", "9\t12\t20\twarfarin\tDrug\t-1", "9\teffect\tDB00945\t-1"]


def test_normal_key_is_the_re_scorers_normalisation():
    from biogpt.mining.linking import normal_key
    from biogpt.tasks.ddi import normalize_name

    tables = [json.loads((CDR / f"{s}.entities.json").read_text()) for s in ("train", "valid", "test")]
    names = [n for d in tables for t in d.values() for n in t]
    names += ["factor 8", "Factor VIII", "il-2", "b-type natriuretic", "x1", "12", "ä2", "İ3", " a b - type 9 "]
    assert all(normal_key(n) == normalize_name("".join(n.lower().split())).lower() for n in names)
    assert normal_key("factor 8") == normal_key("Factor VIII") == "factorviii"
