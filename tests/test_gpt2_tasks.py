"""A GPT-2 family model (BioMedLM) through `biogpt eval`, `biogpt extract` and `biogpt finetune`: PubMedQA in the
generative format, checked against transformers.GPT2LMHeadModel on tiny random weights."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from biogpt import load as load_pretrained
from biogpt.checkpoints.io import read_tensors
from biogpt.cli import main
from biogpt.generation import left_pad
from biogpt.models.biogpt import PAD_ID
from biogpt.tasks import pubmedqa_gpt2 as qa
from biogpt.tasks.common import Example

from .conftest import TASKS
from .test_gpt2 import hf_dir

NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT2LMHeadModel (64 positions) saved by transformers with a byte-level BPE trained by BioMedLM's
    recipe, and the transformers model."""
    d = tmp_path_factory.mktemp("gpt2") / "m"
    hf = hf_dir(d)
    return d, hf


def reference_answer(hf, tok, prompt: list[int]) -> tuple[str, float]:
    """transformers' logits walking the label trie greedily, one full forward per step: the label and the
    summed log-probability of its tokens and <|endoftext|> (unconstrained log-softmax)."""
    labels = {tuple(ids): label for ids, label in zip(qa.label_ids(tok), qa.LABELS)}
    out: list[int] = []
    logprob = 0.0
    while True:
        nxt = {s[len(out)] for s in labels if len(s) > len(out) and list(s[: len(out)]) == out}
        if tuple(out) in labels:
            nxt.add(tok.eos_token_id)
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([prompt + out])).logits[0, -1].double(), -1)
        best = max(nxt, key=lambda t: lp[t].item())
        logprob += lp[best].item()
        if best == tok.eos_token_id:
            return labels[tuple(out)], logprob
        out.append(best)


# ---------------------------------------------------------------------------------------------------
# biogpt eval


def test_eval_pubmedqa_generative_matches_transformers(gpt2_dir, tmp_path, capsys):
    d, hf = gpt2_dir
    _, tok = load_pretrained(d)
    items = qa.examples(TASKS, "test")[:6]
    expected = [reference_answer(hf, tok, qa.prompt_ids(tok, ex.source, 64 - qa.ANSWER_ROOM))[0] for ex in items]
    saved = tmp_path / "outputs.txt"
    rc = main(["eval", "pubmedqa", "--model", str(d), "--data", str(TASKS), "--limit", "6", "--batch-size", "4",
               "--json", "--save-outputs", str(saved)])  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert saved.read_text().splitlines() == expected
    assert all(p in ("yes", "no", "maybe") for p in expected)
    accuracy = sum(p == ex.gold for p, ex in zip(expected, items)) / 6
    assert report["n"] == 6 and report["setting"] == "reasoning-required"
    assert report["metrics"] == {"accuracy": accuracy, "parse_rate": 1.0}
    assert report["settings"]["max_prompt_tokens"] == 56


@pytest.mark.parametrize("task", ["bc5cdr", "ddi", "kd-dti", "hoc"])
def test_eval_other_tasks_with_a_gpt2_model_is_one_error(gpt2_dir, task, capsys):
    d, _ = gpt2_dir
    assert main(["eval", task, "--model", str(d), "--data", str(TASKS), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {task}: a GPT-2 family model (BioMedLM) has a format for pubmedqa only")
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# biogpt extract


def test_extract_pubmedqa_answers_with_logprobs(gpt2_dir, tmp_path, capsys):
    d, hf = gpt2_dir
    _, tok = load_pretrained(d)
    items = json.loads((TASKS / "PubMedQA" / "ori_pqal.json").read_text())
    docs = [
        {"id": pid, "text": " ".join(it["CONTEXTS"]), "question": it["QUESTION"]} for pid, it in list(items.items())[:5]
    ]
    docs.insert(2, {"id": "no-question", "text": "Aspirin reduces fever."})
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in docs))
    out = tmp_path / "out.jsonl"
    rc = main(["extract", "--task", "pubmedqa", "--model", str(d), str(src), "-o", str(out), "--quiet",
               "--batch-size", "2"])  # fmt: skip
    assert rc == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [x["id"] for x in docs]
    assert records[2]["skipped"] == "a question is needed (PubMedQA)" and "answer" not in records[2]
    for doc, r in zip(docs, records):
        if "question" not in doc:
            continue
        prompt = qa.prompt_ids(tok, qa.source(doc["question"], doc["text"]), 64 - qa.ANSWER_ROOM)
        label, logprob = reference_answer(hf, tok, prompt)
        assert r["answer"]["text"] == label == r["output"] and r["answer"]["known"] and r["parsed"]
        assert abs(r["answer"]["score"] - logprob) <= 1e-5 and r["sequence_logprob"] == r["answer"]["score"]
        assert r["decoding"]["format"] == "generative" and r["model"]["name"] == str(d)


