"""Shared fixtures: paths to ../shared, and reference (transformers) tokenizers built from the real vocabularies."""

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VOCABS = {"base": SHARED / "data" / "vocab" / "biogpt", "large": SHARED / "data" / "vocab" / "biogpt-large"}
TASKS = SHARED / "data" / "tasks"


def build_hf_vocab(src: Path, dst: Path) -> Path:
    """HF vocab.json + merges.txt from dict.txt + bpecodes, written here by the documented rule (reference
    numerics §3.3), independently of biogpt's own converter."""
    dst.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for line in (src / "dict.txt").read_text(encoding="utf-8").splitlines():
        tok = line.rsplit(" ", 1)[0]
        vocab[tok[:-2] if tok.endswith("@@") else tok + "</w>"] = len(vocab)
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.copy(src / "bpecodes", dst / "merges.txt")
    return dst


@pytest.fixture(scope="session")
def hf_tokenizers(tmp_path_factory):
    """{"base": BioGptTokenizer, "large": BioGptTokenizer} on the real vocabularies."""
    from transformers import BioGptTokenizer

    out = {}
    for name, src in VOCABS.items():
        d = build_hf_vocab(src, tmp_path_factory.mktemp(f"hf-{name}"))
        out[name] = BioGptTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    return out


@pytest.fixture(scope="session")
def tokenizers():
    """{"base": Tokenizer, "large": Tokenizer} from the original dict.txt + bpecodes."""
    from biogpt import Tokenizer

    return {name: Tokenizer.from_pretrained(src) for name, src in VOCABS.items()}


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """Native kernels are built into a temporary cache, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIOGPT_CACHE_DIR", str(tmp_path_factory.mktemp("biogpt-cache")))
        yield
