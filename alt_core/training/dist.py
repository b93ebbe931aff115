"""The training processes as a group: rank, world size, and the few collectives used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Dist:
    """Rank and world size as torch.distributed sees them. Accelerate has no CPU backend
    for DeepSpeed and reports a single process when DeepSpeed runs several on CPUs, so
    the process group DeepSpeed set up is the source of truth (on GPUs both agree)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Dist:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
