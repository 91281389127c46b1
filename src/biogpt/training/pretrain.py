"""`biogpt pretrain`: causal LM training from scratch on a corpus built by `biogpt corpus build`."""

from __future__ import annotations

from pathlib import Path

import torch

from biogpt.checkpoints.convert import save_hf
from biogpt.models.biogpt import BioGPT, BioGPTConfig
from biogpt.text.tokenizer import Tokenizer
from biogpt.training.corpus import load_shards
from biogpt.training.data import BlockData, lm_batches, rank_batches
from biogpt.training.dist import dist_info, log0
from biogpt.training.loop import TrainConfig, train

PRESETS = {
    "tiny": dict(n_layer=2, d_model=64, n_head=4, d_ffn=256, max_positions=256),
    "small": dict(n_layer=4, d_model=256, n_head=4, d_ffn=1024, max_positions=512),
    "base": dict(n_layer=24, d_model=1024, n_head=16, d_ffn=4096, max_positions=1024),
    "large": dict(n_layer=48, d_model=1600, n_head=25, d_ffn=6400, max_positions=2048),
}


def pretrain(
    corpus_dir: str | Path,
    vocab_dir: str | Path,
    cfg: TrainConfig,
    preset: str = "tiny",
    block: int | None = None,
    model_overrides: dict | None = None,
    device: str = "cpu",
) -> list[dict]:
    """Causal LM training from scratch on a built corpus; checkpoints under cfg.out_dir (cfg.fsdp to shard)."""

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    rank, world = dist_info()
    tok = Tokenizer.from_pretrained(vocab_dir)
    mcfg = BioGPTConfig(vocab_size=tok.vocab_size, **{**PRESETS[preset], **(model_overrides or {})})
    block = block or mcfg.max_positions
    torch.manual_seed(cfg.seed)
    model = BioGPT(mcfg)
    model.init_weights(seed=cfg.seed)
    model.to(device)
    data = BlockData(load_shards(corpus_dir, "train"), block, cfg.seed)
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
            xs = [vdata.get(k) for k in ks]
            return [(torch.stack(xs[i : i + per_micro])[:, :-1], torch.stack(xs[i : i + per_micro])[:, 1:])
                    for i in range(0, len(xs), per_micro)]  # fmt: skip

    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    log0(rank, f"model {preset}: {model.num_parameters() / 1e6:.2f}M parameters; {len(data)} blocks of {block}; "
               f"{micro_per_update} x {per_micro} blocks per update on each of {world} ranks")  # fmt: skip
    return train(model, cfg, next_batch, micro_per_update, position, valid, lambda m, d: save_hf(m, tok, d))
