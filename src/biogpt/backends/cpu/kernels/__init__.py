"""Native CPU kernels, compiled on first use with the system C compiler and cached.

- `decode.c`: the int8 Linear and the decode attention over a bf16 KV cache of
  `biogpt.backends.cpu.forms.quantize_int8`. The decode attention runs on x86 CPUs with AVX512 and its BF16
  conversions (Cooper Lake, Zen 4 and later); the int8 Linear also needs AMX (Sapphire Rapids and later). PyTorch
  has no CPU kernels that stream int8 weights or a KV cache at memory speed for a few rows; these do
  (benchmarks/bench_generate.py, bench_extract.py). Elsewhere the int8 form uses PyTorch's own quantized Linear
  and attention.
  `biogpt.backends.cpu.forms.quantize_int8_reference` is the same arithmetic in PyTorch ops, on any machine.

The cache: the shared library is built once per source version (the name `decode-<key>.so`, key from the source,
the compiler's name and the flags) into `$BIOGPT_CACHE_DIR/kernels` (default `~/.cache/biogpt/kernels`).
Loading a library runs its code, so only a library this user built is loaded:
- the directory is created with mode 0o700 and used only while it is owned by this user and not writable by
  group or others; it is opened once and everything after goes through that descriptor, so renaming a parent
  directory afterwards changes nothing;
- the library and the record of its SHA-256 beside it (`decode-<key>.so.sha256`, written with the build) must be
  regular files (not links) owned by this user and not group- or other-writable, and the library's bytes must
  hash to the record. A library without its record (a planted file, or a build interrupted between the two
  renames) is rebuilt over; any other failed check refuses the cache with the reason, and nothing is loaded;
- one exclusive `flock` on `kernels/.lock` is held from the check for a build through building, verifying and
  `dlopen`: concurrent first uses build once, the others wait and load that build, and no file can change
  between its verification and its loading (only this user can write the directory, and every biogpt process
  takes the lock). Builds of other versions (another source, compiler or flags) are removed by a new build
  under the same lock: a process has either loaded them already (a mapped library survives its unlink) or has
  not yet verified them and will rebuild. Processes alternating between two `CC` values therefore rebuild.
- the compiler writes into a private temporary directory; the bytes it wrote are hashed and written into the
  cache under a temporary name, then renamed into place (readers never see a partial file).

Failures: `KernelUnavailable` when the platform or CPU cannot run the kernels at all (callers fall back
silently); its subclass `KernelBuildError` when the CPU could but building or loading failed: no compiler, a
compiler error or timeout, an `OSError`, a refused cache (callers fall back and say why).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import hmac
import os
import platform
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

_SOURCE = Path(__file__).with_name("decode.c")
_FLAGS = [
    "-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp",
    "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mamx-tile", "-mamx-int8",
    "-DPREFETCH=16384", "-DPREFETCH_HINT=_MM_HINT_T1",  # into L2, 16 KiB ahead of the weight stream (measured)
]  # fmt: skip
_CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}  # what the decode attention runs on
_AMX_FLAGS = {"amx_tile", "amx_int8"}  # what the int8 Linear also needs
_LOCK_NAME = ".lock"
_RECORD_SUFFIX = ".sha256"
BUILD_TIMEOUT_S = 300.0  # a build takes a few seconds; a hung compiler must not hang the caller


class KernelUnavailable(RuntimeError):
    """The native kernels cannot run on this machine (platform or CPU); the message says why."""


class KernelBuildError(KernelUnavailable):
    """This CPU could run the native kernels, but building or loading them failed; the message says why."""


def cache_dir() -> Path:
    """`$BIOGPT_CACHE_DIR/kernels`, else `biogpt/kernels` in `$XDG_CACHE_HOME` or `~/.cache`."""
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


def _unsupported() -> str | None:
    """Why this machine cannot run the kernels at all, or None where it can (tests replace this check)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "the native kernels run on x86-64 Linux only"
    missing = _CPU_FLAGS - _cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(sorted(missing))} (AVX512 with BF16: Cooper Lake, Zen 4 or later)"
    return None


def unsupported() -> str | None:
    """Why this machine cannot run the native kernels at all (not even the decode attention), or None."""
    return _unsupported()


