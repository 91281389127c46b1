"""Pre-training and fine-tuning on tiny configs (CPU, seconds each)."""

import json
import os
import re
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from biogpt.checkpoints.io import read_tensors
from biogpt.errors import CheckpointError, CorpusError, TrainingError
from biogpt.tasks.texts import task_abstracts
from biogpt.training import TrainConfig, inverse_sqrt_lr, pretrain
from biogpt.training import data as data_module
from biogpt.training.corpus import build_corpus, load_shards
from biogpt.training.data import BlockData, lm_batches, pair_batches, rank_batches
from biogpt.training.dist import backend_for, device_for, init
from biogpt.training.finetune import run_length
from biogpt.training.runs import latest_checkpoint

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
    a = read_tensors(tmp_path / "ddp" / "last" / "trainer.pt")
    b = read_tensors(tmp_path / "one" / "last" / "trainer.pt")
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

    # the same folder with another setting is not resumed; overwriting starts again and replaces final/
    with pytest.raises(TrainingError, match=re.escape("target_only: False in the checkpoint, True now")):
        finetune("hoc", tmp_path / "pre", TASKS, tmp_path / "ft", max_updates=2, tokens_per_update=2048,
                 micro_batch_tokens=1024, average_last=2, target_only=True)  # fmt: skip
    (tmp_path / "ft" / "final" / "stale").write_text("from the first run")
    finetune("hoc", tmp_path / "pre", TASKS, tmp_path / "ft", max_updates=3, tokens_per_update=2048,
             micro_batch_tokens=1024, average_last=3, save_every=2, target_only=True,
             on_existing="overwrite")  # fmt: skip
    # checkpoints every 2 updates and at the end (HoC's default for 3 updates would be every update)
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["final", "last", "update_0000002", "update_0000003"]
    assert not (tmp_path / "ft" / "final" / "stale").exists()
    assert read_tensors(tmp_path / "ft" / "last" / "trainer.pt")["settings"]["target_only"] is True


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


# ---------------------------------------------------------------------------------------------------
# devices and ranks


