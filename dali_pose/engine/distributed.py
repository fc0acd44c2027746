"""Distributed set-up from torchrun's environment, in a few lines (as nanoGPT does).

``python train.py`` is one process (rank 0 of 1); ``torchrun --nproc_per_node N train.py``
sets RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE and the rendezvous address, and each
process joins one group: NCCL when it trains on a GPU, gloo on the CPU. A rank's GPU is
``cuda:LOCAL_RANK``: its DALI loader (``device_id``) and its model live there.

CPU threads: a rank owns an equal share of this machine's cores (the cores this process may
run on, divided by LOCAL_WORLD_SIZE). On the CPU, torch gets that share for the model step:
the DALI threads fill their prefetch queue while the step runs and then sleep, and a step
with fewer threads than cores is slower than the short overlap costs (measured in the
docs/training.md, CPU threads). On a GPU, torch's host threads only launch kernels: one is
enough, and the cores go to DALI. ``train.cpu_threads`` overrides the rule.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..errors import NoGpuError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    cpu_group: Any = None  # a gloo group for small host-side agreements (NCCL's is on GPUs)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, writes files and scores."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return default if v in (None, "") else int(v)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def setup(gpu: bool, cpu_threads: int = 0) -> Dist:
    """Join torchrun's process group (when there is one) and pick this rank's device.

    ``gpu``: train on ``cuda:LOCAL_RANK`` (NCCL), else on the CPU (gloo). ``cpu_threads``:
    torch's intra-op threads (0: the rule in the module docstring).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if gpu:
        if not torch.cuda.is_available():
            raise NoGpuError()
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                              f"GPUs: --nproc_per_node must not exceed the GPUs per node")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    share = max(1, cores() // max(1, local_world))
    torch.set_num_threads(cpu_threads or (1 if gpu else share))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world,
                                device_id=device if gpu else None)
    cpu_group = None
    if world > 1:
        cpu_group = dist.new_group(backend="gloo") if gpu else dist.group.WORLD
    return Dist(rank, local_rank, world, local_world, device, cpu_group)


def cleanup(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather(d: Dist, obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not d.distributed:
        return [obj]
    out: List[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(d: Dist, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call it at the same point)."""
    if not d.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.cpu_group)
    return bool(t.item())


def sync_buffers(d: Dist, model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them
    at the start of each forward, so after an epoch's last step each rank holds statistics
    updated by its own last batch; validation and checkpoints want one model."""
    if d.distributed:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to check that the ranks hold the same model."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
