"""BiomedGPT's OFA model and checkpoints against the reference implementation (modelscope's OFA) on tiny random
weights: logits text-only and with images, padded batches, the disable_entangle flag, cached decoding; fairseq
.pt files (args / cfg / EMA), OFA-port directories, our converted directories, and bad checkpoints."""

from __future__ import annotations

import argparse
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from biogpt.checkpoints.ofa import build_model, check_keys, fairseq_to_ours, is_ofa, load_ofa, read_state, save_ofa
from biogpt.errors import CheckpointError, GenerationError, InputError
from biogpt.models.ofa import OFA, OFAConfig, token_buckets
from biogpt.text.ofa import OFATokenizer

from .conftest import SHARED
from .ofa_reference import reference

BPE = SHARED / "data" / "biomedgpt" / "bpe"
TINY = dict(
    d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=48, decoder_ffn_dim=48, resnet_type="resnet18", max_position_embeddings=64,
    token_bucket_size=16, image_bucket_size=8, dropout=0.0,
)  # fmt: skip


@functools.cache  # built once per session; tests that change one use a seed of their own
def random_reference(seed: int = 0, vocab_size: int = 120, **kw):
    """A tiny reference OFAModel whose every parameter is random and non-trivial: LayerNorms, biases, the
    per-head scales, BatchNorm statistics and the relative-position tables (which OFA zero-initialises)."""
    modeling, configuration, _, _ = reference()
    torch.manual_seed(seed)
    ref = modeling.OFAModel(configuration.OFAConfig(vocab_size=vocab_size, **{**TINY, **kw})).eval()
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("c_attn") or ((".bn" in name or "norm" in name or "_ln" in name) and "weight" in name):
                p.copy_(1 + 0.1 * r)
            elif p.dim() == 1:
                p.copy_(0.1 * r)
            else:
                p.copy_(0.3 * r)
        for name, b in ref.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.8 + 0.4 * torch.rand(b.shape, generator=g))
    return ref


def ours_config(vocab_size: int = 120, **kw) -> OFAConfig:
    return OFAConfig(
        vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, n_head=4, d_ffn=48,
        resnet_layers=(2, 2, 2), max_positions=64, token_bucket_size=16, image_bucket_size=8, dropout=0.0,
        image_size=48, **kw,
    )  # fmt: skip


def port_to_ours(sd: dict) -> dict:
    """The reference's (= the OFA port's) names -> ours, written out here: one shared embedding, no tables."""
    out = {}
    for k, v in sd.items():
        if k.endswith(("rp_bucket", "image_position_idx", "num_batches_tracked")):
            continue
        out["embed_tokens.weight" if k.endswith(("embed_tokens.weight", "output_projection.weight")) else k] = v
    return out


def ours_from(ref, **kw) -> OFA:
    m = OFA(ours_config(ref.config.vocab_size, **kw)).eval()
    m.load_state_dict(port_to_ours(ref.state_dict()))
    return m


SRC = torch.tensor([[0, 5, 6, 7, 8, 9, 2], [0, 10, 11, 12, 13, 14, 2]])
SRC_PADDED = torch.tensor([[0, 5, 6, 7, 8, 9, 2], [0, 10, 11, 2, 1, 1, 1]])
DEC = torch.tensor([[0, 20, 21, 22, 23], [0, 30, 31, 32, 33]])
DEC_PADDED = torch.tensor([[0, 20, 21, 22, 23], [0, 30, 31, 1, 1]])


def images(batch: int = 2, size: int = 48, seed: int = 7) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("src,dec", [(SRC, DEC), (SRC_PADDED, DEC_PADDED)], ids=["unpadded", "padded"])
def test_text_logits_match_reference(src, dec):
    ref = random_reference()
    ours = ours_from(ref)
    with torch.no_grad():
        want = ref(input_ids=src, decoder_input_ids=dec).logits
        got = ours(src, dec)
    assert got.shape == (2, 5, 120)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # measured below 1e-5 here (was 1e-4)


