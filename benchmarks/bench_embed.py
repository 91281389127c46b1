"""Embedding speed: `biogpt embed`'s batching against transformers on the same documents, side by side.

    python benchmarks/bench_embed.py [--docs 32] [--batch-size 16] [--config base|tiny] [--threads 2]

Both sides get the first --docs BC5CDR test abstracts (title + abstract) and a model of BioGPT's base
configuration (24 layers, width 1024, its 42,384-word vocabulary) with random weights:
- transformers: BioGptTokenizer, `BioGptModel` in fp32 over the same length-sorted batches, right-padded with
  an attention mask (as sentence-embedding code runs it), mean over the real tokens of `last_hidden_state`,
  L2-normalised;
- biogpt: `biogpt.mining.embedding.Embedder` (encode, length-sorted batches, the unpadded forward where a batch
  has padding, mean pooling, normalise) in each precision mode.
It prints documents/s, the ratio against transformers, and how far the vectors are from transformers' (fp32:
the largest absolute difference; bf16 and int8: the smallest cosine similarity).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT.parent / "shared" / "data" / "tasks"
VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "biogpt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--config", default="base", choices=["base", "tiny"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="fp32,bf16,int8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import BioGptConfig, BioGptForCausalLM, BioGptTokenizer

    import biogpt
    from biogpt.backends.cpu import pack_bf16, quantize_int8
    from biogpt.checkpoints import config_from_hf, hf_to_ours, save_hf
    from biogpt.mining.embedding import Embedder
    from biogpt.mining.readers import title_abstract
    from biogpt.models.biogpt import BioGPT

    raw = list(json.loads((TASKS / "BC5CDR" / "test.json").read_text()).items())[: args.docs]
    docs = [title_abstract(k, d["title"], d["abstract"]) for k, d in raw]
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    hc = BioGptConfig() if args.config == "base" else BioGptConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)  # fmt: skip
    torch.manual_seed(0)
    hf = BioGptForCausalLM(hc).eval()
    tok = biogpt.Tokenizer.from_pretrained(VOCAB)
    cfg = config_from_hf(hc.to_dict())
    m = BioGPT(cfg).eval()
    m.load_state_dict(hf_to_ours(hf.state_dict(), cfg.n_layer))
    save_hf(m, tok, work / "model")
    tok.save_pretrained(work / "hftok", format="hf")
    htok = BioGptTokenizer(str(work / "hftok" / "vocab.json"), str(work / "hftok" / "merges.txt"))

    def today() -> torch.Tensor:
        texts = [d.text for d in docs]
        order = sorted(range(len(texts)), key=lambda i: len(htok(texts[i])["input_ids"]))
        out = torch.empty(len(texts), hc.hidden_size)
        for b in range(0, len(order), args.batch_size):
            rows = order[b : b + args.batch_size]
            enc = htok([texts[i] for i in rows], padding=True, return_tensors="pt")
            with torch.inference_mode():
                h = hf.biogpt(**enc).last_hidden_state  # [B, T, d]
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out[rows] = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
        return out

    def ours(mode: str) -> tuple[torch.Tensor, float]:
        model, t = biogpt.load(work / "model")
        if mode == "bf16":
            pack_bf16(model)
        elif mode == "int8":
            quantize_int8(model)
        emb = Embedder(model, t, batch_size=args.batch_size)
        t0 = time.perf_counter()
        vectors = torch.tensor([r["embedding"] for r in emb.records(docs)])
        return vectors, time.perf_counter() - t0

    today()  # warm-up (first-call allocations), then timed
    t0 = time.perf_counter()
    ref = today()
    t_ref = time.perf_counter() - t0
    print(f"config {args.config}, {len(docs)} BC5CDR test abstracts, batch {args.batch_size}, {args.threads} threads")
    print(f"transformers fp32 (BioGptModel, right-padded batches, masked mean): {len(docs) / t_ref:.2f} docs/s "
          f"({t_ref:.1f} s)")  # fmt: skip
    for mode in args.modes.split(","):
        vectors, secs = ours(mode)
        if mode == "fp32":
            note = f"max |difference| from transformers {(vectors - ref).abs().max():.2e}"
        else:
            note = f"min cosine with transformers fp32 {(vectors * ref).sum(1).min():.5f}"
        print(f"biogpt embed {mode}: {len(docs) / secs:.2f} docs/s ({secs:.1f} s), {t_ref / secs:.2f}x; {note}")


if __name__ == "__main__":
    main()
