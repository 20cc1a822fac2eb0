"""Position-aware pixel search: each position's nearest features within a window around the same place.

For a query position ``(y, x)`` of a feature grid, the candidates are the positions
``(y + dy, x + dx)``, ``|dy|, |dx| <= cells``, of each gallery image (for SPADE: the K
nearest training images at the same pyramid level). Positions outside the grid never match.
``cells`` is :func:`window_cells` of a radius in input pixels and the level's stride.

How (one function for eager scoring, a sharded bank and the exported graph; fixed shapes, no
data-dependent control flow):

1. The gallery images are laid out cell-major, ``[cell, image, C + 1]`` on a padded grid, as
   ``[g - c, ||g - c||^2]`` (``c``: the query image's mean feature, which makes the expansion
   below lose less to cancellation); padded cells are ``[0, +inf]``, so they are never chosen.
2. The queries of a row segment of ``tile`` positions share one window: the ``tile + 2 cells``
   cells around it in one gallery row, of every image; the ``2 cells + 1`` query rows that reach
   that gallery row share it too. One batched matrix product per block of windows,
   ``[2 cells + 1 rows x tile positions, C + 1]`` (as ``[-2 (q - c), 1]``) by ``[C + 1, tile +
   2 cells cells x M images]``, gives ``||g||^2 - 2 q.g`` for every pair; a position keeps its
   own ``2 cells + 1`` columns of it (a band of the product).
3. The k smallest per position are chosen there, and their distances are recomputed
   directly as ``sum((q - g)^2)``: equal to a brute-force computation to float32 rounding,
   and bitwise independent of the blocks and of which other images are searched along.

Work per query position: ``M (2 cells + 1)(tile + 2 cells)(C + 1)`` multiply-adds, against
``M H W C`` for the global search. Memory: the gallery laid out once (:func:`gallery_bytes`)
and one block of products at a time (at most ``chunk_bytes``).

Eagerly the windows and bands are views of the product's operands (no copy); in a traced
export the same operands are built by one gather each (ONNX has no strided views; slices and
concatenations would copy several times). The arithmetic is the same.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .knn import DEFAULT_CHUNK_BYTES, exact_distances, grouped_knn
from .tracing import exporting

__all__ = ["window_cells", "windowed_knn", "gallery_search", "min_window_candidates", "gallery_bytes", "window_products"]

#: Query positions of a row segment that share one window (at least ``2 cells``).
_TILE = 4
#: Largest block of products: small enough to stay in cache (measured fastest on a 2-core CPU: 1-2 MiB).
_PRODUCT_BYTES = 2**21


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


class _Layout(NamedTuple):
    """One batch item's padded grid: ``rows`` x ``row`` cells; a window of ``span`` cells every ``tile`` cells."""

    cells: int
    tile: int
    span: int
    row: int
    rows: int

    @property
    def side(self) -> int:
        return 2 * self.cells + 1

    @property
    def cells_per_item(self) -> int:
        return self.rows * self.row

    @property
    def gallery_tail(self) -> int:
        """Padding cells after the last item's gallery (the last windows' reach)."""
        return self.span + self.tile

    @property
    def query_tail(self) -> int:
        """Padding cells after the last item's queries (the last rows' reach)."""
        return 2 * self.cells * self.row


def _layout(cells: int, height: int, width: int) -> _Layout:
    tile = max(_TILE, 2 * cells)
    return _Layout(cells, tile, tile + 2 * cells, tile * math.ceil((width + 2 * cells) / tile), height + 2 * cells)


def window_products(cells: int, height: int, width: int) -> int:
    """Multiply-adds per query position, gallery image and channel of a window of ``cells`` on an ``H x W`` grid:
    the ``2 cells + 1`` query rows of a segment share a window of ``tile + 2 cells`` cells (every position: ``H W``).

    >>> window_products(2, 56, 56), window_products(4, 56, 56)
    (40, 144)
    """
    lay = _layout(cells, height, width)
    return lay.side * lay.span


def gallery_bytes(cells: int, height: int, width: int, channels: int, images: int) -> int:
    """Bytes of the gallery laid out for one query image (``images`` images on the padded grid, float32, ``C + 1``
    channels): the unit callers size their batches in."""
    return 4 * _layout(cells, height, width).cells_per_item * images * (channels + 1)


