"""BioGPT's vocabulary files and fastBPE: the dictionary (ids), the merges, and applying them to a word.

Two vocabulary formats load and convert into each other:
- original (fairseq + fastBPE): `dict.txt` (`token count` per line, `@@` marks a word-internal piece) and
  `bpecodes` (`left right count` per line, rank = line number, `</w>` marks a word end);
- Hugging Face: `vocab.json` (pieces with `</w>` on word-final pieces, specials by name) and `merges.txt`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from biogpt import jsonfile
from biogpt.errors import VocabError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_NO_MERGE = 1 << 62
_CACHE_LIMIT = 1 << 20  # entries; a cache is dropped and rebuilt past this (bounded memory on corpora)
_CACHE_CHARS = 1 << 25  # characters held in a cache's keys and values together (~32M: a few hundred MB at most)
MAX_WORD = 1024  # characters: BPE applies to a longer word in pieces of this many (see BPE)

__all__ = ["SPECIALS", "BOS_ID", "PAD_ID", "EOS_ID", "UNK_ID", "BPE", "BoundedCache", "MAX_WORD", "Vocab",
           "VocabError", "load_vocab", "read_dict", "read_merges", "read_vocab_json", "write_fairseq",
           "write_hf"]  # fmt: skip


@dataclass(frozen=True)
class Vocab:
    """The pieces in id order (fairseq `dict.txt` spelling, specials first) and the BPE merges."""

    pieces: tuple[str, ...]  # e.g. ("<s>", "<pad>", "</s>", "<unk>", ".", "of", ..., "Bic@@", ...)
    counts: tuple[int, ...]  # dict.txt counts (0 where unknown), same length as pieces
    merges: tuple[tuple[str, str], ...]  # rank order, `</w>` on word-final symbols
    merge_counts: tuple[int, ...]


# ---------------------------------------------------------------------------------------------------
# reading and writing vocabulary files


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise VocabError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise VocabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise VocabError(f"{path}: cannot read ({e.strerror})") from None


def read_dict(path: Path) -> tuple[list[str], list[int]]:
    """fairseq dict.txt: one `token count` per line (optional `#fairseq:overwrite` flag)."""
    tokens, counts, seen = [], [], set()
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").rsplit(" ", 1)
        if len(fields) == 2 and fields[1] == "#fairseq:overwrite":
            fields = fields[0].rsplit(" ", 1)
        if len(fields) != 2 or not fields[0] or not fields[1].isdigit():
            raise VocabError(f"{path}, line {n}: expected 'token count', got {line[:80]!r}")
        tok, count = fields
        if tok in seen or tok in SPECIALS:
            raise VocabError(f"{path}, line {n}: duplicate token {tok!r}")
        seen.add(tok)
        tokens.append(tok)
        counts.append(int(count))
    if not tokens:
        raise VocabError(f"{path}: no tokens")
    return tokens, counts


def read_merges(path: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """fastBPE bpecodes (`left right count`) or HF merges.txt (`left right`, optional `#version` header)."""
    merges, counts = [], []
    for n, line in enumerate(_read_lines(path), 1):
        fields = line.split()
        if not fields or (n == 1 and line.startswith("#version")):
            continue
        if len(fields) not in (2, 3) or (len(fields) == 3 and not fields[2].isdigit()):
            raise VocabError(f"{path}, line {n}: expected 'left right [count]', got {line[:80]!r}")
        merges.append((fields[0], fields[1]))
        counts.append(int(fields[2]) if len(fields) == 3 else 0)
    if not merges:
        raise VocabError(f"{path}: no merges")
    return merges, counts


def read_vocab_json(path: Path) -> list[str]:
    """HF vocab.json -> pieces in id order, in fairseq spelling."""
    try:
        data = jsonfile.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VocabError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VocabError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise VocabError(f"{path}: expected a JSON object mapping token -> integer id")
    by_id = sorted(data.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise VocabError(f"{path}: ids must be 0..{len(by_id) - 1} without gaps or repeats")
    if [t for t, _ in by_id[:4]] != list(SPECIALS):
        raise VocabError(f"{path}: ids 0-3 must be {' '.join(SPECIALS)}, got {[t for t, _ in by_id[:4]]}")
    return [_hf_to_fairseq(t) for t, _ in by_id[4:]]


def _hf_to_fairseq(piece: str) -> str:
    return piece[:-4] if piece.endswith("</w>") else piece + "@@"


def _fairseq_to_hf(piece: str) -> str:
    return piece[:-2] if piece.endswith("@@") else piece + "</w>"


def load_vocab(path: str | Path) -> Vocab:
    """Load a directory holding `dict.txt` + `bpecodes` (preferred) or `vocab.json` + `merges.txt`."""
    d = Path(path)
    if not d.is_dir():
        raise VocabError(f"{d}: not a directory (expected dict.txt + bpecodes, or vocab.json + merges.txt)")
    if (d / "dict.txt").exists() or (d / "bpecodes").exists():
        tokens, counts = read_dict(d / "dict.txt")
        merges, merge_counts = read_merges(d / "bpecodes")
        names = (d / "dict.txt", d / "bpecodes")
    elif (d / "vocab.json").exists() or (d / "merges.txt").exists():
        tokens = read_vocab_json(d / "vocab.json")
        counts = [0] * len(tokens)
        merges, merge_counts = read_merges(d / "merges.txt")
        names = (d / "vocab.json", d / "merges.txt")
    else:
        raise VocabError(f"{d}: no vocabulary found (expected dict.txt + bpecodes, or vocab.json + merges.txt)")
    vocab = Vocab(tuple(SPECIALS) + tuple(tokens), (0, 0, 0, 0) + tuple(counts), tuple(merges), tuple(merge_counts))
    check_pair(vocab, *names)
    return vocab


def check_pair(vocab: Vocab, vocab_file: Path, merges_file: Path) -> None:
    """Refuse a dictionary and merges that were not learned together.

    Every merge creates a symbol, and BPE applied to the corpus the dictionary was counted on leaves
    nearly all of them in the dictionary (99.97% for both released vocabularies). A dictionary of one
    vocabulary with the merges of another keeps far fewer (base with Large's merges: 72%; Large with
    base's: 90%).
    """
    known = set(vocab.pieces)
    hits = sum(_merged_piece(a, b) in known for a, b in vocab.merges)
    if hits < 0.98 * len(vocab.merges):
        raise VocabError(
            f"{vocab_file} and {merges_file} do not belong together: only {hits} of the {len(vocab.merges)} "
            "symbols the merges create are in the vocabulary (a matching pair has nearly all). Use the "
            "dictionary and BPE codes of the same model (both from biogpt, or both from biogpt-large)."
        )


def _merged_piece(a: str, b: str) -> str:
    """The fairseq spelling of the symbol that merging (a, b) creates."""
    s = a + b
    return s[:-4] if s.endswith("</w>") else s + "@@"


def write_fairseq(vocab: Vocab, directory: str | Path) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    n = len(vocab.merges)
    counts = vocab.merge_counts if any(vocab.merge_counts) else tuple(range(n, 0, -1))
    _write_atomic(d / "dict.txt", "".join(f"{p} {c}\n" for p, c in zip(vocab.pieces[4:], vocab.counts[4:])))
    _write_atomic(d / "bpecodes", "".join(f"{a} {b} {c}\n" for (a, b), c in zip(vocab.merges, counts)))


def write_hf(vocab: Vocab, directory: str | Path, model_max_length: int = 1024) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    mapping = {p: i for i, p in enumerate(SPECIALS)}
    mapping.update({_fairseq_to_hf(p): i for i, p in enumerate(vocab.pieces[4:], 4)})
    _write_atomic(d / "vocab.json", json.dumps(mapping, ensure_ascii=False, indent=2) + "\n")
    counts = vocab.merge_counts
    lines = [f"{a} {b} {c}" if any(counts) else f"{a} {b}" for (a, b), c in zip(vocab.merges, counts)]
    _write_atomic(d / "merges.txt", "\n".join(lines) + "\n")
    config = {
        "tokenizer_class": "BioGptTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": model_max_length,
    }
    _write_atomic(d / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------
# BPE


class BoundedCache(dict):
    """A dict that empties itself when it holds more than _CACHE_LIMIT entries or _CACHE_CHARS characters: a
    client sending megabytes of distinct words cannot grow it without bound. Hits are plain `get`s."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0

    def put(self, key, value, chars: int):
        """Store value under key, counting `chars` (its key's and value's size) against the budget."""
        if len(self) >= _CACHE_LIMIT or self.chars + chars > _CACHE_CHARS:
            self.clear()
            self.chars = 0
        self[key] = value
        self.chars += chars
        return value


class BPE:
    """fastBPE `applybpe`: repeatedly merge the lowest-ranked adjacent pair, all occurrences left to right.

    BPE on one word costs O(n^2) in its length, and a string of letters without spaces is one word: a word
    longer than MAX_WORD characters is cut into MAX_WORD-character parts, merged separately (`</w>` on the last
    only), so the cost is linear. Every caller (offline encoding, extraction, the server) goes through here,
    so their outputs stay equal; words up to MAX_WORD characters (all of the released vocabularies' corpora)
    get fastBPE's pieces exactly.
    """

    def __init__(self, merges: Sequence[tuple[str, str]]):
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.cache = BoundedCache()

    def __call__(self, word: str) -> list[str]:
        """Pieces of one Moses token, HF spelling: `["Bic", "alutamide</w>"]`."""
        hit = self.cache.get(word)
        if hit is None:
            if len(word) <= MAX_WORD:
                pieces = self._apply(word)
            else:
                parts = [word[i : i + MAX_WORD] for i in range(0, len(word), MAX_WORD)]
                pieces = [p for k, part in enumerate(parts) for p in self._apply(part, k == len(parts) - 1)]
            hit = self.cache.put(word, pieces, 2 * len(word) + 8 * len(pieces))
        return hit

    def _apply(self, word: str, end: bool = True) -> list[str]:
        """Merge the characters of word; `end`: the word ends here (its last symbol takes `</w>`)."""
        symbols = list(word)
        if end:
            symbols[-1] += "</w>"
        get = self.ranks.get
        # ranks[i] = rank of the pair (symbols[i], symbols[i+1]); only neighbours change after a merge
        ranks = [get(pair, _NO_MERGE) for pair in zip(symbols, symbols[1:])]
        while ranks:
            best = min(ranks)
            if best == _NO_MERGE:
                break
            i = ranks.index(best)
            merged = symbols[i] + symbols[i + 1]
            more = ranks.count(best) > 1  # ranks are unique per pair, so the same rank is the same pair
            while True:  # every occurrence of this pair, left to right, before choosing the next pair
                symbols[i : i + 2] = [merged]
                del ranks[i]
                if i > 0:
                    ranks[i - 1] = get((symbols[i - 1], merged), _NO_MERGE)
                if i < len(ranks):
                    ranks[i] = get((merged, symbols[i + 1]), _NO_MERGE)
                if not more or best not in ranks[i + 1 :]:
                    break
                i = ranks.index(best, i + 1)
        return symbols
