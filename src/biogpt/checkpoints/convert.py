"""Writing a BioGPT model as a Hugging Face directory that `transformers` loads unchanged."""

from __future__ import annotations

from pathlib import Path

from biogpt import jsonfile
from biogpt.checkpoints.biogpt import config_to_hf, ours_to_hf
from biogpt.checkpoints.io import write_json, write_safetensors
from biogpt.models.biogpt import BioGPT
from biogpt.text.tokenizer import PROMPT_PATTERN, Tokenizer


def save_hf(model: BioGPT, tokenizer: Tokenizer | None, directory: str | Path) -> None:
    """model.safetensors + config.json (+ the tokenizer files): transformers.BioGptForCausalLM / BioGptTokenizer
    load it unchanged; every file is written under a temporary name and renamed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    write_safetensors(d / "model.safetensors", ours_to_hf(model.state_dict(), cfg.n_layer))
    write_json(d / "config.json", config_to_hf(cfg))
    write_json(d / "generation_config.json", {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1})
    if tokenizer is not None:
        tokenizer.save_pretrained(d, format="hf")
        if tokenizer.num_prompt_tokens:
            _add_prompt_tokens_to_hf_config(d, tokenizer)


def _add_prompt_tokens_to_hf_config(d: Path, tokenizer: Tokenizer) -> None:
    """Declare learned1..K as added tokens so that transformers decodes those ids to their names."""
    path = d / "tokenizer_config.json"
    conf = jsonfile.loads(path.read_text())
    conf["added_tokens_decoder"] = {
        str(i): {
            "content": f"{PROMPT_PATTERN}{k}",
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for k, i in enumerate(tokenizer.prompt_ids, 1)
    }
    write_json(path, conf)
