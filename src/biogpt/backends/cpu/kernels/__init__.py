"""Native CPU kernels, compiled on first use with the system C compiler and cached.

- `decode.c`: the int8 Linear and the decode attention over a bf16 KV cache of
  `biogpt.backends.cpu.forms.quantize_int8` on x86 CPUs with AMX (Sapphire Rapids and later). PyTorch has no CPU
  kernels that stream int8 weights or a KV cache at memory speed for a few rows; these do
  (benchmarks/bench_generate.py). Elsewhere the int8 form uses PyTorch's own quantized Linear and attention.

The shared library is built once per source version into `$BIOGPT_CACHE_DIR/kernels` (default
`~/.cache/biogpt/kernels`), written under a temporary name and renamed, so concurrent first uses never load a
half-written file. No compiler, a non-AMX CPU, or a kernel Linux does not grant the tile state to: the kernel
is unavailable (`KernelUnavailable` says why) and callers fall back.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

_SOURCE = Path(__file__).with_name("decode.c")
_FLAGS = [
    "-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp",
    "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mamx-tile", "-mamx-int8",
    "-DPREFETCH=16384", "-DPREFETCH_HINT=_MM_HINT_T1",  # into L2, 16 KiB ahead of the weight stream (measured)
]  # fmt: skip
_CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile", "amx_int8"}


class KernelUnavailable(RuntimeError):
    """The native kernel cannot run here; the message says why."""


def cache_dir() -> Path:
    if os.environ.get("BIOGPT_CACHE_DIR"):
        return Path(os.environ["BIOGPT_CACHE_DIR"]) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "biogpt" / "kernels"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _build(source: Path) -> Path:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise KernelUnavailable(f"no C compiler ({cc}) to build {source.name}; install gcc or set CC")
    key = hashlib.sha256(source.read_bytes() + " ".join([cc, *_FLAGS]).encode()).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *_FLAGS, str(source), "-o", tmp], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise KernelUnavailable(f"{cc} could not build {source.name}: {r.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in out.parent.glob(f"{source.stem}-*.so"):  # builds of earlier versions (a process using one keeps it)
        if old != out:
            old.unlink(missing_ok=True)
    return out


@functools.cache
def decode_kernels() -> ctypes.CDLL:
    """decode.c built and loaded (on first call): `biogpt_int8_linear` and `biogpt_decode_attention`."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise KernelUnavailable("the AMX kernels run on x86-64 Linux only")
    missing = _CPU_FLAGS - _cpu_flags()
    if missing:
        needs = "AMX int8 needs Sapphire Rapids or later"
        raise KernelUnavailable(f"this CPU lacks {', '.join(sorted(missing))} ({needs})")
    import torch  # noqa: F401  (loaded first, so the kernels share PyTorch's OpenMP runtime and thread pool)

    lib = ctypes.CDLL(str(_build(_SOURCE)))
    if lib.biogpt_amx_init() != 0:
        raise KernelUnavailable("Linux did not grant this process the AMX tile state (arch_prctl)")
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    # x, M, K, w, w_scale, bias, gelu, N, y, work, threads
    lib.biogpt_int8_linear.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i32, i64, ptr, ptr, i32]
    # qkv, B, H, D, k cache, v cache, Smax, s, valid, out, threads
    lib.biogpt_decode_attention.argtypes = [ptr, i64, i64, i64, ptr, ptr, i64, i64, ptr, ptr, i32]
    for f in (lib.biogpt_int8_linear, lib.biogpt_decode_attention):
        f.restype = None
    return lib


def available() -> bool:
    try:
        decode_kernels()
    except KernelUnavailable:
        return False
    return True
