"""Structured outputs (`regex`) with bounded per-token work: the DFA-and-token-mask implementation allows exactly
the tokens the reference rule allows (below: a trie walk with the NFA, then every candidate decoded with the text
and the NFA run over the whole of it), pathological patterns cost bounded, counted work, and every limit is a
400 envelope that names it."""

import json
import random
import re
from collections.abc import Callable

import numpy as np
import pytest

import biogpt
from biogpt import Tokenizer
from biogpt.generation import generate
from biogpt.generation import regex as R
from biogpt.generation import structured as S
from biogpt.generation.regex import RegexError
from biogpt.generation.structured import DETOK_CHARS, RegexConstraint, TokenIndex, compile_regex
from biogpt.serve import create_app

from .test_serve import error_of, serve

# ---------------------------------------------------------------------------------------------------------
# the reference: the rule structured outputs followed before the DFA, kept verbatim (parser, trie walk, decode
# of every candidate); slow (seconds per step for `.*` on a real vocabulary) but plainly the specification

REF_CLASSES: dict[str, Callable[[str], bool]] = {
    "d": str.isdigit,
    "w": lambda c: c.isalnum() or c == "_",
    "s": str.isspace,
}
MAX_REPEAT = 100
MAX_STATES = 5000


class RefError(ValueError):
    """A regular expression outside the supported subset, or malformed."""


