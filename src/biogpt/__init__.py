"""biogpt: BioGPT (Luo et al., 2022), exact and fast, without fairseq.

    model, tok = biogpt.load("path/or/hub-id")
    out = biogpt.generate(model, [tok.encode("COVID-19 is")], max_new_tokens=20)
    tok.decode(out.sequences[0])
"""

from biogpt.api import convert, load
from biogpt.errors import BioGPTError, CheckpointError, TaskError, VocabError
from biogpt.generation import generate
from biogpt.models.biogpt import BioGPT, BioGPTConfig
from biogpt.models.gpt2 import GPT2, GPT2Config
from biogpt.text.bytelevel import ByteLevelTokenizer
from biogpt.text.tokenizer import Tokenizer

__all__ = ["BioGPT", "BioGPTConfig", "BioGPTError", "ByteLevelTokenizer", "CheckpointError", "GPT2", "GPT2Config",
           "TaskError", "Tokenizer", "VocabError", "convert", "generate", "load"]  # fmt: skip
__version__ = "0.1.0"
