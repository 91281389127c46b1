"""Reading weight files without running code from them, and resolving hub ids.

- safetensors (`model.safetensors`, sharded with an index): memory-mapped.
- `pytorch_model.bin` and our own `trainer.pt`: `torch.load(weights_only=True)`, memory-mapped where the file
  is in the zip format.
- fairseq `checkpoint.pt`: these pickle argparse Namespaces, OmegaConf configs and fairseq objects, which
  `weights_only=True` refuses. They go through an allow-list unpickler instead: tensors, storages and plain
  containers are rebuilt; OmegaConf `DictConfig`/`ListConfig` and their value nodes become plain dicts, lists
  and values (`plain()`); any other class becomes an inert stub that holds its state and runs nothing.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from biogpt.errors import CheckpointError
from biogpt.jsonfile import read_json_object


class Stub:
    """Stands in for any class a checkpoint names that we do not allow; holds its state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return Stub()


_BUILTINS = ("set", "frozenset", "slice", "complex", "dict", "list", "tuple", "int", "float", "str", "bool")


def _allowed(module: str, name: str):
    if module == "__builtin__":  # protocol-2 pickles name builtins by their Python 2 module
        module = "builtins"
    if module == "collections" and name in ("OrderedDict", "defaultdict"):
        return getattr(collections, name)
    if module == "argparse" and name == "Namespace":
        return argparse.Namespace
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_tensor"):
        return getattr(torch._utils, name)
    if module == "torch" and (name.endswith("Storage") or name in ("Size", "device")):
        return getattr(torch, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "builtins" and name in _BUILTINS:
        return getattr(builtins, name)
    return None


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        cls = _allowed(module, name)
        if cls is not None:
            return cls
        return type(name, (Stub,), {"__module__": "biogpt.checkpoints.stub." + module})


class _safe_pickle:  # a pickle "module" for torch.load(pickle_module=...)
    Unpickler = _SafeUnpickler
    load = staticmethod(lambda f, **kw: _SafeUnpickler(f, **kw).load())
    __name__ = "biogpt_safe_pickle"


def plain(obj: Any) -> Any:
    """A checkpoint's config as plain Python: OmegaConf stubs become dicts, lists and values; Namespaces
    become dicts; other stubs become None (they are fairseq objects no config value needs)."""
    if isinstance(obj, Stub):
        cls = type(obj).__name__
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
        if not isinstance(state, dict):
            return None
        if cls == "DictConfig":
            content = state.get("_content")
            return {str(k): plain(v) for k, v in content.items()} if isinstance(content, dict) else None
        if cls == "ListConfig":
            content = state.get("_content")
            return [plain(v) for v in content] if isinstance(content, list | tuple) else None
        if "_val" in state:  # omegaconf.nodes.*Node
            return plain(state["_val"])
        return None
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v) for v in obj) if isinstance(obj, list) else tuple(plain(v) for v in obj)
    return obj


def _load(path: Path, weights_only: bool) -> Any:
    size = path.stat().st_size
    kw = {"weights_only": True} if weights_only else {"weights_only": False, "pickle_module": _safe_pickle}
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", mmap=mmap, **kw)
        except RuntimeError as e:
            if mmap and "mmap" in str(e):
                continue  # legacy (non-zip) serialization: load normally
            raise CheckpointError(f"{path}: cannot read ({e}); the file may be truncated ({size} bytes)") from None
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            why = str(e).split("\n")[0]
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint ({why}); truncated ({size} bytes), or it holds objects "
                "other than tensors and plain values, which biogpt never unpickles"
            ) from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    raise AssertionError("unreachable")


def read_fairseq_checkpoint(path: Path) -> dict:
    """A fairseq `checkpoint.pt` through the allow-list unpickler (see the module docstring)."""
    return _load(path, weights_only=False)


def read_tensors(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, memory-mapped where possible: for `pytorch_model.bin` and
    biogpt's own `trainer.pt`, which hold only tensors and plain values."""
    return _load(path, weights_only=True)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)  # memory-mapped
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read ({e}); truncated or corrupt?") from None


def read_hf_weights(d: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face directory: model.safetensors, its shards, or pytorch_model.bin."""
    if (d / "model.safetensors").exists():
        return read_safetensors(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object; is the index complete?")
        out: dict[str, torch.Tensor] = {}
        for f in sorted(set(weight_map.values())):
            out.update(read_safetensors(d / f))
        return out
    if (d / "pytorch_model.bin").exists():
        sd = read_tensors(d / "pytorch_model.bin")
        if not isinstance(sd, dict):
            raise CheckpointError(f"{d / 'pytorch_model.bin'}: not a state dict")
        return dict(sd)
    raise CheckpointError(f"{d}: no model.safetensors or pytorch_model.bin next to config.json")


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or one CheckpointError naming the file and the problem."""
    return read_json_object(path, CheckpointError)


DEMO = "demo"  # the small model embedded in the package (src/biogpt/demo/, scripts/build_demo_model.sh)
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


def demo_path() -> Path:
    """The embedded demo model's directory, or one clear error where this installation has none."""
    if not (DEMO_DIR / "model.safetensors").exists():
        raise CheckpointError(
            "this installation has no embedded demo model (src/biogpt/demo/ is built by scripts/build_demo_model.sh); "
            "pass --model PATH"
        )
    return DEMO_DIR


WEIGHT_FILES = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "checkpoint.pt")


def weights_sha256(path: str | Path) -> str:
    """sha256 over a checkpoint's weight files as stored (names and bytes, in name order): which weights made
    an output, whatever precision mode ran them."""
    p = resolve(path)
    files = [p] if p.is_file() else sorted({f for pattern in WEIGHT_FILES for f in p.glob(pattern)})
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def resolve(path: str | Path) -> Path:
    """A local path as it is; "demo" the embedded demo model; a hub id (`owner/name`) through huggingface_hub's
    cache; or one clear error."""
    if str(path) == DEMO:
        return demo_path()
    p = Path(path)
    if p.exists():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not _looks_local(str(path)):
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise CheckpointError(
                f"{path}: no such file or directory, and not fetchable as a hub id without huggingface_hub "
                "(pip install 'biogpt[hub]'); or download the model and pass its directory"
            ) from None
        try:
            return Path(snapshot_download(str(path), local_files_only=True))
        except Exception:
            pass
        try:
            return Path(snapshot_download(str(path)))
        except Exception as e:
            raise CheckpointError(
                f"cannot fetch {path!r} from the Hugging Face Hub ({type(e).__name__}); offline? Download it "
                "elsewhere (huggingface-cli download " + str(path) + " --local-dir DIR) and pass DIR instead"
            ) from None
    raise CheckpointError(f"{path}: no such file or directory")


def _looks_local(path: str) -> bool:
    """Whether a missing `owner/name` string is rather a mistyped local path: it starts with . or ~, ends with a
    slash or a checkpoint's file extension, or its first part is a folder here."""
    first = path.split("/", 1)[0]
    return (path.startswith((".", "~")) or path.endswith("/") or Path(first).is_dir()
            or path.endswith((".pt", ".bin", ".safetensors", ".json")))  # fmt: skip


def write_json(path: Path, obj: dict) -> None:
    """A JSON file written under a temporary name and renamed: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file (CPU, contiguous copies) written under a temporary name and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
