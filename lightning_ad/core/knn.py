"""Exact k-nearest-neighbour search by squared Euclidean distance, in bounded memory.

The full ``queries x gallery`` distance matrix is never held. Distances are
computed block by block with one matrix product per block, using

    ||q - g||^2 = ||q||^2 + (||g||^2 - 2 q.g) = ||q||^2 + [q, 1] . [-2 g, ||g||^2]

so that a block is a single ``bmm`` followed at once by its reduction (min or
top-k), while it is still in cache. Each block holds at most ``chunk_bytes`` of
float32 distances, whatever the gallery size or k. The k selected neighbours
then get their distances recomputed directly as ``sum((q - g)^2)``, which
removes the cancellation error of the expansion: results equal a brute-force
computation to float32 rounding.

Inputs may be float16/bfloat16 (a compact bank); every distance is accumulated
in float32. Everything runs on the device of the inputs.

Shapes: ``B`` batch of independent searches, ``Q`` queries, ``G`` gallery rows,
``C`` channels, ``k`` neighbours. Distances are squared (units of feature^2).

This module knows nothing about images: :func:`grouped_knn` searches, for each
batch item, the union of a few groups of rows of a bank (for SPADE: all
positions of the K nearest training images).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["DEFAULT_CHUNK_BYTES", "POOLED_SLAB", "KnnResult", "exact_distances", "knn", "slab_knn", "grouped_knn", "brute_force_knn"]

#: Default upper bound, in bytes, of one block of float32 distances.
DEFAULT_CHUNK_BYTES = 4 * 2**20

# Queries handled per block; the gallery side of the block fills the rest of the budget.
_QUERY_BLOCK = 256


class KnnResult(NamedTuple):
    """``distances``: ``[..., Q, k]`` squared distances, ascending; ``indices``: ``[..., Q, k]`` gallery rows."""

    distances: Tensor
    indices: Tensor


def _check_chunk(chunk_bytes: int) -> int:
    if not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool) or chunk_bytes < 4096:
        raise ValueError(f"chunk_bytes={chunk_bytes!r}: must be an integer of at least 4096 bytes")
    return chunk_bytes


def _augment_queries(q: Tensor) -> Tensor:
    """``[..., C]`` -> ``[..., C + 1]`` float32 with a trailing 1."""
    q = q.float()
    return torch.cat([q, q.new_ones(q.shape[:-1] + (1,))], dim=-1)


def _augment_gallery(g: Tensor) -> Tensor:
    """``[..., C]`` -> ``[..., C + 1]`` float32: ``[-2 g, ||g||^2]``."""
    g = g.float()
    return torch.cat([g * -2.0, (g * g).sum(dim=-1, keepdim=True)], dim=-1)


def _search(
    queries: Tensor,
    fetch: Callable[[int, int], Tensor],
    num_gallery: int,
    k: int,
    chunk_bytes: int,
    exclude: Optional[Tensor] = None,
    with_indices: bool = True,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The k smallest squared distances ``[B, Q, k]`` (unsorted) and, if asked, their gallery rows.

    ``fetch(start, stop)`` returns gallery rows ``[B, stop - start, C]`` of every
    batch item. ``exclude`` (``[B, Q]``, -1 for none) names one gallery row per
    query that must not be chosen. Queries and gallery are centred on the mean
    query of each batch item first (distances do not change; the expansion then
    loses less to cancellation).
    """
    # block bounds from Python ints: in a traced graph they stay constants (sizes read from a traced input would
    # become run-time values there, moving the slices of a loop whose length was fixed at trace time)
    batch, num_q = int(queries.shape[0]), int(queries.shape[1])
    # One memory layout for every caller, channels outermost (as a backbone's [B, C, Q] comes; no copy then):
    # the reductions below (the mean, the norms) round by layout, and so would every distance.
    queries = queries.float().transpose(1, 2).contiguous().transpose(1, 2)
    centre = queries.mean(dim=1, keepdim=True)  # [B, 1, C]
    qc = queries - centre
    qa = _augment_queries(qc)
    q_norm = (qc * qc).sum(dim=-1, keepdim=True)  # [B, Q, 1]
    q_block = min(num_q, _QUERY_BLOCK)
    g_block = max(1, min(num_gallery, chunk_bytes // (4 * batch * q_block)))
    # the running k smallest of each query block, replaced (never written in place): a traced graph then follows
    # the batch size of its input, not of the example it was traced with
    starts = list(range(0, num_q, q_block))
    best_d = [torch.full_like(q_norm[:, q0 : q0 + q_block], float("inf")).expand(-1, -1, k) for q0 in starts]
    best_i = [torch.zeros_like(d, dtype=torch.long) for d in best_d] if with_indices else None
    fast_min = k == 1 and not with_indices
    for g0 in range(0, num_gallery, g_block):
        g1 = min(num_gallery, g0 + g_block)
        ga_t = _augment_gallery(fetch(g0, g1).float() - centre).transpose(1, 2)  # [B, C + 1, Gc]
        for block_no, q0 in enumerate(starts):
            q1 = min(num_q, q0 + q_block)
            block = torch.bmm(qa[:, q0:q1], ga_t)  # ||g||^2 - 2 q.g, [B, Qc, Gc]
            if exclude is not None:
                ex = exclude[:, q0:q1] - g0
                hit = (ex >= 0) & (ex < g1 - g0)
                if bool(hit.any()):
                    rows = hit.nonzero(as_tuple=True)
                    block[rows[0], rows[1], ex[rows]] = float("inf")
            if fast_min:
                # amin is an order of magnitude faster than min-with-indices on the CPU
                best_d[block_no] = torch.minimum(best_d[block_no], block.amin(dim=-1, keepdim=True))
                continue
            kk = min(k, g1 - g0)
            value, index = block.topk(kk, dim=-1, largest=False, sorted=False)
            cand_d = torch.cat([best_d[block_no], value], dim=-1)
            best_d[block_no], pos = cand_d.topk(k, dim=-1, largest=False, sorted=False)
            if best_i is not None:
                best_i[block_no] = torch.cat([best_i[block_no], index + g0], dim=-1).gather(-1, pos)
    distances = torch.cat(best_d, dim=1)
    return (distances + q_norm).clamp_min_(0.0), None if best_i is None else torch.cat(best_i, dim=1)


def exact_distances(queries: Tensor, neighbours: Tensor) -> Tensor:
    """Squared distances ``[B, Q, k]`` between queries ``[B, Q, C]`` and their rows ``[B, Q, k, C]``."""
    diff = neighbours.float() - queries.float().unsqueeze(2)
    return (diff * diff).sum(dim=-1)


def _sorted(distances: Tensor, indices: Tensor) -> KnnResult:
    if torch.onnx.is_in_onnx_export():  # ONNX has no stable sort; its TopK keeps ties in index order
        distances, order = distances.topk(distances.shape[-1], dim=-1, largest=False, sorted=True)
    else:
        distances, order = distances.sort(dim=-1, stable=True)
    return KnnResult(distances, indices.gather(-1, order))


def _validate(queries: Tensor, gallery_channels: int, k: int, num_gallery: int, what: str) -> None:
    if queries.shape[-1] != gallery_channels:
        raise ValueError(
            f"{what}: queries have {queries.shape[-1]} channels but the gallery has {gallery_channels}"
        )
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{what}: k={k!r} must be a positive integer")
    if k > num_gallery:
        raise ValueError(f"{what}: k={k} is larger than the {num_gallery} rows that can be searched")


def knn(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    exclude: Optional[Tensor] = None,
) -> KnnResult:
    """Exact k nearest gallery rows of every query.

    Args:
        queries: ``[Q, C]`` or ``[B, Q, C]``.
        gallery: ``[G, C]`` (shared) or ``[B, G, C]`` (one gallery per batch item).
        k: neighbours, ``1 <= k <= G`` (``G - 1`` with ``exclude``).
        chunk_bytes: upper bound of one block of float32 distances.
        exclude: optional ``[Q]``/``[B, Q]`` long tensor: a gallery row per query
            that is not a candidate (leave-one-out), ``-1`` for none.

    Returns:
        :class:`KnnResult` with ``[Q, k]`` (or ``[B, Q, k]``) squared distances,
        ascending, and gallery row indices.

    Example:
        >>> q = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> g = torch.tensor([[1.0, 0.0], [3.0, 3.0], [0.0, 2.0]])
        >>> knn(q, g, 2)
        KnnResult(distances=tensor([[ 1.,  4.],
                [ 1., 13.]]), indices=tensor([[0, 2],
                [1, 2]]))
    """
    _check_chunk(chunk_bytes)
    squeeze = queries.ndim == 2
    if squeeze:
        queries = queries.unsqueeze(0)
        if exclude is not None:
            exclude = exclude.unsqueeze(0)
    if queries.ndim != 3:
        raise ValueError(f"knn: queries must be [Q, C] or [B, Q, C], got {tuple(queries.shape)}")
    if gallery.ndim == 2:
        gallery = gallery.unsqueeze(0).expand(queries.shape[0], -1, -1)
    if gallery.ndim != 3 or gallery.shape[0] != queries.shape[0]:
        raise ValueError(
            f"knn: gallery must be [G, C] or [B, G, C] matching queries {tuple(queries.shape)}, "
            f"got {tuple(gallery.shape)}"
        )
    num_gallery = gallery.shape[1]
    usable = num_gallery - (1 if exclude is not None else 0)
    _validate(queries, gallery.shape[-1], k, usable, "knn")
    if exclude is not None:
        exclude = exclude.to(device=queries.device, dtype=torch.long)
    _, index = _search(queries, lambda a, b: gallery[:, a:b], num_gallery, k, chunk_bytes, exclude)
    assert index is not None
    batch = torch.arange(queries.shape[0], device=queries.device).view(-1, 1, 1)
    result = _sorted(exact_distances(queries, gallery[batch, index]), index)
    if squeeze:
        result = KnnResult(result.distances[0], result.indices[0])
    return result


#: Rows of the bank's pooled vectors that the image-level kNN searches at once (its float32 working
#: copy: 4096 x 1281 x 4 bytes, 21 MB); a bank of 100,000 would otherwise be copied whole.
POOLED_SLAB = 4096


def slab_knn(queries: Tensor, gallery: Tensor, k: int, chunk_bytes: int, exclude: Optional[Tensor] = None,
             slab: int = POOLED_SLAB) -> KnnResult:
    """:func:`~lightning_ad.core.knn.knn` of queries ``[Q, D]`` over gallery ``[G, D]`` in balanced slabs of at most
    ``slab`` rows, merged: the k nearest of a union are among the k nearest of its parts. ``exclude``
    ``[Q]``: a gallery row per query left out. A gallery of at most ``slab`` rows is one :func:`knn` call."""
    count = gallery.shape[0]
    if count <= slab:
        return knn(queries, gallery, k, chunk_bytes=chunk_bytes, exclude=exclude)
    size = -(-count // -(-count // slab))
    distances, indices = [], []
    for start in range(0, count, size):
        stop = min(count, start + size)
        local = None
        if exclude is not None:
            local = exclude.to(queries.device, torch.long) - start
            local = torch.where((local >= 0) & (local < stop - start), local, torch.full_like(local, -1))
        found = knn(queries, gallery[start:stop], min(k, stop - start - (local is not None)), chunk_bytes=chunk_bytes,
                    exclude=local)
        distances.append(found.distances)
        indices.append(found.indices + start)
    merged, order = torch.cat(distances, dim=-1).sort(dim=-1, stable=True)
    return KnnResult(merged[:, :k], torch.cat(indices, dim=-1).gather(-1, order[:, :k]))


def grouped_knn(
    queries: Tensor,
    bank: Tensor,
    groups: Tensor,
    k: int,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """Squared distances of each batch item's queries to their k nearest rows of its groups of a bank.

    Args:
        queries: ``[B, Q, C]``.
        bank: ``[N, P, C]``: N groups of P rows (for SPADE: N training images, P positions).
        groups: ``[B, M]`` long: the M groups (indices into N) searched for batch item b;
            the gallery of item b is ``bank[groups[b]].reshape(M * P, C)``.
        k: neighbours, ``1 <= k <= M * P``.
        chunk_bytes: upper bound of one block of float32 distances.

    Returns:
        ``[B, Q, k]`` float32 squared distances, ascending. They come from the
        expansion on centred data (no index is tracked: ``k = 1`` then reduces each
        block with ``amin``, the fastest reduction), equal to a brute-force
        computation to float32 rounding relative to the feature norms.

    Example:
        >>> bank = torch.tensor([[[0.0], [10.0]], [[4.0], [5.0]], [[100.0], [101.0]]])
        >>> grouped_knn(torch.tensor([[[4.5]], [[99.0]]]), bank, torch.tensor([[0, 1], [2, 0]]), 2)
        tensor([[[0.2500, 0.2500]],
        <BLANKLINE>
                [[1.0000, 4.0000]]])
    """
    _check_chunk(chunk_bytes)
    if queries.ndim != 3 or bank.ndim != 3 or groups.ndim != 2 or groups.shape[0] != queries.shape[0]:
        raise ValueError(
            "grouped_knn: expected queries [B, Q, C], bank [N, P, C], groups [B, M]; got "
            f"{tuple(queries.shape)}, {tuple(bank.shape)}, {tuple(groups.shape)}"
        )
    num_groups, per_group, channels = (int(v) for v in bank.shape)
    groups = groups.to(device=bank.device, dtype=torch.long)
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise ValueError(f"grouped_knn: group indices must lie in [0, {num_groups})")
    num_gallery = int(groups.shape[1]) * per_group
    _validate(queries, channels, k, num_gallery, "grouped_knn")
    if int(queries.shape[0]) == 0:  # nothing to search (a process with no images left, an empty split)
        return queries.new_zeros((0, queries.shape[1], k), dtype=torch.float32)

    def fetch(start: int, stop: int) -> Tensor:
        # gallery rows [start, stop) of every item: whole groups sliced by position
        first, last = start // per_group, (stop - 1) // per_group
        parts = []
        for slot in range(first, last + 1):
            lo = max(start - slot * per_group, 0)
            hi = min(stop - slot * per_group, per_group)
            parts.append(bank[groups[:, slot], lo:hi])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    distances, _ = _search(queries, fetch, num_gallery, k, chunk_bytes, with_indices=False)
    return distances.sort(dim=-1).values


def brute_force_knn(queries: Tensor, gallery: Tensor, k: int) -> KnnResult:
    """Reference: full float64 difference-based distance matrix (small inputs only).

    ``queries`` ``[Q, C]``, ``gallery`` ``[G, C]`` -> :class:`KnnResult` ``[Q, k]``.
    """
    diff = queries.double().unsqueeze(1) - gallery.double().unsqueeze(0)
    dist = (diff * diff).sum(-1)
    values, index = dist.topk(k, dim=-1, largest=False, sorted=True)
    return KnnResult(values.float(), index)
