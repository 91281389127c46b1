"""Generation speed: biogpt against transformers on the same random weights (base config), CPU, side by side.

    python benchmarks/bench_generate.py [--threads 2] [--new-tokens 64] [--config base|tiny]
    python benchmarks/bench_generate.py --family gpt2 [--layers 2] [--new-tokens 32]
    python benchmarks/bench_generate.py --modes int8 --cases b1,b16 --json out.json   (what check_speed.py runs)

--family gpt2: BioMedLM's width, heads, FFN and vocabulary (2560, 20, 10240, 28896; inverse-layer attention
scaling, gelu_new) with `--layers` of its 32 layers, so that every form fits in memory side by side;
transformers runs in fp32 and in bf16, and the ratios are given against both. It also prints this machine's
memory bandwidth (one pass over a 1 GiB tensor) and the batch-1 decoding limit it sets for the full 32-layer
BioMedLM in int8 (every weight read once per token), beside the int8 speed measured here scaled to 32 layers.

Cases: greedy at batch 1, greedy at batch 16, beam search with 5 beams. Each case runs, alternating:
transformers fp32; biogpt fp32 (the exact mode: outputs are checked identical to transformers); biogpt bf16
(prepacked for oneDNN, where the CPU has native bf16: biogpt.backends.cpu.forms.pack_bf16); biogpt int8 (int8
weights: biogpt.backends.cpu.forms.quantize_int8, with biogpt's own AMX kernels and a bf16 KV cache where the CPU
has AMX, PyTorch's quantized Linear with biogpt's decode attention over a bf16 cache on other AVX512-BF16 CPUs,
PyTorch's Linear and attention elsewhere; the header line says which). It prints tokens/s, ratios against
transformers fp32, and the share of generated tokens that bf16 and int8 have in common with fp32.

The memory-bandwidth limit: before the cases, the script measures this machine's streaming bandwidth with the
same threads (one read pass over a 1 GiB tensor, best of 3). A decoding step reads every Linear's and the output
head's weights once (in the form's bytes: 4, 2 or 1 per weight) and each row's KV cache (in the cache's dtype,
taken at its mean length over the run), so bandwidth / those bytes x batch is the fastest the step can go; each
mode's tokens/s is printed as a fraction of that limit ("of limit"), next to its ratio over transformers.
`--json` writes every figure (tokens/s, ratio, fraction of the limit, bandwidth) for benchmarks/check_speed.py.
"""

import argparse
import json
import time

import torch
from peaks import bandwidth_gbs  # benchmarks/peaks.py

from biogpt.backends.cpu import can_pack_bf16, pack_bf16, quantize_int8
from biogpt.checkpoints import config_from_hf, hf_to_ours
from biogpt.checkpoints import gpt2 as gpt2_checkpoints
from biogpt.generation import generate
from biogpt.models.biogpt import BioGPT
from biogpt.models.gpt2 import GPT2, GPT2Config


def gpt2_models(layers: int):
    """transformers' GPT2LMHeadModel at BioMedLM's width with `layers` layers, and ours on the same weights."""
    from transformers import GPT2Config as HFGPT2Config
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    hc = HFGPT2Config(vocab_size=28896, n_embd=2560, n_head=20, n_layer=layers, n_positions=1024,
                    activation_function="gelu_new", scale_attn_by_inverse_layer_idx=True, bos_token_id=28895,
                    eos_token_id=28895)  # fmt: skip
    hf = GPT2LMHeadModel(hc).eval()
    cfg = gpt2_checkpoints.config_from_hf(hc.to_dict())

    def ours():
        m = GPT2(cfg).eval()
        m.load_state_dict(gpt2_checkpoints.hf_to_ours(hf.state_dict(), cfg.n_layer))
        return m

    return hf, cfg, ours


CASES = {"b1": ("greedy, batch 1", 1, 1), "b16": ("greedy, batch 16", 16, 1), "beam5": ("beam search, 5 beams", 1, 5)}
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "int8": 1, "hf": 4, "hf bf16": 2}  # bytes per weight of each form


