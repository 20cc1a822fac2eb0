"""The kNN engine against a brute-force float64 reference."""

from __future__ import annotations

import pytest
import torch

from lightning_ad.core import knn as knn_module
from lightning_ad.core.knn import brute_force_knn, grouped_knn, knn


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-6)).max())


@pytest.mark.parametrize(
    "q,g,c,k",
    [(1, 1, 1, 1), (1, 5, 3, 5), (7, 13, 3, 4), (33, 257, 24, 1), (129, 1000, 40, 3), (5, 9, 112, 9)],
)
@pytest.mark.parametrize("chunk", [4096, 1 << 22])
def test_knn_matches_brute_force(q, g, c, k, chunk):
    gen = torch.Generator().manual_seed(q * 1000 + g)
    queries = torch.randn(q, c, generator=gen) * 3 + 1
    gallery = torch.randn(g, c, generator=gen) * 3 + 1
    result = knn(queries, gallery, k, chunk_bytes=chunk)
    ref = brute_force_knn(queries, gallery, k)
    assert result.distances.shape == (q, k)
    assert _rel(result.distances, ref.distances) < 1e-5
    assert torch.equal(result.indices, ref.indices)


def test_knn_large_magnitudes_and_exclusion():
    gen = torch.Generator().manual_seed(3)
    points = torch.rand(40, 16, generator=gen) * 1000
    result = knn(points, points, 3, exclude=torch.arange(40), chunk_bytes=4096)
    ref = brute_force_knn(points, points, 4)  # the first neighbour is the point itself
    assert _rel(result.distances, ref.distances[:, 1:]) < 1e-5
    assert torch.equal(result.indices, ref.indices[:, 1:])
    assert not (result.indices == torch.arange(40)[:, None]).any()


def test_knn_batched_galleries():
    gen = torch.Generator().manual_seed(5)
    queries = torch.randn(3, 11, 6, generator=gen)
    gallery = torch.randn(3, 17, 6, generator=gen)
    result = knn(queries, gallery, 2, chunk_bytes=4096)
    for b in range(3):
        ref = brute_force_knn(queries[b], gallery[b], 2)
        assert _rel(result.distances[b], ref.distances) < 1e-5
        assert torch.equal(result.indices[b], ref.indices)


@pytest.mark.parametrize("kappa", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_grouped_knn_matches_brute_force(kappa, dtype):
    gen = torch.Generator().manual_seed(kappa)
    bank = (torch.rand(10, 49, 8, generator=gen) * 4).to(dtype)  # 10 images of 7x7 positions
    groups = torch.stack([torch.randperm(10, generator=gen)[:3] for _ in range(4)])
    queries = torch.rand(4, 23, 8, generator=gen) * 4
    out = grouped_knn(queries, bank, groups, kappa, chunk_bytes=4096)
    assert out.shape == (4, 23, kappa)
    for b in range(4):
        gallery = bank[groups[b]].reshape(-1, 8).float()  # the stored (rounded) values
        ref = brute_force_knn(queries[b], gallery, kappa)
        assert _rel(out[b], ref.distances) < 1e-5


def test_grouped_knn_block_memory_is_bounded(monkeypatch):
    """No distance block exceeds chunk_bytes, whatever the gallery size."""
    sizes = []
    real_bmm = torch.bmm

    def spy(a, b):
        out = real_bmm(a, b)
        sizes.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(knn_module.torch, "bmm", spy)
    gen = torch.Generator().manual_seed(0)
    bank = torch.rand(20, 400, 4, generator=gen)
    queries = torch.rand(2, 400, 4, generator=gen)
    groups = torch.arange(20).repeat(2, 1)
    grouped_knn(queries, bank, groups, 1, chunk_bytes=64 * 1024)
    assert sizes and max(sizes) <= 64 * 1024
    assert len(sizes) > 20  # the 8000-row gallery was really cut into blocks


def test_knn_argument_errors():
    with pytest.raises(ValueError, match="k=3 is larger"):
        knn(torch.zeros(2, 3), torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match="channels"):
        knn(torch.zeros(2, 3), torch.zeros(2, 4), 1)
    with pytest.raises(ValueError, match="chunk_bytes"):
        knn(torch.zeros(2, 3), torch.zeros(2, 3), 1, chunk_bytes=10)
    with pytest.raises(ValueError, match="group indices"):
        grouped_knn(torch.zeros(1, 2, 3), torch.zeros(4, 5, 3), torch.tensor([[4]]), 1)


def test_traced_grouped_search_follows_the_batch_of_its_input():
    # traced at batch 1, run at batch 3, with several gallery blocks: the block bounds are constants of the
    # graph (a bound read from the traced input's size once moved the slices and skipped most of the gallery)
    import warnings

    gen = torch.Generator().manual_seed(7)
    bank = torch.rand(6, 300, 8, generator=gen)
    queries = torch.rand(3, 300, 8, generator=gen)
    groups = torch.tensor([[0, 2, 4], [1, 3, 5], [5, 0, 1]])

    class Search(torch.nn.Module):
        def forward(self, q, g):
            return grouped_knn(q, bank, g, 2, chunk_bytes=4096 * 4)  # blocks of 64 gallery rows for one item

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Search(), (queries[:1], groups[:1]), check_trace=False)
    expected = grouped_knn(queries, bank, groups, 2, chunk_bytes=4096 * 4)
    # other blocks round the expansion differently (float32 rounding); a skipped block would be far off
    assert torch.allclose(traced(queries, groups), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(expected, grouped_knn(queries, bank, groups, 2, chunk_bytes=2**30), rtol=1e-5, atol=1e-6)
