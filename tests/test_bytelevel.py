"""GPT-2 byte-level BPE (BioMedLM's tokenizer) against transformers on the real GPT-2 files, on a vocabulary trained
by BioMedLM's recipe, on every task text and on fuzzed text.

References: `transformers.GPT2Tokenizer` (in transformers 5 it runs on the `tokenizers` library, as ours does), and
transformers' pure-Python byte-level BPE (`ClvpTokenizer`: GPT-2's regex, byte map and merge loop, written in
Python) with its English text normaliser switched off, an implementation that shares no code with ours.
"""

import json
import random

import pytest

from biogpt.errors import VocabError
from biogpt.text.bytelevel import ByteLevelTokenizer

from .conftest import SHARED, TASKS

BPE = SHARED / "data" / "biomedgpt" / "bpe"  # OpenAI GPT-2's encoder.json (= vocab.json) + vocab.bpe (= merges.txt)


def abstracts(n: int | None = None) -> list[str]:
    """PubMed abstracts (the PubMedQA contexts of the shared task data)."""
    data = json.loads((TASKS / "PubMedQA" / "ori_pqal.json").read_text())
    out = [" ".join(item["CONTEXTS"]) for item in data.values()]
    return out[:n] if n else out


def train_biomedlm_recipe(d, vocab_size: int = 600, n: int = 300):
    """A byte-level BPE trained as BioMedLM's tokenize/train_bpe.py trains it (tokenizers BPE, ByteLevel
    pre-tokenizer without prefix space, ByteLevel decoder and trim-offsets post-processor, BpeTrainer with
    min_frequency 2 over the byte alphabet), saved as tokenizer.json and as vocab.json + merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(abstracts(n), trainer)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    tok.model.save(str(d))  # vocab.json, merges.txt
    return d


def python_reference(vocab_file, merges_file):
    """transformers' pure-Python byte-level BPE, normaliser off (identity)."""
    from transformers import ClvpTokenizer

    ref = ClvpTokenizer(str(vocab_file), str(merges_file), unk_token="<|endoftext|>", eos_token="<|endoftext|>",
                        pad_token="<|endoftext|>")  # fmt: skip
    ref._normalizer = str  # GPT-2 applies no normalisation
    return lambda text: ref.convert_tokens_to_ids(ref.tokenize(text))


@pytest.fixture(scope="module")
def gpt2_files():
    return BPE / "encoder.json", BPE / "vocab.bpe"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_biomedlm_recipe(tmp_path_factory.mktemp("biomedlm-bpe"))


FIXED = [
    "Aspirin inhibits COX-1 and COX-2 (IC50 = 3.5 μM).",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\r\n  mixed  \t ",
    "don't won't it's we're they've I'm you'll he'd DON'T",
    "12345 3.14159 1,000,000 2023-11-30 0x1F",
    "emoji 🧬🦠💊 and ZWJ 👩‍🔬, flags 🇫🇷",
    "accents: café naïve Ångström façade; Greek αβγ Δ; CJK 中文 日本語; Arabic مرحبا",
    "<|endoftext|>between<|endoftext|>",
    "",
    " ",
    "a",
]


def fuzz(n: int, seed: int = 0) -> list[str]:
    """Random strings over letters, digits, punctuation, whitespace runs, accents, CJK and emoji."""
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " ", "  \t\n\r\u00a0\u3000",
             ".,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`", "éüñçøåßÀÉ", "αβγδΔλμπ", "中文日本語한국어", "🧬🦠💊👩‍🔬😀🇫🇷",
             "\u200b\u0301\ufeff"]  # fmt: skip
    out = []
    for _ in range(n):
        k = rng.randint(1, 60)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return out


def check_offsets(tok: ByteLevelTokenizer, text: str) -> None:
    ids, spans = tok.encode_with_offsets(text)
    assert len(spans) == len(ids)
    assert all(0 <= s <= e <= len(text) for s, e in spans)
    assert all(a[0] <= b[0] for a, b in zip(spans, spans[1:]))  # in text order
    covered = "".join(text[s:e] for i, (s, e) in enumerate(spans) if i == 0 or s >= spans[i - 1][1])
    assert covered == text  # the spans tile the text
    for i, (s, e) in zip(ids, spans):
        piece = tok.decode([i], skip_special_tokens=False)
        if "\ufffd" not in piece:  # whole characters: the span is exactly the token's text
            assert text[s:e] == piece, (text, s, e, piece)


