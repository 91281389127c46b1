"""The original BioGPT fine-tuning recipes, as data (no heavy imports: the command line's help reads them).

From the original per-task scripts (examples/*/train.sh of microsoft/BioGPT): learning rate, warm-up updates,
and the number of epochs or updates. Every task also used Adam (0.9, 0.98), weight decay 0.01, inverse-sqrt
schedule from 1e-7, 1024 tokens per batch x 32 accumulation steps.
"""

RECIPES = {
    "bc5cdr": dict(lr=1e-5, warmup_updates=100, epochs=100),
    "ddi": dict(lr=1e-4, warmup_updates=500, epochs=100),
    "kd-dti": dict(lr=1e-5, warmup_updates=1000, epochs=30),
    "hoc": dict(lr=1e-5, warmup_updates=1000, max_updates=20000),
    "pubmedqa": dict(lr=1e-5, warmup_updates=100, epochs=100),
}


def describe(key: str) -> str:
    """'bc5cdr 1e-05, ddi 0.0001, ...' for one recipe field, tasks without it left out."""
    return ", ".join(f"{task} {r[key]}" for task, r in RECIPES.items() if key in r)
