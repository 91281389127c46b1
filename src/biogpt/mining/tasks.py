"""What mining needs from each task: the source as the task's inference builds it from any document, and the
structured reading of a generated answer (with the tokens behind each part, for its log-probability). The
template `--grounded` decoding follows is in `biogpt.tasks.templates`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from biogpt.mining.readers import Document
from biogpt.tasks import bc5cdr, ddi, hoc, pubmedqa
from biogpt.tasks.common import encode_source, prompt_ids, strip_prefix
from biogpt.tasks.templates import RELATION_TASKS, token_ids
from biogpt.text.fastbpe import EOS_ID
from biogpt.text.grounding import Grounder
from biogpt.text.tokenizer import Tokenizer


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


@dataclass
class Part:
    """One statement of the output (a relation, a label, an answer): its text and log-probability."""

    text: str
    logprob: float


def split_output(task_name: str, tok: Tokenizer, new_ids: list[int], logprobs: list[float]) -> list[Part]:
    """The generated tokens cut at the task's separator (`;` between relations, `|` between HoC labels), each
    part decoded on its own with the summed log-probability of its tokens (separators excluded)."""
    sep = set(token_ids(tok, "|" if task_name == "hoc" else ";"))
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


def output_stats(task_name: str, outputs: list[str], sources: list[str]) -> dict:
    """How many outputs parse (at least one relation, label or answer), and for relation tasks how many of the
    entities they name are found in their source: `biogpt eval` reports these beside the task metric."""
    parsed = named = grounded = 0
    for out, src in zip(outputs, sources):
        text = strip_prefix(out)  # outputs that echo the source and prompt (as the original's did): the answer
        parts = [Part(p, 0.0) for p in text.split("|" if task_name == "hoc" else ";")]
        if task_name in RELATION_TASKS:
            rels = read_relations(task_name, parts)
            parsed += bool(rels)
            g = Grounder(src)
            for r in rels:
                for name in (r["head"], r["tail"]):
                    named += 1
                    grounded += bool(g.spans(name))
        elif task_name == "hoc":
            parsed += bool(read_labels(parts))
        else:
            parsed += read_answer([Part(text, 0.0)]) is not None
    stats = {"parse_rate": parsed / len(outputs) if outputs else 0.0}
    if task_name in RELATION_TASKS:
        stats["grounding_rate"] = grounded / named if named else 0.0
        stats["entities_named"] = named
    return stats


def base_record(task_name: str, doc: Document) -> dict:
    """What every output record starts with: the document (id, text, passages, question, the input's own
    annotations and relations) and the task; each extractor adds its results."""
    record = {
        "id": doc.id,
        "task": task_name,
        "text": doc.text,
        "passages": [{"type": p.type, "offset": p.offset, "text": p.text} for p in doc.passages],
    }
    if doc.question is not None:
        record["question"] = doc.question
    if doc.annotations or doc.relations:
        record["input_annotations"], record["input_relations"] = doc.annotations, doc.relations
    return record
