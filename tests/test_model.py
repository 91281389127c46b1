"""Model, checkpoints and generation against transformers.BioGptForCausalLM on tiny random weights."""

import json
import os
import shutil

import pytest
import torch

from biogpt import BioGPT, convert
from biogpt import load as load_pretrained
from biogpt.checkpoints import CheckpointError, config_from_hf, hf_to_ours
from biogpt.generation import AllowedSequences, SourceSpans, generate, left_pad
from biogpt.generation.prefill import prefill

from .conftest import VOCABS

CONFIGS = [
    dict(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    dict(vocab_size=301, hidden_size=60, num_hidden_layers=3, num_attention_heads=5, intermediate_size=90),
    dict(vocab_size=257, hidden_size=48, num_hidden_layers=1, num_attention_heads=3, intermediate_size=200),
]


def random_hf(seed: int = 0, **kw):
    """A tiny BioGptForCausalLM whose every parameter (LN and biases too) is random and non-trivial."""
    from transformers import BioGptConfig, BioGptForCausalLM

    kw = {"max_position_embeddings": 64, **kw}
    torch.manual_seed(seed)
    hf = BioGptForCausalLM(BioGptConfig(**kw)).eval()
    g = torch.Generator().manual_seed(seed + 1234)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.1 * r if name.endswith("weight") else 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.05 * r)
            elif "embed" in name:
                p.copy_(0.02 * r if "positions" in name else 0.3 * r)
            else:
                p.copy_(0.3 * r)
    return hf


def ours_from(hf) -> BioGPT:
    cfg = config_from_hf(hf.config.to_dict())
    m = BioGPT(cfg).eval()
    m.load_state_dict(hf_to_ours(hf.state_dict(), cfg.n_layer))
    return m


PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11], [2, 12, 13], [2, 40, 41, 42, 43, 44], [2, 99]]


@pytest.mark.parametrize("kw", CONFIGS)
def test_logits_match_transformers(kw):
    hf = random_hf(**kw)
    ours = ours_from(hf)
    ids, mask = left_pad(PROMPTS)
    with torch.no_grad():
        # unpadded
        full = torch.tensor([PROMPTS[0]])
        assert (hf(full).logits - ours(full)).abs().max() <= 1e-6
        # left padding: transformers needs mask-derived positions (as generate() passes them)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        assert (ref - ours(ids, mask))[mask.bool()].abs().max() <= 1e-6
        # a padded row equals the row alone
        alone = ours(torch.tensor([PROMPTS[1]]))[0]
        # measured up to 4.2e-6: a padded batch runs other matmul shapes
        assert (ours(ids, mask)[1, -len(PROMPTS[1]) :] - alone).abs().max() <= 1e-5
        # right padding
        right = torch.full_like(ids, 1)
        rmask = torch.zeros_like(mask)
        for i, p in enumerate(PROMPTS):
            right[i, : len(p)] = torch.tensor(p)
            rmask[i, : len(p)] = 1
        ref = hf(input_ids=right, attention_mask=rmask).logits
        assert (ref - ours(right, rmask))[rmask.bool()].abs().max() <= 1e-6


def test_kv_cache_equals_full_forward():
    hf = random_hf(**CONFIGS[1])
    m = ours_from(hf)
    ids, mask = left_pad(PROMPTS)
    with torch.no_grad():
        full = m(ids, mask)
        cache = m.new_cache(len(PROMPTS), ids.shape[1])
        parts = [m(ids[:, :3], mask[:, :3], cache=cache)]
        for t in range(3, ids.shape[1]):
            parts.append(m(ids[:, t : t + 1], mask[:, t : t + 1], cache=cache))
        inc = torch.cat(parts, 1)
    assert (inc - full)[mask.bool()].abs().max() <= 1e-5  # measured 4.8e-6 (one token per step: other matmul shapes)



