"""`biogpt extract --ray`: the same chunks, shards and manifest as on one machine, with the extraction spread
over a Ray cluster (`pip install 'biogpt[ray]'`).

The driver reads the inputs and keeps the manifest; a pool of actors, each holding one model (on a GPU when
the cluster has them), extracts the chunks. Results come back in input order, so the output and the resume
logic are exactly those of the local pipeline: adding machines adds actors, and throughput with them.
"""

from __future__ import annotations

import argparse
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from biogpt.errors import BioGPTError


def ray_map_chunks(args: argparse.Namespace, build: Callable) -> Callable[[Iterable], Iterator]:
    """A `map_chunks` for `biogpt.mining.pipeline.run` that runs chunks on Ray actors, in order."""
    try:
        import ray
    except ImportError:
        raise BioGPTError("--ray needs Ray: pip install 'biogpt[ray]'") from None

    if not ray.is_initialized():
        address = None if args.ray == "auto" else args.ray
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise BioGPTError(f"cannot reach the Ray cluster at {args.ray!r} ({e})") from None
    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = ray.cluster_resources().get("CPU", 1)
    n = args.workers if args.workers > 1 else max(1, int(gpus) or int(cpus // max(args.threads or 1, 1)))
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": max(1, int(cpus // n))}

    @ray.remote(**per_actor)
    class ExtractActor:
        def __init__(self, actor_args):
            import torch

            torch.set_num_threads(actor_args.threads or per_actor.get("num_cpus", 1))
            self.extractor = build(actor_args, False)

        def run(self, item):
            key, docs, problems = item
            return key, self.extractor.extract(docs), problems

    actors = [ExtractActor.remote(args) for _ in range(n)]

    def map_chunks(items: Iterable) -> Iterator:
        """Chunks dealt round-robin, at most two in flight per actor (input is read as results come back, so
        memory stays bounded), results yielded in input order."""
        inflight: deque = deque()
        for k, item in enumerate(items):
            inflight.append(actors[k % n].run.remote(item))
            if len(inflight) >= 2 * n:
                yield ray.get(inflight.popleft())
        while inflight:
            yield ray.get(inflight.popleft())

    return map_chunks
