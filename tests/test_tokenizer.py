"""Tokenizer parity with transformers.BioGptTokenizer (ids and decoded text), offsets, formats, errors."""

import json
import random

import pytest

from biogpt import Tokenizer, VocabError
from biogpt.tasks.texts import task_texts
from biogpt.text import load_vocab, moses

from .conftest import TASKS, VOCABS

TRICKY = [
    "",
    "   ",
    "\t\n \r ",
    "COVID-19 is",
    "Bicalutamide is a non-steroidal anti-androgen used to treat prostate cancer.",
    "The patient's IL-2 levels (IL-2Rα) rose by 3.5-fold after 12 weeks; p < 0.05.",
    "BRCA1 and TP53 mutations were detected in 1,024 of 2,000 samples (51.2%).",
    'Tumor necrosis factor-α (TNF-α) & interleukin-6 "cytokine storm" in SARS-CoV-2 patients.',
    "Metformin 500 mg/day reduced HbA1c by ~1.2% vs. placebo [n=340].",
    "We don't know whether β-blockers (e.g., propranolol) affect Ca2+ influx at 37 °C.",
    "Naïve T-cells were stimulated with anti-CD3/CD28 beads — see https://example.org/x?y=1.",
    "Mail j.doe@uni-hospital.org or visit www.ncbi.nlm.nih.gov/pubmed/?term=biogpt&sort=date.",
    "2,3,7,8-tetrachlorodibenzo-p-dioxin and N-(4-hydroxyphenyl)retinamide (4-HPR) were tested.",
    "Dr. Smith, i.e. the PI, et al. showed (Fig. 2A) that U.S. patients ... no effect; e.g. IL-6 was unchanged.",
    "Mice were treated for 3 days. The U.S. cohort (n = 12) showed... no effect.",
    "'Single' and \"double\" quotes, `backticks`, ''two'' and the ellipsis ... plus a | pipe.",
    "ÉCOLE naïve café Straße αβγ 50 µM ≥ 2× ± 0.5 ≤ 3 → ↑ ° ‰ ∆",
    "Chinese 中文 and Japanese 日本語テキスト and Korean 한국어 text.",
    "non\u00a0breaking\u2009thin\u200bzero\u200dwidth\u3000ideographic\u2028line",
    "control\x00chars\x01here\x07and\x1bthere\x1f and \x7f\x85 end",
    "hello </s> world <s> and <pad> or <unk> inline</s>glued",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 8,
    "x" * 500 + " " + "ab" * 300,
    "3,000,000 cells, 1.5e-3 M, -40 °C, +/- 2.5, 10^5, 1:100, 50-60%, p<0.001, (n=3).",
    "The Jones' house; rock 'n' roll; '90s; o'clock; ma'am; y'all; don't; can't; I'm; we're; they've; it'll",
    "A.B.C. Ph.D. M.D. No. 5 and No. five; pp. 12-15; Art. 3; Nos. 4; vs. v. St. Jr.",
    "[3H]-thymidine, [Ca2+]i, {1,2}, <10 mm>, a|b, a&b, &amp; already escaped &lt;tag&gt;",
    "Ends with apostrophe' 'and starts with one' ' ' '' '",
    "Multiple dots.... and.. and...and . . . end..",
    "Trailing quote.' And 'another.'",
    "DOTMULTI DOTDOTMULTI literal markers",
    "learned1 learned2 learned9 are plain words in text",
    "αβ-γδ-ε 5α-reductase Δ9-THC 17β-estradiol ω-3",
    "A-, -B, --, ---, a--b, a- -b, 5-, -5, 1-2-3-4",
    ",leading comma and trailing comma, ,, ,5 5, 5,",
]


def ref_ids(hf, text):
    return hf(text)["input_ids"]


@pytest.mark.parametrize("name", ["base", "large"])
def test_tricky_text_matches_transformers(name, tokenizers, hf_tokenizers):
    ours, ref = tokenizers[name], hf_tokenizers[name]
    for text in TRICKY:
        expected = ref_ids(ref, text)
        assert ours.encode(text) == expected, text
        assert ours.encode_with_offsets(text)[0] == expected, text
        assert ours.decode(expected) == ref.decode(expected, skip_special_tokens=True), text


