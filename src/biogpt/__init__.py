"""biogpt: BioGPT (Luo et al., 2022), exact and fast, without fairseq."""

from biogpt.model import BioGPT, BioGPTConfig
from biogpt.tokenizer import Tokenizer, VocabError

__all__ = ["BioGPT", "BioGPTConfig", "Tokenizer", "VocabError"]
__version__ = "0.1.0"
