"""Checkpoint shapes as released: Hub task models without learned tokens in their vocabulary, fairseq configs
pickled as OmegaConf objects, configs that leave fields out, untied heads; BioGPT-Large's task settings."""

import json
import pickle
import shutil

import pytest
import torch

from biogpt import load
from biogpt.checkpoints import CheckpointError, load_state
from biogpt.cli import main
from biogpt.tasks import get_task, predict, task_for_model

from .conftest import TASKS, VOCABS, build_hf_vocab
from .test_model import CONFIGS, PROMPTS, fairseq_checkpoint, random_hf


def hub_task_model(d, surplus: int, vocab: str = "base", **kw):
    """A tiny BioGptForCausalLM saved by transformers with `surplus` rows beyond the vocabulary, and a plain
    BioGptTokenizer vocabulary (vocab.json + merges.txt, no added tokens): the shape of
    microsoft/BioGPT-Large-PubMedQA (57,726 rows, 57,717 tokens)."""
    from transformers import BioGptTokenizer

    n = {"base": 42384, "large": 57717}[vocab]
    hf = random_hf(**{**CONFIGS[0], "vocab_size": n + surplus, "max_position_embeddings": 1024, **kw})
    hf.save_pretrained(d, safe_serialization=True)
    files = build_hf_vocab(VOCABS[vocab], d / "tok")
    BioGptTokenizer(str(files / "vocab.json"), str(files / "merges.txt")).save_pretrained(d)
    shutil.rmtree(d / "tok")
    assert len(json.loads((d / "vocab.json").read_text())) == n  # no learned tokens in the tokenizer
    return hf


