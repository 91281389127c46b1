"""Generation speed: biogpt against transformers on the same random weights (base config), CPU, side by side.

    python benchmarks/bench_generate.py [--threads 2] [--new-tokens 64] [--config base|tiny]

Cases: greedy at batch 1, greedy at batch 16, beam search with 5 beams. Each case runs transformers fp32,
biogpt fp32 (the exact mode: outputs are checked identical to transformers) and biogpt bf16 (where the
CPU has native bf16), alternating, and prints tokens/s and ratios against transformers fp32.
"""

import argparse
import time

import torch

from biogpt.checkpoint import config_from_hf, hf_to_ours
from biogpt.generate import generate
from biogpt.model import BioGPT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--config", default="base", choices=["base", "tiny"])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import BioGptConfig, BioGptForCausalLM

    torch.manual_seed(0)
    hc = (
        BioGptConfig()
        if args.config == "base"
        else BioGptConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
    )
    hf = BioGptForCausalLM(hc).eval()
    cfg = config_from_hf(hc.to_dict())
    ours = BioGPT(cfg).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict(), cfg.n_layer))
    fast = BioGPT(cfg).eval().to(torch.bfloat16)
    fast.load_state_dict(ours.state_dict())
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(
        f"config {args.config}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, "
        f"{args.threads} threads, native bf16: {bf16}"
    )

    n = args.new_tokens
    cases = [("greedy, batch 1", 1, 1), ("greedy, batch 16", 16, 1), ("beam search, 5 beams", 1, 5)]
    print(f"{'case':<24}{'transformers fp32':>20}{'biogpt fp32':>14}{'biogpt bf16':>14}{'fp32 x':>9}{'bf16 x':>9}")
    for name, batch, beams in cases:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(4, cfg.vocab_size, (batch, args.prompt_tokens), generator=g)
        ids[:, 0] = 2
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=n, min_new_tokens=n, num_beams=beams)
        best = {"hf": 1e9, "fp32": 1e9, "bf16": 1e9}
        for _ in range(args.rounds):
            with torch.inference_mode():
                t = time.perf_counter()
                ref = hf.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=1, **kw)
                best["hf"] = min(best["hf"], time.perf_counter() - t)
                t = time.perf_counter()
                out = generate(ours, ids, mask, **kw).sequences
                best["fp32"] = min(best["fp32"], time.perf_counter() - t)
                if not torch.equal(out, ref):
                    raise SystemExit(f"{name}: biogpt fp32 output differs from transformers")
                if bf16:
                    t = time.perf_counter()
                    generate(fast, ids, mask, **kw)
                    best["bf16"] = min(best["bf16"], time.perf_counter() - t)
        tps = {k: batch * n / v for k, v in best.items()}
        bf = f"{tps['bf16']:>14.1f}" if bf16 else f"{'n/a':>14}"
        bx = f"{tps['bf16'] / tps['hf']:>8.1f}x" if bf16 else f"{'':>9}"
        print(f"{name:<24}{tps['hf']:>20.1f}{tps['fp32']:>14.1f}{bf}{tps['fp32'] / tps['hf']:>8.1f}x{bx}")
    print("tokens/s of generated tokens (batch x new tokens / seconds), best of", args.rounds, "rounds")


if __name__ == "__main__":
    main()
