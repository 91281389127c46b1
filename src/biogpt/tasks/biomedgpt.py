"""BiomedGPT's tasks: instruction templates, decoding settings, data readers and metrics.

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

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from biogpt.errors import InputError, TaskError
from biogpt.generation.seq2seq import AnswerTrie, beam_search, rank_candidates, right_pad
from biogpt.images import ImageSource, decode_base64, open_image, patch_images, probe_image
from biogpt.models.ofa import OFA, PAD_ID
from biogpt.text.ofa import OFATokenizer, normalize_caption, normalize_question

CAPTION_PROMPT = " what does the image describe?"
SUMMARY_PROMPT = ' what is the summary of article " {} "?'
NLI_PROMPT = ' can text1 " {} " imply text2 " {} "?'
NLI_ANSWERS = ("yes", "no", "maybe")  # entailment, contradiction, neutral


@dataclass
class Decoding:
    """Beam-search settings of one task, as the original evaluation scripts pass them."""

    beam_size: int = 5
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    normalize_scores: bool = True
    len_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    zero_shot: bool = False

    def kwargs(self) -> dict:
        return dict(self.__dict__)


DECODING = {
    "vqa": Decoding(beam_size=1, normalize_scores=False, max_len_b=16),
    "caption": Decoding(beam_size=10, max_len_b=32, no_repeat_ngram_size=3),
    "summarize": Decoding(beam_size=5, len_penalty=0.7, max_len_b=128, no_repeat_ngram_size=3),
}


def for_answers(decoding: Decoding, trie: AnswerTrie) -> Decoding:
    """The decoding of an answer-set task with its length bound taken from the answer set (the longest answer + 1
    steps): a fixed bound shorter than an answer leaves any search that enters it with no finished hypothesis."""
    return Decoding(**{**decoding.kwargs(), "max_len_a": 0.0, "max_len_b": trie.longest + 1})


def task_of(text: str, with_image: bool) -> str:
    """The task an instruction asks for, as its decoding settings are keyed: with an image, the caption
    instruction -> "caption", any other question -> "vqa"; text alone -> "summarize"."""
    if not with_image:
        return "summarize"
    return "caption" if text == CAPTION_PROMPT else "vqa"


def group_by_task(texts: Sequence[str], with_image: bool) -> dict[str, list[int]]:
    """The indices of `texts` by task (`task_of`), in order: each group is decoded with its own settings."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(task_of(t, with_image), []).append(i)
    return groups


# --- inputs -------------------------------------------------------------------------------------------


def vqa_text(question: str, max_words: int = 128) -> str:
    q = normalize_question(question, max_words)
    return " " + (q if q.endswith("?") else q + "?")


def summary_text(article: str, max_words: int = 512) -> str:
    words = article.lower().strip().split()[:max_words]
    return SUMMARY_PROMPT.format(" ".join(words).replace("<unk>", "unk"))


def nli_text(premise: str, hypothesis: str, max_words: int = 512) -> str:
    return NLI_PROMPT.format(normalize_caption(premise, max_words), normalize_caption(hypothesis, max_words))


@dataclass
class Record:
    id: str
    text: str  # the encoder text (template applied)
    image: ImageSource | None = None  # encoded bytes as the data files hold them, or an image decoded once
    refs: dict[str, float] = field(default_factory=dict)  # gold answers/captions (VQA: answer -> confidence)


VQA_LAYOUT = "a VQA file has uniq_id<TAB>base64 image<TAB>question<TAB>conf|!+answer&&...<TAB>objects[<TAB>caption]"
CAPTION_LAYOUT = "a caption or classification file has uniq_id<TAB>base64 image<TAB>caption or label"
MEQSUM_LAYOUT = "a MeQSum file has question<TAB>summary"


