"""Process-group setup for ``torchrun`` (rank and world size from the environment) and small collectives.

Single process: ``python -m dphubert.bin.distill_prune ...``. Several: ``torchrun --nproc_per_node N -m
dphubert.bin.distill_prune ...`` (multi-node: add ``--nnodes``, ``--node_rank``, ``--rdzv_endpoint`` as usual).
The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistEnv:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun), pick the device, init the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available; use --device cpu")
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, torch_device)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Dict[str, float], env: DistEnv) -> Dict[str, float]:
    """Sum float values over ranks (identity for one process); every rank must call it with the same keys."""
    if not env.distributed or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def all_reduce_mean(values: Dict[str, float], env: DistEnv) -> Dict[str, float]:
    summed = all_reduce_sum(values, env)
    return {k: v / env.world_size for k, v in summed.items()}


def all_true(flag: bool, env: DistEnv) -> bool:
    if not env.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def gather_objects(obj: Any, env: DistEnv) -> List[Any]:
    """A list of every rank's ``obj`` (on every rank)."""
    if not env.distributed:
        return [obj]
    out: List[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
