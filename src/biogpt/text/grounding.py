"""Locating the entities a model names in the document they came from.

A generated name went through lowercasing, Moses tokenization and detokenization, so it may differ from the
text in case and in spacing ("TNF - alpha" for "TNF-alpha", "( R ) -" for "(R)-"). Both sides are compared
with whitespace removed and case folded, character by character, keeping a map back to the original
positions; a match must also start and end at word boundaries of the original text. Spans are 0-based,
end-exclusive Unicode code-point offsets into the document text (PubTator's and BioC's convention).
"""

from __future__ import annotations

from dataclasses import dataclass


def _fold(c: str) -> str:
    low = c.lower()
    return low if len(low) == 1 else c  # keep one character per character, so positions map back one to one


@dataclass
class Grounder:
    """Finds every occurrence of names in one document's text."""

    text: str

    def __post_init__(self):
        keep = [i for i, c in enumerate(self.text) if not c.isspace()]
        self._index = keep  # position in the squeezed text -> position in the original
        self._squeezed = "".join(_fold(self.text[i]) for i in keep)

    def spans(self, name: str) -> list[tuple[int, int]]:
        """All (start, end) where `name` occurs, up to case and whitespace, at word boundaries."""
        needle = "".join(_fold(c) for c in name if not c.isspace())
        if not needle:
            return []
        out, text, at = [], self.text, self._squeezed.find(needle)
        while at >= 0:
            start, end = self._index[at], self._index[at + len(needle) - 1] + 1
            before_ok = start == 0 or not (text[start - 1].isalnum() and text[start].isalnum())
            after_ok = end == len(text) or not (text[end].isalnum() and text[end - 1].isalnum())
            if before_ok and after_ok:
                out.append((start, end))
            at = self._squeezed.find(needle, at + 1)
        return out