def test_extract_other_tasks_with_a_gpt2_model_is_one_error(gpt2_dir, tmp_path, capsys):
    d, _ = gpt2_dir
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"id": "1", "text": "Aspirin reduces fever."}) + "\n")
    assert main(["extract", "--task", "bc5cdr", "--model", str(d), str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert (
        "error: --task bc5cdr: a GPT-2 family model (BioMedLM) has a format for pubmedqa only"
        in capsys.readouterr().err
    )
    assert main(["extract", "--task", "pubmedqa", "--num-beams", "3", "--model", str(d), str(src), "-o",
                 str(tmp_path / "o.jsonl")]) == 2  # fmt: skip
    assert "error: --num-beams: a GPT-2 family model's PubMedQA answers are decoded greedily" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------------------------------------------
# biogpt finetune


def test_training_pairs_score_the_answer_only(gpt2_dir):
    from biogpt.training.finetune_gpt2 import training_pairs

    _, tok = load_pretrained(gpt2_dir[0])
    items = qa.examples(TASKS, "train")[:20]
    for ex, (x, y) in zip(items, training_pairs(tok, items, 64)):
        answer = tok.encode(" " + ex.gold) + [tok.eos_token_id]
        n = len(x) + 1 - len(answer)  # prompt length
        assert len(x) == len(y) <= 63 and y[n - 1 :] == answer and y[: n - 1] == [PAD_ID] * (n - 1)
        assert x[n:] == answer[:-1] and tok.decode(x[:n]).endswith(" answer:")
        assert tok.decode(x[:n]).startswith(ex.source[:20])


def test_training_loss_is_transformers_loss_with_quotes_and_padding(gpt2_dir):
    """The loop's loss on right-padded rows that hold `"` (id 1 = PAD_ID in a byte-level vocabulary) equals
    transformers' cross-entropy of each row alone: the pad-derived mask is dropped for the run."""
    from biogpt.training.data import pad_batch
    from biogpt.training.finetune_gpt2 import _drop_mask, training_pairs
    from biogpt.training.loss import lm_loss

    d, hf = gpt2_dir
    model, tok = load_pretrained(d)
    assert tok.encode('"') == [PAD_ID]
    items = [
        Example("a", 'question: Is "aspirin" safe? context: It "works".', "", "yes"),
        Example("b", "question: Does it help? context: No.", "", "no"),
        Example("c", 'question: "Maybe" so? context: "Quoted" text with more words in it here.', "", "maybe"),
    ]
    pairs = training_pairs(tok, items, 64)
    x, y = pad_batch(pairs, [0, 1, 2])
    assert (x == PAD_ID).any(-1).all()  # every row has a quote or padding
    hook = model.register_forward_pre_hook(_drop_mask, with_kwargs=True)
    with torch.no_grad():
        ours = [float(lm_loss(model, x, y, fused=fused)) for fused in (True, False)]
    hook.remove()
    ref = 0.0
    for xs, ys in pairs:
        with torch.no_grad():
            logits = hf(torch.tensor([xs])).logits[0]
        ref += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ys), ignore_index=PAD_ID, reduction="sum"))
    assert ours[0] == pytest.approx(ref, rel=1e-5) and ours[1] == pytest.approx(ref, rel=1e-5)
    with torch.no_grad():  # without the hook, the loop's mask would hide the quotes
        assert float(lm_loss(model, x, y, fused=False)) != pytest.approx(ref, rel=1e-3)


