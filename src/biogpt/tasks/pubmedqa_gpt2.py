"""PubMedQA (PQA-L) in a generative format for a GPT-2 family model (BioMedLM): accuracy over yes / no / maybe.

The prompt is `question: Q context: C answer:` (ori_pqal.json, contexts joined, whitespace collapsed; in the
reasoning-free setting the long answer ends the context), and the
answer is decoded greedily under a trie over the three labels as the model writes them after "answer:"
(" yes", " no", " maybe", then <|endoftext|>), so every output is a label. Contexts too long for the model are cut
from their end, so the question and the closing "answer:" always stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from biogpt.generation import AllowedSequences, generate
from biogpt.models.gpt2 import GPT2
from biogpt.tasks.common import Example, TaskError, read_json
from biogpt.tasks.pubmedqa import PubMedQA
from biogpt.text.bytelevel import ByteLevelTokenizer

LABELS = ("yes", "no", "maybe")
ANSWER = " answer:"
ANSWER_ROOM = 8  # positions kept free after the prompt: the longest label's tokens + <|endoftext|> fit


SETTINGS = ("reasoning-required", "reasoning-free")


def examples(data_dir: str | Path, split: str = "test", setting: str = "reasoning-required") -> list[Example]:
    """The split's questions (test: the 500 of test_ground_truth.json; train/valid: fold 0), as prompts.
    "reasoning-required" (BioMedLM's): the contexts alone; "reasoning-free": the long answer (the abstract's
    conclusion) appended to the contexts, as PubMedQA's reasoning-free setting gives it."""
    if setting not in SETTINGS:
        raise TaskError(f"PubMedQA setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    root = Path(data_dir) / "PubMedQA"
    items = read_json(root / "ori_pqal.json")
    out = []
    for pid in PubMedQA._split_ids(root, items, split):
        it = items[pid]
        context = " ".join(it["CONTEXTS"]) + (" " + it["LONG_ANSWER"] if setting == "reasoning-free" else "")
        src = source(it["QUESTION"], context)
        out.append(Example(pid, src, f"{ANSWER} {it['final_decision']}", it["final_decision"]))
    return out


def source(question: str, context: str) -> str:
    """The prompt's text before " answer:": `question: Q context: C`, whitespace runs collapsed to one space."""
    return f"question: {' '.join(question.split())} context: {' '.join(context.split())}"


def label_ids(tok: ByteLevelTokenizer) -> list[list[int]]:
    """Each label's tokens as the model writes it after "answer:" (with its leading space)."""
    return [tok.encode(" " + label) for label in LABELS]


def answer_constraint(tok: ByteLevelTokenizer) -> AllowedSequences:
    """The trie of the three labels' tokens, each then <|endoftext|>."""
    return AllowedSequences(label_ids(tok), eos_token_id=tok.eos_token_id)


def prompt_ids(tok: ByteLevelTokenizer, source: str, max_tokens: int) -> list[int]:
    """The prompt's ids, the source's end cut so that it and " answer:" fit in `max_tokens`."""
    answer = tok.encode(ANSWER)
    ids = tok.encode(source)
    room = max_tokens - len(answer)
    if room < 1:
        raise TaskError(f"PubMedQA prompts need more than {max_tokens} tokens of room")
    return ids[:room] + answer


@torch.inference_mode()
def predict(
    model: GPT2,
    tok: ByteLevelTokenizer,
    items: Sequence[Example],
    batch_size: int = 8,
    max_new_tokens: int = ANSWER_ROOM,
) -> list[str]:
    """One label per example, in order: greedy decoding under the label trie, batched by prompt length."""
    eos = tok.eos_token_id
    constraint = answer_constraint(tok)
    longest_answer = max(len(s) for s in label_ids(tok)) + 1  # + <|endoftext|>
    max_new_tokens = max(max_new_tokens, longest_answer)
    prompts = [prompt_ids(tok, ex.source, model.config.max_positions - max_new_tokens) for ex in items]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        T = max(len(prompts[i]) for i in batch)
        seqs = generate(model, [prompts[i] for i in batch], max_new_tokens=max_new_tokens, constraints=constraint,
                        eos_token_id=eos, pad_token_id=eos).sequences[:, T:]  # fmt: skip
        for i, row in zip(batch, seqs.tolist()):
            out[i] = tok.decode(row).strip()
    return out


def score(predictions: Sequence[str], items: Sequence[Example]) -> dict:
    if len(predictions) != len(items):
        raise TaskError(f"{len(predictions)} predictions for {len(items)} examples")
    correct = sum(p == ex.gold for p, ex in zip(predictions, items))
    return {"accuracy": correct / len(items) if items else 0.0, "n": len(items)}
