"""BiomedGPT's natural-language inference task (MedNLI): the two-text template and its three answers, ranked."""

from __future__ import annotations

from collections.abc import Sequence

from biogpt.models.ofa import OFA
from biogpt.tasks.biomedgpt.common import Record, rank_answers
from biogpt.text.ofa import OFATokenizer, normalize_caption

NLI_PROMPT = ' can text1 " {} " imply text2 " {} "?'
NLI_ANSWERS = ("yes", "no", "maybe")  # entailment, contradiction, neutral


def nli_text(premise: str, hypothesis: str, max_words: int = 512) -> str:
    """The encoder text of a (premise, hypothesis) pair: both normalised as OFA's captions are, in the NLI
    instruction."""
    return NLI_PROMPT.format(normalize_caption(premise, max_words), normalize_caption(hypothesis, max_words))


def predict_nli(model: OFA, tok: OFATokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[str]:
    """yes / no / maybe (entailment / contradiction / neutral) for (premise, hypothesis) pairs: the NLI template,
    the decoder prompted with the source, the three answers ranked exactly."""
    records = [Record(str(i), nli_text(p, h)) for i, (p, h) in enumerate(pairs)]
    return rank_answers(model, tok, records, NLI_ANSWERS, batch_size, source_prompt=True)
