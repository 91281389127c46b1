"""Load on `biogpt serve`, side by side with (a) offline batched `generate` on the same prompts (the ceiling) and
(b) a minimal FastAPI server over `transformers.generate`, one request at a time (what users build today).

    python benchmarks/bench_serve.py [--model demo|random-small|random-base|PATH] [--dtype fp32|bf16|int8]
                                     [--threads 1] [--clients 1 4 16 32] [--requests-per-client 4] [--rounds 3]
                                     [--minimal-requests 16] [--prompt-lengths 8 24 64 160]
                                     [--output-lengths 16 32 64 96] [--soak SECONDS]

Loopback only; the servers are subprocesses of this script. Model: the demo model (default); `random-base`, a
BioGPT base-size model (24 layers, width 1024, BioGPT's 42,384-word vocabulary) with random weights;
`random-small` (6 layers, width 512, the same vocabulary); or a Hugging Face directory. A random model is
written once as a Hugging Face directory (`save_hf`) under the temporary folder and reused by later runs.
`--dtype` is the precision of biogpt serve and of the offline ceiling (a), loaded the same way (`biogpt serve
--dtype`); the minimal transformers server (b) always runs fp32, as users run it. Workload: prompts of mixed
lengths (8 to 160 tokens) and outputs of mixed lengths (16 to 96 tokens, end-of-text ignored on every side so
every request generates exactly what it asked for). Each client sends its requests one after another (streaming, so the
time to first token is seen). Printed per concurrency: output tokens/s, time to first token and time per
output token (p50/p99), errors by HTTP status; then, in alternating rounds on the same prompts, (a), biogpt
serve and (b) at 16 clients, with the median ratios; and the server's peak memory (VmHWM). `--soak S` then
runs 16 clients for S seconds and prints the server's resident memory over time (flat: no leak). The clients
run in this process and share the CPU with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from biogpt.api import demo_path
from biogpt.generation import generate

PROMPT_LENGTHS = (8, 24, 64, 160)
MODEL: dict = {}  # the model for offline generate, loaded once
OUTPUT_LENGTHS = (16, 32, 64, 96)
VOCAB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vocab" / "biogpt"  # dict.txt + bpecodes
RANDOM = {"random-base": {}, "random-small": {"n_layer": 6, "d_model": 512, "n_head": 8, "d_ffn": 2048}}


def workload(n: int, vocab: int, seed: int = 0, prompt_lengths=PROMPT_LENGTHS, output_lengths=OUTPUT_LENGTHS):
    """n (prompt ids, output length) pairs: random tokens after </s>, lengths drawn from the mixes above."""
    rng = random.Random(seed)
    return [([2] + [rng.randrange(4, vocab) for _ in range(rng.choice(prompt_lengths) - 1)], rng.choice(output_lengths))
            for _ in range(n)]  # fmt: skip


def model_dir(name: str) -> str:
    """The model as a path both biogpt and transformers load: the demo's, a random one written once under the
    temporary folder (BioGPTConfig.base with the overrides in RANDOM, BioGPT's real vocabulary), or `name`."""
    from biogpt.api import is_demo

    if is_demo(name):
        return str(demo_path())
    if name not in RANDOM:
        return name
    d = Path(tempfile.gettempdir()) / f"biogpt-bench-{name}"
    if not (d / "config.json").exists():
        from biogpt.checkpoints import save_hf
        from biogpt.models.biogpt import BioGPT, BioGPTConfig
        from biogpt.text.tokenizer import Tokenizer

        if not (VOCAB_DIR / "dict.txt").exists():
            raise SystemExit(f"--model {name}: BioGPT's vocabulary is not at {VOCAB_DIR}")
        tok = Tokenizer.from_pretrained(VOCAB_DIR)
        cfg = BioGPTConfig.base(**RANDOM[name])
        model = BioGPT(cfg)
        model.init_weights(seed=0)
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        save_hf(model.eval(), tok, tmp)
        tmp.replace(d)
        print(f"wrote {name} ({model.num_parameters() / 1e6:.0f}M parameters, random weights) to {d}", flush=True)
    return str(d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a base-size model takes a while to load on a busy machine
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {' '.join(cmd)}")
        time.sleep(0.2)


def memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --- clients ----------------------------------------------------------------------------------------------------


async def one_openai(http: httpx.AsyncClient, ids: list[int], n: int) -> dict:
    body = {"model": "demo", "prompt": ids, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    first, status, frames = None, 200, 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            if "error" in msg:
                status = msg["error"]["code"]
                break
            if msg["choices"]:  # a frame per token (its text may be empty: a special token)
                first = first or time.perf_counter()
                frames += 1
    end = time.perf_counter()
    if status == 200 and frames != n:  # every side must generate exactly what was asked
        status = f"{frames} of {n} tokens"
    return {"status": status, "ttft": (first or end) - t0, "end": end, "first": first or end, "tokens": n}


async def one_minimal(http: httpx.AsyncClient, ids: list[int], n: int) -> dict:
    t0 = time.perf_counter()
    r = await http.post("/generate", json={"ids": ids, "max_new_tokens": n})
    end = time.perf_counter()
    if r.status_code != 200:
        return {"status": r.status_code}
    got = len(r.json()["ids"])
    return {"status": 200 if got == n else f"{got} of {n} tokens", "ttft": end - t0, "end": end, "first": None,
            "tokens": got}  # fmt: skip


async def drive(port: int, clients: int, jobs: list[tuple[list[int], int]], one, until: float | None = None):
    """`clients` workers take jobs in turn (cycling through them until `until`, when given)."""
    results: list[dict] = []
    it = iter(range(10**9))

    async def worker(http):
        while True:
            i = next(it)
            if until is None and i >= len(jobs):
                return
            if until is not None and time.perf_counter() > until:
                return
            ids, n = jobs[i % len(jobs)]
            results.append(await one(http, ids, n))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return results, wall


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    tpot = [(r["end"] - r["first"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1 and r["first"] is not None]
    return {"tok_s": sum(r["tokens"] for r in ok) / wall, "ttft": [r["ttft"] for r in ok], "tpot": tpot,
            "errors": dict(Counter(r["status"] for r in results if r["status"] != 200)), "n": len(results)}  # fmt: skip


def line(name: str, s: dict) -> str:
    ms = 1000.0
    return (f"{name:<34}{s['n']:>5}{s['tok_s']:>10.1f}{pct(s['ttft'], .5) * ms:>10.1f}{pct(s['ttft'], .99) * ms:>10.1f}"
            f"{pct(s['tpot'], .5) * ms:>9.2f}{pct(s['tpot'], .99) * ms:>9.2f}   {s['errors'] or '-'}")  # fmt: skip


# --- (a) offline ------------------------------------------------------------------------------------------------


def offline(jobs: list[tuple[list[int], int]], batch: int, path: str, dtype: str, device: str = "cpu") -> float:
    """Output tokens/s of offline generate in batches of `batch` (each batch runs to its longest output; only
    the requested tokens count), on the model in the form `biogpt serve --dtype` loads."""
    if "model" not in MODEL:
        from biogpt.cli.args import load_for_inference

        MODEL["model"] = load_for_inference(argparse.Namespace(model=path, dtype=dtype, vocab=None, device=device))[0]
    model = MODEL["model"]
    t0 = time.perf_counter()
    useful = 0
    for b in range(0, len(jobs), batch):
        group = jobs[b : b + batch]
        generate(model, [p for p, _ in group], max_new_tokens=max(n for _, n in group), eos_token_id=-1)
        useful += sum(n for _, n in group)
    return useful / (time.perf_counter() - t0)


# --- (b) the minimal transformers server ----------------------------------------------------------------------


def minimal_server(port: int, path: str) -> None:
    """What people deploy today: one route over transformers generate, one request at a time."""
    import threading

    import uvicorn
    from fastapi import FastAPI
    from transformers import BioGptForCausalLM

    hf = BioGptForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()  # fp32, as users run it
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/generate")
    def gen(body: dict):
        ids = torch.tensor([body["ids"]])
        n = body["max_new_tokens"]
        with lock, torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=1)
        return {"ids": out[0, ids.shape[1] :].tolist()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo", help="demo (default), random-small, random-base, or a Hugging Face "
                                                    "directory that transformers loads too")  # fmt: skip
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8"],
                    help="biogpt serve's and offline generate's precision (the transformers server: fp32)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="threads of each server and of offline generate")
    ap.add_argument("--device", default="cpu", help="biogpt serve's and offline generate's device (cpu, cuda)")
    ap.add_argument("--compile", action="store_true", help="biogpt serve --compile (the compiled decoding step)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a), biogpt serve and (b)")
    ap.add_argument("--minimal-requests", type=int, default=16, help="requests sent to the minimal server per round")
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of 16 clients after the runs (0: none)")
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--prompt-lengths", type=int, nargs="+", default=list(PROMPT_LENGTHS), help="prompt token mix")
    ap.add_argument("--output-lengths", type=int, nargs="+", default=list(OUTPUT_LENGTHS), help="output token mix")
    ap.add_argument("--json", help="write the ratios at 16 clients (medians over the rounds) to this file")
    ap.add_argument("--serve-minimal", type=int, help=argparse.SUPPRESS)  # internal: run server (b) on this port
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.serve_minimal:
        minimal_server(args.serve_minimal, args.model)
        return
    path = model_dir(args.model)
    with open(Path(path) / "config.json") as f:
        hf_cfg = json.load(f)
    # prompt tokens drawn from the words (learned prompt tokens excluded)
    vocab = hf_cfg["vocab_size"] - hf_cfg.get("biogpt_num_prompt_tokens", 0)  # the demo's: 8232
    shape = f"{hf_cfg['num_hidden_layers']} layers, width {hf_cfg['hidden_size']}, vocabulary {hf_cfg['vocab_size']}"
    lens = dict(prompt_lengths=args.prompt_lengths, output_lengths=args.output_lengths)
    print(f"biogpt serve load test: model {args.model} ({shape}), biogpt serve and offline generate {args.dtype}, "
          f"transformers server fp32; {args.threads} thread(s) per server and for offline generate, "
          f"{os.cpu_count()} CPUs shared with the clients (this process); prompts {args.prompt_lengths} tokens, "
          f"outputs {args.output_lengths} tokens")  # fmt: skip
    head = f"{'run':<34}{'reqs':>5}{'tok/s':>10}{'TTFT p50':>10}{'p99 ms':>10}{'TPOT p50':>9}{'p99 ms':>9}   errors"

    port, mport = free_port(), free_port()
    cmd = [sys.executable, "-m", "biogpt.cli", "serve", "--port", str(port), "--threads", str(args.threads),
           "--max-concurrency", "32", "--max-queue", str(args.max_queue), "--log-level", "warning",
           "--dtype", args.dtype, "--device", args.device, *(["--compile"] if args.compile else [])]  # fmt: skip
    if args.model != "demo":  # the id the clients send; a batch cache sized to the workload
        cmd += ["--model", path, "--served-model-name", "demo",
                "--max-model-len", str(max(args.prompt_lengths) + max(args.output_lengths) + 8)]  # fmt: skip
    server = start(cmd, port, args.threads)
    mini = start([sys.executable, __file__, "--serve-minimal", str(mport), "--threads", str(args.threads),
                  "--model", path], mport, args.threads)  # fmt: skip
    soak = []
    per_clients = {}
    try:
        print(head)
        for c in args.clients:
            jobs = workload(c * args.requests_per_client, vocab, seed=c, **lens)
            results, wall = asyncio.run(drive(port, c, jobs, one_openai))
            per_clients[c] = summary(results, wall)["tok_s"]
            print(line(f"biogpt serve, {c} clients", summary(results, wall)), flush=True)

        # the ratios at 16 clients: the three measured in turn, several rounds, on the same prompts
        jobs16 = workload(16 * args.requests_per_client, vocab, seed=16, **lens)
        ratios = []
        for r in range(args.rounds):
            ceiling = offline(jobs16, 16, path, args.dtype, args.device)
            results, wall = asyncio.run(drive(port, 16, jobs16, one_openai))
            ours = summary(results, wall)
            results, wall = asyncio.run(drive(mport, 16, jobs16[: args.minimal_requests], one_minimal))
            minimal = summary(results, wall)
            print(f"{f'(a) offline generate, batch 16 #{r + 1}':<34}{len(jobs16):>5}{ceiling:>10.1f}")
            print(line(f"biogpt serve, 16 clients #{r + 1}", ours))
            print(line(f"(b) transformers server, 16 cl #{r + 1}", minimal), flush=True)
            ratios.append((ours["tok_s"] / ceiling, ours["tok_s"] / minimal["tok_s"]))
        peak = memory_kib(server.pid, "VmHWM")

        if args.soak > 0:
            soak_jobs = workload(256, vocab, seed=99, **lens)
            t_end = time.perf_counter() + args.soak
            soak_results: list[dict] = []

            async def soak_run():
                task = asyncio.create_task(drive(port, 16, soak_jobs, one_openai, until=t_end))
                while not task.done():
                    soak.append((time.perf_counter(), memory_kib(server.pid, "VmRSS")))
                    await asyncio.sleep(max(1.0, args.soak / 30))
                soak_results.extend((await task)[0])

            asyncio.run(soak_run())
            print(line(f"soak, 16 clients, {args.soak:g}s", summary(soak_results, args.soak)))
            peak = memory_kib(server.pid, "VmHWM")
    finally:
        for proc in (server, mini):
            proc.terminate()
            proc.wait(60)

    each = ", ".join(f"{a:.2f}x / {b:.1f}x" for a, b in ratios)
    a_med = statistics.median(a for a, _ in ratios)
    b_med = statistics.median(b for _, b in ratios)
    print(f"at 16 clients, median of {len(ratios)} rounds: {a_med:.2f}x offline batched generate {args.dtype} "
          f"(target >= 0.8x), {b_med:.1f}x the minimal transformers server fp32 (target >= 8x); "
          f"rounds: {each}")  # fmt: skip
    print(f"server peak memory (VmHWM): {peak / 1024:.0f} MiB")
    if args.json:
        figures = {"vs_offline_16": a_med, "vs_transformers_server_16": b_med, "peak_mib": peak / 1024,
                   "tokens_s_by_clients": per_clients}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if soak:
        rss = [kib / 1024 for _, kib in soak]
        third = max(1, len(rss) // 3)
        print(f"soak resident memory: first third max {max(rss[:third]):.0f} MiB, last third max "
              f"{max(rss[-third:]):.0f} MiB, range {min(rss):.0f}..{max(rss):.0f} MiB, {len(rss)} samples")  # fmt: skip
    print("TTFT: request sent to first streamed token; TPOT: (last - first token time) / (tokens - 1); the minimal "
          "server does not stream (its TTFT is the whole request)")  # fmt: skip


if __name__ == "__main__":
    main()