def test_reference_vectors(tokenizers):
    """Ids recorded from transformers.BioGptTokenizer in the reference numerics document (§3.7)."""
    base, large = tokenizers["base"], tokenizers["large"]
    assert base.encode("COVID-19 is") == [2, 4805, 9, 656, 21]
    assert base.encode("") == [2]
    assert base.encode("hello </s> world") == [2, 696, 3666, 399, 2, 2181]
    assert large.encode("COVID-19 is") == [2, 2399, 462, 3506, 11, 797, 36, 34]


def test_random_strings_match_transformers(tokenizers, hf_tokenizers):
    """Random strings over characters that Moses treats specially, including at chunk boundaries."""
    alphabet = list("aAzZ.,.'\"`-/:;()[]{}<>&|$%1 0 9  ") + [
        "..", "...", "e.g.", "U.S.", "Dr.", "No.", "pp.", "vs.", "'s", "n't", "\t", "\n", "\xa0", "\x01",
        "α", "µ", "≥", "\u200b", "中", "é", "</s>", "i.e.", "Fig.", "Art.", "5,", ",5",
    ]  # fmt: skip
    rng = random.Random(1234)
    ours, ref = tokenizers["base"], hf_tokenizers["base"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        expected = ref_ids(ref, text)
        assert ours.encode(text) == expected, repr(text)
        assert ours.encode_with_offsets(text)[0] == expected, repr(text)
        assert ours.decode(expected) == ref.decode(expected, skip_special_tokens=True), repr(text)


def test_moses_matches_sacremoses():
    from sacremoses import MosesDetokenizer, MosesTokenizer

    mt, md = MosesTokenizer("en"), MosesDetokenizer("en")
    for text in TRICKY:
        expected = mt.tokenize(text, aggressive_dash_splits=True, escape=True)
        assert moses.tokenize(text) == expected, text
        assert moses.detokenize(expected) == md.detokenize(expected), text


def test_moses_tables_match_sacremoses():
    """The generated character classes are exactly sacremoses' sets (regenerate with scripts/gen_moses_tables.py)."""
    from sacremoses.tokenize import MosesDetokenizer, MosesTokenizer

    from biogpt.text import _moses_tables as t

    def chars(ranges):
        return {chr(c) for a, b in ranges for c in range(a, b + 1)}

    assert chars(t.IS_N) == set(MosesTokenizer.IsN)
    assert chars(t.IS_ALNUM) == set(MosesTokenizer.IsAlnum)
    assert chars(t.IS_ALPHA) == set(MosesTokenizer.IsAlpha)
    assert chars(t.IS_LOWER) == set(MosesTokenizer.IsLower)
    assert chars(t.IS_SC) == set(MosesDetokenizer.IsSc)
    assert chars(t.DETOK_IS_ALPHA) == set(MosesDetokenizer.IsAlpha)


def test_batch_and_lowercase(tokenizers, hf_tokenizers):
    ref = hf_tokenizers["base"]
    texts = TRICKY[3:10]
    assert tokenizers["base"].encode_batch(texts) == [ref_ids(ref, t) for t in texts]
    lower = Tokenizer.from_pretrained(VOCABS["base"], lowercase=True)
    for t in texts:
        assert lower.encode(t) == ref_ids(ref, t.lower())


def test_offsets_point_at_the_source(tokenizers):
    tok = tokenizers["base"]
    for text in TRICKY + ["Bicalutamide &amp; IL-2 (a|b) don't"]:
        ids, spans = tok.encode_with_offsets(text)
        assert len(ids) == len(spans)
        assert spans[0] == (0, 0)
        starts = [a for a, _ in spans]
        assert starts == sorted(starts), text
        for i, (a, b) in zip(ids[1:], spans[1:]):
            assert 0 <= a <= b <= len(text)
            piece = tok.pieces[i]
            if i in (0, 1, 2):
                assert text[a:b] == piece  # a literal special token
            elif i == 3:
                assert b > a  # a literal "<unk>", or an unknown piece: points at its characters
            elif "DOTMULTI" in text:
                continue  # Moses itself rewrites that literal; spans stay valid but need not spell it
            elif piece == "@-@":
                assert text[a:b] == "-"
            else:
                plain = piece.removesuffix("@@")
                src = moses.CONTROL.sub("", text[a:b])  # Moses deletes control characters inside words
                # a plain piece spells its source; a whole escaped token its unescaped source; a piece of a
                # split escaped token (&amp; -> "&am@@ p;") points at the escaped token's source characters
                assert src == plain or src == moses.unescape(plain) or any(ch in src for ch in "&|<>'\"[]"), (
                    text,
                    piece,
                    src,
                )


def test_offsets_example():
    tok = Tokenizer.from_pretrained(VOCABS["base"])
    text = "Bicalutamide (IL-2) & x"
    ids, spans = tok.encode_with_offsets(text)
    assert [text[a:b] for a, b in spans] == ["", "Bic", "alutamide", "(", "IL", "-", "2", ")", "&", "x"]
    lower = Tokenizer.from_pretrained(VOCABS["base"], lowercase=True)
    text = "İNSULIN level"  # 'İ'.lower() is two characters: spans still index the original text
    ids, spans = lower.encode_with_offsets(text)
    assert ids == lower.encode(text)
    assert spans[-1] == (8, 13) and text[8:13] == "level"


def test_prompt_tokens(tmp_path):
    tok = Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=9)
    assert tok.vocab_size == 42384 + 9
    assert tok.prompt_ids == list(range(42384, 42393))
    ids = tok.encode("the answer is") + tok.prompt_ids + tok.encode("yes", add_eos_prefix=False)
    prompt = " ".join(f"learned{k}" for k in range(1, 10))
    assert tok.decode(ids) == f"the answer is {prompt} yes"
    # text never maps to a prompt id (as in fairseq, where prompt tokens are added by id)
    assert tok.encode("learned1") == Tokenizer.from_pretrained(VOCABS["base"]).encode("learned1")
    tok.save_pretrained(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).prompt_ids == tok.prompt_ids
    hoc = Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=1)
    assert hoc.vocab_size == 42385 and hoc.decode(hoc.prompt_ids) == "learned1"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([42393])


