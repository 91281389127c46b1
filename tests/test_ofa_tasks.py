"""BiomedGPT's tasks: templates, data readers, metrics (hand-computed values) and the prediction paths."""

from __future__ import annotations

import base64
import io
import math

import pytest
import torch
from PIL import Image

from biogpt.errors import TaskError, TrainingError
from biogpt.generation.seq2seq import beam_search, rank_candidates, right_pad
from biogpt.images import patch_images
from biogpt.models.ofa import OFA, OFAConfig
from biogpt.tasks.biomedgpt.caption import read_captions
from biogpt.tasks.biomedgpt.common import DECODING, Decoding, Record, generate_text, rank_answers
from biogpt.tasks.biomedgpt.metrics import cider_d, rouge_l, summary_rouge_l, vqa_accuracy
from biogpt.tasks.biomedgpt.nli import NLI_ANSWERS, nli_text, predict_nli
from biogpt.tasks.biomedgpt.summary import read_meqsum, summary_text
from biogpt.tasks.biomedgpt.vqa import read_vqa, vqa_text
from biogpt.text.ofa import OFATokenizer
from biogpt.training.finetune_ofa import make_batch, train_ofa, training_pairs
from biogpt.training.loss import label_smoothed_nll

from .conftest import SHARED
from .test_ofa_generation import big_vocab_model

BPE = SHARED / "data" / "biomedgpt" / "bpe"
MEQSUM = SHARED / "data" / "biomedgpt" / "tasks" / "MeQSum"


@pytest.fixture(scope="module")
def tok():
    return OFATokenizer.from_pretrained(BPE)


def b64_png(color=(10, 20, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_templates():
    assert vqa_text("Is there a Pneumothorax in the left-lung") == " is there a pneumothorax in the left lung?"
    assert vqa_text("What organ?") == " what organ?"
    assert summary_text("  Dear Doctor,  my <unk> HURTS  ", 3) == ' what is the summary of article " dear doctor, my "?'
    assert (
        nli_text("No fever.", "Patient is afebrile") == ' can text1 " no fever. " imply text2 " patient is afebrile "?'
    )
    assert DECODING["summarize"].kwargs() == dict(beam_size=5, max_len_a=0.0, max_len_b=128, min_len=1,
                                                  normalize_scores=True, len_penalty=0.7, no_repeat_ngram_size=3,
                                                  zero_shot=False)  # fmt: skip


def test_readers(tmp_path):
    img = b64_png()
    (tmp_path / "vqa.tsv").write_text(f"7\t{img}\tIs it normal?\t1.0|!+yes&&0.3|!+no\tobj\n")
    (rec,) = read_vqa(tmp_path / "vqa.tsv")
    assert (rec.id, rec.text, rec.refs) == ("7", " is it normal?", {"yes": 1.0, "no": 0.3})
    assert Image.open(io.BytesIO(rec.image)).size == (8, 8)
    (tmp_path / "cap.tsv").write_text(f"1\t{img}\ta mass&&a lesion\n")
    assert read_captions(tmp_path / "cap.tsv")[0].refs == {"a mass": 1.0, "a lesion": 1.0}
    val = read_meqsum(MEQSUM / "val.tsv")
    assert len(val) == 100 and val[0].text.startswith(' what is the summary of article "')
    (tmp_path / "bad.tsv").write_text("only one column\n")
    with pytest.raises(TaskError, match="bad.tsv:1: 1 tab-separated columns, expected at least 4"):
        read_vqa(tmp_path / "bad.tsv")
    with pytest.raises(TaskError, match="split file not found"):
        read_meqsum(tmp_path / "missing.tsv")


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e f") = 3: P = 3/4, R = 3/5; F(beta 1.2) = 2.44 * P * R / (R + 1.44 * P)
    assert rouge_l("a b c d", ["a c d e f"]) == pytest.approx(2.44 * 0.75 * 0.6 / (0.6 + 1.44 * 0.75))
    assert rouge_l("a b c d", ["x y", "a b c d"]) == pytest.approx(1.0)  # best reference wins
    assert rouge_l("", ["a"]) == 0.0
    # summaries: lower-cased alphanumeric tokens; P = 1, R = 3/5 -> F1 = 0.75
    assert summary_rouge_l("The cat, sat!", "the cat sat on mat") == pytest.approx(0.75)


def test_cider_d():
    refs = [["a large mass in the left lung"], ["no acute cardiopulmonary abnormality is seen"]]
    assert cider_d(["a large mass in the left lung", "no acute cardiopulmonary abnormality is seen"], refs) == (
        pytest.approx(10.0)
    )  # identical: every clipped cosine is 1, no length penalty
    assert cider_d(["zebra", "giraffe"], refs) == 0.0
    partial = cider_d(["a large mass in the right lung", "no acute cardiopulmonary abnormality is seen"], refs)
    assert 5.0 < partial < 10.0


def test_vqa_accuracy_by_hand():
    recs = [Record("1", "", refs={"yes": 1.0}), Record("2", "", refs={"left lung": 1.0, "lung": 0.3}),
            Record("3", "", refs={"no": 1.0})]  # fmt: skip
    got = vqa_accuracy(["yes", "lung", "yes"], recs)
    assert got == {"overall": pytest.approx(1.3 / 3), "closed": 0.5, "open": pytest.approx(0.3), "n": 3}
    with pytest.raises(TaskError, match="2 predictions for 3 questions"):
        vqa_accuracy(["yes", "no"], recs)


def test_label_smoothed_nll_by_hand():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]])
    target = torch.tensor([[0, 1]])  # the second position is padding (id 1): not counted
    lp0 = logits[0, 0] - torch.logsumexp(logits[0, 0], 0)
    eps, eps_i = 0.1, 0.1 / 2
    want = (1 - eps - eps_i) * -lp0[0] + eps_i * -lp0.sum()
    assert label_smoothed_nll(logits, target, eps).item() == pytest.approx(want.item(), abs=1e-6)


