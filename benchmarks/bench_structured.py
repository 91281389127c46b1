"""Per-token cost of structured outputs against an unconstrained decoding step, side by side, on the demo model.

    python benchmarks/bench_structured.py [--threads 2] [--repeats 3] [--new-tokens 200]

Each case generates greedily with offline `generate` (the same constraint objects `biogpt serve` builds:
`choice_constraint`, or `compile_regex` + `RegexConstraint`), then without a constraint for exactly as many
tokens (`min_new_tokens` = `max_new_tokens`), so that both columns carry the same prefill; the two alternate.
`.*` and the pathological `(.?){100}x3` run with `min_new_tokens` so they last `--new-tokens` / 60 tokens.
Printed per case: tokens; ms per token unconstrained and constrained (best of `--repeats`: a pattern repeated,
as clients do, finds its compiled DFA and token masks cached); the added ms per token and that as a multiple
of an unconstrained step (the target is <= 2x); the time inside `allowed()` per step for the first request of
the pattern (cold: compile and every DFA state's token mask new) and the best of the repeats (warm); the
compile time (cold).
"""

import argparse
import time

import torch

import biogpt
from biogpt.generation import generate
from biogpt.generation.structured import RegexConstraint, TokenIndex, choice_constraint, compile_regex


class Timed:
    """A constraint that adds up the time spent in its allowed()."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def allowed(self, generated):
        t = time.perf_counter()
        out = self.inner.allowed(generated)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def run(model, ids, n: int, minimum: int, constraint=None) -> tuple[float, int]:
    """(seconds, new tokens) of one greedy generation."""
    t = time.perf_counter()
    out = generate(model, [ids], max_new_tokens=n, min_new_tokens=minimum, constraints=constraint)
    seconds = time.perf_counter() - t
    new = out.sequences[0, len(ids) :].tolist()
    return seconds, (new.index(2) + 1 if 2 in new else len(new))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = biogpt.load("demo")
    index = TokenIndex(tok)
    N = args.new_tokens
    cases = [  # name, prompt, factory of a fresh constraint (and its compile seconds), max tokens, min tokens
        ("choice yes/no/maybe", "Does aspirin help?", "choice", ["yes", "no", "maybe"], 8, 0),
        ("regex [0-9]+ (mg|ml)", "The dose was", "regex", r"[0-9]+ (mg|ml)", 16, 0),
        ("regex date \\d{4}-\\d{2}-\\d{2}", "The study began on", "regex", r"\d{4}-\d{2}-\d{2}", 16, 0),
        (f"regex .* ({N} tokens)", "Aspirin is", "regex", r".*", N, N),
        ("regex (.?){100}x3 (60 tokens)", "Aspirin is", "regex", r"(.?){100}(.?){100}(.?){100}", 60, 60),
    ]
    print(f"demo model, {args.threads} threads, greedy, batch 1; best of {args.repeats}")
    print(f"{'case':34} {'tokens':>6} {'free ms/tok':>11} {'constr ms/tok':>13} {'added':>7} {'x step':>7} "
          f"{'allowed ms cold':>15} {'warm':>6} {'compile ms':>10}")  # fmt: skip
    for name, prompt, kind, spec, n, minimum in cases:
        ids = tok.encode(prompt)
        index.compiled.clear()  # the first request of the pattern compiles it
        best, free, allowed, compile_s, tokens = float("inf"), float("inf"), [], None, 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            if kind == "choice":
                inner = choice_constraint([tok.encode(c, add_eos_prefix=False) for c in spec])
            else:
                inner = RegexConstraint(compile_regex(spec, index), tok)
            compile_s = time.perf_counter() - t if compile_s is None else compile_s
            timed = Timed(inner)
            seconds, tokens = run(model, ids, n, minimum, timed)
            best = min(best, seconds / tokens)
            allowed.append(timed.seconds / max(1, timed.calls))
            free = min(free, run(model, ids, tokens, tokens)[0] / tokens)
        added = best - free
        print(f"{name:34} {tokens:6d} {free * 1e3:11.2f} {best * 1e3:13.2f} {added * 1e3:7.2f} {added / free:7.2f} "
              f"{allowed[0] * 1e3:15.2f} {min(allowed) * 1e3:6.2f} {compile_s * 1e3:10.1f}")  # fmt: skip

if __name__ == "__main__":
    main()
