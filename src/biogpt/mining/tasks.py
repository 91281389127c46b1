"""What mining needs from each task: the source as the task's inference builds it from any document, the
template that `--grounded` decoding follows, and the structured reading of a generated answer (with the
tokens behind each part, for its log-probability)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from biogpt.generation.constraints import Choice, Lit, Span, Template
from biogpt.mining.readers import Document
from biogpt.tasks import bc5cdr, ddi, hoc, kd_dti, pubmedqa
from biogpt.tasks.common import encode_source, prompt_ids, strip_prefix
from biogpt.text.fastbpe import EOS_ID
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


def source_text(task_name: str, task, doc: Document) -> str | None:
    """The model's input text for `doc`, built as the task's own inference builds it; None when the document
    cannot serve the task (PubMedQA without a question, or no text)."""
    title, abstract, text = doc.title, doc.abstract, doc.text
    if not text.strip():
        return None
    if task_name == "bc5cdr":
        return (bc5cdr.document_text(title, abstract) if title and abstract else text).lower()
    if task_name == "ddi":
        return task.source({"abstract": text})
    if task_name == "kd-dti":
        return (bc5cdr.document_text(title, abstract) if title and abstract else text).lower()
    if task_name == "hoc":
        src = text.strip()
        return src if src.endswith(".") else src + "."
    if doc.question is None or not doc.question.strip():
        return None
    ctx = " ".join(text.split())  # the reasoning-required input: question and contexts, no long answer
    src = f"question: {doc.question.strip()} context: {ctx} "
    return src.lower() if task.setting == "reasoning-free" and task.lowercase else src


def _ids(tok: Tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tok.encode(text, add_eos_prefix=False))


def grammar(task_name: str, tok: Tokenizer, source_ids: list[int]) -> Template:
    """The output template of the task, with entity slots restricted to spans of the source ids."""
    if task_name in RELATION_TASKS:
        spec = RELATION_TASKS[task_name]
        sep = _ids(tok, spec["sep"])
        # the original parser splits the output at the separator, and its greedy groups split a statement at the
        # last " and " (and, with a label, at the last " is "): the second entity may hold neither word
        words = {spec["middle"]} | ({spec["after"]} if spec["labels"] else set())
        second = frozenset(sep) | frozenset(t for w in words for t in _ids(tok, w))
        items = [Lit(_ids(tok, spec["before"])), Span(frozenset(sep)), Lit(_ids(tok, spec["middle"])), Span(second),
                 Lit(_ids(tok, spec["after"]))]  # fmt: skip
        if spec["labels"]:
            items.append(Choice(tuple(_ids(tok, label) for label in spec["labels"])))
    elif task_name == "hoc":
        items = [Lit(_ids(tok, "the type of this document is")), Choice(tuple(_ids(tok, x) for x in hoc.LABELS))]
        sep = _ids(tok, "|")
    else:
        answers = Choice(tuple(_ids(tok, x) for x in pubmedqa.LABELS))
        items, sep = [Lit(_ids(tok, "the answer to the question given the context is")), answers], ()
    pieces = [tok.pieces[i] for i in source_ids]
    whole = [not p.endswith("@@") for p in pieces]  # the token ends a word
    alnum = [any(c.isalnum() for c in p.replace("@@", "")) for p in pieces]
    can_start = [a and (i == 0 or whole[i - 1]) for i, a in enumerate(alnum)]
    can_end = [a and w for a, w in zip(alnum, whole)]
    return Template(items, sep, _ids(tok, "."), source_ids, can_start, can_end, EOS_ID)


@dataclass
class Part:
    """One statement of the output (a relation, a label, an answer): its text and log-probability."""

    text: str
    logprob: float


def split_output(task_name: str, tok: Tokenizer, new_ids: list[int], logprobs: list[float]) -> list[Part]:
    """The generated tokens cut at the task's separator (`;` between relations, `|` between HoC labels), each
    part decoded on its own with the summed log-probability of its tokens (separators excluded)."""
    sep = set(_ids(tok, "|" if task_name == "hoc" else ";"))
    parts, cur, cur_lp = [], [], 0.0
    for t, lp in zip(new_ids, logprobs):
        if t == EOS_ID:
            break
        if t in sep and task_name != "pubmedqa":
            parts.append(Part(tok.decode(cur), cur_lp))
            cur, cur_lp = [], 0.0
            continue
        cur.append(t)
        cur_lp += lp
    parts.append(Part(tok.decode(cur), cur_lp))
    return [p for p in parts if p.text.strip()]


def read_relations(task_name: str, parts: list[Part]) -> list[dict]:
    """(head, tail, type, logprob) of every part that matches the task's relation template, as the original
    postprocess reads it (greedy groups: a name containing " and " splits at its last " and ")."""
    spec = RELATION_TASKS[task_name]
    out = []
    for k, part in enumerate(parts):
        text = part.text.strip()
        if k == len(parts) - 1:
            text = text[:-1].rstrip() if text.endswith(".") else text
        text = strip_prefix(text, bc5cdr.PREFIXES if task_name == "bc5cdr" else ddi.PREFIXES)
        m = spec["pattern"].match(text)
        if not m:
            continue
        head, tail = m.group(1).strip(), m.group(2).strip()
        rel = spec["relation"] or m.group(3).strip()
        if head and tail and rel:
            out.append({"head": head, "tail": tail, "type": rel, "logprob": part.logprob})
    return out


_HOC = re.compile(r"the type of this document is(.*)")
_QA = pubmedqa._ANSWER


def read_labels(parts: list[Part]) -> list[dict]:
    """HoC labels with the log-probability of the tokens naming each (the first part carries the template)."""
    out = []
    for k, part in enumerate(parts):
        text = part.text.strip()
        if k == 0:
            m = _HOC.search(text)
            if not m:
                return []
            text = m.group(1)
        text = text.strip()
        text = text[:-1].strip() if text.endswith(".") else text
        if text:
            out.append({"label": text, "logprob": part.logprob, "known": text in hoc.LABELS})
    return out


def read_answer(parts: list[Part]) -> dict | None:
    if not parts:
        return None
    text = parts[0].text.strip()
    text = text[:-1].strip() if text.endswith(".") else text
    m = _QA.search(text)
    if not m or not m.group(1).strip():
        return None
    return {"answer": m.group(1).strip(), "logprob": parts[0].logprob, "known": m.group(1).strip() in pubmedqa.LABELS}


def encode_prefix(task, tok: Tokenizer, source: str) -> tuple[list[int], list[int]]:
    """(the forced prefix `</s> source learned1..K`, the source ids alone) as the task's inference feeds them."""
    src = encode_source(tok, source, task.max_source_tokens)
    return [EOS_ID] + src + prompt_ids(task, tok), src
