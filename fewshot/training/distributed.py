"""Data-parallel training under ``torchrun``: process group, rank helpers, and agreement between ranks.

``torchrun --nproc_per_node=N -m fewshot train CONFIG`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`init_distributed` then joins the process group (gloo on CPU, nccl on CUDA, one
GPU per local rank). Without those variables everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import FewshotError
from ..runtime import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group if there is one; return the context and this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FewshotError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): lower "
                               "--nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank), device


def all_sum(values: list[float], context: DistContext, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, context: DistContext, device: torch.device) -> bool:
    """True when ``flag`` is True on any rank (so every rank stops together)."""
    return bool(all_sum([float(flag)], context, device)[0] > 0)


def broadcast_flag(flag: bool, context: DistContext, device: torch.device) -> bool:
    """Rank 0's ``flag``, on every rank."""
    if not context.enabled:
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


def parameter_spread(module: torch.nn.Module, context: DistContext, device: torch.device) -> float:
    """Largest difference of any parameter between ranks (0.0 when they agree, as DDP guarantees)."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()]).to(device)
    if not context.enabled:
        return 0.0
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max())


def gather_objects(value, context: DistContext) -> list:
    """``value`` from every rank, in rank order."""
    if not context.enabled:
        return [value]
    out = [None] * context.world_size
    dist.all_gather_object(out, value)
    return out


def data_parallel(module: torch.nn.Module, context: DistContext, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun, else ``module`` itself."""
    if not context.enabled:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def shutdown(context: DistContext, finished: bool = True) -> None:
    """Leave the process group. After a run that finished, every rank first waits for the others (rank 0 writes
    the run's last files after the others are done): a rank that tore its process group down and exited while
    rank 0 still used the store was seen to abort in C++ at exit ("terminate called without an active
    exception")."""
    if context.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
