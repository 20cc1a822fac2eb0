"""Gathering per-sample results across processes, without duplicates.

``DistributedSampler`` pads every rank to the same length by repeating samples, and
ranks may hold different numbers of rows (or none): rows are gathered with their
dataset indices, padded to a common length for the collective, trimmed, and the
repeats dropped by index.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["world_size", "gather_rows", "gather_objects", "first_occurrences"]


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


def gather_features(
    parts: Sequence[Tuple[Tensor, Tensor, Sequence[Tensor], Tuple[int, int]]], device: torch.device
) -> Tuple[Tensor, Any, Tuple[int, int]]:
    """Every process's training features, one row per distinct id, ordered by it.

    Args:
        parts: this process's batches as ``(ids [B], pooled [B, D], pyramid [B, C_l, H_l, W_l]
            per level, (H, W) of the input images)``; may be empty.
        device: where the result goes.

    Returns:
        ``(ids [N], Features, (H, W))``. Collective: every process calls it. A process
        without batches joins with empty rows shaped after another process's.
    """
    from .spade import Features

    shapes = (parts[0][3], [tuple(level.shape[1:]) for level in parts[0][2]], parts[0][1].shape[1]) if parts else None
    known = next((s for s in gather_objects(shapes) if s is not None), None)
    if known is None:
        from .errors import ConfigurationError

        raise ConfigurationError("fit saw no training batch: the bank cannot be built (check limit_train_batches).")
    image_size, level_shapes, pooled_dim = known
    if parts:
        index = torch.cat([p[0] for p in parts]).to(device)
        pooled = torch.cat([p[1] for p in parts]).float()
        pyramid = [torch.cat([p[2][i] for p in parts]).float() for i in range(len(level_shapes))]
    else:
        index = torch.zeros(0, dtype=torch.long, device=device)
        pooled = torch.zeros(0, pooled_dim, device=device)
        pyramid = [torch.zeros((0, *shape), device=device) for shape in level_shapes]
    index, pooled, pyramid = gather_rows(index), gather_rows(pooled), [gather_rows(level) for level in pyramid]
    keep = first_occurrences(index)
    return index[keep], Features([level[keep] for level in pyramid], pooled[keep]), tuple(image_size)
