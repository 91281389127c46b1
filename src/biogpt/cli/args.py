"""What every verb shares: checked argument types, early checks of paths, and loading a model for inference.

Numeric options are checked when they are parsed, so a bad value is a usage error (exit 2) before any work
starts; output paths are checked before minutes of generation or training, not after.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from biogpt.errors import BioGPTError

DEFAULT_DATA = "../shared/data/tasks"  # the project's layout: the shared data folder beside the repository


def _number(kind, low=None, high=None, low_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if value != value:  # NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value

    parse.__name__ = what or kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, what="a positive integer")
nonneg_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0.0, low_open=True, what="a number > 0")
nonneg_float = _number(float, 0.0, what="a number >= 0")
probability = _number(float, 0.0, 1.0, low_open=True, what="a number in (0, 1]")
per_mille = _number(int, 0, 1000, what="an integer in 0..1000")


def writable_file(path: str | None, what: str) -> None:
    """Fail now, not after the work, if `path` cannot be written: its folder must exist and be writable."""
    if path is None or path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise BioGPTError(f"{what} {p} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise BioGPTError(f"{what} {p}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise BioGPTError(f"{what} {p}: not writable here; choose another path")


def writable_dir(path: str, what: str) -> None:
    """An output folder must be creatable (its nearest existing parent writable) or already writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BioGPTError(f"{what} {p} exists and is not a folder")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise BioGPTError(f"{what} {p}: {existing} is not writable; choose another folder")


def data_dir(path: str) -> str:
    """The task data folder, with an error that says which default was used and how to pass another."""
    if not Path(path).is_dir():
        if path == DEFAULT_DATA:
            raise BioGPTError(
                f"the task data folder {path} (the default, relative to the current folder {Path.cwd()}) does not "
                "exist; pass --data DIR (a folder with BC5CDR/ DDI/ KD-DTI/ HoC/ PubMedQA/)"
            )
        raise BioGPTError(f"--data {path}: no such folder (expected BC5CDR/ DDI/ KD-DTI/ HoC/ PubMedQA/ inside)")
    return path


def input_files(paths: list[str]) -> None:
    """Every input must be a readable file (not a folder), checked before any work starts."""
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise BioGPTError(f"{p}: no such file")
        if p.is_dir():
            raise BioGPTError(f"{p} is a folder; give the files inside it")
        if not os.access(p, os.R_OK):
            raise BioGPTError(f"{p}: not readable")


def check_inputs_and_output(args: argparse.Namespace, fmt: str, other_formats: str) -> None:
    """Before a model is loaded: `-o -` only for JSONL, every input readable and (unless --input-format) in a
    known format, the output writable. Shared by the verbs that read documents (extract, embed)."""
    from biogpt.mining.readers import detect_format

    if args.output == "-" and fmt != "jsonl":
        raise BioGPTError(f"-o - writes JSONL to standard output; give a file name for {other_formats}")
    input_files(args.input)
    if args.input_format is None:
        for path in args.input:  # a file in no known format fails here, before the model is loaded
            detect_format(Path(path))
    writable_file(args.output, "-o")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BioGPTError(f"--device {device}: CUDA is not available on this machine; use --device cpu")


def device_arg(text: str) -> str:
    """--device of the inference verbs: cpu, cuda or cuda:N, checked when parsed (a usage error, exit 2, before
    a model is loaded or a server starts)."""
    index = text[5:] if text.startswith("cuda:") else "0"
    if text not in ("cpu", "cuda") and not (text.startswith("cuda:") and index.isascii() and index.isdigit()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text[:40]!r}")
    try:
        check_device(text)
    except BioGPTError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
    return text


def resolve_model(args: argparse.Namespace) -> None:
    """No --model: the embedded demo model, announced on the first line (it is a demo, not BioGPT's weights)."""
    from biogpt.api import DEMO, demo_path, is_demo

    if args.model is None:
        demo_path()  # one clear error where there is none
        args.model = DEMO
    if is_demo(args.model):
        print("using biogpt's embedded demo model: a small model for trying things out, not BioGPT's weights "
              "(see biogpt/demo/MODEL_CARD.md)", file=sys.stderr)  # fmt: skip