@pytest.mark.parametrize("name", ["base", "large"])
def test_format_conversion_round_trip(name, tmp_path, hf_tokenizers):
    from .conftest import build_hf_vocab

    tok = Tokenizer.from_pretrained(VOCABS[name])
    tok.save_pretrained(tmp_path / "hf", format="hf")
    tok.save_pretrained(tmp_path / "fs", format="fairseq")
    # the HF files we write equal the documented conversion, and load in transformers
    ref_dir = build_hf_vocab(VOCABS[name], tmp_path / "ref")
    assert json.loads((tmp_path / "hf" / "vocab.json").read_text()) == json.loads((ref_dir / "vocab.json").read_text())
    from transformers import BioGptTokenizer

    hf = BioGptTokenizer.from_pretrained(str(tmp_path / "hf"))
    # dict.txt and bpecodes written back are byte-identical to the originals
    assert (tmp_path / "fs" / "dict.txt").read_bytes() == (VOCABS[name] / "dict.txt").read_bytes()
    assert (tmp_path / "fs" / "bpecodes").read_bytes() == (VOCABS[name] / "bpecodes").read_bytes()
    from_hf = Tokenizer.from_pretrained(tmp_path / "hf")
    from_fs = Tokenizer.from_pretrained(tmp_path / "fs")
    for text in TRICKY[3:12]:
        expected = ref_ids(hf_tokenizers[name], text)
        assert ref_ids(hf, text) == from_hf.encode(text) == from_fs.encode(text) == expected


