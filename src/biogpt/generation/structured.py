"""Structured outputs as token constraints: one of a list of strings (a token trie), or text matching a regular
expression (compiled by generation/regex.py to a DFA over characters).

A token is allowed when the text decoded with it (BioGPT's detokenizer, exactly) can still be extended to a
match; `</s>` when the text already matches. The candidates are the tokens whose spelling, read from the state
after the text so far (or after one more space), keeps the automaton alive.

Every step costs a bounded amount of work, whatever the pattern: the DFA is built when the request arrives
(capped: `regex.LIMITS`), and what each token's spelling does from a DFA state is computed once per state, for
the whole vocabulary at once (a table walk over a [vocab, letters] array). What the detokenizer makes of a token
depends on the text before it only through a few properties of the token (`TokenIndex`): one decode of a
representative token per group gives the text every token of the group is appended to, so a step decodes a
handful of times, not once per candidate.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from biogpt.errors import GenerationError
from biogpt.generation.constraints import AllowedSequences, Constraint
from biogpt.generation.regex import DFA, NFA
from biogpt.text import moses
from biogpt.text.tokenizer import Tokenizer

MAX_MEMO = 64  # DFA states whose token masks a compiled pattern keeps
CACHE = 16  # compiled patterns a vocabulary keeps (clients repeat their patterns)
WINDOW = 4  # tokens a step decodes at least, behind the fixed head (RegexConstraint._cut)
# characters the detokenizer writes that no token spells: spaces, the "-" of " @-@ ", unescaped entities
DETOK_CHARS = " -" + "".join(c for _, c in moses._UNESCAPE)
QUOTES = "'\"„“”`"
AFTER_A_WORD = (" ", "n'")  # how the next word may start: after a space, or a contraction's `n't`


class TokenIndex:
    """What the regex constraints need of a vocabulary, built once per tokenizer.

    spell[i]: token i's spelling (without `@@`; None for the special and prompt tokens, which have no text);
    chars [V, L]: each spelling's characters as indices into `alphabet` (padded with len(alphabet));
    lengths [V]; groups: {key: (members mask [V], a representative id)}; brute: ids decoded one by one.

    Tokens in one group are treated alike by the detokenizer whatever precedes them: their spelling has no
    entity or `@-@` character (`& ; @`), quote or space, and they agree on the properties Moses' detokenizer
    tests on a word: CJK first letter, all currency/opening brackets, all closing punctuation, and whether `'`
    before them starts a contraction. So the text decoded with any of them is the same prefix plus its
    spelling; the few other tokens (`&apos;`, `@-@`, ...) are decoded one by one.
    """

    def __init__(self, tok: Tokenizer):
        pieces = tok.vocab.pieces
        self.V = len(pieces)
        self.spell: list[str | None] = [None] * 4 + [p[:-2] if p.endswith("@@") else p for p in pieces[4:]]
        self.alphabet = sorted(set("".join(s for s in self.spell if s)) | set(DETOK_CHARS))
        where = {c: i for i, c in enumerate(self.alphabet)}
        L = max(len(s) for s in self.spell if s is not None)
        self.chars = np.full((self.V, L), len(self.alphabet), dtype=np.int32)  # [V, L]
        self.lengths = np.zeros(self.V, dtype=np.int32)  # [V]
        self.valid = np.zeros(self.V, dtype=bool)  # [V]: has a spelling
        # for the fixed head: does the piece end a word, is it ASCII letters and digits
        self.word_end = [not p.endswith("@@") for p in pieces]
        self.plain = [s is not None and s.isascii() and s.isalnum() for s in self.spell]
        groups: dict[tuple, list[int]] = {}
        self.brute: list[int] = []
        for i, s in enumerate(self.spell):
            if s is None:
                continue
            self.valid[i] = True
            self.lengths[i] = len(s)
            self.chars[i, : len(s)] = [where[c] for c in s]
            key = self.group_key(s)
            if key is None:
                self.brute.append(i)
            else:
                groups.setdefault(key, []).append(i)
        # longest first: column j of the DFA walk only touches the first by_length[j] rows of `order`
        self.order = np.argsort(-self.lengths, kind="stable")  # [V]
        self.by_length = [int((self.lengths > j).sum()) for j in range(L)]
        self.groups: dict[tuple, tuple[np.ndarray, int]] = {}
        self.compiled: OrderedDict[str, CompiledRegex] = OrderedDict()  # the last CACHE patterns
        self.lock = threading.Lock()
        for key, ids in groups.items():
            mask = np.zeros(self.V, dtype=bool)
            mask[ids] = True
            self.groups[key] = (mask, ids[0])

    @staticmethod
    def group_key(s: str) -> tuple | None:
        """The detokenizer's view of a spelling (see the class docstring); None: decode this token alone."""
        if not s or any(c in "&;@" or c in QUOTES or c.isspace() for c in s):
            return None
        return (moses._is_cjk(s[0]), bool(moses._IS_CURRENCY.search(s)), bool(moses._IS_PUNCT.search(s)),
                bool(moses._IS_CONTRACTION.search("'" + s)))  # fmt: skip