def test_prefill_skips_the_padding_and_leaves_the_padded_forwards_cache():
    m = ours_from(random_hf(**CONFIGS[0]))
    calls = []
    m.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
    ids, mask = left_pad(PROMPTS)  # 8, 3, 6 and 2 tokens: padding is 41% of the batch
    padded, alone = m.new_cache(4, 12), m.new_cache(4, 12)
    want = m(ids, mask, cache=padded, last_only=True)[:, -1]
    calls.clear()
    got = prefill(m, ids, mask, alone)
    assert calls == [torch.Size([1, n]) for n in (8, 3, 6, 2)]  # each prompt alone, on its real tokens
    assert (got - want).abs().max() <= 1e-5
    assert alone.length == padded.length == 8
    assert torch.equal(alone.valid, padded.valid) and torch.equal(alone.next_pos, padded.next_pos)
    real = padded.valid[None, :, None, :8, None]  # [1, B, 1, S, 1]: padding slots hold anything
    for a, b in ((alone.k, padded.k), (alone.v, padded.v)):
        assert ((a[..., :8, :] - b[..., :8, :]).abs() * real).max() <= 1e-5
    step = torch.tensor([[5], [6], [7], [8]])
    after = [m(step, torch.ones_like(step), cache=c, last_only=True)[:, -1] for c in (padded, alone)]
    assert (after[0] - after[1]).abs().max() <= 1e-5
    calls.clear()
    ids, mask = left_pad([PROMPTS[0], PROMPTS[0][::-1]])  # no padding: one batched forward
    prefill(m, ids, mask, m.new_cache(2, 8))
    ids, mask = left_pad(PROMPTS)
    prefill(m, ids.flip(1), mask.flip(1), m.new_cache(4, 8))  # right padding: not what per-prompt runs assume
    assert calls == [torch.Size([2, 8]), torch.Size([4, 8])]