def test_generation_paths(tok):
    model = big_vocab_model()
    recs = read_meqsum(MEQSUM / "test.tsv", max_words=20)[:2]  # the tiny model has 64 positions
    dec = Decoding(beam_size=2, max_len_b=6, no_repeat_ngram_size=3)
    got = generate_text(model, tok, recs, dec)
    src = torch.tensor([tok.encode_source(r.text) for r in recs[:1]])
    (hyps,) = beam_search(model, src, beam_size=2, max_len_b=6, no_repeat_ngram_size=3,
                          constraint_range=(4, tok.code_start))  # fmt: skip
    assert got[0] == tok.decode(hyps[0].tokens).strip()
    assert all(t < tok.code_start for h in hyps for t in h.tokens)  # text only: no <code_i>/<bin_i>
    img = base64.b64decode(b64_png())
    vqa = [Record("1", vqa_text("is it normal"), img), Record("2", vqa_text("which organ"), None)]
    answers = ["yes", "no", "left lung"]
    assert all(a in answers for a in rank_answers(model, tok, vqa, answers))
    nli = predict_nli(model, tok, [("no fever", "the patient is afebrile"), ("a rash", "no rash")])
    src = right_pad([tok.encode_source(nli_text("no fever", "the patient is afebrile"))])
    scores = rank_candidates(model, src, [tok.encode(" " + a) for a in NLI_ANSWERS],
                             decoder_prompts=[src[0, :-1].tolist()])  # fmt: skip
    assert nli[0] == NLI_ANSWERS[int(scores.argmax())] and nli[1] in NLI_ANSWERS