class CompiledRegex:
    """A pattern compiled against one vocabulary: its DFA, each token's characters as DFA classes, and the
    token masks of the DFA states met so far (shared by the requests that use the pattern)."""

    def __init__(self, pattern: str, index: TokenIndex):
        self.pattern, self.index = pattern, index
        self.dfa = DFA(NFA(pattern), index.alphabet)
        to_class = np.array([self.dfa.char_class[c] for c in index.alphabet] + [self.dfa.pad], dtype=np.int32)
        self.token_classes = np.ascontiguousarray(to_class[index.chars[index.order]].T)  # [L, V], V in index.order
        self.masks: dict[int, np.ndarray] = {}
        self.word_end = np.asarray(index.word_end, dtype=bool)[index.order]  # [V], in index.order
        self.viable = self._viable_after_a_word()

    def _viable_after_a_word(self) -> np.ndarray:
        """[states] bool: the text may stop here, or go on after a word-ending token. The detokenizer puts a
        space before the next word, except before what it attaches to the left (punctuation, `@-@` joins,
        contractions, CJK): a token that ends a word in a state where neither a space nor any such character
        nor the end can follow leads only to a dead end (`[a-z]*b` after `pty</w>`), so it is not allowed."""
        dfa = self.dfa
        states = np.arange(len(dfa.accepting), dtype=np.int32)
        viable = np.array(dfa.accepting, dtype=bool)
        for cont in AFTER_A_WORD + tuple(c for c in self.index.alphabet if not (c.isascii() and c.isalnum())):
            if any(ch not in dfa.char_class for ch in cont):  # a character no token spells: never next
                continue
            st = states
            for ch in cont:
                st = dfa.table[st * dfa.width + dfa.char_class[ch]]
            viable |= st != 0
        viable[0] = False
        return viable

    def alive(self, state: int) -> np.ndarray:
        """[V] bool: tokens whose spelling, read from `state`, keeps the DFA alive (empty spellings always)."""
        mask = self.masks.get(state)
        if mask is None:
            if len(self.masks) >= MAX_MEMO:
                self.masks.clear()
            ix, table, width = self.index, self.dfa.table, self.dfa.width
            s = np.full(ix.V, state, dtype=np.int32)  # [V], in index.order
            for j, n in enumerate(ix.by_length):
                s[:n] = table[s[:n] * width + self.token_classes[j, :n]]
            mask = np.empty(ix.V, dtype=bool)
            mask[ix.order] = (s != 0) & (~self.word_end | self.viable[s])
            mask = self.masks[state] = (mask | (ix.lengths == 0)) & ix.valid
        return mask


def compile_regex(pattern: str, index: TokenIndex) -> CompiledRegex:
    """Compile a request's `regex` (raises RegexError naming the limit or the unsupported construct). Runs in a
    worker thread: it is bounded (LIMITS) but not instant. The last CACHE patterns are kept."""
    with index.lock:
        regex = index.compiled.pop(pattern, None)
        if regex is not None:
            index.compiled[pattern] = regex
            return regex
    regex = CompiledRegex(pattern, index)
    with index.lock:
        index.compiled[pattern] = regex
        while len(index.compiled) > CACHE:
            index.compiled.popitem(last=False)
    return regex


