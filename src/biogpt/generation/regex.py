"""Regular expressions as automata over characters, for structured outputs: a pattern compiled to an NFA
(Thompson's construction), then to a DFA over classes of characters.

The pattern must match the whole decoded output. Supported: literals, `.`, escapes `\\d \\w \\s \\D \\W \\S` and
escaped metacharacters, classes `[a-z0-9_]` / `[^...]`, groups `(...)` / `(?:...)`, alternation `|`, greedy
quantifiers `* + ? {m} {m,} {m,n}` (n <= 100), and `^`/`$` at the ends (the match is always whole). Anything else
(back-references, look-around, lazy quantifiers, `\\b`, flags) is rejected with a clear error rather than
half-supported. Compiling is bounded whatever the pattern (`LIMITS`): the DFA is built in full when the request
arrives, so that a decoding step only looks states up; the token masks over it are generation/structured.py's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from biogpt.errors import GenerationError

CLASSES: dict[str, Callable[[str], bool]] = {
    "d": str.isdigit,
    "w": lambda c: c.isalnum() or c == "_",
    "s": str.isspace,
}
MAX_PATTERN = 2000  # characters of a pattern
MAX_CLASS_ITEMS = 256  # characters, ranges and escapes in one [...] class
MAX_DEPTH = 32  # nested groups
MAX_REPEAT = 100  # m and n of {m,n}
MAX_STATES = 5000  # NFA states (repetitions copy their atom)
MAX_DFA_STATES = 4000  # DFA states (sets of NFA states a text can reach)
MAX_WORK = 3_000_000  # NFA edges followed while building the DFA and classifying the vocabulary's characters
LIMITS = {"pattern characters": MAX_PATTERN, "items in a class": MAX_CLASS_ITEMS, "nested groups": MAX_DEPTH,
          "repetition bound": MAX_REPEAT, "NFA states": MAX_STATES, "DFA states": MAX_DFA_STATES,
          "compile steps": MAX_WORK}  # fmt: skip


class RegexError(GenerationError):
    """A regular expression outside the supported subset, malformed, or beyond a limit."""


class NFA:
    """States 0..n-1; eps[i]: states reached without a character; edges[i]: (predicate id, state). Predicates
    are compiled once per distinct atom (`preds`), however often a repetition copies it."""

    def __init__(self, pattern: str):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int]]] = []
        self.preds: list[Callable[[str], bool]] = []
        self.literal: dict[str, int] = {}  # a single character -> its predicate id
        self._pred_ids: dict[tuple[str, str], int] = {}
        self.src, self.pos, self.depth, self.parsed = pattern, 0, 0, 0
        if len(pattern) > MAX_PATTERN:
            raise RegexError(f"regex of {len(pattern)} characters: the limit is {MAX_PATTERN} pattern characters")
        if pattern.startswith("^"):
            self.pos = 1
        start, end = self._alternation()
        if self.pos < len(self.src):
            self._fail("unbalanced ')'" if self.src[self.pos] == ")" else "unexpected character")
        self.start, self.accept = start, end

    # --- parsing: alternation > concatenation > repetition > atom ----------------------------------------

    def _fail(self, why: str):
        raise RegexError(f"regex {self.src[:80]!r}: {why} at position {self.pos}; supported: literals, ., \\d \\w "
                         "\\s (and negations), [classes], (groups), |, * + ? {m,n}")  # fmt: skip

    def _state(self) -> int:
        if len(self.eps) >= MAX_STATES:
            self._fail(f"more than {MAX_STATES} NFA states (the limit; a repetition too large)")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def _pred(self, key: tuple[str, str], make: Callable[[], Callable[[str], bool]]) -> int:
        """The id of the predicate for this atom (kind, text), made on its first use only."""
        pid = self._pred_ids.get(key)
        if pid is None:
            pid = self._pred_ids[key] = len(self.preds)
            self.preds.append(make())
            if key[0] == "=":
                self.literal[key[1]] = pid
        return pid

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

    def _bounds(self) -> tuple[int, int | None]:
        """{m}, {m,} or {m,n} at self.pos: ASCII digits, at most MAX_REPEAT."""
        close = self.src.find("}", self.pos)
        body = self.src[self.pos + 1 : close] if close > 0 else ""
        parts = body.split(",")

        def number(x: str) -> bool:
            return x.isascii() and x.isdigit()

        if close < 0 or len(parts) > 2 or not number(parts[0]) or (len(parts) == 2 and parts[1] and
                                                                    not number(parts[1])):  # fmt: skip
            self._fail("bad {m,n} repetition (m and n are ASCII digits)")
        if any(len(x) > 3 for x in parts):
            self._fail(f"repetition bounds must satisfy m <= n <= {MAX_REPEAT} (the repetition bound limit)")
        lo = int(parts[0])
        hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        if (hi is not None and hi < lo) or max(lo, hi or 0) > MAX_REPEAT:
            self._fail(f"repetition bounds must satisfy m <= n <= {MAX_REPEAT} (the repetition bound limit)")
        self.pos = close + 1
        return lo, hi

    def _repetition(self) -> tuple[int, int]:
        start = self.pos
        frag = self._atom()
        atom_src = self.src[start : self.pos]
        c = self._peek()
        if c not in ("*", "+", "?", "{"):
            return frag
        if c == "{":
            lo, hi = self._bounds()
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
        self.parsed += len(atom_src)  # copies re-parse their atom: count it against the compile steps
        if self.parsed > MAX_WORK // 10:
            self._fail(f"a repetition re-reads more than {MAX_WORK // 10} pattern characters (the compile steps "
                       "limit)")  # fmt: skip
        saved_src, saved_pos = self.src, self.pos
        self.src, self.pos = atom_src, 0
        frag = self._atom()
        self.src, self.pos = saved_src, saved_pos
        return frag

    def _atom(self) -> tuple[int, int]:
        c = self._peek()
        if c == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self._fail(f"more than {MAX_DEPTH} nested groups (the nested groups limit)")
            self.pos += 1
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self._peek() == "?":
                self._fail("look-around and group flags are not supported")
            frag = self._alternation()
            if self._peek() != ")":
                self._fail("missing ')'")
            self.pos += 1
            self.depth -= 1
            return frag
        if c in ("*", "+", "?", "{", ")"):
            self._fail(f"nothing to repeat before {c!r}" if c != ")" else "unbalanced ')'")
        if c in ("^", "$"):
            self._fail("anchors are supported only at the very start (^) and end ($)")
        start = self.pos
        if c == "[":
            make = self._class()
            pid = self._pred(("[", self.src[start : self.pos]), make)
        elif c == "\\":
            key, make = self._escape()
            pid = self._pred(key, make)
        else:
            self.pos += 1
            if c == ".":
                pid = self._pred((".", ""), lambda: lambda ch: ch != "\n")
            else:
                pid = self._pred(("=", c), lambda: lambda ch: ch == c)
        s, e = self._state(), self._state()
        self.edges[s].append((pid, e))
        return s, e

    def _escape(self) -> tuple[tuple[str, str], Callable[[], Callable[[str], bool]]]:
        """(key, maker) of the predicate of the escape at self.pos."""
        self.pos += 1
        c = self._peek()
        if c is None:
            self._fail("a trailing backslash")
        self.pos += 1
        if c.lower() in CLASSES:
            f = CLASSES[c.lower()]
            return ("\\", c), (lambda: (lambda ch: not f(ch)) if c.isupper() else f)
        special = {"n": "\n", "t": "\t", "r": "\r"}
        if c in special:
            x = special[c]
            return ("=", x), lambda: lambda ch: ch == x
        if c.isalnum():
            self._fail(f"the escape \\{c} is not supported")
        return ("=", c), lambda: lambda ch: ch == c

    def _class(self) -> Callable[[], Callable[[str], bool]]:
        """Parse [...] at self.pos; a maker of its predicate (a set of characters, ranges and escapes)."""
        self.pos += 1
        negate = self._peek() == "^"
        if negate:
            self.pos += 1
        chars: set[str] = set()
        ranges: list[tuple[str, str]] = []
        escapes: list[Callable[[str], bool]] = []
        first, items = True, 0
        while True:
            c = self._peek()
            if c is None:
                self._fail("missing ']'")
            if c == "]" and not first:
                self.pos += 1
                break
            first, items = False, items + 1
            if items > MAX_CLASS_ITEMS:
                self._fail(f"more than {MAX_CLASS_ITEMS} items in a class (the limit)")
            if c == "\\":
                escapes.append(self._escape()[1]())
                continue
            self.pos += 1
            if self._peek() == "-" and self.pos + 1 < len(self.src) and self.src[self.pos + 1] != "]":
                hi = self.src[self.pos + 1]
                if hi == "\\" or hi < c:
                    self._fail(f"bad range {c}-{hi}")
                self.pos += 2
                ranges.append((c, hi))
            else:
                chars.add(c)
        frozen = frozenset(chars)

        def member(ch: str) -> bool:
            hit = ch in frozen or any(a <= ch <= b for a, b in ranges) or any(f(ch) for f in escapes)
            return hit != negate

        return lambda: member

    # --- simulation (the reference semantics the DFA is built from) ----------------------------------------

    def closure(self, states) -> frozenset[int]:
        out, todo = set(states), list(states)
        while todo:
            for j in self.eps[todo.pop()]:
                if j not in out:
                    out.add(j)
                    todo.append(j)
        return frozenset(out)

    def step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        return self.closure({j for i in states for pid, j in self.edges[i] if self.preds[pid](ch)})

    def run(self, text: str, states: frozenset[int] | None = None) -> frozenset[int]:
        states = self.closure([self.start]) if states is None else states
        for ch in text:
            if not states:
                break
            states = self.step(states, ch)
        return states

    def matches(self, text: str) -> bool:
        return self.accept in self.run(text)


class DFA:
    """The NFA's subset automaton over classes of characters (characters that every predicate treats alike),
    built in full at compile time within MAX_DFA_STATES and MAX_WORK. State 0 is dead (no NFA state), 1 the
    start; table[state * width + class] is the next state (`rows[state][class]` as lists); the last class
    (padding) stays put."""

    def __init__(self, nfa: NFA, alphabet: list[str]):
        self.nfa, self.work = nfa, 0
        self.sig_class: dict[frozenset[int], int] = {}
        self.char_class: dict[str, int] = {}
        self.class_preds: list[frozenset[int]] = []
        literals = set(nfa.literal.values())
        self.others = [pid for pid in range(len(nfa.preds)) if pid not in literals]  # classes, `.`, `\\d`...
        for ch in alphabet:
            self.char_class[ch] = self._classify(ch)
        self.pad = len(self.class_preds)
        start = nfa.closure([nfa.start])
        self.sets: list[frozenset[int]] = [frozenset(), start]
        self.index = {self.sets[0]: 0, start: 1}
        self.rows: list[list[int]] = []
        while len(self.rows) < len(self.sets):
            self.rows.append(self._row(self.sets[len(self.rows)]))
        self.table = np.array(self.rows, dtype=np.int32).reshape(-1)  # [states * (classes + 1)], row-major
        self.width = self.pad + 1
        self.accepting = [nfa.accept in s for s in self.sets]

    def _spend(self, n: int) -> None:
        self.work += n
        if self.work > MAX_WORK:
            raise RegexError(f"regex {self.nfa.src[:80]!r} is too complex: compiling it takes more than {MAX_WORK} "
                             "steps (the compile steps limit)")  # fmt: skip

    def _classify(self, ch: str) -> int:
        """The class of a character: the set of predicates that accept it (literals looked up, others run)."""
        lit = self.nfa.literal
        self._spend(len(self.others))
        sig = frozenset([pid for pid in self.others if self.nfa.preds[pid](ch)] + ([lit[ch]] if ch in lit else []))
        cls = self.sig_class.get(sig)
        if cls is None:
            cls = self.sig_class[sig] = len(self.class_preds)
            self.class_preds.append(sig)
        return cls

    def _row(self, states: frozenset[int]) -> list[int]:
        """Next states of one DFA state for every class, adding the new ones."""
        moves: dict[int, list[int]] = {}
        for i in states:
            for pid, j in self.nfa.edges[i]:
                moves.setdefault(pid, []).append(j)
        self._spend(len(states) + len(self.class_preds))
        row = []
        for preds in self.class_preds:
            targets = [j for pid in preds if pid in moves for j in moves[pid]]
            nxt = self.nfa.closure(targets) if targets else self.sets[0]
            self._spend(len(nxt))
            k = self.index.get(nxt)
            if k is None:
                if len(self.sets) >= MAX_DFA_STATES:
                    raise RegexError(f"regex {self.nfa.src[:80]!r} needs more than {MAX_DFA_STATES} DFA states "
                                     "(the limit)")  # fmt: skip
                k = self.index[nxt] = len(self.sets)
                self.sets.append(nxt)
            row.append(k)
        row.append(len(self.rows))  # padding: stay
        return row

    def run(self, state: int, text: str) -> int:
        rows, classes = self.rows, self.char_class
        for ch in text:
            if not state:
                return 0
            cls = classes.get(ch)
            # decoded text only holds the vocabulary's characters and DETOK_CHARS; anything else matches no class
            state = rows[state][cls] if cls is not None else 0
        return state