class RefNFA:
    """States 0..n-1; eps[i]: states reached without a character; edges[i]: (predicate, state)."""

    def __init__(self, pattern: str):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[Callable[[str], bool], int]]] = []
        self.src, self.pos = pattern, 0
        if pattern.startswith("^"):
            self.pos = 1
        start, end = self._alternation()
        if self.pos < len(self.src):
            self._fail("unbalanced ')'" if self.src[self.pos] == ")" else "unexpected character")
        self.start, self.accept = start, end

    # --- parsing: alternation > concatenation > repetition > atom ----------------------------------------

    def _fail(self, why: str):
        raise RefError(f"regex {self.src!r}: {why} at position {self.pos}; supported: literals, ., \\d \\w \\s "
                         "(and negations), [classes], (groups), |, * + ? {m,n}")  # fmt: skip

    def _state(self) -> int:
        if len(self.eps) >= MAX_STATES:
            self._fail(f"more than {MAX_STATES} NFA states (a repetition too large)")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def _peek(self) -> str | None:
        return self.src[self.pos] if self.pos < len(self.src) else None

    def _alternation(self) -> tuple[int, int]:
        branches = [self._concatenation()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._concatenation())
        if len(branches) == 1:
            return branches[0]
        s, e = self._state(), self._state()
        for bs, be in branches:
            self.eps[s].append(bs)
            self.eps[be].append(e)
        return s, e

    def _concatenation(self) -> tuple[int, int]:
        s = e = self._state()
        while self._peek() not in (None, "|", ")"):
            if self._peek() == "$" and self.pos == len(self.src) - 1:
                self.pos += 1
                break
            fs, fe = self._repetition()
            self.eps[e].append(fs)
            e = fe
        return s, e

    def _repetition(self) -> tuple[int, int]:
        start = self.pos
        frag = self._atom()
        atom_src = self.src[start : self.pos]
        c = self._peek()
        if c not in ("*", "+", "?", "{"):
            return frag
        if c == "{":
            close = self.src.find("}", self.pos)
            body = self.src[self.pos + 1 : close] if close > 0 else ""
            parts = body.split(",")
            if close < 0 or len(parts) > 2 or not parts[0].isdigit() or (len(parts) == 2 and parts[1] and not
                                                                             parts[1].isdigit()):  # fmt: skip
                self._fail("bad {m,n} repetition")
            lo = int(parts[0])
            hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
            if (hi is not None and hi < lo) or max(lo, hi or 0) > MAX_REPEAT:
                self._fail(f"repetition bounds must satisfy m <= n <= {MAX_REPEAT}")
            self.pos = close + 1
        else:
            self.pos += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        if self._peek() in ("?", "+", "*", "{"):
            self._fail("lazy or possessive quantifiers are not supported")
        # m copies, then a loop (no upper bound) or n - m optional copies; each copy re-parses the atom
        unused = [frag]

        def piece() -> tuple[int, int]:
            return unused.pop() if unused else self._reparse(atom_src)

        s = e = self._state()
        for _ in range(lo):
            fs, fe = piece()
            self.eps[e].append(fs)
            e = fe
        if hi is None:
            fs, fe = piece()
            loop = self._state()
            self.eps[e].append(loop)
            self.eps[loop].append(fs)
            self.eps[fe].append(loop)
            return s, loop
        end = self._state()
        self.eps[e].append(end)
        for _ in range(hi - lo):
            fs, fe = piece()
            self.eps[e].append(fs)
            self.eps[fe].append(end)
            e = fe
        return s, end

    def _reparse(self, atom_src: str) -> tuple[int, int]:
        saved_src, saved_pos = self.src, self.pos
        self.src, self.pos = atom_src, 0
        frag = self._atom()
        self.src, self.pos = saved_src, saved_pos
        return frag

    def _atom(self) -> tuple[int, int]:
        c = self._peek()
        if c == "(":
            self.pos += 1
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self._peek() == "?":
                self._fail("look-around and group flags are not supported")
            frag = self._alternation()
            if self._peek() != ")":
                self._fail("missing ')'")
            self.pos += 1
            return frag
        if c in ("*", "+", "?", "{", ")"):
            self._fail(f"nothing to repeat before {c!r}" if c != ")" else "unbalanced ')'")
        if c in ("^", "$"):
            self._fail("anchors are supported only at the very start (^) and end ($)")
        if c == "[":
            pred = self._class()
        elif c == "\\":
            pred = self._escape(in_class=False)
        else:
            self.pos += 1
            pred = (lambda ch: ch != "\n") if c == "." else (lambda ch, c=c: ch == c)
        s, e = self._state(), self._state()
        self.edges[s].append((pred, e))
        return s, e

    def _escape(self, in_class: bool) -> Callable[[str], bool]:
        self.pos += 1
        c = self._peek()
        if c is None:
            self._fail("a trailing backslash")
        self.pos += 1
        if c.lower() in REF_CLASSES:
            f = REF_CLASSES[c.lower()]
            return (lambda ch: not f(ch)) if c.isupper() else f
        special = {"n": "\n", "t": "\t", "r": "\r"}
        if c in special:
            return lambda ch, x=special[c]: ch == x
        if c.isalnum():
            self._fail(f"the escape \\{c} is not supported")
        return lambda ch: ch == c

    def _class(self) -> Callable[[str], bool]:
        self.pos += 1
        negate = self._peek() == "^"
        if negate:
            self.pos += 1
        parts: list[Callable[[str], bool]] = []
        first = True
        while True:
            c = self._peek()
            if c is None:
                self._fail("missing ']'")
            if c == "]" and not first:
                self.pos += 1
                break
            first = False
            if c == "\\":
                parts.append(self._escape(in_class=True))
                continue
            self.pos += 1
            if self._peek() == "-" and self.pos + 1 < len(self.src) and self.src[self.pos + 1] != "]":
                hi = self.src[self.pos + 1]
                if hi == "\\" or hi < c:
                    self._fail(f"bad range {c}-{hi}")
                self.pos += 2
                parts.append(lambda ch, a=c, b=hi: a <= ch <= b)
            else:
                parts.append(lambda ch, a=c: ch == a)
        if negate:
            return lambda ch: not any(p(ch) for p in parts)
        return lambda ch: any(p(ch) for p in parts)

    # --- simulation ------------------------------------------------------------------------------------

    def closure(self, states: frozenset[int]) -> frozenset[int]:
        out, todo = set(states), list(states)
        while todo:
            for j in self.eps[todo.pop()]:
                if j not in out:
                    out.add(j)
                    todo.append(j)
        return frozenset(out)

    def step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        return self.closure(frozenset(j for i in states for pred, j in self.edges[i] if pred(ch)))

    def run(self, text: str, states: frozenset[int] | None = None) -> frozenset[int]:
        states = self.closure(frozenset([self.start])) if states is None else states
        for ch in text:
            if not states:
                break
            states = self.step(states, ch)
        return states

    def matches(self, text: str) -> bool:
        return self.accept in self.run(text)


