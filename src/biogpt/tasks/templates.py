"""The output templates of the five tasks, as token-level constraints: `--grounded` decoding (in `biogpt eval`
and `biogpt extract`) keeps every output inside its task's template, every entity a span of the source, and
every relation word, label or answer one of the task's own."""

from __future__ import annotations

from biogpt.generation.constraints import Choice, Lit, Span, Template
from biogpt.tasks import bc5cdr, ddi, hoc, kd_dti, pubmedqa
from biogpt.text.fastbpe import EOS_ID
from biogpt.text.moses import unescape
from biogpt.text.tokenizer import Tokenizer

# the relation each RE task states, its template words and the roles of its two entities
RELATION_TASKS = {
    "bc5cdr": dict(before="the relation between", middle="and", after="exists", labels=None, sep=";",
                   head="Chemical", tail="Disease", relation="CID", pattern=bc5cdr._RELATION),
    "ddi": dict(before="the interaction between", middle="and", after="is", labels=ddi.LABELS, sep=";",
                head="Drug", tail="Drug", relation=None, pattern=ddi._INTERACTION),
    "kd-dti": dict(before="the interaction between", middle="and", after="is", labels=kd_dti.LABELS, sep=";",
                   head="Chemical", tail="Gene", relation=None, pattern=ddi._INTERACTION),
}  # fmt: skip


def token_ids(tok: Tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tok.encode(text, add_eos_prefix=False))


def grammar(task_name: str, tok: Tokenizer, source_ids: list[int]) -> Template:
    """The output template of the task, with entity slots restricted to spans of the source ids."""
    if task_name in RELATION_TASKS:
        spec = RELATION_TASKS[task_name]
        sep = token_ids(tok, spec["sep"])
        # the original parser splits the output at the separator, and its greedy groups split a statement at the
        # last " and " (and, with a label, at the last " is "): the second entity may hold neither word
        words = {spec["middle"]} | ({spec["after"]} if spec["labels"] else set())
        # and it drops everything before a last "in conclusion ," / "we can conclude that" / "we have that":
        # no entity may hold those words either
        either = frozenset(sep) | frozenset(t for w in ("conclusion", "conclude", "have") for t in token_ids(tok, w))
        second = either | frozenset(t for w in words for t in token_ids(tok, w))
        items = [Lit(token_ids(tok, spec["before"])), Span(either), Lit(token_ids(tok, spec["middle"])),
                 Span(second), Lit(token_ids(tok, spec["after"]))]  # fmt: skip
        if spec["labels"]:
            items.append(Choice(tuple(token_ids(tok, label) for label in spec["labels"])))
    elif task_name == "hoc":
        labels = Choice(tuple(token_ids(tok, x) for x in hoc.LABELS))
        items = [Lit(token_ids(tok, "the type of this document is")), labels]
        sep = token_ids(tok, "|")
    else:
        answers = Choice(tuple(token_ids(tok, x) for x in pubmedqa.LABELS))
        items, sep = [Lit(token_ids(tok, "the answer to the question given the context is")), answers], ()
    pieces = [tok.pieces[i] for i in source_ids]
    whole = [not p.endswith("@@") for p in pieces]  # the token ends a word
    # a letter or digit of the text itself: Moses escapes ("&#91;" for "[", "&amp;") hold digits and letters
    # that are not in the text, and a span ending in "[" glues to the next word when detokenized ("[and");
    # a span starts on a letter or digit, not on "'s", which the detokenizer glues to the word before it
    text = [unescape(p.replace("@@", "")) for p in pieces]
    alnum = [any(c.isalnum() for c in t) for t in text]
    can_start = [t[:1].isalnum() and (i == 0 or whole[i - 1]) for i, t in enumerate(text)]
    can_end = [a and w for a, w in zip(alnum, whole)]
    return Template(items, sep, token_ids(tok, "."), source_ids, can_start, can_end, EOS_ID)


