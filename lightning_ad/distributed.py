"""Gathering per-sample results across processes, without duplicates.

``DistributedSampler`` pads every rank to the same length by repeating samples, and
ranks may hold different numbers of rows (or none): rows are gathered with their
dataset indices, padded to a common length for the collective, trimmed, and the
repeats dropped by index.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["scoring_rows", "world_size", "rank_and_world", "gather_rows", "gather_objects", "first_occurrences", "finish_stream",
           "sharded_grouped_knn", "drain_sharded", "BankCollector"]


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


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world size)`` of this process (``(0, 1)`` without a process group)."""
    if world_size() == 1:
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def finish_stream(writer: Any, bank: Any) -> None:
    """Complete a streamed (disk or sharded) bank from every process's :class:`~lightning_ad.bank.BankWriter`.

    Ids and pooled vectors (small) are gathered to every process, the sampler's padding repeats
    dropped and the rows ordered by id; the file manifests are gathered in rank order; the
    pyramid rows never travel. Collective: every process calls it.
    """
    from .errors import ConfigurationError

    shard = writer.close()
    info = (writer.image_size, writer.shapes) if writer.shapes is not None else None
    known = next((s for s in gather_objects(info) if s is not None), None)
    if known is None:
        raise ConfigurationError("fit saw no training batch: the bank cannot be built (check limit_train_batches).")
    image_size, shapes = known
    device = bank.index.device
    index = gather_rows(shard["index"].to(device))
    pooled = gather_rows(writer.local_pooled(bank.pooled_dim).to(device))
    keep = first_occurrences(index)
    shards = gather_objects(shard)
    rank, processes = rank_and_world()
    bank.attach(index[keep], pooled[keep], tuple(image_size), bank.make_manifest(shards, shapes),
                own=writer.kept_levels() if bank.sharding == "sharded" else None, rank=rank, processes=processes,
                verify=False)


_DONE = -1


def _exchange(count: int, device: torch.device) -> List[int]:
    """Every rank's ``count``, in rank order."""
    mine = torch.tensor([count], device=device, dtype=torch.long)
    parts = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [int(part) for part in parts]


def _padded_gather(tensor: Tensor, longest: int, fill: float) -> Tensor:
    padded = tensor.new_full((longest, *tensor.shape[1:]), fill)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat(parts)


def _comm_device(device: torch.device) -> torch.device:
    if dist.get_backend() == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def sharded_grouped_knn(queries: Optional[Tensor], neighbours: Optional[Tensor], bank: Any, position: int, k: int,
                        gallery_k: int, chunk_bytes: int, device: torch.device, cells: Optional[int] = None
                        ) -> Optional[Tensor]:
    """:func:`~lightning_ad.windowed.gallery_search` (every position, or a window of ``cells``) over a bank
    sharded across processes: ``[B, Q, k]`` distances, ascending.

    Every process passes its own queries ``[B, Q, C]`` (B may be 0) and nearest bank rows
    ``[B, gallery_k]``; both are gathered, each process searches the rows it holds for every
    query of every process, and the candidates are combined: the minimum by all-reduce when
    ``k = 1``, the k smallest of everyone's k smallest otherwise. Exact: the k nearest of a
    union are among the k nearest of its parts. Collective: every process calls it once per
    level and batch; a process with nothing left calls it with ``queries=None`` (see
    :func:`drain_sharded`), and then gets ``None`` back when every process is done.
    """
    from .windowed import gallery_search

    height, width = bank.level_shape(position)
    channels = bank.channels[position]
    positions = height * width
    comm = _comm_device(device)
    counts = _exchange(_DONE if queries is None else int(queries.shape[0]), comm)
    if all(c == _DONE for c in counts):
        return None
    longest = max(max(counts), 1)
    if queries is None or neighbours is None:
        queries = torch.zeros((0, positions, channels), device=comm)
        neighbours = torch.zeros((0, gallery_k), dtype=torch.long, device=comm)
    all_q = _padded_gather(queries.to(comm, torch.float32), longest, 0.0)
    all_n = _padded_gather(neighbours.to(comm, torch.long), longest, -1)
    held = bank.held().to(comm)
    valid = all_n >= 0
    mine = valid & held[all_n.clamp_min(0)]
    result = torch.full((all_q.shape[0], positions, k), float("inf"), device=comm)
    counts_held = mine.sum(dim=1)
    for m in sorted(set(counts_held.tolist()) - {0}):
        items = (counts_held == m).nonzero().flatten()
        groups = all_n[items][mine[items]].view(len(items), m)  # each item's held rows, slot order kept
        gallery, local = bank.gallery(position, groups, device=comm)
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
        for position, cells in enumerate(level_cells):
            if sharded_grouped_knn(None, None, bank, position, kappa, gallery_k, chunk_bytes, device, cells) is None:
                return


class BankCollector:
    """One process's training features during fit, made into ``model``'s bank by :meth:`finish` (collective).

    An in-memory replicated bank keeps the batches and gathers them (:func:`gather_features`);
    a disk or sharded bank streams them to files (:func:`finish_stream`) in a new folder
    ``bank-<id>`` of ``folder`` (default: the trainer's log folder), so that no fit overwrites
    the files of an earlier checkpoint.
    """

    def __init__(self, model: Any, folder: Optional[str], trainer: Any = None) -> None:
        self.model, self.writer = model, None
        if trainer is not None:  # a collective (log_dir): every process gets rank 0's folder
            folder = folder or trainer.log_dir or trainer.default_root_dir
        if model.bank.streams:
            name = "bank-" + uuid.uuid4().hex[:8]
            name = trainer.strategy.broadcast(name) if trainer is not None else name
            rank = trainer.global_rank if trainer is not None else 0
            self.writer = model.bank.writer(os.path.join(folder or model.bank.directory or ".", name), rank)
        self.parts: List[Any] = []

    def append(self, index: Tensor, features: Any, image_size: Tuple[int, int]) -> None:
        if self.writer is not None:
            self.writer.append(index, features.pooled, features.pyramid, image_size)
        else:
            self.parts.append((index, features.pooled, features.pyramid, image_size))

    def finish(self) -> None:
        if self.writer is not None:
            self.model.reset_bank()
            finish_stream(self.writer, self.model.bank)
        else:
            index, features, image_size = gather_features(self.parts, self.model.bank.index.device)
            self.model.set_bank(features, image_size, index)
        self.parts, self.writer = [], None


def scoring_rows(model: Any, rank: int) -> Tensor:
    """The training-image rows this process scores leave-one-out: every P-th row, or, with a sharded
    bank, the rows it holds (only their pyramids are here)."""
    _, processes = rank_and_world()
    if model.bank.sharding == "sharded" and processes > 1:
        return model.bank.held().cpu().nonzero().flatten()
    return torch.arange(model.bank_size)[rank::processes]


