"""BioGPT's tokenizer: Moses (`-l en -a`, escaped) then fastBPE, with fairseq dictionary ids.

Ids equal `transformers.BioGptTokenizer`: a leading `</s>` (id 2), nothing appended; `<s> <pad> </s> <unk>`
are ids 0-3, `dict.txt` line n is id n+3, and K learned prompt tokens `learned1..learnedK` follow the
dictionary (ids V..V+K-1), as in the original fine-tuned checkpoints.

Speed comes from caching whole whitespace chunks (a word with its punctuation) together with the little
context that Moses' rules read across chunk boundaries (see `moses.py`): a cache hit costs one dict lookup,
and biomedical text repeats its chunks a lot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from biogpt import jsonfile
from biogpt.errors import VocabError
from biogpt.text import moses
from biogpt.text.fastbpe import (
    BPE,
    EOS_ID,
    SPECIALS,
    UNK_ID,
    BoundedCache,
    Vocab,
    _fairseq_to_hf,
    _write_atomic,
    load_vocab,
    write_fairseq,
    write_hf,
)

PROMPT_PATTERN = "learned"
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")


# ---------------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    """Text <-> ids exactly as BioGPT. `Tokenizer.from_pretrained(dir)` loads either vocabulary format."""

    def __init__(self, vocab: Vocab, num_prompt_tokens: int = 0, lowercase: bool = False):
        if num_prompt_tokens < 0:
            raise ValueError(f"num_prompt_tokens must be >= 0, got {num_prompt_tokens}")
        self.vocab = vocab
        self.num_prompt_tokens = num_prompt_tokens
        self.lowercase = lowercase
        self.pieces = list(vocab.pieces) + [f"{PROMPT_PATTERN}{k}" for k in range(1, num_prompt_tokens + 1)]
        # HF spelling -> id; prompt tokens are reached by id only, never from text (as in fairseq)
        self.piece_to_id = {p: i for i, p in enumerate(SPECIALS)}
        self.piece_to_id.update({_fairseq_to_hf(p): i for i, p in enumerate(vocab.pieces[4:], 4)})
        self.bpe = BPE(vocab.merges)
        # the most source characters one id can stand for (a piece without its @@ / </w>)
        self._widest = max(len(p[:-2] if p.endswith("@@") else p) for p in self.pieces)
        self._cache = BoundedCache()  # chunk key -> ids
        self._span_cache = BoundedCache()  # chunk key -> spans of those ids within the chunk

    @classmethod
    def from_pretrained(cls, path: str | Path, num_prompt_tokens: int | None = None, lowercase: bool = False):
        """Load from a directory with `dict.txt` + `bpecodes` or `vocab.json` + `merges.txt`.

        The prompt-token count is read from `prompt_tokens.json` (written by `biogpt convert`) unless given.
        """
        vocab = load_vocab(path)
        if num_prompt_tokens is None:
            meta = Path(path) / "prompt_tokens.json"
            num_prompt_tokens = int(jsonfile.loads(meta.read_text())["num_prompt_tokens"]) if meta.exists() else 0
        return cls(vocab, num_prompt_tokens=num_prompt_tokens, lowercase=lowercase)

    def save_pretrained(self, directory: str | Path, format: str = "hf") -> None:
        """Write `vocab.json` + `merges.txt` (+ tokenizer_config.json) for format="hf", or
        `dict.txt` + `bpecodes` for format="fairseq"; plus `prompt_tokens.json` when K > 0."""
        if format == "hf":
            write_hf(self.vocab, directory)
        elif format == "fairseq":
            write_fairseq(self.vocab, directory)
        else:
            raise ValueError(f"format must be 'hf' or 'fairseq', got {format!r}")
        if self.num_prompt_tokens:
            meta = {"num_prompt_tokens": self.num_prompt_tokens, "pattern": PROMPT_PATTERN}
            _write_atomic(Path(directory) / "prompt_tokens.json", json.dumps(meta) + "\n")

    @property
    def vocab_size(self) -> int:
        """Dictionary size plus prompt tokens: the number of embedding rows a model needs."""
        return len(self.pieces)

    @property
    def prompt_ids(self) -> list[int]:
        v = len(self.vocab.pieces)
        return list(range(v, v + self.num_prompt_tokens))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab={len(self.vocab.pieces)}, merges={len(self.vocab.merges)}, "
            f"prompt_tokens={self.num_prompt_tokens}, lowercase={self.lowercase})"
        )

    # --- encoding -----------------------------------------------------------------------------------

    def encode(self, text: str, add_eos_prefix: bool = True) -> list[int]:
        """Ids of `text`, starting with `</s>` (id 2) like `BioGptTokenizer`; nothing appended."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        if self.lowercase:
            text = text.lower()
        out = [EOS_ID] if add_eos_prefix else []
        if "<" in text:
            for i, part in enumerate(_SPECIAL_SPLIT.split(text)):
                if i % 2:
                    out.append(SPECIALS.index(part))
                elif part:
                    self._encode_segment(part, out)
        else:
            self._encode_segment(text, out)
        return out

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text, add_eos_prefix=False)), in linear time without Moses or BPE: every
        id stands for at most `_widest` of the characters that are neither whitespace nor control characters.
        A server refuses a prompt that cannot fit its context before paying for its tokenization."""
        kept = sum(map(len, text.split()))
        if not text.isprintable():
            kept -= len(moses.CONTROL.findall(text))
        return -(-max(0, kept) // self._widest)

    def encode_batch(self, texts: Iterable[str], add_eos_prefix: bool = True) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("encode_batch() takes a list of str; use encode() for a single text")
        return [self.encode(t, add_eos_prefix) for t in texts]

    def _encode_segment(self, seg: str, out: list[int]) -> None:
        if not seg.isprintable():  # only then can it hold control characters (Moses deletes them)
            seg = moses.CONTROL.sub("", seg)
        chunks = seg.split()
        cache = self._cache
        start = len(out)
        last = len(chunks) - 1
        for i, c in enumerate(chunks):
            # the key is the chunk plus what Moses reads beyond it: text start/end, next chunk's first char
            if i == last:
                key = (c, 3 if i == 0 else 2, 0)
            else:
                nxt = chunks[i + 1]
                end = c[-1]
                if end == ".":
                    key = (c, 1 if i == 0 else 0, moses.next_class(nxt[0]))
                elif end == "'" and nxt[0] == "'":  # rare: the two chunks interact, tokenize as a whole
                    del out[start:]
                    out.extend(self._ids(moses.tokenize(seg)))
                    return
                elif i == 0:
                    key = (c, 1, 0)
                else:
                    key = c
            hit = cache.get(key)
            if hit is None:
                hit = self._cached_chunk(key, c)
            out.extend(hit)

    @staticmethod
    def _chunk_keys(chunks: list[str]) -> list:
        """The cache keys `_encode_segment` uses for these chunks (no interacting pair among them)."""
        keys: list = []
        last = len(chunks) - 1
        for i, c in enumerate(chunks):
            if i == last:
                keys.append((c, 3 if i == 0 else 2, 0))
            elif c[-1] == ".":
                keys.append((c, 1 if i == 0 else 0, moses.next_class(chunks[i + 1][0])))
            else:
                keys.append((c, 1, 0) if i == 0 else c)
        return keys

    @staticmethod
    def _moses_chunk(key) -> tuple[str, list[str]]:
        chunk, context, nxt = (key, 0, 0) if isinstance(key, str) else key
        return chunk, moses.tokenize_chunk(chunk, context, nxt)

    def _cached_chunk(self, key, chunk: str) -> tuple[int, ...]:
        """Ids of one chunk (a cache miss), remembered."""
        ids = self._encode_chunk(key)
        return self._cache.put(key, ids, 2 * len(chunk) + 8 * len(ids))

    def _encode_chunk(self, key) -> tuple[int, ...]:
        """Ids of one chunk (a cache miss)."""
        return tuple(self._ids(self._moses_chunk(key)[1]))

    def _ids(self, tokens: list[str]) -> list[int]:
        get = self.piece_to_id.get
        return [get(p, UNK_ID) for tok in tokens for p in self.bpe(tok)]

    def _chunk_spans(self, key) -> tuple[tuple[int, int], ...]:
        """(start, end) within the chunk of each of its ids."""
        hit = self._span_cache.get(key)
        if hit is None:
            chunk, tokens = self._moses_chunk(key)
            hit = self._span_cache.put(key, tuple(self._spans(tokens, chunk)), 2 * len(chunk) + 16 * len(tokens))
        return hit

    def _spans(self, tokens: list[str], source: str) -> list[tuple[int, int]]:
        """Align Moses tokens (and their BPE pieces) with `source`, the cleaned text they came from."""
        spans: list[tuple[int, int]] = []
        pos = 0
        for tok in tokens:
            pieces = self.bpe(tok)
            plain = "-" if tok == "@-@" else moses.unescape(tok)
            start = source.find(plain, pos)
            if start < 0:  # Moses rewrote the characters (a literal "DOTMULTI" in the input): span the rest
                start, end = pos, len(source)
            else:
                end = pos = start + len(plain)
            if plain == tok and len(pieces) > 1:
                p = start
                for piece in pieces:
                    k = len(piece) - (4 if piece.endswith("</w>") else 0)
                    spans.append((p, p + k))
                    p += k
            else:  # one piece, or an escaped token (&amp; ...) whose pieces all point at the source characters
                spans.extend((start, end) for _ in pieces)
        n = len(source)  # keep spans inside the source even where alignment failed
        return [(min(a, n), min(b, n)) for a, b in spans]

    def encode_with_offsets(self, text: str, add_eos_prefix: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, for each id, the (start, end) character span of `text` it came from.

        The leading `</s>` gets (0, 0). A piece of an escaped character (`&amp;`) or of `@-@` spans the
        one source character; BPE pieces of a plain word span their own characters.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode_with_offsets() takes a str, got {type(text).__name__}")
        source, index = text, None
        if self.lowercase:
            source = text.lower()
            if len(source) != len(text):  # a few characters lowercase to two (İ -> i̇): map back per character
                lowered = [c.lower() for c in text]
                source = "".join(lowered)
                index = [i for i, s in enumerate(lowered) for _ in s] + [len(text)]
        ids = [EOS_ID] if add_eos_prefix else []
        spans = [(0, 0)] if add_eos_prefix else []
        pos = 0
        for i, part in enumerate(_SPECIAL_SPLIT.split(source)):
            if i % 2:
                ids.append(SPECIALS.index(part))
                spans.append((pos, pos + len(part)))
            elif part:
                self._offsets_segment(part, pos, ids, spans)
            pos += len(part)
        if index is not None:
            spans = _remap(spans, index, 0)
        return ids, spans

    def _offsets_segment(self, seg: str, base: int, ids: list[int], spans: list[tuple[int, int]]) -> None:
        raw = [(m.group(), m.start()) for m in re.finditer(r"\S+", seg)]
        chunks = []  # (cleaned chunk, start in seg, positions of its characters in seg or None)
        for r, start in raw:
            c = moses.CONTROL.sub("", r)
            if not c:
                continue
            where = None
            if len(c) != len(r):  # control characters were deleted: where each kept one sits in `seg`
                where = [start + j for j, ch in enumerate(r) if not moses.CONTROL.match(ch)] + [start + len(r)]
            chunks.append((c, start, where))
        words = [c for c, _, _ in chunks]
        if any(moses.chunks_interact(a, b) for a, b in zip(words, words[1:])):
            # rare: align the whole-text tokenization against the cleaned text instead
            cleaned = "".join(words)
            where = [p for c, s, w in chunks for p in (w[:-1] if w else range(s, s + len(c)))] + [len(seg)]
            tokens = moses.tokenize(seg)
            ids.extend(self._ids(tokens))
            spans.extend(_remap(self._spans(tokens, cleaned), where, base))
            return
        keys = self._chunk_keys(words)
        for key, (c, start, where) in zip(keys, chunks):
            hit = self._cache.get(key)
            if hit is None:
                hit = self._cached_chunk(key, c)
            ids.extend(hit)
            chunk_spans = self._chunk_spans(key)
            if where is None:
                spans.extend((base + start + a, base + start + b) for a, b in chunk_spans)
            else:
                spans.extend(_remap(chunk_spans, where, base))

    def tokens(self, text: str) -> list[str]:
        """The pieces of `text` in fairseq spelling (`Bic@@`, `alutamide`), without the leading `</s>`."""
        return [self.pieces[i] for i in self.encode(text, add_eos_prefix=False)]

    # --- decoding -----------------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, as `BioGptTokenizer.decode(ids, skip_special_tokens=True)`.

        Prompt tokens decode to `learned1 ... learnedK` as in the original fairseq output; ids that
        are not in the vocabulary raise.
        """
        pieces = self.pieces
        words: list[str] = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(pieces):
                raise VocabError(f"id {i} is outside the vocabulary (ids 0..{len(pieces) - 1})")
            if i < 4:
                if skip_special_tokens:
                    continue
                words.append(pieces[i] + " ")
                continue
            p = pieces[i]
            words.append(p[:-2] if p.endswith("@@") else p + " ")
        return moses.detokenize("".join(words).split())

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]


def _remap(spans: Iterable[tuple[int, int]], where: list[int], base: int) -> list[tuple[int, int]]:
    """Map spans over a cleaned string back to the original; where[i] = original index of cleaned char i,
    with one sentinel entry (the original end) so that empty spans at the end map too."""
    return [(base + where[a], base + (where[b - 1] + 1 if b > a else where[a])) for a, b in spans]
