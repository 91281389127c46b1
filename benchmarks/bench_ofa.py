"""BiomedGPT (OFA) speed: biogpt against the reference implementation (modelscope's OFA) on the same random
weights, CPU, side by side in one run.

    python benchmarks/bench_ofa.py [--config base|medium|tiny] [--threads 2] [--batch 2] [--new-tokens 24]
    python benchmarks/bench_ofa.py --finetune-meqsum [--steps 300] [--threads 2]

Needs the test-only reference: pip install --no-deps modelscope==1.40.2 (imported as the tests do).
Cases, each on `--batch` images at the config's resolution (384 px for -B) with a VQA-style question:
- images/s: the encoder over image + question (ResNet stem, projection, encoder layers);
- greedy tokens/s: the reference's generator (it recomputes the whole decoder prefix every step), a cached
  greedy loop over the reference's own decoder modules (its `past_key_values`), and biogpt's beam search with
  beam 1 (decoder cache);
- beam-5 tokens/s: the reference's generator and biogpt's.
--finetune-meqsum: a small CPU fine-tuning run instead: a narrow model (d 128, 2+2 layers, BiomedGPT's
vocabulary, random initial weights: no pretrained weights are reachable offline) trained on MeQSum's train split
(sources cut to 64 words) through the training loop (`train_ofa`: label-smoothed cross-entropy, batches of 16,
one per update), ROUGE-L on the val split before and after.

Every run generates exactly --new-tokens tokens (</s> is banned before that), so tokens/s compare like with like;
they are over the whole call (encoder included). The generated ids are checked equal between the reference and
biogpt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from biogpt.generation.seq2seq import beam_search
from biogpt.models.ofa import OFA, OFAConfig
from biogpt.tasks.biomedgpt.common import Decoding, generate_text
from biogpt.tasks.biomedgpt.metrics import summary_rouge_l
from biogpt.tasks.biomedgpt.summary import read_meqsum
from biogpt.text.ofa import OFATokenizer
from biogpt.training.finetune_ofa import train_ofa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.ofa_reference import reference  # noqa: E402

SIZES = {
    "tiny": dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, resnet_type="resnet50"),
    "medium": dict(d_model=512, encoder_layers=4, decoder_layers=4, encoder_attention_heads=8,
                   decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, resnet_type="resnet101"),
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, resnet_type="resnet101"),
}  # fmt: skip


class IdTokenizer:
    pad_token_id, unk_token_id, bos_token_id, eos_token_id = 1, 3, 0, 2

    def __init__(self, n: int):
        self.n = n

    def get_vocab(self):
        return {str(i): i for i in range(self.n)}

    def get_added_vocab(self):
        return {}


def models(name: str):
    modeling, configuration, _, _ = reference()
    torch.manual_seed(0)
    ref = modeling.OFAModel(configuration.OFAConfig(vocab_size=59457, dropout=0.0, **SIZES[name])).eval()
    cfg = getattr(OFAConfig, name)(dropout=0.0)
    ours = OFA(cfg).eval()
    sd = {}
    for k, v in ref.state_dict().items():
        if k.endswith(("rp_bucket", "image_position_idx", "num_batches_tracked")):
            continue
        sd["embed_tokens.weight" if k.endswith(("embed_tokens.weight", "output_projection.weight")) else k] = v
    ours.load_state_dict(sd)
    return ref, ours


def timed(fn, repeat: int = 1):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - t) / repeat


@torch.no_grad()
def ref_cached_greedy(ref, src, img, masks, n: int) -> torch.Tensor:
    """Greedy decoding through the reference's decoder with its own key/value cache."""
    enc = ref.encoder(input_ids=src, patch_images=img, patch_masks=masks)
    pad = enc.padding_mask
    cross_mask = torch.zeros(pad.shape, dtype=torch.float32).masked_fill(pad, torch.finfo(torch.float32).min)
    tokens = torch.zeros(src.size(0), 1, dtype=torch.long)
    past = None
    for step in range(n + 1):
        out = ref.decoder(input_ids=tokens, encoder_hidden_states=enc.last_hidden_state,
                          encoder_attention_mask=cross_mask[:, None, None, :], src_pos_embed=enc.position_embedding,
                          past_key_values=past, use_cache=True)  # fmt: skip
        past = out.past_key_values
        logits = out.last_hidden_state[:, -1].float()
        logits[:, 1] = -float("inf")
        if step < n:
            logits[:, 2] = -float("inf")
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], 1)
    return tokens[:, 1:]