def missing_amx() -> str | None:
    """Why this CPU cannot run the AMX int8 Linear (it may still run the decode attention), or None."""
    missing = _AMX_FLAGS - _cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(sorted(missing))} (AMX int8 needs Sapphire Rapids or later)"
    return None


def _uid() -> int:
    return os.geteuid()


def _library_name(source: Path, cc: str) -> str:
    """The cached library's file name: a new source, compiler or flag set gets a new one."""
    key = hashlib.sha256(source.read_bytes() + " ".join([cc, *_FLAGS]).encode()).hexdigest()[:16]
    return f"{source.stem}-{key}.so"


def _check_private(st: os.stat_result, path: Path, kind: str) -> None:
    """Refuse `path` unless it is a `kind` ("directory" or "file") owned by this user that only this user can
    write: anyone else who could write it could put their code into this process."""
    is_kind = stat.S_ISDIR(st.st_mode) if kind == "directory" else stat.S_ISREG(st.st_mode)
    if not is_kind:
        raise KernelBuildError(f"{path} is not a regular {kind}; refusing the kernel cache")
    if st.st_uid != _uid():
        raise KernelBuildError(
            f"{path} is owned by uid {st.st_uid}, not by this user (uid {_uid()}); refusing to load kernels from it "
            "(remove it, or set BIOGPT_CACHE_DIR to a directory of your own)"
        )
    if st.st_mode & 0o022:
        raise KernelBuildError(
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):#o}); refusing to load kernels "
            "from it (remove it: biogpt recreates the cache with mode 0o700)"
        )


