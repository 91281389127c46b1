"""Speed regression guard: the generation, extraction and serving benchmarks, briefly, against a committed table.

    python benchmarks/check_speed.py [--only generate,extract,serve] [--tolerance 0.15]
    python benchmarks/check_speed.py --update      (re-measure and write benchmarks/baseline.json)

Every figure it compares is relative to something measured in the same run on the same machine, so that it
carries from one machine to another better than a raw tokens/s would:
- generation (bench_generate.py, base config, int8 and bf16, greedy at batch 1 and 16): tokens/s over
  transformers fp32 and as a fraction of the memory-bandwidth limit the script measures;
- extraction (bench_extract.py, 16 BC5CDR abstracts, int8): documents/s over transformers' pipeline;
- serving (bench_serve.py, random-small, int8, 16 clients): biogpt serve over offline batched generate and over
  a minimal transformers server.
It fails (exit 1) when any figure falls more than --tolerance (15%) below benchmarks/baseline.json, listing every
figure beside its baseline. Timings are not tests: this stays out of the test suite; run it on a quiet machine
before a change to models/, generation/, backends/ or serve/ is submitted, and refresh the table (--update) only
together with the change that moved the figures, saying why.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baseline.json"

# name -> (script and its brief arguments, figures read from its --json output: key -> path in it)
RUNS = {
    "generate": (
        ["bench_generate.py", "--modes", "bf16,int8", "--cases", "b1,b16", "--new-tokens", "32", "--rounds", "2"],
        {f"generate {m} {c} {f}": ("cases", case, m, f)
         for m in ("bf16", "int8") for c, case in (("b1", "greedy, batch 1"), ("b16", "greedy, batch 16"))
         for f in ("vs_transformers", "of_limit")},
    ),  # fmt: skip
    "extract": (
        ["bench_extract.py", "--docs", "16", "--new-tokens", "16", "--modes", "int8"],
        {"extract int8 vs_transformers": ("modes", "int8", "vs_transformers")},
    ),
    "serve": (
        ["bench_serve.py", "--model", "random-small", "--dtype", "int8", "--clients", "16", "--rounds", "1",
         "--requests-per-client", "2", "--minimal-requests", "8"],
        {"serve int8 vs_offline_16": ("vs_offline_16",), "serve int8 vs_transformers_server_16":
         ("vs_transformers_server_16",)},
    ),  # fmt: skip
}


def measure(name: str, threads: int) -> dict[str, float]:
    """Run one benchmark briefly (its output shown as it goes) and return its figures by name."""
    script, keys = RUNS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, str(HERE / script[0]), *script[1:], "--threads", str(threads), "--json", str(out)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
        data = json.loads(out.read_text())
    figures = {}
    for key, path in keys.items():
        value = data
        for part in path:
            value = value[part]
        figures[key] = float(value)
    return figures


def compare(measured: dict[str, float], baseline: dict[str, float], tolerance: float) -> list[str]:
    """Print each figure beside its baseline; return the names that fell more than `tolerance` below it."""
    failed = []
    print(f"\n{'figure':<44}{'baseline':>10}{'now':>10}{'change':>9}")
    for key, now in measured.items():
        base = baseline.get(key)
        if base is None:
            print(f"{key:<44}{'-':>10}{now:>10.3f}   (no baseline)")
            continue
        change = now / base - 1
        flag = "  FAIL" if change < -tolerance else ""
        print(f"{key:<44}{base:>10.3f}{now:>10.3f}{change:>+9.0%}{flag}")
        if flag:
            failed.append(key)
    return failed


def _machine() -> str:
    """The CPU's model name and core count, recorded beside a baseline."""
    import os

    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(RUNS), help=f"of {', '.join(RUNS)}")
    ap.add_argument("--threads", type=int, help="threads of every benchmark (default: the baseline's, else 2)")
    ap.add_argument("--tolerance", type=float, default=0.15, help="largest fall allowed, as a fraction")
    ap.add_argument("--update", action="store_true", help="write the figures measured as the new baseline")
    ap.add_argument("--note", help="with --update: where and how the baseline was measured (kept in the table)")
    args = ap.parse_args()
    names = args.only.split(",")
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {', '.join(unknown)} (of {', '.join(RUNS)})")
    table = json.loads(BASELINE.read_text()) if BASELINE.exists() else {"figures": {}}
    threads = args.threads or table.get("threads", 2)
    if not args.update and threads != table.get("threads", threads):
        raise SystemExit(f"error: the baseline was measured with {table['threads']} threads, not {threads}")
    measured: dict[str, float] = {}
    for name in names:
        measured.update(measure(name, threads))
    if args.update:
        table["figures"].update(measured)
        table["threads"] = threads
        table["machine"] = _machine()
        if args.note:
            table["note"] = args.note
        BASELINE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(measured)} figures to {BASELINE}")
        return
    failed = compare(measured, table["figures"], args.tolerance)
    if failed:
        raise SystemExit(f"{len(failed)} figure(s) fell more than {args.tolerance:.0%} below the baseline: "
                         + ", ".join(failed))  # fmt: skip
    print(f"every figure within {args.tolerance:.0%} of the baseline (or above it)")


if __name__ == "__main__":
    main()
