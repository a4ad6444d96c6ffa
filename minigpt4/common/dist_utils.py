"""torch.distributed helpers: start-up from torchrun's environment and rank queries.

`init_distributed_mode` reads RANK / WORLD_SIZE / LOCAL_RANK (set by `torchrun`) and picks
gloo on CPU and nccl on CUDA. Without those variables everything runs as a single process
and the helpers below answer rank 0 of 1, so callers never branch on "is DDP on".
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: `rank` of `world_size`, `local_rank` on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available) -> a torch.device.

    Under torchrun each process takes GPU `local_rank`, unless an explicit index was given.
    """
    name = str(device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"run.device={device!r} but CUDA is not available; use run.device=cpu or auto")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"run.device must be cpu, cuda, cuda:N or auto; got {device!r}")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed_mode(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group if started by torchrun; return this process's `DistInfo`.

    Safe to call twice (the second call reuses the group).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        logger.info("process group up: rank %d/%d, backend %s, device %s", rank, world_size, backend, dev)
    return DistInfo(rank, world_size, local_rank, dev, True)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def destroy_distributed() -> None:
    """Leave the process group (no-op when single-process)."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum a list of floats over all ranks (float64, so small loss terms keep their digits)."""
    if not values:
        return []
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if is_dist_avail_and_initialized() and get_world_size() > 1:
        if device.type != "cuda" and dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def union_of_keys(keys: Iterable[str]) -> list[str]:
    """The sorted union of every rank's keys (one small object gather), so that ranks whose
    records hold different terms still reduce the same list in the same order."""
    mine = sorted(set(keys))
    if not (is_dist_avail_and_initialized() and get_world_size() > 1):
        return mine
    gathered: list[Optional[list[str]]] = [None] * get_world_size()
    dist.all_gather_object(gathered, mine)
    return sorted({k for rank_keys in gathered for k in (rank_keys or [])})