@pytest.mark.parametrize(
    "requested, cuda, local_rank, expected",
    [
        ("cpu", 2, None, "cpu"),
        ("cpu", 2, "1", "cpu"),  # --device cpu on a GPU machine: CPU, and so gloo
        ("cuda", 2, None, "cuda:0"),
        ("cuda", 2, "1", "cuda:1"),  # torchrun: each rank its own GPU
        ("cuda:1", 2, None, "cuda:1"),
        ("cuda", 0, None, "CUDA is not available; use --device cpu"),
        ("cuda", 1, "1", "LOCAL_RANK 1 but this machine has 1 CUDA device(s)"),
        ("cuda:1", 2, "0", "under torchrun: pass --device cuda"),
        ("cuda:2", 2, None, "this machine has 2 CUDA device(s)"),
        ("mps", 2, None, "is not supported for training; use cpu or cuda"),
        ("gpu", 2, None, "unknown device 'gpu'"),
    ],
)
def test_device_for(requested, cuda, local_rank, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    if expected.startswith(("cpu", "cuda:")):
        dev = device_for(requested)
        assert dev == torch.device(expected)
        assert backend_for(dev) == ("nccl" if dev.type == "cuda" else "gloo")
    else:
        with pytest.raises(TrainingError, match=re.escape(expected)):
            device_for(requested)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_training_on_cuda_without_cuda_is_one_error(corpus, tmp_path):
    from biogpt.training import finetune

    with pytest.raises(TrainingError, match=re.escape("--device cuda: CUDA is not available; use --device cpu")):
        pretrain(corpus, VOCABS["base"], cfg(tmp_path / "run"), device="cuda")
    with pytest.raises(TrainingError, match=re.escape("CUDA is not available; use --device cpu")):
        finetune("hoc", tmp_path / "no-model", TASKS, tmp_path / "ft", device="cuda")
    assert list(tmp_path.iterdir()) == []


class CountingBlocks(BlockData):
    """Counts the blocks read, to show a rank reads only its own."""

    reads = 0

    def get(self, k):
        self.reads += 1
        return super().get(k)


def _pairs(n=37, seed=0):
    """(input, target) id lists of 3..40 tokens: a fine-tuning set in miniature."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        t = int(rng.integers(3, 41))
        ids = rng.integers(4, 1000, t).tolist()
        pairs.append((ids, ids[1:] + [2]))
    return pairs


def _rank_streams(corpus, rank, world, n):
    """n micro-batches of pre-training blocks and of padded pairs for one rank, with the blocks and pair
    batches it built; enough to cross an epoch boundary of both streams."""
    data = CountingBlocks(load_shards(corpus, "train"), 64, 3)
    lm_position, pair_position = {"epoch": 0, "block": 0}, {"epoch": 0, "block": 0}
    lm = rank_batches(lm_batches(data, 2, lm_position), rank, world)
    built = []
    real = data_module.pad_batch

    def counting_pad(pairs, idx):
        built.append(list(idx))
        return real(pairs, idx)

    data_module.pad_batch = counting_pad  # the streams look it up when they yield an entry
    try:
        pairs = rank_batches(pair_batches(_pairs(), 120, 5, pair_position), rank, world)
        out = {"lm": [lm() for _ in range(n)], "pairs": [pairs() for _ in range(n)]}
    finally:
        data_module.pad_batch = real
    return {**out, "blocks_read": data.reads, "pair_batches_built": len(built), "n_blocks": len(data),
            "lm_position": lm_position, "pair_position": pair_position}  # fmt: skip


def _rank_worker(rank, world, port, corpus, out, n):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dev = device_for("cpu")
    got = init(dev)
    record = {"device": str(dev), "backend": torch.distributed.get_backend(), "rank_world": got}
    record.update(_rank_streams(corpus, rank, world, n))
    torch.save(record, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_two_ranks_take_their_own_device_and_their_own_batches(corpus, tmp_path):
    n = 80  # per rank: the block stream has ~115 micro-batches an epoch, the pair stream ~10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_worker, args=(2, port, corpus, tmp_path, n), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    one = _rank_streams(corpus, 0, 1, 2 * n)
    assert one["n_blocks"] < 4 * n  # the block stream went past an epoch
    for r, got in enumerate(ranks):
        assert (got["device"], got["backend"], got["rank_world"]) == ("cpu", "gloo", (r, 2))
        assert got["blocks_read"] == 2 * n  # its own n micro-batches of 2 blocks, no other rank's
        assert got["pair_batches_built"] == n
        assert (got["lm_position"], got["pair_position"]) == (one["lm_position"], one["pair_position"])
    for stream in ("lm", "pairs"):
        # rank 0 takes micro-batches 0, 2, 4, ... of the one-process stream, rank 1 takes 1, 3, 5, ...
        for r in range(2):
            got, expected = ranks[r][stream], one[stream][r::2]
            assert _same([x for x, _ in got], [x for x, _ in expected]), (stream, r)
            assert _same([y for _, y in got], [y for _, y in expected]), (stream, r)


def test_rank_batches_deal_out_three_ways():
    pairs = _pairs()
    one = [f() for f, _ in zip(pair_batches(pairs, 120, 5, {"epoch": 0, "block": 0}), range(30))]
    for world in (2, 3):
        for rank in range(world):
            next_batch = rank_batches(pair_batches(pairs, 120, 5, {"epoch": 0, "block": 0}), rank, world)
            got = [next_batch() for _ in range(30 // world)]
            assert _same([x for x, _ in got], [x for x, _ in one[rank::world]]), (world, rank)


def test_cuda_random_state_is_saved_and_restored_per_rank(monkeypatch):
    """The plumbing of a GPU run's random states, with the CUDA calls recorded (no GPU here)."""
    from biogpt.training import runs

    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state.tolist(), device)))
    saved = [runs.rng_state(torch.device("cuda", r)) for r in range(2)]  # as gathered from two ranks
    assert [sorted(s) for s in saved] == [["cpu", "cuda"]] * 2
    expected_cpu = saved[1]["cpu"].clone()
    torch.manual_seed(123)  # move the CPU generator away from the saved state
    runs.restore_rng(saved, 1, torch.device("cuda", 1))
    assert restored == [([1, 1, 1, 1], torch.device("cuda", 1))]  # rank 1 gets rank 1's GPU state, on its GPU
    assert torch.equal(torch.get_rng_state(), expected_cpu)
    runs.restore_rng([expected_cpu], 0, torch.device("cuda", 0))  # an older checkpoint: the CPU state only
    runs.restore_rng(saved, 2, torch.device("cuda", 2))  # a rank the run did not have: keeps its seed
    assert len(restored) == 1


