"""Structured outputs as token constraints: one of a list of strings (a token trie), or text matching a regular
expression.

The regular expression is compiled here to an NFA over characters (Thompson's construction) and must match the
whole decoded output. Supported: literals, `.`, escapes `\\d \\w \\s \\D \\W \\S` and escaped metacharacters,
classes `[a-z0-9_]` / `[^...]`, groups `(...)` / `(?:...)`, alternation `|`, greedy quantifiers `* + ? {m}
{m,} {m,n}` (n <= 100), and `^`/`$` at the ends (the match is always whole). Anything else (back-references,
look-around, lazy quantifiers, `\\b`, flags) is rejected with a clear error rather than half-supported.

A token is allowed when the text decoded with it (BioGPT's detokenizer, exactly) can still be extended to a
match; `</s>` when the text already matches. Candidates are found by walking a trie of the token spellings
with the NFA's state set, then checked by decoding.
"""

from __future__ import annotations

from collections.abc import Callable

from biogpt.errors import GenerationError
from biogpt.generation.constraints import AllowedSequences, Constraint
from biogpt.text.tokenizer import Tokenizer

CLASSES: dict[str, Callable[[str], bool]] = {
    "d": str.isdigit,
    "w": lambda c: c.isalnum() or c == "_",
    "s": str.isspace,
}
MAX_REPEAT = 100
MAX_STATES = 5000


class RegexError(GenerationError):
    """A regular expression outside the supported subset, or malformed."""


class NFA:
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
        raise RegexError(f"regex {self.src!r}: {why} at position {self.pos}; supported: literals, ., \\d \\w \\s "
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
        if c.lower() in CLASSES:
            f = CLASSES[c.lower()]
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


class TokenTrie:
    """The vocabulary's token spellings (without `@@`) in a character trie; ids at the node where each ends.
    Special and learned prompt tokens are left out: they have no text."""

    def __init__(self, tok: Tokenizer):
        self.root: dict = {}
        for i, p in enumerate(tok.vocab.pieces):
            if i < 4:
                continue
            node = self.root
            for ch in p[:-2] if p.endswith("@@") else p:
                node = node.setdefault(ch, {})
            node.setdefault(None, []).append(i)

    def walk(self, nfa: NFA, states: frozenset[int]) -> list[int]:
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


class RegexConstraint(Constraint):
    """The decoded output must match `pattern` as a whole, then `</s>`."""

    def __init__(self, nfa: NFA, tok: Tokenizer, trie: TokenTrie, eos_token_id: int = 2):
        self.nfa, self.tok, self.trie, self.eos = nfa, tok, trie, eos_token_id

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
        ok = sorted(t for t in cands if self.nfa.run(self.tok.decode(generated + [t])))
        if self.nfa.accept in states:
            ok.append(self.eos)
        return ok or [self.eos]


def choice_constraint(seqs: list[list[int]], eos_token_id: int = 2) -> AllowedSequences:
    """One of the choices (their token ids, without special tokens), then the end of the sequence."""
    if not seqs:
        raise GenerationError("structured_outputs.choice needs at least one choice")
    if any(not s for s in seqs):
        raise GenerationError("structured_outputs.choice: every choice needs some text")
    return AllowedSequences(seqs, eos_token_id)
