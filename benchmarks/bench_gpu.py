"""Decoding and extraction on a GPU: biogpt bf16 (eager and with the compiled decoding step) against transformers
bf16 with its SDPA attention, on the same random weights, in the same run.

    python benchmarks/bench_gpu.py [--device cuda] [--batches 1 16 64] [--new-tokens 64] [--docs 64] [--json F]
    python benchmarks/bench_gpu.py --device cpu --config tiny --batches 1 2 --new-tokens 4 --docs 4   (a dry run)

Base config, 32-token prompts, greedy, exactly --new-tokens per row on every side. Prints tokens/s per batch
size (transformers, biogpt eager, biogpt compiled: `biogpt.generation.compile_decode`, CUDA graphs on CUDA),
the ratios, and the share of tokens the two bf16 models have in common; then `biogpt extract` documents/s over
--docs BC5CDR test abstracts (bf16 on the device, 32 new tokens each). `--json` writes every figure
(scripts/gpu_check.sh collects them with pre-training's and serving's).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT.parent / "shared" / "data" / "tasks"
VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "biogpt"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, rounds: int) -> tuple[float, object]:
    """Best wall time of `rounds` calls of fn (after one warm-up call), and its last result."""
    out = fn()
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def decode(args, figures: dict) -> None:
    from transformers import BioGptConfig, BioGptForCausalLM

    from biogpt.checkpoints import config_from_hf, hf_to_ours
    from biogpt.generation import compile_decode, generate
    from biogpt.models.biogpt import BioGPT

    small = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
    hc = BioGptConfig(attn_implementation="sdpa", **({} if args.config == "base" else small))
    torch.manual_seed(0)
    hf = BioGptForCausalLM(hc).eval()
    cfg = config_from_hf(hc.to_dict())
    ours = BioGPT(cfg).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict(), cfg.n_layer))
    hf, ours = hf.to(args.device, torch.bfloat16), ours.to(args.device, torch.bfloat16)
    compiled = BioGPT(cfg).eval().to(args.device, torch.bfloat16)
    compiled.load_state_dict(ours.state_dict())
    compile_decode(compiled, backend=args.backend)
    n = args.new_tokens
    print(f"decoding, config {args.config}, bf16 on {args.device}, 32-token prompts, {n} new tokens (tokens/s)")
    print(f"{'batch':>6}{'transformers':>14}{'biogpt':>10}{'compiled':>10}{'ratio':>8}{'compiled':>10}   same tokens")
    for batch in args.batches:
        ids = torch.randint(4, cfg.vocab_size - 1, (batch, 32), generator=torch.Generator().manual_seed(batch))
        ids[:, 0] = 2
        ids = ids.to(args.device)
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=n, min_new_tokens=n, eos_token_id=2, pad_token_id=1)

        def run_hf(ids=ids, mask=mask, kw=kw):
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=mask, do_sample=False, **kw)

        t_hf, ref = timed(run_hf, args.device, args.rounds)
        t_ours, _ = timed(lambda ids=ids, mask=mask, kw=kw: generate(ours, ids, mask, **kw), args.device, args.rounds)
        t_comp, out = timed(lambda ids=ids, mask=mask, kw=kw: generate(compiled, ids, mask, **kw), args.device,
                            args.rounds)  # fmt: skip
        tps = {k: batch * n / t for k, t in (("transformers", t_hf), ("biogpt", t_ours), ("compiled", t_comp))}
        same = (out.sequences[:, -n:] == ref[:, -n:]).float().mean().item()
        r_eager, r_comp = tps["biogpt"] / tps["transformers"], tps["compiled"] / tps["transformers"]
        print(f"{batch:>6}{tps['transformers']:>14.1f}{tps['biogpt']:>10.1f}{tps['compiled']:>10.1f}"
              f"{r_eager:>7.2f}x{r_comp:>9.2f}x   {same:.0%}")
        figures[f"decode batch {batch}"] = {**{f"{k} tokens_s": v for k, v in tps.items()}, "same_tokens": same,
                                            "compiled vs transformers": tps["compiled"] / tps["transformers"]}


def extract(args, figures: dict) -> None:
    import biogpt
    from biogpt.checkpoints import save_hf
    from biogpt.mining import Extractor, pipeline
    from biogpt.models.biogpt import BioGPT, BioGPTConfig

    docs = list(json.loads((TASKS / "BC5CDR" / "test.json").read_text()).items())[: args.docs]
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    inp = work / "docs.jsonl"
    inp.write_text("".join(json.dumps({"id": k, "title": d["title"], "abstract": d["abstract"]}) + "\n"
                           for k, d in docs))  # fmt: skip
    small = dict(d_model=128, n_layer=2, n_head=4, d_ffn=512)
    cfg = BioGPTConfig(vocab_size=42384 + 9, num_prompt_tokens=9, **({} if args.config == "base" else small))
    torch.manual_seed(0)
    tok = biogpt.Tokenizer.from_pretrained(VOCAB, num_prompt_tokens=9)
    save_hf(BioGPT(cfg).eval(), tok, work / "model")
    model, tok = biogpt.load(work / "model", dtype=torch.bfloat16, device=args.device)
    ex = Extractor(model, tok, "bc5cdr", batch_size=args.extract_batch)
    sync(args.device)
    t = time.perf_counter()
    pipeline.run([str(inp)], str(work / "out.jsonl"), "jsonl", ex.extract, {"mode": "bf16"}, {}, progress=False)
    sync(args.device)
    rate = len(docs) / (time.perf_counter() - t)
    print(f"extract: {len(docs)} BC5CDR test abstracts, bf16 on {args.device}, batch {args.extract_batch}: "
          f"{rate:.2f} documents/s (model loading excluded)")  # fmt: skip
    figures["extract docs_s"] = rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", default="base", choices=["base", "tiny"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--extract-batch", type=int, default=32)
    ap.add_argument("--backend", help="torch.compile backend of the compiled step (default: inductor)")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    figures: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    decode(args, figures)
    extract(args, figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
