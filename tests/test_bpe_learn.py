"""`biogpt bpe learn` against fastBPE's own `learnbpe` output, recorded from reference runs.

fastBPE: github.com/glample/fastBPE at 036711f8fdc3265d64e8e123a0761be12c5a8e74, built with GCC 12.2 (Debian 12,
libstdc++ 6.0.30, x86-64) by `g++ -std=c++11 -pthread -O3 fastBPE/main.cc -IfastBPE -o fast`.

- tests/data/fastbpe_learnbpe_400.txt: the exact stdout of `fast learnbpe 400 corpus.txt`, where corpus.txt is
  `synthetic_corpus()` below written as UTF-8. fastBPE prints all 400 lines even after the pairs run out: the
  344 merges with a count > 0, then 56 lines `i i 0`.
- HoC: `fast learnbpe 40000 hoc.txt`, hoc.txt = the first column of ../shared/data/tasks/HoC/train.tsv, one line
  each, Moses-tokenized by biogpt and joined with spaces. Only derived facts are kept: the sha256 of its first
  16,926 lines (every merge with count >= 2; counts never rise) and a few merges.

fastBPE breaks ties between equally frequent pairs by its token numbering, which follows libstdc++'s hash
table order, so both corpora are full of ties that only an exact emulation gets right.
"""

import hashlib
from pathlib import Path

import pytest

from biogpt.text import moses
from biogpt.training.bpe_learn import _std_hash, count_words, fastbpe_word_order, learn, learn_merges

from .conftest import TASKS

DATA = Path(__file__).parent / "data"
SYNTHETIC_SHA256 = "8e19708bb486f1d4271d9b6ecf5a219402f33b5f69e5569e996213817698d114"
HOC_TEXT_SHA256 = "d12ae81a2c26203aeca58f39c5cb1f4d83bed448a6589f87c8929feaca0d9073"  # hoc.txt, Moses-tokenized
HOC_CODES_SHA256 = "3e47627ebfd8ac2422fba0c05534f620f59f46ed3f4d1ba28431f0faa3616265"
HOC_NUM_CODES = 16926


def synthetic_corpus(n_lines=100, n_words=150, seed=2024):
    """917 words (124 distinct) of 1-8 characters: ASCII letters, 2-, 3- and 4-byte UTF-8 characters and
    punctuation, Zipf-like frequencies, some double spaces; small counts, so most merges are ties."""
    state = seed

    def rnd(n):
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        return (state >> 33) % n

    alphabet = "aeiostnrlcdmp" + "éαβµü" + "–’𝛼" + "-.,()%/"
    vocab = []
    for _ in range(n_words):
        length = 1 + rnd(4) + rnd(5)
        vocab.append("".join(alphabet[min(rnd(len(alphabet)), rnd(len(alphabet)))] for _ in range(length)))
    weights = [600 // (r + 1) for r in range(n_words)]
    lines = []
    for _ in range(n_lines):
        words = []
        for _ in range(1 + rnd(16)):
            x = rnd(sum(weights))
            i = 0
            while x >= weights[i]:
                x -= weights[i]
                i += 1
            words.append(vocab[i])
        lines.append((" " * (1 + (rnd(8) == 0))).join(words))
    return "\n".join(lines) + "\n"


def fastbpe_read_text(text):
    """fastBPE's `readText`: words end at ' ' or '\\n', empty ones skipped, counted in first-seen order."""
    counts = {}
    for word in text.replace("\n", " ").split(" "):
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts


def read_codes(path):
    return [((a, b), int(c)) for a, b, c in (line.split(" ") for line in path.read_text("utf-8").splitlines())]


@pytest.fixture(scope="module")
def corpus():
    text = synthetic_corpus()
    assert hashlib.sha256(text.encode()).hexdigest() == SYNTHETIC_SHA256, "the generator changed: re-record"
    return text


def test_words_are_counted_as_fastbpe_counts_them(corpus):
    counts = count_words(corpus.splitlines(keepends=True))
    assert list(counts.items()) == list(fastbpe_read_text(corpus).items())  # order matters for ties
    assert (sum(counts.values()), len(counts)) == (917, 124)


def test_libstdcxx_hash_and_map_order():
    # std::hash<std::string>{}(s), printed by a C++ program built with the same GCC
    known = {
        "": 6142509188972423790,
        "a": 4993892634952068459,
        "abcdefg": 16063891478991045295,
        "abcdefgh": 8664279048047335611,
        "in</w>": 15467585123676067444,
        "héllo wörld – 𝛼β µ": 16871910071366762770,
    }
    assert {s: _std_hash(s.encode()) for s in known} == known
    # the first words of fastBPE's unordered_map iteration after readText on the synthetic corpus (124 words,
    # so the map went through 13, 29, 59, 127 buckets)
    order = fastbpe_word_order(fastbpe_read_text(synthetic_corpus()))
    assert order[:10] == ["i–i", "mtsü", "trséi", "üa(tsa", ",lilc", "eiscµi", "üéao", "ββµmr.–i", "pec", "m’nr"]


def test_merges_equal_fastbpe_learnbpe(corpus):
    ref = read_codes(DATA / "fastbpe_learnbpe_400.txt")
    made = [m for m in ref if m[1] > 0]
    assert len(made) == 344 and all(m == (("i", "i"), 0) for m in ref[344:])  # fastBPE's filler once pairs run out
    counts = fastbpe_read_text(corpus)
    assert learn_merges(counts, 400, min_frequency=1) == made  # pairs, order and counts; stops when none is left
    assert learn_merges(counts, 400, min_frequency=2) == [m for m in made if m[1] >= 2]  # stops below 2
    assert learn_merges(counts, 100, min_frequency=1) == made[:100]
    ties = sum(1 for i, (_, c) in enumerate(made) if i + 1 < len(made) and made[i + 1][1] == c)
    assert ties > 300  # almost every merge was chosen among pairs of equal count


def test_bpecodes_file_is_byte_identical(corpus, tmp_path):
    ref = (DATA / "fastbpe_learnbpe_400.txt").read_bytes().splitlines(keepends=True)
    learn(corpus.splitlines(), tmp_path / "all", num_merges=400, min_frequency=1)
    assert (tmp_path / "all" / "bpecodes").read_bytes() == b"".join(ref[:344])
    learn(corpus.splitlines(), tmp_path / "some", num_merges=250, min_frequency=2)
    assert (tmp_path / "some" / "bpecodes").read_bytes() == b"".join(ref[:250])


def test_hoc_merges_equal_fastbpe_learnbpe():
    path = TASKS / "HoC" / "train.tsv"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    with open(path, encoding="utf-8") as f:
        text = "".join(" ".join(moses.tokenize(line.split("\t")[0])) + "\n" for line in f)
    assert hashlib.sha256(text.encode()).hexdigest() == HOC_TEXT_SHA256, "Moses output changed: re-record"
    merges = learn_merges(count_words(text.splitlines()), 40000, min_frequency=2)
    codes = "".join(f"{a} {b} {c}\n" for (a, b), c in merges)
    assert len(merges) == HOC_NUM_CODES
    assert merges[:3] == [(("t", "i"), 20441), (("a", "n"), 18940), (("r", "e"), 18141)]
    assert merges[-3:] == [(("camptothec", "in</w>"), 2), (("yakuchin", "one</w>"), 2), (("Momordic", "a</w>"), 2)]
    assert hashlib.sha256(codes.encode()).hexdigest() == HOC_CODES_SHA256
