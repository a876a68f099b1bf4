"""TensorParallel: this process's place in the tensor-parallel group and its collectives."""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# NOTE: a collective waits this long for a silent peer before failing (a dead rank that the engine
# did not start itself is only noticed this way).
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True, eq=False)
class TensorParallel:
    """rank / size of this process in the group; `group` is None for a single rank (no communication)."""

    rank: int
    size: int
    group: object | None = None  # torch.distributed ProcessGroup when size > 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel rank {self.rank} of size {self.size} is out of range")
        if self.size > 1 and self.group is None:
            raise ValueError("a tensor-parallel group of more than one rank needs a process group")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place (capturable in a CUDA graph with NCCL)."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C] on every rank -> [N, size * C], rank r's columns at r*C (every rank gets all)."""
        if self.size == 1:
            return x
        n, c = x.shape
        out = x.new_empty((self.size * n, c))  # [size * N, C], rank after rank
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
        gather(out, x.contiguous(), group=self.group)
        return out.view(self.size, n, c).permute(1, 0, 2).reshape(n, self.size * c)

    def all_reduce_min(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.MIN, group=self.group)
        return x

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """x from rank 0 into x on every rank, in place."""
        if self.size > 1:
            dist.broadcast(x, src=0, group=self.group)
        return x


def single_rank() -> TensorParallel:
    return TensorParallel(0, 1, None)


class LaunchEnv(NamedTuple):
    """torchrun-style variables of a process whose ranks a launcher started."""

    rank: int
    world_size: int
    local_rank: int


def launcher_env() -> LaunchEnv | None:
    """RANK / WORLD_SIZE / LOCAL_RANK when a launcher (torchrun, mpirun wrappers, a cluster
    scheduler) started this process as one rank of several; None otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from exc
    if world <= 1:
        return None
    return LaunchEnv(rank, world, local)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_group(rank: int, size: int, device: torch.device, init_method: str,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> TensorParallel:
    """Join the default process group (NCCL on CUDA, gloo on CPU) and return this rank's view."""
    backend = backend_for(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    logger.info("tensor-parallel rank %d/%d joined (%s on %s)", rank, size, backend, device)
    return TensorParallel(rank, size, dist.group.WORLD)


def destroy_group(tp: TensorParallel) -> None:
    if tp.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
