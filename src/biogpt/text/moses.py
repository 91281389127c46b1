"""Moses English tokenization and detokenization, as BioGPT preprocessed its text.

BioGPT ran `tokenizer.perl -l en -a` (aggressive dash splitting, XML escaping) before BPE, and
`detokenizer.perl -l en` after decoding. `transformers.BioGptTokenizer` uses the sacremoses port of
those scripts; this module re-implements exactly that behaviour (same rules, same order, same
character classes; see `_moses_tables.py`) without the dependency.

Two entry points tokenize:
- `tokenize(text)`: the whole-text rule chain, the exact reference path.
- `tokenize_chunk(chunk, context)`: the same chain applied to one whitespace-delimited chunk, given
  the little it needs to know about its neighbours. Every rule works inside a chunk except a few that
  look one character past it (at a text boundary or at the next chunk's first character), so
  `context` carries exactly that. This is what makes a per-chunk cache exact, and the cache is what
  makes the tokenizer fast. The one case where two chunks interact beyond that (a chunk ending in `'`
  followed by one starting with `'`) is reported by `chunks_interact` and handled by the caller with
  the whole-text path.
"""

from __future__ import annotations

import re

from biogpt.text import _moses_tables as tables


def _char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """Regex character-class body (no brackets) for inclusive code point ranges."""
    parts = []
    for a, b in ranges:
        parts.append(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}")
    return "".join(parts)


def _char_set(ranges: tuple[tuple[int, int], ...]) -> frozenset[str]:
    return frozenset(chr(c) for a, b in ranges for c in range(a, b + 1))


_N = _char_class(tables.IS_N)
_ALNUM = _char_class(tables.IS_ALNUM)
_ALPHA = _char_class(tables.IS_ALPHA)
IS_LOWER = _char_set(tables.IS_LOWER)
_ALPHA_SET = _char_set(tables.IS_ALPHA)
_NONBREAKING = frozenset(p for p in tables.NONBREAKING_PREFIXES_EN if "#NUMERIC_ONLY#" not in p)
_NUMERIC_ONLY = frozenset(p.split(" ")[0] for p in tables.NONBREAKING_PREFIXES_EN if "#NUMERIC_ONLY#" in p)

# Whitespace is collapsed first, then ASCII control characters are deleted. Control characters that
# are also whitespace (\t \n \v \f \r \x1c-\x1f) became spaces in the first step, so deleting only the
# others and then splitting on whitespace gives the same chunks.
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b]")

# Rules that pad single characters run as split/join and literal substitutions, which stay in C.
# `a-b` -> `a @-@ b`: written as a lookbehind (the original consumes the preceding character, but a
# consumed character never blocks a later match, since each match needs its own preceding one).
_PAD_NOT_ALNUM = re.compile(rf"([^{_ALNUM}\s\.'`,\-])")
_DASH = re.compile(rf"(?<=[{_ALNUM}])-(?=[{_ALNUM}])")
_ASCII_SIMPLE = re.compile(r"[^.'`,\-\s]*\Z")
_ASCII_PIECES = re.compile(r"[A-Za-z0-9]+|.")
_MULTIDOT = re.compile(r"\.{2,}")
_MULTIDOT_MARKER = re.compile(r"(?:DOT)+MULTI")
_COMMA_1 = re.compile(rf"([^{_N}])[,]")
_COMMA_2 = re.compile(rf"[,]([^{_N}])")
_COMMA_3 = re.compile(rf"([{_N}])[,]$")
_APOSTROPHE = (
    (re.compile(rf"([^{_ALPHA}])[']([^{_ALPHA}])"), r"\1 ' \2"),
    (re.compile(rf"([^{_ALPHA}{_N}])[']([{_ALPHA}])"), r"\1 ' \2"),
    (re.compile(rf"([{_ALPHA}])[']([^{_ALPHA}])"), r"\1 ' \2"),
    (re.compile(rf"([{_ALPHA}])[']([{_ALPHA}])"), r"\1 '\2"),
    (re.compile(rf"([{_N}])[']([s])"), r"\1 '\2"),
)
_TRAILING_DOT_APOSTROPHE = re.compile(r"\.' ?$")
_ESCAPE = str.maketrans(
    {"&": "&amp;", "|": "&#124;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;", "[": "&#91;", "]": "&#93;"}
)

