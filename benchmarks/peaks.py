"""This machine's limits, measured with the threads set: streaming bandwidth, and the matrix-product peak of each
CPU form at the prefill's shape. The benchmarks print their figures as fractions of these."""

from __future__ import annotations

import time

import torch


def bandwidth_gbs() -> float:
    """Bytes per second of one read pass over a 1 GiB fp32 tensor (best of 3), with the threads set."""
    x = torch.ones(2**28)
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def matmul_peaks(m: int = 512, k: int = 1024, n: int = 4096, rounds: int = 3) -> dict[str, float]:
    """GFLOP/s (2 m k n per product) of [m, k] x [k, n] in each form this CPU runs: fp32 (F.linear), bf16
    (oneDNN prepacked), int8 (PyTorch's dynamic quantized Linear) and AMX int8 (biogpt's kernel), best of
    `rounds`; a form the CPU cannot run is left out. The prefill's products are this shape (a BioGPT base fc1)."""
    from biogpt.backends.cpu.forms import AMXInt8Linear, Int8Linear, PackedBF16Linear, can_pack_bf16
    from biogpt.backends.cpu.kernels import KernelUnavailable

    torch.manual_seed(0)
    w, x = torch.randn(n, k) * 0.02, torch.randn(m, k)
    forms = {"fp32": (lambda v: torch.nn.functional.linear(v, w), x)}
    if can_pack_bf16():
        forms["bf16"] = (PackedBF16Linear(w, None), x.bfloat16())
    forms["int8"] = (Int8Linear(w, None), x)
    try:
        forms["AMX int8"] = (AMXInt8Linear(w, None), x)
    except KernelUnavailable:
        pass
    peaks = {}
    with torch.inference_mode():
        for name, (f, inp) in forms.items():
            f(inp)
            best = 1e9
            for _ in range(rounds):
                t = time.perf_counter()
                f(inp)
                best = min(best, time.perf_counter() - t)
            peaks[name] = 2 * m * k * n / best / 1e9
    return peaks
