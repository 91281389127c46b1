"""BiomedGPT's metrics, as its evaluation reports them: VQA accuracy (all, closed, open), accuracy, ROUGE-L
(pycocoevalcap's for captions, rouge_score's for summaries) and CIDEr-D."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

from biogpt.errors import TaskError
from biogpt.tasks.biomedgpt.common import Record


def vqa_accuracy(predictions: Sequence[str], records: Sequence[Record]) -> dict:
    """Each prediction scores its reference confidence (0 if absent); closed = questions whose best reference
    answer is yes/no, open = the rest. Fractions in [0, 1]."""
    if len(predictions) != len(records):
        raise TaskError(f"{len(predictions)} predictions for {len(records)} questions")
    groups: dict[str, list[float]] = {"overall": [], "closed": [], "open": []}
    for p, r in zip(predictions, records):
        s = r.refs.get(p.strip(), 0.0)
        best = max(r.refs, key=r.refs.get)
        groups["overall"].append(s)
        groups["closed" if best in ("yes", "no") else "open"].append(s)
    return {k: (sum(v) / len(v) if v else 0.0) for k, v in groups.items()} | {"n": len(records)}


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """The fraction of predictions equal to their gold answer (surrounding spaces ignored)."""
    if len(predictions) != len(golds) or not golds:
        raise TaskError(f"{len(predictions)} predictions for {len(golds)} examples")
    return sum(p.strip() == g.strip() for p, g in zip(predictions, golds)) / len(golds)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of two token lists (one row of the table at a time)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, references: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L F-measure of whitespace tokens against the best-precision / best-recall reference
    (pycocoevalcap's Rouge, beta 1.2, as caption evaluation reports it)."""
    c = candidate.split()
    if not c or not references:
        return 0.0
    precs, recs = [], []
    for ref in references:
        r = ref.split()
        lcs = _lcs(c, r)
        precs.append(lcs / len(c))
        recs.append(lcs / len(r) if r else 0.0)
    p, r = max(precs), max(recs)
    return ((1 + beta**2) * p * r) / (r + beta**2 * p) if p and r else 0.0


_NO_PUNCTUATION = str.maketrans({c: None for c in string.punctuation})  # OFA's transtab


def caption_words(text: str) -> str:
    """A caption as caption metrics compare it: lower-cased, punctuation deleted as OFA deletes it from
    hypotheses and references ("x-ray." -> "xray"), single spaces (pycocoevalcap's PTB tokenizer lower-cases)."""
    return " ".join(text.lower().translate(_NO_PUNCTUATION).split())


def caption_scores(predictions: Sequence[str], records: Sequence[Record]) -> dict:
    """Report generation's metrics: mean ROUGE-L and corpus CIDEr-D of the normalised predictions against each
    record's references (refs, already normalised by `read_report_captions`)."""
    if len(predictions) != len(records) or not records:
        raise TaskError(f"{len(predictions)} predictions for {len(records)} images")
    cands = [caption_words(p) for p in predictions]
    refs = [list(r.refs) for r in records]
    rl = sum(rouge_l(c, rs) for c, rs in zip(cands, refs)) / len(cands)
    return {"rouge_l": rl, "cider_d": cider_d(cands, refs), "n": len(records)}


def summary_rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of lower-cased alphanumeric tokens (the `rouge_score` package's tokenizer, no stemming)."""

    def toks(s: str) -> list[str]:
        return re.sub(r"[^a-z0-9]+", " ", s.lower()).split()

    c, r = toks(candidate), toks(reference)
    lcs = _lcs(c, r)
    if not lcs:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def _ngrams(words: list[str], n: int) -> Counter:
    """The counts of every 1..n-gram of `words`, as tuples (CIDEr-D's term frequencies)."""
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (pycocoevalcap's Cider): tf-idf n-gram vectors (idf over the references of this corpus),
    clipped cosine similarity with a Gaussian penalty on the length difference (its "length" is the number of
    bigrams), averaged over n = 1..4 and the references, x 10."""
    if len(candidates) != len(references) or not candidates:
        raise TaskError(f"{len(candidates)} candidates for {len(references)} reference sets")
    refs = [[_ngrams(r.split(), n) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    log_n = math.log(float(len(references)))

    def vec(counts: Counter):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[k] += v[k][g] ** 2
        length = sum(tf for g, tf in counts.items() if len(g) == 2)  # pycocoevalcap counts bigrams here
        return v, [math.sqrt(x) for x in norm], length

    def sim(vh, vr, nh, nr, lh, lr):
        delta = lh - lr
        out = []
        for k in range(n):
            val = sum(min(w, vr[k][g]) * vr[k][g] for g, w in vh[k].items() if g in vr[k])
            if nh[k] != 0 and nr[k] != 0:
                val /= nh[k] * nr[k]
            out.append(val * math.e ** (-(delta**2) / (2 * sigma**2)))
        return out

    total = 0.0
    for cand, rs in zip(candidates, refs):
        vh, nh, lh = vec(_ngrams(cand.split(), n))
        score = [0.0] * n
        for r in rs:
            vr, nr, lr = vec(r)
            score = [a + b for a, b in zip(score, sim(vh, vr, nh, nr, lh, lr))]
        total += sum(score) / n / len(rs) * 10.0
    return total / len(candidates)
