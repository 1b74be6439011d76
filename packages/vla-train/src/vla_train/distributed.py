"""Process-group setup for `torchrun` and the sampler that shards each epoch across ranks.

One entry point serves 1 and N processes: without torchrun's environment variables everything
degrades to rank 0 of 1 and no process group is created.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")


def init_distributed(device_name: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class ShardedEpochSampler:
    """Index batches for one epoch: a permutation seeded by (seed, epoch), dealt round-robin to
    ranks (tail dropped so every rank gets as many samples), cut into fixed-size batches.

    `batches(epoch, start=k)` skips the first k batches, which is how a resumed run picks up
    mid-epoch on exactly the batch an uninterrupted run would have drawn next.
    """

    def __init__(self, num_samples: int, batch_size: int, *, rank: int, world_size: int, seed: int):
        if num_samples < world_size:
            raise ValueError(f"dataset has {num_samples} windows, fewer than {world_size} ranks")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        per_rank = num_samples // world_size
        # A dataset smaller than one batch still trains: one (smaller) batch per epoch.
        self.batch_size = min(batch_size, per_rank)
        self.per_rank = per_rank

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_samples, generator=gen)[: self.per_rank * self.world_size]
        shard = perm[self.rank :: self.world_size].tolist()
        for b in range(start, len(self)):
            yield shard[b * self.batch_size : (b + 1) * self.batch_size]


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    """`[obj of rank 0, obj of rank 1, ...]` on every rank (`[obj]` without a process group)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def replica_divergence(module: torch.nn.Module, info: DistInfo) -> float:
    """Max |θ_rank − θ_rank0| over all parameters and ranks: 0.0 when DDP kept replicas in
    sync (each rank saw different data and noise, so any missed all-reduce shows up here)."""
    if not info.enabled:
        return 0.0
    flat = torch.cat([p.detach().float().flatten() for p in module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def _spawned(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    fn(*args)


def spawn_local(fn: Callable[..., Any], *args: Any, nprocs: int = 2) -> None:
    """`torchrun --nproc_per_node=nprocs` without torchrun: `fn(*args)` in `nprocs` spawned local
    processes that see torchrun's environment variables (gloo on CPU). `fn` must be picklable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    # spawn, not fork: a child forked from a parent whose OpenMP / gloo threads are running can
    # deadlock on a lock held by a thread that does not exist in the child (seen in CI).
    mp.start_processes(_spawned, args=(nprocs, port, fn, args), nprocs=nprocs, start_method="spawn")