def test_real_gpt2_files_match_transformers(gpt2_files):
    from transformers import GPT2Tokenizer

    vocab, merges = gpt2_files
    ours = ByteLevelTokenizer.from_files(vocab, merges)
    assert ours.vocab_size == 50257 and ours.eos_token_id == ours.bos_token_id == 50256
    assert ByteLevelTokenizer.from_pretrained(BPE).vocab_size == 50257  # GPT-2's own file names
    hf = GPT2Tokenizer(str(vocab), str(merges))
    py = python_reference(vocab, merges)
    for text in FIXED + fuzz(300):
        ids = ours.encode(text)
        assert ids == hf(text)["input_ids"], text
        if "<|endoftext|>" not in text:
            assert ids == py(text), text
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids)
        check_offsets(ours, text)
    assert ours.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids (no prefix space)
    assert ours.encode(" Hello") == [18435]
    assert ours.encode_batch(FIXED) == [ours.encode(t) for t in FIXED]


def test_trained_vocabulary_matches_transformers(trained):
    from transformers import GPT2Tokenizer

    from_json = ByteLevelTokenizer.from_pretrained(trained)  # tokenizer.json (trim-offsets post-processor in it)
    from_files = ByteLevelTokenizer.from_files(trained / "vocab.json", trained / "merges.txt")
    n = len(json.loads((trained / "vocab.json").read_text()))
    assert n == 600 and from_files.vocab_size == from_json.vocab_size == 601  # + <|endoftext|> after the last id
    assert from_files.eos_token_id == 600
    hf = GPT2Tokenizer(str(trained / "vocab.json"), str(trained / "merges.txt"))
    py = python_reference(trained / "vocab.json", trained / "merges.txt")
    for text in FIXED + fuzz(200, seed=1) + abstracts()[300:340]:
        ids = from_files.encode(text)
        assert ids == hf(text)["input_ids"] == from_json.encode(text), text
        if "<|endoftext|>" not in text:
            assert ids == py(text), text
        assert from_json.encode_with_offsets(text) == from_files.encode_with_offsets(text)
        check_offsets(from_json, text)
        if "<|endoftext|>" not in text:
            assert from_files.decode(ids) == text  # byte-level BPE is lossless


def task_texts() -> list[str]:
    """Every text of the five shared tasks' files (JSON values and TSV cells)."""
    texts: list[str] = []

    def walk(x):
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, dict):
            for k, v in x.items():
                texts.append(str(k))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for f in sorted(TASKS.rglob("*")):
        if f.suffix == ".json":
            walk(json.loads(f.read_text(encoding="utf-8")))
        elif f.suffix == ".tsv":
            for line in f.read_text(encoding="utf-8").splitlines():
                texts.extend(line.split("\t"))
    return texts


@pytest.mark.slow
def test_every_task_text_matches_transformers(gpt2_files, trained):
    from transformers import GPT2Tokenizer

    texts = task_texts()
    assert len(texts) == 233_294  # every text field of the five tasks' files in ../shared (counted once)
    for vocab, merges in (gpt2_files, (trained / "vocab.json", trained / "merges.txt")):
        ours = ByteLevelTokenizer.from_files(vocab, merges)
        hf = GPT2Tokenizer(str(vocab), str(merges))
        got, want = ours.encode_batch(texts), hf(texts)["input_ids"]
        assert len(got) == len(want) == len(texts)  # all of them compared, none dropped on either side
        assert got == want
    # the pure-Python reference on a sample (it runs at a few thousand words per second)
    py = python_reference(*gpt2_files)
    ours = ByteLevelTokenizer.from_files(*gpt2_files)
    for text in random.Random(0).sample(texts, 300):
        assert ours.encode(text) == py(text)


def test_bad_files(tmp_path, trained):
    with pytest.raises(VocabError, match="no byte-level BPE tokenizer"):
        ByteLevelTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text("[1, 2]")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(VocabError, match="token -> integer id"):
        ByteLevelTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(VocabError, match=r"merges.txt:2: 'a b' is not a merge"):
        ByteLevelTokenizer.from_pretrained(tmp_path)
    spec = json.loads((trained / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(VocabError, match="not GPT-2's byte-level BPE"):
        ByteLevelTokenizer.from_pretrained(tmp_path)


def test_save_pretrained_round_trip(tmp_path, trained):
    from transformers import GPT2Tokenizer

    tok = ByteLevelTokenizer.from_pretrained(trained)
    tok.save_pretrained(tmp_path / "out")
    again = ByteLevelTokenizer.from_files(tmp_path / "out" / "vocab.json", tmp_path / "out" / "merges.txt")
    hf = GPT2Tokenizer.from_pretrained(tmp_path / "out")
    for text in FIXED + abstracts()[:20]:
        assert tok.encode(text) == again.encode(text) == hf(text)["input_ids"]
    assert hf.eos_token_id == tok.eos_token_id == 600


def test_without_the_tokenizers_package(trained, monkeypatch):
    """`import biogpt` needs no tokenizers; using a byte-level tokenizer without it is one clear error."""
    monkeypatch.setattr("biogpt.text.bytelevel.Tokenizer", None)
    with pytest.raises(VocabError, match=r"needs the tokenizers package: pip install 'biogpt\[gpt2\]'"):
        ByteLevelTokenizer.from_pretrained(trained)
