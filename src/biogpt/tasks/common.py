"""What every task shares: the example type, the prompt layout, truncation, inference, parsing helpers.

A task is a small object with
- `name`, `num_prompt_tokens` (K), `max_source_tokens` and `max_length` (the original per-task settings);
- `examples(data_dir, split)`: the (source, target) pairs exactly as the original rebuild_data.py wrote them,
  with the structured gold answer attached;
- `parse(output)`: the original postprocess.py, from one generated (detokenized) line to a structured answer;
- `score(predictions, examples)`: the original scorer, metrics as fractions in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biogpt import jsonfile
from biogpt.errors import TaskError
from biogpt.generation import generate
from biogpt.text.fastbpe import EOS_ID, UNK_ID
from biogpt.text.tokenizer import Tokenizer


@dataclass
class Example:
    id: str
    source: str  # the model's input text (after the task's lowercasing), before Moses + BPE
    target: str  # the training target text
    gold: Any = field(default=None)  # structured gold answer for scoring


def read_json(path: Path) -> Any:
    """A task's JSON split file; one TaskError naming it when it is missing or not JSON."""
    if not path.exists():
        raise TaskError(f"{path}: split file not found")
    return jsonfile.read_json(path, TaskError)


def read_tsv_split(path: Path) -> list[tuple[int, str, str]]:
    """(line number, source, label) of the non-blank `text<TAB>label` lines; the source stripped and ending in
    '.', as the original rebuild_data.py wrote HoC and PubMedQA sources."""
    if not path.exists():
        raise TaskError(f"{path}: split file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n")):
        if not line.strip():
            continue
        src, label = line.rsplit("\t", 1)
        src = src.strip()
        out.append((n, src if src.endswith(".") else src + ".", label.strip()))
    return out


DECODING_LENGTH = 1024  # inference.py --decoding_length default (fairseq max_len_b), for base and Large alike

# ---------------------------------------------------------------------------------------------------
# sequence layout (language_modeling_prompt): [</s>] + src + learned1..K + tgt + [</s>]


def ellipsis_id(tok: Tokenizer) -> int:
    """The id of `...`, the truncation marker; `<unk>` in a vocabulary without it, as fairseq's
    Dictionary.index("...") gives (vocabularies learned by `biogpt bpe learn` may lack the whole word)."""
    return tok.piece_to_id.get("...</w>", UNK_ID)


def encode_source(tok: Tokenizer, source: str, max_source_tokens: int) -> list[int]:
    """Source ids (no leading </s>), truncated as fairseq did: max_src - 1 tokens, then `...`."""
    ids = tok.encode(source, add_eos_prefix=False)
    if len(ids) > max_source_tokens:
        ids = ids[: max_source_tokens - 1] + [ellipsis_id(tok)]
    return ids


def encode_target(tok: Tokenizer, target: str, max_target_tokens: int) -> list[int]:
    """Target ids + </s>; longer than max_tgt: cut to max_tgt items, the last two becoming `...` and </s>."""
    ids = tok.encode(target, add_eos_prefix=False) + [EOS_ID]
    if len(ids) > max_target_tokens:
        ids = ids[:max_target_tokens]
        ids[-2:] = [ellipsis_id(tok), EOS_ID]
    return ids


def training_pair(task, tok: Tokenizer, ex: Example) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of one example: input = [</s>] + seq[:-1], target = seq (loss on every token)."""
    src = encode_source(tok, ex.source, task.max_source_tokens)
    max_tgt = task.max_length - task.max_source_tokens - task.num_prompt_tokens
    seq = src + prompt_ids(task, tok) + encode_target(tok, ex.target, max_tgt)
    return [EOS_ID] + seq[:-1], seq


def inference_prefix(task, tok: Tokenizer, source: str) -> list[int]:
    """[</s>] + source + learned1..K: the forced prefix the original inference fed the generator."""
    return [EOS_ID] + encode_source(tok, source, task.max_source_tokens) + prompt_ids(task, tok)


def prompt_ids(task, tok: Tokenizer) -> list[int]:
    """The task's learned prompt tokens: all of the tokenizer's, or, in a multi-task model, the task's slice
    (`task.prompt_slice`, set by `task_for_model` from the model's config)."""
    first, count = getattr(task, "prompt_slice", (0, tok.num_prompt_tokens))
    return tok.prompt_ids[first : first + count]


def check_prompt_tokens(task, config) -> None:
    """The model must have the task's prompt tokens: as many as the task uses, or a slice for it."""
    if getattr(task, "prompt_slice", None) is None and config.num_prompt_tokens != task.num_prompt_tokens:
        tasks = f" (it was trained for {', '.join(config.prompt_tasks)})" if config.prompt_tasks else ""
        raise TaskError(
            f"{task.name} uses {task.num_prompt_tokens} learned prompt tokens but the model has "
            f"{config.num_prompt_tokens}{tasks}; use a checkpoint fine-tuned for {task.name}"
        )


# ---------------------------------------------------------------------------------------------------
# parsing helpers (postprocess.py)

_LEARNED = re.compile(r"(learned[0-9]+ )+")


def strip_prefix(text: str, extra: Sequence[str] = ()) -> str:
    """Drop everything up to the last run of `learnedN ` tokens (the echoed source and prompt), or, failing
    that, up to the last occurrence of the first of `extra` phrases that occurs."""
    runs = list(_LEARNED.finditer(text + " "))
    if runs:
        return (text + " ")[runs[-1].end() :].strip()
    for phrase in extra:
        if phrase in text:
            return text[text.rindex(phrase) + len(phrase) :].strip()
    return text.strip()


def drop_final_period(text: str) -> str:
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


# ---------------------------------------------------------------------------------------------------
# inference


@torch.inference_mode()
def predict(
    task, model, tok: Tokenizer, examples: Sequence[Example], batch_size: int = 8, log=None, constraint=None
) -> list[str]:
    """Greedy decoding after the forced prefix, batched by length; one decoded answer per example, in order.

    `constraint(source_ids)`, if given, makes each row's decoding constraint (e.g. the task's template:
    `biogpt.tasks.templates.grammar`). The length limit counts the prefix, as the original inference.py's
    did: min(--decoding_length 1024, max_positions - 1) tokens in all (1023 for base, 1024 for Large); it
    also stops at the task's longest training target (max_length - max_source_tokens - K), which no fine-tuned
    model exceeds.
    """
    check_prompt_tokens(task, model.config)
    prefixes = [inference_prefix(task, tok, ex.source) for ex in examples]
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    outputs: list[str] = [""] * len(prefixes)
    max_tgt = task.max_length - task.max_source_tokens - task.num_prompt_tokens
    limit = min(DECODING_LENGTH, model.config.max_positions - 1)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        longest = max(len(prefixes[i]) for i in batch)
        new = max(1, min(max_tgt, limit - (longest - 1)))
        rows = None
        if constraint is not None:  # from each prefix </s> + source + prompt: the source ids
            rows = [constraint(prefixes[i][1 : len(prefixes[i]) - task.num_prompt_tokens]) for i in batch]
        out = generate(model, [prefixes[i] for i in batch], max_new_tokens=new, constraints=rows)
        seqs = out.sequences[:, longest:]
        for i, row in zip(batch, seqs.tolist()):
            outputs[i] = tok.decode(row)
        if log is not None:
            log(f"{min(start + batch_size, len(order))}/{len(order)}")
    return outputs


def read_predictions(path: str | Path, n: int) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise TaskError(f"{p}: predictions file not found")
    lines = p.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) != n:
        raise TaskError(f"{p} has {len(lines)} lines but the split has {n} examples (one output per line, in order)")
    return lines


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0