class RefTrie:
    """The vocabulary's token spellings (without `@@`) in a character trie; ids at the node where each ends.
    Special and learned prompt tokens are left out: they have no text."""

    def __init__(self, tok):
        self.root: dict = {}
        for i, p in enumerate(tok.vocab.pieces):
            if i < 4:
                continue
            node = self.root
            for ch in p[:-2] if p.endswith("@@") else p:
                node = node.setdefault(ch, {})
            node.setdefault(None, []).append(i)

    def walk(self, nfa: RefNFA, states: frozenset[int]) -> list[int]:
        """Ids of tokens whose spelling, read from `states`, keeps the NFA alive."""
        out: list[int] = []
        todo = [(self.root, states)]
        while todo:
            node, st = todo.pop()
            for ch, child in node.items():
                if ch is None:
                    out += child
                    continue
                nxt = nfa.step(st, ch)
                if nxt:
                    todo.append((child, nxt))
        return out


class RefConstraint:
    """The decoded output must match `pattern` as a whole, then `</s>`. A token is allowed when the text decoded
    with it can still become a match: by any characters after a word piece; after a token that ends a word, by
    the end, a space, or a character the detokenizer may attach to the word (anything but ASCII letters and
    digits, and the `n'` of a contraction)."""

    def __init__(self, nfa: RefNFA, tok, trie: RefTrie, eos_token_id: int = 2):
        self.nfa, self.tok, self.trie, self.eos = nfa, tok, trie, eos_token_id

    def viable(self, text: str, t: int) -> bool:
        states = self.nfa.run(text)
        if not states or self.tok.vocab.pieces[t].endswith("@@") or self.nfa.accept in states:
            return bool(states)
        spelled = {c for p in self.tok.vocab.pieces[4:] for c in p.removesuffix("@@")} | set(DETOK_CHARS)
        nexts = [" ", "n'"] + [c for c in sorted(spelled) if not (c.isascii() and c.isalnum())]
        return any(self.nfa.run(c, states) for c in nexts if set(c) <= spelled)

    def allowed(self, generated):
        generated = [t for t in generated]
        text = self.tok.decode(generated)
        states = self.nfa.run(text)
        # the detokenizer puts a space before a new word (and may drop it, before punctuation): try both
        cands = set(self.trie.walk(self.nfa, states))
        if generated:
            spaced = self.nfa.run(" ", states)
            if spaced:
                cands.update(self.trie.walk(self.nfa, spaced))
        ok = sorted(t for t in cands if self.viable(self.tok.decode(generated + [t]), t))
        if self.nfa.accept in states:
            ok.append(self.eos)
        return ok or [self.eos]


# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return biogpt.load("demo")


@pytest.fixture(scope="module")
def small_tok(demo, tmp_path_factory) -> Tokenizer:
    """A small vocabulary (so that the reference can decode every candidate) with every token kind the
    detokenizer treats apart: the demo's entity, `@-@` and punctuation pieces, a sample of its words and word
    pieces, and tokens the real vocabularies lack (raw quotes, CJK, currency)."""

    _, tok = demo
    pieces = tok.vocab.pieces
    rng = random.Random(0)
    special = [p for p in pieces[4:] if not p.removesuffix("@@").isalnum()]
    plain = rng.sample([p for p in pieces[4:] if p.removesuffix("@@").isalnum()], 300)
    extra = ["ab", "``", "„@@", "''", "中@@", "文", "$@@", "€", "(@@", "[@@", ".@@", "5@@", "é", "α@@"]
    words = list(dict.fromkeys(special + plain + extra))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for w in words:
        vocab[w[:-2] if w.endswith("@@") else w + "</w>"] = len(vocab)
    d = tmp_path_factory.mktemp("small-vocab")
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("a b</w>\n", encoding="utf-8")  # decoding needs none; the loader one
    return Tokenizer.from_pretrained(d)


PATTERNS = [r"[0-9]+ (mg|ml)", r".*", r"\d{4}-\d{2}-\d{2}", r"(yes|no|maybe)", r"[A-Z][a-z]+ (is|was) .{0,30}",
            r"\w+ & \w+", r"[^a-z]*", r"(\(\w+\)|[a-z]+)( [a-z]+){0,3}\.?", r"a.c", r"\S+( \S+)*",
            r".{3,8}"]  # fmt: skip


def prefixes(tok, index: TokenIndex, rng: random.Random, n: int) -> list[list[int]]:
    """Token lists that stress the detokenizer: entity pieces, quotes, `@-@`, punctuation, CJK, currency,
    mixed with plain words, of lengths 0..29 (they need not follow any pattern)."""
    odd = index.brute + [i for mask, _ in index.groups.values() for i in np.flatnonzero(mask)[:40].tolist()]
    every = [i for i in range(4, index.V)]
    out = [[]]
    for _ in range(n):
        k = rng.randrange(1, 30)
        out.append([rng.choice(odd) if rng.random() < 0.6 else rng.choice(every) for _ in range(k)])
    return out


