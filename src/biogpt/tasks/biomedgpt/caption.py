"""BiomedGPT's image tasks read from OFA's caption TSV files: captioning / report generation (IU X-ray, PEIR
Gross) and image classification (MedMNIST), whose instruction is the same caption prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from biogpt.errors import InputError, TaskError
from biogpt.images import decode_base64, open_image
from biogpt.tasks.biomedgpt.common import CAPTION_PROMPT, Record, image_cell, tsv_rows
from biogpt.tasks.biomedgpt.metrics import caption_words

CAPTION_LAYOUT = "a caption or classification file has uniq_id<TAB>base64 image<TAB>caption or label"


def read_captions(path: str | Path, labels: Sequence[str] | None = None) -> list[Record]:
    """OFA caption / classification TSV: uniq_id, image (base64), caption (references joined by "&&"). With
    `labels` (a classification task's answer set), every caption must be one of them."""
    path = Path(path)
    out = []
    for n, c in tsv_rows(path, 3, 3, CAPTION_LAYOUT):
        refs = {r: 1.0 for r in c[2].split("&&")}
        if labels is not None and not set(refs) <= set(labels):
            bad = next(r for r in refs if r not in labels)
            raise TaskError(f"{path}:{n}: label {bad[:80]!r} is not in the answer set ({len(labels)} labels, e.g. "
                            f"{labels[0]!r}); {CAPTION_LAYOUT}")  # fmt: skip
        out.append(Record(c[0], CAPTION_PROMPT, image_cell(path, n, c[1], CAPTION_LAYOUT), refs))
    return out


def read_report_captions(path: str | Path) -> list[Record]:
    """OFA caption TSV for report generation (IU X-ray, PEIR Gross): uniq_id, image (base64), caption (references
    joined by "&&"), each image checked as it is read, so that a bad row is one TaskError naming its line."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"{path}: split file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 3:
            raise TaskError(f"{path}:{n}: {len(cols)} tab-separated columns, expected uniq_id<TAB>base64 image"
                            "<TAB>caption")  # fmt: skip
        refs = [r for r in (caption_words(c) for c in cols[2].split("&&")) if r]
        if not refs:
            raise TaskError(f"{path}:{n}: no reference caption")
        try:
            image = decode_base64(cols[1])
            open_image(image)
        except InputError as e:
            raise TaskError(f"{path}:{n}: {e}") from None
        out.append(Record(cols[0], CAPTION_PROMPT, image, {r: 1.0 for r in refs}))
    return out
