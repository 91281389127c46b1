"""Bad input as a new user meets it, verb by verb: one `error:` line on stderr, exit code 2, nothing written."""

import json
import os

import pytest

from biogpt.cli import main

from .conftest import TASKS, VOCABS
from .test_model import CONFIGS, _save_hf_with_vocab, random_hf


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random BioGPT with the base vocabulary (64 positions)."""
    return _save_hf_with_vocab(random_hf(**{**CONFIGS[0], "vocab_size": 42384}), tmp_path_factory.mktemp("m"))


def run(argv, capsys):
    """(exit code, stderr) of one CLI call; asserts the one-line error contract for failures."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("  generated")]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code, err


# (arguments, a phrase the error must contain); {m} is the tiny model, {t} the task data, {tmp} a fresh folder
USAGE_ERRORS = [
    (["eval", "hoc", "--predictions", "p.txt", "--batch-size", "-1"], "--batch-size: must be >= 1, got -1"),
    (["eval", "hoc", "--predictions", "p.txt", "--limit", "0"], "--limit: must be >= 1, got 0"),
    (["eval", "hoc", "--predictions", "p.txt", "--limit", "-1"], "--limit: must be >= 1, got -1"),
    (["eval", "hoc", "--model", "{m}", "--threads", "0"], "--threads: must be >= 1, got 0"),
    (["eval", "hoc", "--model", "{m}", "--threads", "-1"], "--threads: must be >= 1, got -1"),
    (["generate", "--model", "{m}", "x", "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
    (["generate", "--model", "{m}", "x", "--do-sample", "--temperature", "0"], "--temperature: must be > 0.0"),
    (["generate", "--model", "{m}", "x", "--do-sample", "--top-p", "0"], "--top-p: must be > 0.0"),
    (["generate", "--model", "{m}", "x", "--top-p", "1.5"], "--top-p: must be <= 1.0"),
    (["generate", "--model", "{m}", "x", "--num-beams", "nan"], "expected a positive integer, got 'nan'"),
    (["corpus", "build", "in.txt", "--vocab", "v", "--output", "o", "--shard-tokens", "0"], "--shard-tokens: must"),
    (["corpus", "build", "in.txt", "--vocab", "v", "--output", "o", "--shard-tokens", "-1"], "--shard-tokens: must"),
    (["corpus", "build", "in.txt", "--vocab", "v", "--output", "o", "--valid-per-mille", "2000"], "must be <= 1000"),
    (["corpus", "build", "in.txt", "--vocab", "v", "--output", "o", "--workers", "0"], "--workers: must be >= 1"),
    (["corpus", "build", "in.txt", "--vocab", "v", "--output", "o", "--workers", "-1"], "--workers: must be >= 1"),
    (["finetune", "hoc", "--model", "{m}", "--output", "o", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["finetune", "hoc", "--model", "{m}", "--output", "o", "--max-updates", "0"], "--max-updates: must be >= 1"),
    (["finetune", "hoc", "--model", "{m}", "--output", "o", "--max-updates", "-1"], "--max-updates: must be >= 1"),
    (["pretrain", "--corpus", "c", "--vocab", "v", "--output", "o", "--save-every", "0"], "--save-every: must be"),
    (["pretrain", "--corpus", "c", "--vocab", "v", "--output", "o", "--eval-every", "0"], "--eval-every: must be"),
    (["pretrain", "--corpus", "c", "--vocab", "v", "--output", "o", "--micro-batch-tokens", "0"], "must be >= 1"),
    (["pretrain", "--corpus", "c", "--vocab", "v", "--output", "o", "--tokens-per-update", "0"], "must be >= 1"),
    (["pretrain", "--corpus", "c", "--vocab", "v", "--output", "o", "--block", "0"], "--block: must be >= 1"),
    (["pretrain", "--corpus", "c", "--vocab", "v", "--output", "o", "--threads", "0"], "--threads: must be >= 1"),
    (["bpe", "learn", "in.txt", "--output", "o", "--merges", "0"], "--merges: must be >= 1"),
]

INPUT_ERRORS = [
    # missing inputs, folders for files, files for folders
    (["info", "{tmp}/missing"], "no such file or directory"),
    (["corpus", "build", "{tmp}/missing.xml", "--vocab", "{v}", "--output", "{tmp}/c"], "missing.xml: no such file"),
    (["corpus", "build", "{tmp}", "--vocab", "{v}", "--output", "{tmp}/c"], "is a folder; give the files inside"),
    (["bpe", "learn", "{tmp}/missing.txt", "--output", "{tmp}/v"], "missing.txt: no such file"),
    (["eval", "hoc", "--predictions", "{tmp}/p.txt", "--data", "{tmp}/nowhere"], "--data {tmp}/nowhere: no such"),
    (["eval", "hoc", "--model", "{m}", "--predictions", "{tmp}/p.txt", "--data", "{t}"], "give one of --model"),
    # output paths are checked before the work
    (["eval", "hoc", "--model", "{m}", "--data", "{t}", "--output", "{tmp}/no/such/dir/r.json"], "does not exist"),
    (["eval", "hoc", "--model", "{m}", "--data", "{t}", "--save-outputs", "{tmp}"], "is a directory"),
    (["convert", "{m}", "{m}/config.json"], "exists and is not a folder"),
    # generation that cannot be served
    (["generate", "--model", "{m}", "word " * 80], "fills the model's 64 positions"),
    (["pretrain", "--corpus", "{tmp}", "--vocab", "{v}", "--output", "{tmp}/o"], "no manifest.json"),
    (["pretrain", "--corpus", "{tmp}", "--vocab", "{v}", "--output", "{tmp}/o", "--device", "cuda"], "CUDA is not"),
]


def _fill(argv, **where):
    return [a.format(**where) if isinstance(a, str) else a for a in argv]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=[" ".join(a[:2] + a[-2:]) for a, _ in USAGE_ERRORS])
def test_usage_errors(argv, message, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(_fill(argv, m=model_dir, t=TASKS, tmp=tmp_path, v=VOCABS["base"]), capsys)
    assert code == 2 and message in err, err
    assert list(tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.parametrize("argv,message", INPUT_ERRORS, ids=[" ".join(a[:3]) for a, _ in INPUT_ERRORS])
def test_input_errors(argv, message, model_dir, tmp_path, capsys):
    where = dict(m=model_dir, t=TASKS, tmp=tmp_path, v=VOCABS["base"])
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run(_fill(argv, **where), capsys)
    assert code == 2 and message.format(**where) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was written


def test_default_data_folder_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ../shared/data/tasks does not exist from here
    (tmp_path / "p.txt").write_text("x\n")
    code, err = run(["eval", "hoc", "--predictions", "p.txt"], capsys)
    assert code == 2
    assert f"../shared/data/tasks (the default, relative to the current folder {tmp_path})" in err
    assert "pass --data DIR" in err


def test_bad_config_and_manifest_files(model_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    for text, message in [("{not json", "config.json: not valid JSON"), ("[1, 2]", "expected a JSON object"),
                          (json.dumps({"model_type": "biogpt"}), "lacks integer vocab_size")]:  # fmt: skip
        (d / "config.json").write_text(text)
        code, err = run(["info", d], capsys)
        assert code == 2 and message in err, err


def test_interrupt_is_one_line(model_dir, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("biogpt.cli.models.load_for_inference", interrupted)
    assert main(["generate", "--model", str(model_dir), "x"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted") and "Traceback" not in err


def test_os_errors_are_one_line(model_dir, tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setattr("biogpt.families.biogpt.save_hf", full_disk)
    code, err = run(["convert", model_dir, tmp_path / "out"], capsys)
    assert code == 2 and err == f"error: {tmp_path / 'out'}: No space left on device\n"


def test_help_gives_units_and_defaults(capsys):
    for argv, phrases in [
        (["finetune", "--help"], ["bc5cdr 1e-05, ddi 0.0001", "ddi 500", "hoc 20000", "(default: 32768 = 1024 x 32"]),
        (["pretrain", "--help"], ["updates between checkpoints (default: 100)", "peak TFLOP/s"]),
        (["corpus", "build", "--help"], ["per 1000, 0..1000 (default: 5)", "tokens per shard file"]),
        (["generate", "--help"], ["tokens to generate (default: 50)", "in (0, 1] (default: 1.0)"]),
    ]:
        code = main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert code == 0 and all(p in out for p in phrases), (argv, out)


def test_eval_writes_reports_whole(model_dir, tmp_path, capsys):
    """The report and outputs appear complete (written under a temporary name, then renamed)."""
    out, report = tmp_path / "out.txt", tmp_path / "r.json"
    code, _ = run(["eval", "hoc", "--model", model_dir, "--data", TASKS, "--limit", "2", "--output", report,
                   "--save-outputs", out], capsys)  # fmt: skip
    assert code == 2  # the tiny model has no HoC prompt token: refused before anything is written
    assert not out.exists() and not report.exists()
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []
