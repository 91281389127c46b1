"""Generation speed: biogpt against transformers on the same random weights (base config), CPU, side by side.

    python benchmarks/bench_generate.py [--threads 2] [--new-tokens 64] [--config base|tiny]

Cases: greedy at batch 1, greedy at batch 16, beam search with 5 beams. Each case runs, alternating:
transformers fp32; biogpt fp32 (the exact mode: outputs are checked identical to transformers); biogpt bf16
(prepacked for oneDNN, where the CPU has native bf16: biogpt.backends.cpu.forms.pack_bf16); biogpt int8 (int8
weights: biogpt.backends.cpu.forms.quantize_int8, with biogpt's own AMX kernels and a bf16 KV cache where the CPU
has AMX, PyTorch's quantized Linear elsewhere; the header line says which). It prints tokens/s, ratios against
transformers fp32, and the share of generated tokens that bf16 and int8 have in common with fp32.
"""

import argparse
import time

import torch

from biogpt.backends.cpu import can_pack_bf16, pack_bf16, quantize_int8
from biogpt.checkpoints import config_from_hf, hf_to_ours
from biogpt.generation import generate
from biogpt.models.biogpt import BioGPT


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
    models = {"fp32": ours}
    if can_pack_bf16():
        models["bf16"] = BioGPT(cfg).eval()
        models["bf16"].load_state_dict(ours.state_dict())
        pack_bf16(models["bf16"])
    int8 = BioGPT(cfg).eval()
    int8.load_state_dict(ours.state_dict())
    models["int8"] = quantize_int8(int8)
    int8_form = type(models["int8"].blocks[0].qkv).__name__
    print(
        f"config {args.config}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, "
        f"{args.threads} threads, native bf16: {'bf16' in models}, int8 form: {int8_form}"
    )

    n = args.new_tokens
    cases = [("greedy, batch 1", 1, 1), ("greedy, batch 16", 16, 1), ("beam search, 5 beams", 1, 5)]
    head = "".join(f"{'biogpt ' + k:>13}" for k in models) + "".join(f"{k + ' x':>9}" for k in models)
    print(f"{'case':<22}{'transformers':>13}{head}   same tokens as fp32")
    for name, batch, beams in cases:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(4, cfg.vocab_size, (batch, args.prompt_tokens), generator=g)
        ids[:, 0] = 2
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=n, min_new_tokens=n, num_beams=beams)
        best = dict.fromkeys(["hf", *models], 1e9)
        outs = {}
        for _ in range(args.rounds):
            with torch.inference_mode():
                t = time.perf_counter()
                ref = hf.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=1, **kw)
                best["hf"] = min(best["hf"], time.perf_counter() - t)
                for k, m in models.items():
                    t = time.perf_counter()
                    outs[k] = generate(m, ids, mask, **kw).sequences
                    best[k] = min(best[k], time.perf_counter() - t)
            if not torch.equal(outs["fp32"], ref):
                raise SystemExit(f"{name}: biogpt fp32 output differs from transformers")
        tps = {k: batch * n / v for k, v in best.items()}
        same = [f"{k} {(outs[k][:, -n:] == ref[:, -n:]).float().mean():.0%}" for k in models if k != "fp32"]
        print(
            f"{name:<22}{tps['hf']:>13.1f}" + "".join(f"{tps[k]:>13.1f}" for k in models)
            + "".join(f"{tps[k] / tps['hf']:>8.1f}x" for k in models) + "   " + ", ".join(same)
        )  # fmt: skip
    print("tokens/s of generated tokens (batch x new tokens / seconds), best of", args.rounds, "rounds")


if __name__ == "__main__":
    main()
