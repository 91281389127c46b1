"""`biogpt pretrain`: causal LM training from scratch on a corpus built by `biogpt corpus build`."""

from __future__ import annotations

from pathlib import Path

import torch

from biogpt.checkpoints.convert import save_hf
from biogpt.errors import TrainingError
from biogpt.models.biogpt import BioGPT, BioGPTConfig
from biogpt.text.tokenizer import Tokenizer
from biogpt.training.corpus import load_shards, read_manifest, vocab_fingerprint
from biogpt.training.data import BlockData, lm_batches, rank_batches
from biogpt.training.dist import device_for, init, log0
from biogpt.training.loop import TrainConfig, train
from biogpt.training.runs import ON_EXISTING

PRESETS = {
    "tiny": dict(n_layer=2, d_model=64, n_head=4, d_ffn=256, max_positions=256),
    "small": dict(n_layer=4, d_model=256, n_head=4, d_ffn=1024, max_positions=512),
    # the embedded demo model: small's width and depth with the 1,024 positions the task recipes assume
    "demo": dict(n_layer=4, d_model=256, n_head=4, d_ffn=1024, max_positions=1024),
    "base": dict(n_layer=24, d_model=1024, n_head=16, d_ffn=4096, max_positions=1024),
    "large": dict(n_layer=48, d_model=1600, n_head=25, d_ffn=6400, max_positions=2048),
}


def check_corpus(corpus_dir: str | Path, vocab_dir: str | Path, tok: Tokenizer) -> dict:
    """The corpus manifest, once it is known to be a finished build with this vocabulary (else TrainingError
    naming both vocabularies); ids from another vocabulary would train a model on nonsense."""
    manifest = read_manifest(corpus_dir)
    if manifest["done"] < len(manifest["inputs"]):
        raise TrainingError(f"{corpus_dir}: the corpus build is unfinished ({manifest['done']} of "
                            f"{len(manifest['inputs'])} inputs); rerun `biogpt corpus build` with the same "
                            "arguments to finish it")  # fmt: skip
    built, built_fp = manifest["vocab_size"], manifest.get("vocab_sha256")  # no fingerprint: an older build
    fp = vocab_fingerprint(tok)
    if built != tok.vocab_size or (built_fp is not None and built_fp != fp):
        raise TrainingError(f"{corpus_dir} was built with the vocabulary {manifest.get('vocab', '?')} ({built} tokens"
                            f"{', sha256 ' + built_fp[:12] if built_fp else ''}), but --vocab {vocab_dir} has "
                            f"{tok.vocab_size} tokens (sha256 {fp[:12]}): pass the vocabulary the corpus was built "
                            "with, or build the corpus again with this one")  # fmt: skip
    return manifest


def pretrain(
    corpus_dir: str | Path,
    vocab_dir: str | Path,
    cfg: TrainConfig,
    preset: str = "tiny",
    block: int | None = None,
    model_overrides: dict | None = None,
    device: str | torch.device = "cpu",
    on_existing: str = "resume",
) -> list[dict]:
    """Causal LM training from scratch on a built corpus; checkpoints under cfg.out_dir (cfg.fsdp to shard).

    `device`: "cpu" or "cuda" (under torchrun, each rank its `cuda:LOCAL_RANK`). An earlier run in cfg.out_dir
    is resumed if it has the same settings (preset, model, block, vocabulary, corpus and `run_settings(cfg)`),
    or started again with on_existing="overwrite". Bad input raises TrainingError or CorpusError before any
    training, and nothing is written.
    """
    if preset not in PRESETS:
        raise TrainingError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if on_existing not in ON_EXISTING:
        raise TrainingError(f"on_existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")
    dev = device_for(device)
    tok = Tokenizer.from_pretrained(vocab_dir)
    manifest = check_corpus(corpus_dir, vocab_dir, tok)
    try:
        mcfg = BioGPTConfig(vocab_size=tok.vocab_size, **{**PRESETS[preset], **(model_overrides or {})})
    except (TypeError, ValueError) as e:
        raise TrainingError(f"model settings: {e}") from None
    block = block if block is not None else mcfg.max_positions
    if not 1 <= block <= mcfg.max_positions:
        raise TrainingError(f"block must be in 1..{mcfg.max_positions} (the {preset} model's positions), got {block}")
    data = BlockData(load_shards(corpus_dir, "train"), block, cfg.seed)
    rank, world = init(dev)
    torch.manual_seed(cfg.seed)
    model = BioGPT(mcfg)
    model.init_weights(seed=cfg.seed)
    model.to(dev)
    per_micro = max(1, cfg.micro_batch_tokens // block)
    micro_per_update = max(1, cfg.tokens_per_update // (per_micro * block * world))
    position = {"epoch": 0, "block": 0}
    next_batch = rank_batches(lm_batches(data, per_micro, position), rank, world)
    valid = None
    valid_shards = load_shards(corpus_dir, "valid")
    if valid_shards and sum(map(len, valid_shards)) > block + 1:
        vdata = BlockData(valid_shards, block, cfg.seed)

        def valid():
            ks = list(range(min(len(vdata), 16)))
            return [vdata.batch(ks[i : i + per_micro]) for i in range(0, len(ks), per_micro)]

    settings = {"preset": preset, "model": mcfg.to_dict(), "block": block, "vocab_sha256": vocab_fingerprint(tok),
                "corpus_train_tokens": sum(manifest["train"])}  # fmt: skip
    log0(rank, f"model {preset}: {model.num_parameters() / 1e6:.2f}M parameters; {len(data)} blocks of {block}; "
               f"{micro_per_update} x {per_micro} blocks per update on each of {world} ranks ({dev})")  # fmt: skip
    return train(model, cfg, next_batch, micro_per_update, position, valid, lambda m, d: save_hf(m, tok, d),
                 settings=settings, on_existing=on_existing)  # fmt: skip
