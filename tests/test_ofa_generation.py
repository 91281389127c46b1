"""Seq2seq beam search against the reference OFA SequenceGenerator (modelscope's fairseq port) on tiny random
models; trie-constrained decoding on the real BiomedGPT answer sets; exact all-candidates ranking."""

from __future__ import annotations

import functools
import importlib
import json
import random

import pytest
import torch

from biogpt.errors import GenerationError, InputError
from biogpt.generation.seq2seq import AnswerTrie, beam_search, load_answer_set, rank_candidates, right_pad
from biogpt.text.ofa import OFATokenizer

from .conftest import SHARED
from .ofa_reference import reference
from .test_ofa import SRC_PADDED, images, ours_from, random_reference

TASKS = SHARED / "data" / "biomedgpt" / "tasks"
BPE = SHARED / "data" / "biomedgpt" / "bpe"
ANSWER_SETS = [
    TASKS / "vqa-rad" / "trainval_ans2label.json", TASKS / "PathVQA" / "trainval_ans2label.json",
    TASKS / "MedMNIST" / "pathmnist_class2label.json", TASKS / "MedMNIST" / "dermamnist_class2label.json",
]  # fmt: skip


class IdTokenizer:
    """What the reference generator reads from a tokenizer: the vocabulary size and the special ids."""

    pad_token_id, unk_token_id, bos_token_id, eos_token_id = 1, 3, 0, 2

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def get_vocab(self):
        return {str(i): i for i in range(self.vocab_size)}

    def get_added_vocab(self):
        return {}


def reference_trie(answers):
    trie = importlib.import_module("modelscope.utils.trie").Trie(2)  # reference() has made modelscope importable
    for a in answers:
        trie.insert([0, *a, 2])
    return trie


def reference_search(ref, src, img, masks, trie=None, prefix_tokens=None, **kw):
    generator = reference()[3]
    gen = generator.SequenceGenerator(IdTokenizer(ref.config.vocab_size), constraint_trie=trie, **kw)
    sample = {"net_input": {"input_ids": src, "patch_images": img, "patch_masks": masks}}
    return gen.generate([ref], sample, prefix_tokens=prefix_tokens)


