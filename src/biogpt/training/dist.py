"""Several training processes through `torchrun`: each rank's device, the process group, collectives, logging.

Under `torchrun --nproc-per-node N` every process gets RANK, WORLD_SIZE and LOCAL_RANK; rank r of a node
trains on `cuda:LOCAL_RANK` (one GPU per process, as DDP and FSDP expect). The backend follows the device,
not the machine: NCCL for CUDA tensors, gloo for CPU ones, so `--device cpu` on a machine with GPUs still
works (NCCL cannot reduce CPU tensors).
"""

from __future__ import annotations

import os

import torch

from biogpt.errors import TrainingError


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK); 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_for(requested: str | torch.device) -> torch.device:
    """The device this process trains on: "cpu", or "cuda" -> `cuda:LOCAL_RANK` under torchrun (`cuda:0`
    otherwise). "cuda:K" names one GPU for a single process. Checks only; sets nothing (see `init`)."""
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise TrainingError(f"unknown device {str(requested)!r}; use cpu or cuda") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise TrainingError(f"device {str(requested)!r} is not supported for training; use cpu or cuda")
    if not torch.cuda.is_available():
        raise TrainingError(f"--device {requested}: CUDA is not available; use --device cpu")
    n = torch.cuda.device_count()
    if "LOCAL_RANK" in os.environ:
        # every rank its own GPU; an explicit index would put several ranks on one device
        if dev.index is not None:
            raise TrainingError(f"--device {requested} under torchrun: pass --device cuda, each rank takes "
                                "cuda:LOCAL_RANK")  # fmt: skip
        index = local_rank()
        if index >= n:
            raise TrainingError(f"LOCAL_RANK {index} but this machine has {n} CUDA device(s): start at most {n} "
                                "processes per node (torchrun --nproc-per-node)")  # fmt: skip
        return torch.device("cuda", index)
    index = dev.index or 0
    if index >= n:
        raise TrainingError(f"--device {requested}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    return torch.device("cuda", index)


def backend_for(device: torch.device) -> str:
    """The collective backend for tensors on `device`: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device) -> tuple[int, int]:
    """Make `device` current and join torchrun's process group (once); returns (rank, world size).

    Outside torchrun (no RANK / WORLD_SIZE) nothing is started and this is (0, 1).
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the group: NCCL and all_gather_object use the current device
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend_for(device), device_id=device if device.type == "cuda" else None)
    return dist_info()


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def log0(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def gather_objects(obj: object, world: int) -> list:
    """[obj of rank 0, ..., obj of rank world-1] on every rank (pickled through the process group)."""
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
