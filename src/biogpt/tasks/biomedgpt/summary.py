"""BiomedGPT's summarisation task (MeQSum): the article template and the "question<TAB>summary" files."""

from __future__ import annotations

from pathlib import Path

from biogpt.tasks.biomedgpt.common import Record, tsv_rows

SUMMARY_PROMPT = ' what is the summary of article " {} "?'
MEQSUM_LAYOUT = "a MeQSum file has question<TAB>summary"


def summary_text(article: str, max_words: int = 512) -> str:
    """The encoder text of an article: lower-cased, its first `max_words` words, "<unk>" written "unk" (so
    that it stays text, not the unknown token), in the summary instruction."""
    words = article.lower().strip().split()[:max_words]
    return SUMMARY_PROMPT.format(" ".join(words).replace("<unk>", "unk"))


def read_meqsum(path: str | Path, max_words: int = 512) -> list[Record]:
    """MeQSum: question<TAB>summary per line (exactly two columns: a VQA or caption file is refused)."""
    return [
        Record(str(i), summary_text(c[0], max_words), None, {c[1].strip(): 1.0})
        for i, (_, c) in enumerate(tsv_rows(Path(path), 2, 2, MEQSUM_LAYOUT))
    ]
