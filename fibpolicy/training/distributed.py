"""Process-group set-up for ``torchrun`` (gloo on CPU, NCCL on CUDA) and rank helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import default_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment, or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = default_device(device)
    if want.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available")
        dev = torch.device("cuda", local_rank if world_size > 1 else want.index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = want
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def mean_across_ranks(value: float, info: DistInfo) -> float:
    """Average a scalar over ranks (identity in a single process)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.item() / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any (so that all ranks take the same branch)."""
    if not info.distributed:
        return flag
    t = torch.tensor([float(flag)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