def load_for_inference(args: argparse.Namespace):
    """The model in the requested precision (--dtype, a form `biogpt.load` applies) and its tokenizer (from
    beside the weights or --vocab); --ema and --image-size go to the families that take them."""
    from biogpt.api import family_of, load

    resolve_model(args)
    options = {k: getattr(args, k) for k in ("ema", "image_size") if getattr(args, k, None)}
    model, tok = load(args.model, device=getattr(args, "device", "cpu"), form=args.dtype, vocab=args.vocab,
                      **options)  # fmt: skip
    if tok is None:
        raise BioGPTError(f"{args.model}: no vocabulary beside the weights; pass --vocab DIR")
    if getattr(args, "compile", False) and not family_of(model).encoder_decoder:
        from biogpt.generation import compile_decode

        compile_decode(model)  # raises GenerationError for the CPU kernel forms
    return model, tok


def add_model_options(p: argparse.ArgumentParser, biomedgpt: bool = False) -> None:
    """--model, --vocab, --dtype, --threads; `biomedgpt`: the options as a BiomedGPT-only verb takes them (no demo
    default, no int8), so that --help lists only what works."""
    if biomedgpt:
        p.add_argument("--model", help="a BiomedGPT checkpoint: fairseq .pt, OFA-port or converted directory")
    else:
        p.add_argument("--model", help="Hugging Face directory, fairseq checkpoint (.pt, or its folder), hub id, or "
                                       "demo (default: demo, the small model embedded in the package)")  # fmt: skip
    p.add_argument("--vocab", help="vocabulary folder, if none sits beside the weights")
    if biomedgpt:
        p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "auto"],
                       help="fp32 is exact; bf16 is faster and approximate; auto: bf16 where the CPU runs it "
                            "natively (default: %(default)s)")  # fmt: skip
    else:
        p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8", "auto"],
                       help="fp32 is exact; bf16 and int8 (int8 weights, CPU) are faster and approximate; auto: bf16 "
                            "where the CPU runs it natively; BiomedGPT: fp32, bf16 or auto "
                            "(default: %(default)s)")  # fmt: skip
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: PyTorch's, one per core)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu, cuda or cuda:N (default: %(default)s); on a GPU use --dtype bf16 (or fp32)")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="decode through one compiled static-shape step (torch.compile; CUDA graphs on a GPU); "
                        "fp32 and bf16 only")  # fmt: skip


class FamilyTasks(str):
    """A help text listing each model family's tasks (`attr`: "tasks" or "finetune_tasks"), read from the
    descriptors only when help is printed, so that building the parser does not import PyTorch."""

    def __new__(cls, lead: str, attr: str):
        self = super().__new__(cls, lead)
        self.attr = attr
        return self

    def __mod__(self, params) -> str:
        from biogpt.api import FAMILIES

        listed = "; ".join(f"{d.short or d.title}: {', '.join(getattr(d, self.attr))}" for d in FAMILIES.values()
                           if getattr(d, self.attr))  # fmt: skip
        return f"{str(self) % params} ({listed})"


def check_task(tasks: list[str], attr: str, verb: str) -> list:
    """The families that have every one of `tasks` (descriptor attribute `attr`); an unknown task is an error."""
    from biogpt.api import FAMILIES

    for task in tasks:
        if not any(task in getattr(d, attr) for d in FAMILIES.values()):
            known = sorted({t for d in FAMILIES.values() for t in getattr(d, attr)})
            raise BioGPTError(f"{verb}: unknown task {task[:40]!r}; choose from {', '.join(known)}")
    return [d for d in FAMILIES.values() if all(t in getattr(d, attr) for t in tasks)]


def deprecated(old: str, new: str, func):
    """An old verb's handler: one line on stderr naming the verb to use, then the new verb's own handler."""

    def run(args: argparse.Namespace) -> int:
        print(f"warning: `biogpt {old}` is deprecated; use `biogpt {new}` (the same arguments)", file=sys.stderr)
        return func(args)

    return run


def refuse_options(args: argparse.Namespace, options: dict, task: str) -> None:
    """Options of another kind of task (`options`: name -> the value meaning "not given"), given: one error
    naming the first."""
    for name, off in options.items():
        if getattr(args, name, off) != off:
            raise BioGPTError(f"--{name.replace('_', '-')} does not apply to {task}")
