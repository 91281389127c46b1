"""Pre-training and fine-tuning on tiny configs (CPU, seconds each)."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from biogpt.tasks.texts import task_abstracts
from biogpt.training import TrainConfig, inverse_sqrt_lr, pretrain
from biogpt.training.corpus import build_corpus

from .conftest import TASKS, VOCABS

NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    with open(d / "docs.jsonl", "w") as f:
        for i, a in enumerate(list(task_abstracts(TASKS))[:60]):
            f.write(json.dumps({"pmid": str(i), "title": "", "abstract": a}) + "\n")
    build_corpus([d / "docs.jsonl"], VOCABS["base"], d / "out", validation_per_mille=100, progress=False)
    return d / "out"


def cfg(out, **kw):
    base = dict(out_dir=str(out), lr=2e-3, warmup_updates=3, max_updates=12, tokens_per_update=1024,
                micro_batch_tokens=256, eval_every=6, save_every=4, seed=3)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_schedule():
    c = TrainConfig(out_dir="x", lr=1e-3, warmup_updates=10, warmup_init_lr=1e-7)
    assert inverse_sqrt_lr(c, 0) == 1e-7 and abs(inverse_sqrt_lr(c, 10) - 1e-3) < 1e-12
    assert abs(inverse_sqrt_lr(c, 40) - 1e-3 * 0.5) < 1e-12


def test_loss_falls_and_checkpoint_loads(corpus, tmp_path):
    log = pretrain(corpus, VOCABS["base"], cfg(tmp_path / "run", max_updates=25), preset="tiny", block=64)
    losses = [e["loss"] for e in log]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert "valid_loss" in log[5] and log[5]["valid_ppl"] > 1
    from biogpt import load as load_pretrained
    from biogpt.generation import generate

    model, tok = load_pretrained(tmp_path / "run" / "last")
    out = generate(model, [tok.encode("The patients")], max_new_tokens=5).sequences
    assert out.shape[1] == 3 + 5


def test_resume_gives_the_same_losses(corpus, tmp_path):
    full = pretrain(corpus, VOCABS["base"], cfg(tmp_path / "a"), preset="tiny", block=64)
    pretrain(corpus, VOCABS["base"], cfg(tmp_path / "b", max_updates=8), preset="tiny", block=64)
    resumed = pretrain(corpus, VOCABS["base"], cfg(tmp_path / "b"), preset="tiny", block=64)
    assert [e["loss"] for e in resumed] == [e["loss"] for e in full]


def _ddp_worker(rank, world, port, corpus, out, fsdp):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    pretrain(corpus, VOCABS["base"], cfg(out, max_updates=4, save_every=4, fsdp=fsdp), preset="tiny", block=64,
             model_overrides=NO_DROPOUT)  # fmt: skip
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_equal_gradient_accumulation(corpus, tmp_path, fsdp):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, corpus, tmp_path / "ddp", fsdp), nprocs=2, join=True)
    single = pretrain(corpus, VOCABS["base"], cfg(tmp_path / "one", max_updates=4, save_every=4), preset="tiny",
                      block=64, model_overrides=NO_DROPOUT)  # fmt: skip
    a = torch.load(tmp_path / "ddp" / "last" / "trainer.pt", weights_only=False)
    b = torch.load(tmp_path / "one" / "last" / "trainer.pt", weights_only=False)
    for k in b["model"]:
        x, y = a["model"][k], b["model"][k]
        if k.endswith("qkv.bias"):
            # the key bias cannot change any output (softmax is invariant to it): its gradient is float noise,
            # which Adam normalises into lr-sized steps; compare the query and value biases only
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d :]]), torch.cat([y[:d], y[2 * d :]])
        assert (x - y).abs().max() <= 1e-5, k
    assert [round(e["loss"], 5) for e in a["log"]] == [round(e["loss"], 5) for e in single]


def test_finetune_yields_a_checkpoint_eval_accepts(tmp_path, capsys):
    from biogpt import BioGPT, BioGPTConfig, Tokenizer
    from biogpt import load as load_pretrained
    from biogpt.checkpoints import save_hf
    from biogpt.cli import main
    from biogpt.training import finetune

    m = BioGPT(BioGPTConfig(vocab_size=42384, n_layer=1, d_model=32, n_head=2, d_ffn=64))
    m.init_weights(seed=0)
    save_hf(m, Tokenizer.from_pretrained(VOCABS["base"]), tmp_path / "pre")
    final = finetune("hoc", tmp_path / "pre", TASKS, tmp_path / "ft", max_updates=2, tokens_per_update=2048,
                     micro_batch_tokens=1024, average_last=2)  # fmt: skip
    model, tok = load_pretrained(final)
    assert model.config.num_prompt_tokens == 1 and tok.prompt_ids == [42384]
    capsys.readouterr()  # drop the training log
    assert main(["eval", "hoc", "--model", str(final), "--data", str(TASKS), "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_loss_equals_full_logits(dtype, monkeypatch):
    from biogpt.models.biogpt import PAD_ID, BioGPT, BioGPTConfig
    from biogpt.training.loss import _LinearCrossEntropy, lm_loss

    monkeypatch.setattr(_LinearCrossEntropy, "GROUP_ROWS", 24)  # several bf16 groups, a short last chunk
    model = BioGPT(BioGPTConfig(vocab_size=300, n_layer=2, d_model=32, n_head=4, d_ffn=64, max_positions=64))
    model.init_weights(seed=0)
    model.eval()  # no dropout: both passes see the same network
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, 300, (3, 21), generator=g)
    x[0, :5] = PAD_ID  # padded positions are ignored
    y = torch.roll(x, -1, 1)
    y[0, :4] = PAD_ID
    losses, grads = [], []
    for fused in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = lm_loss(model, x, y, fused=fused, chunk=10)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert abs(losses[0] - losses[1]) <= tol * abs(losses[1])
    assert (grads[0] - grads[1]).abs().max() <= tol * grads[1].abs().max()
