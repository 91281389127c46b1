"""BiomedGPT's VQA task (VQA-RAD, SLAKE, PathVQA): the question template and OFA's VQA TSV files."""

from __future__ import annotations

from pathlib import Path

from biogpt.errors import TaskError
from biogpt.tasks.biomedgpt.common import Record, image_cell, tsv_rows
from biogpt.text.ofa import normalize_question

VQA_LAYOUT = "a VQA file has uniq_id<TAB>base64 image<TAB>question<TAB>conf|!+answer&&...<TAB>objects[<TAB>caption]"


def vqa_text(question: str, max_words: int = 128) -> str:
    """The encoder text of a question: normalised as OFA's VQA data are, ending in "?", after one space."""
    q = normalize_question(question, max_words)
    return " " + (q if q.endswith("?") else q + "?")


def read_vqa(path: str | Path) -> list[Record]:
    """OFA VQA TSV: uniq_id, image (base64), question, ref ("conf|!+answer" joined by "&&"), objects[, caption]."""
    path = Path(path)
    out = []
    for n, cols in tsv_rows(path, 4, None, VQA_LAYOUT):
        refs = {}
        for part in cols[3].split("&&"):
            conf, sep, ans = part.partition("|!+")
            try:
                refs[ans] = float(conf)
            except ValueError:
                raise TaskError(f"{path}:{n}: answer {part!r} is not 'confidence|!+answer' ({VQA_LAYOUT})") from None
            if not sep:
                raise TaskError(f"{path}:{n}: answer {part!r} is not 'confidence|!+answer' ({VQA_LAYOUT})")
        out.append(Record(cols[0], vqa_text(cols[2]), image_cell(path, n, cols[1], VQA_LAYOUT), refs))
    return out
