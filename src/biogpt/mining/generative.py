"""Mining with a GPT-2 family model (BioMedLM): PubMedQA answers in the generative format.

BioMedLM has no learned prompt tokens and no task templates, so `Extractor` (extractor.py) does not apply; this
is the same unit for it: documents in, one record per document out, in input order, with the fields a PubMedQA
record of `Extractor` has (`answer` = {text, score, known}, `sequence_logprob`, `output`, ...), so the writers and
every runner take it unchanged. The prompt is `question: Q context: TEXT answer:` (tasks/pubmedqa_gpt2.py) and
the answer is decoded greedily under the yes / no / maybe trie, so every answer is one of the three labels; its
score is the model's own log-probability of the label's tokens and <|endoftext|> (before the constraint).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from biogpt.generation import generate
from biogpt.mining.readers import Document
from biogpt.mining.tasks import base_record
from biogpt.models.gpt2 import GPT2
from biogpt.tasks import pubmedqa_gpt2 as qa
from biogpt.tasks.common import TaskError
from biogpt.text.bytelevel import ByteLevelTokenizer

TASKS = ("pubmedqa",)


@dataclass
class GenerativeExtractor:
    """A GPT-2 family model ready to answer PubMedQA questions; `task_name` must be "pubmedqa"."""

    model: GPT2
    tok: ByteLevelTokenizer
    task_name: str = "pubmedqa"
    batch_size: int = 8
    model_info: dict = field(default_factory=dict)  # name, sha256, dtype: written into every record

    def __post_init__(self):
        if self.task_name not in TASKS:
            raise TaskError(
                f"a GPT-2 family model (BioMedLM) has a format for pubmedqa only, not {self.task_name}: use "
                "--task pubmedqa, or a BioGPT checkpoint fine-tuned for that task"
            )
        self.constraint = qa.answer_constraint(self.tok)
        self.max_new_tokens = max(qa.ANSWER_ROOM, max(len(s) for s in qa.label_ids(self.tok)) + 1)

    @property
    def decoding(self) -> dict:
        return {"task": self.task_name, "format": "generative", "num_beams": 1, "constrained": True,
                "max_prompt_tokens": self.model.config.max_positions - self.max_new_tokens}  # fmt: skip

    @torch.inference_mode()
    def extract(self, docs: list[Document]) -> list[dict]:
        """One record per document, in order; documents without a question or text get a record saying why."""
        room = self.model.config.max_positions - self.max_new_tokens
        prompts: list[list[int] | None] = []
        for d in docs:
            usable = d.text.strip() and d.question is not None and d.question.strip()
            prompts.append(qa.prompt_ids(self.tok, qa.source(d.question, d.text), room) if usable else None)
        todo = sorted((i for i, p in enumerate(prompts) if p is not None), key=lambda i: len(prompts[i]))
        eos = self.tok.eos_token_id
        outputs: dict[int, tuple[list[int], list[float]]] = {}
        for b in range(0, len(todo), self.batch_size):
            batch = todo[b : b + self.batch_size]
            longest = max(len(prompts[i]) for i in batch)
            # output_logprobs: the model's own log-probabilities, not those of the constrained choice
            out = generate(self.model, [prompts[i] for i in batch], max_new_tokens=self.max_new_tokens,
                           constraints=self.constraint, eos_token_id=eos, pad_token_id=eos,
                           output_logprobs=True)  # fmt: skip
            for i, row, lps in zip(batch, out.sequences[:, longest:].tolist(), out.logprobs.tolist()):
                n = row.index(eos) + 1 if eos in row else len(row)  # the label's tokens, <|endoftext|>
                outputs[i] = (row[:n], lps[:n])
        return [self._record(d, outputs.get(i)) for i, d in enumerate(docs)]

    def _record(self, doc: Document, out: tuple[list[int], list[float]] | None) -> dict:
        record = base_record(self.task_name, doc)
        record.update(entities=[], relations=[], parsed=False, sequence_logprob=0.0, output="")
        if out is None:
            record["skipped"] = "a question is needed (PubMedQA)" if doc.text.strip() else "no text"
        else:
            ids, lps = out
            text = self.tok.decode(ids).strip()
            score = round(sum(lps), 6)
            record.update(output=text, sequence_logprob=score, parsed=text in qa.LABELS)
            record["answer"] = {"text": text, "score": score, "known": text in qa.LABELS}
        record["model"] = self.model_info
        record["decoding"] = self.decoding
        return record
