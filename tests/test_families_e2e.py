"""BioMedLM (GPT-2 family) and BiomedGPT (OFA) as a user meets them: every documented command on tiny random models
of each family, with the answer each should give (answer-set lengths, per-prompt decoding, conversion into a used
folder, tokenizing with the model's own vocabulary, saved outputs that score again, settings that are honoured,
warnings for truncated generation, data files of the wrong layout, and the counts the tools report)."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
import torch

import biogpt
from biogpt.checkpoints.ofa import save_ofa
from biogpt.cli import main
from biogpt.generation.seq2seq import AnswerTrie, beam_search, load_answer_set
from biogpt.models.ofa import EOS_ID
from biogpt.tasks import biomedgpt as bt
from biogpt.text.ofa import OFATokenizer

from .conftest import SHARED
from .test_ofa_cli import BPE, png_bytes, tiny_ofa

ANSWER_SETS = SHARED / "data" / "biomedgpt" / "tasks"


@pytest.fixture(scope="module")
def ofa_tok():
    return OFATokenizer.from_pretrained(BPE)


@pytest.fixture(scope="module")
def ofa_dir(tmp_path_factory, ofa_tok):
    d = tmp_path_factory.mktemp("ofa")
    save_ofa(tiny_ofa(), ofa_tok, d)
    return d


@pytest.fixture(scope="module")
def ofa_loaded(ofa_dir):
    return biogpt.load(ofa_dir)


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one CLI call; a failure is one `error:` line."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code, out, err


# --- 1. answer sets: every answer can be produced -------------------------------------------------------


class _Forced:
    """A stand-in encoder-decoder whose next-token logits point at each row's target (its "source" ids, then
    </s>), so a search that is allowed enough steps reproduces the target; the state travels with the rows as
    the search reorders them."""

    def __init__(self, vocab_size: int):
        self.config = SimpleNamespace(vocab_size=vocab_size, max_positions=1024)

    def encode(self, ids, images=None, masks=None):
        return _Rows(ids)

    def new_cache(self, rows, length):
        return SimpleNamespace(step=0, reorder=lambda order: None)

    def decode(self, prev, enc, cache):
        logits = torch.zeros(prev.size(0), 1, self.config.vocab_size)  # [rows, 1, V]
        target = enc.targets[:, min(cache.step, enc.targets.size(1) - 1)]
        logits[torch.arange(prev.size(0)), 0, target] = 20.0
        cache.step += 1
        return logits


class _Rows:
    def __init__(self, targets):
        self.targets = targets  # [rows, L]: answer ids then </s>

    def index_select(self, order):
        return _Rows(self.targets[order])


@pytest.mark.parametrize("name", ["vqa-rad/trainval_ans2label.json", "PathVQA/trainval_ans2label.json",
                                  *[f"MedMNIST/{n}_class2label.json" for n in
                                    ("bloodmnist", "breastmnist", "dermamnist", "octmnist", "organcmnist",
                                     "pathmnist", "pneumoniamnist")]])  # fmt: skip
def test_every_shipped_answer_can_be_predicted(name, ofa_tok):
    answers = load_answer_set(ANSWER_SETS / name)
    encoded = [ofa_tok.encode(" " + a) for a in answers]
    assert bt.for_answers(bt.DECODING["vqa"], AnswerTrie(encoded)).max_len_b == max(map(len, encoded)) + 1
    # the search sees only the ids the answers use, renumbered densely after the 4 special ids (a small vocabulary)
    dense = {t: i + 4 for i, t in enumerate(sorted({t for ids in encoded for t in ids}))}
    seqs = [[dense[t] for t in ids] for ids in encoded]
    trie = AnswerTrie(seqs)
    dec = bt.for_answers(bt.DECODING["vqa"], trie)
    model = _Forced(len(dense) + 4)
    for i in range(0, len(seqs), 1024):
        part = [ids + [EOS_ID] for ids in seqs[i : i + 1024]]
        targets = torch.full((len(part), max(map(len, part))), EOS_ID)
        for r, ids in enumerate(part):
            targets[r, : len(ids)] = torch.tensor(ids)
        hyps = beam_search(model, targets, constraint_trie=trie, **dec.kwargs())
        assert [h[0].tokens if h else [] for h in hyps] == part


def test_vqa_eval_decodes_with_the_answer_sets_bound(ofa_dir, tmp_path, capsys, monkeypatch):
    long_answer = "the large opacity in the lower lobe of the right lung seen on the posterior anterior film view"
    (tmp_path / "ans.json").write_text(json.dumps({"yes": 0, long_answer: 1}))
    b64 = base64.b64encode(png_bytes()).decode()
    (tmp_path / "test.tsv").write_text(f"1\t{b64}\twhat is seen?\t1.0|!+yes\tobj\n")
    seen = []
    real = bt.beam_search
    monkeypatch.setattr(bt, "beam_search", lambda *a, **k: seen.append(k["max_len_b"]) or real(*a, **k))
    code, _, _ = run(["eval-biomedgpt", "vqa", "--model", ofa_dir, "--data", tmp_path / "test.tsv",
                      "--answers", tmp_path / "ans.json"], capsys)  # fmt: skip
    tok = OFATokenizer.from_pretrained(BPE)
    assert code == 0 and seen == [len(tok.encode(" " + long_answer)) + 1]


# --- 2. each prompt with its own task's decoding ---------------------------------------------------------


def test_generate_decodes_each_prompt_as_alone(ofa_dir, tmp_path, capsys):
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes())
    prompts = ["is there a pneumothorax?", "what does the image describe?"]
    alone = []
    for p in prompts:
        code, out, _ = run(["generate", "--model", ofa_dir, "--max-new-tokens", 8, "--image", img, p], capsys)
        assert code == 0
        alone.append(out.rstrip("\n"))
    code, out, _ = run(["generate", "--model", ofa_dir, "--max-new-tokens", 8, "--image", img, *prompts], capsys)
    assert code == 0 and out.rstrip("\n").split("\n") == alone


def test_server_decodes_each_prompt_as_alone_and_counts_generated_tokens(ofa_dir, ofa_loaded):
    import argparse

    from biogpt.cli.biomedgpt import load_model
    from biogpt.generation.seq2seq import right_pad
    from biogpt.images import patch_images
    from biogpt.serve import create_app

    from .test_ofa_serve import serve

    model, tok = ofa_loaded
    b64 = base64.b64encode(png_bytes()).decode()
    prompts = ["is there a pneumothorax?", "what does the image describe?"]
    want_tokens = 0
    for p, task in zip(prompts, ("vqa", "caption")):
        src = right_pad([tok.encode_source(bt.vqa_text(p))])
        (hyps,) = beam_search(model, src, patch_images([png_bytes()], model.config.image_size),
                              torch.ones(1, dtype=torch.bool), constraint_range=(4, tok.code_start),
                              **{**bt.DECODING[task].kwargs(), "max_len_b": 4})  # fmt: skip
        want_tokens += len(hyps[0].tokens) - 1  # </s> ends the output; it is not generated text
    args = argparse.Namespace(model=str(ofa_dir), vocab=None, dtype="fp32", threads=None)
    app = create_app(loader=lambda: load_model(args), model_name="m")

    async def go(http, client):
        ask = dict(model="m", max_tokens=4, extra_body={"image": b64})
        alone = [await client.completions.create(prompt=p, **ask) for p in prompts]
        mixed = await client.completions.create(prompt=prompts, **ask)
        return alone, mixed

    alone, mixed = serve(app, go)
    assert [c.text for c in mixed.choices] == [a.choices[0].text for a in alone]
    assert mixed.usage.completion_tokens == want_tokens


# --- 3. convert never mixes two models in one folder -----------------------------------------------------


def test_convert_refuses_a_used_folder_and_replaces_it_whole(ofa_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (out / name).write_text("{}")  # what another family's conversion left there
    code, _, err = run(["convert", ofa_dir, out], capsys)
    assert code == 2 and "is not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["generation_config.json", "tokenizer.json",
                                                     "tokenizer_config.json"]  # fmt: skip
    code, _, _ = run(["convert", ofa_dir, out, "--overwrite"], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ofa_dir.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    assert biogpt.api.family(out) == "ofa"