def _query_rows(queries: Tensor, lay: _Layout, height: int, width: int) -> Tensor:
    """``[count, side * tile, C + 1]``: for the window of each gallery row segment, the ``tile`` query positions of
    each of the ``side`` query rows that reach it, as ``[-2 q, 1]`` (``queries``: centred, ``[B, Q, C]``)."""
    batch, _, channels = queries.shape
    grid = F.pad((queries * -2.0).reshape(batch, height, width, channels), (0, 0, 0, lay.row - width, 2 * lay.cells, 0))
    flat = torch.cat([grid, grid.new_ones(grid.shape[:-1] + (1,))], dim=-1).reshape(-1, channels + 1)
    flat = F.pad(flat, (0, 0, 0, lay.query_tail))  # rows below the last item: [0, 0] (their products are dropped)
    if exporting():  # one gather of whole segments (rows are whole segments), kept symbolic in the batch
        segments = flat.reshape(-1, lay.tile * (channels + 1))
        count = (flat.shape[0] - lay.query_tail) // lay.tile
        index = torch.arange(count)[:, None] + torch.arange(lay.side)[None, :] * (lay.row // lay.tile)  # [count, side]
        return segments.index_select(0, index.reshape(-1)).reshape(-1, lay.side * lay.tile, channels + 1)
    count = batch * lay.cells_per_item // lay.tile
    depth = channels + 1
    return flat.as_strided((count, lay.side, lay.tile, depth), (lay.tile * depth, lay.row * depth, depth, 1)).reshape(
        count, lay.side * lay.tile, depth)


def _gallery_block(bank: Tensor, groups: Tensor, centre: Tensor, lay: _Layout) -> Tensor:
    """``[B * cells_per_item + gallery_tail, M, C + 1]``: the images ``groups`` ``[B, M]`` of ``bank`` ``[N, H, W, C]``
    laid out cell-major on the padded grid as ``[g - centre, ||g - centre||^2]``; padding ``[*, +inf]`` (never chosen).

    Traced, the tail is left out (``[B * cells_per_item, M, C + 1]``): :func:`_windows` reads the last cell, padding,
    in its place."""
    _, height, width, channels = bank.shape
    batch, m = groups.shape
    c = lay.cells
    if exporting():  # functional form, kept symbolic in the batch: one gather straight into the padded layout, no tail
        ys, xs = torch.arange(lay.rows) - c, torch.arange(lay.row) - c
        inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]  # [rows, row]
        where = ys.clamp(0, height - 1)[:, None] * width + xs.clamp(0, width - 1)[None, :]  # padding reads a real row
        index = groups[:, None, :] * (height * width) + where.reshape(1, -1, 1)  # [B, cells_per_item, M]
        feat = bank.reshape(-1, channels).index_select(0, index.reshape(-1)).view(-1, lay.cells_per_item * m, channels)
        feat = feat.float() - centre  # [B, cells_per_item M, C]
        outside = torch.where(inside, torch.zeros(()), torch.full((), float("inf"))).view(1, -1, 1, 1)
        norm = (feat * feat).sum(dim=-1).view(-1, lay.cells_per_item, m, 1) + outside
        return torch.cat([feat.view(-1, lay.cells_per_item, m, channels), norm], dim=-1).view(-1, m, channels + 1)
    rows = bank[groups].to(centre.device)  # [B, M, H, W, C]
    block = rows.new_empty((batch * lay.cells_per_item + lay.gallery_tail, m, channels + 1), dtype=torch.float32)
    grid = block[: batch * lay.cells_per_item].view(batch, lay.rows, lay.row, m, channels + 1)
    for pad in (grid[:, :c], grid[:, c + height :], grid[:, c : c + height, :c], grid[:, c : c + height, c + width :],
                block[batch * lay.cells_per_item :]):
        pad[..., :channels].zero_()
        pad[..., channels].fill_(float("inf"))
    inner = grid[:, c : c + height, c : c + width]  # [B, H, W, m, C + 1]
    torch.sub(rows.permute(0, 2, 3, 1, 4), centre.view(batch, 1, 1, 1, channels), out=inner[..., :channels])
    torch.linalg.vector_norm(inner[..., :channels], dim=-1, out=inner[..., channels])
    inner[..., channels].square_()
    return block


def _windows(block: Tensor, lay: _Layout, count: int) -> Tensor:
    """``[count, span * m, C + 1]``: windows of ``span`` cells every ``tile`` cells of ``block``."""
    _, m, depth = block.shape
    if exporting():  # one gather of cells, kept symbolic in the batch; past the last cell (padding unless cells = 0,
        # when no window reaches past it), that cell again
        last = block.shape[0] - 1
        index = torch.arange(last + 1).view(-1, lay.tile)[:, :1] + torch.arange(lay.span)[None, :]  # [count, span]
        return block.index_select(0, torch.minimum(index, last).reshape(-1)).reshape(-1, lay.span * m, depth)
    return block.as_strided((count, lay.span * m, depth), (lay.tile * m * depth, depth, 1), block.storage_offset())


