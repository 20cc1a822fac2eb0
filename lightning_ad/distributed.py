"""Gathering per-sample results across processes, without duplicates.

``DistributedSampler`` pads every rank to the same length by repeating samples, and
ranks may hold different numbers of rows (or none): rows are gathered with their
dataset indices, padded to a common length for the collective, trimmed, and the
repeats dropped by index.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["world_size", "rank_and_world", "gather_rows", "gather_objects", "first_occurrences"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``[n_r, ...]`` rows, in rank order (``n_r`` may differ or be 0).

    Every rank must call it with tensors of the same trailing shape and dtype.
    """
    if world_size() == 1:
        return tensor
    device = tensor.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    count = torch.tensor([tensor.shape[0]], device=device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    if longest == 0:
        return tensor
    dtype = tensor.dtype
    wire = tensor.to(device=device, dtype=torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype)
    padded = wire.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = wire
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(device=tensor.device, dtype=dtype)


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