class RegexConstraint(Constraint):
    """The decoded output must match `pattern` as a whole, then `</s>`."""

    def __init__(self, regex: CompiledRegex, tok: Tokenizer, eos_token_id: int = 2):
        self.regex, self.tok, self.eos = regex, tok, eos_token_id
        self.dfa, self.index = regex.dfa, regex.index
        self._last: tuple[str, int] = ("", 1)  # (text, its DFA state) of the last step: the next one extends it
        self._head: tuple[int, list[int], str] = (0, [], "")  # (k, generated[:k], its text): see _cut

    def state_of(self, text: str) -> int:
        """DFA state after `text`, continuing from the last text when this one extends it."""
        last, st = self._last
        st = self.dfa.run(st, text[len(last) :]) if text.startswith(last) else self.dfa.run(1, text)
        self._last = (text, st)
        return st

    def _cut(self, generated: list[int]) -> None:
        """Fix a head generated[:k] whose text no later token changes, so that a step decodes only the tokens
        after it: decode(G + x) == decode(G[:k]) + " " + decode(G[k:] + x) for every x, when the words on both
        sides of the cut are ASCII letters and digits (Moses' detokenizer puts one space between two such words,
        and its `@-@` joins and entities never span them), the first word after it ends before the last token
        (so no x extends it), and no word before it is a quote (the detokenizer's only state that carries
        across words: how many of each quote it has seen)."""
        n, (k, ids, _) = len(generated), self._head
        if k and generated[:k] != ids:
            k, self._head = 0, (0, [], "")
        if n - k <= 3 * WINDOW:
            return
        ix, V = self.index, self.index.V
        plain = [0 <= t < V and ix.plain[t] for t in generated]
        end = [0 <= t < V and ix.word_end[t] for t in generated]
        for cut in range(n - WINDOW, k, -1):
            j = cut - 1  # the word before the cut: plain pieces back to the previous word's end
            if not (end[j] and plain[j]):
                continue
            while j >= 0 and plain[j] and (j == cut - 1 or not end[j]):
                j -= 1
            if j >= 0 and not end[j]:
                continue
            j = cut  # the word after the cut: plain pieces up to a word end before the last token
            while j < n - 1 and plain[j] and not end[j]:
                j += 1
            if j < n - 1 and plain[j] and end[j]:
                if self._quote_free(generated[:cut]):
                    self._head = (cut, generated[:cut], self.tok.decode(generated[:cut]))
                return

    def _quote_free(self, ids: list[int]) -> bool:
        """No word of these tokens, as the detokenizer splits them (after its `@-@` joins and unescaping), is
        an opening or closing quote."""
        pieces = self.tok.pieces
        joined = "".join(p[:-2] if p.endswith("@@") else p + " " for p in (pieces[i] for i in ids if i >= 4))
        text = moses.unescape((" " + " ".join(joined.split()) + " ").replace(" @-@ ", "-"))
        return not any(moses._IS_OPEN_QUOTE.search(w) for w in text.split())

    def _decode(self, generated: list[int], extra: list[int]) -> str:
        """tok.decode(generated + extra), decoding only the tokens after the head."""
        k, _, head = self._head
        return head + " " + self.tok.decode(generated[k:] + extra) if k else self.tok.decode(generated + extra)

    def allowed(self, generated):
        generated = list(generated)
        self._cut(generated)
        text = self._decode(generated, [])
        state = self.state_of(text)
        # the detokenizer puts a space before a new word (and may drop it, before punctuation): try both
        cands = self.regex.alive(state)
        if generated:
            spaced = self.dfa.run(state, " ")
            if spaced:
                cands = cands | self.regex.alive(spaced)
        ok = np.zeros(self.index.V, dtype=bool)
        for mask, probe in self.index.groups.values():
            mine = cands & mask
            if not mine.any():
                continue
            # every token of the group decodes to the same text plus its own spelling
            spelling = self.index.spell[probe]
            full = self._decode(generated, [probe])
            if not full.endswith(spelling):  # never seen; should the detokenizer change, stay exact regardless
                ok |= self._one_by_one(generated, text, state, np.flatnonzero(mine))
                continue
            head = full[: -len(spelling)]
            st = self.dfa.run(state, head[len(text) :]) if head.startswith(text) else self.dfa.run(1, head)
            ok |= mine & self.regex.alive(st)
        ok |= self._one_by_one(generated, text, state, [t for t in self.index.brute if cands[t]])
        out = np.flatnonzero(ok).tolist()
        if self.dfa.accepting[state]:
            out.append(self.eos)
        return out or [self.eos]

    def _one_by_one(self, generated: list[int], text: str, state: int, ids) -> np.ndarray:
        """[V] bool: which of `ids` keep the DFA alive, each decoded with the text (the reference rule)."""
        ok = np.zeros(self.index.V, dtype=bool)
        for t in ids:
            full = self._decode(generated, [int(t)])
            st = self.dfa.run(state, full[len(text) :]) if full.startswith(text) else self.dfa.run(1, full)
            ok[t] = st != 0 and (not self.index.word_end[t] or self.regex.viable[st])
        return ok


def choice_constraint(seqs: list[list[int]], eos_token_id: int = 2) -> AllowedSequences:
    """One of the choices (their token ids, without special tokens), then the end of the sequence."""
    if not seqs:
        raise GenerationError("structured_outputs.choice needs at least one choice")
    if any(not s for s in seqs):
        raise GenerationError("structured_outputs.choice: every choice needs some text")
    return AllowedSequences(seqs, eos_token_id)
