"""`biogpt info / convert / generate --image / eval` with BiomedGPT (OFA) models: a tiny random model saved
as biogpt's BiomedGPT directory, the real BPE files and the real MeQSum test split. Expected outputs come from the
library calls the commands stand for (tasks/biomedgpt/, whose search is tested against the reference generator)."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

import biogpt
from biogpt.checkpoints.ofa import EMBED, load_ofa, save_ofa
from biogpt.cli import main
from biogpt.cli.models import ofa_size
from biogpt.generation.seq2seq import AnswerTrie
from biogpt.models.ofa import OFA, OFAConfig
from biogpt.tasks.biomedgpt.common import CAPTION_PROMPT, DECODING, Decoding, Record, generate_text, rank_answers
from biogpt.tasks.biomedgpt.metrics import summary_rouge_l
from biogpt.tasks.biomedgpt.nli import predict_nli
from biogpt.tasks.biomedgpt.summary import read_meqsum
from biogpt.tasks.biomedgpt.vqa import vqa_text
from biogpt.text.ofa import OFATokenizer

from .conftest import SHARED, TASKS
from .test_ofa import FAIRSEQ_ARGS, random_reference, with_bpe, write_fairseq

BPE = SHARED / "data" / "biomedgpt" / "bpe"
MEQSUM = SHARED / "data" / "biomedgpt" / "tasks" / "MeQSum"


def tiny_ofa(seed: int = 0) -> OFA:
    """A tiny random BiomedGPT over the real vocabulary (1024 positions: MeQSum questions are long), with its
    relative-position tables randomised too (OFA zero-initialises them)."""
    torch.manual_seed(seed)
    cfg = OFAConfig(d_model=32, encoder_layers=1, decoder_layers=1, n_head=4, d_ffn=48, resnet_layers=(1, 1, 1),
                    image_size=32, token_bucket_size=16, image_bucket_size=8, dropout=0.0)  # fmt: skip
    model = OFA(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos_table" in name:
                p.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def ofa_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ofa")
    save_ofa(tiny_ofa(), OFATokenizer.from_pretrained(BPE), d)
    return d


@pytest.fixture(scope="module")
def loaded(ofa_dir):
    return biogpt.load(ofa_dir)


def png_bytes(seed: int = 3, size=(40, 30)) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one CLI call; a failure is one `error:` line."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code, out, err


def test_load_dispatches_to_ofa(ofa_dir, loaded):
    model, tok = loaded
    assert isinstance(model, OFA) and isinstance(tok, OFATokenizer)
    assert biogpt.api.family(ofa_dir) == "ofa" and biogpt.api.family("demo") == "biogpt"
    want, _ = load_ofa(ofa_dir)
    assert list(model.state_dict()) == list(want.state_dict())  # the same tensors, by name, then values
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), want.state_dict().values(), strict=True))
    with pytest.raises(biogpt.CheckpointError, match="ema=True applies to BiomedGPT fairseq checkpoints"):
        biogpt.load("demo", ema=True)


def test_sizes_by_shape():
    assert ofa_size(OFAConfig.tiny()) == "BiomedGPT-S"
    assert ofa_size(OFAConfig.medium()) == "BiomedGPT-M"
    assert ofa_size(OFAConfig.base(image_size=480)) == "BiomedGPT-B"
    assert ofa_size(OFAConfig.base(encoder_layers=12)) == "custom size"


def test_info(ofa_dir, capsys):
    code, out, _ = run(["info", ofa_dir], capsys)
    assert code == 0
    assert "BiomedGPT / OFA encoder-decoder, custom size" in out
    assert "  d_model: 32" in out and "  image_size: 32" in out
    assert "59457 ids" in out and "<code_0>.. at 50265" in out and "<bin_0>.. at 58457" in out


def test_convert_fairseq_checkpoint_with_ema(tmp_path, capsys):
    ref, ema = random_reference(seed=31, vocab_size=59457), random_reference(seed=32, vocab_size=59457)
    src = write_fairseq(with_bpe(tmp_path / "src") / "checkpoint_best.pt", ref, ema_ref=ema, args=FAIRSEQ_ARGS)
    code, out, _ = run(["convert", src, tmp_path / "out", "--ema"], capsys)
    assert code == 0 and "wrote a BiomedGPT directory" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "biomedgpt"
    want, want_tok = load_ofa(src, ema=True)
    back, tok = biogpt.load(tmp_path / "out")
    a, b = want.state_dict(), back.state_dict()
    assert back.config == want.config and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tok.encode(" a chest x-ray") == want_tok.encode(" a chest x-ray")
    code, _, _ = run(["convert", src, tmp_path / "raw"], capsys)  # without --ema: the model's own weights
    plain, raw = load_ofa(src)[0].state_dict(), biogpt.load(tmp_path / "raw")[0].state_dict()
    assert all(torch.equal(v, raw[k]) for k, v in plain.items()) and not torch.equal(raw[EMBED], a[EMBED])


def test_convert_ema_needs_a_biomedgpt_checkpoint(tmp_path, capsys):
    code, _, err = run(["convert", "demo", tmp_path / "out", "--ema"], capsys)
    assert code == 2 and "--ema applies to BiomedGPT fairseq checkpoints" in err


def test_generate_caption_from_an_image(ofa_dir, loaded, tmp_path, capsys):
    model, tok = loaded
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes())
    code, out, _ = run(["generate", "--model", ofa_dir, "--image", img, "What does the image describe?"], capsys)
    assert code == 0
    (want,) = generate_text(model, tok, [Record("0", CAPTION_PROMPT, png_bytes())], DECODING["caption"])
    assert out == want + "\n"


def test_generate_question_with_overrides(ofa_dir, loaded, tmp_path, capsys):
    model, tok = loaded
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes(seed=4))
    argv = ["generate", "--model", ofa_dir, "--image", img, "Is there a Pneumothorax?", "which organ",
            "--num-beams", 3, "--max-new-tokens", 6, "--no-repeat-ngram-size", 2]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    recs = [Record("0", " is there a pneumothorax?", png_bytes(seed=4)), Record("1", " which organ?", png_bytes(4))]
    assert recs[1].text == vqa_text("which organ")
    dec = Decoding(beam_size=3, max_len_b=6, no_repeat_ngram_size=2, normalize_scores=False)  # VQA: unnormalised
    assert out.splitlines() == generate_text(model, tok, recs, dec)


def test_generate_text_only_summary(ofa_dir, loaded, capsys):
    model, tok = loaded
    prompt = 'What is the summary of article " My father has chest pain after meals. "?'
    code, out, _ = run(["generate", "--model", ofa_dir, prompt, "--max-new-tokens", 8], capsys)
    assert code == 0
    dec = Decoding(**{**DECODING["summarize"].kwargs(), "max_len_b": 8})
    assert out.splitlines() == generate_text(model, tok, [Record("0", " " + prompt.lower())], dec)


def test_generate_errors(ofa_dir, tmp_path, capsys):
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes())
    code, _, err = run(["generate", "--image", img, "what does the image describe?"], capsys)  # the demo: BioGPT
    assert code == 2 and "--image needs a BiomedGPT (OFA) model; the demo model is a text-only model" in err
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    code, _, err = run(["generate", "--model", ofa_dir, "--image", bad, "what is it?"], capsys)
    assert code == 2 and f"{bad}: not an image Pillow can read" in err
    code, _, err = run(["generate", "--model", ofa_dir, "--do-sample", "hi"], capsys)
    assert code == 2 and "--do-sample does not apply to BiomedGPT" in err
    code, _, err = run(["generate", "--model", ofa_dir, "--dtype", "int8", "hi"], capsys)
    assert code == 2 and "--dtype int8 applies to BioGPT and GPT-2 models" in err


@pytest.mark.slow
def test_eval_meqsum_on_the_real_test_split(ofa_dir, loaded, tmp_path, capsys):
    model, tok = loaded
    argv = ["eval", "meqsum", "--model", ofa_dir, "--data", MEQSUM, "--limit", 4,
            "--output", tmp_path / "m.json", "--save-outputs", tmp_path / "o.jsonl"]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0 and "meqsum: 4 examples scored" in err
    recs = read_meqsum(MEQSUM / "test.tsv")[:4]
    preds = generate_text(model, tok, recs, DECODING["summarize"])
    want = sum(summary_rouge_l(p, next(iter(r.refs))) for p, r in zip(preds, recs)) / 4
    got = json.loads(out)
    assert got == {"task": "meqsum", "rouge_l": pytest.approx(want, abs=1e-12), "n": 4}
    assert json.loads((tmp_path / "m.json").read_text()) == got
    saved = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert saved == [{"id": r.id, "prediction": p} for r, p in zip(recs, preds)]


def vqa_tsv(path, rows):
    b64 = [base64.b64encode(png_bytes(seed=s)).decode() for s in range(len(rows))]
    lines = [f"{i}\t{b}\t{q}\t{ref}\tobj" for i, (b, (q, ref)) in enumerate(zip(b64, rows))]
    path.write_text("\n".join(lines) + "\n")


def test_eval_vqa_medmnist_nli(ofa_dir, loaded, tmp_path, capsys):
    model, tok = loaded
    answers = ["yes", "no", "left lung", "chest"]
    (tmp_path / "ans.json").write_text(json.dumps({a: i for i, a in enumerate(answers)}))
    vqa_tsv(tmp_path / "test.tsv", [("Is it normal", "1.0|!+yes"), ("Which organ?", "1.0|!+chest&&0.5|!+left lung")])
    from biogpt.tasks.biomedgpt.caption import read_captions
    from biogpt.tasks.biomedgpt.metrics import vqa_accuracy
    from biogpt.tasks.biomedgpt.vqa import read_vqa

    recs = read_vqa(tmp_path / "test.tsv")
    trie = AnswerTrie.from_answers(answers, tok.encode)
    for mode, preds in (("beamsearch", generate_text(model, tok, recs, DECODING["vqa"], trie=trie)),
                        ("allcand", rank_answers(model, tok, recs, answers))):  # fmt: skip
        argv = ["eval", "vqa", "--model", ofa_dir, "--data", tmp_path, "--answers", tmp_path / "ans.json",
                "--inference", mode]  # fmt: skip
        code, out, _ = run(argv, capsys)
        assert code == 0 and all(p in answers for p in preds)
        assert json.loads(out) == {"task": "vqa", **vqa_accuracy(preds, recs)}

    b64 = base64.b64encode(png_bytes(seed=9)).decode()
    (tmp_path / "mnist.tsv").write_text(f"7\t{b64}\tpneumonia\n8\t{b64}\tnormal\n")
    (tmp_path / "cls.json").write_text('{"normal": "0", "pneumonia": "1"}')
    preds = rank_answers(model, tok, read_captions(tmp_path / "mnist.tsv"), ["normal", "pneumonia"])
    argv = ["eval", "medmnist", "--model", ofa_dir, "--data", tmp_path / "mnist.tsv",
            "--answers", tmp_path / "cls.json"]  # fmt: skip
    code, out, _ = run(argv, capsys)
    assert code == 0
    want = sum(p == g for p, g in zip(preds, ["pneumonia", "normal"])) / 2
    assert json.loads(out) == {"task": "medmnist", "accuracy": want, "n": 2}

    pairs = [("No fever.", "The patient is afebrile."), ("A rash on the arm.", "There is no rash.")]
    rows = [{"sentence1": p, "sentence2": h, "gold_label": g} for (p, h), g in zip(pairs, ["entailment", "neutral"])]
    (tmp_path / "nli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = predict_nli(model, tok, pairs)
    code, out, _ = run(["eval", "nli", "--model", ofa_dir, "--data", tmp_path / "nli.jsonl"], capsys)
    assert code == 0
    want = (int(preds[0] == "yes") + int(preds[1] == "maybe")) / 2
    assert json.loads(out) == {"task": "nli", "accuracy": want, "n": 2}


def test_eval_errors(ofa_dir, tmp_path, capsys):
    code, _, err = run(["eval", "vqa", "--model", ofa_dir, "--data", MEQSUM / "test.tsv"], capsys)
    assert code == 2 and "vqa needs --answers FILE" in err
    code, _, err = run(["eval", "nli", "--model", ofa_dir], capsys)
    assert code == 2 and "nli needs --data FILE" in err
    (tmp_path / "bad.tsv").write_text("a\tb\tunsure\n")
    code, _, err = run(["eval", "nli", "--model", ofa_dir, "--data", tmp_path / "bad.tsv"], capsys)
    assert code == 2 and "label 'unsure' is not entailment, contradiction or neutral" in err
    code, _, err = run(["eval", "meqsum", "--model", "demo", "--limit", 1], capsys)
    assert code == 2 and "demo is not a BiomedGPT (OFA) model" in err
    code, _, err = run(["eval", "meqsum"], capsys)
    assert code == 2 and "give --model" in err


def test_biogpt_tasks_with_a_biomedgpt_model_are_one_error(ofa_dir, tmp_path, capsys):
    """`biogpt eval` / `extract` run BioGPT task models: a BiomedGPT model gets one error naming BiomedGPT's tasks."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "1", "title": "Aspirin.", "abstract": "Aspirin induced bleeding."}\n')
    code, _, err = run(["eval", "pubmedqa", "--model", str(ofa_dir), "--limit", "1", "--data", str(TASKS)], capsys)
    assert code == 2 and err.startswith("error:") and "biogpt eval meqsum|vqa|nli|medmnist|caption" in err
    assert "Traceback" not in err
    code, _, err = run(["extract", "--task", "bc5cdr", "--model", str(ofa_dir), str(docs), "-o", "-"], capsys)
    assert code == 2 and "biogpt eval meqsum|vqa|nli|medmnist|caption" in err and "Traceback" not in err
