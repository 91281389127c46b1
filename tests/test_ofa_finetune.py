"""BiomedGPT (OFA) fine-tuning on MeQSum through the shared training loop (training/finetune_ofa.py): a tiny
random model, a few updates on the first 16 real MeQSum training rows, OFA's label-smoothed loss against a
hand-written reference, and the saved directory reloading to the trained model's logits."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import biogpt
from biogpt.checkpoints.ofa import save_ofa
from biogpt.errors import TrainingError
from biogpt.models.ofa import PAD_ID
from biogpt.tasks.biomedgpt.summary import read_meqsum
from biogpt.text.ofa import OFATokenizer
from biogpt.training.finetune_ofa import make_batch, seq2seq_batches, train_ofa, training_pairs
from biogpt.training.loop import inverse_sqrt_lr
from biogpt.training.loss import label_smoothed_nll
from biogpt.training.runs import latest_checkpoint

from .test_ofa_cli import BPE, MEQSUM, run, tiny_ofa

TRAIN = MEQSUM / "train.tsv"
SETTINGS = dict(lr=3e-3, warmup_updates=2, batch_size=4, update_freq=2, seed=1)


@pytest.fixture(scope="module")
def tok():
    return OFATokenizer.from_pretrained(BPE)


@pytest.fixture(scope="module")
def records():
    return read_meqsum(TRAIN)[:16]


def fairseq_label_smoothed(logits, target, eps):
    """fairseq's label_smoothed_nll_loss written out: eps_i = eps / (V - 1), loss = (1 - eps - eps_i) * nll +
    eps_i * sum_v(-log p_v), summed over the non-pad targets."""
    V = logits.size(-1)
    total = 0.0
    for row, t in zip(logits.double().reshape(-1, V), target.reshape(-1).tolist()):
        if t == PAD_ID:
            continue
        lp = torch.log_softmax(row, -1)
        eps_i = eps / (V - 1)
        total += float((1 - eps - eps_i) * -lp[t] + eps_i * -lp.sum())
    return total


def test_label_smoothed_loss_is_fairseqs(tok, records):
    model = tiny_ofa()
    src, prev, target = make_batch(tok, training_pairs(tok, records[:3], model.config.max_positions))
    with torch.no_grad():
        logits = model(src, prev)
    for eps in (0.0, 0.1, 0.3):
        got = float(label_smoothed_nll(logits, target, eps))
        assert got == pytest.approx(fairseq_label_smoothed(logits, target, eps), rel=1e-5)
        # torch's label smoothing spreads eps over all V classes: the same loss with eps * V / (V - 1)
        V = logits.size(-1)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID, reduction="sum",
                             label_smoothing=eps * V / (V - 1))  # fmt: skip
        assert got == pytest.approx(float(ce), rel=1e-5)


def test_batches_are_the_teacher_forcing_batches(tok, records):
    pairs = training_pairs(tok, records, 1024)
    targets = [tok.encode(" " + next(iter(r.refs)).lower()) for r in records[:5]]
    want = (
        [tok.encode_source(r.text) for r in records[:5]],  # source: <s> + instruction + </s>
        [[tok.bos_token_id, *t] for t in targets],  # decoder inputs
        [[*t, tok.eos_token_id] for t in targets],  # targets
    )
    for got, rows in zip(make_batch(tok, pairs[:5]), want, strict=True):
        width = max(map(len, rows))
        assert got.tolist() == [r + [PAD_ID] * (width - len(r)) for r in rows]
    position = {"epoch": 0, "index": 0}
    stream = seq2seq_batches(tok, pairs, 4, 1, position)
    seen = [stream() for _ in range(5)]  # 4 micro-batches per epoch, then the next epoch's shuffle
    assert position == {"epoch": 1, "index": 1}
    firsts = sorted(int(b[0].ne(PAD_ID).sum()) for b in seen[:4])
    assert sum(firsts) == sum(len(s) for s, _ in pairs)  # every example once per epoch
    again = seq2seq_batches(tok, pairs, 4, 1, {"epoch": 1, "index": 0})()
    assert all(torch.equal(a, b) for a, b in zip(again, seen[4]))


def test_finetune_through_the_loop(tok, records, tmp_path):
    model = tiny_ofa()
    first = seq2seq_batches(tok, training_pairs(tok, records, 1024), 4, 1, {"epoch": 0, "index": 0})
    batches = [first(), first()]
    with torch.no_grad():
        want0 = sum(float(label_smoothed_nll(model(s, p), t)) for s, p, t in batches)
    n0 = sum(int(t.ne(PAD_ID).sum()) for _, _, t in batches)
    log = train_ofa(model, tok, records, tmp_path / "run", 8, **SETTINGS)
    losses = [e["loss"] for e in log]
    assert len(log) == 8 and log[0]["loss"] == pytest.approx(want0 / n0, rel=1e-5)
    assert log[1]["lr"] == pytest.approx(3e-3) and log[0]["lr"] == pytest.approx(inverse_sqrt_lr_1())
    assert losses[-1] < losses[0] - 0.5 and losses == sorted(losses, reverse=True), losses
    assert not model.training
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and json.loads((ckpt / "config.json").read_text())["model_type"] == "biomedgpt"
    save_ofa(model, tok, tmp_path / "final")
    src, prev, _ = batches[0]
    for d in (tmp_path / "final", ckpt):
        back, back_tok = biogpt.load(d)
        assert back_tok.encode(" chest pain") == tok.encode(" chest pain")
        with torch.no_grad():
            assert torch.equal(back(src, prev), model(src, prev))


def inverse_sqrt_lr_1() -> float:
    from biogpt.training.loop import TrainConfig

    return inverse_sqrt_lr(TrainConfig(out_dir=".", lr=3e-3, warmup_updates=2), 1)


def test_cli_finetune_and_resume(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    save_ofa(tiny_ofa(), OFATokenizer.from_pretrained(BPE), model_dir)
    argv = ["finetune", "meqsum", "--model", model_dir, "--output", tmp_path / "run", "--data", TRAIN,
            "--limit", 16, "--max-updates", 2, "--lr", 1e-3, "--warmup", 1, "--batch-size", 4, "--update-freq", 2,
            "--dtype", "bf16"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0 and "meqsum: 16 training examples" in out and "final checkpoint:" in out
    final = tmp_path / "run" / "final"
    trained, _ = biogpt.load(final)
    start, _ = biogpt.load(model_dir)
    a, b = trained.state_dict(), start.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
    code, out, _ = run(argv[:-6] + ["--max-updates", 3, "--batch-size", 4, "--update-freq", 2, "--dtype", "bf16"],
                       capsys)  # fmt: skip
    assert code == 0 and "resumed from" in out
    code, _, err = run(argv[:-2] + ["--dtype", "fp32"], capsys)  # same folder, other settings
    assert code == 2 and "dtype: 'bf16' in the checkpoint, 'fp32' now" in err
    code, _, err = run(["finetune", "meqsum", "--model", "demo", "--output", tmp_path / "x"], capsys)
    assert code == 2 and "demo is not a BiomedGPT (OFA) model" in err


def test_errors(tok, records, tmp_path):
    with pytest.raises(TrainingError, match="label smoothing must be in"):
        train_ofa(tiny_ofa(), tok, records, tmp_path, 1, epsilon=1.0)
    with pytest.raises(TrainingError, match="no training examples"):
        train_ofa(tiny_ofa(), tok, [], tmp_path, 1)


def test_resumed_finetune_equals_an_uninterrupted_one(tmp_path, capsys):
    """2 updates, then resumed to 3, give the weights of 3 updates run at once (data order, optimizer state,
    schedule and random state all carried by the checkpoint)."""
    model_dir = tmp_path / "tiny"
    save_ofa(tiny_ofa(), OFATokenizer.from_pretrained(BPE), model_dir)

    def argv(out, updates):
        return ["finetune", "meqsum", "--model", model_dir, "--output", tmp_path / out, "--data", TRAIN,
                "--limit", 16, "--max-updates", updates, "--lr", 1e-3, "--warmup", 1, "--batch-size", 4,
                "--update-freq", 2]  # fmt: skip

    assert run(argv("whole", 3), capsys)[0] == 0
    assert run(argv("parts", 2), capsys)[0] == 0
    code, out, _ = run(argv("parts", 3), capsys)
    assert code == 0 and "resumed from" in out
    whole = biogpt.load(tmp_path / "whole" / "final")[0].state_dict()
    parts = biogpt.load(tmp_path / "parts" / "final")[0].state_dict()
    start = biogpt.load(model_dir)[0].state_dict()
    assert list(whole) == list(parts)
    assert not all(torch.equal(whole[k], start[k]) for k in whole)  # three updates changed the weights
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], rtol=0, atol=0, msg=k)
