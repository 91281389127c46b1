"""`biogpt generate`, `biogpt info` and `biogpt convert`."""

from __future__ import annotations

import argparse
import sys

from biogpt.cli.args import (
    add_model_options,
    load_for_inference,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    set_threads,
    writable_dir,
)
from biogpt.cli.biomedgpt import generate_ofa, is_ofa_model
from biogpt.errors import BioGPTError

# `biogpt generate` defaults for BioGPT and GPT-2; a BiomedGPT model takes its task's (cli/biomedgpt.py)
TEXT_DEFAULTS = {"max_new_tokens": 50, "min_new_tokens": 0, "num_beams": 1, "length_penalty": 1.0,
                 "no_repeat_ngram_size": 0}  # fmt: skip


def cmd_generate(args: argparse.Namespace) -> int:
    from biogpt.api import family_of
    from biogpt.generation import generate

    set_threads(args.threads)
    if is_ofa_model(args):
        model, tok = load_for_inference(args)
        for text in generate_ofa(args, model, tok):
            print(text)
        return 0
    if args.image_size is not None:
        raise BioGPTError("--image-size applies to BiomedGPT models; this one reads no images")
    if args.ema:
        raise BioGPTError(f"--ema applies to BiomedGPT fairseq checkpoints; {args.model or 'the demo model'} is not "
                          "one")  # fmt: skip
    if args.image is not None:
        raise BioGPTError(f"--image needs a BiomedGPT (OFA) model; {args.model or 'the demo model'} is a text-only "
                          "model: pass --model with a BiomedGPT checkpoint, or drop --image")  # fmt: skip
    model, tok = load_for_inference(args)
    for name, default in TEXT_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    prompts = [tok.encode(p) for p in args.prompt]
    warn_room(prompts, args.max_new_tokens, model.config.max_positions)
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
        **family_of(model).special_ids(tok),
    )
    for row in out.sequences.tolist():
        print(tok.decode(row))
    return 0


def warn_room(prompts: list[list[int]], max_new_tokens: int, max_positions: int) -> None:
    """A warning on stderr when the model's positions leave fewer new tokens than asked: the batch is generated
    up to the longest prompt's room, so outputs are shorter than --max-new-tokens without that line."""
    longest = max(len(p) for p in prompts)
    room = max_positions - longest
    if 0 < room < max_new_tokens:
        print(f"warning: the longest prompt has {longest} tokens and the model {max_positions} positions, so at most "
              f"{room} new tokens are generated, not --max-new-tokens {max_new_tokens}", file=sys.stderr)  # fmt: skip


def ofa_size(cfg) -> str:
    """BiomedGPT-S/-M/-B by shape, else "custom size" (the family's own `size_name`)."""
    from biogpt.families.ofa import size_name

    return size_name(cfg)


def cmd_info(args: argparse.Namespace) -> int:
    from biogpt.api import family_for

    for line in family_for(args.model).describe(args.model):
        print(line)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from biogpt.api import convert, family_for

    writable_dir(args.dst, "the output folder")
    desc = family_for(args.src)
    ofa = desc.encoder_decoder
    if args.ema and "ema" not in desc.load_options:
        raise BioGPTError(f"--ema applies to BiomedGPT fairseq checkpoints; {args.src} is not one")
    convert(args.src, args.dst, ema=args.ema, overwrite=args.overwrite)
    print(f"wrote a {'BiomedGPT' if ofa else 'Hugging Face'} directory to {args.dst}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="continue one or more prompts (BiomedGPT: answer instructions, --image)")
    p.add_argument("prompt", nargs="+", help="prompt text(s); several are batched")
    add_model_options(p)
    p.add_argument("--image", help="an image file (PNG, JPEG, BMP, TIFF or GIF) the prompts ask about; BiomedGPT "
                                   "models only")  # fmt: skip
    p.add_argument("--ema", action="store_true", help="BiomedGPT fairseq checkpoints: use the EMA weights, as the "
                                                      "original evaluation does")  # fmt: skip
    p.add_argument("--image-size", type=positive_int, help="BiomedGPT: resize --image to this side (default: the "
                                                           "checkpoint's, else 256 for -S/-M, 384 for -B)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=positive_int,
                   help="tokens to generate (default: 50); BiomedGPT: its task's maximum")  # fmt: skip
    p.add_argument("--min-new-tokens", type=nonneg_int,
                   help="tokens before </s> may end the output (default: 0)")  # fmt: skip
    p.add_argument("--num-beams", type=positive_int,
                   help="beams; 1 is greedy (default: 1; BiomedGPT: its task's, e.g. 10 for captions)")  # fmt: skip
    p.add_argument("--num-return-sequences", type=positive_int, default=1,
                   help="outputs per prompt, at most --num-beams (default: %(default)s)")  # fmt: skip
    p.add_argument("--length-penalty", type=float,
                   help="beam scores are divided by length ** this (default: 1.0; BiomedGPT: its task's)")  # fmt: skip
    p.add_argument("--early-stopping", action="store_true", help="stop beam search once num_beams outputs ended")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam search")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="sampling temperature, > 0 (default: %(default)s)")  # fmt: skip
    p.add_argument("--top-k", type=nonneg_int, default=50,
                   help="sample among the k most likely tokens; 0: all (default: %(default)s)")  # fmt: skip
    p.add_argument("--top-p", type=probability, default=1.0,
                   help="sample within this cumulative probability, in (0, 1] (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, help="sampling seed (default: none, a new draw each run)")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0,
                   help="divide scores of tokens already present by this (default: %(default)s, off)")  # fmt: skip
    p.add_argument("--no-repeat-ngram-size", type=nonneg_int,
                   help="never repeat n-grams of this size; 0: off (default: 0; BiomedGPT: its task's)")  # fmt: skip
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="config, parameter count, vocabulary and prompt tokens of a checkpoint")
    p.add_argument("model", help="Hugging Face directory, fairseq checkpoint or hub id")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="any checkpoint -> a Hugging Face directory (weights, config, tokenizer)")
    p.add_argument("src", help="fairseq checkpoint.pt (with dict.txt + bpecodes beside it) or HF directory; or a "
                               "BiomedGPT checkpoint (fairseq .pt with encoder.json + vocab.bpe + dict.txt beside it, "
                               "or an OFA-port directory)")  # fmt: skip
    p.add_argument("dst", help="output folder")
    p.add_argument("--ema", action="store_true", help="BiomedGPT fairseq checkpoints: convert the EMA weights")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder whole (without it, "
                                                            "a non-empty folder is refused)")  # fmt: skip
    p.set_defaults(func=cmd_convert)
