"""KD-DTI drug-target interactions: the DDI format and scorer, with title + abstract as the source."""

from __future__ import annotations

from biogpt.tasks.bc5cdr import document_text
from biogpt.tasks.ddi import DDI


class KDDTI(DDI):
    name = "kd-dti"
    folder = "KD-DTI"

    def source(self, doc: dict) -> str:
        return document_text(doc.get("title", ""), doc["abstract"]).lower()
