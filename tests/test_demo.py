"""The demo model embedded in the package: it loads, is the default model, goes through the checks any
checkpoint does (info, convert to a directory transformers loads with identical logits, bf16 and int8), and
the README's main job runs on it."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import biogpt
from biogpt.api import DEMO_DIR
from biogpt.cli import main

from .conftest import TASKS

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = ("pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc")


def test_the_demo_model_is_shipped():
    """The demo model is part of the package: missing, every demo test fails (none is skipped)."""
    assert (DEMO_DIR / "model.safetensors").is_file() and (DEMO_DIR / "config.json").is_file()


def test_demo_is_shipped_small_and_documented():
    files = {p.name: p.stat().st_size for p in DEMO_DIR.iterdir() if p.is_file()}
    assert {"model.safetensors", "config.json", "vocab.json", "merges.txt", "MODEL_CARD.md", "build.json"} <= set(files)
    assert sum(files.values()) <= 25 * 2**20
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    assert "not a substitute for BioGPT" in card and "MIT" in card
    model, tok = biogpt.load("demo")
    assert sorted(model.config.prompt_tasks) == sorted(TASK_NAMES)
    slices = sorted(tuple(v) for v in model.config.prompt_tasks.values())
    assert slices == [(0, 9), (9, 9), (18, 9), (27, 9), (36, 1)] and model.config.num_prompt_tokens == 37
    assert tok.vocab_size == model.config.vocab_size


def test_demo_is_the_default_and_says_so(capsys):
    assert main(["generate", "COVID-19 is", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines()[0].startswith("using biogpt's embedded demo model")
    assert out.out.startswith("COVID-19 is")
    assert main(["info", "demo"]) == 0
    assert "prompt_tasks" in capsys.readouterr().out


def test_demo_converts_to_a_directory_transformers_loads(tmp_path):
    from transformers import BioGptForCausalLM

    assert main(["convert", "demo", str(tmp_path / "hf")]) == 0
    model, tok = biogpt.load("demo")
    hf = BioGptForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([tok.encode("Cisplatin induced nephrotoxicity in rats.") + tok.prompt_ids[:9]])
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() == 0.0
    again, _ = biogpt.load(tmp_path / "hf")
    assert again.config.prompt_tasks == model.config.prompt_tasks


def test_demo_in_bf16_and_int8_agrees_with_fp32():
    from biogpt.backends.cpu import pack_bf16, quantize_int8
    from biogpt.mining import Extractor
    from biogpt.mining.readers import title_abstract

    docs = json.loads((TASKS / "BC5CDR" / "test.json").read_text())
    texts = [d["title"] + " " + d["abstract"] for d in list(docs.values())[:16]]
    outs = {}
    for mode in ("fp32", "bf16", "int8"):
        model, tok = biogpt.load("demo")
        if mode == "bf16":
            pack_bf16(model)
        elif mode == "int8":
            quantize_int8(model)  # the form this CPU gets by default
        # grounded, as the README's main job: free decoding runs this small model into hundreds of tokens of
        # repeated statements, where one late difference changes the whole string
        ex = Extractor(model, tok, "bc5cdr", grounded=True, batch_size=4)
        outs[mode] = [r["output"] for r in ex.extract([title_abstract(str(i), "", t) for i, t in enumerate(texts)])]
    # measured: bf16 16 of 16 outputs equal to fp32's, int8 15 of 16 (so extract's --dtype auto stays fp32)
    assert len(outs["bf16"]) == len(outs["int8"]) == len(outs["fp32"]) == len(texts)
    assert sum(a == b for a, b in zip(outs["bf16"], outs["fp32"], strict=True)) >= len(texts) - 1
    assert sum(a == b for a, b in zip(outs["int8"], outs["fp32"], strict=True)) >= len(texts) - 2


def test_readme_main_job_runs():
    """The README's main job, end to end (its time is measured by the benchmarks, not asserted here)."""
    r = subprocess.run([sys.executable, "-m", "biogpt.cli", "extract", "--task", "bc5cdr", "--grounded", "--linked",
                        "examples/pubmed_sample.xml", "-o", "-"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0].startswith("using biogpt's embedded demo model")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["id"] for x in records] == ["227508", "354896", "435349", "603022", "1601297"]
    for x in records:
        for e in x["entities"]:
            for sp in e["spans"]:
                assert x["text"][sp["start"] : sp["end"]] == sp["text"]
    assert "done: 5 documents (0 skipped, 0 malformed records), 100.0% parsed" in r.stderr
    assert "grounding rate 100.0%" in r.stderr and all(x["relations"] for x in records)
    assert all(e["id"] and e["curie"].startswith("MESH:") for x in records for e in x["entities"])  # all linked
