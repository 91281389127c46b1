"""`biogpt eval caption`: report generation (IU X-ray / PEIR Gross style caption TSV) scored with
ROUGE-L and CIDEr-D. Expected metrics come from the library's own generations and the metric functions."""

from __future__ import annotations

import base64
import json

import pytest

import biogpt
from biogpt.checkpoints.ofa import save_ofa
from biogpt.tasks.biomedgpt.caption import read_report_captions
from biogpt.tasks.biomedgpt.common import CAPTION_PROMPT, DECODING, Record, generate_text
from biogpt.tasks.biomedgpt.metrics import caption_words, cider_d, rouge_l
from biogpt.text.ofa import OFATokenizer

from .test_ofa_cli import BPE, png_bytes, run, tiny_ofa

REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "No acute cardiopulmonary abnormality.&&Heart size normal, lungs clear!",
    "Mild cardiomegaly; small left pleural effusion.",
]


@pytest.fixture(scope="module")
def ofa_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ofa")
    save_ofa(tiny_ofa(), OFATokenizer.from_pretrained(BPE), d)
    return d


def caption_tsv(path, reports=REPORTS):
    rows = [f"img{i}\t{base64.b64encode(png_bytes(seed=10 + i)).decode()}\t{r}" for i, r in enumerate(reports)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_caption_words():
    assert caption_words(" The lungs are clear.  No X-ray findings!") == "the lungs are clear no xray findings"


def test_read_report_captions(tmp_path):
    recs = read_report_captions(caption_tsv(tmp_path / "test.tsv"))
    assert [r.id for r in recs] == ["img0", "img1", "img2"]
    assert all(r.text == CAPTION_PROMPT and r.image == png_bytes(seed=10 + i) for i, r in enumerate(recs))
    assert list(recs[1].refs) == ["no acute cardiopulmonary abnormality", "heart size normal lungs clear"]


def test_eval_caption_metrics_match_the_library(ofa_dir, tmp_path, capsys):
    model, tok = biogpt.load(ofa_dir)
    data = caption_tsv(tmp_path / "test.tsv")
    argv = ["eval", "caption", "--model", ofa_dir, "--data", tmp_path, "--output", tmp_path / "m.json",
            "--save-outputs", tmp_path / "o.jsonl", "--batch-size", 2]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0 and "caption: 3 examples scored" in err
    recs = [Record(f"img{i}", CAPTION_PROMPT, png_bytes(seed=10 + i)) for i in range(3)]
    preds = generate_text(model, tok, recs, DECODING["caption"])
    assert DECODING["caption"].beam_size == 10 and DECODING["caption"].max_len_b == 32
    cands = [caption_words(p) for p in preds]
    refs = [[caption_words(c) for c in r.split("&&")] for r in REPORTS]
    want_rl = sum(rouge_l(c, rs) for c, rs in zip(cands, refs)) / 3
    got = json.loads(out)
    assert got == {"task": "caption", "rouge_l": pytest.approx(want_rl, abs=1e-12),
                   "cider_d": pytest.approx(cider_d(cands, refs), abs=1e-12), "n": 3}  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text()) == got
    saved = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert saved == [{"id": r.id, "prediction": p} for r, p in zip(recs, preds)]

    code, out, _ = run(["eval", "caption", "--model", ofa_dir, "--data", data, "--limit", 1], capsys)
    assert code == 0
    assert json.loads(out) == {"task": "caption", "rouge_l": pytest.approx(rouge_l(cands[0], refs[0]), abs=1e-12),
                               "cider_d": pytest.approx(cider_d(cands[:1], refs[:1]), abs=1e-12), "n": 1}  # fmt: skip


def test_eval_caption_errors(ofa_dir, tmp_path, capsys):
    good = caption_tsv(tmp_path / "ok.tsv").read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join([good[0], "img1\tonly two columns", good[2]]) + "\n")
    code, _, err = run(["eval", "caption", "--model", ofa_dir, "--data", bad], capsys)
    assert code == 2 and f"{bad}:2: 2 tab-separated columns, expected uniq_id<TAB>base64 image<TAB>caption" in err
    not_image = base64.b64encode(b"not a picture").decode()
    bad.write_text("\n".join([good[0], f"img1\t{not_image}\ta report"]) + "\n")
    code, _, err = run(["eval", "caption", "--model", ofa_dir, "--data", bad], capsys)
    assert code == 2 and f"{bad}:2: " in err and "not an image" in err
    code, _, err = run(["eval", "caption", "--model", ofa_dir], capsys)
    assert code == 2 and "caption needs --data FILE" in err


# several references per image; the values below were computed once with pycocoevalcap 1.2 (pip), whose
# Cider (CIDEr-D: clipped, length-penalised, idf over these references, x 10) and Rouge (ROUGE-L, beta 1.2)
# caption evaluation reports: Cider().compute_score(REFERENCES, {k: [c]}) and Rouge().compute_score(...)
REFERENCES = {
    "a": ["the heart is normal in size", "heart size normal lungs clear", "no acute cardiopulmonary abnormality"],
    "b": ["there is a small left pleural effusion", "small left effusion", "left pleural effusion no pneumothorax"],
    "c": ["the lungs are clear", "clear lungs no effusion", "no focal consolidation the lungs are clear"],
    "d": ["mild cardiomegaly", "the heart is mildly enlarged", "cardiomegaly without edema"],
}
CANDIDATES = {"a": "heart size is normal", "b": "small left pleural effusion", "c": "the lungs are clear no effusion",
              "d": "the heart is normal"}  # fmt: skip
PYCOCOEVALCAP_CIDER = 2.8288774758150965
PYCOCOEVALCAP_ROUGE_L = {"a": 0.6535714285714286, "b": 1.0, "c": 0.8299319727891156, "d": 0.6535714285714286}


def test_cider_d_and_rouge_l_equal_the_reference_scorers():
    keys = sorted(REFERENCES)
    cands, refs = [CANDIDATES[k] for k in keys], [REFERENCES[k] for k in keys]
    assert cider_d(cands, refs) == pytest.approx(PYCOCOEVALCAP_CIDER, abs=1e-12)
    for k in keys:
        assert rouge_l(CANDIDATES[k], REFERENCES[k]) == pytest.approx(PYCOCOEVALCAP_ROUGE_L[k], abs=1e-12), k
