"""BiomedGPT's tasks: instruction templates, decoding settings, data readers and metrics, one module per task
(vqa, caption, summary, nli) over what they share (common) and one metrics module; this package re-exports
their public names, as `biogpt.tasks` does for BioGPT's tasks.

Every task is one sequence-to-sequence instruction (taokz/BiomedGPT `data/*`, `scripts/*/evaluate_*.sh`):

| task | encoder text (after <s>, before </s>) | decoding | metric |
|---|---|---|---|
| vqa | " {question}?" + image | beam 1, unnormalised, answer trie, longest + 1 steps | accuracy: all, closed, open |
| caption | " what does the image describe?" + image | beam 10, max_len_b 32, no-repeat 3 | ROUGE-L, CIDEr-D |
| classify | " what does the image describe?" + image | all candidates ranked exactly | accuracy |
| summarize | ' what is the summary of article " {text} "?' | beam 5, lenpen 0.7, max_len_b 128, no-repeat 3 | ROUGE-L |
| nli | ' can text1 " {s1} " imply text2 " {s2} "?' | one of yes / no / maybe, ranked exactly | accuracy |

Text is normalised as OFA's datasets do (text/ofa.py). Data: OFA's TSV files, images as base64 (VQA: uniq_id,
image, question, ref, predicted objects[, caption], with ref "conf|!+answer&&..."; caption and classification:
uniq_id, image, caption); MeQSum: "question<TAB>summary" lines.
"""

from biogpt.tasks.biomedgpt.caption import CAPTION_LAYOUT, read_captions, read_report_captions
from biogpt.tasks.biomedgpt.common import (
    CAPTION_PROMPT,
    DECODING,
    Decoding,
    Record,
    for_answers,
    generate_text,
    group_by_task,
    rank_answers,
    task_of,
)
from biogpt.tasks.biomedgpt.metrics import (
    accuracy,
    caption_scores,
    caption_words,
    cider_d,
    rouge_l,
    summary_rouge_l,
    vqa_accuracy,
)
from biogpt.tasks.biomedgpt.nli import NLI_ANSWERS, NLI_PROMPT, nli_text, predict_nli
from biogpt.tasks.biomedgpt.summary import MEQSUM_LAYOUT, SUMMARY_PROMPT, read_meqsum, summary_text
from biogpt.tasks.biomedgpt.vqa import VQA_LAYOUT, read_vqa, vqa_text

__all__ = [
    "CAPTION_LAYOUT", "CAPTION_PROMPT", "DECODING", "MEQSUM_LAYOUT", "NLI_ANSWERS", "NLI_PROMPT", "SUMMARY_PROMPT",
    "VQA_LAYOUT", "Decoding", "Record", "accuracy", "caption_scores", "caption_words", "cider_d", "for_answers",
    "generate_text", "group_by_task", "nli_text", "predict_nli", "rank_answers", "read_captions", "read_meqsum",
    "read_report_captions", "read_vqa", "rouge_l", "summary_rouge_l", "summary_text", "task_of", "vqa_accuracy",
    "vqa_text",
]  # fmt: skip
