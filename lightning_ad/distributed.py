"""Gathering per-sample results across processes, without duplicates.

``DistributedSampler`` pads every rank to the same length by repeating samples, and
ranks may hold different numbers of rows (or none): rows are gathered with their
dataset indices, padded to a common length for the collective, trimmed, and the
repeats dropped by index.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["world_size", "rank_and_world", "communication_device", "exchange_counts", "padded_all_gather", "gather_rows",
           "gather_objects", "first_occurrences", "end_process_group"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def communication_device(device: torch.device) -> torch.device:
    """Where tensors for a collective must be: ``device``, or the current GPU under NCCL (which holds no CPU tensor)."""
    if dist.get_backend() == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def exchange_counts(count: int, device: torch.device) -> List[int]:
    """Every rank's ``count``, in rank order (collective: every rank calls it)."""
    mine = torch.tensor([count], device=communication_device(device), dtype=torch.long)
    parts = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [int(part) for part in parts]


def padded_all_gather(tensor: Tensor, longest: int, fill: float) -> List[Tensor]:
    """Every rank's ``[n_r, ...]`` rows padded with ``fill`` to ``longest`` rows, in rank order (collective; ``tensor``
    on :func:`communication_device`)."""
    padded = tensor.new_full((longest, *tensor.shape[1:]), fill)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    return parts


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``[n_r, ...]`` rows, in rank order (``n_r`` may differ or be 0).

    Every rank must call it with tensors of the same trailing shape and dtype.
    """
    if world_size() == 1:
        return tensor
    device = communication_device(tensor.device)
    sizes = exchange_counts(int(tensor.shape[0]), device)
    longest = max(sizes)
    if longest == 0:
        return tensor
    dtype = tensor.dtype
    wire = tensor.to(device=device, dtype=torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype)
    parts = padded_all_gather(wire, longest, 0)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(device=tensor.device, dtype=dtype)


def end_process_group() -> None:
    """Leave the process group, if any, once every process is done with it: a barrier, then ``destroy_process_group``.

    A process that exits with its group alive leaves gloo's threads to the interpreter's teardown; one rank leaving
    while another still talks to the store it hosts was seen to abort the other ("terminate called without an
    active exception")."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":  # a process that failed never arrives: give up waiting after a minute
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
        dist.destroy_process_group()


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    if world_size() == 1:
        return [obj]
    out: List[Optional[Any]] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def first_occurrences(index: Tensor) -> Tensor:
    """Positions that keep one row per distinct ``index`` value, ordered by that value."""
    if index.numel() == 0:
        return index.new_zeros(0, dtype=torch.long)
    sorted_index, order = torch.sort(index, stable=True)
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[keep]


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world size)`` of this process (``(0, 1)`` without a process group)."""
    if world_size() == 1:
        return 0, 1
    return dist.get_rank(), dist.get_world_size()
