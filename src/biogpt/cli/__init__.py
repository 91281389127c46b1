"""The `biogpt` command line: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import os
import sys


def cmd_tokenize(args: argparse.Namespace) -> int:
    from biogpt.text.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.vocab, lowercase=args.lowercase)
    out = sys.stdout
    for line in sys.stdin:
        text = line.rstrip("\n").rstrip("\r")
        if args.decode:
            try:
                ids = [int(x) for x in text.split()]
            except ValueError:
                raise SystemExit(f"error: --decode expects lines of integer ids, got {text[:60]!r}") from None
            out.write(tok.decode(ids) + "\n")
        elif args.tokens:
            out.write(" ".join(tok.tokens(text)) + "\n")
        elif args.offsets:
            ids, spans = tok.encode_with_offsets(text)
            out.write(" ".join(f"{i}:{a}-{b}" for i, (a, b) in zip(ids, spans)) + "\n")
        else:
            out.write(" ".join(map(str, tok.encode(text))) + "\n")
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _dtype(name: str):
    import torch

    from biogpt.backends.cpu import native_bf16

    if name == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def _load(args):
    import torch

    from biogpt.api import load
    from biogpt.backends.cpu import pack_bf16, quantize_int8
    from biogpt.errors import CheckpointError

    int8 = args.dtype == "int8"
    dtype = None if int8 else _dtype(args.dtype)
    model, tok = load(args.model, dtype=dtype, vocab=args.vocab)
    if int8:
        quantize_int8(model)
    elif dtype == torch.bfloat16:
        pack_bf16(model)  # the CPU form: weights laid out once for oneDNN's bf16 kernels
    if tok is None:
        raise CheckpointError(f"{args.model}: no vocabulary beside the weights; pass --vocab DIR")
    return model, tok


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from biogpt.generation import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = _load(args)
    prompts = [tok.encode(p) for p in args.prompt]
    out = generate(
        model,
        prompts,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams,
        num_return_sequences=args.num_return_sequences,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )
    for row in out.sequences.tolist():
        print(tok.decode(row))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from biogpt.checkpoints import load_state

    state = load_state(args.model)
    cfg, sd, vocab_dir = state.config, state.state_dict, state.vocab_dir
    n = sum(v.numel() for v in sd.values())
    print(f"model: {args.model}")
    for k, v in cfg.to_dict().items():
        print(f"  {k}: {v}")
    print(f"parameters: {n:,} ({n / 1e6:.1f}M; output head tied to the token embedding)")
    print(f"dtype: {next(iter(sd.values())).dtype}")
    if vocab_dir is not None:
        from biogpt.text import load_vocab

        v = load_vocab(vocab_dir)
        print(f"vocabulary: {vocab_dir} ({len(v.pieces)} tokens, {len(v.merges)} BPE merges)")
    else:
        print("vocabulary: none beside the weights")
    k = cfg.num_prompt_tokens
    first = cfg.vocab_size - k
    how = f"; {state.prompt_source}" if k else ""
    print(f"prompt tokens: {k}" + (f" (learned1..learned{k} = ids {first}..{cfg.vocab_size - 1}{how})" if k else ""))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from biogpt.api import convert

    convert(args.src, args.dst)
    print(f"wrote a Hugging Face directory to {args.dst}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from biogpt.tasks import get_task, predict, read_predictions

    options = {"setting": args.setting} if args.task == "pubmedqa" else {}
    task = get_task(args.task, **options)
    examples = task.examples(args.data, args.split)
    if args.limit:
        examples = examples[: args.limit]
    if args.predictions:
        outputs = read_predictions(args.predictions, len(examples))
    else:
        if not args.model:
            raise SystemExit("error: give --model PATH to run inference, or --predictions FILE to score outputs")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model, tok = _load(args)
        outputs = predict(task, model, tok, examples, batch_size=args.batch_size,
                          log=lambda m: print(f"  generated {m}", file=sys.stderr))  # fmt: skip
        if args.save_outputs:
            with open(args.save_outputs, "w", encoding="utf-8") as f:
                f.writelines(o.replace("\n", " ") + "\n" for o in outputs)
    metrics = task.score([task.parse(o) for o in outputs], examples)
    report = {"task": args.task, "split": args.split, "n": len(examples), "metrics": metrics}
    if args.task == "pubmedqa":
        report["setting"] = args.setting
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json and not args.output:
        print(text)
    else:
        print(f"{args.task} ({args.split}, n={len(examples)})")
        for k, v in metrics.items():
            print(f"  {k:<18}{v:.4f}" if isinstance(v, float) else f"  {k:<18}{v}")
    return 0


def cmd_bpe_learn(args: argparse.Namespace) -> int:
    import time

    from biogpt.text import moses
    from biogpt.training.bpe_learn import learn

    def lines():
        for path in args.input:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield line if args.pretokenized else " ".join(moses.tokenize(line))

    t = time.perf_counter()
    vocab = learn(lines(), args.output, num_merges=args.merges, min_frequency=args.min_frequency)
    secs = time.perf_counter() - t
    print(f"wrote {args.output}/bpecodes ({len(vocab.merges)} merges) and dict.txt ({len(vocab.pieces) - 4} "
          f"tokens) in {secs:.1f}s")  # fmt: skip
    return 0


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from biogpt.training.corpus import build_corpus

    m = build_corpus(
        args.input,
        args.vocab,
        args.output,
        workers=args.workers,
        validation_per_mille=args.valid_per_mille,
        shard_tokens=args.shard_tokens,
    )
    d = m["documents"]
    print(f"{args.output}: {d['train']} train documents ({sum(m['train'])} tokens), {d['valid']} validation "
          f"documents ({sum(m['valid'])} tokens)")  # fmt: skip
    for problem, n in sorted(m["problems"].items()):
        print(f"  skipped {n}: {problem}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from biogpt.training import TrainConfig, pretrain

    cfg = TrainConfig(out_dir=args.output, lr=args.lr, warmup_updates=args.warmup, max_updates=args.max_updates,
                      tokens_per_update=args.tokens_per_update, micro_batch_tokens=args.micro_batch_tokens,
                      clip_norm=args.clip_norm, dtype=args.dtype, eval_every=args.eval_every,
                      save_every=args.save_every, seed=args.seed, peak_tflops=args.peak_tflops,
                      fsdp=args.fsdp)  # fmt: skip
    pretrain(args.corpus, args.vocab, cfg, preset=args.preset, block=args.block, device=args.device)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from biogpt.training import finetune

    final = finetune(args.task, args.model, args.data, args.output, epochs=args.epochs, max_updates=args.max_updates,
                     lr=args.lr, warmup_updates=args.warmup, tokens_per_update=args.tokens_per_update,
                     micro_batch_tokens=args.micro_batch_tokens, target_only=args.target_only,
                     average_last=args.average_last, seed=args.seed, dtype=args.dtype, device=args.device)  # fmt: skip
    print(f"final checkpoint: {final}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="biogpt", description="BioGPT, exact and fast, without fairseq.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenize", help="text lines on stdin -> one line of ids (or tokens) per line")
    p.add_argument("--vocab", required=True, help="directory with dict.txt + bpecodes, or vocab.json + merges.txt")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tokens", action="store_true", help="print BPE pieces (fairseq spelling) instead of ids")
    mode.add_argument("--offsets", action="store_true", help="print id:start-end character spans")
    mode.add_argument("--decode", action="store_true", help="read lines of ids and print their text")
    p.add_argument("--lowercase", action="store_true", help="lowercase the input first (as some task pipelines did)")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("generate", help="continue one or more prompts")
    p.add_argument("prompt", nargs="+", help="prompt text(s); several are batched")
    p.add_argument("--model", required=True, help="HF directory, fairseq checkpoint(.pt or its dir), or hub id")
    p.add_argument("--vocab", help="vocabulary directory, if none sits beside the weights")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8", "auto"],
                   help="fp32 is exact; bf16 and int8 (int8 weights, CPU) are faster, approximate")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--early-stopping", action="store_true")
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="run a task checkpoint on a benchmark split and score it, or score outputs")
    p.add_argument("task", choices=["pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="task checkpoint (fairseq or converted)")
    src.add_argument("--predictions", help="one generated output per line, in split order")
    p.add_argument("--data", default="../shared/data/tasks", help="directory with BC5CDR/ DDI/ KD-DTI/ HoC/ PubMedQA/")
    p.add_argument("--split", default="test")
    p.add_argument("--setting", default="reasoning-free", choices=["reasoning-free", "reasoning-required"],
                   help="PubMedQA input: with the long answer (the paper's setting) or without")  # fmt: skip
    p.add_argument("--limit", type=int, help="only the first N examples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab", help="vocabulary directory, if none sits beside the weights")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8", "auto"])
    p.add_argument("--threads", type=int)
    p.add_argument("--save-outputs", help="also write the generated outputs here (one per line)")
    p.add_argument("--output", help="write the JSON report to this file")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bpe", help="vocabulary tools")
    bsub = p.add_subparsers(dest="bpe_command", required=True)
    q = bsub.add_parser("learn", help="learn BPE merges and a dictionary (bpecodes + dict.txt)")
    q.add_argument("input", nargs="+", help="text files, one document or sentence per line")
    q.add_argument("--output", required=True, help="directory for bpecodes and dict.txt")
    q.add_argument("--merges", type=int, default=40000, help="number of merges (BioGPT: 40000; Large: 50000)")
    q.add_argument("--min-frequency", type=int, default=2, help="stop when the best pair is rarer than this")
    q.add_argument("--pretokenized", action="store_true", help="the input already went through Moses")
    q.set_defaults(func=cmd_bpe_learn)

    p = sub.add_parser("corpus", help="pre-training corpus tools")
    csub = p.add_subparsers(dest="corpus_command", required=True)
    q = csub.add_parser("build", help="PubMed XML(.gz) / JSONL / text -> tokenized uint16 shards (resumable)")
    q.add_argument("input", nargs="+", help="pubmed*.xml.gz, *.jsonl ({pmid|id, title, abstract}) or text files")
    q.add_argument(
        "--vocab", required=True, help="vocabulary directory (dict.txt + bpecodes or vocab.json + merges.txt)"
    )
    q.add_argument("--output", required=True, help="output directory; rerun the same command to resume")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    q.add_argument("--valid-per-mille", type=int, default=5, help="documents held out for validation, per 1000")
    q.add_argument("--shard-tokens", type=int, default=1 << 28)
    q.set_defaults(func=cmd_corpus_build)

    p = sub.add_parser("pretrain", help="causal LM pre-training from scratch on a built corpus (torchrun for DDP)")
    p.add_argument("--corpus", required=True, help="output directory of biogpt corpus build")
    p.add_argument("--vocab", required=True)
    p.add_argument("--output", required=True, help="checkpoint directory; rerun to resume")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "base", "large"])
    p.add_argument("--block", type=int, help="tokens per block (default: the preset's positions)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-updates", type=int, default=1000)
    p.add_argument("--tokens-per-update", type=int, default=16384)
    p.add_argument("--micro-batch-tokens", type=int, default=4096)
    p.add_argument("--clip-norm", type=float, default=0.0)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, to log MFU")
    p.add_argument("--fsdp", action="store_true", help="shard the model across torchrun ranks (FSDP; for Large)")
    p.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint for a task with the original recipe")
    p.add_argument("task", choices=["pubmedqa", "bc5cdr", "ddi", "kd-dti", "hoc"])
    p.add_argument("--model", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--data", default="../shared/data/tasks")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-updates", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--tokens-per-update", type=int, default=1024 * 32)
    p.add_argument("--micro-batch-tokens", type=int, default=1024)
    p.add_argument("--target-only", action="store_true", help="score only the target (the original scores all)")
    p.add_argument("--average-last", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("info", help="config, parameter count, vocabulary and prompt tokens of a checkpoint")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="any checkpoint -> a Hugging Face directory (weights, config, tokenizer)")
    p.add_argument("src", help="fairseq checkpoint.pt (with dict.txt + bpecodes beside it) or HF directory")
    p.add_argument("dst")
    p.set_defaults(func=cmd_convert)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from biogpt.errors import BioGPTError

    try:
        return args.func(args)
    except BioGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `biogpt ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
