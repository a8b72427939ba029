"""One process or many: the process group torchrun describes in the environment.

torchrun (or srun + torchrun on a cluster) sets WORLD_SIZE, RANK and LOCAL_RANK; without them
the run is a single process and every collective here is a no-op. Only rank 0 prints and writes
files; metrics are summed over all ranks so that every rank sees the same numbers.
"""
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from dll_ext.training.errors import TrainingError


def _device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError(f"--device cuda needs a CUDA GPU, but none is usable here "
                            f"(torch {torch.__version__})")
    if local_rank >= torch.cuda.device_count():
        raise TrainingError(f"process {local_rank} on this node has no GPU of its own "
                            f"({torch.cuda.device_count()} visible): start fewer processes per node")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @classmethod
    def from_environment(cls, requested_device: str) -> "DistEnv":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = _device(requested_device, local_rank)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world_size, local_rank, device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """values summed over all ranks (a new tensor on this rank's device)."""
        values = values.to(self.device, copy=True)
        if self.distributed:
            dist.all_reduce(values)
        return values

    def max_int(self, value: int) -> int:
        """The largest of the ranks' values: how every rank learns that one of them was signalled."""
        if not self.distributed:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