# What a chunk's last token may need to know about the next chunk (the non-breaking-prefix rule looks
# at the first character of the following token).
NEXT_OTHER, NEXT_LOWER, NEXT_DIGIT = 0, 1, 2
# context bits for tokenize_chunk
AT_START, AT_END = 1, 2


def next_class(first_char: str) -> int:
    if first_char in IS_LOWER:
        return NEXT_LOWER
    if "0" <= first_char <= "9":
        return NEXT_DIGIT
    return NEXT_OTHER


def _multidots(text: str) -> str:
    n = len(text)

    def marker(m: re.Match) -> str:
        s = " " + "DOT" * (m.end() - m.start()) + "MULTI"
        return s + " " if m.end() < n else s

    return _MULTIDOT.sub(marker, text)


def _restore_multidots(text: str) -> str:
    return _MULTIDOT_MARKER.sub(lambda m: "." * ((m.end() - m.start() - 5) // 3), text)


def _rules(text: str, at_start: bool, at_end: bool, nxt: int) -> list[str]:
    """The Moses rule chain on `text` (cleaned, no leading/trailing space).

    Not at a text boundary, a space stands in for the neighbouring chunk on that side, which is all
    any rule sees of it; `nxt` stands in for the next chunk's first character.
    """
    if text.isascii() and "MULTI" not in text:
        if text.isalnum():  # a plain word: no rule applies (the common case)
            return [text]
        if _ASCII_SIMPLE.match(text):
            # no . ' ` , - : only the padding rule applies, and ASCII IsAlnum is [A-Za-z0-9]
            return [tok.translate(_ESCAPE) for tok in _ASCII_PIECES.findall(text)]
        if text[-1] == "." and _ASCII_SIMPLE.match(text, 0, len(text) - 1):
            # the same plus one final '.', which only the non-breaking-prefix rule may split off
            tokens = [tok.translate(_ESCAPE) for tok in _ASCII_PIECES.findall(text, 0, len(text) - 1)]
            if not tokens or not tokens[-1].isalnum():
                return tokens + ["."]
            following = None if at_end else nxt
            word = tokens[-1]
            if (
                word in _NONBREAKING
                and word not in _NUMERIC_ONLY
                or following == NEXT_LOWER
                or (word in _NUMERIC_ONLY and following == NEXT_DIGIT)
            ):
                tokens[-1] = word + "."
            else:
                tokens.append(".")
            return tokens
    t = ("" if at_start else " ") + text + ("" if at_end else " ")
    t = " ".join(_PAD_NOT_ALNUM.split(t))  # " x " around each such character
    if "-" in t:
        t = _DASH.sub(" @-@ ", t)
    if ".." in t:
        t = _multidots(t)
    if "," in t:
        t = _COMMA_1.sub(r"\1 , ", t)
        t = _COMMA_2.sub(r" , \1", t)
        t = _COMMA_3.sub(r"\1 , ", t)
    if "'" in t:
        for rx, sub in _APOSTROPHE:
            t = rx.sub(sub, t)
    tokens = t.split()
    n = len(tokens)
    for i, tok in enumerate(tokens):
        if len(tok) < 2 or tok[-1] != ".":
            continue
        prefix = tok[:-1]
        if i + 1 < n:
            following = next_class(tokens[i + 1][0])
        elif not at_end:
            following = nxt
        else:
            following = None  # last token of the text
        if (
            ("." in prefix and not _ALPHA_SET.isdisjoint(prefix))
            or (prefix in _NONBREAKING and prefix not in _NUMERIC_ONLY)
            or following == NEXT_LOWER
        ):
            continue
        if prefix in _NUMERIC_ONLY and following == NEXT_DIGIT:
            continue
        tokens[i] = prefix + " ."
    t = " ".join(tokens)
    if at_end and "'" in t:
        t = _TRAILING_DOT_APOSTROPHE.sub(" . ' ", t)
    if "MULTI" in t:
        t = _restore_multidots(t)
    return t.translate(_ESCAPE).split()


def tokenize(text: str) -> list[str]:
    """Moses-tokenize a whole text (`-l en -a`, escaped): the exact reference path."""
    text = " ".join(CONTROL.sub("", text).split())
    if not text:
        return []
    return _rules(text, True, True, NEXT_OTHER)


def tokenize_chunk(chunk: str, context: int, nxt: int = NEXT_OTHER) -> list[str]:
    """Moses-tokenize one cleaned whitespace-free chunk of a longer text.

    `context` has AT_START / AT_END set when the chunk begins / ends the text; `nxt` classifies the next
    chunk's first character (only read when the chunk ends with '.').
    """
    return _rules(chunk, bool(context & AT_START), bool(context & AT_END), nxt)


def chunks_interact(left: str, right: str) -> bool:
    """True where the apostrophe rules would see both chunks at once (`x' 'y`): use `tokenize`."""
    return left[-1] == "'" and right[0] == "'"


# ---------------------------------------------------------------------------------------------------
# Detokenization (detokenizer.perl -l en)

_UNESCAPE = (
    ("&bar;", "|"),
    ("&#124;", "|"),
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&bra;", "["),
    ("&ket;", "]"),
    ("&quot;", '"'),
    ("&apos;", "'"),
    ("&#91;", "["),
    ("&#93;", "]"),
    ("&amp;", "&"),
)
_SC = _char_class(tables.IS_SC)
_IS_CURRENCY = re.compile(rf"^[{_SC}\(\[\{{\¿\¡]+$")
_IS_PUNCT = re.compile(r"^[\,\.\?\!\:\;\\\%\}\]\)]+$")
_IS_CONTRACTION = re.compile(rf"^['][{_char_class(tables.DETOK_IS_ALPHA)}]")
_IS_OPEN_QUOTE = re.compile(r"""^[\'\"„“`]+$""")
_ALL_CLOSE_QUOTES = re.compile(r"^[„“”]+$")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    for a, b in tables.CJK:
        if cp <= b:
            return cp >= a
    return False


def unescape(text: str) -> str:
    for entity, char in _UNESCAPE:
        if entity in text:
            text = text.replace(entity, char)
    return text


def detokenize(tokens: list[str]) -> str:
    """Join Moses tokens back into text (undo `@-@`, unescape, attach punctuation and quotes)."""
    text = " " + " ".join(tokens) + " "
    text = unescape(text.replace(" @-@ ", "-"))
    words = text.split()
    quotes: dict[str, int] = {}
    out = []
    space = " "
    for i, w in enumerate(words):
        if _is_cjk(w[0]):
            out.append(w if i > 0 and _is_cjk(words[i - 1][-1]) else space + w)
            space = " "
        elif _IS_CURRENCY.search(w):
            out.append(space + w)
            space = ""
        elif _IS_PUNCT.search(w):
            out.append(w)
            space = " "
        elif i > 0 and _IS_CONTRACTION.search(w):
            out.append(w)
            space = " "
        elif _IS_OPEN_QUOTE.search(w):
            q = '"' if _ALL_CLOSE_QUOTES.search(w) else w
            count = quotes.get(q, 0)
            if count % 2 == 0:
                if w == "'" and i > 0 and words[i - 1].endswith("s"):
                    # possessive of a word in s ("the Jones' house"): attach left, not an opening quote
                    out.append(w)
                    space = " "
                else:
                    out.append(space + w)
                    space = ""
                    quotes[q] = count + 1
            else:
                out.append(w)
                space = " "
                quotes[q] = count + 1
        else:
            out.append(space + w)
            space = " "
    return re.sub(r" {2,}", " ", "".join(out)).strip()