def step_bytes(cfg, form: str, rows: int, mean_len: float, cache_bytes: int) -> float:
    """Bytes one decoding step must read: every block Linear's and the head's weights once, in the form's bytes,
    and the KV cache of `rows` rows at `mean_len` slots (keys and values of every layer, `cache_bytes` each)."""
    d, f = cfg.d_model, cfg.d_ffn
    weights = cfg.n_layer * (4 * d * d + 2 * d * f) + cfg.vocab_size * d  # qkv, out, fc1, fc2; the head
    return weights * WEIGHT_BYTES[form] + 2 * cfg.n_layer * rows * mean_len * d * cache_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--config", default="base", choices=["base", "tiny"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--family", default="biogpt", choices=["biogpt", "gpt2"])
    ap.add_argument("--layers", type=int, default=2, help="--family gpt2: layers of BioMedLM's 32 (default: 2)")
    ap.add_argument("--modes", default="fp32,bf16,int8", help="biogpt's forms to run (fp32 is checked exact)")
    ap.add_argument("--cases", default="b1,b16,beam5", help=f"of {', '.join(CASES)}")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    modes, cases = args.modes.split(","), [CASES[c] for c in args.cases.split(",")]
    bw = bandwidth_gbs()

    refs = {}  # transformers, by precision
    if args.family == "gpt2":
        hf, cfg, fresh = gpt2_models(args.layers)
        refs["hf"] = hf
        refs["hf bf16"] = gpt2_models(args.layers)[0].to(torch.bfloat16)  # the same seed: the same weights
        bos, eos, pad = cfg.bos_token_id, cfg.eos_token_id, cfg.eos_token_id
        label = f"BioMedLM width, {args.layers} of 32 layers"
    else:
        from transformers import BioGptConfig, BioGptForCausalLM

        torch.manual_seed(0)
        hc = (
            BioGptConfig()
            if args.config == "base"
            else BioGptConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
        )
        hf = BioGptForCausalLM(hc).eval()
        refs["hf"] = hf
        cfg = config_from_hf(hc.to_dict())

        def fresh():
            m = BioGPT(cfg).eval()
            m.load_state_dict(hf_to_ours(hf.state_dict(), cfg.n_layer))
            return m

        bos, eos, pad = 2, 2, 1
        label = f"config {args.config}"
    ours = fresh()
    models = {"fp32": ours} if "fp32" in modes else {}
    if can_pack_bf16() and "bf16" in modes:
        models["bf16"] = pack_bf16(fresh())
    int8_form = "-"
    if "int8" in modes:
        models["int8"] = quantize_int8(fresh())
        q8 = models["int8"].blocks[0]
        int8_form = type(q8.qkv).__name__ + (f" + {type(q8.decode_attention).__name__}" if q8.decode_attention else "")
    print(
        f"{label}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, "
        f"{args.threads} threads, native bf16: {can_pack_bf16()}, int8 form: {int8_form}; memory bandwidth "
        f"{bw:.1f} GB/s (one read pass over 1 GiB, {args.threads} threads)"
    )
    figures: dict = {"bandwidth_gbs": bw, "threads": args.threads, "int8_form": int8_form, "cases": {}}

    n = args.new_tokens
    head = "".join(f"{'transformers' + r[2:]:>18}" for r in refs) + "".join(f"{'biogpt ' + k:>13}" for k in models)
    head += "".join(f"{k + ' x':>9}" for k in models)
    if "hf bf16" in refs:
        head += "".join(f"{k + ' x bf16':>14}" for k in models)
    head += "".join(f"{k + ' of limit':>15}" for k in [*refs, *models])
    print(f"{'case':<22}{head}   same tokens as fp32")
    for name, batch, beams in cases:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(4, cfg.vocab_size - 1, (batch, args.prompt_tokens), generator=g)
        ids[:, 0] = bos
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=n, min_new_tokens=n, num_beams=beams, eos_token_id=eos)
        best = dict.fromkeys([*refs, *models], 1e9)
        outs = {}
        for _ in range(args.rounds):
            with torch.inference_mode():
                for k, r in refs.items():
                    t = time.perf_counter()
                    out = r.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=pad, **kw)
                    best[k] = min(best[k], time.perf_counter() - t)
                    if k == "hf":
                        ref = out
                for k, m in models.items():
                    t = time.perf_counter()
                    outs[k] = generate(m, ids, mask, pad_token_id=pad, **kw).sequences
                    best[k] = min(best[k], time.perf_counter() - t)
            if "fp32" in outs and not torch.equal(outs["fp32"], ref):
                raise SystemExit(f"{name}: biogpt fp32 output differs from transformers")
        tps = {k: batch * n / v for k, v in best.items()}
        rows, mean_len = batch * beams, args.prompt_tokens + n / 2
        limit = {}
        for k in [*refs, *models]:
            m = models.get(k, ours)
            cache_bytes = 2 if (k in models and m.cache_dtype == torch.bfloat16) or "bf16" in k else 4
            limit[k] = rows / beams * bw * 1e9 / step_bytes(cfg, k, rows, mean_len, cache_bytes)
        same = [f"{k} {(outs[k][:, -n:] == ref[:, -n:]).float().mean():.0%}" for k in models if k != "fp32"]
        vs_bf16 = "".join(f"{tps[k] / tps['hf bf16']:>13.1f}x" for k in models) if "hf bf16" in refs else ""
        print(
            f"{name:<22}" + "".join(f"{tps[r]:>18.1f}" for r in refs) + "".join(f"{tps[k]:>13.1f}" for k in models)
            + "".join(f"{tps[k] / tps['hf']:>8.1f}x" for k in models) + vs_bf16
            + "".join(f"{tps[k] / limit[k]:>15.0%}" for k in [*refs, *models]) + "   " + ", ".join(same)
        )  # fmt: skip
        figures["cases"][name] = {
            k: {"tokens_s": tps[k], "limit_tokens_s": limit[k], "of_limit": tps[k] / limit[k],
                **({"vs_transformers": tps[k] / tps["hf"]} if k in models else {})}
            for k in [*refs, *models]
        }  # fmt: skip
        if name == "greedy, batch 1":
            int8_b1 = tps.get("int8", 0.0)
    print("tokens/s of generated tokens (batch x new tokens / seconds), best of", args.rounds, "rounds; of limit: "
          f"tokens/s over the memory-bandwidth limit ({bw:.1f} GB/s over the bytes a step reads: weights and KV cache)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if args.family == "gpt2":
        full = GPT2Config.biomedlm()
        per_layer = 12 * full.d_model**2  # int8 bytes of one block's Linears (qkv, out, fc1, fc2)
        head = full.vocab_size * full.d_model  # the int8 output head
        full_bytes, ours_bytes = full.n_layer * per_layer + head, args.layers * per_layer + head
        print(f"memory bandwidth, one read pass over 1 GiB with {args.threads} threads: {bw:.1f} GB/s; the full "
              f"32-layer BioMedLM reads {full_bytes / 1e9:.2f} GB of int8 weights per token at batch 1: limit "
              f"{bw * 1e9 / full_bytes:.1f} tokens/s; int8 batch 1 measured here scaled by weight bytes to 32 "
              f"layers: {int8_b1 * ours_bytes / full_bytes:.2f} tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
