"""BiomedGPT's tokenizer against the reference OFA tokenizer (modelscope's OFATokenizer, a BART tokenizer) built
from the real files in ../shared/data/biomedgpt/bpe/, on the MeQSum texts and fuzzed text; OFA's normalisation."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from biogpt.errors import VocabError
from biogpt.text.ofa import OFATokenizer, normalize_caption, normalize_question

from .conftest import SHARED
from .ofa_reference import reference

BPE = SHARED / "data" / "biomedgpt" / "bpe"
MEQSUM = SHARED / "data" / "biomedgpt" / "tasks" / "MeQSum"


@pytest.fixture(scope="module")
def ours():
    return OFATokenizer.from_pretrained(BPE)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The reference tokenizer: vocab.json written here by fairseq's rule (model id = 4 + the dict.txt line of
    the token's GPT-2 id; <s> <pad> </s> <unk> first, <mask> after the dictionary), then the 8192 <code_i> and
    1000 <bin_i> tokens added as OFA's modelscope model adds them."""
    _, _, tokenization, _ = reference()
    d = tmp_path_factory.mktemp("ofa-ref-tok")
    gpt2 = json.loads((BPE / "encoder.json").read_text(encoding="utf-8"))
    lines = [line.split(" ")[0] for line in (BPE / "dict.txt").read_text(encoding="utf-8").splitlines()]
    line_of = {s: i for i, s in enumerate(lines)}
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({tok: 4 + line_of[str(gid)] for tok, gid in gpt2.items()})
    vocab.update({s: 4 + i for s, i in line_of.items() if not s.isdigit()})  # madeupword0000..0002
    vocab["<mask>"] = 4 + len(lines)
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    shutil.copy(BPE / "vocab.bpe", d / "merges.txt")
    tok = tokenization.OFATokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    tok.add_tokens([f"<code_{i}>" for i in range(8192)])
    tok.add_tokens([f"<bin_{i}>" for i in range(1000)])
    return tok


def meqsum_texts() -> list[str]:
    out = []
    for split in ("train", "val", "test"):
        for line in (MEQSUM / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
            out += line.split("\t")
    return out


def test_vocabulary_layout(ours, ref):
    assert ours.vocab_size == len(ref) == 59457
    assert (ours.mask_token_id, ours.code_id(0), ours.bin_id(0), ours.bin_id(999)) == (50264, 50265, 58457, 59456)
    assert ours.encode("<mask><code_8191><bin_3>") == [50264, 58456, 58460]


def test_meqsum_ids_equal_reference(ours, ref):
    texts = meqsum_texts()
    assert len(texts) == 2000
    for form in (lambda t: t, lambda t: " " + normalize_caption(t, 512)):
        for t in map(form, texts):
            assert ours.encode(t) == ref(t, add_special_tokens=False)["input_ids"], t
    t = " " + normalize_caption(texts[0])
    assert ours.encode_source(t) == ref(t)["input_ids"]  # <s> ... </s>


def test_fuzzed_text_equal_reference(ours, ref):
    rng = random.Random(16)
    alphabet = list("abcXYZ019 .,;:!?'\"-/()\t\n  ") + [
        "é",
        "ß",
        "μ",
        "中",
        "😀",
        "\u200b",
        "ǅ",
        "'s",
        "<bin_4>",
        "<mask>",
    ]
    for _ in range(400):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert ours.encode(t) == ref(t, add_special_tokens=False)["input_ids"], repr(t)


def test_decode_round_trip(ours):
    for t in (" what does the image describe?", " héllo wörld 😀", " a <bin_5> b"):
        assert ours.decode(ours.encode_source(t)) == t


def test_normalisation_as_ofa():
    # pre_caption / pre_question: lower-case, leading ,.!?*#:;~ stripped, - and / to spaces, spaces collapsed,
    # at most max_words words; pre_caption also writes <person> as person
    assert normalize_question("?? What  is/are the Left-Lung finding?\n") == "what is are the left lung finding?"
    assert normalize_caption("#Chest X-ray:  <person> has  NO effusion.", max_words=4) == "chest x ray: person"
    assert normalize_caption("a b c", max_words=5) == "a b c"


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(VocabError, match="no BiomedGPT tokenizer files"):
        OFATokenizer.from_pretrained(tmp_path)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(BPE / f, tmp_path / f)
    (tmp_path / "dict.txt").write_text("13 850314647\n262 800385005\n", encoding="utf-8")
    with pytest.raises(VocabError, match="GPT-2 tokens of encoder.json have no dictionary line"):
        OFATokenizer.from_pretrained(tmp_path)
    (tmp_path / "dict.txt").write_text("13\n", encoding="utf-8")
    with pytest.raises(VocabError, match="is not a 'SYMBOL COUNT' dictionary line"):
        OFATokenizer.from_pretrained(tmp_path)
