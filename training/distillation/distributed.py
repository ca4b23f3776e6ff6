"""Process-group setup for ``torchrun``: gloo on CPU, NCCL on GPU, nothing for one process.

``torchrun --nproc-per-node W ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in each process's environment; without them the run is a single process and
no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run, and the device it computes on."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # True when :func:`init_distributed` created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes (in place; a no-op for one process)."""
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def close(self) -> None:
        """Leave the process group once every process is done (if this one created it)."""
        if self.owns_group:
            dist.barrier()
            dist.destroy_process_group()


def init_distributed() -> Distributed:
    """Join the ``torchrun`` process group if there is one (creating it on first call)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size == 1:
        return Distributed(0, 1, device, owns_group=False)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, owns_group)
