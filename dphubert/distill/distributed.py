"""Process-group setup for ``torchrun`` (rank and world size from the environment) and small collectives.

Single process: ``python -m dphubert.bin.distill_prune ...``. Several: ``torchrun --nproc_per_node N -m
dphubert.bin.distill_prune ...``; several nodes: ``torchrun --nnodes N --rdzv_backend c10d --rdzv_endpoint HOST:PORT
...`` on each node (the recipes' ``--num_nodes`` does this, through srun with SLURM). The backend is NCCL on CUDA and
gloo on CPU.

Multi-node runs need every rank to train on the same thing: ``check_same_inputs`` compares the config and digests of
the teacher and the data over all ranks, and checks that every rank sees the files rank 0 writes in the experiment
dir (checkpoints and resuming need a shared file system), before the first step. With ``torchrun --max_restarts R``
a lost worker makes torchrun restart all workers; ``resumes_after_restart`` tells the restarted workers to resume
(recipes also set ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for torchrun, so that a restarted group does not read
the lost workers' addresses from the store of the first attempt).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import torch.distributed as dist

from .errors import DistillError


class DistributedSetupError(DistillError):
    """Ranks that cannot train together: other inputs, no shared experiment dir, missing devices."""


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_world_size: int = 1  # processes on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def setup_distributed(device: str = "auto") -> DistEnv:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun), pick the device, init the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DistributedSetupError("--device cuda: no CUDA device is available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"local rank {local_rank} needs GPU {local_rank}, but {socket.gethostname()} has "
                f"{torch.cuda.device_count()}; start at most {torch.cuda.device_count()} processes per node "
                f"(torchrun --nproc_per_node, the recipes' --ngpu)")
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, torch_device, local_world_size)


def teardown_distributed() -> bool:
    """Destroy the process group; True when there was one (this process was a torchrun worker of a group)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def exit_worker(code: int) -> None:
    """End a torchrun worker with ``code`` once its output is written, without the interpreter's finalisation.

    gloo's worker threads free a finished collective a moment after it returns, and that takes the GIL when the
    collective captured Python state. A thread asking for the GIL while the interpreter finalises aborts the process
    ("terminate called without an active exception", SIGABRT), so torchrun reports a failed run after a complete one.
    ``destroy_process_group`` does not join those threads while DDP keeps the group alive (torch 2.14). A 2-process
    gloo DDP script on a loaded 2-core machine aborted in 10 of 80 runs that way, and in 0 of 80 with ``os._exit``.
    """
    gc.collect()  # objects in reference cycles (a data loader's workers, open files) are finalised now, not never
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def restart_count() -> int:
    """How often torchrun has restarted this node's workers (``--max_restarts``); 0 in a first attempt.

    Only the node whose worker failed counts a restart; the other nodes restart their workers without counting,
    so decisions that must agree over ranks look at every rank (``any_rank``).
    """
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def any_rank(flag: bool, env: DistEnv) -> bool:
    return any(gather_objects(bool(flag), env))


# ----- resuming after a torchrun restart -------------------------------------------------------------------------
# The torchrun agents (host:pid, the same in every attempt of one torchrun) of the run that trains in exp/<tag>/.
AGENTS_FILE = ".torchrun_agents"


def torchrun_agent() -> str:
    """This worker's torchrun agent (its parent process); empty outside torchrun."""
    return f"{socket.gethostname()}:{os.getppid()}" if "TORCHELASTIC_RUN_ID" in os.environ else ""


def resumes_after_restart(exp_dir: Path, env: DistEnv) -> bool:
    """True in workers that torchrun restarted after a worker was lost, when an earlier attempt of the same
    torchrun had started training in ``exp_dir`` (``note_training_agents``): they resume its checkpoints.

    A restart after a start that was refused (an earlier run's checkpoints without --resume) or failed before
    training finds no note of its torchrun, and is refused or starts afresh like a first attempt.
    """
    if not any_rank(restart_count() > 0, env):
        return False
    try:
        noted = set((Path(exp_dir) / AGENTS_FILE).read_text().split())
    except OSError:
        noted = set()
    return any_rank(torchrun_agent() in noted, env)


def note_training_agents(exp_dir: Path, env: DistEnv) -> None:
    """Note the torchrun agents of a run that starts training in ``exp_dir`` (rank 0 writes; every rank calls)."""
    agents = sorted(set(gather_objects(torchrun_agent(), env)) - {""})
    if env.is_main and agents:
        tmp = Path(exp_dir) / f"{AGENTS_FILE}.tmp"
        tmp.write_text("\n".join(agents) + "\n")
        os.replace(tmp, Path(exp_dir) / AGENTS_FILE)


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


# ----- the same inputs on every rank ---------------------------------------------------------------------------
def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_digest(model: torch.nn.Module, config: Dict[str, Any]) -> str:
    """Config, shapes and the sum of every tensor: cheap, and in practice differs between any two models."""
    tensors = [(k, list(v.shape), float(v.double().sum())) for k, v in model.state_dict().items()]
    return digest([config, tensors])


def data_digest(utt_ids: Sequence[str], lengths: Sequence[int]) -> str:
    return digest([list(utt_ids), [int(n) for n in lengths]])


def check_same_inputs(env: DistEnv, exp_dir: Path, config: Dict[str, Any], inputs: Dict[str, str]) -> None:
    """Fail on every rank, before training, when ranks differ in ``config`` or ``inputs`` (name -> digest), or
    when a rank does not see the files rank 0 writes in ``exp_dir``. A no-op for one process."""
    if not env.distributed:
        return
    exp_dir = Path(exp_dir)
    # A fresh name each run: an NFS client cannot answer from a cached lookup of an earlier check.
    token = uuid.uuid4().hex if env.is_main else None
    marker = None
    if env.is_main:
        marker = exp_dir / f".shared_check.{token}"
        marker.write_text(token)
    token = gather_objects(token, env)[0]
    mine = {"host": socket.gethostname(), "exp": str(exp_dir), "config": config, "inputs": dict(inputs),
            "sees_exp": _sees(exp_dir / f".shared_check.{token}", token)}
    everyone = gather_objects(mine, env)
    if marker is not None:
        marker.unlink(missing_ok=True)
    main = everyone[0]
    for rank, other in enumerate(everyone[1:], start=1):
        where = f"rank {rank} (host {other['host']})"
        ref = f"rank 0 (host {main['host']})"
        if not other["sees_exp"]:
            raise DistributedSetupError(
                f"{main['exp']}: {where} does not see the files {ref} writes there; checkpoints and resuming need the "
                f"experiment dir on a file system every node mounts (the same path on every node)")
        changed = sorted(k for k in set(main["config"]) | set(other["config"])
                         if main["config"].get(k) != other["config"].get(k))
        if changed:
            shown = ", ".join(f"{k}: {other['config'].get(k)!r} vs {main['config'].get(k)!r}" for k in changed[:3])
            raise DistributedSetupError(
                f"{where} has another config than {ref} ({shown}); start every node with the same options and "
                f"config files")
        for name in main["inputs"]:
            if other["inputs"].get(name) != main["inputs"][name]:
                raise DistributedSetupError(
                    f"{where} reads another {name} than {ref} (digest {other['inputs'].get(name)} vs "
                    f"{main['inputs'][name]}); give every node the same files (a shared file system, or identical "
                    f"copies at the same paths)")


def _sees(path: Path, token: str, tries: int = 5) -> bool:
    for attempt in range(tries):
        try:
            if path.read_text() == token:
                return True
        except OSError:
            pass
        time.sleep(0.1 * (attempt + 1))  # an NFS client may need a moment
    return False