def test_allowed_sets_equal_the_reference(small_tok):
    """For every pattern and many prefixes (random ones, and walks that follow the constraint), the allowed ids
    equal the reference's, in the same order, eos included."""
    tok, rng = small_tok, random.Random(1)
    index, trie = TokenIndex(tok), RefTrie(tok)
    for pattern in PATTERNS:
        new = RegexConstraint(compile_regex(pattern, index), tok)
        ref = RefConstraint(RefNFA(pattern), tok, trie)
        for gen in prefixes(tok, index, rng, 10):
            assert new.allowed(gen) == ref.allowed(gen), (pattern, gen, tok.decode(gen))
        for _ in range(2):  # walks: each step one of the allowed tokens
            gen = []
            for _ in range(10):
                allowed = ref.allowed(gen)
                assert new.allowed(gen) == allowed, (pattern, gen, tok.decode(gen))
                if allowed == [2]:
                    break
                gen.append(rng.choice([t for t in allowed if t != 2] or [2]))


def test_groups_decode_as_prefix_plus_spelling(small_tok, demo):
    """The claim the speed rests on: after any prefix, every token of a group decodes to the same text plus its
    own spelling (checked for every token of both vocabularies after prefixes full of odd tokens)."""
    rng = random.Random(2)
    for tok in (small_tok, demo[1]):
        index = TokenIndex(tok)
        for gen in prefixes(tok, index, rng, 6 if tok is small_tok else 3):
            for mask, probe in index.groups.values():
                spelling = index.spell[probe]
                head = tok.decode(gen + [probe])[: -len(spelling)]
                for t in np.flatnonzero(mask).tolist():
                    assert tok.decode(gen + [t]) == head + index.spell[t], (gen, t)


def test_compiler_language_equals_reference():
    """Same language as the reference parser (and as Python's re) on random strings."""
    rng = random.Random(3)
    alphabet = "abcdxy019. _-\t(&"
    for p in PATTERNS + [r"a|b", r"(ab)+c?", r"[a-z]{2,4}", r"(a|bc){0,3}d", r"[a\-c]\s\S", r"^a.c$"]:
        new, ref = R.NFA(p), RefNFA(p)
        for _ in range(300):
            t = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
            assert new.matches(t) == ref.matches(t) == bool(re.fullmatch(p, t)), (p, t)


class Counting:
    """The tokenizer, counting decodes (the per-step work that grows with the text)."""

    def __init__(self, tok):
        self.tok, self.pieces, self.decodes = tok, tok.pieces, 0

    def decode(self, ids):
        self.decodes += 1
        return self.tok.decode(ids)


def walk_counts(constraint: RegexConstraint, counter: Counting, steps: int, seed: int) -> list[tuple[int, int]]:
    """(decodes, new token masks) of each of `steps` allowed() calls along a random allowed walk."""
    rng, gen, out = random.Random(seed), [], []
    for _ in range(steps):
        d0, m0 = counter.decodes, len(constraint.regex.masks)
        allowed = constraint.allowed(gen)
        out.append((counter.decodes - d0, max(0, len(constraint.regex.masks) - m0)))
        nxt = [t for t in allowed if t != 2]
        if not nxt:
            break
        gen.append(rng.choice(nxt))
    return out


@pytest.mark.parametrize("pattern,steps", [(r"(.?){100}(.?){100}(.?){100}", 40), (r".*", 200)])
def test_pathological_patterns_cost_bounded_work(demo, pattern, steps):
    """`(.?){100}` three times and `.*` over 200 tokens: compiling stays within the limits, and every step
    decodes at most 2 + groups + odd tokens times and walks the vocabulary for at most 2 + groups new DFA
    states, whatever the length of the text (the reference decoded every candidate: ~8,000 per step)."""
    _, tok = demo
    index = TokenIndex(tok)
    regex = compile_regex(pattern, index)
    assert regex.dfa.work <= R.MAX_WORK and len(regex.dfa.sets) <= 2 + 300
    counter = Counting(tok)
    constraint = RegexConstraint(regex, counter)
    counts = walk_counts(constraint, counter, steps, seed=4)
    assert len(counts) == steps
    assert max(d for d, _ in counts) <= 2 + len(index.groups) + len(index.brute)
    assert max(m for _, m in counts) <= 2 + len(index.groups)
    assert len(constraint.regex.masks) <= S.MAX_MEMO