@pytest.mark.parametrize("src,dec", [(SRC, DEC), (SRC_PADDED, DEC_PADDED)], ids=["unpadded", "padded"])
def test_image_text_logits_match_reference(src, dec):
    ref = random_reference(seed=1)
    ours = ours_from(ref)
    img = images()
    for masks in (torch.tensor([True, True]), torch.tensor([True, False])):  # the second row without its image
        with torch.no_grad():
            want = ref(input_ids=src, patch_images=img, patch_masks=masks, decoder_input_ids=dec).logits
            got = ours(src, dec, img, masks)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_padded_row_equals_row_alone():
    """Right-padded source and decoder rows (as OFA batches them) give the logits of the row alone."""
    ours = ours_from(random_reference(seed=2))
    img = images()
    with torch.no_grad():
        batch = ours(SRC_PADDED, DEC_PADDED, img)
        alone = ours(SRC_PADDED[1:, :4], DEC_PADDED[1:, :3], img[1:])
    torch.testing.assert_close(batch[1, :3], alone[0], atol=1e-5, rtol=0)


def test_entangled_decoder_positions_match_reference():
    """disable_entangle=False: the original decoder adds its raw target positions to the tokens (its test is
    `entangle_position_embedding is not None`). The reference decoder does so when its flag is truthy; its
    encoder reads its own flag, which stays False as BiomedGPT's."""
    ref = random_reference(seed=3)
    ref.decoder.entangle_position_embedding = True
    ours = ours_from(ref, disable_entangle=False)
    with torch.no_grad():
        want = ref(
            input_ids=SRC, patch_images=images(), patch_masks=torch.ones(2, dtype=torch.bool), decoder_input_ids=DEC
        ).logits
        got = ours(SRC, DEC, images())
        plain = ours_from(random_reference(seed=3))(SRC, DEC, images())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - plain).abs().max() > 1e-2  # the flag matters on these weights


def test_entangled_encoder_positions_match_reference():
    ref = random_reference(seed=4, entangle_position_embedding=True, disable_entangle=True)
    ours = ours_from(ref, entangle_position_embedding=True)
    with torch.no_grad():
        want = ref(
            input_ids=SRC_PADDED,
            patch_images=images(),
            patch_masks=torch.ones(2, dtype=torch.bool),
            decoder_input_ids=DEC,
        ).logits
        got = ours(SRC_PADDED, DEC, images())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_image", [False, True])
