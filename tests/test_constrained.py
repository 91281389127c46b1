"""Constrained decoding picks the best allowed token, not any allowed one: greedy decoding under a trie, source
spans, the tasks' templates and the server's `choice` and `regex` against transformers'
`generate(prefix_allowed_tokens_fn=...)` given the same allowed sets (an independent decoder), token for token."""

import re

import pytest
import torch

import biogpt
from biogpt.generation import AllowedSequences, SourceSpans, generate
from biogpt.serve import create_app
from biogpt.tasks.templates import grammar

from .test_model import ours_from, random_hf
from .test_serve import serve as serve_in_process

EOS = 2
SOURCE = "aspirin and warfarin increase the risk of bleeding in elderly patients with atrial fibrillation ."


@pytest.fixture(scope="module")
def models():
    """(transformers' model, the same weights in biogpt, the demo tokenizer): a random model of the demo's
    vocabulary, whose greedy choices are rarely the ones a constraint allows."""
    tok = biogpt.load("demo")[1]
    hf = random_hf(seed=3, vocab_size=len(tok.pieces), hidden_size=32,
                   num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=160)
    return hf, ours_from(hf), tok


def reference(hf, prompt: list[int], allowed, max_new: int) -> list[int]:
    """transformers' greedy decoding of one unpadded prompt, restricted at each step to `allowed(generated)`
    (None: every token); the new tokens up to and including </s>."""

    def fn(batch_id, ids):
        a = allowed(ids[len(prompt) :].tolist())
        return list(range(hf.config.vocab_size)) if a is None else list(a)

    out = hf.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, num_beams=1,
                      prefix_allowed_tokens_fn=fn, eos_token_id=EOS, pad_token_id=1)  # fmt: skip
    out = out[0, len(prompt) :].tolist()
    return out[: out.index(EOS) + 1] if EOS in out else out


def ours(model, prompts: list[list[int]], constraints, max_new: int) -> list[list[int]]:
    """biogpt's greedy decoding of the prompts as one left-padded batch, each row under its constraint."""
    seqs = generate(model, prompts, max_new_tokens=max_new, constraints=constraints).sequences
    T = max(map(len, prompts))
    rows = [r[T:] for r in seqs.tolist()]
    return [r[: r.index(EOS) + 1] if EOS in r else r for r in rows]


def _prompts(tok) -> list[list[int]]:
    return [tok.encode(SOURCE), tok.encode("the patient"), tok.encode("warfarin")]


def test_trie_and_source_spans_pick_the_best_allowed_token(models):
    hf, model, tok = models
    prompts = _prompts(tok)
    words = ["bleeding", "atrial fibrillation", "the risk of bleeding", "aspirin", "elderly patients"]
    trie = AllowedSequences([tok.encode(w, add_eos_prefix=False) for w in words])
    spans = SourceSpans(tok.encode(SOURCE, add_eos_prefix=False))
    for constraint, n in ((trie, 8), (spans, 12)):
        got = ours(model, prompts, [constraint] * len(prompts), n)
        want = [reference(hf, p, constraint.allowed, n) for p in prompts]
        assert got == want
    free = ours(model, prompts, None, 8)
    assert any(g[: len(w)] != w for g, w in zip(free, got)), "the constraint changed nothing: it tests nothing"


@pytest.mark.parametrize("task", ["bc5cdr", "ddi", "kd-dti", "hoc", "pubmedqa"])
def test_task_templates_pick_the_best_allowed_token(models, task):
    hf, model, tok = models
    src = tok.encode(SOURCE.replace(" .", ""), add_eos_prefix=False)
    prompts = [[EOS] + src, [EOS] + src[3:], [EOS] + src[:5]]
    rows = [grammar(task, tok, p[1:]) for p in prompts]
    got = ours(model, prompts, rows, 30)
    want = [reference(hf, p, grammar(task, tok, p[1:]).allowed, 30) for p in prompts]
    assert got == want
    assert all(len(g) >= 5 for g in got)


def _serve(app, fn):
    """test_serve's in-process client, for a `fn(http)` that needs only the raw HTTP one."""
    return serve_in_process(app, lambda http, client: fn(http))


def _regex_allowed(tok, pattern: str, matches: list[str], vocab: int):
    """The regex's allowed sets by brute force over a finite language (every string the pattern matches):
    a token is allowed when the text decoded with it is a prefix of one of them, and, for a token that ends a
    word, one the rest of which can follow a word (the end, or a first character the detokenizer may put there:
    a space, anything but ASCII letters and digits, a contraction's `n'`); </s> once the text is one."""
    assert all(re.fullmatch(pattern, m) for m in matches)
    pieces = [p.replace("</w>", "").replace("@@", "") for p in tok.pieces[:vocab]]
    candidates = [t for t, p in enumerate(pieces) if p and t > 3 and any(p in m for m in matches)]

    def fits(text: str, m: str, t: int) -> bool:
        if not m.startswith(text):
            return False
        rest = m[len(text) :]
        if tok.pieces[t].endswith("@@") or not rest or rest.startswith("n'"):
            return True
        return not (rest[0].isascii() and rest[0].isalnum())

    def allowed(generated: list[int]) -> list[int]:
        text = tok.decode(generated)
        ok = [t for t in candidates if any(fits(tok.decode(generated + [t]), m, t) for m in matches)]
        ok = [t for t in ok if tok.decode(generated + [t]) != text]
        return ok + [EOS] if text in matches else ok or [EOS]

    return allowed


def test_server_choice_and_regex_pick_the_best_allowed_token(models):
    hf, model, tok = models
    app = create_app(model, tok, model_name="m")
    choices = ["yes", "no", "maybe", "the risk of bleeding", "atrial fibrillation"]
    pattern = r"(12|250|7) (mg|ml|tablets)"
    matches = [f"{a} {b}" for a in ("12", "250", "7") for b in ("mg", "ml", "tablets")]
    trie = AllowedSequences([tok.encode(c, add_eos_prefix=False) for c in choices])
    regex = _regex_allowed(tok, pattern, matches, hf.config.vocab_size)
    prompts = ["The dose was", "Does aspirin help?", "the patient"]

    async def go(http):
        out = []
        for p in prompts:
            for so in ({"choice": choices}, {"regex": pattern}):
                r = await http.post("/v1/completions", json={"model": "m", "prompt": p, "max_tokens": 8,
                                                             "temperature": 0, "structured_outputs": so})  # fmt: skip
                assert r.status_code == 200, r.text
                out.append(r.json()["choices"][0]["text"])
        return out

    texts = iter(_serve(app, go))
    for p in prompts:
        ids = tok.encode(p)
        for allowed in (trie.allowed, regex):
            want = reference(hf, ids, allowed, 8)
            assert next(texts) == tok.decode([t for t in want if t != EOS]), p