def test_hub_task_model_without_learned_tokens_loads(tmp_path, capsys):
    hf = hub_task_model(tmp_path / "qa", 9)
    model, tok = load(tmp_path / "qa")
    assert model.config.num_prompt_tokens == 9 and tok.prompt_ids == list(range(42384, 42393))
    ids = torch.tensor([PROMPTS[0] + tok.prompt_ids])
    assert (model(ids) - hf(ids).logits.detach()).abs().max() <= 1e-5
    assert main(["info", str(tmp_path / "qa")]) == 0
    out = capsys.readouterr().out
    assert "prompt tokens: 9 (learned1..learned9 = ids 42384..42392; inferred: 9 embedding rows beyond the " \
           "42384-token vocabulary)" in out  # fmt: skip
    assert main(["eval", "pubmedqa", "--model", str(tmp_path / "qa"), "--data", str(TASKS), "--limit", "2",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 2 and report["settings"]["num_prompt_tokens"] == 9
    # one prompt token (HoC's shape) is a surplus of one row
    hub_task_model(tmp_path / "hoc", 1)
    assert load_state(tmp_path / "hoc").config.num_prompt_tokens == 1


def test_large_mismatch_still_refused(tmp_path):
    hub_task_model(tmp_path / "far", 65)  # one row more than any prompt-token count we accept
    with pytest.raises(CheckpointError, match=r"42449 embedding rows but the vocabulary .* has 42384 tokens"):
        load(tmp_path / "far")
    # BioGPT-Large-sized rows (57,717 + 9) beside the base vocabulary
    d = tmp_path / "large-rows"
    hub_task_model(d, 57717 + 9 - 42384)
    with pytest.raises(CheckpointError, match=r"57726 embedding rows .* 42384 tokens.*do not belong together"):
        load(d)


def test_omegaconf_cfg_is_read_not_executed(tmp_path):
    """fairseq >= 0.10 trainers may pickle cfg as an OmegaConf DictConfig: read it into plain values."""
    from omegaconf import OmegaConf

    hf = random_hf(**{**CONFIGS[1], "vocab_size": 42384 + 9})  # 5 heads: not the width's guess (60 // 64)
    d = fairseq_checkpoint(hf, tmp_path / "ddi", k=9)
    raw = torch.load(d / "checkpoint.pt", weights_only=False)
    raw["cfg"]["task"]["max_source_positions"] = 640
    raw["cfg"]["task"]["max_target_positions"] = 1024
    raw["cfg"] = OmegaConf.create(raw["cfg"])
    torch.save(raw, d / "checkpoint.pt")
    state = load_state(d)
    assert state.config.n_head == 5 and state.config.num_prompt_tokens == 9
    assert state.config.task_settings == {"max_source_positions": 640, "max_target_positions": 1024}
    model, tok = load(d)
    ids = torch.tensor([tok.encode("Aspirin.") + tok.prompt_ids])
    assert (model(ids) - hf(ids).logits.detach()).abs().max() <= 1e-5


@pytest.mark.parametrize("cfg_model,message", [
    ({"arch": "transformer_lm_prompt_biogpt"}, None),  # the arch's defaults name the heads: 16, read not guessed
    ({}, r"cfg.model.decoder_attention_heads is None"),
    ({"decoder_attention_heads": 7}, r"decoder_attention_heads is 7"),  # does not divide the width
])  # fmt: skip
def test_attention_heads_are_read_never_guessed(cfg_model, message, tmp_path):
    hf = random_hf(**{**CONFIGS[0], "vocab_size": 42384, "num_attention_heads": 16})
    d = fairseq_checkpoint(hf, tmp_path / "m", k=0)
    raw = torch.load(d / "checkpoint.pt", weights_only=False)
    model_cfg = {k: v for k, v in raw["cfg"]["model"].items() if k != "decoder_attention_heads"}
    raw["cfg"]["model"] = {**model_cfg, **cfg_model}
    torch.save(raw, d / "checkpoint.pt")
    if message is None:
        assert load_state(d).config.n_head == 16
    else:
        with pytest.raises(CheckpointError, match=message):
            load_state(d)


def test_untied_head_is_refused_not_tied(tmp_path):
    hf = random_hf(**{**CONFIGS[0], "vocab_size": 42384})
    d = fairseq_checkpoint(hf, tmp_path / "m", k=0)
    raw = torch.load(d / "checkpoint.pt", weights_only=False)
    raw["model"]["decoder.output_projection.weight"] = raw["model"]["decoder.embed_tokens.weight"] + 1.0
    torch.save(raw, d / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="output head .* differs from its token embedding"):
        load(d)
    raw["cfg"]["model"]["share_decoder_input_output_embed"] = False
    torch.save(raw, d / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="share_decoder_input_output_embed=False"):
        load(d)


def test_legacy_args_namespace(tmp_path):
    import argparse

    hf = random_hf(**{**CONFIGS[0], "vocab_size": 42384 + 9})
    d = fairseq_checkpoint(hf, tmp_path / "m", k=9)
    raw = torch.load(d / "checkpoint.pt", weights_only=False)
    raw["args"] = argparse.Namespace(**{**raw["cfg"]["task"], **raw["cfg"]["model"]})
    raw["cfg"] = None
    torch.save(raw, d / "checkpoint.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    state = load_state(d)
    assert state.config.n_head == 4 and state.prompt_source == "cfg.task.learned_prompt"


# --- BioGPT-Large's task settings ---------------------------------------------------------------------


def test_large_pubmedqa_settings_come_from_the_large_recipe():
    from biogpt.models.biogpt import BioGPTConfig

    base = BioGPTConfig(vocab_size=42393, n_layer=1, d_model=32, n_head=2, d_ffn=32, num_prompt_tokens=9)
    large = BioGPTConfig(vocab_size=57726, n_layer=1, d_model=32, n_head=2, d_ffn=32, max_positions=2048,
                         num_prompt_tokens=9)  # fmt: skip
    t_base, t_large = task_for_model("pubmedqa", base), task_for_model("pubmedqa", large)
    assert (t_base.max_source_tokens, t_base.max_length, t_base.lowercase) == (900, 1024, True)
    assert (t_large.max_source_tokens, t_large.max_length, t_large.lowercase) == (1900, 2048, False)
    src_base = t_base.examples(TASKS, "test")[0].source
    src_large = t_large.examples(TASKS, "test")[0].source
    assert src_large.startswith("question: Is anorectal") and src_base == src_large.lower()
    # what a checkpoint records wins over both
    recorded = BioGPTConfig(**{**large.to_dict(), "task_settings": {"max_source_positions": 1500}})
    assert task_for_model("pubmedqa", recorded).max_source_tokens == 1500
    assert task_for_model("ddi", base).max_source_tokens == 640 == get_task("ddi").max_source_tokens


def test_large_decoding_length_is_1024_as_inference_py(monkeypatch):
    """inference.py passes --decoding_length 1024: min(1024, positions - 1) tokens in all, prefix included."""
    from biogpt import BioGPT, Tokenizer
    from biogpt.models.biogpt import BioGPTConfig
    from biogpt.tasks import common
    from biogpt.tasks.common import Example

    asked = []

    def fake_generate(model, prompts, max_new_tokens, constraints=None):
        asked.append((len(prompts[0]), max_new_tokens))
        return type("Out", (), {"sequences": torch.full((len(prompts), len(prompts[0]) + 1), 2)})()

    monkeypatch.setattr(common, "generate", fake_generate)
    tok = Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=9)
    source = " ".join(["word"] * 1000)  # 1,000 tokens: kept whole under Large's 1,900-token source limit
    for positions, want_new in ((2048, 1024 - 1009), (1024, min(1024 - 900 - 9, 1023 - 909))):
        cfg = BioGPTConfig(vocab_size=42393, n_layer=1, d_model=32, n_head=2, d_ffn=32, max_positions=positions,
                           num_prompt_tokens=9)  # fmt: skip
        task = task_for_model("pubmedqa", cfg)
        predict(task, BioGPT(cfg), tok, [Example("1", source, "", "yes")])
        prefix, new = asked[-1]
        assert new == want_new, (positions, prefix, new)
    assert asked[0][0] == 1010  # </s> + 1,000 source tokens + 9 prompt tokens (Large: not truncated)
    assert asked[1][0] == 1 + 900 + 9  # base: truncated to 899 tokens + `...`
