"""Position-aware pixel search: each position's nearest features within a window around the same place.

For a query position ``(y, x)`` of a feature grid, the candidates are the positions
``(y + dy, x + dx)``, ``|dy|, |dx| <= cells``, of each gallery image (for SPADE: the K
nearest training images at the same pyramid level). Positions outside the grid never match:
the gallery is padded with ``+inf``. ``cells`` is :func:`window_cells` of a radius in input
pixels and the level's stride.

Per offset this is an elementwise squared difference summed over the channels and a
minimum (or the k smallest) over the gallery images: fixed shapes and no data-dependent
control flow, so eager scoring, a sharded bank (per-position minima, all-reduced) and an
exported graph run this very function. Distances are computed directly as
``sum((q - g)^2)`` (no expansion, no cancellation): equal to a brute-force computation to
float32 rounding, and bitwise independent of which other images share a block.

Work per query position: ``M (2 cells + 1)^2 C`` against ``M H W C`` for the global search
(at stride 4 on a 56 x 56 grid with ``cells = 2``: 1/125 of it).

Layout trick: queries are laid on the gallery's padded grid (row length ``W + 2 cells``),
flattened, so that every offset is one contiguous slice of the flattened gallery.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .knn import DEFAULT_CHUNK_BYTES, grouped_knn

__all__ = ["window_cells", "windowed_knn", "gallery_search", "min_window_candidates", "padded_length", "image_block_bytes"]


def window_cells(radius: Optional[float], stride: int) -> Optional[int]:
    """Cells in each direction searched at a level of ``stride`` pixels for a radius in input pixels:
    ``ceil(radius / stride)``; ``None`` (the global search) for ``radius=None``.

    >>> [window_cells(8, s) for s in (4, 8, 16)], window_cells(None, 4), window_cells(0, 4)
    ([2, 1, 1], None, 0)
    """
    if radius is None:
        return None
    return int(math.ceil(float(radius) / int(stride) - 1e-9))


def min_window_candidates(cells: int, height: int, width: int, images: int) -> int:
    """Fewest candidates any position has (a corner): ``images (min(cells, H - 1) + 1) (min(cells, W - 1) + 1)``."""
    return images * (min(cells, height - 1) + 1) * (min(cells, width - 1) + 1)


def padded_length(cells: int, height: int, width: int) -> int:
    """Positions of one image's flattened gallery grid: padded by ``cells`` on every side, plus ``2 cells`` at the end
    (the last offset's slice runs past the last row)."""
    return (height + 2 * cells) * (width + 2 * cells) + 2 * cells


def image_block_bytes(cells: int, height: int, width: int, channels: int) -> int:
    """Bytes of one gallery image's float32 difference block for one query image: the unit the blocks are sized in."""
    return 4 * channels * padded_length(cells, height, width)


def windowed_knn(
    queries: Tensor,
    bank: Tensor,
    groups: Tensor,
    cells: int,
    k: int,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """Squared distances of each query position to its k nearest features in a window of its groups.

    Args:
        queries: ``[B, Q, C]`` with ``Q = H W`` (row-major positions of the grid).
        bank: ``[N, H, W, C]``: N images' feature grids (channels last, any float dtype).
        groups: ``[B, M]`` long: the images (indices into N) searched for batch item b.
        cells: window half-width in grid cells (``0``: the same position only).
        k: neighbours, at most ``M (2 cells + 1)^2``; a position with fewer candidates (near a
            border: at least :func:`min_window_candidates`) gets ``+inf`` in its last slots.
        chunk_bytes: upper bound of one float32 difference block (at least one gallery image
            for the whole batch: callers split large batches).

    Returns:
        ``[B, Q, k]`` float32 squared distances, ascending.

    Example:
        >>> bank = torch.tensor([[[[0.0], [5.0], [9.0]]]])          # one image, a 1 x 3 grid
        >>> q = torch.tensor([[[5.0], [0.0], [9.5]]])              # [B=1, Q=3, C=1]
        >>> [windowed_knn(q, bank, torch.tensor([[0]]), cells, 1).flatten().tolist() for cells in (0, 1)]
        [[25.0, 25.0, 0.25], [0.0, 0.0, 0.25]]
    """
    if queries.ndim != 3 or bank.ndim != 4 or groups.ndim != 2 or groups.shape[0] != queries.shape[0]:
        raise ValueError(
            "windowed_knn: expected queries [B, Q, C], bank [N, H, W, C], groups [B, M]; got "
            f"{tuple(queries.shape)}, {tuple(bank.shape)}, {tuple(groups.shape)}"
        )
    batch, positions, channels = queries.shape
    _, height, width, bank_channels = bank.shape
    images = groups.shape[1]
    if positions != height * width or channels != bank_channels:
        raise ValueError(f"windowed_knn: queries {tuple(queries.shape)} do not match the bank's grids {tuple(bank.shape)}")
    if not isinstance(cells, int) or cells < 0:
        raise ValueError(f"windowed_knn: cells={cells!r} must be a non-negative integer")
    side = 2 * cells + 1
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= images * side * side:
        raise ValueError(f"windowed_knn: k={k!r} must lie in [1, {images * side * side}] (the candidates of a window)")
    row = width + 2 * cells  # padded row length
    span = height * row  # query slots on the padded grid (the last 2 cells of each row are unused)
    # queries: [B, C, H, W] -> slots y * row + x of the padded grid
    grid = queries.float().reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    flat_q = F.pad(grid, (0, 2 * cells)).reshape(batch, 1, channels, span)
    groups = groups.to(device=bank.device, dtype=torch.long)
    step = max(1, min(images, chunk_bytes // (batch * image_block_bytes(cells, height, width, channels))))
    best = None
    for m0 in range(0, images, step):
        rows = bank[groups[:, m0 : m0 + step]].to(device=queries.device, dtype=torch.float32)  # [B, m, H, W, C]
        m = rows.shape[1]
        gallery = F.pad(rows.permute(0, 1, 4, 2, 3), (cells, cells, cells, cells), value=float("inf"))
        gallery = F.pad(gallery.reshape(batch, m, channels, -1), (0, 2 * cells), value=float("inf"))  # [B, m, C, padded]
        for dy in range(side):
            for dx in range(side):
                start = dy * row + dx
                found = (gallery[..., start : start + span] - flat_q).square_().sum(dim=2)  # [B, m, span]
                if k == 1:
                    found = found.amin(dim=1, keepdim=True)
                    best = found if best is None else torch.minimum(best, found)
                else:
                    pool = found if best is None else torch.cat([best, found], dim=1)
                    best = pool.topk(min(k, pool.shape[1]), dim=1, largest=False, sorted=False).values
    assert best is not None
    best = best.reshape(batch, -1, height, row)[..., :width].reshape(batch, -1, positions)  # [B, k, Q]
    return best.transpose(1, 2).sort(dim=-1).values


def gallery_search(
    queries: Tensor,
    bank: Tensor,
    groups: Tensor,
    k: int,
    *,
    cells: Optional[int],
    grid: Tuple[int, int],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """The pixel search of one level: ``[B, Q, k]`` ascending squared distances of queries ``[B, Q, C]``
    to the rows of their ``groups`` ``[B, M]`` of ``bank`` ``[N, H W, C]``: every position
    (:func:`~lightning_ad.core.knn.grouped_knn`, ``cells=None``, the paper's) or a window
    (:func:`windowed_knn`). ``grid`` is ``(H, W)``."""
    if cells is None:
        return grouped_knn(queries, bank, groups, k, chunk_bytes=chunk_bytes)
    return windowed_knn(queries, bank.reshape(bank.shape[0], grid[0], grid[1], bank.shape[-1]), groups, cells, k,
                        chunk_bytes=chunk_bytes)
