"""Constraints on what a row may generate next: a forced prefix, one of a set of strings (a token trie), or a
span of a source text. The engine asks each row's constraint for the allowed ids at every step."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from biogpt.errors import GenerationError


class Constraint:
    _eos: int | None = None  # the end token as built; None: the model's, which the engine binds (`with_eos`)

    @property
    def eos(self) -> int:
        """The end token: as built, or the model's once the engine bound it; 2 (BioGPT's </s>) for a constraint
        built without one and asked directly."""
        return self._eos if self._eos is not None else 2

    @eos.setter
    def eos(self, value: int | None) -> None:
        self._eos = value

    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """Token ids allowed next, or None for no restriction."""
        raise NotImplementedError

    def with_eos(self, eos: int) -> Constraint:
        """This constraint, or where it was built without an end token a copy ending with `eos` (the model's):
        one constraint object serves models of different vocabularies."""
        if self._eos is not None:
            return self
        bound = copy.copy(self)
        bound._eos = eos
        return bound


class ForcedPrefix(Constraint):
    """Force these tokens first (fairseq's prefix_tokens), then `then` (or nothing)."""

    def __init__(self, tokens: Sequence[int], then: Constraint | None = None):
        self.tokens, self.then = list(tokens), then

    def with_eos(self, eos: int) -> Constraint:
        """The constraint that follows the prefix takes the end token."""
        if self.then is None or getattr(self.then, "_eos", None) is not None:
            return self
        return ForcedPrefix(self.tokens, bind_eos(self.then, eos))

    def allowed(self, generated):
        n = len(self.tokens)
        if len(generated) < n:
            return [self.tokens[len(generated)]]
        return self.then.allowed(generated[n:]) if self.then is not None else None


def bind_eos(constraint, eos: int):
    """`constraint.with_eos(eos)` for a Constraint; any other object with an `allowed` method as it is."""
    return constraint.with_eos(eos) if isinstance(constraint, Constraint) else constraint


class TokenTrie:
    """Token sequences as nested dicts (id -> the node after it), walked along a prefix. `mark_ends`: a node where a
    sequence ends holds the key None (used where the end token is not part of the sequences)."""

    def __init__(self, sequences: Sequence[Sequence[int]], mark_ends: bool = False):
        self.root: dict = {}
        for seq in sequences:
            node = self.root
            for t in seq:
                node = node.setdefault(int(t), {})
            if mark_ends:
                node[None] = True

    def walk(self, prefix: Sequence[int]) -> dict | None:
        """The node after `prefix`, or None where the prefix leaves the trie."""
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return None
        return node


class AllowedSequences(Constraint):
    """The output must be one of these token sequences, then `</s>` (e.g. yes / no / maybe)."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int | None = None):
        if not sequences or any(len(s) == 0 for s in sequences):
            raise GenerationError("AllowedSequences needs non-empty sequences")
        self.tokens = TokenTrie(sequences, mark_ends=True)
        self.trie: dict = self.tokens.root
        self.eos = eos_token_id

    def allowed(self, generated):
        """What may follow: the trie's next ids, `</s>` where a sequence ends; only `</s>` off the trie."""
        node = self.tokens.walk(generated)
        if node is None:
            return [self.eos]
        nxt = [t for t in node if t is not None]
        return nxt + [self.eos] if None in node else nxt


class SourceSpans(Constraint):
    """The output must be a contiguous span of `source` (at least one token), then `</s>`."""

    def __init__(self, source: Sequence[int], eos_token_id: int | None = None):
        self.source, self.eos = list(source), eos_token_id

    def allowed(self, generated):
        n, src = len(generated), self.source
        if n == 0:
            return sorted(set(src))
        nxt = {src[i + n] for i in range(len(src) - n) if src[i : i + n] == list(generated)}
        return sorted(nxt) + [self.eos]


# ---------------------------------------------------------------------------------------------------
# templates: fixed text, spans of a source and choices from a label set, repeated with a separator


@dataclass(frozen=True)
class Lit:
    """Exactly these tokens."""

    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Span:
    """A contiguous span of the source tokens, whole words only (it starts at a word start, ends at a word end),
    containing none of `exclude` (e.g. a template word a parser would split at), at most `max_tokens` long."""

    exclude: frozenset[int] = frozenset()
    max_tokens: int = 32  # entity names are a few words; an unbounded span could run the output out of room


@dataclass(frozen=True)
class Choice:
    """One of these token sequences (a label set)."""

    options: tuple[tuple[int, ...], ...]


class Template(Constraint):
    """Output = ITEM... (SEP ITEM...)* END </s>: e.g. `the relation between <span> and <span> exists`, joined by
    `;`, ended by `.` — the relation-extraction targets, with every entity a span of the source text and every
    relation word one of the task's labels. Every output it allows parses, and every entity it names is in the
    source.

    Tokens are matched by an NFA simulated over what was generated so far: a span may end wherever a word ends
    (or go on), a label wherever one ends, so the allowed set is the union over the live states. A statement
    that repeats an earlier one can only be followed by the end.
    """

    def __init__(
        self, items: Sequence[Lit | Span | Choice], sep: Sequence[int], end: Sequence[int], source: Sequence[int],
        can_start: Sequence[bool], can_end: Sequence[bool], eos_token_id: int | None = None,
    ):  # fmt: skip
        """`can_start[i]` / `can_end[i]`: a span may begin / end at source token i (e.g. at word boundaries,
        on a token with a letter or digit, so the detokenizer never glues it to the template's words)."""
        if not len(source) == len(can_start) == len(can_end):
            raise GenerationError("Template: one can_start and one can_end flag per source token")
        self.items = list(items) + [None]  # None: the junction (separator or end)
        self.sep, self.end, self.eos = tuple(sep), tuple(end), eos_token_id
        self.source = list(source)
        self.final = list(can_end)
        self.starts = frozenset(i for i, ok in enumerate(can_start) if ok)
        self._tries = [self._trie(it.options) if isinstance(it, Choice) else None for it in items]

    @staticmethod
    def _trie(options) -> dict:
        root: dict = {}
        for seq in options:
            node = root
            for t in seq:
                node = node.setdefault(t, {})
            node[None] = True
        return root

    # states: ("item", i, data) where data is a position in a literal, (starts, length) of a span, or a trie
    # node; ("sep", pos) / ("end", pos) inside the separator / end literal; ("done",) after END.

    def _enter(self, i: int) -> list[tuple]:
        """The states at the start of item i (the junction after the last item)."""
        it = self.items[i]
        if it is None:
            return ([("sep", 0)] if self.sep else []) + [("end", 0)]
        if isinstance(it, Lit):
            return [("lit", i, 0)] if it.tokens else self._enter(i + 1)
        if isinstance(it, Span):
            return [("span", i, self.starts, 0)]
        return [("choice", i, self._tries[i])]

    def _closure(self, states: list[tuple]) -> list[tuple]:
        """States plus those reachable without a token: a span or label that may end here."""
        out, todo = [], list(states)
        while todo:
            s = todo.pop()
            out.append(s)
            if s[0] == "span" and s[3] > 0 and any(self.final[p + s[3] - 1] for p in s[2]):
                todo += self._enter(s[1] + 1)
            elif s[0] == "choice" and None in s[2]:
                todo += self._enter(s[1] + 1)
        return out

    def _step(self, s: tuple, t: int) -> list[tuple]:
        kind = s[0]
        if kind == "lit":
            lit = self.items[s[1]].tokens
            if lit[s[2]] != t:
                return []
            return [("lit", s[1], s[2] + 1)] if s[2] + 1 < len(lit) else self._enter(s[1] + 1)
        if kind == "span":
            n, src, item = s[3], self.source, self.items[s[1]]
            if t in item.exclude or n >= item.max_tokens:
                return []
            starts = frozenset(p for p in s[2] if p + n < len(src) and src[p + n] == t and self._viable(item, p, n + 1))
            return [("span", s[1], starts, n + 1)] if starts else []
        if kind == "choice":
            return [("choice", s[1], s[2][t])] if t in s[2] else []
        if kind in ("sep", "end"):
            lit = self.sep if kind == "sep" else self.end
            if lit[s[1]] != t:
                return []
            if s[1] + 1 < len(lit):
                return [(kind, s[1] + 1)]
            return self._enter(0) if kind == "sep" else [("done",)]
        return []

    def _viable(self, item: Span, p: int, m: int) -> bool:
        """Can a span of item's kind that starts at source token p and holds m tokens still end (at a token
        where spans may end, within max_tokens, before an excluded token)? Never step into a dead end."""
        for e in range(p + m - 1, min(len(self.source), p + item.max_tokens)):
            if e > p + m - 1 and self.source[e] in item.exclude:
                return False
            if self.final[e]:
                return True
        return False

    def _next(self, s: tuple) -> set[int]:
        kind = s[0]
        if kind == "lit":
            return {self.items[s[1]].tokens[s[2]]}
        if kind == "span":
            n, src, item = s[3], self.source, self.items[s[1]]
            if n >= item.max_tokens:
                return set()
            return {src[p + n] for p in s[2] if p + n < len(src) and self._viable(item, p, n + 1)} - item.exclude
        if kind == "choice":
            return {t for t in s[2] if t is not None}
        if kind in ("sep", "end"):
            return {(self.sep if kind == "sep" else self.end)[s[1]]}
        return {self.eos}  # done

    def allowed(self, generated):
        generated = list(generated)
        # the engine asks once per step with one more token: continue from the last call's states when its
        # tokens are this call's prefix (beam search reorders rows, so check), else simulate from the start
        last, states = self._memo if hasattr(self, "_memo") else (None, None)
        if last is not None and len(generated) == len(last) + 1 and generated[:-1] == last:
            todo = generated[-1:]
        else:
            states, todo = self._closure(self._enter(0)), generated
        for t in todo:
            states = self._closure([n for s in states for n in self._step(s, t)])
            if not states:
                self._memo = (None, None)
                return [self.eos]  # off the template (cannot happen while the constraint is applied)
        self._memo = (generated, states)
        nxt: set[int] = set()
        repeated = None
        for s in states:
            if s == ("sep", 0):  # a statement just ended: another may follow, unless this one said it before
                repeated = self._repeats(generated) if repeated is None else repeated
                if repeated:
                    continue
            nxt |= self._next(s)
        return sorted(nxt) or [self.eos]

    def _repeats(self, generated: list[int]) -> bool:
        """Does the last statement (after the last separator) repeat an earlier one? Then the output may only
        end: a model that loops on one statement stops after saying it twice instead of running to the length
        limit. Separators never occur inside a statement (spans exclude them; labels and literals hold none)."""
        sep, statements, start, i = list(self.sep), [], 0, 0
        while i + len(sep) <= len(generated):
            if generated[i : i + len(sep)] == sep:
                statements.append(tuple(generated[start:i]))
                start = i = i + len(sep)
            else:
                i += 1
        return tuple(generated[start:]) in statements
