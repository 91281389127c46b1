"""Learning a BPE vocabulary (`biogpt bpe learn`): fastBPE `learnbpe` + fairseq dictionary, in the original formats.

Input: text that has gone through the Moses step (`biogpt.text.moses.tokenize`), one document or sentence per
line. Output: `bpecodes` (`left right count`, one merge per line, in merge order) and `dict.txt`
(`piece count`, most frequent first, `@@` on word-internal pieces), which `Tokenizer.from_pretrained` loads.

The learner counts words once, then merges the most frequent adjacent pair (ties: the smallest pair) until
it has made the requested number of merges or the best pair is rarer than `min_frequency`. Pair counts are
updated only for the words that contain the merged pair (an index pair -> words), and the best pair comes
from a heap with stale entries skipped, so the cost per merge follows the number of affected words.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from biogpt.text.tokenizer import BPE, SPECIALS, Vocab, write_fairseq

Pair = tuple[str, str]


def count_words(lines: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for line in lines:
        counts.update(line.split())
    return counts


def learn_merges(word_counts: dict[str, int], num_merges: int, min_frequency: int = 2) -> list[tuple[Pair, int]]:
    """The merges, in order, with the count of each pair when it was merged."""
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
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
        merges.append((pair, count))
        first, second = pair
        merged = first + second
        changed: set[Pair] = set()
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
    """Learn from Moses-tokenized lines and write `bpecodes` + `dict.txt` into `out_dir`."""
    word_counts = count_words(lines)
    if not word_counts:
        raise ValueError("the corpus is empty: nothing to learn a vocabulary from")
    merges = learn_merges(word_counts, num_merges, min_frequency)
    if not merges:
        raise ValueError(f"no pair occurs at least {min_frequency} times: lower --min-frequency or add text")
    vocab = build_vocab(word_counts, merges)
    write_fairseq(vocab, out_dir)
    return vocab
