"""Model families are described once (src/biogpt/families/) and looked up through `biogpt.api`: no other module
tests a model's class, and a family the package has never heard of runs every command once registered."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import biogpt
from biogpt.api import FAMILIES, family_for, family_of, register
from biogpt.checkpoints import gpt2 as gpt2_checkpoints
from biogpt.checkpoints.io import DEMO_DIR, read_hf_weights
from biogpt.cli import main
from biogpt.errors import CheckpointError
from biogpt.families import Family
from biogpt.families.biogpt import BIOGPT
from biogpt.families.gpt2 import GPT2_FAMILY
from biogpt.generation import generate
from biogpt.models.gpt2 import GPT2, GPT2Config
from biogpt.text.bytelevel import ByteLevelTokenizer

SRC = Path(__file__).resolve().parents[1] / "src" / "biogpt"
FAMILY_CLASSES = {"BioGPT", "GPT2", "OFA", "BioGPTConfig", "GPT2Config", "OFAConfig"}


def _family_checks(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every isinstance/type comparison against a family class and every `family(...)` call."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if fn == "family":
                found.append((node.lineno, "family(...)"))
            if fn in ("isinstance", "issubclass") and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                names = {k.id if isinstance(k, ast.Name) else getattr(k, "attr", "") for k in kinds}
                if names & FAMILY_CLASSES:
                    found.append((node.lineno, f"{fn}(..., {'|'.join(sorted(names & FAMILY_CLASSES))})"))
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Name) and c.id in FAMILY_CLASSES
                                                 for c in node.comparators):  # fmt: skip
            found.append((node.lineno, "comparison with a family class"))
    return found


def test_no_family_checks_outside_the_descriptors():
    """Only api.py (the table and its lookups), families/ (the descriptors), and the model and checkpoint modules
    (models/*.py, checkpoints/*.py: each refers to its own classes) may test a model's or config's class or
    call `family(...)`; everything else asks the descriptor (`family_of(model).byte_level`, ...)."""
    allowed = ("api.py", "families/", "models/", "checkpoints/")
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(allowed):
            continue
        bad += [f"{rel}:{line}: {what}" for line, what in _family_checks(ast.parse(path.read_text()))]
    assert bad == []


def test_the_check_finds_what_it_forbids():
    code = "isinstance(m, OFA)\nisinstance(c, (int, models.GPT2Config))\nfamily(p)\ntype(m) is BioGPT\n"
    assert [line for line, _ in _family_checks(ast.parse(code))] == [1, 2, 3, 4]


def test_lookups_name_the_three_families(tmp_path):
    from .test_gpt2 import hf_dir

    hf_dir(tmp_path / "gpt2")
    assert [family_for("demo").name, family_for(tmp_path / "gpt2").name] == ["biogpt", "gpt2"]
    model, tok = biogpt.load("demo")
    assert family_of(model).name == "biogpt" and family_of(model.config).name == "biogpt"
    assert family_of(model).special_ids(tok) == {"eos_token_id": 2, "pad_token_id": 1}  # fairseq's </s>, <pad>
    gpt2, gtok = biogpt.load(tmp_path / "gpt2")
    assert family_of(gpt2).special_ids(gtok) == {"eos_token_id": 600, "pad_token_id": 600}  # <|endoftext|>
    assert {"ofa", "gpt2", "biogpt"} <= set(FAMILIES) and "meqsum" in FAMILIES["ofa"].tasks


def test_load_form_applies_the_cpu_form_the_cli_chose():
    """form= gives the model the backend's own pack/quantize gives the fp32 model (what the CLI did before)."""
    from biogpt.backends.cpu import pack_bf16, quantize_int8

    ids = torch.tensor([[2, 5, 9, 14, 30]])
    for form, apply in (("int8", quantize_int8), ("bf16-packed", pack_bf16), ("bf16", pack_bf16)):
        got, _ = biogpt.load("demo", form=form)
        want = apply(biogpt.load("demo")[0])
        assert [type(m).__name__ for m in got.modules()] == [type(m).__name__ for m in want.modules()], form
        assert torch.equal(got(ids), want(ids)), form
    fp32, _ = biogpt.load("demo", form="fp32")
    assert next(fp32.parameters()).dtype == torch.float32
    with pytest.raises(biogpt.CheckpointError, match="--dtype int8 runs on the CPU; on --device cuda use bf16"):
        biogpt.load("demo", form="int8", device="cuda")
    with pytest.raises(biogpt.CheckpointError, match="unknown form 'int4'"):
        biogpt.load("demo", form="int4")
    with pytest.raises(biogpt.CheckpointError, match="dtype or form, not both"):
        biogpt.load("demo", dtype="bf16", form="bf16")


# --- a fourth family, known to the tests only ----------------------------------------------------------------


class ToyConfig(GPT2Config):
    """A GPT-2 variant's config: same fields, its own model_type on disk."""


class ToyGPT2(GPT2):
    """A GPT-2 variant: the GPT-2 blocks under another name."""


def _toy_recognise(p: Path) -> bool:
    f = p / "config.json"
    return p.is_dir() and f.exists() and json.loads(f.read_text()).get("model_type") == "toy-gpt2"


def _toy_load(p: Path, dtype, device, vocab):
    hf = json.loads((p / "config.json").read_text())
    cfg = ToyConfig(**asdict(gpt2_checkpoints.config_from_hf({**hf, "model_type": "gpt2"})))
    model = ToyGPT2(cfg)
    model.load_state_dict(gpt2_checkpoints.hf_to_ours(read_hf_weights(p), cfg.n_layer))
    return model.to(device, dtype).eval(), ByteLevelTokenizer.from_pretrained(Path(vocab) if vocab else p)


def _toy_save(model, tok, d: Path) -> None:
    gpt2_checkpoints.save_hf(model, tok, d)
    hf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**hf, "model_type": "toy-gpt2", "architectures": ["ToyGPT2"]}))


def _toy_describe(path: str) -> list[str]:
    model, tok = _toy_load(Path(path), None, "cpu", None)
    return [f"model: {path} (Toy GPT-2, {model.config.n_layer} layers)", f"vocabulary: {tok.vocab_size} tokens"]


def test_replacing_a_family_keeps_its_place_and_load_keeps_its_arguments(tmp_path):
    """register() replacing BioGPT (the fallback that accepts any path) must not let it claim GPT-2's folders;
    load's positional arguments stay (path, dtype, device, vocab, ema, image_size), `form` by keyword."""
    from .test_gpt2 import hf_dir

    hf_dir(tmp_path / "gpt2")
    order = list(FAMILIES)
    try:
        register(dataclasses.replace(FAMILIES["biogpt"], title="BioGPT, replaced"))
        assert list(FAMILIES) == order and family_for(tmp_path / "gpt2").name == "gpt2"
        assert family_for("demo").title == "BioGPT, replaced"
    finally:
        register(BIOGPT)
    assert list(FAMILIES) == order and family_for("demo") is BIOGPT
    _, tok = biogpt.load("demo", None, "cpu", DEMO_DIR)
    assert tok.encode("aspirin") == biogpt.load("demo")[1].encode("aspirin")
    with pytest.raises(CheckpointError, match="image_size applies to BiomedGPT models"):
        biogpt.load(tmp_path / "gpt2", image_size=0)


def test_chat_names_the_loaded_family(tmp_path):
    """/v1/chat/completions: one 400 naming the family that is loaded, not always BioGPT."""
    pytest.importorskip("fastapi")
    from biogpt.serve import create_app

    from .test_gpt2 import hf_dir
    from .test_serve import serve

    hf_dir(tmp_path / "gpt2")
    model, tok = biogpt.load(tmp_path / "gpt2")

    async def go(http, client):
        return await http.post("/v1/chat/completions", json={"model": "m", "messages": []})

    got = serve(create_app(model, tok, model_name="m"), go)
    assert got.status_code == 400
    assert got.json()["error"]["message"].startswith("`m` has no chat template: GPT-2 is a completion model")


TOY = Family(name="toy-gpt2", title="Toy GPT-2", short="Toy", model_class=ToyGPT2, config_class=ToyConfig,
             recognise=_toy_recognise, load=_toy_load, save=_toy_save, describe=_toy_describe,
             tokenizer=GPT2_FAMILY.tokenizer, encode=GPT2_FAMILY.encode, special_ids=GPT2_FAMILY.special_ids,
             tasks=("pubmedqa",), byte_level=True)  # fmt: skip


@pytest.fixture
def toy(tmp_path):
    """A 2-layer toy-gpt2 folder (tiny random weights, byte-level tokenizer), the family registered meanwhile;
    and the same weights as a plain GPT-2 folder."""
    from .test_gpt2 import hf_dir

    hf_dir(tmp_path / "gpt2", n_layer=2)
    shutil.copytree(tmp_path / "gpt2", tmp_path / "toy")
    hf = json.loads((tmp_path / "toy" / "config.json").read_text())
    (tmp_path / "toy" / "config.json").write_text(json.dumps({**hf, "model_type": "toy-gpt2",
                                                              "architectures": ["ToyGPT2"]}))  # fmt: skip
    register(TOY)
    yield tmp_path / "toy", tmp_path / "gpt2"
    FAMILIES.pop(TOY.name)


def _greedy(model, tok, prompt: str, n: int) -> tuple[list[int], str]:
    """(whole row, new text up to <|endoftext|>) of GPT-2's own greedy generate."""
    eos = tok.eos_token_id
    ids = tok.encode(prompt)
    row = generate(model, [ids], max_new_tokens=n, eos_token_id=eos, pad_token_id=eos).sequences[0].tolist()
    new = row[len(ids) :]
    return row, tok.decode(new[: new.index(eos)] if eos in new else new)


def test_a_toy_family_runs_every_command(toy, tmp_path, capsys):
    toy_dir, gpt2_dir = toy
    assert family_for(toy_dir) is TOY and family_for(gpt2_dir).name == "gpt2"
    model, tok = biogpt.load(toy_dir)
    ref, rtok = biogpt.load(gpt2_dir)
    assert type(model) is ToyGPT2 and family_of(model) is TOY and family_of(ref).name == "gpt2"
    row, text = _greedy(ref, rtok, "the patient", 8)

    assert main(["generate", "the patient", "--model", str(toy_dir), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == rtok.decode(row) + "\n"
    assert _greedy(model, tok, "the patient", 8)[0] == row

    assert main(["info", str(toy_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"model: {toy_dir} (Toy GPT-2, 2 layers)\n")

    assert main(["convert", str(toy_dir), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    back, _ = biogpt.load(tmp_path / "out")
    ids = torch.tensor([tok.encode("aspirin reduces the pain")])
    assert family_for(tmp_path / "out") is TOY and torch.equal(back(ids), model(ids))

    _serve_matches(model, tok, text)


def _serve_matches(model, tok, text: str) -> None:
    """/v1/completions of the toy model returns GPT-2's own greedy text."""
    pytest.importorskip("fastapi")
    from biogpt.serve import create_app

    from .test_serve import serve

    async def go(http, client):
        return await client.completions.create(model="toy", prompt="the patient", max_tokens=8, temperature=0)

    got = serve(create_app(model, tok, model_name="toy"), go)
    assert got.choices[0].text == text


# --- one set of verbs ------------------------------------------------------------------------------------------

MEQSUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "biomedgpt" / "tasks" / "MeQSum"


def test_eval_and_finetune_help_list_each_familys_tasks(capsys):
    for verb, attr in (("eval", "tasks"), ("finetune", "finetune_tasks")):
        assert main([verb, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for desc in FAMILIES.values():
            assert f"{desc.short}: {', '.join(getattr(desc, attr))}" in text, (verb, desc.name)
    assert "BiomedGPT: meqsum)" in text  # the last listed by `finetune --help`


def test_old_verbs_warn_and_do_what_the_new_verbs_do(tmp_path, capsys):
    """`eval-biomedgpt` / `finetune-biomedgpt`: one deprecation line on stderr, then exactly the new verb's run."""
    from biogpt.tasks.biomedgpt import read_meqsum

    recs = read_meqsum(MEQSUM / "test.tsv")[:3]
    saved = tmp_path / "saved.jsonl"
    saved.write_text("".join(json.dumps({"id": r.id, "prediction": "what is " + r.id}) + "\n" for r in recs))
    argv = ["meqsum", "--predictions", str(saved), "--data", str(MEQSUM), "--limit", "3"]
    assert main(["eval", *argv]) == 0
    new_out, new_err = capsys.readouterr()
    assert main(["eval-biomedgpt", *argv]) == 0
    old_out, old_err = capsys.readouterr()
    assert json.loads(new_out)["n"] == 3 and old_out == new_out
    warning = "warning: `biogpt eval-biomedgpt` is deprecated; use `biogpt eval` (the same arguments)\n"
    assert old_err == warning + new_err

    argv = ["meqsum", "--model", "demo", "--output", str(tmp_path / "ft")]
    assert main(["finetune", *argv]) == 2
    new_err = capsys.readouterr().err
    assert main(["finetune-biomedgpt", *argv]) == 2
    old_err = capsys.readouterr().err
    assert new_err == ("error: demo is not a BiomedGPT (OFA) model; `biogpt finetune meqsum` trains BiomedGPT (OFA) "
                       "models\n")  # fmt: skip
    assert old_err == ("warning: `biogpt finetune-biomedgpt` is deprecated; use `biogpt finetune` (the same "
                       "arguments)\n" + new_err)  # fmt: skip


def test_a_task_of_one_kind_refuses_the_other_kinds_options(capsys):
    assert main(["eval", "bc5cdr", "--answers", "a.json"]) == 2
    assert capsys.readouterr().err == "error: --answers does not apply to bc5cdr\n"
    assert main(["eval", "vqa", "--grounded"]) == 2
    assert capsys.readouterr().err == "error: --grounded does not apply to vqa\n"
    assert main(["eval", "no-such-task\u2028"]) == 2
    assert capsys.readouterr().err.startswith("error: eval: unknown task 'no-such-task\\u2028'; choose from bc5cdr,")


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"biogpt {version('biogpt')}\n"
