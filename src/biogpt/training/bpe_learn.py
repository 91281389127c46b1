"""Learning a BPE vocabulary (`biogpt bpe learn`): fastBPE `learnbpe` + fairseq dictionary, in the original formats.

Input: text that has gone through the Moses step (`biogpt.text.moses.tokenize`), one document or sentence per
line. Output: `bpecodes` (`left right count`, one merge per line, in merge order) and `dict.txt`
(`piece count`, most frequent first, `@@` on word-internal pieces), which `Tokenizer.from_pretrained` loads.

The learner counts words once, then merges the most frequent adjacent pair (ties broken as fastBPE breaks them,
by its token numbering) until it has made the requested number of merges or the best pair is rarer than
`min_frequency`; its merges and counts equal fastBPE's, line for line (tests/test_bpe_learn.py). Pair counts are
updated only for the words that contain the merged pair (an index pair -> words), and the best pair comes
from a heap with stale entries skipped, so the cost per merge follows the number of affected words.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from biogpt.errors import CorpusError
from biogpt.text.tokenizer import BPE, SPECIALS, Vocab, write_fairseq

Pair = tuple[str, str]


def count_words(lines: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for line in lines:
        counts.update(line.split())
    return counts


# fastBPE breaks ties between equally frequent pairs by the smaller pair of token ids, and numbers the characters
# in the order it meets them while iterating its `unordered_map<string, uint32_t>` of word counts, so the
# learned codes depend on libstdc++'s hash table: std::hash<std::string> (MurmurHash2-64, `_Hash_bytes`, seed
# 0xc70f6907), buckets = hash % bucket count, each new element first in its bucket, each newly used bucket first
# in the list, and the bucket counts that `_Prime_rehash_policy` grows through one insertion at a time (13 on the
# first insertion; rehash when full, to the listed prime >= twice the count). Checked against GCC 12.2.
_MUL = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1
_BUCKET_COUNTS = (13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043, 85229, 172933, 351061, 712697,
                  1447153, 2938679, 5967347, 12117689, 24607243, 49969847, 101473717, 206062531, 418451333,
                  849749479, 1725587117, 3504151727, 8589934583, 25769803693, 68719476731, 206158430123)  # fmt: skip


def _std_hash(data: bytes, seed: int = 0xC70F6907) -> int:
    """libstdc++ `std::hash<std::string>` on a 64-bit little-endian machine."""
    n = len(data)
    h = seed ^ ((n * _MUL) & _MASK)
    aligned = n & ~7
    for i in range(0, aligned, 8):
        k = (int.from_bytes(data[i : i + 8], "little") * _MUL) & _MASK
        h = ((h ^ (((k ^ (k >> 47)) * _MUL) & _MASK)) * _MUL) & _MASK
    if n & 7:
        h = ((h ^ int.from_bytes(data[aligned:], "little")) * _MUL) & _MASK
    h = ((h ^ (h >> 47)) * _MUL) & _MASK
    return h ^ (h >> 47)


def fastbpe_word_order(words: Iterable[str]) -> list[str]:
    """The order in which fastBPE's word-count map iterates `words`, given in the order it first read them."""
    words = list(words)
    hashes = [_std_hash(w.encode("utf-8")) for w in words]
    groups: list[int] = []  # buckets, in the order they became non-empty (the list runs newest first)
    members: dict[int, list[int]] = {}  # bucket -> words, in insertion order (the bucket runs newest first)
    n_buckets, level = 1, -1

    def insert(i: int) -> None:
        b = hashes[i] % n_buckets
        if b not in members:
            groups.append(b)
            members[b] = []
        members[b].append(i)

    def current() -> list[int]:
        return [i for b in reversed(groups) for i in reversed(members[b])]

    for i in range(len(words)):
        if i == (_BUCKET_COUNTS[level] if level >= 0 else 0):  # full: rehash, re-inserting in iteration order
            old = current()
            level += 1
            n_buckets = _BUCKET_COUNTS[level]
            groups, members = [], {}
            for j in old:
                insert(j)
        insert(i)
    return [words[i] for i in current()]


