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

from .conftest import SHARED, TASKS
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
    real = bt.common.beam_search
    monkeypatch.setattr(bt.common, "beam_search", lambda *a, **k: seen.append(k["max_len_b"]) or real(*a, **k))
    code, _, _ = run(["eval", "vqa", "--model", ofa_dir, "--data", tmp_path / "test.tsv",
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

    from biogpt.cli.args import load_for_inference as load_model
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


# --- 4. tokenize with the folder's own tokenizer ---------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory):
    """A tiny GPT2LMHeadModel (64 positions) saved by transformers with a byte-level BPE trained by BioMedLM's
    recipe: (its folder, the transformers model)."""
    from .test_gpt2 import hf_dir

    d = tmp_path_factory.mktemp("gpt2") / "m"
    return d, hf_dir(d)


@pytest.fixture(scope="module")
def gpt2_dir(gpt2_model):
    return gpt2_model[0]


def tokenize(argv, text, capsys, monkeypatch) -> tuple[int, str, str]:
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8"))))
    return run(["tokenize", *argv], capsys)


def test_tokenize_uses_each_familys_own_tokenizer(gpt2_dir, ofa_dir, capsys, monkeypatch):
    from tokenizers import Tokenizer, processors

    text = "Aspirin lowers fever."
    ref_tok = Tokenizer.from_file(str(gpt2_dir.parent / "m-bpe" / "tokenizer.json"))
    ref_tok.post_processor = processors.ByteLevel(trim_offsets=False)  # spans keep a token's leading space
    ref = ref_tok.encode(text)
    code, out, _ = tokenize(["--vocab", gpt2_dir], text, capsys, monkeypatch)
    assert code == 0 and out.split() == [str(i) for i in ref.ids]
    code, out, _ = tokenize(["--vocab", gpt2_dir, "--tokens"], text, capsys, monkeypatch)
    assert out.split() == ref.tokens
    code, out, _ = tokenize(["--vocab", gpt2_dir, "--offsets"], text, capsys, monkeypatch)
    assert out.split() == [f"{i}:{a}-{b}" for i, (a, b) in zip(ref.ids, ref.offsets)]
    code, out, _ = tokenize(["--vocab", gpt2_dir, "--decode"], " ".join(map(str, ref.ids)), capsys, monkeypatch)
    assert out == text + "\n"

    _, tok = biogpt.load(ofa_dir)
    want = tok.encode_source(" what is aspirin?")  # <s> ... </s>, as the encoder is fed
    for vocab in (ofa_dir, BPE):  # BiomedGPT's directory, and its original encoder.json + vocab.bpe + dict.txt
        code, out, _ = tokenize(["--vocab", vocab], " what is aspirin?", capsys, monkeypatch)
        assert code == 0 and out.split() == [str(i) for i in want] and want[0] == 0 and want[-1] == 2
    code, out, _ = tokenize(["--vocab", ofa_dir, "--offsets"], " what is aspirin?", capsys, monkeypatch)
    assert out.split()[0] == "0:0-0" and out.split()[-1] == "2:17-17" and out.split()[1] == f"{want[1]}:0-5"
    code, out, _ = tokenize(["--vocab", BPE, "--decode"], " ".join(map(str, want)), capsys, monkeypatch)
    assert out == " what is aspirin?\n"
    code, _, err = tokenize(["--vocab", BPE, "--decode"], "0 99999999", capsys, monkeypatch)
    assert code == 2 and f"id 99999999 is outside the vocabulary (ids 0..{tok.vocab_size - 1})" in err


# --- 5. what eval saves, eval scores; 6. settings that are accepted are honoured --------------------------


def test_gpt2_saved_outputs_score_again(gpt2_dir, tmp_path, capsys):
    saved, report = tmp_path / "o.txt", tmp_path / "r.json"
    code, out, _ = run(["eval", "pubmedqa", "--model", gpt2_dir, "--data", TASKS, "--limit", 4, "--save-outputs",
                        saved, "--json", "--output", report], capsys)  # fmt: skip
    assert code == 0 and json.loads(out) == json.loads(report.read_text())  # --json prints JSON with --output too
    first = json.loads(out)["metrics"]
    code, out, _ = run(["eval", "pubmedqa", "--predictions", saved, "--data", TASKS, "--limit", 4, "--json"], capsys)
    assert code == 0 and json.loads(out)["metrics"] == first == {"accuracy": first["accuracy"], "parse_rate": 1.0}


def test_gpt2_pubmedqa_settings(gpt2_model, tmp_path, capsys):
    from biogpt.tasks import pubmedqa_gpt2 as qa

    from .test_gpt2_tasks import reference_answer

    d, hf = gpt2_model
    _, tok = biogpt.load(d)
    items = json.loads((TASKS / "PubMedQA" / "ori_pqal.json").read_text())
    for setting in ("reasoning-required", "reasoning-free"):
        exs = qa.examples(TASKS, "test", setting)[:3]
        for ex in exs:
            it = items[ex.id]
            ctx = " ".join(it["CONTEXTS"]) + (" " + it["LONG_ANSWER"] if setting == "reasoning-free" else "")
            assert ex.source == f"question: {' '.join(it['QUESTION'].split())} context: {' '.join(ctx.split())}"
        want = [reference_answer(hf, tok, qa.prompt_ids(tok, ex.source, 64 - qa.ANSWER_ROOM))[0] for ex in exs]
        saved = tmp_path / f"{setting}.txt"
        code, out, _ = run(["eval", "pubmedqa", "--model", d, "--data", TASKS, "--limit", 3, "--setting", setting,
                            "--json", "--save-outputs", saved], capsys)  # fmt: skip
        assert code == 0 and json.loads(out)["setting"] == setting and saved.read_text().split() == want
    code, _, err = run(["eval", "hoc", "--model", d, "--data", TASKS, "--setting", "reasoning-free"], capsys)
    assert code == 2 and "--setting applies to pubmedqa" in err


def test_biomedgpt_saved_outputs_score_again(ofa_dir, tmp_path, capsys):
    answers = ["yes", "no", "chest"]
    (tmp_path / "ans.json").write_text(json.dumps({a: i for i, a in enumerate(answers)}))
    b64 = base64.b64encode(png_bytes()).decode()
    (tmp_path / "vqa.tsv").write_text(f"q1\t{b64}\tis it normal?\t1.0|!+yes\tobj\n"
                                      f"q2\t{b64}\twhich organ?\t1.0|!+chest\tobj\n")  # fmt: skip
    (tmp_path / "nli.tsv").write_text("No fever.\tThe patient is afebrile.\tentailment\nA rash.\tNo rash.\tneutral\n")
    for task, data in (("vqa", tmp_path / "vqa.tsv"), ("nli", tmp_path / "nli.tsv")):
        extra = ["--answers", tmp_path / "ans.json"] if task == "vqa" else []
        saved = tmp_path / f"{task}.jsonl"
        code, out, _ = run(["eval", task, "--model", ofa_dir, "--data", data, *extra,
                            "--save-outputs", saved], capsys)  # fmt: skip
        assert code == 0
        code, again, _ = run(["eval", task, "--predictions", saved, "--data", data], capsys)
        assert code == 0 and json.loads(again) == json.loads(out)
    code, _, err = run(["eval", "vqa", "--predictions", tmp_path / "nli.jsonl", "--data",
                        tmp_path / "vqa.tsv"], capsys)  # fmt: skip
    assert code == 2 and "example 'q1' has no prediction" in err


def test_biomedgpt_help_lists_only_what_works(capsys):
    assert main(["eval-biomedgpt", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "{fp32,bf16,auto}" in text and "int8" not in text and "demo" not in text


# --- 7. no silent truncation -----------------------------------------------------------------------------


def test_generate_warns_when_the_positions_leave_fewer_tokens(gpt2_dir, capsys):
    _, tok = biogpt.load(gpt2_dir)
    words = "aspirin lowers fever and pain in many patients " * 20
    prompt = tok.decode(tok.encode(words)[:60])
    n = len(tok.encode(prompt))
    code, out, err = run(["generate", "--model", gpt2_dir, prompt, "--max-new-tokens", 10], capsys)
    assert code == 0 and f"at most {64 - n} new tokens are generated, not --max-new-tokens 10" in err
    code, out, err = run(["generate", "--model", gpt2_dir, "aspirin", "--max-new-tokens", 10], capsys)
    assert code == 0 and "warning" not in err


# --- 8. data files of another task are refused -----------------------------------------------------------


def test_data_files_of_another_layout_are_one_error(ofa_dir, tmp_path, capsys):
    b64 = base64.b64encode(png_bytes()).decode()
    vqa = tmp_path / "vqa_test.tsv"
    vqa.write_text(f"1\t{b64}\tis it normal?\t1.0|!+yes\tobj\n")
    (tmp_path / "cls.json").write_text('{"normal": 0, "pneumonia": 1}')
    code, _, err = run(["eval", "medmnist", "--model", ofa_dir, "--data", vqa, "--answers",
                        tmp_path / "cls.json"], capsys)  # fmt: skip
    assert code == 2 and "vqa_test.tsv:1: 5 tab-separated columns, expected 3 (a caption or classification" in err
    code, _, err = run(["finetune", "meqsum", "--model", ofa_dir, "--data", vqa, "--output",
                        tmp_path / "ft"], capsys)  # fmt: skip
    assert code == 2 and "expected 2 (a MeQSum file has question<TAB>summary)" in err
    mnist = tmp_path / "mnist.tsv"
    mnist.write_text(f"1\t{b64}\tnormal\n2\t{b64}\tis it normal?\n")
    code, _, err = run(["eval", "medmnist", "--model", ofa_dir, "--data", mnist, "--answers",
                        tmp_path / "cls.json"], capsys)  # fmt: skip
    assert code == 2 and "mnist.tsv:2: label 'is it normal?' is not in the answer set" in err
    mnist.write_text("1\tthe lungs are clear\tnormal\n")
    code, _, err = run(["eval", "medmnist", "--model", ofa_dir, "--data", mnist, "--answers",
                        tmp_path / "cls.json"], capsys)  # fmt: skip
    assert code == 2 and "mnist.tsv:1: its image column: not an image" in err
    vqa.write_text("1\tsome text\tis it normal?\t1.0|!+yes\tobj\n")
    code, _, err = run(["eval", "vqa", "--model", ofa_dir, "--data", vqa, "--answers",
                        tmp_path / "cls.json"], capsys)  # fmt: skip
    assert code == 2 and "its image column: not an image" in err and "a VQA file has" in err


# --- images: formats, pixel cap, decompression bombs, decoded once ---------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's shape), with one empty IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_images_outside_the_formats_or_the_pixel_cap_are_refused(ofa_dir, tmp_path, capsys):
    import io

    from PIL import Image

    from biogpt.errors import InputError
    from biogpt.images import MAX_PIXELS, open_image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    with pytest.raises(InputError, match="give a PNG, JPEG, BMP, TIFF, GIF image"):
        open_image(buf.getvalue())
    for w, h in ((7_000, 7_000), (100_000, 100_000)):  # over the cap; over Pillow's own bomb limit too
        with pytest.raises(InputError, match="pixels, over the limit|decompression bomb"):
            open_image(png_header_only(w, h))
    assert MAX_PIXELS == 40_000_000
    with pytest.raises(InputError, match="8 x 8 = 64 pixels, over the limit of 63"):
        open_image(png_bytes(size=(8, 8)), max_pixels=63)
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    code, _, err = run(["generate", "--model", ofa_dir, "--image", tmp_path / "bomb.png", "what is it?"], capsys)
    assert code == 2 and "bomb.png" in err


def test_server_refuses_bombs_with_400_and_decodes_once(ofa_dir, monkeypatch):
    import argparse

    import biogpt.images as images
    from biogpt.cli.args import load_for_inference as load_model
    from biogpt.serve import create_app

    from .test_ofa_serve import serve

    decodes = []
    real = images._decode
    monkeypatch.setattr(images, "_decode", lambda *a, **k: decodes.append(k.get("load", True)) or real(*a, **k))
    args = argparse.Namespace(model=str(ofa_dir), vocab=None, dtype="fp32", threads=None)
    app = create_app(loader=lambda: load_model(args), model_name="m")
    bomb = base64.b64encode(png_header_only(100_000, 100_000)).decode()
    good = base64.b64encode(png_bytes()).decode()

    async def go(http, client):
        body = {"model": "m", "prompt": "what is it?", "max_tokens": 2}
        return [await http.post("/v1/completions", json={**body, "image": im}) for im in (bomb, good)]

    bad, ok = serve(app, go)
    assert bad.status_code == 400 and "the request's image" in bad.json()["error"]["message"]
    assert ok.status_code == 200 and decodes == [True, True]  # one decode per request


# --- 9. the BiomedGPT page's request for an image of any size -------------------------------------------------------


def test_documented_image_request_works_for_large_images(ofa_dir, tmp_path):
    import argparse
    import shlex
    import subprocess

    from biogpt.cli.args import load_for_inference as load_model
    from biogpt.serve import create_app

    from .conftest import ROOT
    from .test_ofa_serve import serve

    line = next(x for x in (ROOT / "docs" / "biomedgpt.md").read_text().splitlines()
                if x.startswith("python -c 'import base64"))
    big = tmp_path / "chest.png"
    big.write_bytes(png_bytes(size=(600, 600)))  # about 1 MB: far over a command line's ~96 kB of base64
    assert big.stat().st_size > 1_000_000
    subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True)
    body = (tmp_path / "request.json").read_bytes()
    assert json.loads(body)["image"] == base64.b64encode(big.read_bytes()).decode()
    args = argparse.Namespace(model=str(ofa_dir), vocab=None, dtype="fp32", threads=None)

    async def post(http, client):
        return await http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})

    small = serve(create_app(loader=lambda: load_model(args), model_name="biomedgpt"), post)
    assert small.status_code == 413 and "--max-body-mb" in small.json()["error"]["message"]
    words = shlex.split(next(x for x in (ROOT / "docs" / "biomedgpt.md").read_text().splitlines()
                             if x.startswith("biogpt serve --model biomedgpt-base/")), comments=True)  # fmt: skip
    mb = int(words[words.index("--max-body-mb") + 1])
    app = create_app(loader=lambda: load_model(args), model_name="biomedgpt", max_body=mb << 20)
    ok = serve(app, post)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


# --- 10. counting and small truths -----------------------------------------------------------------------


def test_info_counts_learned_parameters_only(ofa_dir, ofa_loaded, capsys):
    model, _ = ofa_loaded
    learned = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked")))  # fmt: skip
    code, out, _ = run(["info", ofa_dir], capsys)
    assert code == 0 and stats > 0
    assert f"parameters: {learned:,} (" in out and f"plus {stats:,} BatchNorm running statistics" in out


def test_generate_takes_ema_and_image_size(ofa_dir, ofa_loaded, tmp_path, capsys):
    from .test_ofa import FAIRSEQ_ARGS, random_reference, with_bpe, write_fairseq

    ref, ema = random_reference(seed=31, vocab_size=59457), random_reference(seed=32, vocab_size=59457)
    src = write_fairseq(with_bpe(tmp_path / "src") / "checkpoint_best.pt", ref, ema_ref=ema, args=FAIRSEQ_ARGS)
    assert run(["convert", src, tmp_path / "ema", "--ema"], capsys)[0] == 0
    ask = ["--max-new-tokens", 3, "what is aspirin?"]
    code, with_ema, _ = run(["generate", "--model", src, "--ema", *ask], capsys)
    assert code == 0 and with_ema == run(["generate", "--model", tmp_path / "ema", *ask], capsys)[1]
    code, _, err = run(["generate", "--ema", *ask], capsys)
    assert code == 2 and "--ema applies to BiomedGPT fairseq checkpoints" in err

    model, tok = ofa_loaded
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes())
    before, model.config.image_size = model.config.image_size, 48
    try:
        (want,) = bt.generate_text(model, tok, [bt.Record("0", bt.vqa_text("is it normal?"), img.read_bytes())],
                                   bt.Decoding(**{**bt.DECODING["vqa"].kwargs(), "max_len_b": 3}))  # fmt: skip
    finally:
        model.config.image_size = before
    assert before == 32
    code, out, _ = run(["generate", "--model", ofa_dir, "--image", img, "--image-size", 48, "--max-new-tokens", 3,
                        "is it normal?"], capsys)  # fmt: skip
    assert code == 0 and out == want + "\n"


