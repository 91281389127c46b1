"""Constraints on what a row may generate next: a forced prefix, one of a set of strings (a token trie), or a
span of a source text. The engine asks each row's constraint for the allowed ids at every step."""

from __future__ import annotations

from collections.abc import Sequence

from biogpt.errors import GenerationError


class Constraint:
    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """Token ids allowed next, or None for no restriction."""
        raise NotImplementedError


class ForcedPrefix(Constraint):
    """Force these tokens first (fairseq's prefix_tokens), then `then` (or nothing)."""

    def __init__(self, tokens: Sequence[int], then: Constraint | None = None):
        self.tokens, self.then = list(tokens), then

    def allowed(self, generated):
        n = len(self.tokens)
        if len(generated) < n:
            return [self.tokens[len(generated)]]
        return self.then.allowed(generated[n:]) if self.then is not None else None


class AllowedSequences(Constraint):
    """The output must be one of these token sequences, then `</s>` (e.g. yes / no / maybe)."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int = 2):
        if not sequences or any(len(s) == 0 for s in sequences):
            raise GenerationError("AllowedSequences needs non-empty sequences")
        self.trie: dict = {}
        for seq in sequences:
            node = self.trie
            for t in seq:
                node = node.setdefault(t, {})
            node[None] = True  # a complete sequence ends here
        self.eos = eos_token_id

    def allowed(self, generated):
        node = self.trie
        for t in generated:
            if t not in node:
                return [self.eos]
            node = node[t]
        nxt = [t for t in node if t is not None]
        return nxt + [self.eos] if None in node else nxt


class SourceSpans(Constraint):
    """The output must be a contiguous span of `source` (at least one token), then `</s>`."""

    def __init__(self, source: Sequence[int], eos_token_id: int = 2):
        self.source, self.eos = list(source), eos_token_id

    def allowed(self, generated):
        n, src = len(generated), self.source
        if n == 0:
            return sorted(set(src))
        nxt = {src[i + n] for i in range(len(src) - n) if src[i : i + n] == list(generated)}
        return sorted(nxt) + [self.eos]
