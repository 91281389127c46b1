"""Where a decoding step's time goes: int8 Linears, attention, output head, LayerNorms, the rest of the model step
(residual adds, embeddings, positions and mask, Python), logits processing and the engine's own work.

    python benchmarks/profile_decode.py [--mode int8|bf16|fp32] [--batch 1] [--new-tokens 32] [--threads 2]
                                        [--config base|tiny] [--ops 12]

Base config with random weights, a 32-token prompt, greedy, `--new-tokens` exactly. Two passes over the same
run: (1) wall time per generated token split by timing every module of a category (forward hooks around it;
the hooks' own cost lands in the category), logits processing (engine.process and the choice of the token) and
the rest, which is the engine; (2) PyTorch's profiler over the decoding steps: the operators with the most self
time and how many allocations (aten::empty) a step makes. It uses only what the model and engine have had
since the int8 forms were introduced, so the same script profiles an older checkout (PYTHONPATH=old/src).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch


def categories(model) -> dict[str, list[torch.nn.Module]]:
    """The modules of each category (a category's time is the sum over its modules' calls)."""
    cats: dict[str, list] = defaultdict(list)
    for b in model.blocks:
        cats["Linears"] += [b.qkv, b.out, b.fc1, b.fc2]
        cats["LayerNorms"] += [b.ln1, b.ln2]
        if getattr(b, "decode_attention", None) is not None:
            cats["decode attention"].append(b.decode_attention)
    cats["LayerNorms"].append(model.ln_f)
    if getattr(model, "head", None) is not None:
        cats["output head"].append(model.head)
    return cats


def timed(totals: dict[str, float], key: str, module: torch.nn.Module, decoding: list[bool]) -> None:
    """Add the wall time of every call of `module` during a decoding step (decoding[0]) to totals[key]."""
    start: list[float] = []
    module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))

    def post(*_):
        t = start.pop()
        if decoding[0]:
            totals[key] += time.perf_counter() - t

    module.register_forward_hook(post)


def build(mode: str, config: str):
    from biogpt.backends.cpu import pack_bf16, quantize_int8
    from biogpt.models.biogpt import BioGPT, BioGPTConfig

    cfg = BioGPTConfig() if config == "base" else BioGPTConfig(d_model=128, n_layer=2, n_head=4, d_ffn=512)
    torch.manual_seed(0)
    model = BioGPT(cfg).eval()
    if mode == "int8":
        quantize_int8(model)
    elif mode == "bf16":
        pack_bf16(model)
    return model, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="int8", choices=["int8", "bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="base", choices=["base", "tiny"])
    ap.add_argument("--ops", type=int, default=12, help="operators to list from the profiler")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import biogpt
    from biogpt.generation import engine

    model, cfg = build(args.mode, args.config)
    ids = torch.randint(4, cfg.vocab_size - 1, (args.batch, 32), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 2
    n = args.new_tokens
    kw = dict(max_new_tokens=n, min_new_tokens=n, eos_token_id=2, pad_token_id=1)
    engine.generate(model, ids, **kw)  # warm-up (kernel build, first-call costs)

    totals: dict[str, float] = defaultdict(float)
    decoding = [False]  # inside a decoding step (one new token per row), not the prefill
    for key, mods in categories(model).items():
        for m in mods:
            timed(totals, key, m, decoding)

    def step_start(_m, a):
        decoding[0] = a[0].shape[1] == 1
        if decoding[0]:
            step.append(time.perf_counter())

    step: list[float] = []  # the model's decoding steps only
    model.register_forward_pre_hook(step_start)
    model.register_forward_hook(
        lambda _m, a, _o: totals.__setitem__("model step", totals["model step"] + time.perf_counter() - step.pop())
        if a[0].shape[1] == 1 else None)  # fmt: skip
    real_process = engine.process

    # the engine calls process() then argmax(); time process() and let argmax run on its output as usual
    def process_timed(*a, **k):
        t = time.perf_counter()
        out = real_process(*a, **k)
        totals["logits processing"] += time.perf_counter() - t
        return out

    engine.process = process_timed
    prefill_t: list[float] = []
    model.register_forward_pre_hook(lambda _m, a: prefill_t.append(time.perf_counter()) if a[0].shape[1] > 1 else None)
    model.register_forward_hook(
        lambda _m, a, _o: totals.__setitem__("prefill", totals["prefill"] + time.perf_counter() - prefill_t.pop())
        if a[0].shape[1] > 1 else None)  # fmt: skip
    t0 = time.perf_counter()
    engine.generate(model, ids, **kw)
    wall = time.perf_counter() - t0
    engine.process = real_process
    steps = n - 1  # the first new token comes from the prefill
    decode = wall - totals["prefill"]
    inside = sum(v for k, v in totals.items() if k not in ("model step", "prefill", "logits processing"))
    per = {k: v for k, v in totals.items() if k not in ("model step", "prefill")}
    per["rest of the model step (adds, embeddings, positions, mask, Python)"] = totals["model step"] - inside
    per["engine (sequences, done flags, loop)"] = decode - totals["model step"] - totals["logits processing"]
    print(f"biogpt {biogpt.__file__}: {args.mode}, batch {args.batch}, {args.threads} threads, {n} new tokens; "
          f"prefill {totals['prefill'] * 1e3:.0f} ms; decoding {decode / steps * 1e3:.2f} ms per step, "
          f"{args.batch * steps / decode:.1f} tokens/s")  # fmt: skip
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<70}{v / steps * 1e3:>8.2f} ms{v / decode:>7.0%}")

    from torch.profiler import ProfilerActivity, profile

    for m in model.modules():  # the profile runs without the hooks
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(model, ids, **kw)
    events = prof.key_averages()
    empties = sum(e.count for e in events if e.key in ("aten::empty", "aten::empty_strided"))
    print(f"profiler, whole run ({n} tokens): {empties} allocations (aten::empty/empty_strided), "
          f"{empties / n:.0f} per token; top operators by self CPU time:")  # fmt: skip
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.ops]:
        print(f"  {e.key:<44}{e.count:>7} calls{e.self_cpu_time_total / 1e3 / n:>9.2f} ms per token")


if __name__ == "__main__":
    main()