# ---------------------------------------------------------------------------------------------------
# bad settings, and what an existing run directory allows


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_updates", 0, "max_updates must be an integer >= 1, got 0"),
        ("max_updates", -1, "max_updates must be an integer >= 1, got -1"),
        ("save_every", 0, "save_every must be an integer >= 1, got 0"),
        ("eval_every", 0, "eval_every must be an integer >= 1, got 0"),
        ("micro_batch_tokens", 0, "micro_batch_tokens must be an integer >= 1, got 0"),
        ("tokens_per_update", -5, "tokens_per_update must be an integer >= 1, got -5"),
        ("keep_last", 0, "keep_last must be an integer >= 1, got 0"),
        ("warmup_updates", -1, "warmup_updates must be an integer >= 0, got -1"),
        ("max_updates", 2.5, "max_updates must be an integer >= 1, got 2.5"),
        ("lr", 0.0, "lr must be a number > 0, got 0.0"),
        ("lr", float("nan"), "lr must be a number > 0, got nan"),
        ("clip_norm", -1.0, "clip_norm must be a number >= 0, got -1.0"),
        ("betas", (0.9, 1.0), "betas must be two numbers in [0, 1), got (0.9, 1.0)"),
        ("dtype", "fp16", "dtype must be one of fp32, bf16, got 'fp16'"),
    ],
)
def test_train_config_refuses_bad_values(field, value, message):
    with pytest.raises(TrainingError, match=re.escape(message)):
        TrainConfig(out_dir="x", **{field: value})


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(epochs=0), "epochs must be >= 1, got 0"),
        (dict(epochs=-1), "epochs must be >= 1, got -1"),
        (dict(max_updates=0), "max_updates must be >= 1, got 0"),
        (dict(max_updates=-1), "max_updates must be >= 1, got -1"),
        (dict(average_last=0), "average_last must be >= 1, got 0"),
        (dict(save_every=0), "save_every must be >= 1, got 0"),
        (dict(tokens_per_update=0), "tokens_per_update must be an integer >= 1, got 0"),
        (dict(micro_batch_tokens=0), "micro_batch_tokens must be an integer >= 1, got 0"),
        (dict(lr=-1e-5), "lr must be a number > 0, got -1e-05"),
        (dict(on_existing="replace"), "on_existing must be one of resume, overwrite, got 'replace'"),
    ],
)
def test_finetune_refuses_bad_values_before_loading_anything(kw, message, tmp_path):
    from biogpt.training import finetune

    with pytest.raises(TrainingError, match=re.escape(message)):  # the model does not exist: never read
        finetune("hoc", tmp_path / "no-model", TASKS, tmp_path / "ft", **kw)
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize(
    "task, epochs, max_updates, expected",
    [
        ("hoc", None, None, (20000, 1000)),  # the recipe counts updates; 20 checkpoints over the run
        ("hoc", 2, None, (100, 50)),  # epochs given beat the recipe's updates
        ("hoc", None, 40, (40, 2)),
        ("bc5cdr", None, None, (700, 7)),  # 100 epochs of 7 updates, a checkpoint each epoch
        ("bc5cdr", 3, None, (21, 7)),
        ("bc5cdr", 3, 5, (5, 7)),  # max_updates beats epochs
    ],
)
def test_finetune_run_length(task, epochs, max_updates, expected):
    updates_per_epoch = 50 if task == "hoc" else 7
    assert run_length(task, epochs, max_updates, updates_per_epoch) == expected


