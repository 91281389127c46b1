"""BiomedGPT's (OFA's) tokenizer: GPT-2 byte-level BPE remapped through a fairseq dictionary, over `tokenizers`.

The unified vocabulary (59,457 ids for BiomedGPT):
    0 <s>, 1 <pad>, 2 </s>, 3 <unk>
    4 .. 50263    the lines of dict.txt: GPT-2 BPE ids (and 3 `madeupword`s), most frequent first
    50264         <mask>
    50265 ..      <code_0> .. <code_8191> (VQ-GAN image codes)
    58457 ..      <bin_0> .. <bin_999> (box coordinates)

fairseq encodes text as `dict.encode_line(GPT2BPE.encode(text))`: GPT-2's regex split and byte-level BPE, then
each GPT-2 id looked up in the dictionary. Here the BPE vocabulary maps token strings straight to the model ids,
so `tokenizers` gives them in one pass. `<mask>`, `<code_i>` and `<bin_i>` written in the text are single tokens.
Text is normalised as OFA's datasets do (`normalize_caption`, `normalize_question`) by the tasks, not here.

Files: BiomedGPT's `encoder.json` + `vocab.bpe` + `dict.txt` (its `utils/BPE/` and the dataset dictionary); or the
Hugging Face OFA port's `vocab.json` + `merges.txt`, whose vocabulary is already remapped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from biogpt.errors import VocabError
from biogpt.text.bpe_files import read_merges, read_vocab

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MASK = "<mask>"
NUM_CODES, NUM_BINS = 8192, 1000


# --- OFA's text normalisation (its datasets' pre_caption / pre_question) ---------------------------------


def _normalize(text: str, max_words: int | None) -> str:
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if max_words is not None and len(words) > max_words else text


def normalize_caption(text: str, max_words: int | None = None) -> str:
    """Lower-case; strip leading `,.!?*#:;~`; `-` and `/` become spaces; runs of whitespace one space; trim;
    keep at most `max_words` words. (OFA's pre_caption also turns `<person>` into `person`.)"""
    return _normalize(text.replace("<person>", "person") if "<person>" in text else text, max_words)


def normalize_question(text: str, max_words: int | None = None) -> str:
    """As `normalize_caption`, without the `<person>` rule (OFA's pre_question)."""
    return _normalize(text, max_words)


# --- the tokenizer ---------------------------------------------------------------------------------------


def _read_dict(path: Path) -> list[str]:
    """fairseq dict.txt: "SYMBOL COUNT" per line (an optional trailing "#fairseq:overwrite" flag)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise VocabError(f"{path}: cannot read ({e.strerror})") from None
    symbols = []
    for n, line in enumerate(lines, 1):
        parts = line.rstrip().split(" ")
        if parts[-1] == "#fairseq:overwrite":
            parts = parts[:-1]
        if len(parts) != 2 or not parts[1].isdigit():
            raise VocabError(f"{path}:{n}: {line!r} is not a 'SYMBOL COUNT' dictionary line")
        symbols.append(parts[0])
    return symbols


class OFATokenizer:
    """Text <-> ids in BiomedGPT's unified vocabulary. `encode` adds no <s>/</s>; `encode_source` does."""

    bos_token_id, pad_token_id, eos_token_id, unk_token_id = BOS_ID, PAD_ID, EOS_ID, UNK_ID

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], source: str):
        """vocab: BPE token string -> model id for the text part (specials and dictionary lines)."""
        self.source = source
        self.text_vocab_size = max(vocab.values()) + 1  # <mask> comes next
        self._tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        self._tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
        extra = [MASK] + [f"<code_{i}>" for i in range(NUM_CODES)] + [f"<bin_{i}>" for i in range(NUM_BINS)]
        self._tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in extra])
        self.mask_token_id = self._tok.token_to_id(MASK)
        if self.mask_token_id != self.text_vocab_size:
            raise VocabError(f"{source}: <mask> got id {self.mask_token_id}, expected {self.text_vocab_size}")
        self.code_start = self.mask_token_id + 1
        self.bin_start = self.code_start + NUM_CODES

    @classmethod
    def from_fairseq(cls, encoder_json: str | Path, vocab_bpe: str | Path, dict_txt: str | Path) -> OFATokenizer:
        """From GPT-2's encoder.json + vocab.bpe and the fairseq dictionary over GPT-2 ids (BiomedGPT's files)."""
        encoder_json, vocab_bpe, dict_txt = Path(encoder_json), Path(vocab_bpe), Path(dict_txt)
        gpt2 = read_vocab(encoder_json)  # token -> GPT-2 id
        symbols = _read_dict(dict_txt)
        model_id = {s: i + len(SPECIALS) for i, s in enumerate(symbols)}  # "GPT-2 id as text" -> model id
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        missing = []
        for token, gid in gpt2.items():
            if str(gid) in model_id:
                vocab[token] = model_id[str(gid)]
            else:
                missing.append(token)
        if missing:
            raise VocabError(
                f"{dict_txt}: {len(missing)} GPT-2 tokens of {encoder_json.name} have no dictionary line (e.g. "
                f"{missing[0]!r}); is it the dict.txt that belongs with this BPE?"
            )
        for s, i in model_id.items():  # dictionary lines that are not GPT-2 ids (madeupword0000, ...)
            if not s.isdigit():
                vocab.setdefault(s, i)
        merges = read_merges(vocab_bpe, gpt2, encoder_json.name)
        return cls(vocab, merges, f"{encoder_json} + {vocab_bpe.name} + {dict_txt.name}")

    @classmethod
    def from_hf(cls, vocab_json: str | Path, merges_txt: str | Path) -> OFATokenizer:
        """From the Hugging Face OFA port's vocab.json (already in model ids, with <mask>) + merges.txt."""
        vocab = read_vocab(Path(vocab_json))
        vocab = {t: i for t, i in vocab.items() if t != MASK and not t.startswith(("<code_", "<bin_"))}
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise VocabError(f"{vocab_json}: the text ids are not 0..{len(vocab) - 1}, each once")
        merges = read_merges(Path(merges_txt), vocab, Path(vocab_json).name)
        return cls(vocab, merges, f"{vocab_json} + {Path(merges_txt).name}")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OFATokenizer:
        """encoder.json + vocab.bpe + dict.txt, else vocab.json + merges.txt, from `directory`."""
        d = Path(directory)
        if all((d / f).exists() for f in ("encoder.json", "vocab.bpe", "dict.txt")):
            return cls.from_fairseq(d / "encoder.json", d / "vocab.bpe", d / "dict.txt")
        if (d / "vocab.json").exists() and (d / "merges.txt").exists():
            return cls.from_hf(d / "vocab.json", d / "merges.txt")
        raise VocabError(
            f"{d}: no BiomedGPT tokenizer files: put BiomedGPT's encoder.json, vocab.bpe (utils/BPE/) and dict.txt "
            "there, or the Hugging Face OFA port's vocab.json + merges.txt"
        )

    def save_pretrained(self, directory: str | Path) -> None:
        """vocab.json (model ids, <mask> included) + merges.txt: what `from_pretrained` and the HF port read."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._tok.model.save(str(d))
        vocab = read_vocab(d / "vocab.json")
        vocab[MASK] = self.mask_token_id
        (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")

    # --- use ------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"OFATokenizer({self.vocab_size} ids from {self.source})"

    def code_id(self, i: int) -> int:
        return self.code_start + i

    def bin_id(self, i: int) -> int:
        return self.bin_start + i

    def encode(self, text: str) -> list[int]:
        """The ids of `text` as fairseq's encode_line(bpe.encode(text)) gives them: no <s>, no </s>."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_source(self, text: str, max_len: int | None = None) -> list[int]:
        """<s> + ids (at most max_len of them) + </s>: an encoder input as OFA's datasets build it."""
        ids = self.encode(text)
        return [BOS_ID, *(ids[:max_len] if max_len is not None else ids), EOS_ID]

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode`'s ids and each one's [start, end) character span in `text` (a leading space included)."""
        e = self._tok.encode(text, add_special_tokens=False)
        return e.ids, [tuple(o) for o in e.offsets]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (<s>, <pad>, </s>, <unk> dropped unless skip_special_tokens is False)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
