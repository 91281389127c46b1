"""Training speed: biogpt's training step against a plain transformers BioGptForCausalLM loop, side by side.

    python benchmarks/bench_train.py [--preset small] [--batch 8] [--block 256] [--steps 10] [--threads 2]

Same config, same batch of random tokens, AdamW with the same settings; tokens/s of forward + backward +
optimizer step, best of alternating rounds. biogpt runs in fp32 and with bf16 autocast.
"""

import argparse
import time

import torch

from biogpt.checkpoints import config_from_hf, hf_to_ours
from biogpt.models.biogpt import BioGPT
from biogpt.training import PRESETS, lm_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=list(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import BioGptConfig, BioGptForCausalLM

    p = PRESETS[args.preset]
    hc = BioGptConfig(hidden_size=p["d_model"], num_hidden_layers=p["n_layer"], num_attention_heads=p["n_head"],
                      intermediate_size=p["d_ffn"], max_position_embeddings=p["max_positions"])  # fmt: skip
    torch.manual_seed(0)
    hf = BioGptForCausalLM(hc)
    cfg = config_from_hf(hc.to_dict())
    ours = BioGPT(cfg)
    ours.load_state_dict(hf_to_ours(hf.state_dict(), cfg.n_layer))
    x = torch.randint(4, cfg.vocab_size, (args.batch, args.block + 1))
    inp, tgt = x[:, :-1], x[:, 1:]
    kw = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    opt_hf, opt_ours = torch.optim.AdamW(hf.parameters(), **kw), torch.optim.AdamW(ours.parameters(), **kw)

    def step_hf():
        loss = hf(input_ids=inp, labels=inp).loss  # shifts inside: next-token loss over the same positions
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad()

    def step_ours(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lm_loss(ours, inp, tgt) / tgt.numel()  # the training loop's loss: fused head + CE
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad()

    hf.train()
    ours.train()
    runs = {
        "transformers fp32": step_hf,
        "biogpt fp32": lambda: step_ours(False),
        "biogpt bf16": lambda: step_ours(True),
    }
    best = dict.fromkeys(runs, 1e9)
    for _ in range(args.rounds):
        for name, fn in runs.items():
            fn()  # warm-up
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / args.steps)
    tokens = args.batch * args.block
    print(f"preset {args.preset}: {sum(q.numel() for q in ours.parameters()) / 1e6:.1f}M parameters, batch "
          f"{args.batch} x {args.block} tokens, {args.threads} threads")  # fmt: skip
    for name, secs in best.items():
        print(f"{name:<20}{tokens / secs:>10.0f} tokens/s   {best['transformers fp32'] / secs:.2f}x")


if __name__ == "__main__":
    main()