GEN_CASES = [
    dict(max_new_tokens=15),
    dict(max_new_tokens=15, num_beams=4),
    dict(max_new_tokens=15, num_beams=4, num_return_sequences=4),
    dict(max_new_tokens=15, num_beams=5, length_penalty=2.0, early_stopping=True),
    dict(max_new_tokens=15, num_beams=3, early_stopping="never", length_penalty=0.5),
    dict(max_new_tokens=12, num_beams=3, eos_token_id=17),
    dict(max_new_tokens=12, eos_token_id=17),
    dict(max_new_tokens=15, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(max_new_tokens=15, num_beams=3, repetition_penalty=1.2, no_repeat_ngram_size=3, min_new_tokens=5),
    dict(max_new_tokens=10, min_new_tokens=10),
]


@pytest.mark.parametrize("kw", GEN_CASES)
def test_generation_matches_transformers(kw):
    hf = random_hf(**CONFIGS[0])
    m = ours_from(hf)
    ids, mask = left_pad(PROMPTS[:3])
    ref = hf.generate(
        ids, attention_mask=mask, do_sample=False, pad_token_id=1, return_dict_in_generate=True,
        output_scores=True, **{"eos_token_id": 2, **kw},
    )  # fmt: skip
    out = generate(m, ids, mask, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    if kw.get("num_beams", 1) > 1:
        assert (out.scores - ref.sequences_scores).abs().max() <= 1e-6


def test_constraints_and_sampling():
    m = ours_from(random_hf(**CONFIGS[0]))
    prompts = PROMPTS[:2]
    allowed = [[30, 31], [40], [50, 51, 52]]
    out = generate(m, prompts, max_new_tokens=6, constraints=AllowedSequences(allowed)).sequences
    T = max(map(len, prompts))
    for row in out[:, T:].tolist():
        gen = row[: row.index(2)]
        assert gen in allowed
    beams = generate(m, prompts, max_new_tokens=6, num_beams=3, constraints=AllowedSequences(allowed)).sequences
    for row in beams[:, T:].tolist():
        assert row[: row.index(2)] in allowed
    source = [7, 8, 9, 10, 11, 12]
    out = generate(m, prompts, max_new_tokens=5, constraints=SourceSpans(source)).sequences
    for row in out[:, T:].tolist():
        gen = row[: row.index(2)] if 2 in row else row
        assert any(source[i : i + len(gen)] == gen for i in range(len(source))) and gen
    forced = generate(m, prompts, max_new_tokens=6, forced_tokens=[[100, 101], []]).sequences
    assert forced[0, T : T + 2].tolist() == [100, 101]
    free = generate(m, prompts, max_new_tokens=6).sequences
    assert torch.equal(forced[1], free[1])  # the unforced row is unaffected
    a = generate(m, prompts, max_new_tokens=8, do_sample=True, seed=3, top_p=0.9, temperature=0.7).sequences
    b = generate(m, prompts, max_new_tokens=8, do_sample=True, seed=3, top_p=0.9, temperature=0.7).sequences
    assert torch.equal(a, b)
    one = generate(m, prompts, max_new_tokens=8, do_sample=True, seed=5, top_k=1).sequences
    assert torch.equal(one[:, : free.shape[1]], free)  # top-k 1 sampling is greedy


def test_logprobs_are_the_models_own_under_constraints():
    """output_logprobs are log-softmax of the model's logits, before any constraint: equal to a plain forward
    pass over the generated sequence (token_logprobs), whatever the constraint forced."""
    from biogpt.generation.engine import token_logprobs

    m = ours_from(random_hf(**CONFIGS[0]))
    prompts = PROMPTS[:2]
    out = generate(m, prompts, max_new_tokens=4, constraints=AllowedSequences([[30, 31, 32]]), output_logprobs=True)
    T = max(map(len, prompts))
    assert out.sequences[:, T:].tolist() == [[30, 31, 32, 2]] * 2
    _, mask = left_pad(prompts)
    recomputed = token_logprobs(m, out.sequences, mask, eos=2, pad=1)
    assert torch.allclose(out.logprobs, recomputed, atol=1e-5), (out.logprobs, recomputed)
    assert (out.logprobs[:, :3] < -1.0).all()  # forced, not chosen: far from log 1 = 0


def _save_hf_with_vocab(hf, d, vocab="base"):
    hf.save_pretrained(d, safe_serialization=True)
    for f in ("dict.txt", "bpecodes"):
        shutil.copy(VOCABS[vocab] / f, d / f)
    return d


def test_hf_directory_formats(tmp_path):
    hf = random_hf(**{**CONFIGS[0], "vocab_size": 42384})
    ids = torch.tensor([PROMPTS[0]])
    ref = hf(ids).logits.detach()
    d = _save_hf_with_vocab(hf, tmp_path / "st")
    model, tok = load_pretrained(d)
    assert (model(ids) - ref).abs().max() <= 1e-6 and tok.vocab_size == 42384
    # pytorch_model.bin with the duplicated head, as microsoft/biogpt ships it
    b = tmp_path / "bin"
    b.mkdir()
    shutil.copy(d / "config.json", b / "config.json")
    sd = dict(hf.state_dict())
    sd["output_projection.weight"] = sd["biogpt.embed_tokens.weight"].clone()
    torch.save(sd, b / "pytorch_model.bin")
    assert (load_pretrained(b)[0](ids) - ref).abs().max() <= 1e-6


def fairseq_checkpoint(hf, d, k: int, extra_state=None):
    """An original fairseq checkpoint from HF weights by the documented key map (original-biogpt.md §2)."""
    d.mkdir(parents=True, exist_ok=True)
    sd = {"decoder.version": torch.tensor([3.0])}
    for key, v in hf.state_dict().items():
        if key.startswith("biogpt."):
            sd["decoder." + key[len("biogpt.") :]] = v.clone()
    sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"]
    c = hf.config
    cfg = {
        "model": {
            "_name": "transformer_lm_prompt",
            "decoder_embed_dim": c.hidden_size,
            "decoder_layers": c.num_hidden_layers,
            "decoder_attention_heads": c.num_attention_heads,
            "decoder_ffn_embed_dim": c.intermediate_size,
            "max_target_positions": c.max_position_embeddings,
            "activation_fn": "gelu",
            "no_scale_embedding": False,
            "share_decoder_input_output_embed": True,
            "decoder_learned_pos": True,
        },
        "task": {"_name": "language_modeling_prompt", "learned_prompt": k, "source_lang": "x", "target_lang": "y"},
        "common": {"fp16": False},
    }
    torch.save({"args": None, "cfg": cfg, "model": sd, "extra_state": extra_state or {}}, d / "checkpoint.pt")
    for f in ("dict.txt", "bpecodes"):
        shutil.copy(VOCABS["base"] / f, d / f)
    return d


class Meter:  # stands in for fairseq classes pickled into extra_state
    def __init__(self):
        self.sum = 3.0


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/biogpt-test-pwned",))


def test_fairseq_checkpoint_with_prompt_tokens(tmp_path):
    if os.path.exists("/tmp/biogpt-test-pwned"):
        os.remove("/tmp/biogpt-test-pwned")
    hf = random_hf(**{**CONFIGS[1], "vocab_size": 42384 + 9})
    d = fairseq_checkpoint(hf, tmp_path / "RE-DDI", k=9, extra_state={"meters": Meter(), "x": Evil()})
    model, tok = load_pretrained(d)
    assert not os.path.exists("/tmp/biogpt-test-pwned")  # nothing from the pickle ran
    assert model.config.num_prompt_tokens == 9 and tok.prompt_ids == list(range(42384, 42393))
    ids = torch.tensor([tok.encode("Aspirin inhibits COX-1.") + tok.prompt_ids])
    ref = hf(ids).logits.detach()
    assert (model(ids) - ref).abs().max() <= 1e-6
    # convert -> a directory that transformers loads with identical logits and tokens
    from transformers import BioGptForCausalLM, BioGptTokenizer

    convert(d / "checkpoint.pt", tmp_path / "hf")
    hf2 = BioGptForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert (hf2(ids).logits.detach() - ref).abs().max() <= 1e-6
    htok = BioGptTokenizer.from_pretrained(tmp_path / "hf")
    assert htok("Aspirin inhibits COX-1.")["input_ids"] == tok.encode("Aspirin inhibits COX-1.")
    assert htok.decode(tok.prompt_ids[:2]) == "learned1learned2"  # added special tokens, joined as transformers does
    again, tok2 = load_pretrained(tmp_path / "hf")
    assert tok2.num_prompt_tokens == 9 and (again(ids) - ref).abs().max() <= 1e-6


def test_checkpoint_errors(tmp_path, monkeypatch):
    hf = random_hf(**{**CONFIGS[0], "vocab_size": 42384 + 9})
    d = fairseq_checkpoint(hf, tmp_path / "ok", k=9)
    # Large dictionary beside base-sized weights
    wrong = tmp_path / "wrong"
    shutil.copytree(d, wrong)
    for f in ("dict.txt", "bpecodes"):
        shutil.copy(VOCABS["large"] / f, wrong / f)
    with pytest.raises(CheckpointError, match=r"42393 embedding rows but the vocabulary .* has 57717 tokens \+ 9"):
        load_pretrained(wrong)
    # truncated checkpoint.pt
    cut = tmp_path / "cut"
    shutil.copytree(d, cut)
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(cut)
    # HF directory: truncated safetensors, missing and unexpected keys, vocabulary mismatch
    h = _save_hf_with_vocab(random_hf(**{**CONFIGS[0], "vocab_size": 42384}), tmp_path / "h")
    good = (h / "model.safetensors").read_bytes()
    (h / "model.safetensors").write_bytes(good[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(h)
    from safetensors.torch import load_file, save_file

    (h / "model.safetensors").write_bytes(good)
    sd = load_file(h / "model.safetensors")
    save_file({k: v for k, v in sd.items() if "layers.1.fc2.bias" not in k}, h / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1 weights.*layers.1.fc2.bias"):
        load_pretrained(h)
    save_file({**sd, "biogpt.extra.weight": torch.zeros(2)}, h / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected weights.*biogpt.extra.weight"):
        load_pretrained(h)
    (h / "model.safetensors").write_bytes(good)
    for f in ("dict.txt", "bpecodes"):
        shutil.copy(VOCABS["large"] / f, h / f)
    with pytest.raises(CheckpointError, match=r"42384 embedding rows but the vocabulary .* 57717 tokens"):
        load_pretrained(h)
    conf = json.loads((h / "config.json").read_text())
    (h / "config.json").write_text(json.dumps({**conf, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act"):
        load_pretrained(h)
    with pytest.raises(CheckpointError, match="no such file"):
        load_pretrained(tmp_path / "nothing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline"):
        load_pretrained("microsoft/not-a-cached-model")


def test_cli_generate_info_convert(tmp_path, capsys):
    from biogpt.cli import main

    hf = random_hf(**{**CONFIGS[0], "vocab_size": 42384})
    d = _save_hf_with_vocab(hf, tmp_path / "m")
    model, tok = load_pretrained(d)
    assert main(["generate", "--model", str(d), "COVID-19 is", "--max-new-tokens", "5"]) == 0
    expected = generate(model, [tok.encode("COVID-19 is")], max_new_tokens=5).sequences[0].tolist()
    assert capsys.readouterr().out.strip() == tok.decode(expected)
    assert main(["generate", "--model", str(d), "a", "b c", "--num-beams", "3", "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["info", str(d)]) == 0
    out = capsys.readouterr().out
    assert "n_layer: 2" in out and "prompt tokens: 0" in out and "42384 tokens" in out
    assert main(["convert", str(d), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
