"""The search over a bank sharded across processes: each process searches the rows it holds, the candidates are combined."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..distributed import communication_device, exchange_counts, padded_all_gather, world_size
from .windowed import gallery_search

__all__ = ["sharded_grouped_knn", "drain_sharded"]


_DONE = -1


def sharded_grouped_knn(queries: Optional[Tensor], neighbours: Optional[Tensor], bank: Any, slot: int, k: int,
                        gallery_k: int, chunk_bytes: int, device: torch.device, cells: Optional[int] = None
                        ) -> Optional[Tensor]:
    """:func:`~lightning_ad.core.windowed.gallery_search` (every position, or a window of ``cells``) over a bank
    sharded across processes: ``[B, Q, k]`` distances, ascending.

    Every process passes its own queries ``[B, Q, C]`` (B may be 0) and nearest bank rows
    ``[B, gallery_k]``; both are gathered, each process searches the rows it holds for every
    query of every process, and the candidates are combined: the minimum by all-reduce when
    ``k = 1``, the k smallest of everyone's k smallest otherwise. Exact: the k nearest of a
    union are among the k nearest of its parts. Collective: every process calls it once per
    level and batch; a process with nothing left calls it with ``queries=None`` (see
    :func:`drain_sharded`), and then gets ``None`` back when every process is done.
    """
    height, width = bank.level_shape(slot)
    channels = bank.channels[slot]
    positions = height * width
    comm = communication_device(device)
    counts = exchange_counts(_DONE if queries is None else int(queries.shape[0]), comm)
    if all(c == _DONE for c in counts):
        return None
    longest = max(max(counts), 1)
    if queries is None or neighbours is None:
        queries = torch.zeros((0, positions, channels), device=comm)
        neighbours = torch.zeros((0, gallery_k), dtype=torch.long, device=comm)
    all_q = torch.cat(padded_all_gather(queries.to(comm, torch.float32), longest, 0.0))
    all_n = torch.cat(padded_all_gather(neighbours.to(comm, torch.long), longest, -1))
    held = bank.held().to(comm)
    valid = all_n >= 0
    mine = valid & held[all_n.clamp_min(0)]
    result = torch.full((all_q.shape[0], positions, k), float("inf"), device=comm)
    counts_held = mine.sum(dim=1)
    for m in sorted(set(counts_held.tolist()) - {0}):
        items = (counts_held == m).nonzero().flatten()
        groups = all_n[items][mine[items]].view(len(items), m)  # each item's held rows, slot order kept
        gallery, local = bank.gallery(slot, groups, device=comm)
        kk = min(k, m * positions if cells is None else m * (2 * cells + 1) ** 2)
        found = gallery_search(all_q[items], gallery, local, kk, cells=cells, grid=(height, width), chunk_bytes=chunk_bytes)
        result[items, :, :kk] = found
    if k == 1:
        dist.all_reduce(result, op=dist.ReduceOp.MIN)
        combined = result
    else:
        parts = [torch.empty_like(result) for _ in range(world_size())]
        dist.all_gather(parts, result.contiguous())
        combined = torch.cat(parts, dim=-1).topk(k, dim=-1, largest=False, sorted=True).values
    rank = dist.get_rank()
    own = counts[rank] if counts[rank] != _DONE else 0
    return combined[rank * longest : rank * longest + own].to(device)


def drain_sharded(bank: Any, level_cells: Sequence[Optional[int]], gallery_k: int, kappa: int, chunk_bytes: int,
                  device: torch.device) -> None:
    """Join the other processes' remaining sharded searches until every process is done (see above);
    ``level_cells``: each level's window (``None``: every position)."""
    if world_size() == 1 or bank.sharding != "sharded":
        return
    while True:
        for slot, cells in enumerate(level_cells):
            if sharded_grouped_knn(None, None, bank, slot, kappa, gallery_k, chunk_bytes, device, cells) is None:
                return
