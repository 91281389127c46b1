"""The output templates of the five tasks, as token-level constraints: `--grounded` decoding (in `biogpt eval`
and `biogpt extract`) keeps every output inside its task's template, every entity a span of the source, and
every relation word, label or answer one of the task's own."""

from __future__ import annotations

from collections.abc import Callable

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


def grammar(task_name: str, tok: Tokenizer, source_ids: list[int],
            is_name: Callable[[str, str], bool] | None = None) -> Template:  # fmt: skip
    """The output template of the task, with entity slots restricted to spans of the source ids; with
    `is_name(text, type)` (a dictionary), a relation task's entity slot holds only a span that is a name of the
    slot's type, where the source has one (else any span, as without a dictionary)."""
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
    if is_name is not None and task_name in RELATION_TASKS:
        texts: dict[tuple[int, ...], str] = {}  # span -> decoded text, shared by the two slots
        for k, kind in ((1, RELATION_TASKS[task_name]["head"]), (3, RELATION_TASKS[task_name]["tail"])):
            names = name_spans(tok, source_ids, can_start, can_end, items[k], lambda t, kind=kind: is_name(t, kind),
                               texts=texts)  # fmt: skip
            if names:
                items[k] = Choice(names)
    return Template(items, sep, token_ids(tok, "."), source_ids, can_start, can_end, EOS_ID)


def name_spans(tok: Tokenizer, source_ids: list[int], can_start: list[bool], can_end: list[bool], span: Span,
               is_name: Callable[[str], bool], max_words: int = 8,
               texts: dict | None = None) -> tuple[tuple[int, ...], ...]:  # fmt: skip
    """Every distinct span of the source a Span slot allows (start and end flags, no excluded token, at most
    `max_words` words and `span.max_tokens` tokens) whose decoded text `is_name` accepts, in source order."""
    out: dict[tuple[int, ...], None] = {}
    texts = {} if texts is None else texts  # decoding is the cost: each span once
    n = len(source_ids)
    for i in range(n):
        if not can_start[i]:
            continue
        words = 0
        for j in range(i, min(n, i + span.max_tokens)):
            if source_ids[j] in span.exclude:
                break
            if not tok.pieces[source_ids[j]].endswith("@@"):
                words += 1
            if can_end[j]:
                seq = tuple(source_ids[i : j + 1])
                if seq not in texts:
                    texts[seq] = tok.decode(list(seq))
                if seq not in out and is_name(texts[seq]):
                    out[seq] = None
            if words >= max_words:
                break
    return tuple(out)