def learn_merges(word_counts: dict[str, int], num_merges: int, min_frequency: int = 2) -> list[tuple[Pair, int]]:
    """The merges, in order, with the count of each pair when it was merged: fastBPE `learnbpe`'s output.

    `word_counts` must be in first-occurrence order (as `count_words` gives), since fastBPE's tie-breaking
    depends on it. Tokens are numbered as in fastBPE: characters in the order met (`fastbpe_word_order`, a
    word's last character with `</w>` being its own token), then each merge result, a new number each time, so
    a string built by two different merges is two tokens whose pairs are counted apart. The best pair has the
    highest count, ties going to the smallest (left id, right id). Unlike fastBPE, which always prints
    `num_merges` lines (ending with count-0 pairs once nothing is left), this stops when the best count is
    below `min_frequency` (or 0)."""
    ids: dict[str, int] = {}
    names: list[str] = []
    words: list[list[int]] = []
    freqs: list[int] = []
    for w in fastbpe_word_order(word_counts):
        symbols = list(w)
        symbols[-1] += "</w>"
        row = []
        for s in symbols:
            t = ids.get(s)
            if t is None:
                t = ids[s] = len(names)
                names.append(s)
            row.append(t)
        words.append(row)
        freqs.append(word_counts[w])
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (symbols, f) in enumerate(zip(words, freqs)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += f
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[Pair, int]] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if -neg != count:  # stale entry: re-queue with the current count
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < min_frequency:
            break
        first, second = pair
        merges.append(((names[first], names[second]), count))
        merged = len(names)
        names.append(names[first] + names[second])
        changed: set[tuple[int, int]] = set()
        for i in list(where[pair]):
            symbols, f = words[i], freqs[i]
            for p in zip(symbols, symbols[1:]):  # remove this word's old pairs
                pair_counts[p] -= f
                changed.add(p)
            out, j, n = [], 0, len(symbols)
            while j < n:
                if j < n - 1 and symbols[j] == first and symbols[j + 1] == second:
                    out.append(merged)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):  # and add its new ones
                pair_counts[p] += f
                where[p].add(i)
                changed.add(p)
        del pair_counts[pair], where[pair]
        for p in changed:
            c = pair_counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            elif p in pair_counts:
                del pair_counts[p]
    return merges


def build_vocab(word_counts: dict[str, int], merges: list[tuple[Pair, int]], pad_to: int = 8) -> Vocab:
    """fairseq dictionary: BPE pieces of the corpus by count (then every symbol a merge or the alphabet
    can produce, count 0, so no learned piece is ever unknown), padded with madeupwordNNNN to a multiple of 8."""
    bpe = BPE([m for m, _ in merges])
    counts: Counter = Counter()
    for word, f in word_counts.items():
        pieces = bpe(word)
        for p in pieces[:-1]:
            counts[p + "@@"] += f
        counts[pieces[-1][:-4]] += f
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    seen = {p for p, _ in ordered}
    extra = []
    for (a, b), _ in merges:
        s = a + b
        piece = s[:-4] if s.endswith("</w>") else s + "@@"
        if piece not in seen:
            seen.add(piece)
            extra.append((piece, 0))
    alphabet = sorted({ch for w in word_counts for ch in w})
    for ch in alphabet:
        for piece in (ch, ch + "@@"):
            if piece not in seen:
                seen.add(piece)
                extra.append((piece, 0))
    entries = [e for e in ordered + extra if e[0] not in SPECIALS]
    k = 0
    while (len(SPECIALS) + len(entries)) % pad_to:
        entries.append((f"madeupword{k:04d}", 0))
        k += 1
    return Vocab(
        tuple(SPECIALS) + tuple(p for p, _ in entries),
        (0, 0, 0, 0) + tuple(c for _, c in entries),
        tuple(m for m, _ in merges),
        tuple(c for _, c in merges),
    )


def learn(lines: Iterable[str], out_dir: str | Path, num_merges: int = 40000, min_frequency: int = 2) -> Vocab:
    """Learn from Moses-tokenized lines and write `bpecodes` + `dict.txt` into `out_dir`; a corpus with nothing
    to learn is a CorpusError (bad input, one `error:` line on the command line)."""
    word_counts = count_words(lines)
    if not word_counts:
        raise CorpusError("the corpus is empty: nothing to learn a vocabulary from")
    merges = learn_merges(word_counts, num_merges, min_frequency)
    if not merges:
        raise CorpusError(f"no pair occurs at least {min_frequency} times: lower --min-frequency or add text")
    vocab = build_vocab(word_counts, merges)
    write_fairseq(vocab, out_dir)
    return vocab