def _tsv_rows(path: Path, low: int, high: int | None, layout: str) -> list[tuple[int, list[str]]]:
    """(line number, columns) of each non-empty line, each with `low`..`high` columns (high None: no upper bound);
    a line with another count is one TaskError naming the file's expected layout."""
    if not path.exists():
        raise TaskError(f"{path}: split file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < low or (high is not None and len(cols) > high):
            want = f"at least {low}" if high is None else str(low) if low == high else f"{low} to {high}"
            raise TaskError(f"{path}:{n}: {len(cols)} tab-separated columns, expected {want} ({layout})")
        rows.append((n, cols))
    return rows


def _image_cell(path: Path, n: int, cell: str, layout: str) -> bytes:
    """The bytes of a base64 image column, its header checked (format, size): text in an image column (a file of
    another task) is one TaskError naming the expected layout."""
    try:
        raw = decode_base64(cell)
        probe_image(raw, "its image column")
    except InputError as e:
        raise TaskError(f"{path}:{n}: {e} ({layout})") from None
    return raw


def read_vqa(path: str | Path) -> list[Record]:
    """OFA VQA TSV: uniq_id, image (base64), question, ref ("conf|!+answer" joined by "&&"), objects[, caption]."""
    path = Path(path)
    out = []
    for n, cols in _tsv_rows(path, 4, None, VQA_LAYOUT):
        refs = {}
        for part in cols[3].split("&&"):
            conf, sep, ans = part.partition("|!+")
            try:
                refs[ans] = float(conf)
            except ValueError:
                raise TaskError(f"{path}:{n}: answer {part!r} is not 'confidence|!+answer' ({VQA_LAYOUT})") from None
            if not sep:
                raise TaskError(f"{path}:{n}: answer {part!r} is not 'confidence|!+answer' ({VQA_LAYOUT})")
        out.append(Record(cols[0], vqa_text(cols[2]), _image_cell(path, n, cols[1], VQA_LAYOUT), refs))
    return out


def read_captions(path: str | Path, labels: Sequence[str] | None = None) -> list[Record]:
    """OFA caption / classification TSV: uniq_id, image (base64), caption (references joined by "&&"). With
    `labels` (a classification task's answer set), every caption must be one of them."""
    path = Path(path)
    out = []
    for n, c in _tsv_rows(path, 3, 3, CAPTION_LAYOUT):
        refs = {r: 1.0 for r in c[2].split("&&")}
        if labels is not None and not set(refs) <= set(labels):
            bad = next(r for r in refs if r not in labels)
            raise TaskError(f"{path}:{n}: label {bad[:80]!r} is not in the answer set ({len(labels)} labels, e.g. "
                            f"{labels[0]!r}); {CAPTION_LAYOUT}")  # fmt: skip
        out.append(Record(c[0], CAPTION_PROMPT, _image_cell(path, n, c[1], CAPTION_LAYOUT), refs))
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


def read_meqsum(path: str | Path, max_words: int = 512) -> list[Record]:
    """MeQSum: question<TAB>summary per line (exactly two columns: a VQA or caption file is refused)."""
    return [
        Record(str(i), summary_text(c[0], max_words), None, {c[1].strip(): 1.0})
        for i, (_, c) in enumerate(_tsv_rows(Path(path), 2, 2, MEQSUM_LAYOUT))
    ]


# --- prediction ---------------------------------------------------------------------------------------


def _batch(tok: OFATokenizer, records: Sequence[Record], image_size: int):
    """(source ids, images, image masks); rows without an image get a blank one, masked out."""
    src = right_pad([tok.encode_source(r.text) for r in records])
    if all(r.image is None for r in records):
        return src, None, None
    blank = torch.zeros(3, image_size, image_size)
    imgs = torch.stack([patch_images([r.image], image_size)[0] if r.image is not None else blank for r in records])
    return src, imgs, torch.tensor([r.image is not None for r in records])


@torch.no_grad()
def generate_text(
    model: OFA, tok: OFATokenizer, records: Sequence[Record], decoding: Decoding, trie: AnswerTrie | None = None,
    batch_size: int = 8, text_only: bool = True,
) -> list[str]:  # fmt: skip
    """The best hypothesis of each record, as text. `text_only` bans image-code and box ids (their range starts
    at the tokenizer's <code_0>) unless a trie constrains the output; with a trie, the length bound is the answer
    set's (`for_answers`)."""
    crange = (4, tok.code_start) if text_only and trie is None else None  # keep ids 0..3 and 4..<code_0>
    if trie is not None:
        decoding = for_answers(decoding, trie)
    size = model.config.image_size
    out = []
    for i in range(0, len(records), batch_size):
        part = records[i : i + batch_size]
        src, imgs, masks = _batch(tok, part, size)
        hyps = beam_search(model, src, imgs, masks, constraint_trie=trie, constraint_range=crange, **decoding.kwargs())
        out += [tok.decode(h[0].tokens).strip() if h else "" for h in hyps]
    return out


@torch.no_grad()
def rank_answers(
    model: OFA, tok: OFATokenizer, records: Sequence[Record], answers: Sequence[str], batch_size: int = 8,
    source_prompt: bool = False,
) -> list[str]:  # fmt: skip
    """The best of `answers` for each record, every candidate scored exactly (BiomedGPT's "allcand").
    source_prompt: the decoder is first fed the source (prompt_type "src", as BiomedGPT's NLI evaluation)."""
    cands = [tok.encode(" " + a) for a in answers]
    trie = AnswerTrie(cands)
    out = []
    for i in range(0, len(records), batch_size):
        part = records[i : i + batch_size]
        src, imgs, masks = _batch(tok, part, model.config.image_size)
        prompts = [tok.encode_source(r.text)[:-1] for r in part] if source_prompt else None
        scores = rank_candidates(model, src, cands, imgs, masks, trie, decoder_prompts=prompts)
        out += [answers[j] for j in scores.argmax(1).tolist()]
    return out


def predict_nli(model: OFA, tok: OFATokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[str]:
    """yes / no / maybe (entailment / contradiction / neutral) for (premise, hypothesis) pairs: the NLI template,
    the decoder prompted with the source, the three answers ranked exactly."""
    records = [Record(str(i), nli_text(p, h)) for i, (p, h) in enumerate(pairs)]
    return rank_answers(model, tok, records, NLI_ANSWERS, batch_size, source_prompt=True)


# --- metrics ------------------------------------------------------------------------------------------


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
    if len(predictions) != len(golds) or not golds:
        raise TaskError(f"{len(predictions)} predictions for {len(golds)} examples")
    return sum(p.strip() == g.strip() for p, g in zip(predictions, golds)) / len(golds)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
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


# --- fine-tuning loss ---------------------------------------------------------------------------------


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """fairseq's label_smoothed_cross_entropy summed over non-pad target tokens: (1 - eps - eps/(V-1)) * nll +
    eps/(V-1) * smooth, with smooth = -sum of all log-probabilities (OFA's criterion without constraints)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    keep = target.ne(PAD_ID)
    nll = -lprobs.gather(-1, target[..., None])[..., 0][keep]
    smooth = -lprobs.sum(-1)[keep]
    eps_i = epsilon / (lprobs.size(-1) - 1)
    return ((1.0 - epsilon - eps_i) * nll + eps_i * smooth).sum()


def teacher_forcing_batch(tok: OFATokenizer, records: Sequence[Record], max_target: int = 128):
    """(source ids, decoder inputs, targets) for records whose refs hold one target text each: targets are the
    target's ids + </s>, decoder inputs <s> + the same ids (right-padded)."""
    src = right_pad([tok.encode_source(r.text) for r in records])
    tgts = [tok.encode(" " + next(iter(r.refs)).lower())[:max_target] for r in records]
    prev = right_pad([[tok.bos_token_id, *t] for t in tgts])
    target = right_pad([[*t, tok.eos_token_id] for t in tgts])
    return src, prev, target


def finetune(
    model: OFA, tok: OFATokenizer, records: Sequence[Record], steps: int, batch_size: int = 16, lr: float = 1e-3,
    warmup: int = 20, epsilon: float = 0.1, clip: float = 1.0, seed: int = 0, log_every: int = 0,
) -> list[float]:  # fmt: skip
    """Fine-tune on (text, target) records as OFA's text tasks train: label-smoothed cross-entropy per target
    token, AdamW (betas 0.9/0.999, weight decay 0.01), linear warm-up then linear decay, gradient clipping.
    Returns the loss per token of every step."""
    if steps < 1 or not records:
        raise TaskError("fine-tuning needs at least one step and one record")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / max(warmup, 1), max(0.0, (steps - s) / max(steps - warmup, 1)))
    )
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(records), (batch_size,), generator=g).tolist()
        src, prev, target = teacher_forcing_batch(tok, [records[i] for i in idx])
        loss = label_smoothed_nll(model(src, prev), target, epsilon)
        n = int(target.ne(PAD_ID).sum())
        opt.zero_grad(set_to_none=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(loss.item() / n)
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}: loss {losses[-1]:.3f}", flush=True)
    model.eval()
    return losses
