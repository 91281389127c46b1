"""The one JSON reader and the one BPE-files reader: every problem is one error of the caller's kind that names the
file (a missing file, bytes that are not UTF-8, text that is not JSON, JSON that is not an object, merges that
belong to another vocabulary), for the byte-level GPT-2 tokenizer and BiomedGPT's alike."""

from __future__ import annotations

import json

import pytest

from biogpt.errors import CheckpointError, TaskError, VocabError
from biogpt.jsonfile import read_json, read_json_object
from biogpt.tasks.common import read_json as read_split
from biogpt.text.bpe_files import read_merges, read_vocab
from biogpt.text.ofa import OFATokenizer


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "x.json: cannot read (No such file or directory)"),
        (b"\xff\xfe{}", "x.json: not valid JSON ('utf-8' codec can't decode byte 0xff"),
        (b"", "x.json: not valid JSON (Expecting value: line 1 column 1"),
        (b'{"a": NaN', "x.json: not valid JSON (Expecting ',' delimiter"),
        ('{"\\ud800": [' * 3 + "]]]}", "x.json: not valid JSON (Expecting ',' delimiter"),
        ("[" * 200_000, "x.json: not valid JSON (nested too deeply"),
    ],
)
def test_read_json_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for error in (VocabError, CheckpointError, TaskError):
        with pytest.raises(error) as got:
            read_json(path, error)
        assert str(got.value).startswith(f"{tmp_path}/{message}"), str(got.value)


def test_read_json_values_and_objects(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"line\\u2028sep": [1, 2.5, null], "lone": "\\ud800"}', encoding="utf-8")
    assert read_json_object(path, CheckpointError) == {"line\u2028sep": [1, 2.5, None], "lone": "\ud800"}
    path.write_text("[1, 2]", encoding="utf-8")
    assert read_json(path, CheckpointError) == [1, 2]
    with pytest.raises(CheckpointError, match=r"x.json: expected a JSON object, got list"):
        read_json_object(path, CheckpointError)
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad.json: not valid JSON \(Expecting property name"):
        read_split(tmp_path / "bad.json")
    with pytest.raises(TaskError, match=r"missing.json: split file not found"):
        read_split(tmp_path / "missing.json")


def test_bpe_files(tmp_path):
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text(json.dumps({"a": 0, "b": 1, "ab": 2}), encoding="utf-8")
    merges.write_text("#version: 0.2\na b\n", encoding="utf-8")
    assert read_vocab(vocab) == {"a": 0, "b": 1, "ab": 2}
    assert read_merges(merges, read_vocab(vocab), "vocab.json") == [("a", "b")]
    vocab.write_text(json.dumps({"a": "0"}), encoding="utf-8")
    with pytest.raises(VocabError, match=r"vocab.json: expected a JSON object of token -> integer id"):
        read_vocab(vocab)
    merges.write_text("a b\nb a\n", encoding="utf-8")
    foreign = r"merges.txt:2: 'b a' is not a merge of two tokens whose result is in vocab.json; do the vocabulary"
    with pytest.raises(VocabError, match=foreign + r" and the merges belong together\?"):
        read_merges(merges, {"a": 0, "b": 1, "ab": 2}, "vocab.json")
    merges.write_bytes(b"a b\n\xff\n")
    with pytest.raises(VocabError, match=r"merges.txt: not UTF-8"):
        read_merges(merges, {"a": 0, "b": 1, "ab": 2}, "vocab.json")


def test_biomedgpt_merges_of_another_vocabulary_are_named(tmp_path):
    """The Hugging Face OFA port's files: merges whose results are not in vocab.json are one VocabError."""
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    (tmp_path / "vocab.json").write_text(json.dumps({**specials, "a": 4, "b": 5, "<mask>": 6}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("a b\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"merges.txt:1: 'a b' is not a merge .* in vocab.json"):
        OFATokenizer.from_pretrained(tmp_path)