def test_finetune_gpt2_loss_falls_and_checkpoint_loads_everywhere(gpt2_dir, tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    d, _ = gpt2_dir
    rc = main(["finetune", "pubmedqa", "--model", str(d), "--data", str(TASKS), "--output", str(tmp_path / "ft"),
               "--max-updates", "6", "--lr", "3e-3", "--warmup", "1", "--tokens-per-update", "1024",
               "--micro-batch-tokens", "512", "--average-last", "1", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    final = tmp_path / "ft" / "final"
    assert capsys.readouterr().out.strip().endswith(f"final checkpoint: {final}")
    log = json.loads((tmp_path / "ft" / "last" / "train_log.json").read_text())
    assert [e["update"] for e in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]  # 9.78 -> 3.68 measured
    state = read_tensors(tmp_path / "ft" / "last" / "trainer.pt")
    assert state["settings"]["format"] == "generative" and state["settings"]["target_only"] is True

    model, tok = load_pretrained(final)
    hf = GPT2LMHeadModel.from_pretrained(final).eval()
    for k, v in state["model"].items():  # final/ holds the last update's weights (--average-last 1)
        assert torch.equal(model.state_dict()[k], v), k
    ids = torch.tensor([tok.encode("question: Does aspirin work? context: It does. answer:")])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-5
    # the intermediate checkpoint is a Hugging Face directory too
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "ft" / "last").config.n_layer == model.config.n_layer
    # and the fine-tuned model runs in `biogpt eval`
    assert main(["eval", "pubmedqa", "--model", str(final), "--data", str(TASKS), "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["parse_rate"] == 1.0


@pytest.mark.slow  # bf16 autocast is slow on CPUs without native bf16
def test_finetune_gpt2_bf16_autocast_keeps_fp32_weights(gpt2_dir, tmp_path):
    from biogpt.training.finetune_gpt2 import finetune_gpt2

    final = finetune_gpt2("pubmedqa", gpt2_dir[0], TASKS, tmp_path / "ft", max_updates=4, lr=3e-3, warmup_updates=1,
                          tokens_per_update=1024, micro_batch_tokens=512, average_last=2, dtype="bf16")  # fmt: skip
    state = read_tensors(tmp_path / "ft" / "last" / "trainer.pt")
    assert state["log"][-1]["loss"] < 0.6 * state["log"][0]["loss"]  # 9.79 -> 5.00 measured
    model, _ = load_pretrained(final)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for k, v in model.state_dict().items():  # one checkpoint in 4 updates (they are saved each epoch): final = it
        assert torch.equal(v, state["model"][k]), k


def test_finetune_gpt2_refuses_other_tasks(gpt2_dir, tmp_path, capsys):
    d, _ = gpt2_dir
    rc = main(["finetune", "hoc", "--model", str(d), "--data", str(TASKS), "--output", str(tmp_path / "ft")])
    assert rc == 2
    assert "error: hoc: a GPT-2 family model (BioMedLM) is fine-tuned for pubmedqa only" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def _fsdp_worker(rank, world, port, model_dir, out):
    from biogpt.training.finetune_gpt2 import finetune_gpt2

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    finetune_gpt2("pubmedqa", model_dir, TASKS, out, max_updates=3, lr=3e-3, warmup_updates=1, tokens_per_update=1024,
                  micro_batch_tokens=256, average_last=1, fsdp=True)  # fmt: skip
    assert (out / "final" / "config.json").exists()  # every rank returns once rank 0 has written it
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_fsdp_two_ranks_equal_one_process(tmp_path):
    """FSDP over the GPT-2 blocks on two CPU ranks (gloo) trains the same weights as one process."""
    from biogpt.training.finetune_gpt2 import finetune_gpt2

    d = tmp_path / "m"
    hf_dir(d, **NO_DROPOUT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(2, port, d, tmp_path / "fsdp"), nprocs=2, join=True)
    finetune_gpt2("pubmedqa", d, TASKS, tmp_path / "one", max_updates=3, lr=3e-3, warmup_updates=1,
                  tokens_per_update=1024, micro_batch_tokens=256, average_last=1)  # fmt: skip
    a = read_tensors(tmp_path / "fsdp" / "last" / "trainer.pt")
    b = read_tensors(tmp_path / "one" / "last" / "trainer.pt")
    assert [round(e["loss"], 5) for e in a["log"]] == [round(e["loss"], 5) for e in b["log"]]
    # Adam turns float noise in near-zero gradients into lr-sized steps: the key bias (which cannot change any
    # output) everywhere, and a handful of other elements (10 of 192,448 measured); everything else agrees
    off = total = 0
    for k in b["model"]:
        x, y = a["model"][k], b["model"][k]
        if k.endswith("qkv.bias"):  # compare the query and value biases only
            n = x.shape[0] // 3
            x, y = torch.cat([x[:n], x[2 * n :]]), torch.cat([y[:n], y[2 * n :]])
        off, total = off + int(((x - y).abs() > 1e-6).sum()), total + x.numel()
    assert off <= 20 and total == 192448  # 192,640 parameters less the 3 x 64 key biases
    ma, tok = load_pretrained(tmp_path / "fsdp" / "final")
    mb, _ = load_pretrained(tmp_path / "one" / "final")
    ids, mask = left_pad([qa.prompt_ids(tok, ex.source, 56) for ex in qa.examples(TASKS, "test")[:8]], tok.eos_token_id)
    with torch.no_grad():
        assert (ma(ids, mask) - mb(ids, mask)).abs().max() <= 1e-4  # 5.7e-5 measured, logits up to 10
