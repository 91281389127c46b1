"""Mining speed: `biogpt extract` end to end against what a user runs today, on the same documents, side by side.

    python benchmarks/bench_extract.py [--docs 32] [--new-tokens 32] [--config base|tiny] [--threads 2] [--json F]

Both sides get the BC5CDR test abstracts and a task model of the base configuration with random weights
(K = 9 prompt tokens), and generate exactly --new-tokens tokens per document (end-of-sequence suppressed on
both sides, so the work is equal):
- today: the original pipeline's steps with `transformers`: BioGptTokenizer on the task's source, the prompt
  tokens appended, `generate()` batched and left-padded, fp32, greedy, decode, the original post-processing;
- biogpt: `biogpt.mining.pipeline.run` (read the JSONL, build sources, generate, parse, ground, write JSONL) in
  each precision mode.
It prints documents/s and the ratio against transformers, and checks that fp32 outputs are identical. `--json`
writes each mode's documents/s and ratio (for benchmarks/check_speed.py).

The prefill (the prompts, the bulk of the work) is bound by arithmetic: the script measures this CPU's peak for
the prefill's matrix products in each form (benchmarks/peaks.py: fp32, bf16, int8 and, with AMX, AMX int8) and
prints each mode's prefill rate (the Linears' 2 x weights x tokens operations over the prefill forwards' wall
time; attention is not counted) as a fraction of its form's peak.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from peaks import matmul_peaks  # benchmarks/peaks.py

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT.parent / "shared" / "data" / "tasks"
VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "biogpt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--config", default="base", choices=["base", "tiny"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="fp32,bf16,int8")
    ap.add_argument("--json", help="write each mode's documents/s and ratio over transformers to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import BioGptConfig, BioGptForCausalLM, BioGptTokenizer

    import biogpt
    from biogpt.checkpoints import config_from_hf, hf_to_ours, save_hf
    from biogpt.mining import Extractor, pipeline
    from biogpt.models.biogpt import BioGPT
    from biogpt.tasks import get_task

    docs = list(json.loads((TASKS / "BC5CDR" / "test.json").read_text()).items())[: args.docs]
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    inp = work / "docs.jsonl"
    lines = [json.dumps({"id": k, "title": d["title"], "abstract": d["abstract"]}) + "\n" for k, d in docs]
    inp.write_text("".join(lines))
    vocab = 42384 + 9
    hc = BioGptConfig(vocab_size=vocab) if args.config == "base" else BioGptConfig(
        vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
    torch.manual_seed(0)
    hf = BioGptForCausalLM(hc).eval()
    tok = biogpt.Tokenizer.from_pretrained(VOCAB, num_prompt_tokens=9)
    model_dir = work / "model"

    cfg = config_from_hf(hc.to_dict(), 9)
    m = BioGPT(cfg).eval()
    m.load_state_dict(hf_to_ours(hf.state_dict(), cfg.n_layer))
    save_hf(m, tok, model_dir)
    hf_tok_dir = work / "hftok"
    tok.save_pretrained(hf_tok_dir, format="hf")
    htok = BioGptTokenizer(str(hf_tok_dir / "vocab.json"), str(hf_tok_dir / "merges.txt"))
    task = get_task("bc5cdr")
    n = args.new_tokens

    def today() -> list[str]:
        """The transformers path: tokenize sources, append learned1..9, generate, decode, post-process."""
        from biogpt.mining.readers import read_documents
        from biogpt.mining.tasks import source_text

        outs = []
        sources = [source_text("bc5cdr", task, d) for d in read_documents(inp)]
        dots = htok.convert_tokens_to_ids("...</w>")
        prefixes = []
        for s in sources:  # </s> + source (truncated as fairseq: 639 tokens + "...") + learned1..9
            ids = htok(s)["input_ids"][1:]
            ids = ids[:639] + [dots] if len(ids) > 640 else ids
            prefixes.append([2] + ids + list(range(42384, 42393)))
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
        res = [None] * len(prefixes)
        for b in range(0, len(order), args.batch_size):
            batch = [prefixes[i] for i in order[b : b + args.batch_size]]
            T = max(map(len, batch))
            ids = torch.tensor([[1] * (T - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in batch])
            with torch.inference_mode():
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  num_beams=1, pad_token_id=1, eos_token_id=2)  # fmt: skip
            for i, row in zip(order[b : b + args.batch_size], out[:, T:].tolist()):
                res[i] = row
        for row in res:
            task.parse(htok.decode(row, skip_special_tokens=True))  # decode, the original post-processing
            outs.append(tok.decode(row))  # compared below with biogpt's (transformers has no learnedN names)
        return outs

    def ours(mode: str) -> tuple[list[str], float]:
        from biogpt.backends.cpu import pack_bf16, quantize_int8

        model, t = biogpt.load(model_dir)
        if mode == "bf16":
            pack_bf16(model)
        elif mode == "int8":
            quantize_int8(model)
        ex = Extractor(model, t, "bc5cdr", batch_size=args.batch_size)
        c = model.config
        per_token = 2 * c.n_layer * (4 * c.d_model**2 + 2 * c.d_model * c.d_ffn)  # the Linears' operations
        starts: list[float] = []

        def pre(_m, a, kw):
            ids = kw.get("input_ids", a[0] if a else None)
            starts.append(time.perf_counter() if ids is not None and ids.shape[1] > 1 else -1.0)

        def post(_m, a, kw, _out):
            t0 = starts.pop()
            if t0 >= 0:
                ids = kw.get("input_ids", a[0] if a else None)
                mask = kw.get("attention_mask", a[1] if len(a) > 1 else None)
                prefill["s"] += time.perf_counter() - t0
                prefill["ops"] += per_token * (int(mask.ne(0).sum()) if mask is not None else ids.numel())

        prefill.update(s=0.0, ops=0)
        model.register_forward_pre_hook(pre, with_kwargs=True)
        model.register_forward_hook(post, with_kwargs=True)
        # equal work: exactly n tokens per document (</s> never chosen), as the transformers side
        from biogpt.generation import engine

        real = engine.generate

        def fixed(*a, **kw):
            kw["max_new_tokens"] = n
            kw["min_new_tokens"] = n
            return real(*a, **kw)

        import biogpt.mining.extractor as mx

        mx.generate = fixed
        out = work / f"out-{mode}.jsonl"
        t0 = time.perf_counter()
        pipeline.run([str(inp)], str(out), "jsonl", ex.extract, {"mode": mode}, {}, progress=False)
        secs = time.perf_counter() - t0
        mx.generate = real
        return [json.loads(line)["output"] for line in out.read_text().splitlines()], secs

    peaks = matmul_peaks()
    print("this CPU's peak for the prefill's products ([512, 1024] x [1024, 4096]), GFLOP/s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))  # fmt: skip
    prefill: dict = {}
    t0 = time.perf_counter()
    ref = today()
    t_ref = time.perf_counter() - t0
    print(f"config {args.config}, {len(docs)} BC5CDR test abstracts, {n} new tokens each, batch {args.batch_size}, "
          f"{args.threads} threads")  # fmt: skip
    print(f"transformers fp32 (generate + original post-processing): {len(docs) / t_ref:.2f} docs/s ({t_ref:.1f} s)")
    figures = {"transformers_docs_s": len(docs) / t_ref, "peaks_gflops": peaks, "modes": {}}
    for mode in args.modes.split(","):
        outs, secs = ours(mode)
        form = "AMX int8" if mode == "int8" and "AMX int8" in peaks else mode
        rate = prefill["ops"] / prefill["s"] / 1e9 if prefill["s"] else 0.0
        print(f"  prefill {mode}: {prefill['s']:.1f} s of {secs:.1f} s, {rate:.0f} GFLOP/s, "
              f"{rate / peaks[form]:.0%} of the {form} peak")  # fmt: skip
        figures["modes"][mode] = {"docs_s": len(docs) / secs, "vs_transformers": t_ref / secs,
                                  "prefill_of_peak": rate / peaks[form], "prefill_share": prefill["s"] / secs}
        same = sum(a == b for a, b in zip(outs, ref))
        note = f"; outputs identical to transformers fp32: {same}/{len(ref)}"
        print(f"biogpt extract {mode}: {len(docs) / secs:.2f} docs/s ({secs:.1f} s), {t_ref / secs:.2f}x{note}")
        if mode == "fp32" and same != len(ref):
            raise SystemExit("fp32 outputs differ from transformers")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
