"""KD-DTI drug-target interactions: the DDI format and scorer, with title + abstract as the source."""

from __future__ import annotations

from biogpt.tasks.bc5cdr import document_text
from biogpt.tasks.ddi import DDI

# every interaction in the KD-DTI valid/test files (lowercased)
LABELS = (
    "activator", "adduct", "agonist", "allosteric modulator", "antagonist", "antibody", "bind", "binder", "binding",
    "blocker", "chaperone", "chelator", "cleavage", "cofactor", "cross-linking/alkylation", "disruption",
    "downregulator", "enhancer", "inactivator", "inducer", "inhibitor", "intercalation", "inverse agonist", "ligand",
    "modulator", "multitarget", "negative modulator", "opener", "other", "other/unknown", "partial agonist",
    "partial antagonist", "positive allosteric modulator", "potentiator", "product of", "regulator", "stimulator",
    "substrate", "suppressor", "unknown", "weak inhibitor",
)  # fmt: skip


class KDDTI(DDI):
    name = "kd-dti"
    folder = "KD-DTI"

    def source(self, doc: dict) -> str:
        return document_text(doc.get("title", ""), doc["abstract"]).lower()