@pytest.fixture(scope="module")
def short_run(corpus, tmp_path_factory):
    """A finished 4-update tiny run (checkpoints at 2 and 4); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("short") / "run"
    log = pretrain(corpus, VOCABS["base"], cfg(out, max_updates=4, save_every=2), preset="tiny", block=64)
    return out, log


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def _listing(d):
    return sorted((str(p.relative_to(d)), p.stat().st_size if p.is_file() else 0) for p in d.rglob("*"))


def test_trainer_state_round_trips_with_weights_only(short_run):
    out, log = short_run
    state = read_tensors(out / "last" / "trainer.pt")  # torch.load(weights_only=True)
    assert state["step"] == 4 and state["log"] == log
    assert state["config"]["betas"] == (0.9, 0.98) and isinstance(state["config"]["betas"], tuple)
    assert state["position"] == [{"epoch": 0, "block": 64}]  # 4 updates x 4 micro-batches x 4 blocks
    rng = state["rng"][0]
    assert set(rng) == {"cpu"} and rng["cpu"].dtype == torch.uint8
    assert state["settings"]["preset"] == "tiny" and state["settings"]["block"] == 64
    assert state["settings"]["model"]["d_model"] == 64 and "max_updates" not in state["settings"]


class Payload:
    """Runs `_mark` when unpickled, as a booby-trapped checkpoint would run anything."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _mark, (self.path,)


def _mark(path):
    with open(path, "w") as f:
        f.write("executed")


def test_trainer_state_with_an_object_is_refused_not_run(short_run, corpus, tmp_path):
    out = _copy(short_run[0], tmp_path)
    marker = tmp_path / "executed"
    state = read_tensors(out / "last" / "trainer.pt")
    # written aside and renamed: the state's tensors are memory-mapped from the old file
    torch.save({**state, "extra": Payload(str(marker))}, out / "last" / "trainer.new")
    os.replace(out / "last" / "trainer.new", out / "last" / "trainer.pt")
    with pytest.raises(CheckpointError, match="other than tensors and plain values"):
        pretrain(corpus, VOCABS["base"], cfg(out, max_updates=6, save_every=2), preset="tiny", block=64)
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(cfg=dict(lr=1e-3)), "lr: 0.002 in the checkpoint, 0.001 now"),
        (dict(cfg=dict(seed=4)), "seed: 3 in the checkpoint, 4 now"),
        (dict(cfg=dict(tokens_per_update=2048)), "tokens_per_update: 1024 in the checkpoint, 2048 now"),
        (dict(cfg=dict(dtype="bf16")), "dtype: 'fp32' in the checkpoint, 'bf16' now"),
        (dict(preset="small"), "model.d_model: 64 in the checkpoint, 256 now"),
        (dict(preset="small"), "preset: 'tiny' in the checkpoint, 'small' now"),
        (dict(block=32), "block: 64 in the checkpoint, 32 now"),
        (dict(model_overrides=dict(dropout=0.0)), "model.dropout: 0.1 in the checkpoint, 0.0 now"),
    ],
)
def test_resuming_with_other_settings_names_them(short_run, corpus, tmp_path, change, message):
    out = _copy(short_run[0], tmp_path)
    before = _listing(out)
    kw = dict(preset="tiny", block=64) | {k: v for k, v in change.items() if k != "cfg"}
    with pytest.raises(TrainingError, match=re.escape(message)) as e:
        pretrain(corpus, VOCABS["base"], cfg(out, max_updates=6, save_every=2, **change.get("cfg", {})), **kw)
    assert "on_existing='overwrite' (--overwrite)" in str(e.value)
    assert _listing(out) == before  # nothing touched


def test_overwrite_starts_again_and_keeps_other_files(short_run, corpus, tmp_path):
    out = _copy(short_run[0], tmp_path)
    (out / "notes.txt").write_text("mine")
    log = pretrain(corpus, VOCABS["base"], cfg(out, lr=1e-3, max_updates=2, save_every=2), preset="tiny", block=64,
                   on_existing="overwrite")  # fmt: skip
    assert [e["update"] for e in log] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["last", "notes.txt", "update_0000002"]
    assert read_tensors(out / "last" / "trainer.pt")["settings"]["lr"] == 1e-3
    with pytest.raises(TrainingError, match=re.escape("on_existing must be one of resume, overwrite, got 'yes'")):
        pretrain(corpus, VOCABS["base"], cfg(out), preset="tiny", block=64, on_existing="yes")


