"""Model families. Each is one file that reads top to bottom, and they share what the engine relies on:

    model(input_ids [B, T], attention_mask [B, T] | None, cache=KVCache | None, last_only=bool) -> logits [B, T, V]
    model.new_cache(batch, max_len) -> KVCache
    model.config (a dataclass: vocab_size, max_positions, ...)
"""

from biogpt.models.biogpt import PAD_ID, POSITION_OFFSET, BioGPT, BioGPTConfig
from biogpt.models.cache import KVCache
from biogpt.models.gpt2 import GPT2, GPT2Config

__all__ = ["BioGPT", "BioGPTConfig", "GPT2", "GPT2Config", "KVCache", "PAD_ID", "POSITION_OFFSET"]
