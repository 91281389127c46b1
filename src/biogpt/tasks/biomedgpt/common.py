"""What BiomedGPT's tasks share: the records they read, the decoding settings of each task, the task an
instruction asks for, and the two ways of predicting (beam search, or every candidate answer ranked exactly)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from biogpt.errors import InputError, TaskError
from biogpt.generation.seq2seq import AnswerTrie, beam_search, rank_candidates, right_pad
from biogpt.images import ImageSource, decode_base64, patch_images, probe_image
from biogpt.models.ofa import OFA
from biogpt.text.ofa import OFATokenizer

CAPTION_PROMPT = " what does the image describe?"


@dataclass
class Decoding:
    """Beam-search settings of one task, as the original evaluation scripts pass them."""

    beam_size: int = 5
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    normalize_scores: bool = True
    len_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    zero_shot: bool = False

    def kwargs(self) -> dict:
        """The settings as `beam_search` keyword arguments."""
        return dict(self.__dict__)


DECODING = {
    "vqa": Decoding(beam_size=1, normalize_scores=False, max_len_b=16),
    "caption": Decoding(beam_size=10, max_len_b=32, no_repeat_ngram_size=3),
    "summarize": Decoding(beam_size=5, len_penalty=0.7, max_len_b=128, no_repeat_ngram_size=3),
}


def for_answers(decoding: Decoding, trie: AnswerTrie) -> Decoding:
    """The decoding of an answer-set task with its length bound taken from the answer set (the longest answer + 1
    steps): a fixed bound shorter than an answer leaves any search that enters it with no finished hypothesis."""
    return Decoding(**{**decoding.kwargs(), "max_len_a": 0.0, "max_len_b": trie.longest + 1})


def task_of(text: str, with_image: bool) -> str:
    """The task an instruction asks for, as its decoding settings are keyed: with an image, the caption
    instruction -> "caption", any other question -> "vqa"; text alone -> "summarize"."""
    if not with_image:
        return "summarize"
    return "caption" if text == CAPTION_PROMPT else "vqa"


def group_by_task(texts: Sequence[str], with_image: bool) -> dict[str, list[int]]:
    """The indices of `texts` by task (`task_of`), in order: each group is decoded with its own settings."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(task_of(t, with_image), []).append(i)
    return groups


@dataclass
class Record:
    """One example of any task: what the encoder reads (text, image) and the gold answers it is scored on."""

    id: str
    text: str  # the encoder text (template applied)
    image: ImageSource | None = None  # encoded bytes as the data files hold them, or an image decoded once
    refs: dict[str, float] = field(default_factory=dict)  # gold answers/captions (VQA: answer -> confidence)


def tsv_rows(path: Path, low: int, high: int | None, layout: str) -> list[tuple[int, list[str]]]:
    """(line number, columns) of each non-empty line, each with `low`..`high` columns (high None: no upper bound);
    a line with another count is one TaskError naming the file's expected layout."""
    if not path.exists():
        raise TaskError(f"{path}: split file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < low or (high is not None and len(cols) > high):
            want = f"at least {low}" if high is None else str(low) if low == high else f"{low} to {high}"
            raise TaskError(f"{path}:{n}: {len(cols)} tab-separated columns, expected {want} ({layout})")
        rows.append((n, cols))
    return rows


def image_cell(path: Path, n: int, cell: str, layout: str) -> bytes:
    """The bytes of a base64 image column, its header checked (format, size): text in an image column (a file of
    another task) is one TaskError naming the expected layout."""
    try:
        raw = decode_base64(cell)
        probe_image(raw, "its image column")
    except InputError as e:
        raise TaskError(f"{path}:{n}: {e} ({layout})") from None
    return raw


def _batch(tok: OFATokenizer, records: Sequence[Record], image_size: int):
    """(source ids, images, image masks); rows without an image get a blank one, masked out."""
    src = right_pad([tok.encode_source(r.text) for r in records])
    if all(r.image is None for r in records):
        return src, None, None
    blank = torch.zeros(3, image_size, image_size)
    imgs = torch.stack([patch_images([r.image], image_size)[0] if r.image is not None else blank for r in records])
    return src, imgs, torch.tensor([r.image is not None for r in records])


@torch.no_grad()
def generate_text(
    model: OFA, tok: OFATokenizer, records: Sequence[Record], decoding: Decoding, trie: AnswerTrie | None = None,
    batch_size: int = 8, text_only: bool = True,
) -> list[str]:  # fmt: skip
    """The best hypothesis of each record, as text. `text_only` bans image-code and box ids (their range starts
    at the tokenizer's <code_0>) unless a trie constrains the output; with a trie, the length bound is the answer
    set's (`for_answers`)."""
    crange = (4, tok.code_start) if text_only and trie is None else None  # keep ids 0..3 and 4..<code_0>
    if trie is not None:
        decoding = for_answers(decoding, trie)
    size = model.config.image_size
    out = []
    for i in range(0, len(records), batch_size):
        part = records[i : i + batch_size]
        src, imgs, masks = _batch(tok, part, size)
        hyps = beam_search(model, src, imgs, masks, constraint_trie=trie, constraint_range=crange, **decoding.kwargs())
        out += [tok.decode(h[0].tokens).strip() if h else "" for h in hyps]
    return out


@torch.no_grad()
def rank_answers(
    model: OFA, tok: OFATokenizer, records: Sequence[Record], answers: Sequence[str], batch_size: int = 8,
    source_prompt: bool = False,
) -> list[str]:  # fmt: skip
    """The best of `answers` for each record, every candidate scored exactly (BiomedGPT's "allcand").
    source_prompt: the decoder is first fed the source (prompt_type "src", as BiomedGPT's NLI evaluation)."""
    cands = [tok.encode(" " + a) for a in answers]
    trie = AnswerTrie(cands)
    out = []
    for i in range(0, len(records), batch_size):
        part = records[i : i + batch_size]
        src, imgs, masks = _batch(tok, part, model.config.image_size)
        prompts = [tok.encode_source(r.text)[:-1] for r in part] if source_prompt else None
        scores = rank_candidates(model, src, cands, imgs, masks, trie, decoder_prompts=prompts)
        out += [answers[j] for j in scores.argmax(1).tolist()]
    return out