def test_teacher_forcing_batch(tok):
    """The fine-tuning batch: decoder inputs <s> + the lower-cased target's ids, targets the same ids + </s>."""
    recs = [Record("1", " q", refs={"A Chest": 1.0}), Record("2", " longer question", refs={"no": 1.0})]
    src, prev, target = make_batch(tok, training_pairs(tok, recs, 1024))
    a, b = tok.encode(" a chest"), tok.encode(" no")
    assert prev.tolist() == [[0, *a], [0, *b] + [1] * (len(a) - len(b))]
    assert target.tolist() == [[*a, 2], [*b, 2] + [1] * (len(a) - len(b))]
    assert src[0].tolist()[: len(tok.encode_source(" q"))] == tok.encode_source(" q")
    assert not math.isnan(label_smoothed_nll(big_vocab_model()(src, prev), target).item())


def test_finetune_lowers_the_loss(tok, tmp_path):
    """A few updates of the training loop on two records: the label-smoothed loss per token falls."""
    torch.manual_seed(0)
    model = OFA(OFAConfig(d_model=32, encoder_layers=1, decoder_layers=1, n_head=4, d_ffn=48, resnet_layers=(1, 1, 1),
                          max_positions=64, attention_dropout=0.0)).eval()  # fmt: skip
    recs = [Record("1", summary_text("my head hurts"), refs={"what causes headaches?": 1.0}),
            Record("2", summary_text("rash on arm"), refs={"what treats a rash?": 1.0})]  # fmt: skip
    log = train_ofa(model, tok, recs, tmp_path / "run", 12, lr=2e-2, warmup_updates=2, batch_size=2, update_freq=1)
    losses = [e["loss"] for e in log]
    assert len(losses) == 12 and losses[-1] < 0.6 * losses[0], losses
    assert not model.training
    with pytest.raises(TrainingError, match="max_updates must be an integer >= 1, got 0"):
        train_ofa(model, tok, recs, tmp_path / "none", 0)


def _brute_force_scores(model, tok, record: Record, answers: list[str]) -> list[float]:
    """Each answer's "allcand" score for one record alone, by a full forward pass per answer: the sum over its
    tokens and </s> of the log-softmax of the logits restricted to what the answers allow after that prefix."""
    cands = [tok.encode(" " + a) for a in answers]
    src = torch.tensor([tok.encode_source(record.text)])
    img = None if record.image is None else patch_images([record.image], model.config.image_size)
    out = []
    for c in cands:
        with torch.no_grad():
            logits = model(src, torch.tensor([[0, *c]]), img, None if img is None else torch.tensor([True]))[0]
        total = 0.0
        for t, target in enumerate([*c, 2]):
            prefix = c[:t]
            allowed = {d[t] for d in cands if len(d) > t and d[:t] == prefix} | ({2} if prefix in cands else set())
            masked = torch.full_like(logits[t], -math.inf)
            masked[sorted(allowed)] = logits[t, sorted(allowed)]
            total += torch.log_softmax(masked.double(), -1)[target].item()
        out.append(total)
    return out


def test_rank_answers_is_the_argmax_of_every_answer_scored_alone(tok):
    """rank_answers (batched, right-padded, images masked per row, one trie) picks, for every record, the answer
    whose brute-force score is highest."""
    model = big_vocab_model()
    img = base64.b64decode(b64_png())
    records = [Record("1", vqa_text("is it normal"), img), Record("2", vqa_text("which organ is enlarged here"), None),
               Record("3", vqa_text("where"), base64.b64decode(b64_png((200, 10, 90)))), Record("4", vqa_text("what"))]
    answers = ["yes", "no", "left lung", "left lower lobe", "heart", "liver"]
    got = rank_answers(model, tok, records, answers, batch_size=3)
    want = []
    for r in records:
        scores = _brute_force_scores(model, tok, r, answers)
        assert sorted(scores)[-1] - sorted(scores)[-2] > 1e-6  # no tie to break
        want.append(answers[max(range(len(answers)), key=scores.__getitem__)])
    assert got == want
    assert len(set(want)) > 1  # not one answer for every record
