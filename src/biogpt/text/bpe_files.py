"""The two files of a GPT-2-style BPE, as GPT-2, BioMedLM and BiomedGPT ship them: a vocabulary (JSON object of
token -> integer id: vocab.json or encoder.json) and its merges ("left right" per line, most frequent first, an
optional "#version" first line: merges.txt or vocab.bpe). Both byte-level tokenizers read them here."""

from __future__ import annotations

from pathlib import Path

from biogpt.errors import VocabError
from biogpt.jsonfile import read_json


def read_vocab(path: Path) -> dict[str, int]:
    """token -> id from a vocabulary file; one VocabError naming the file if it is not such an object."""
    data = read_json(path, VocabError)
    if not isinstance(data, dict) or not all(isinstance(i, int) for i in data.values()):
        raise VocabError(f"{path}: expected a JSON object of token -> integer id")
    return data


def read_merges(path: Path, vocab: dict[str, int], vocab_name: str) -> list[tuple[str, str]]:
    """The merges in rank order, each checked to join two tokens into one of `vocab` (the file `vocab_name`): a
    merges file of another vocabulary is one VocabError naming its first foreign line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise VocabError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise VocabError(f"{path}: not UTF-8 ({e})") from None
    merges = []
    for n, line in enumerate(lines, 1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or pair[0] + pair[1] not in vocab:
            raise VocabError(f"{path}:{n}: {line!r} is not a merge of two tokens whose result is in {vocab_name}; "
                             "do the vocabulary and the merges belong together?")  # fmt: skip
        merges.append((pair[0], pair[1]))
    return merges