def _open_private(dfd: int, name: str, directory: Path) -> int:
    """`name` in the directory `dfd`, opened for reading after the checks of `_check_private`."""
    try:
        # O_NOFOLLOW: a link is refused, not followed; O_NONBLOCK: a planted FIFO cannot block the open
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KernelBuildError(f"{directory / name} is a symbolic link; refusing the kernel cache") from e
        raise
    try:
        _check_private(os.fstat(fd), directory / name, "file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _verify(dfd: int, name: str, directory: Path) -> None:
    """Check the library `name` and its record; raise KernelBuildError unless this user built it as it is."""
    fd = _open_private(dfd, name, directory)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    fd = _open_private(dfd, name + _RECORD_SUFFIX, directory)
    with os.fdopen(fd, "rb") as f:
        recorded = f.read(256).strip()  # bytes: a damaged record compares unequal instead of failing to decode
    if not hmac.compare_digest(digest.hexdigest().encode(), recorded):
        shown = recorded[:16].decode("ascii", "replace")
        raise KernelBuildError(
            f"{directory / name} does not match the SHA-256 recorded when it was built (recorded {shown!r}, "
            f"found {digest.hexdigest()[:16]}); it was not loaded (remove it to rebuild)"
        )


def _write_private(dfd: int, name: str, data: bytes, mode: int) -> None:
    """Write `data` as `name` in the directory `dfd`: a fresh temporary file (never an existing one), synced
    before the rename so that a crash cannot leave a truncated file under the final name."""
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        raise


def _compile(source: Path, compiler: str, cc: str) -> bytes:
    """The shared library's bytes, built by `compiler` in a private (0o700) temporary directory."""
    with tempfile.TemporaryDirectory(prefix="biogpt-kernel-") as tmp:
        out = Path(tmp) / "out.so"
        try:
            # a session of its own, so that a timeout ends the compiler's children (cc1, as, ld) too
            proc = subprocess.Popen([compiler, *_FLAGS, str(source), "-o", str(out)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                    start_new_session=True)  # fmt: skip
        except OSError as e:
            raise KernelBuildError(f"could not run the C compiler {cc}: {e.strerror or e}") from e
        try:
            _, err = proc.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            raise KernelBuildError(f"{cc} took longer than {BUILD_TIMEOUT_S:g} s to build {source.name}") from e
        if proc.returncode != 0:
            raise KernelBuildError(f"{cc} could not build {source.name}: {err.strip()[-500:]}")
        try:
            return out.read_bytes()  # nobody else can reach this directory: no checks needed before reading
        except OSError as e:
            raise KernelBuildError(f"{cc} reported success but left no readable {out.name}: {e.strerror or e}") from e


def _clean(dfd: int, stem: str, keep: str) -> None:
    """Remove, holding the lock: temporary files of interrupted builds (a running build would hold the lock),
    and, with `keep` set, the builds of other versions."""
    for entry in os.listdir(dfd):
        stale = entry.startswith(".") and entry.endswith(".tmp")
        other = keep and entry.startswith(f"{stem}-") and entry not in (keep, keep + _RECORD_SUFFIX)
        other = other and (entry.endswith(".so") or entry.endswith(".so" + _RECORD_SUFFIX))
        if stale or other:
            try:
                os.unlink(entry, dir_fd=dfd)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass


def _load_library(source: Path) -> ctypes.CDLL:
    """`source` built by this user (now, or earlier and verified), loaded. Raises KernelBuildError."""
    import fcntl  # POSIX only, like the kernels

    cc = os.environ.get("CC", "cc")
    compiler = shutil.which(cc)
    if compiler is None:
        raise KernelBuildError(f"no C compiler ({cc}) to build {source.name}; install gcc or set CC")
    name = _library_name(source, cc)
    directory = cache_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # only the last level is ours to restrict
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelBuildError(f"cannot use the kernel cache {directory}: {e.strerror or e}") from e
    try:
        _check_private(os.fstat(dfd), directory, "directory")
        lock = os.open(_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the close below, or by the process's end
            _clean(dfd, source.stem, keep="")
            if not (_exists(dfd, name) and _exists(dfd, name + _RECORD_SUFFIX)):
                data = _compile(source, compiler, cc)
                _write_private(dfd, name, data, 0o500)
                _write_private(dfd, name + _RECORD_SUFFIX, f"{hashlib.sha256(data).hexdigest()}\n".encode(), 0o400)
                _clean(dfd, source.stem, keep=name)
            _verify(dfd, name, directory)
            # through the directory opened and checked above, not its path, which a parent's owner could re-point
            proc_path = f"/proc/self/fd/{dfd}"
            path = f"{proc_path}/{name}" if os.path.isdir(proc_path) else str(directory / name)
            try:
                return ctypes.CDLL(path)
            except OSError as e:
                raise KernelBuildError(f"could not load {directory / name}: {e}") from e
        finally:
            os.close(lock)
    except OSError as e:
        raise KernelBuildError(f"cannot use the kernel cache {directory}: {e}") from e
    finally:
        os.close(dfd)


def _load() -> ctypes.CDLL:
    reason = _unsupported()
    if reason:
        raise KernelUnavailable(reason)
    import torch  # noqa: F401  (loaded first, so the kernels share PyTorch's OpenMP runtime and thread pool)

    lib = _load_library(_SOURCE)
    try:
        init, linear, attention = lib.biogpt_amx_init, lib.biogpt_int8_linear, lib.biogpt_decode_attention
    except AttributeError as e:
        raise KernelBuildError(f"the kernel library lacks a function: {e}") from e
    if missing_amx() is None and init() != 0:  # (only the int8 Linear uses the tiles)
        raise KernelBuildError("Linux did not grant this process the AMX tile state (arch_prctl)")
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    # x, M, K, w, w_scale, bias, gelu, N, y, work, threads
    linear.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i32, i64, ptr, ptr, i32]
    # qkv, B, H, D, k cache, v cache, Smax, s, valid, out, threads
    attention.argtypes = [ptr, i64, i64, i64, ptr, ptr, i64, i64, ptr, ptr, i32]
    for f in (linear, attention):
        f.restype = None
    return lib


_state_lock = threading.Lock()
_state: ctypes.CDLL | KernelUnavailable | None = None  # the loaded library, or why it cannot be, once tried


def decode_kernels() -> ctypes.CDLL:
    """decode.c built and loaded (on the first call): `biogpt_int8_linear` (only where `missing_amx()` is None)
    and `biogpt_decode_attention`.

    Raises KernelUnavailable (KernelBuildError for a failed build or load). The outcome is kept for the process,
    failures included: a slow failing compiler is waited for once, not once per caller."""
    global _state
    with _state_lock:
        if _state is None:
            try:
                _state = _load()
            except KernelUnavailable as e:
                _state = e
        state = _state
    if isinstance(state, KernelUnavailable):
        raise state.with_traceback(None)
    return state


def reset() -> None:
    """Forget the outcome of `decode_kernels` (tests: another cache directory, compiler or CPU check)."""
    global _state
    with _state_lock:
        _state = None


def available() -> bool:
    try:
        decode_kernels()
    except KernelUnavailable:
        return False
    return True