LIMITED = {
    "pattern characters": "[" + "".join(chr(0x4E00 + i) for i in range(10_000)) + "]{50}",
    "items in a class": "[" + "".join(chr(0x4E00 + i) for i in range(300)) + "]",
    "nested groups": "(" * 300 + "a" + ")" * 300,
    "repetition bound": "a{1,12345678901234567890}",
    "NFA states": "(a{100}){100}",
    "DFA states": "(a|b)*a(a|b){20}",
}
NOT_ASCII_DIGITS = ["a{²}", "a{1,١}", "a{٣}"]


def test_each_limit_is_a_regex_error_naming_it(demo, monkeypatch):
    index = TokenIndex(demo[1])
    for limit, pattern in LIMITED.items():
        with pytest.raises(RegexError, match=re.escape(limit)):
            compile_regex(pattern, index)
    for pattern in NOT_ASCII_DIGITS:
        with pytest.raises(RegexError, match="ASCII digits"):
            compile_regex(pattern, index)
    nested = "((" + "[" + "".join(chr(0x4E00 + i) for i in range(250)) + "]{100}){100})"
    with pytest.raises(RegexError, match="re-reads more than .*compile steps limit"):
        compile_regex(nested, index)  # copies of copies: parsing is counted too
    monkeypatch.setattr(R, "MAX_WORK", 1000)
    with pytest.raises(RegexError, match="compile steps"):
        compile_regex(r"[a-z]+ (is|was) .{0,30}", index)


def test_limits_are_400_envelopes_and_outputs_equal_the_reference(demo):
    """Through the server: every limit is a 400 envelope naming it (param structured_outputs), and greedy
    regex completions equal offline generate with the reference constraint."""
    model, tok = demo
    app = create_app(model, tok, model_name="demo")
    patterns = [r"[0-9]+ (mg|ml)", r"\d{4}-\d{2}-\d{2}", r"(the|a) [a-z]{2}", r"(yes|no|maybe)"]

    async def go(http, client):
        base = {"model": "demo", "prompt": "The dose was", "max_tokens": 8, "temperature": 0}
        bad = {k: await http.post("/v1/completions", json={**base, "structured_outputs": {"regex": p}})
               for k, p in {**LIMITED, "ASCII digits": NOT_ASCII_DIGITS[0]}.items()}  # fmt: skip
        good = [await http.post("/v1/completions", json={**base, "structured_outputs": {"regex": p}})
                for p in patterns]  # fmt: skip
        return bad, good

    bad, good = serve(app, go)
    for limit, r in bad.items():
        e = error_of(r, 400)
        assert limit in e["message"] and e["param"] == "structured_outputs", (limit, e)
    trie, ids = RefTrie(tok), tok.encode("The dose was")
    for pattern, r in zip(patterns, good, strict=True):
        new = generate(model, [ids], max_new_tokens=8, constraints=RefConstraint(RefNFA(pattern), tok, trie))
        new = new.sequences[0, len(ids) :].tolist()
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == tok.decode(new[: (new + [2]).index(2)])


def test_decoding_after_a_fixed_head_equals_decoding_everything(small_tok):
    """The other claim: a step decodes only the tokens after a head that no later token changes; the text is
    the full decode's, for long prefixes full of odd tokens and every token of the vocabulary appended."""
    tok, rng = small_tok, random.Random(5)
    index = TokenIndex(tok)
    odd = index.brute + [i for mask, _ in index.groups.values() for i in np.flatnonzero(mask)[:40].tolist()]
    plain = [i for i in range(4, index.V) if index.plain[i]]
    cuts = 0
    for _ in range(40):
        c = RegexConstraint(compile_regex(r".*", index), tok)
        gen, p_odd = [], rng.choice([0.0, 0.1, 0.3])
        for _ in range(rng.randrange(10, 40)):
            gen.append(rng.choice(odd) if rng.random() < p_odd else rng.choice(plain))
            c._cut(gen)
            cuts += c._head[0] > 0
            for t in [rng.randrange(4, index.V) for _ in range(20)] + index.brute:
                assert c._decode(gen, [t]) == tok.decode(gen + [t]), (gen, t)
    assert cuts > 100  # the head was in use
