"""Property-based tests (hypothesis): the kNN engine against brute force, the metrics against
straightforward references. Complements tests/core/test_knn.py and tests/core/test_metrics.py (fixed cases,
integer-level scores) with random shapes, odd sizes, offsets, ties and continuous scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from references import ref_auroc, ref_pro

from lightning_ad.core.knn import brute_force_knn, grouped_knn, knn
from lightning_ad.core.metrics import binary_auroc, per_region_overlap

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _points(gen: torch.Generator, shape, scale: float, offset: float, ties: bool) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset
    if ties:  # few distinct values: equal distances and duplicate rows
        x = torch.round(x / scale) * scale
    return x.float()


def _close(got: torch.Tensor, ref: torch.Tensor, norm2: float, rel: float = 1e-5) -> None:
    """Relative 1e-5, with an absolute floor at float32 rounding of the (centred) squared norms."""
    got, ref = got.double(), ref.double()
    tol = rel * ref.abs() + 4e-6 * norm2
    bad = (got - ref).abs() > tol
    assert not bool(bad.any()), f"max error {float((got - ref).abs().max()):.3g}, tolerance {float(tol.min()):.3g}"


def _centred_norm2(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    centre = queries.double().reshape(-1, queries.shape[-1]).mean(0)
    q = (queries.double() - centre).pow(2).sum(-1).max()
    g = (gallery.double() - centre).pow(2).sum(-1).max()
    return float(max(q, g, 1e-12))


shapes = st.tuples(st.integers(1, 37), st.integers(1, 61), st.integers(1, 19))  # Q, G, C (odd sizes included)
scales = st.sampled_from([1e-3, 1.0, 30.0])
offsets = st.sampled_from([0.0, 5.0, 300.0])


@SETTINGS
@given(shape=shapes, kfrac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1), scale=scales, offset=offsets,
       ties=st.booleans(), batched=st.booleans(), small_chunks=st.booleans(), use_exclude=st.booleans())
def test_knn_matches_brute_force(shape, kfrac, seed, scale, offset, ties, batched, small_chunks, use_exclude):
    q, g, c = shape
    if use_exclude:
        assume(g >= 2)
    usable = g - (1 if use_exclude else 0)
    k = 1 + int(kfrac * (usable - 1))
    gen = torch.Generator().manual_seed(seed)
    b = 2 if batched else 1
    queries = _points(gen, (b, q, c), scale, offset, ties)
    gallery = _points(gen, (b, g, c), scale, offset, ties)
    exclude = torch.randint(-1, g, (b, q), generator=gen) if use_exclude else None
    chunk = 4096 if small_chunks else 1 << 22
    result = knn(queries if batched else queries[0], gallery if batched else gallery[0], k, chunk_bytes=chunk,
                 exclude=None if exclude is None else (exclude if batched else exclude[0]))
    distances = result.distances if batched else result.distances[None]
    indices = result.indices if batched else result.indices[None]
    assert distances.shape == indices.shape == (b, q, k)
    for i in range(b):
        gal = gallery[i].clone()
        if exclude is not None:  # the reference: the excluded row moved out of reach
            ref_d = []
            for j in range(q):
                keep = torch.arange(g) != exclude[i, j]
                ref_d.append(brute_force_knn(queries[i, j : j + 1], gal[keep], k).distances[0])
            ref = torch.stack(ref_d)
            assert not bool((indices[i] == exclude[i][:, None]).any())
        else:
            ref = brute_force_knn(queries[i], gal, k).distances
        norm2 = _centred_norm2(queries[i], gal)
        _close(distances[i], ref, norm2)
        assert bool((distances[i][:, 1:] >= distances[i][:, :-1]).all())  # ascending
        # each index is a distinct gallery row whose distance is the one reported
        assert all(len(set(row.tolist())) == k for row in indices[i])
        direct = (queries[i][:, None, :].double() - gal[indices[i]].double()).pow(2).sum(-1)
        _close(distances[i], direct, norm2)


@SETTINGS
@given(b=st.integers(1, 3), q=st.integers(1, 23), n=st.integers(1, 9), p=st.integers(1, 17), c=st.integers(1, 13),
       m=st.integers(1, 4), kfrac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1), scale=scales, offset=offsets,
       ties=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       small_chunks=st.booleans())
def test_grouped_knn_matches_brute_force(b, q, n, p, c, m, kfrac, seed, scale, offset, ties, dtype, small_chunks):
    assume(not (dtype != torch.float32 and offset >= 300.0))  # half precision cannot hold 300 +- 1e-3
    gen = torch.Generator().manual_seed(seed)
    bank = _points(gen, (n, p, c), scale, offset, ties).to(dtype)
    queries = _points(gen, (b, q, c), scale, offset, ties)
    groups = torch.randint(0, n, (b, m), generator=gen)
    k = 1 + int(kfrac * (m * p - 1))
    out = grouped_knn(queries, bank, groups, k, chunk_bytes=4096 if small_chunks else 1 << 22)
    assert out.shape == (b, q, k) and out.dtype == torch.float32
    for i in range(b):
        gallery = bank[groups[i]].reshape(m * p, c).float()  # the stored (rounded) values
        ref = brute_force_knn(queries[i], gallery, k).distances
        _close(out[i], ref, _centred_norm2(queries[i], gallery))


# ---------------------------------------------------------------------- metrics


finite = st.floats(min_value=0.0, max_value=1e30, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@SETTINGS
@given(values=st.lists(st.tuples(finite, st.booleans()), min_size=2, max_size=80), as_float32=st.booleans())
def test_auroc_of_continuous_raw_scores_matches_pair_count(values, as_float32):
    scores = np.array([v for v, _ in values], dtype=np.float32 if as_float32 else np.float64)
    target = np.array([t for _, t in values])
    assume(target.any() and not target.all())
    got = binary_auroc(torch.from_numpy(scores), torch.from_numpy(target)).item()
    assert got == pytest.approx(ref_auroc(scores.astype(np.float64), target), abs=1e-12)
    # raw squared distances are not squashed: a strictly increasing transform changes nothing
    transformed = np.sqrt(scores.astype(np.float64)) * 1e-3 + 7.0
    assume(len(np.unique(transformed)) == len(np.unique(scores)))  # no new ties by float rounding
    assert binary_auroc(torch.from_numpy(transformed), torch.from_numpy(target)).item() == pytest.approx(got, abs=1e-12)
    # the complementary labelling
    assert binary_auroc(torch.from_numpy(scores), torch.from_numpy(~target)).item() == pytest.approx(1.0 - got, abs=1e-12)


@st.composite
def continuous_pro_cases(draw):
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(2, 7)), draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < draw(st.floats(0.1, 0.6))
    assume(masks.any() and not masks.all())
    maps = rng.exponential(draw(st.sampled_from([1e-4, 1.0, 1e4])), (n, h, w))
    maps += masks * draw(st.floats(0, 2)) * maps.mean()  # anomalies somewhat higher
    return maps, masks, draw(st.floats(0.01, 1.0))


@SETTINGS
@given(case=continuous_pro_cases())
def test_pro_of_continuous_maps_matches_reference(case):
    maps, masks, max_fpr = case
    got = per_region_overlap(torch.from_numpy(maps), torch.from_numpy(masks), max_fpr=max_fpr).item()
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(ref_pro(maps, masks, max_fpr), abs=1e-9)


@SETTINGS
@given(case=continuous_pro_cases(), gap=st.floats(1e-3, 1e6))
def test_pro_and_auroc_are_perfect_when_every_anomalous_pixel_scores_higher(case, gap):
    maps, masks, max_fpr = case
    separated = np.where(masks, maps.max() + gap + maps, maps)
    assert per_region_overlap(torch.from_numpy(separated), torch.from_numpy(masks), max_fpr=max_fpr).item() == pytest.approx(1.0, abs=1e-12)
    assert binary_auroc(torch.from_numpy(separated), torch.from_numpy(masks)).item() == 1.0
    assert binary_auroc(torch.from_numpy(-separated), torch.from_numpy(masks)).item() == 0.0
