"""Running a task model over documents: sources built as the task's inference builds them, length-sorted
batches through the one generation engine, and records with every entity located in the text.

`Extractor.extract(docs)` is the unit every runner shares (one process, worker processes, Ray actors, the
HTTP server): documents in, one record (a plain dict) per document out, in input order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from biogpt.errors import TaskError
from biogpt.generation import generate
from biogpt.mining import tasks as mtasks
from biogpt.mining.linking import UNLINKED, Linker
from biogpt.mining.readers import Document
from biogpt.tasks import task_for_model
from biogpt.tasks.common import DECODING_LENGTH, check_prompt_tokens
from biogpt.tasks.templates import grammar
from biogpt.text.grounding import Grounder
from biogpt.text.tokenizer import Tokenizer

TASKS = ("bc5cdr", "ddi", "kd-dti", "hoc", "pubmedqa")


@dataclass
class Extractor:
    """A task model ready to extract: `task_name` one of TASKS; `grounded` restricts decoding to the task's
    template, entities to spans of the source and relation words to the task's labels; `linker` gives every
    entity a database identifier (or None), and `linked` (with `grounded`) lets an entity slot hold only a
    span that is a dictionary name of the slot's type (where the text has one)."""

    model: torch.nn.Module
    tok: Tokenizer
    task_name: str
    grounded: bool = False
    num_beams: int = 1
    batch_size: int = 8
    model_info: dict = field(default_factory=dict)  # name, sha256, dtype: written into every record
    linker: Linker | None = None
    linked: bool = False

    def __post_init__(self):
        if self.task_name not in TASKS:
            raise TaskError(f"unknown task {self.task_name!r}; choose one of {', '.join(TASKS)}")
        self.task = task_for_model(self.task_name, self.model.config)
        check_prompt_tokens(self.task, self.model.config)

    @property
    def decoding(self) -> dict:
        linked = {"linked": True} if self.linked else {}  # only when on: records without it keep their bytes
        return {"task": self.task_name, "num_beams": self.num_beams, "grounded": self.grounded, **linked,
                "max_source_tokens": self.task.max_source_tokens, "max_length": self.task.max_length,
                "num_prompt_tokens": self.task.num_prompt_tokens}  # fmt: skip

    def extract(self, docs: list[Document]) -> list[dict]:
        """One record per document, in order; documents that cannot serve the task get a record saying why."""
        prepared = []
        for d in docs:
            src = mtasks.source_text(self.task_name, self.task, d)
            prepared.append(None if src is None else mtasks.encode_prefix(self.task, self.tok, src))
        todo = sorted((i for i, p in enumerate(prepared) if p is not None), key=lambda i: len(prepared[i][0]))
        outputs: dict[int, tuple[list[int], list[float]]] = {}
        max_tgt = self.task.max_length - self.task.max_source_tokens - self.task.num_prompt_tokens
        limit = min(DECODING_LENGTH, self.model.config.max_positions - 1)
        for b in range(0, len(todo), self.batch_size):
            batch = todo[b : b + self.batch_size]
            longest = max(len(prepared[i][0]) for i in batch)
            new = max(1, min(max_tgt, limit - (longest - 1)))
            constraints = None
            if self.grounded:
                is_name = self.linker.is_name if self.linked and self.linker is not None else None
                constraints = [grammar(self.task_name, self.tok, prepared[i][1], is_name) for i in batch]
            out = generate(self.model, [prepared[i][0] for i in batch], max_new_tokens=new, num_beams=self.num_beams,
                           constraints=constraints, output_logprobs=True)  # fmt: skip
            for i, row, lps in zip(batch, out.sequences[:, longest:].tolist(), out.logprobs.tolist()):
                outputs[i] = (row, lps)
        return [self._record(d, outputs.get(i)) for i, d in enumerate(docs)]

    def _record(self, doc: Document, out: tuple[list[int], list[float]] | None) -> dict:
        record = mtasks.base_record(self.task_name, doc)
        entities: list[dict] = []
        relations: list[dict] = []
        record.update(entities=entities, relations=relations, parsed=False, sequence_logprob=0.0, output="")
        if out is None:
            record["skipped"] = "a question is needed (PubMedQA)" if self.task_name == "pubmedqa" else "no text"
        else:
            ids, lps = out
            n = ids.index(2) + 1 if 2 in ids else len(ids)
            record["output"] = self.tok.decode(ids[:n])
            record["sequence_logprob"] = round(sum(lps[:n]), 6)
            parts = mtasks.split_output(self.task_name, self.tok, ids[:n], lps[:n])
            if self.task_name in mtasks.RELATION_TASKS:
                self._relations(doc, parts, entities, relations)
                record["parsed"] = bool(relations)
            elif self.task_name == "hoc":
                record["labels"] = [{"label": x["label"], "score": round(x["logprob"], 6), "known": x["known"]}
                                    for x in mtasks.read_labels(parts)]  # fmt: skip
                record["parsed"] = bool(record["labels"])
            else:
                a = mtasks.read_answer(parts)
                record["answer"] = None if a is None else {"text": a["answer"], "score": round(a["logprob"], 6),
                                                            "known": a["known"]}  # fmt: skip
                record["parsed"] = a is not None
        record["model"] = self.model_info
        record["decoding"] = self.decoding
        return record

    def _relations(self, doc: Document, parts, entities: list[dict], relations: list[dict]) -> None:
        spec = mtasks.RELATION_TASKS[self.task_name]
        grounder = Grounder(doc.text)
        ids: dict[tuple[str, str], str] = {}

        def entity(name: str, kind: str) -> str:
            key = (name.lower(), kind)
            if key not in ids:
                spans = grounder.spans(name)
                ids[key] = f"E{len(ids) + 1}"
                located = [{"start": s, "end": e, "text": doc.text[s:e]} for s, e in spans]
                ln = UNLINKED if self.linker is None else self.linker.link(name, kind, doc.text)
                entities.append({"ref": ids[key], "id": ln.id, "curie": ln.curie, "link": ln.how, "text": name,
                                 "type": kind, "grounded": bool(spans), "spans": located})  # fmt: skip
            return ids[key]

        seen = set()
        for r in mtasks.read_relations(self.task_name, parts):
            h, t = entity(r["head"], spec["head"]), entity(r["tail"], spec["tail"])
            if (h, t, r["type"]) in seen:  # the original scorer counts a repeated relation once
                continue
            seen.add((h, t, r["type"]))
            by_ref = {e["ref"]: e for e in entities}
            grounded = by_ref[h]["grounded"] and by_ref[t]["grounded"]
            relations.append({"id": f"R{len(relations) + 1}", "type": r["type"], "head": h, "tail": t,
                              "head_id": by_ref[h]["id"], "tail_id": by_ref[t]["id"],
                              "score": round(r["logprob"], 6), "grounded": grounded})  # fmt: skip