def finetune_meqsum(steps: int) -> None:
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "biomedgpt"
    tok = OFATokenizer.from_pretrained(data / "bpe")
    train, val = (read_meqsum(data / "tasks" / "MeQSum" / f"{s}.tsv", max_words=64) for s in ("train", "val"))
    torch.manual_seed(0)
    cfg = OFAConfig(d_model=128, encoder_layers=2, decoder_layers=2, n_head=4, d_ffn=512, resnet_layers=(1, 1, 1),
                    max_positions=256, dropout=0.1)  # fmt: skip
    model = OFA(cfg).eval()
    dec = Decoding(beam_size=5, len_penalty=0.7, max_len_b=32, no_repeat_ngram_size=3)
    refs = [next(iter(r.refs)) for r in val]

    def rouge() -> float:
        preds = generate_text(model, tok, val, dec, batch_size=20)
        return sum(summary_rouge_l(p, r) for p, r in zip(preds, refs)) / len(refs)

    before = rouge()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as run:  # the training loop's checkpoints, not kept
        log = train_ofa(model, tok, train, run, steps, lr=2e-3, warmup_updates=20, batch_size=16, update_freq=1,
                        log_every=50)  # fmt: skip
    losses = [e["loss"] for e in log]
    took = time.perf_counter() - t
    after = rouge()
    print(f"MeQSum fine-tuning, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {steps} steps of 16 "
          f"in {took:.0f}s: loss {losses[0]:.2f} -> {sum(losses[-20:]) / 20:.2f}; val ROUGE-L {before:.4f} -> "
          f"{after:.4f} (beam 5, lenpen 0.7, no-repeat 3, max 32 tokens)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="base", choices=sorted(SIZES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--finetune-meqsum", action="store_true")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.finetune_meqsum:
        return finetune_meqsum(args.steps)
    ref, ours = models(args.config)
    size, n, B = ours.config.image_size, args.new_tokens, args.batch
    g = torch.Generator().manual_seed(1)
    img = torch.randn(B, 3, size, size, generator=g)
    masks = torch.ones(B, dtype=torch.bool)
    src = torch.cat([torch.zeros(B, 1, dtype=torch.long), torch.randint(4, 50000, (B, 10), generator=g),
                     torch.full((B, 1), 2)], 1)  # fmt: skip
    print(f"BiomedGPT-{args.config} random weights, {sum(p.numel() for p in ours.parameters()) / 1e6:.0f}M params, "
          f"{args.threads} threads, batch {B}, {size}px images, {n} new tokens")  # fmt: skip

    with torch.no_grad():
        _, t_ref = timed(lambda: ref.encoder(input_ids=src, patch_images=img, patch_masks=masks), 2)
        _, t_ours = timed(lambda: ours.encode(src, img, masks), 2)
    print(f"encoder images/s      reference {B / t_ref:8.2f}   biogpt {B / t_ours:8.2f}   x{t_ref / t_ours:.2f}")

    generator = reference()[3]
    net = {"net_input": {"input_ids": src, "patch_images": img, "patch_masks": masks}}
    for beam in (1, 5):
        gen = generator.SequenceGenerator(IdTokenizer(59457), beam_size=beam, max_len_b=n, min_len=n)
        want, t_ref = timed(lambda: gen.generate([ref], net))  # noqa: B023
        got, t_ours = timed(lambda: beam_search(ours, src, img, masks, beam_size=beam, max_len_b=n, min_len=n))  # noqa: B023
        same = all([h["tokens"].tolist() for h in w] == [h.tokens for h in o] for w, o in zip(want, got))
        toks = B * n
        line = f"beam {beam} tokens/s       reference {toks / t_ref:8.2f}   biogpt {toks / t_ours:8.2f}   "
        line += f"x{t_ref / t_ours:.2f}"
        if beam == 1:
            cached, t_cached = timed(lambda: ref_cached_greedy(ref, src, img, masks, n))
            same = same and cached[:, :n].tolist() == [h[0].tokens[:n] for h in got]
            line += f"   (reference decoder with its cache {toks / t_cached:.2f}: biogpt x{t_cached / t_ours:.2f})"
        print(line + f"   same ids: {same}")


if __name__ == "__main__":
    main()