def _band(product: Tensor, lay: _Layout, m: int) -> Tensor:
    """``[n, tile, side * m]``: each query position's own columns of ``product`` ``[n, tile, span * m]`` (position j
    of a segment keeps window cells ``j .. j + 2 cells``)."""
    n = product.shape[0]
    if exporting():  # one gather: row j's cells j .. j + 2 cells are cells j (span + 1) + s of the row-major product
        index = torch.arange(lay.tile)[:, None] * (lay.span + 1) + torch.arange(lay.side)[None, :]  # [tile, side]
        return product.reshape(n, lay.tile * lay.span, m).index_select(1, index.reshape(-1)).reshape(n, lay.tile, -1)
    return product.as_strided((n, lay.tile, lay.side * m), (lay.tile * lay.span * m, (lay.span + 1) * m, 1),
                              product.storage_offset())


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
        chunk_bytes: bound of one block of products (at most 2 MiB are used, which stays in
            cache); the gallery laid out for the search (:func:`gallery_bytes` per batch item)
            is held once besides.

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
    if batch == 0:  # nothing to search (a process with no images left, an empty split)
        return queries.new_zeros((0, positions, k), dtype=torch.float32)
    lay = _layout(cells, height, width)
    per_row = lay.row // lay.tile
    queries = queries.float()
    centre = queries.mean(dim=1, keepdim=True)  # [B, 1, C]
    lhs = _query_rows(queries - centre, lay, height, width)  # [count, side * tile, C + 1]
    count = lhs.shape[0]
    groups = groups.to(device=bank.device, dtype=torch.long)
    block = _gallery_block(bank, groups, centre, lay)  # [B * cells_per_item + tail, M, C + 1]
    windows = _windows(block, lay, count)  # [count, span * M, C + 1]
    # blocks of windows whose product [n, side * tile, span * M] stays in cache and within chunk_bytes (one when traced)
    if exporting():  # one block, unsliced (ONNX copies at every Slice)
        blocks = [(lhs, windows)]
    else:
        step = max(1, min(chunk_bytes, _PRODUCT_BYTES) // (4 * side * lay.tile * lay.span * images))
        blocks = [(lhs[w0 : w0 + step], windows[w0 : w0 + step]) for w0 in range(0, count, step)]
    kk = min(k, side * images)  # per query row offset; side * kk >= k candidates in all
    values, codes = [], []
    for lhs_block, windows_block in blocks:
        product = torch.bmm(lhs_block, windows_block.transpose(1, 2))
        band = _band(product.view(-1, lay.tile, lay.span * images), lay, images)  # [n * side, tile, side * M]
        value, where = (band.min(dim=-1, keepdim=True) if k == 1 else
                        band.topk(kk, dim=-1, largest=False, sorted=False))
        values.append(value)
        codes.append(where)  # dx * M + image; the query row offset is added below
    value = torch.cat(values).view(count, side, lay.tile, kk)
    code = torch.cat(codes).view(count, side, lay.tile, kk)
    # the query row y at row offset j of a window (gallery padded row r) is r - 2 cells + j: collect each position's
    # candidates over j, whose gallery row is y + cells - j
    value = value.view(batch, lay.rows, per_row, side, lay.tile, -1)
    code = code.view(batch, lay.rows, per_row, side, lay.tile, -1)
    pick = [slice(2 * cells - j, 2 * cells - j + height) for j in range(side)]
    value = torch.cat([value[:, pick[j], :, j] for j in range(side)], dim=-1)  # [B, H, per_row, tile, side * L]
    code = torch.cat([code[:, pick[j], :, j] + j * side * images for j in range(side)], dim=-1)
    value, best = value.topk(k, dim=-1, largest=False, sorted=False)
    code = code.gather(-1, best)
    value = value.reshape(batch, height, lay.row, k)[:, :, :width].reshape(batch, positions, k)
    code = code.reshape(batch, height, lay.row, k)[:, :, :width]
    slot = code % images
    offset = torch.div(code, images, rounding_mode="floor")  # j * side + dx
    ys = torch.arange(height, device=code.device).view(1, height, 1, 1) + cells - torch.div(offset, side, rounding_mode="floor")
    xs = torch.arange(width, device=code.device).view(1, 1, width, 1) + offset % side - cells
    image = groups.to(code.device).gather(1, slot.reshape(batch, -1)).view_as(slot)
    flat = ((image * height + ys.clamp(0, height - 1)) * width + xs.clamp(0, width - 1)).reshape(-1)
    chosen = bank.reshape(-1, channels).index_select(0, flat.to(bank.device)).to(queries.device).float()
    exact = exact_distances(queries, chosen.view(batch, positions, k, channels))
    exact = torch.where(torch.isfinite(value), exact, torch.full_like(exact, float("inf")))
    return exact.sort(dim=-1).values


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
    level = bank.reshape(bank.shape[0], grid[0], grid[1], bank.shape[-1])
    return windowed_knn(queries, level, groups, cells, k, chunk_bytes=chunk_bytes)