def test_port_config_image_size():
    from biogpt.checkpoints.ofa import REQUIRED_HF, config_from_hf

    hf = {**REQUIRED_HF, "vocab_size": 100, "d_model": 768, "encoder_layers": 1, "decoder_layers": 1,
          "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 8,
          "decoder_ffn_dim": 8}  # fmt: skip
    assert config_from_hf(hf, "c").image_size == 384
    assert config_from_hf({**hf, "d_model": 512}, "c").image_size == 256  # BiomedGPT-M's width
    assert config_from_hf({**hf, "patch_image_size": 480}, "c").image_size == 480


def test_mistyped_local_path_is_no_such_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    for path in ("models/biomedgpt", "./biomedgpt", "biomedgpt/vqa_rad.pt"):
        code, _, err = run(["info", path], capsys)
        assert code == 2 and f"{path}: no such file or directory" in err and "Hub" not in err


def test_finetune_log_keeps_small_learning_rates(ofa_dir, tmp_path, capsys):
    code, out, _ = run(["finetune", "meqsum", "--model", ofa_dir, "--output", tmp_path / "ft",
                        "--max-updates", 1, "--lr", 4e-5, "--warmup", 100, "--limit", 2, "--batch-size", 2,
                        "--update-freq", 1], capsys)  # fmt: skip
    logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # update 1 of 100 warm-up updates from fairseq's warmup_init_lr 1e-7: 1e-7 + (4e-5 - 1e-7) / 100 (rounded to
    # 0.0 when the log kept 6 decimals)
    assert code == 0 and logged[0]["lr"] == pytest.approx(1e-7 + (4e-5 - 1e-7) / 100, rel=1e-5)


def test_length_messages_name_the_options(ofa_dir, capsys):
    code, _, err = run(["generate", "--model", ofa_dir, "--min-new-tokens", 5, "--max-new-tokens", 3, "hi"], capsys)
    assert code == 2 and "--min-new-tokens 5 exceeds the 3 new tokens allowed (--max-new-tokens)" in err
    assert "min_len" not in err and "max_len" not in err