def test_bad_input(tmp_path):
    tok = Tokenizer.from_pretrained(VOCABS["base"])
    with pytest.raises(TypeError, match="takes a str"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="takes a str"):
        tok.encode(None)
    with pytest.raises(TypeError, match="list of str"):
        tok.encode_batch("a string")
    with pytest.raises(VocabError, match="not a directory"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(VocabError, match="no vocabulary found"):
        Tokenizer.from_pretrained(tmp_path)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bpecodes").write_text((VOCABS["base"] / "bpecodes").read_text())
    with pytest.raises(VocabError, match=r"dict.txt: file not found"):
        load_vocab(bad)
    lines = (VOCABS["base"] / "dict.txt").read_text().splitlines()
    (bad / "dict.txt").write_text("\n".join(lines[:10] + ["brokenline"] + lines[10:]) + "\n")
    with pytest.raises(VocabError, match=r"dict.txt, line 11: expected 'token count'"):
        load_vocab(bad)
    (bad / "dict.txt").write_text("\n".join(lines[:10] + [lines[3]] + lines[10:]) + "\n")
    with pytest.raises(VocabError, match=r"line 11: duplicate token"):
        load_vocab(bad)
    (bad / "dict.txt").write_bytes(b"\xff\xfe bad\n")
    with pytest.raises(VocabError, match="not UTF-8"):
        load_vocab(bad)

    mixed = tmp_path / "mixed"  # base dictionary with the Large BPE codes
    mixed.mkdir()
    (mixed / "dict.txt").write_text((VOCABS["base"] / "dict.txt").read_text())
    (mixed / "bpecodes").write_text((VOCABS["large"] / "bpecodes").read_text())
    with pytest.raises(VocabError, match="do not belong together"):
        load_vocab(mixed)

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "vocab.json").write_text("{not json")
    (hf / "merges.txt").write_text("a b\n")
    with pytest.raises(VocabError, match="vocab.json: not valid JSON"):
        load_vocab(hf)
    (hf / "vocab.json").write_text(json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a</w>": 5}))
    with pytest.raises(VocabError, match="without gaps"):
        load_vocab(hf)
    (hf / "vocab.json").write_text(json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a</w>": 4}))
    (hf / "merges.txt").write_text("a b c d\n")
    with pytest.raises(VocabError, match=r"merges.txt, line 1: expected 'left right \[count\]'"):
        load_vocab(hf)


def _stdin(monkeypatch, data: bytes) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_cli_tokenize(capsys, monkeypatch, tmp_path):
    from biogpt.cli import main

    tok = Tokenizer.from_pretrained(VOCABS["base"])
    lines = ["COVID-19 is", "", "Bicalutamide & IL-2."]
    _stdin(monkeypatch, ("\n".join(lines) + "\n").encode())
    assert main(["tokenize", "--vocab", str(VOCABS["base"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [" ".join(map(str, tok.encode(t))) for t in lines]

    _stdin(monkeypatch, b"Bicalutamide & IL-2.\n")
    assert main(["tokenize", "--vocab", str(VOCABS["base"]), "--tokens"]) == 0
    assert capsys.readouterr().out == "Bic@@ alutamide &amp; IL @-@ 2 .\n"

    _stdin(monkeypatch, b"2 4805 9 656 21\n")
    assert main(["tokenize", "--vocab", str(VOCABS["base"]), "--decode"]) == 0
    assert capsys.readouterr().out == "COVID-19 is\n"

    # bad input: one error line, exit 2, never a traceback or silent <unk>s
    cases = [
        (b"x\n", [str(tmp_path)], "no vocabulary found"),
        (b"ok\n\xff\xfe bad\n", [], "standard input line 2 is not UTF-8"),
        (b"2 99999999\n", ["--decode"], "id 99999999 is outside the vocabulary (ids 0..42383)"),
        (b"2 x\n", ["--decode"], "line 1 is '2 x'"),
    ]
    for data, extra, message in cases:
        _stdin(monkeypatch, data)
        vocab = extra[:1] if extra[:1] == [str(tmp_path)] else [str(VOCABS["base"])]
        flags = [f for f in extra if f != str(tmp_path)]
        assert main(["tokenize", "--vocab", *vocab, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["base", "large"])
def test_every_task_text_matches_transformers(name, tokenizers, hf_tokenizers):
    """Every text of ../shared/data/tasks, as written and lowercased: ids and decoded text identical."""
    ours, ref = tokenizers[name], hf_tokenizers[name]
    texts = list(task_texts(TASKS))
    assert len(texts) > 30000
    mismatched_ids, mismatched_text = [], []
    for text in texts + [t.lower() for t in texts]:
        expected = ref_ids(ref, text)
        if ours.encode(text) != expected:
            mismatched_ids.append(text)
        if ours.decode(expected) != ref.decode(expected, skip_special_tokens=True):
            mismatched_text.append(text)
    assert mismatched_ids == [] and mismatched_text == []
