"""GPT-2 byte-level BPE (BioMedLM's tokenizer), over the `tokenizers` library (pip install 'biogpt[gpt2]').

The algorithm is GPT-2's: the text is split by GPT-2's regex (contractions, letters, digits, other symbols,
whitespace runs), each piece's UTF-8 bytes are mapped to printable characters, and merges apply by rank. No
prefix space is added and no special token is inserted: `encode` returns exactly the text's tokens, as
`transformers.GPT2Tokenizer` does. `<|endoftext|>` is the bos/eos token; where the vocabulary lacks it (BioMedLM's
vocab.json has 28,895 entries, the model 28,896 rows) it is added after the last id, as transformers adds it.

Files: `tokenizer.json`; or `vocab.json` + `merges.txt`; or GPT-2's original names `encoder.json` + `vocab.bpe`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from biogpt import jsonfile
from biogpt.errors import VocabError
from biogpt.text.bpe_files import read_merges, read_vocab

try:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
except ImportError:  # optional: only the GPT-2 family needs it (pip install 'biogpt[gpt2]'); _require() says so
    Tokenizer = None

ENDOFTEXT = "<|endoftext|>"
# (vocabulary, merges) file names, in the order they are looked for
FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def _require() -> None:
    if Tokenizer is None:
        raise VocabError(
            "byte-level BPE (the GPT-2 family, BioMedLM) needs the tokenizers package: pip install 'biogpt[gpt2]'"
        )


class ByteLevelTokenizer:
    """Text <-> ids for the GPT-2 family; `encode_with_offsets` gives each token's character span."""

    def __init__(self, tokenizer: Tokenizer, source: str):
        _require()
        self._tok = tokenizer
        self.source = source  # the file(s) it was read from
        # the byte-level pipeline, whatever a tokenizer.json said around its BPE model: no prefix space, and no
        # post-processor (it would trim the offsets or add tokens)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        self._tok.post_processor = None
        self._tok.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
        self.eos_token_id = self._tok.token_to_id(ENDOFTEXT)
        self.bos_token_id = self.eos_token_id

    # --- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, vocab_file: str | Path, merges_file: str | Path) -> ByteLevelTokenizer:
        """From a vocabulary (token -> id JSON) and its merges ("a b" per line, an optional #version header)."""
        _require()
        vocab_file, merges_file = Path(vocab_file), Path(merges_file)
        vocab = read_vocab(vocab_file)
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise VocabError(f"{vocab_file}: the ids are not 0..{len(vocab) - 1}, each once")
        merges = read_merges(merges_file, vocab, vocab_file.name)
        return cls(Tokenizer(models.BPE(vocab=vocab, merges=merges)), f"{vocab_file} + {merges_file.name}")

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> ByteLevelTokenizer:
        """From a `tokenizers` tokenizer.json whose model is BPE over a byte-level pre-tokenizer."""
        _require()
        path = Path(path)
        try:
            spec = jsonfile.loads(path.read_text(encoding="utf-8"))
            tok = Tokenizer.from_str(json.dumps(spec))
        except OSError as e:
            raise VocabError(f"{path}: cannot read ({e.strerror})") from None
        except Exception as e:  # json or tokenizers' own parse errors
            raise VocabError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
            raise VocabError(
                f"{path}: a {model.get('type')} model with a {pre.get('type')} pre-tokenizer, not GPT-2's byte-level "
                "BPE; biogpt's GPT-2 family reads byte-level BPE tokenizers only"
            )
        return cls(tok, str(path))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ByteLevelTokenizer:
        """tokenizer.json, else vocab.json + merges.txt, else encoder.json + vocab.bpe, from `directory`."""
        d = Path(directory)
        if (d / "tokenizer.json").exists():
            return cls.from_tokenizer_json(d / "tokenizer.json")
        for vocab, merges in FILE_PAIRS:
            if (d / vocab).exists() and (d / merges).exists():
                return cls.from_files(d / vocab, d / merges)
        raise VocabError(
            f"{d}: no byte-level BPE tokenizer (tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe)"
        )

    def save_pretrained(self, directory: str | Path) -> None:
        """vocab.json + merges.txt + tokenizer.json + tokenizer_config.json, as transformers' GPT2Tokenizer reads
        them (<|endoftext|> is bos, eos and unk; no prefix space)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._tok.model.save(str(d))  # vocab.json, merges.txt (the model's own tokens, without added ones)
        self._tok.save(str(d / "tokenizer.json"))
        conf = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "bos_token": ENDOFTEXT,
                "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT, "model_max_length": 1024}  # fmt: skip
        (d / "tokenizer_config.json").write_text(json.dumps(conf, indent=2) + "\n")

    # --- use ------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Every id this tokenizer can produce: the vocabulary plus added tokens (<|endoftext|>)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"ByteLevelTokenizer({self.vocab_size} tokens from {self.source})"

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """ids and each token's [start, end) character span in `text` (a token's leading space included). A
        token that holds only some of a character's UTF-8 bytes spans that whole character, so neighbouring
        spans may overlap there."""
        e = self._tok.encode(text, add_special_tokens=False)
        return e.ids, [tuple(o) for o in e.offsets]

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; byte sequences that are not UTF-8 become U+FFFD, as in transformers."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]
