"""Several training processes through `torchrun`: ranks, process groups, collectives, rank-0 logging."""

from __future__ import annotations

import os

import torch


def dist_info() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def log0(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out