ANSWERS = [[5, 6], [5, 7, 8], [9], [10, 11, 12], [40, 41]]
SETTINGS = [
    dict(beam_size=1, max_len_b=6),
    dict(beam_size=4, max_len_b=8, no_repeat_ngram_size=2, len_penalty=0.7),
    dict(beam_size=3, max_len_b=5, normalize_scores=False, min_len=2, unk_penalty=0.5),
    dict(beam_size=2, max_len_b=6, temperature=0.7, constraint_range="50,100"),
    dict(beam_size=3, max_len_b=6, trie=True),
    dict(beam_size=3, max_len_b=6, trie=True, zero_shot=True),
    dict(beam_size=2, max_len_b=6, trie=True, prefix=True),
    dict(beam_size=2, max_len_b=7, prefix=True, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=[str(i) for i in range(len(SETTINGS))])
def test_beam_search_matches_reference_generator(setting):
    ref = random_reference(seed=20)
    ours = ours_from(ref)
    kw = dict(setting)
    use_trie, use_prefix = kw.pop("trie", False), kw.pop("prefix", False)
    crange = kw.pop("constraint_range", None)
    prefix = torch.tensor([[30, 31], [32, 1]]) if use_prefix else None  # the second row's prompt is shorter
    img, masks = images(), torch.ones(2, dtype=torch.bool)
    want = reference_search(ref, SRC_PADDED, img, masks, reference_trie(ANSWERS) if use_trie else None, prefix,
                            constraint_range=crange, **kw)  # fmt: skip
    ours_range = tuple(int(x) for x in crange.split(",")) if crange else None
    got = beam_search(ours, SRC_PADDED, img, masks, constraint_trie=AnswerTrie(ANSWERS) if use_trie else None,
                      constraint_range=ours_range, prefix_tokens=prefix, **kw)  # fmt: skip
    assert len(got) == len(want) == 2  # one list of hypotheses per source
    for w, g in zip(want, got, strict=True):
        assert [h.tokens for h in g] == [h["tokens"].tolist() for h in w]
        for hw, hg in zip(w, g, strict=True):
            assert hg.score == pytest.approx(float(hw["score"]), abs=1e-4)
            assert hg.positional_scores == pytest.approx(hw["positional_scores"].tolist(), abs=1e-4)


def test_trie_matches_reference_trie():
    rng = random.Random(3)
    answers = [[rng.randrange(4, 30) for _ in range(rng.randint(1, 4))] for _ in range(40)]
    ours, theirs = AnswerTrie(answers), reference_trie(answers)
    for _ in range(300):
        prefix = [0] + [rng.randrange(4, 30) for _ in range(rng.randint(0, 4))]
        assert sorted(ours.next_ids(prefix)) == sorted(theirs.get_next_layer(prefix)), prefix
    assert ours.next_ids([0, 99]) == [2]  # off the trie: only </s>


@functools.cache
def big_vocab_model():
    """A tiny model over BiomedGPT's full vocabulary, so real answer sets tokenise into it."""
    return ours_from(random_reference(seed=21, vocab_size=59457))


@pytest.fixture(scope="module")
def tok():
    return OFATokenizer.from_pretrained(BPE)


@pytest.mark.parametrize("path", ANSWER_SETS, ids=lambda p: p.parent.name + "/" + p.name.split("_")[0])
@pytest.mark.parametrize("zero_shot", [False, True], ids=["finetuned", "zeroshot"])
def test_every_constrained_decode_is_an_answer(path, zero_shot, tok):
    answers = load_answer_set(path)
    trie = AnswerTrie.from_answers(answers, tok.encode)
    model = big_vocab_model()
    src = right_pad([tok.encode_source(" what is shown in the image?"), tok.encode_source(" is it normal?")])
    known = {tuple(tok.encode(" " + a)) for a in answers}
    for beam in (1, 5):
        out = beam_search(model, src, images(), beam_size=beam, max_len_b=16, constraint_trie=trie,
                          zero_shot=zero_shot, normalize_scores=False)  # fmt: skip
        for hyps in out:
            assert 1 <= len(hyps) <= beam  # fewer where the length limit cut a hypothesis off the trie
            for h in hyps:
                assert h.tokens[-1] == 2 and tuple(h.tokens[:-1]) in known, tok.decode(h.tokens)


@pytest.mark.parametrize("source_prompt", [False, True], ids=["bos", "src-prompt"])
def test_all_candidates_ranking_equals_brute_force(tok, source_prompt):
    """Scores of every candidate in chunks against one teacher-forced reference forward per candidate; with
    source_prompt the decoder first reads the source (BiomedGPT's prompt_type "src") and only the answer counts."""
    ref = random_reference(seed=21, vocab_size=59457)
    model = big_vocab_model()
    answers = load_answer_set(TASKS / "MedMNIST" / "dermamnist_class2label.json")
    cands = [tok.encode(" " + a) for a in answers]
    trie = AnswerTrie(cands)
    sources = [tok.encode_source(" what does the image describe?"), tok.encode_source(" which lesion is it?")]
    src = right_pad(sources)
    prompts = [s[:-1] for s in sources] if source_prompt else [[0], [0]]
    img, masks = images(), torch.ones(2, dtype=torch.bool)
    got = rank_candidates(model, src, cands, img, masks, trie=trie, chunk=3,
                          decoder_prompts=prompts if source_prompt else None)  # fmt: skip
    want = torch.zeros(2, len(cands))
    with torch.no_grad():
        for b in range(2):
            for j, c in enumerate(cands):
                p = prompts[b]
                dec = torch.tensor([[*p, *c]])
                logits = ref(input_ids=src[b : b + 1], patch_images=img[b : b + 1], patch_masks=masks[b : b + 1],
                             decoder_input_ids=dec).logits[0, len(p) - 1 :]  # fmt: skip
                total = 0.0
                for i, t in enumerate([*c, 2]):
                    allowed = torch.zeros(logits.size(-1), dtype=torch.bool)
                    allowed[trie.next_ids([0, *c[:i]])] = True
                    total += torch.log_softmax(logits[i].masked_fill(~allowed, float("-inf")), -1)[t].item()
                want[b, j] = total
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert got.argmax(1).tolist() == want.argmax(1).tolist()


def test_bad_answer_sets_and_settings(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["yes", "no"]))
    with pytest.raises(InputError, match="non-empty JSON object of answer text -> label"):
        load_answer_set(tmp_path / "list.json")
    (tmp_path / "nested.json").write_text(json.dumps({"yes": [0]}))
    with pytest.raises(InputError, match="labels must be integers"):
        load_answer_set(tmp_path / "nested.json")
    (tmp_path / "bad.json").write_text("{yes: 0")
    with pytest.raises(InputError, match="not JSON"):
        load_answer_set(tmp_path / "bad.json")
    model = ours_from(random_reference(seed=20))
    with pytest.raises(GenerationError, match="exceeds the model's 64 positions"):
        beam_search(model, SRC_PADDED, max_len_b=100)
    with pytest.raises(GenerationError, match="not both"):
        beam_search(model, SRC_PADDED, constraint_trie=AnswerTrie(ANSWERS), constraint_range=(4, 50))
