"""A training run's folder, from start to end: preparing it, deciding whether an earlier run in it may be resumed
(same settings), writing checkpoints atomically and keeping the newest, the random state they carry, averaging
the last ones and writing `final`.

    out/update_0000100/   a Hugging Face directory + trainer.pt (model, optimizer, step, log, data position,
    out/update_0000200/   RNG states, settings) + train_log.json
    out/last -> update_0000200
    out/final/            what a fine-tune leaves: the model to load
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from biogpt.api import family_of
from biogpt.checkpoints.io import read_tensors
from biogpt.errors import CheckpointError, TrainingError
from biogpt.models.biogpt import BioGPTConfig
from biogpt.training.dist import barrier, dist_info

ON_EXISTING = ("resume", "overwrite")  # what a run does with an earlier run in its folder
# TrainConfig fields a resumed run may change: where it is, how long it runs, how often it logs and saves, and
# how the model is laid out over the ranks (checkpoints hold full, unsharded state either way)
MAY_CHANGE = ("out_dir", "max_updates", "eval_every", "save_every", "keep_last", "peak_tflops", "fsdp")


def remove(p: Path) -> None:
    """Delete a file, link or folder if it is there (a run only ever removes what it wrote)."""
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


def prepare_out_dir(out: Path, on_existing: str) -> None:
    """Create `out`; remove what an interrupted checkpoint left (`.update_*.tmp`), and for "overwrite" the
    earlier run's checkpoints too. Only files this loop writes are touched."""
    out.mkdir(parents=True, exist_ok=True)
    stale = list(out.glob(".update_*.tmp")) + [out / ".last.tmp"]
    if on_existing == "overwrite":
        stale += list(out.glob("update_*")) + [out / "last"]
    for p in stale:
        remove(p)


def latest_checkpoint(out: str | Path) -> Path | None:
    """The last committed checkpoint of a run: `out/last`, or, if a crash came between writing a checkpoint
    and pointing `last` at it, the newest complete `out/update_*`; None for a new run."""
    out = Path(out)
    if (out / "last" / "trainer.pt").is_file():
        return out / "last"
    done = sorted(p for p in out.glob("update_*") if (p / "trainer.pt").is_file())
    return done[-1] if done else None


def read_trainer_state(path: Path) -> dict:
    """trainer.pt through `torch.load(weights_only=True)`: tensors and plain values only, nothing executed."""
    state = read_tensors(path)
    need = ("model", "optimizer", "step", "log", "position", "rng")
    if not isinstance(state, dict) or any(k not in state for k in need):
        raise CheckpointError(f"{path}: not a biogpt trainer state (needs {', '.join(need)})")
    return state


