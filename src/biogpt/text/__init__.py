"""Text <-> ids: Moses, fastBPE and BioGPT's Tokenizer (with character offsets and prompt tokens)."""

from biogpt.text.fastbpe import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID, Vocab, load_vocab
from biogpt.text.tokenizer import PROMPT_PATTERN, Tokenizer

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "PROMPT_PATTERN", "SPECIALS", "UNK_ID", "Tokenizer", "Vocab", "load_vocab"]