def test_cached_decoding_equals_full_forward(with_image):
    ours = ours_from(random_reference(seed=5))
    img = images() if with_image else None
    dec = torch.tensor([[0, 20, 21, 22, 23, 24, 25], [0, 30, 31, 32, 33, 34, 35]])
    with torch.no_grad():
        full = ours(SRC_PADDED, dec, img)
        enc = ours.encode(SRC_PADDED, img)
        cache = ours.new_cache(2, 10)
        steps = [ours.decode(dec[:, :3], enc, cache)]  # a 3-token decoder prompt, then one token at a time
        steps += [ours.decode(dec[:, t : t + 1], enc, cache) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert cache.length == 7


def test_cache_reorder_follows_rows():
    """After reorder([1, 1]) both rows continue row 1's prefix (beam search)."""
    ours = ours_from(random_reference(seed=6))
    dec = torch.tensor([[0, 20, 21, 22], [0, 30, 31, 32]])
    with torch.no_grad():
        enc = ours.encode(SRC_PADDED)
        cache = ours.new_cache(2, 8)
        ours.decode(dec[:, :3], enc, cache)
        index = torch.tensor([1, 1])
        cache.reorder(index)
        step = ours.decode(torch.tensor([[32], [40]]), enc.index_select(index), cache)
        want = ours(SRC_PADDED[[1, 1]], torch.tensor([[0, 30, 31, 32], [0, 30, 31, 40]]))[:, -1:]
    torch.testing.assert_close(step, want, atol=1e-5, rtol=0)


def test_bad_inputs_raise_one_clear_error():
    ours = ours_from(random_reference(seed=0))
    with pytest.raises(InputError, match="longer than the model's 64 positions"):
        ours(torch.zeros(1, 65, dtype=torch.long), DEC[:1])
    with pytest.raises(GenerationError, match="exceed the model's 64"):
        ours(SRC[:1], torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(InputError, match="at most 8x8"):  # 9x9 patches: beyond image_bucket_size
        ours(SRC[:1], DEC[:1], images(1, 144))


# --- checkpoints ----------------------------------------------------------------------------------------

# the reference's (OFA port's) names -> BiomedGPT's fairseq names, per the port's converter table
TO_FAIRSEQ = (
    ("encoder.layers.{}.self_attn_mid_layer_norm.", "encoder.layers.{}.attn_ln."),
    ("encoder.layers.{}.ffn_layer_norm.", "encoder.layers.{}.ffn_layernorm."),
    ("decoder.layers.{}.self_attn_mid_layer_norm.", "decoder.layers.{}.self_attn_ln."),
    ("decoder.layers.{}.cross_attn_mid_layer_norm.", "decoder.layers.{}.cross_attn_ln."),
    ("decoder.layers.{}.cross_attn_layer_norm.", "decoder.layers.{}.encoder_attn_layer_norm."),
    ("decoder.layers.{}.cross_attn.", "decoder.layers.{}.encoder_attn."),
    ("decoder.layers.{}.ffn_layer_norm.", "decoder.layers.{}.ffn_layernorm."),
)


def fairseq_state(ref) -> dict:
    out = {}
    for k, v in ref.state_dict().items():
        for a, b in TO_FAIRSEQ:
            for i in range(2):
                if k.startswith(a.format(i)):
                    k = b.format(i) + k[len(a.format(i)) :]
        out[k] = v.clone()
    out["encoder.version"] = torch.tensor([3.0])
    out["decoder.version"] = torch.tensor([3.0])
    return out


FAIRSEQ_ARGS = dict(
    arch="ofa_tiny", encoder_embed_dim=32, decoder_embed_dim=32, encoder_ffn_embed_dim=48, decoder_ffn_embed_dim=48,
    encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    max_source_positions=64, max_target_positions=64, resnet_type="resnet18", token_bucket_size=16,
    image_bucket_size=8, attn_scale_factor=2.0, disable_entangle=True, entangle_position_embedding=False,
    share_all_embeddings=True, layernorm_embedding=True, patch_layernorm_embedding=True, no_scale_embedding=True,
    add_type_embedding=True, scale_attn=True, scale_fc=True, scale_heads=True, scale_resids=False,
    encoder_normalize_before=True, decoder_normalize_before=True, activation_fn="gelu", patch_image_size=48,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip


def write_fairseq(path, ref, ema_ref=None, args=None, cfg=None, **extra):
    ckpt = {"model": fairseq_state(ref), "optimizer_history": [{"num_updates": 10}], **extra}
    if args is not None:
        ckpt["args"] = argparse.Namespace(**args)
    if cfg is not None:
        ckpt["cfg"] = cfg
    if ema_ref is not None:
        ckpt["extra_state"] = {"ema": {k: v.half() for k, v in fairseq_state(ema_ref).items()}, "epoch": 3}
    torch.save(ckpt, path)
    return path


def with_bpe(d):
    d.mkdir(parents=True, exist_ok=True)
    for f in ("encoder.json", "vocab.bpe", "dict.txt"):
        shutil.copy(BPE / f, d / f)
    return d


def logits_of(model, ref, atol=1e-5):  # measured below 1e-5 against modelscope's OFA (was 1e-4)
    img = images()
    with torch.no_grad():
        want = ref(
            input_ids=SRC_PADDED, patch_images=img, patch_masks=torch.ones(2, dtype=torch.bool), decoder_input_ids=DEC
        ).logits
        got = model(SRC_PADDED, DEC, img)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_fairseq_checkpoint_with_args(tmp_path):
    ref = random_reference(seed=10, vocab_size=59457)
    path = write_fairseq(with_bpe(tmp_path) / "checkpoint_best.pt", ref, args=FAIRSEQ_ARGS)
    assert is_ofa(path) and is_ofa(tmp_path)
    model, tok = load_ofa(path)
    assert model.config.image_size == 48 and model.config.resnet_layers == (2, 2, 2)
    assert tok.vocab_size == 59457 and tok.encode(" what") == [99]
    logits_of(model, ref)


def test_fairseq_checkpoint_with_omegaconf_cfg_and_ema(tmp_path):
    from omegaconf import OmegaConf

    ref, ema = random_reference(seed=11, vocab_size=59457), random_reference(seed=12, vocab_size=59457)
    model_cfg = {k: v for k, v in FAIRSEQ_ARGS.items() if k != "patch_image_size"}
    cfg = OmegaConf.create({"model": model_cfg, "task": {"_name": "vqa_gen", "patch_image_size": 48}})
    path = write_fairseq(tmp_path / "vqa.pt", ref, ema_ref=ema, cfg=cfg)
    model, _ = load_ofa(path, bpe_dir=BPE)
    logits_of(model, ref)
    ema_model, _ = load_ofa(path, bpe_dir=BPE, ema=True)
    logits_of(ema_model, ema.half().float())  # stored in fp16 (as fp16 trainers write them): compare rounded


def test_hf_port_directory(tmp_path):
    ref = random_reference(seed=13, vocab_size=59457)
    conf = {**ref.config.to_dict(), "model_type": "ofa", "architectures": ["OFAModel"]}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    OFATokenizer.from_pretrained(BPE).save_pretrained(tmp_path)  # vocab.json + merges.txt, as the port ships
    assert is_ofa(tmp_path)
    model, tok = load_ofa(tmp_path)
    logits_of(model, ref, atol=2.5e-5)  # measured 1.2e-5 on this 59,457-word vocabulary
    assert tok.encode(" what is the summary") == OFATokenizer.from_pretrained(BPE).encode(" what is the summary")


def test_convert_round_trip(tmp_path):
    ref = random_reference(seed=14, vocab_size=59457)
    src = write_fairseq(with_bpe(tmp_path / "src") / "model.pt", ref, args=FAIRSEQ_ARGS)
    model, tok = load_ofa(src)
    save_ofa(model, tok, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "biomedgpt"
    assert is_ofa(tmp_path / "out")
    back, tok2 = load_ofa(tmp_path / "out")
    assert back.config == model.config
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logits_of(back, ref)
    assert tok2.encode(" a chest x-ray") == tok.encode(" a chest x-ray")


def _write_bad(tmp_path, ref, edit, args=FAIRSEQ_ARGS):
    ckpt = {"model": fairseq_state(ref), "args": argparse.Namespace(**args)}
    edit(ckpt["model"])
    torch.save(ckpt, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda sd: sd.pop("encoder.layers.1.attn_ln.weight"), "missing key 'encoder.layers.1.self_attn_mid_layer"),
        (lambda sd: sd.__setitem__("decoder.layers.0.extra.weight", torch.zeros(2)), "unexpected key 'decoder.layer"),
        (lambda sd: sd.__setitem__("encoder.layers.0.fc1.bias", torch.zeros(49)), r"fc1.bias has shape \(49,\)"),
        (lambda sd: sd.__setitem__("decoder.output_projection.weight", torch.zeros(120, 32)), "shares one embedding"),
        (lambda sd: sd.__setitem__("encoder.layers.0.w_resid", torch.ones(32)), "scale-resids"),
    ],
    ids=["missing", "unexpected", "shape", "untied", "w_resid"],
)
def test_bad_checkpoint_keys(tmp_path, edit, message):
    path = _write_bad(tmp_path, random_reference(seed=15), edit)
    with pytest.raises(CheckpointError, match=message):
        cfg, sd, _ = read_state(path)
        build_model(cfg, sd, str(path))


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(scale_resids=True), "scale_resids=True, but BiomedGPT's model has scale_resids=False"),
        (dict(share_all_embeddings=False), "share_all_embeddings=False"),
        (dict(decoder_attention_heads=2), "encoder_attention_heads=4 but decoder_attention_heads=2"),
        (dict(resnet_type="resnet9"), "resnet_type 'resnet9'"),
    ],
)
def test_other_ofa_variants_are_rejected(tmp_path, override, message):
    path = _write_bad(tmp_path, random_reference(seed=15), lambda sd: None, {**FAIRSEQ_ARGS, **override})
    with pytest.raises(CheckpointError, match=message):
        read_state(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    assert not is_ofa(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state(tmp_path / "junk.pt")
    torch.save({"model": {"decoder.embed_tokens.weight": torch.zeros(3, 2)}, "args": argparse.Namespace()},
               tmp_path / "lm.pt")  # fmt: skip
    assert not is_ofa(tmp_path / "lm.pt")
    with pytest.raises(CheckpointError, match="no OFA image stem"):
        read_state(tmp_path / "lm.pt")
    ref = random_reference(seed=16, vocab_size=59457)
    path = write_fairseq(tmp_path / "x.pt", ref, args=FAIRSEQ_ARGS)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        read_state(path, ema=True)


def test_fairseq_names_map_to_ours():
    """The rename table on its own: every fairseq layer sub-module name it knows, and nothing else touched."""
    sd = {"encoder.layers.3.attn_ln.weight": 0, "decoder.layers.0.encoder_attn.k_proj.bias": 1,
          "decoder.layers.0.encoder_attn_layer_norm.bias": 2, "decoder.layers.1.self_attn_ln.weight": 3,
          "decoder.layers.1.cross_attn_ln.bias": 4, "decoder.layers.1.ffn_layernorm.weight": 5,
          "encoder.layers.0.ffn_layernorm.bias": 6, "encoder.layers.0.self_attn.c_attn": 7}  # fmt: skip
    assert fairseq_to_ours(sd) == {
        "encoder.layers.3.self_attn_mid_layer_norm.weight": 0, "decoder.layers.0.cross_attn.k_proj.bias": 1,
        "decoder.layers.0.cross_attn_layer_norm.bias": 2, "decoder.layers.1.self_attn_mid_layer_norm.weight": 3,
        "decoder.layers.1.cross_attn_mid_layer_norm.bias": 4, "decoder.layers.1.ffn_layer_norm.weight": 5,
        "encoder.layers.0.ffn_layer_norm.bias": 6, "encoder.layers.0.self_attn.c_attn": 7,
    }  # fmt: skip


def test_presets_have_the_papers_sizes():
    """-S/-M/-B parameter counts (the paper: 33M, 93M, 182M), counted on meta tensors."""
    counts = {}
    for name in ("tiny", "medium", "base"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in OFA(getattr(OFAConfig, name)()).parameters())
    assert round(counts["tiny"] / 1e6) == 33, counts
    assert round(counts["medium"] / 1e6) == 93, counts
    assert round(counts["base"] / 1e6) == 182, counts


# key -> shape of the original model's state_dict() for -S/-M/-B, derived from taokz/BiomedGPT's models/ofa by
# scripts/derive_ofa_fairseq_keys.py (the original classes built with fairseq stand-ins; see the file's header)
ORIGINAL_KEYS = json.loads((Path(__file__).parent / "data" / "ofa_fairseq_keys.json").read_text())


@pytest.mark.parametrize("arch", ["ofa_tiny", "ofa_medium", "ofa_base"])
def test_loader_takes_exactly_the_original_models_keys(tmp_path, arch):
    """A fairseq checkpoint holding exactly the original -S/-M/-B model's keys and shapes (stride-0 tensors: a
    few bytes on disk) loads: every key is consumed or knowingly dropped, none is missing, every shape fits."""
    keys = ORIGINAL_KEYS[arch]
    assert len(keys) == {"ofa_tiny": 543, "ofa_medium": 849, "ofa_base": 967}[arch]
    zero = torch.zeros(())
    sd = {k: zero.expand(shape) for k, shape in keys.items()}
    bucket = token_buckets(256)  # the value check on this table is not what this test is about
    sd["encoder.token_rp_bucket"] = sd["decoder.token_rp_bucket"] = bucket
    args = {"arch": arch, "patch_image_size": 256, **{k: v for k, v in FAIRSEQ_ARGS.items() if v is True}}
    torch.save({"model": sd, "args": argparse.Namespace(**args)}, tmp_path / "checkpoint.pt")
    cfg, ours, _ = read_state(tmp_path / "checkpoint.pt")
    with torch.device("meta"):
        model = OFA(cfg)
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    got = {k: list(v.shape) for k, v in ours.items()}
    assert sorted(set(got) - set(want)) == []  # an original key the loader neither maps nor drops
    assert sorted(set(want) - set(got)) == []  # a key the loader requires that the original does not have
    assert {k: (got[k], want[k]) for k in want if got[k] != want[k]} == {}
    check_keys(ours, model, arch)  # the loader's own verdict agrees