def _plain(v: object) -> object:
    """Tuples as lists, so that a value compares equal however it was stored."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def settings_differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """`name: saved value in the checkpoint, new value now` for every setting that differs (nested: a.b)."""
    out = []
    for k in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(k, "(not recorded)"), now.get(k, "(not given)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, f"{prefix}{k}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{k}: {a!r} in the checkpoint, {b!r} now")
    return out


def check_resumable(state: dict, run: dict, config_now: dict, ckpt: Path) -> None:
    """TrainingError naming every setting in which the run saved in `ckpt` differs from this one (`run`: all of
    its settings; `config_now`: the loop settings alone, what a checkpoint from before settings were recorded is
    compared with)."""
    saved = state.get("settings")
    now = run
    if saved is None:  # a checkpoint from before settings were recorded: its TrainConfig is all there is
        saved = {k: v for k, v in state.get("config", {}).items() if k not in MAY_CHANGE}
        now = {k: v for k, v in config_now.items() if k in saved}
    diffs = settings_differences(saved, now)
    if diffs:
        raise TrainingError(f"{ckpt.parent} holds a run with other settings ({'; '.join(diffs)}): resume it with "
                            "the same settings, or start again with on_existing='overwrite' (--overwrite), or use "
                            "another output folder")  # fmt: skip


def rng_state(device: torch.device) -> dict:
    """This rank's random state: the CPU generator, and its GPU's for a CUDA run (dropout draws there)."""
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rngs: list, rank: int, device: torch.device) -> None:
    """Set this rank's random state to what the run saved for it, so that a resumed run draws what an
    uninterrupted one would."""
    if rank >= len(rngs):  # more ranks than the run was saved from: the new ones keep their seed
        return
    rng = rngs[rank] if isinstance(rngs[rank], dict) else {"cpu": rngs[rank]}  # older: the CPU state only
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)


def _model_class(config) -> type[torch.nn.Module]:
    """The model class a config belongs to."""
    return family_of(config).model_class


def write_checkpoint(config: BioGPTConfig, state: dict, out: Path, keep_last: int, save) -> None:
    """Write `update_{step}/` (HF directory + trainer.pt) atomically, point `last/` at it, keep the newest.

    Everything is written under `.update_{step}.tmp/` and renamed; `last` is replaced by a rename too, so an
    interruption at any point leaves the previous checkpoint as the last one (and `prepare_out_dir` removes
    the leftovers on the next run).
    """
    step = state["step"]
    tmp = out / f".update_{step:07d}.tmp"
    remove(tmp)
    tmp.mkdir(parents=True)
    if save is not None:
        # an unsharded copy to write the HF directory from; built on meta and never initialised, so that it
        # draws nothing from the RNG (an uninterrupted run must see the same random stream as a resumed one)
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            plain = _model_class(config)(config)
        plain.load_state_dict(state["model"], assign=True)
        save(plain, tmp)
    torch.save(state, tmp / "trainer.pt")
    (tmp / "train_log.json").write_text(json.dumps(state["log"]))
    final = out / f"update_{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    link = out / ".last.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(final.name)
    last = out / "last"
    if last.is_dir() and not last.is_symlink():  # a real folder cannot be replaced by a rename
        shutil.rmtree(last)
    os.replace(link, last)
    kept = sorted(p for p in out.glob("update_*") if p.is_dir())
    for old in kept[:-keep_last]:
        shutil.rmtree(old)


def average_checkpoints(dirs: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (fairseq average_checkpoints.py)."""
    total: dict[str, torch.Tensor] = {}
    for d in dirs:
        sd = read_tensors(d / "trainer.pt")["model"]
        for k, v in sd.items():
            total[k] = total.get(k, 0) + v.double()
    return {k: (v / len(dirs)).float() for k, v in total.items()}


def write_final(final: Path, save: Callable[[Path], None]) -> None:
    """`save(dir)` into a folder beside `final`, then renamed over it: an interruption never leaves a
    half-written `final`."""
    tmp = final.with_name(".final.tmp")
    remove(tmp)
    save(tmp)
    remove(final)
    tmp.rename(final)


def identity(model_path: str | Path) -> str:
    """The model a run starts from, the same from any working folder: a local path made absolute, or a hub id."""
    p = Path(model_path)
    return str(p.resolve()) if p.exists() else str(model_path)


def check_run(on_existing: str, **counts: int | None) -> None:
    """One TrainingError naming every count that is given but not an int >= 1, or a bad on_existing."""
    bad = [f"{name} must be >= 1, got {v!r}" for name, v in counts.items()
           if v is not None and not (isinstance(v, int) and v >= 1)]  # fmt: skip
    if bad:
        raise TrainingError("; ".join(bad))
    if on_existing not in ON_EXISTING:
        raise TrainingError(f"on_existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")


class FinetuneRun:
    """The start and end every fine-tune shares: an earlier `final` removed when the run starts again, the model
    recorded by an identity that does not depend on the working folder, and `out/final` written whole by rank 0
    from the last checkpoints once the loop is done."""

    def __init__(self, out_dir: str | Path, model_path: str | Path, on_existing: str, rank: int) -> None:
        self.out, self.rank = Path(out_dir), rank
        self.final = self.out / "final"
        self.model = identity(model_path)  # what the run's settings record as its starting model
        if rank == 0 and on_existing == "overwrite":
            remove(self.final)

    def finish(self, save: Callable[[Path, list[Path]], None], average_last: int = 0) -> Path:
        """`out/final`, written on rank 0 by `save(folder, checkpoints)`, given the last `average_last` checkpoint
        folders (oldest first; none for 0) to average, as the original recipes do. Every rank returns once it is
        written: a caller may read it at once, and no rank tears its process group down while rank 0 writes."""
        if self.rank == 0:
            dirs = sorted(p for p in self.out.glob("update_*") if p.is_dir())[-average_last:] if average_last else []
            write_final(self.final, lambda d: save(d, dirs))
        barrier(dist_info()[1])
        return self.final
