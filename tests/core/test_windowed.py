"""The position-aware (windowed) pixel search against a brute-force reference: every position, every offset."""

from __future__ import annotations

import pytest
import torch
from conftest import require_real

from lightning_ad.core.windowed import gallery_search, min_window_candidates, window_cells, windowed_knn


def brute_force_windowed(queries, bank, groups, cells, k):
    """Every query position, every offset of the window, every gallery image, in float64: ``[B, Q, k]``."""
    batch, positions, channels = queries.shape
    _, height, width, _ = bank.shape
    q = queries.double().reshape(batch, height, width, channels)
    out = torch.empty((batch, height, width, k), dtype=torch.float64)
    for b in range(batch):
        rows = bank[groups[b]].double()
        for y in range(height):
            for x in range(width):
                y0, y1 = max(0, y - cells), min(height, y + cells + 1)
                x0, x1 = max(0, x - cells), min(width, x + cells + 1)
                cand = ((rows[:, y0:y1, x0:x1] - q[b, y, x]) ** 2).sum(-1).flatten()
                out[b, y, x] = cand.sort().values[:k]
    return out.reshape(batch, positions, k)


def _close(found, expected, queries, bank):
    # float32 rounding relative to the feature norms (the scale of every squared distance here)
    scale = float(queries.double().pow(2).sum(-1).max() + bank.double().pow(2).sum(-1).max())
    assert found.dtype == torch.float32
    assert torch.allclose(found.double(), expected, rtol=1e-6, atol=scale * 2e-7), float((found.double() - expected).abs().max())


@pytest.mark.parametrize("height,width,cells,k,images", [
    (7, 5, 1, 1, 3), (5, 9, 2, 1, 2), (6, 6, 2, 3, 3), (3, 4, 5, 2, 2), (1, 6, 1, 1, 2), (4, 4, 0, 1, 3), (9, 7, 3, 4, 2),
])
def test_equals_brute_force_on_random_features(height, width, cells, k, images):
    gen = torch.Generator().manual_seed(height * 100 + width * 10 + cells)
    bank = torch.randn(6, height, width, 5, generator=gen) * 3 + 1
    queries = torch.randn(2, height * width, 5, generator=gen) * 3 + 1
    groups = torch.stack([torch.randperm(6, generator=gen)[:images] for _ in range(2)])
    found = windowed_knn(queries, bank, groups, cells, k)
    _close(found, brute_force_windowed(queries, bank, groups, cells, k), queries, bank)


def test_every_border_position_sees_only_inside_positions():
    # one gallery image whose features encode their own position: each query sits exactly on one
    # gallery position, far outside the window of most others; the nearest must be the position itself
    # when inside the window, and never a padded position (which would be +inf, or 0 if padded with zeros)
    height, width, cells = 5, 6, 1
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack([ys, xs], dim=-1).float() * 10  # [H, W, 2]
    bank = grid.unsqueeze(0)
    shifted = torch.stack([ys + 2, xs], dim=-1).float() * 10  # every query two rows below its place
    found = windowed_knn(shifted.reshape(1, -1, 2), bank, torch.tensor([[0]]), cells, 1).reshape(height, width)
    # the nearest in-window position is one row below (distance 10^2), except the last row (clamped: 10^2 too)
    expected = brute_force_windowed(shifted.reshape(1, -1, 2), bank, torch.tensor([[0]]), cells, 1).reshape(height, width)
    assert torch.equal(found.double(), expected)
    assert torch.isfinite(found).all() and float(found.min()) == 100.0


def test_window_covering_the_grid_is_the_global_search():
    gen = torch.Generator().manual_seed(3)
    bank = torch.randn(4, 5, 6, 8, generator=gen)
    queries = torch.randn(3, 30, 8, generator=gen)
    groups = torch.tensor([[0, 1], [2, 3], [3, 0]])
    windowed = gallery_search(queries, bank.reshape(4, 30, 8), groups, 2, cells=6, grid=(5, 6))
    exhaustive = gallery_search(queries, bank.reshape(4, 30, 8), groups, 2, cells=None, grid=(5, 6))
    assert torch.allclose(windowed, exhaustive, rtol=1e-5, atol=1e-5)