def test_interrupted_checkpoint_leftovers_are_cleaned_and_the_last_commit_is_found(short_run, corpus, tmp_path):
    out = _copy(short_run[0], tmp_path)
    (out / ".update_0000006.tmp").mkdir()  # a checkpoint interrupted while being written
    (out / ".update_0000006.tmp" / "trainer.pt").write_bytes(b"half")
    (out / "last").unlink()  # interrupted between writing update_0000004 and pointing `last` at it
    assert latest_checkpoint(out) == out / "update_0000004"
    log = pretrain(corpus, VOCABS["base"], cfg(out, max_updates=5, save_every=2), preset="tiny", block=64)
    assert [e["update"] for e in log] == [1, 2, 3, 4, 5] and log[:4] == short_run[1]
    assert sorted(p.name for p in out.iterdir()) == ["last", "update_0000002", "update_0000004", "update_0000005"]
    assert latest_checkpoint(out) == out / "last" and (out / "last").resolve().name == "update_0000005"


def _vocab_copy(tmp_path, swap):
    """The base vocabulary's fairseq files; with swap, two dictionary lines exchanged (same size, other ids)."""
    d = tmp_path / ("swapped" if swap else "same")
    d.mkdir()
    shutil.copy(VOCABS["base"] / "bpecodes", d / "bpecodes")
    lines = (VOCABS["base"] / "dict.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    if swap:
        lines[0], lines[1] = lines[1], lines[0]
    (d / "dict.txt").write_text("".join(lines), encoding="utf-8")
    return d


BUILT_WITH = r"was built with the vocabulary .*biogpt \(42384 tokens, sha256 [0-9a-f]{12}\)"


@pytest.mark.parametrize(
    "vocab, message",
    [
        ("large", BUILT_WITH + r", but --vocab .*biogpt-large has 57717 tokens"),
        ("swapped", BUILT_WITH + r", but --vocab .*swapped has 42384 tokens"),
    ],
)
def test_pretrain_refuses_a_vocabulary_the_corpus_was_not_built_with(corpus, tmp_path, vocab, message):
    vocab_dir = VOCABS["large"] if vocab == "large" else _vocab_copy(tmp_path, swap=True)
    with pytest.raises(TrainingError, match=message):
        pretrain(corpus, vocab_dir, cfg(tmp_path / "run"), preset="tiny", block=64)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(preset="huge"), "unknown preset 'huge'; choose one of tiny, small, demo, base, large"),
        (dict(block=257), "block must be in 1..256 (the tiny model's positions), got 257"),
        (dict(block=0), "block must be in 1..256 (the tiny model's positions), got 0"),
    ],
)
def test_pretrain_refuses_bad_model_settings(corpus, tmp_path, kw, message):
    with pytest.raises(TrainingError, match=re.escape(message)):
        pretrain(corpus, VOCABS["base"], cfg(tmp_path / "run"), **kw)
    assert not (tmp_path / "run").exists()


def test_a_corpus_shorter_than_a_block_is_one_error():
    with pytest.raises(CorpusError, match=re.escape("the corpus is shorter than one block of 17 tokens")):
        BlockData([np.arange(10, dtype=np.uint16), np.arange(16, dtype=np.uint16)], 16, 0)


def test_pretrain_refuses_an_unfinished_corpus(tmp_path):
    inputs = []
    for n in range(2):
        path = tmp_path / f"docs{n}.jsonl"
        rows = [{"pmid": f"{n}-{i}", "title": "", "abstract": a} for i, a in enumerate(list(task_abstracts(TASKS))[:5])]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        inputs.append(path)
    build_corpus(inputs, VOCABS["base"], tmp_path / "corpus", progress=False, _stop_after_inputs=1)
    with pytest.raises(TrainingError, match=re.escape("the corpus build is unfinished (1 of 2 inputs)")):
        pretrain(tmp_path / "corpus", VOCABS["base"], cfg(tmp_path / "run"), block=16)
