"""Mining the literature: any task model over PubMed XML, PubTator, BioC or JSONL, every entity located in the
text, written as JSONL, BioC or PubTator; crash-safe and resumable on one machine or a Ray cluster."""

from biogpt.mining.extractor import TASKS, Extractor
from biogpt.mining.readers import FORMATS, Document, Passage, Problem, detect_format, read_documents
from biogpt.mining.writers import OUTPUT_FORMATS, Writer, render
from biogpt.text.grounding import Grounder

__all__ = ["FORMATS", "OUTPUT_FORMATS", "TASKS", "Document", "Extractor", "Grounder", "Passage", "Problem", "Writer",
           "detect_format", "read_documents", "render"]  # fmt: skip
