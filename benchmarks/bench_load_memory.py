"""Peak memory of loading a GPT-2 family checkpoint (BioMedLM's width, fewer layers) from pytorch_model.bin.

    python benchmarks/bench_load_memory.py [--layers 2] [--dtype fp32] [--json]

Writes a random GPT2LMHeadModel state dict at BioMedLM's width (d 2560, 20 heads, FFN 10240, vocabulary 28896,
1024 positions) with `--layers` layers as pytorch_model.bin + config.json into a temporary folder, then, in a
fresh process, loads it with biogpt.load and runs one forward pass (which touches every weight). It prints the
weights' size in the chosen dtype, the process's resident memory before loading (imports done), its peak through
loading and through loading plus the forward pass, and each peak's growth over `before` as a multiple of the weights.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

D, HEADS, FFN, VOCAB, POSITIONS = 2560, 20, 10240, 28896, 1024


def write_checkpoint(d: Path, layers: int) -> int:
    """A random BioMedLM-width state dict in GPT2LMHeadModel's names and Conv1D layout; returns its bytes."""
    g = torch.Generator().manual_seed(0)
    sd = {"transformer.wte.weight": torch.randn(VOCAB, D, generator=g) * 0.02,
          "transformer.wpe.weight": torch.randn(POSITIONS, D, generator=g) * 0.01}  # fmt: skip
    for i in range(layers):
        p = f"transformer.h.{i}."
        for name, shape in (("attn.c_attn", (D, 3 * D)), ("attn.c_proj", (D, D)), ("mlp.c_fc", (D, FFN)),
                            ("mlp.c_proj", (FFN, D))):  # fmt: skip
            sd[p + name + ".weight"] = torch.randn(shape, generator=g) * 0.02
            sd[p + name + ".bias"] = torch.zeros(shape[1])
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = torch.ones(D), torch.zeros(D)
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = torch.ones(D), torch.zeros(D)
    torch.save(sd, d / "pytorch_model.bin")
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": VOCAB, "n_layer": layers,
              "n_embd": D, "n_head": HEADS, "n_inner": None, "n_positions": POSITIONS, "n_ctx": POSITIONS,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_by_inverse_layer_idx": True,
              "reorder_and_upcast_attn": False, "bos_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1}  # fmt: skip
    (d / "config.json").write_text(json.dumps(config))
    return sum(t.numel() * 4 for t in sd.values())


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(d: Path, dtype: str) -> dict:
    """In this (fresh) process: load, one forward pass, resident memory before and at the peak."""
    import biogpt
    import biogpt.checkpoints.gpt2  # noqa: F401  (the family's modules: imports are not loading)

    before = _rss_kib("VmRSS")
    model, _ = biogpt.load(d, dtype=dtype)
    loaded = _rss_kib("VmHWM")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.inference_mode():
        model(torch.arange(16)[None])
    # in fp32 the weights are still views of the file: the forward pass reads (so maps in) every page of it
    peak = _rss_kib("VmHWM")
    return {"before_mib": before / 1024, "loaded_peak_mib": loaded / 1024, "peak_mib": peak / 1024,
            "weights_mib": weights / 2**20, "load_ratio": (loaded - before) * 1024 / weights,
            "ratio": (peak - before) * 1024 / weights}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # the child process: the folder to load
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.dtype)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        size = write_checkpoint(Path(tmp), args.layers)
        child = [sys.executable, __file__, "--measure", tmp, "--dtype", args.dtype]
        result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    result["file_mib"] = size / 2**20
    if args.json:
        print(json.dumps(result))
        return
    print(f"BioMedLM width, {args.layers} layers, pytorch_model.bin {result['file_mib']:.0f} MiB (fp32), loaded as "
          f"{args.dtype}: weights {result['weights_mib']:.0f} MiB; resident before {result['before_mib']:.0f} MiB, "
          f"peak through loading {result['loaded_peak_mib']:.0f} MiB ({result['load_ratio']:.2f}x the weights), "
          f"through loading and one forward pass {result['peak_mib']:.0f} MiB ({result['ratio']:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
