"""The `biogpt` command: one subcommand per job, each a thin layer over the Python API.

Every bad input ends in one `error: ...` line on stderr and exit code 2 (usage and input errors alike);
Ctrl-C prints one line and exits 130, leaving any resumable state on disk as it was.
"""

from __future__ import annotations

import argparse
import sys

from biogpt.cli import biomedgpt, embed, finetune, mining, models, serve, tasks, text, training


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one `error:` line (exit 2) like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    """The installed package's version (its metadata: no import of the package's heavy modules)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("biogpt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="biogpt", description="BioGPT, exact and fast, without fairseq.")
    ap.add_argument("--version", action="version", version=f"biogpt {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    text.add_parsers(sub)
    models.add_parsers(sub)
    tasks.add_parsers(sub)
    training.add_parsers(sub)
    finetune.add_parsers(sub)
    mining.add_parsers(sub)
    embed.add_parsers(sub)
    serve.add_parsers(sub)
    biomedgpt.add_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    from biogpt.errors import BioGPTError

    try:
        return args.func(args)
    except BioGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `biogpt ... | head`
        return 0
    except OSError as e:  # a missing or unreadable input, an unwritable or full output
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except RecursionError:  # a JSON or XML input nested deeper than any parser reads
        print("error: an input is nested too deeply to read", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"error: input is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (what was committed on disk is kept; rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
