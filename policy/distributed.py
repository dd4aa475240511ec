"""Multi-process training helpers: process group from the torchrun environment, DDP wrapping, collectives.

``torchrun --nproc_per_node=N -m policy.train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; ``setup`` joins them into one process group
(NCCL on CUDA, Gloo on the CPU) only when ``WORLD_SIZE`` > 1, so a plain ``python -m policy.train``
runs exactly as before without any ``torch.distributed`` call. CUDA ranks use ``cuda:<LOCAL_RANK>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from policy.policy import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when ``setup`` created the process group (``teardown`` destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates, evaluates and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from e


def setup(device: str, timeout_minutes: float) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; -> (DistInfo, this rank's device).

    ``device`` is ``train.device``: with several processes, ``auto``/``cuda`` give ``cuda:<LOCAL_RANK>`` and
    NCCL, ``cpu`` (or no GPU) gives Gloo. A process group that the caller already initialized is reused
    (and left to the caller to destroy). ``timeout_minutes`` bounds how long ranks wait at a barrier while
    rank 0 validates, saves and evaluates.
    """
    world = _env_int("WORLD_SIZE", 1)
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    if world <= 1:
        return DistInfo(), resolve_device(device)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device)
    if dev.type == "mps":
        raise ValueError("train.device=mps cannot train with several processes (WORLD_SIZE > 1); "
                         "use cuda or cpu")
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA devices: "
                             f"start at most that many processes per node (torchrun --nproc_per_node)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(f"WORLD_SIZE={world} but {name} is not set: start multi-process training "
                                 f"with torchrun (torchrun --nproc_per_node=N -m policy.train ...)")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                timeout=timedelta(minutes=timeout_minutes),
                                device_id=dev if dev.type == "cuda" else None)
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns), dev


def teardown(info: DistInfo) -> None:
    """Destroy the process group if ``setup`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled:
        dist.barrier()


def mean_loss_and_rank0_value(info: DistInfo, loss: torch.Tensor, value: float) -> tuple[float, float]:
    """(mean of ``loss`` over ranks, rank 0's ``value``) in one all-reduce; every rank gets the same pair.

    Used every step so that all ranks log the global-batch loss, stop on a non-finite loss together, and
    share rank 0's training-time clock (the learning rate and the time budget depend on it).
    """
    if not info.enabled:
        return float(loss.detach()), value
    own = value if info.is_main else 0.0
    vec = torch.stack([loss.detach().float().reshape(()), torch.tensor(own, device=loss.device)])  # (2,)
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    out = vec.tolist()
    return out[0] / info.world_size, out[1]


class LossForward(nn.Module):
    """``forward`` = ``model.loss``: DDP synchronizes gradients only for what runs through its own forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model.loss(*args, **kwargs)


def wrap_for_training(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """A module whose call computes ``model.loss``: DistributedDataParallel over it with several ranks.

    DDP broadcasts rank 0's parameters at construction (all ranks start identical) and averages the
    gradients over ranks in ``backward``. The returned module shares ``model``'s parameters: the
    optimizer, the EMA and checkpoints keep using ``model`` itself.
    """
    fwd = LossForward(model)
    if not info.enabled:
        return fwd
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(module: nn.Module, skip: bool):
    """DDP's ``no_sync`` context (gradients accumulate locally) when ``skip``, else a null context."""
    import contextlib

    if skip and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()