def test_blocks_do_not_change_a_bit():
    gen = torch.Generator().manual_seed(5)
    bank = torch.randn(7, 8, 8, 16, generator=gen).half()
    queries = torch.randn(2, 64, 16, generator=gen)
    groups = torch.tensor([[0, 3, 5, 6], [1, 2, 4, 0]])
    whole = windowed_knn(queries, bank, groups, 2, 3, chunk_bytes=2**30)
    smallest = windowed_knn(queries, bank, groups, 2, 3, chunk_bytes=4096)  # one gallery image per block
    assert torch.equal(whole, smallest)
    # each item alone, and each item's groups in another order: the same distances, bitwise
    for b in range(2):
        alone = windowed_knn(queries[b : b + 1], bank, groups[b : b + 1].flip(1), 2, 3)
        assert torch.equal(alone, whole[b : b + 1])


@pytest.fixture(scope="module")
def bottle_features():
    """Lite0 features (stride 8, channels last) of 4 bottle training images at 224 x 224."""
    import numpy as np
    from PIL import Image

    from lightning_ad.core.backbones import build_backbone

    folder = require_real("mvtec_ad", "bottle", "train", "good")
    files = sorted(folder.glob("*.png"))[:4]
    images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((224, 224)))).permute(2, 0, 1)
                          for f in files]).float() / 255
    with torch.no_grad():
        pyramid, _ = build_backbone("efficientnet_lite0", (2,), "imagenet")(images)
    return pyramid[0].permute(0, 2, 3, 1).contiguous()


def test_real_features(bottle_features):
    # real Lite0 features of bottle training images (stride 8 level): a test image against 3 others
    level = bottle_features  # [N, H, W, C]
    queries = level[:1].reshape(1, -1, level.shape[-1]).float()
    groups = torch.tensor([[1, 2, 3]])
    for cells, k in ((1, 1), (2, 3)):
        found = windowed_knn(queries, level, groups, cells, k)
        _close(found, brute_force_windowed(queries, level, groups, cells, k), queries, level)


def test_window_cells_and_argument_checks():
    assert [window_cells(8, s) for s in (4, 8, 16)] == [2, 1, 1]
    assert [window_cells(16, s) for s in (4, 8, 16)] == [4, 2, 1]
    assert window_cells(12, 8) == 2 and window_cells(None, 4) is None
    assert min_window_candidates(2, 56, 56, 50) == 50 * 9
    bank, queries, groups = torch.zeros(2, 3, 3, 4), torch.zeros(1, 9, 4), torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match=r"k=19 must lie in \[1, 18\]"):
        windowed_knn(queries, bank, groups, 1, 19)
    # a corner has 2 x 4 candidates: its 9th is +inf, the centre's is finite
    far = windowed_knn(torch.randn(1, 9, 4), torch.randn(2, 3, 3, 4), groups, 1, 9)
    assert torch.isinf(far[0, 0, 8]) and torch.isfinite(far[0, 4]).all()
    with pytest.raises(ValueError, match="do not match"):
        windowed_knn(torch.zeros(1, 8, 4), bank, groups, 1, 1)


def test_traced_search_follows_the_batch_of_its_input():
    # the exported form (gathers instead of strided views; no tail after the last image), traced at batch 1 and
    # run at batch 3, equals the eager search: no window (cells 0), windows of 1 1/2 tiles (1) and of 2 tiles (2, 3)
    import warnings

    gen = torch.Generator().manual_seed(8)
    bank = torch.randn(5, 7, 9, 6, generator=gen)
    queries = torch.randn(3, 63, 6, generator=gen)
    groups = torch.tensor([[0, 1, 2], [3, 4, 0], [2, 2, 1]])
    for cells, k in ((0, 1), (1, 1), (2, 3), (3, 2)):
        class Search(torch.nn.Module):
            def forward(self, q, g):
                return windowed_knn(q, bank, g, cells, k)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(Search(), (queries[:1], groups[:1]), check_trace=False)
        expected = windowed_knn(queries, bank, groups, cells, k)
        assert torch.allclose(traced(queries, groups), expected, rtol=1e-6, atol=1e-6)
        _close(expected, brute_force_windowed(queries, bank, groups, cells, k), queries, bank)


def test_an_empty_batch_gives_empty_distances():
    bank = torch.rand(3, 3, 4, 4)
    none = torch.zeros(0, 2, dtype=torch.long)
    for cells in (None, 1):
        found = gallery_search(torch.zeros(0, 12, 4), bank.reshape(3, 12, 4), none, 2, cells=cells, grid=(3, 4))
        assert found.shape == (0, 12, 2) and found.dtype == torch.float32
