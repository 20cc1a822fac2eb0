"""Tests of ``lightning_ad.core.metrics`` against small, independent brute-force references."""

from __future__ import annotations

import doctest
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
import torchmetrics
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from references import ref_auroc, ref_pro
from torchmetrics.classification import BinaryAUROC

import lightning_ad.core.metrics as M


# --------------------------------------------------------------------------- #
# Independent references (deliberately naive)
# --------------------------------------------------------------------------- #
def ref_f1_optimal(scores, target):
    """Try every distinct score as a threshold; exact F1 with fractions; largest threshold wins ties."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(target).astype(bool).ravel()
    best = None
    for thr in sorted(set(s.tolist()), reverse=True):
        pred = s >= thr
        tp = int((pred & t).sum())
        fp = int((pred & ~t).sum())
        fn = int((~pred & t).sum())
        f1 = Fraction(2 * tp, 2 * tp + fp + fn)
        if best is None or f1 > best[1]:
            best = (thr, f1, Fraction(tp, tp + fp), Fraction(tp, tp + fn))
    return best


def random_case(rng, n, n_levels=None, scale=1.0):
    """Random scores (optionally with many ties) and a target with both classes."""
    if n_levels is None:
        scores = rng.random(n) * scale
    else:
        scores = rng.integers(0, n_levels, n).astype(np.float64) * scale
    target = rng.random(n) < 0.4
    target[0], target[1] = True, False
    return torch.from_numpy(scores), torch.from_numpy(target)


def random_maps(rng, n_images=3, size=8, n_levels=None, scale=1.0):
    """3 images: two with random blobs (2-3 regions), one fully normal."""
    masks = np.zeros((n_images, size, size), dtype=bool)
    masks[0, 1:3, 1:4] = True
    masks[0, 5:8, 6:8] = True
    masks[1, 0:2, 0:2] = True
    masks[1, 3, 3] = True
    masks[1, 4, 4] = True  # diagonal neighbour of (3, 3): same 8-connected region
    masks[1, 6:8, 1:6] = True
    masks[:2] &= rng.random((2, size, size)) < 0.85  # ragged shapes, sometimes splits regions
    if n_levels is None:
        maps = rng.random(masks.shape) * scale
    else:
        maps = rng.integers(0, n_levels, masks.shape).astype(np.float64) * scale
    maps = maps + 0.3 * scale * masks  # informative but imperfect
    return torch.from_numpy(maps), torch.from_numpy(masks)


# --------------------------------------------------------------------------- #
# AUROC / ROC
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n_levels", "scale"), [(None, 1.0), (None, 4000.0), (5, 1000.0), (3, 1e-3), (40, 123.0)])
def test_auroc_matches_pair_count(seed, n_levels, scale):
    rng = np.random.default_rng(seed)
    scores, target = random_case(rng, int(rng.integers(2, 300)), n_levels, scale)
    got = M.binary_auroc(scores, target)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(ref_auroc(scores, target), abs=1e-12)


def test_auroc_known_values_and_ties():
    assert M.binary_auroc(torch.tensor([1.0, 2.0]), torch.tensor([0, 1])).item() == 1.0
    assert M.binary_auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 0])).item() == 0.0
    assert M.binary_auroc(torch.tensor([7.0, 7.0, 7.0]), torch.tensor([1, 0, 0])).item() == 0.5
    # one tie between a positive and a negative out of 2x2 pairs
    scores = torch.tensor([1200.0, 4800.0, 3500.0, 4800.0])
    assert M.binary_auroc(scores, torch.tensor([0, 0, 1, 1])).item() == 0.625


def test_auroc_accepts_shapes_dtypes_and_arrays():
    rng = np.random.default_rng(1)
    scores, target = random_case(rng, 60, 7, 10.0)
    expected = ref_auroc(scores, target)
    for s, t in [
        (scores.reshape(3, 4, 5), target.reshape(3, 4, 5)),
        (scores.float(), target.long()),
        (scores.to(torch.int64), target.to(torch.uint8)),
        (scores, target.double()),
        (scores.numpy(), target.numpy()),
    ]:
        assert M.binary_auroc(s, t).item() == pytest.approx(expected, abs=1e-12)


def test_auroc_is_trapezoid_of_roc():
    rng = np.random.default_rng(2)
    scores, target = random_case(rng, 200, 15, 300.0)
    fpr, tpr, _ = M.binary_roc(scores, target)
    assert M.binary_auroc(scores, target).item() == pytest.approx(torch.trapezoid(tpr, fpr).item(), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_auroc_matches_torchmetrics_on_min_max_scaled_scores(seed):
    rng = np.random.default_rng(seed)
    scores, target = random_case(rng, 500, 50, 97.0)  # many ties, exactly representable after scaling
    scaled = (scores - scores.min()) / (scores.max() - scores.min())
    reference = BinaryAUROC()(scaled.float(), target.long())
    assert M.binary_auroc(scores, target).item() == pytest.approx(reference.item(), abs=1e-6)


def test_torchmetrics_auroc_degenerates_on_raw_distances():
    """Why we have our own AUROC: torchmetrics squashes scores outside [0, 1] with a sigmoid."""
    rng = np.random.default_rng(0)
    normal = torch.from_numpy(rng.uniform(1000.0, 3000.0, 200))
    anomalous = torch.from_numpy(rng.uniform(3000.0, 5000.0, 50))
    scores = torch.cat([normal, anomalous]).float()
    target = torch.cat([torch.zeros(200), torch.ones(50)]).long()
    assert M.binary_auroc(scores, target).item() == 1.0  # perfectly separated
    squashed = BinaryAUROC()(scores, target).item()
    assert squashed == pytest.approx(0.5)  # sigmoid(>=1000) == 1.0 for all: one big tie
    # the same scores in [0, 1] are fine for torchmetrics: only our raw-score handling differs
    assert BinaryAUROC()(scores / 5000.0, target).item() == pytest.approx(1.0)


def test_roc_curve_points():
    scores = torch.tensor([0.5, 4000.0, 35.0, 4000.0, 35.0])
    target = torch.tensor([0, 1, 0, 1, 1])
    fpr, tpr, thr = M.binary_roc(scores, target)
    assert thr.tolist() == [math.inf, 4000.0, 35.0, 0.5]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == pytest.approx([0.0, 2 / 3, 1.0, 1.0])
    assert fpr.dtype == tpr.dtype == thr.dtype == torch.float64


@pytest.mark.parametrize("seed", range(3))
def test_roc_matches_brute_force_rates(seed):
    rng = np.random.default_rng(seed)
    scores, target = random_case(rng, 120, 9, 1e4)
    fpr, tpr, thr = M.binary_roc(scores, target)
    s, t = scores.numpy(), target.numpy()
    distinct = sorted(set(s.tolist()), reverse=True)
    assert thr[1:].tolist() == distinct
    for k, value in enumerate(distinct, start=1):
        assert fpr[k].item() == pytest.approx(((s >= value) & ~t).sum() / (~t).sum(), abs=1e-15)
        assert tpr[k].item() == pytest.approx(((s >= value) & t).sum() / t.sum(), abs=1e-15)


# --------------------------------------------------------------------------- #
# PRO
# --------------------------------------------------------------------------- #
def _row(scores, mask):
    """One 1 x W image."""
    return torch.tensor([[scores]], dtype=torch.float64), torch.tensor([[mask]])


@pytest.mark.parametrize(
    ("max_fpr", "expected"),
    [(1.0, 0.75), (0.5, 0.5), (0.2, 0.25), (1 / 3, 0.25)],
)
def test_pro_hand_computed(max_fpr, expected):
    # regions A = pixels {0, 1} (size 2) and B = {4} (size 1); normal pixels 2, 3, 5.
    # curve: (0,0) (0,1/4) (1/3,1/4) (1/3,3/4) (1/3,1) (2/3,1) (1,1)
    maps, masks = _row([6, 3, 5, 2, 4, 1], [1, 1, 0, 0, 1, 0])
    assert M.per_region_overlap(maps, masks, max_fpr=max_fpr).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("max_fpr", "expected"), [(1.0, 5 / 6), (1 / 6, 0.375)])
def test_pro_hand_computed_with_tie_between_classes(max_fpr, expected):
    # the tie at 5 (normal pixel 2, region B) gives a diagonal segment (0,1/4) -> (1/3,3/4)
    maps, masks = _row([6, 3, 5, 2, 5, 1], [1, 1, 0, 0, 1, 0])
    assert M.per_region_overlap(maps, masks, max_fpr=max_fpr).item() == pytest.approx(expected, abs=1e-12)


def test_pro_uses_8_connectivity():
    # pixels (0,0), (1,1), (1,2) are one 8-connected region (two 4-connected ones)
    masks = torch.tensor([[[1, 0, 0], [0, 1, 1], [0, 0, 0]]])
    maps = torch.tensor([[[10.0, 1.0, 2.0], [3.0, 0.0, 0.0], [4.0, 5.0, 6.0]]])
    # one region, 1/3 of it detected before any false positive: area = 1/3 (4-connectivity: 1/2)
    assert M.per_region_overlap(maps, masks, max_fpr=1.0).item() == pytest.approx(1 / 3, abs=1e-12)


def test_pro_regions_never_span_images():
    masks = torch.zeros(2, 3, 3, dtype=torch.long)
    masks[0, 2, 0] = 1  # last row of image 0 ...
    masks[1, 0, 0:3] = 1  # ... "touches" the first row of image 1 in a stacked volume
    maps = torch.arange(18, dtype=torch.float64).reshape(2, 3, 3) + 1.0
    maps[0, 2, 0] = 100.0
    maps[1, 0, 0:3] = 0.0
    # two regions: (1 + 0) / 2 detected before any false positive -> 1/2 (merged: 1/4)
    assert M.per_region_overlap(maps, masks, max_fpr=1.0).item() == pytest.approx(0.5, abs=1e-12)


def test_pro_perfect_and_worst():
    rng = np.random.default_rng(0)
    maps, masks = random_maps(rng)
    perfect = masks.double() * 10.0 + torch.from_numpy(rng.random(masks.shape))
    assert M.per_region_overlap(perfect, masks, max_fpr=0.3).item() == pytest.approx(1.0)
    assert M.per_region_overlap(-perfect, masks, max_fpr=0.3).item() == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_fpr", [0.01, 0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize(("n_levels", "scale"), [(None, 1.0), (6, 1000.0)])
def test_pro_matches_reference(seed, max_fpr, n_levels, scale):
    rng = np.random.default_rng(seed)
    maps, masks = random_maps(rng, n_levels=n_levels, scale=scale)
    got = M.per_region_overlap(maps, masks, max_fpr=max_fpr)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(ref_pro(maps, masks, max_fpr), abs=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_pro_invariant_to_monotone_rescale(seed):
    rng = np.random.default_rng(seed)
    maps, masks = random_maps(rng, n_levels=None if seed else 5)
    for max_fpr in (0.1, 0.3):
        a = M.per_region_overlap(maps, masks, max_fpr=max_fpr)
        b = M.per_region_overlap(maps * 1000 + 5, masks, max_fpr=max_fpr)
        assert a.item() == b.item()


def test_pro_accepts_channel_dim_and_dtypes():
    rng = np.random.default_rng(3)
    maps, masks = random_maps(rng)
    expected = M.per_region_overlap(maps, masks).item()
    assert M.per_region_overlap(maps[:, None], masks[:, None]).item() == expected
    assert M.per_region_overlap(maps, masks.float()).item() == expected
    assert M.per_region_overlap(maps.numpy(), masks.numpy()).item() == expected
    assert M.per_region_overlap(maps.float(), masks.to(torch.uint8)).item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- #
# F1 / precision / recall
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(8))
def test_f1_optimal_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores, target = random_case(rng, int(rng.integers(2, 200)), [None, 4, 20][seed % 3], 250.0)
    thr, f1, precision, recall = M.f1_optimal_threshold(scores, target)
    ref_thr, ref_f1, ref_p, ref_r = ref_f1_optimal(scores, target)
    assert thr.item() == ref_thr
    assert f1.item() == pytest.approx(float(ref_f1), abs=1e-12)
    assert precision.item() == pytest.approx(float(ref_p), abs=1e-12)
    assert recall.item() == pytest.approx(float(ref_r), abs=1e-12)
    # consistent with precision_recall_f1 at the returned threshold
    p, r, f = M.precision_recall_f1(scores, target, thr)
    assert (p.item(), r.item(), f.item()) == pytest.approx((precision.item(), recall.item(), f1.item()), abs=1e-12)


def test_f1_optimal_hand_example_and_single_class_positive():
    scores = torch.tensor([10.0, 250.0, 40.0, 900.0, 300.0])
    target = torch.tensor([0, 1, 0, 1, 0])
    thr, f1, p, r = M.f1_optimal_threshold(scores, target)
    assert (thr.item(), f1.item(), p.item(), r.item()) == pytest.approx((250.0, 0.8, 2 / 3, 1.0))
    # without normal samples the best is to flag everything
    thr, f1, p, r = M.f1_optimal_threshold(torch.tensor([3.0, 1.0, 2.0]), torch.ones(3))
    assert (thr.item(), f1.item(), p.item(), r.item()) == (1.0, 1.0, 1.0, 1.0)
    # largest threshold among equally good ones: F1(>= 9) = F1(>= 3) = 2/3
    thr, f1, _, _ = M.f1_optimal_threshold(torch.tensor([9.0, 5.0, 4.0, 3.0, 1.0]), torch.tensor([1, 0, 0, 1, 0]))
    assert thr.item() == 9.0 and f1.item() == pytest.approx(2 / 3)


def test_precision_recall_f1_hand_example():
    scores = torch.tensor([10.0, 250.0, 40.0, 900.0, 300.0])
    target = torch.tensor([0, 1, 0, 1, 0])
    # >= 250: predicted {250, 900, 300}: TP 2, FP 1, FN 0 (threshold is inclusive)
    assert [v.item() for v in M.precision_recall_f1(scores, target, 250.0)] == pytest.approx([2 / 3, 1.0, 0.8])
    # >= 300: {900, 300}: TP 1, FP 1, FN 1
    assert [v.item() for v in M.precision_recall_f1(scores, target, torch.tensor(300.0))] == pytest.approx([0.5] * 3)
    # nothing predicted: precision undefined -> 0
    assert [v.item() for v in M.precision_recall_f1(scores, target, 1e9)] == [0.0, 0.0, 0.0]
    assert [v.item() for v in M.precision_recall_f1(scores, target, math.inf)] == [0.0, 0.0, 0.0]
    # no anomalous sample: recall undefined -> 0, precision 0 (all predictions false)
    assert [v.item() for v in M.precision_recall_f1(scores, torch.zeros(5), 0.0)] == [0.0, 0.0, 0.0]
    # everything predicted
    assert [v.item() for v in M.precision_recall_f1(scores, target, -math.inf)] == pytest.approx([0.4, 1.0, 4 / 7])
    out = M.precision_recall_f1(scores, target, 250.0)
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in out)


def test_precision_recall_f1_compares_in_float64():
    # 0.1 (float64) is below float32(0.1): the float32 score must count as >= threshold
    scores = torch.tensor([0.1, 0.0], dtype=torch.float32)
    p, r, f = M.precision_recall_f1(scores, torch.tensor([1, 0]), 0.1)
    assert (p.item(), r.item(), f.item()) == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- #
# Property-based tests
# --------------------------------------------------------------------------- #
_scales = st.sampled_from([1e-3, 1.0, 37.0, 5000.0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    levels=st.lists(st.integers(0, 12), min_size=2, max_size=60),
    labels=st.lists(st.booleans(), min_size=60, max_size=60),
    scale=_scales,
)
def test_auroc_property(levels, labels, scale):
    target = np.array(labels[: len(levels)])
    assume(target.any() and not target.all())
    scores = torch.tensor(levels, dtype=torch.float64) * scale
    got = M.binary_auroc(scores, torch.from_numpy(target)).item()
    assert got == pytest.approx(ref_auroc(scores, target), abs=1e-12)
    fpr, tpr, _ = M.binary_roc(scores, torch.from_numpy(target))
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(got, abs=1e-12)


@st.composite
def pro_cases(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    cells = n * h * w
    masks = np.array(draw(st.lists(st.booleans(), min_size=cells, max_size=cells))).reshape(n, h, w)
    assume(masks.any() and not masks.all())
    levels = np.array(draw(st.lists(st.integers(0, 8), min_size=cells, max_size=cells)), dtype=np.float64)
    maps = levels.reshape(n, h, w) * draw(_scales)
    max_fpr = draw(st.sampled_from([0.05, 0.1, 0.3, 0.5, 1.0]) | st.floats(0.01, 1.0))
    return maps, masks, max_fpr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=pro_cases())
def test_pro_property(case):
    maps, masks, max_fpr = case
    got = M.per_region_overlap(torch.from_numpy(maps), torch.from_numpy(masks), max_fpr=max_fpr).item()
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(ref_pro(maps, masks, max_fpr), abs=1e-10)


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
GOOD_S = torch.tensor([0.5, 2.0, 3.0])
GOOD_T = torch.tensor([0, 1, 1])


@pytest.mark.parametrize("fn", [M.binary_auroc, M.binary_roc, M.f1_optimal_threshold])
def test_binary_input_errors(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(GOOD_S, GOOD_T[:2])
    with pytest.raises(ValueError, match="binary"):
        fn(GOOD_S, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="binary"):
        fn(GOOD_S, torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([0.5, float("nan"), 3.0]), GOOD_T)
    with pytest.raises(ValueError, match="finite"):
        fn(torch.tensor([0.5, float("inf"), 3.0]), GOOD_T)
    with pytest.raises(ValueError, match="empty"):
        fn(torch.tensor([]), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="dtype"):
        fn(torch.tensor([True, False, True]), GOOD_T)
    with pytest.raises(ValueError, match="no positive .* undefined"):
        fn(GOOD_S, torch.zeros(3))


@pytest.mark.parametrize("fn", [M.binary_auroc, M.binary_roc])
def test_binary_missing_negative_class(fn):
    with pytest.raises(ValueError, match="no negative .* undefined"):
        fn(GOOD_S, torch.ones(3, dtype=torch.bool))


def test_precision_recall_f1_errors():
    with pytest.raises(ValueError, match="same shape"):
        M.precision_recall_f1(GOOD_S, GOOD_T[:2], 1.0)
    with pytest.raises(ValueError, match="NaN"):
        M.precision_recall_f1(GOOD_S, GOOD_T, float("nan"))
    with pytest.raises(ValueError, match="scalar"):
        M.precision_recall_f1(GOOD_S, GOOD_T, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        M.precision_recall_f1(torch.tensor([0.5, -float("inf"), 3.0]), GOOD_T, 1.0)


def test_pro_errors():
    maps = torch.rand(2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, 1, 1] = 1
    with pytest.raises(ValueError, match="no anomalous .* undefined"):
        M.per_region_overlap(maps, torch.zeros_like(masks))
    with pytest.raises(ValueError, match="no normal .* undefined"):
        M.per_region_overlap(maps, torch.ones_like(masks))
    with pytest.raises(ValueError, match="same shape"):
        M.per_region_overlap(maps, masks[:1])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        M.per_region_overlap(maps.reshape(-1), masks.reshape(-1))
    with pytest.raises(ValueError, match="binary"):
        M.per_region_overlap(maps, masks * 255)
    with pytest.raises(ValueError, match="NaN"):
        M.per_region_overlap(maps.masked_fill(masks.bool(), float("nan")), masks)
    for bad in (0, 0.0, -0.1, 1.5, float("nan"), "0.3", None, True):
        with pytest.raises(ValueError, match="max_fpr"):
            M.per_region_overlap(maps, masks, max_fpr=bad)


# --------------------------------------------------------------------------- #
# torchmetrics classes
# --------------------------------------------------------------------------- #
def test_metric_class_attributes():
    for cls in (M.AUROC, M.PRO):
        assert issubclass(cls, torchmetrics.Metric)
        assert cls.is_differentiable is False
        assert cls.higher_is_better is True
        assert cls.full_state_update is False


def test_auroc_metric_batches_equal_functional():
    rng = np.random.default_rng(0)
    scores, target = random_case(rng, 400, 30, 2500.0)
    metric = M.AUROC()
    for s, t in zip(scores.split(97), target.split(97)):
        metric.update(s.reshape(-1, 1), t.reshape(-1, 1))  # any shape is flattened
    assert torch.equal(metric.compute(), M.binary_auroc(scores, target))
    metric.reset()
    metric.update(scores[:10], target[:10])
    assert metric.compute().item() == pytest.approx(ref_auroc(scores[:10], target[:10]), abs=1e-12)


def test_pro_metric_batches_equal_functional():
    rng = np.random.default_rng(1)
    maps, masks = random_maps(rng, n_images=5)
    metric = M.PRO(max_fpr=0.2)
    metric.update(maps[:2], masks[:2])
    metric.update(maps[2:3, None], masks[2:3, None].float())  # [B, 1, H, W] accepted
    metric.update(maps[3:], masks[3:])
    expected = M.per_region_overlap(maps, masks, max_fpr=0.2)
    assert torch.equal(metric.compute(), expected)
    assert expected.item() == pytest.approx(ref_pro(maps, masks, 0.2), abs=1e-10)


def test_metric_forward_returns_batch_value_and_accumulates():
    rng = np.random.default_rng(4)
    scores, target = random_case(rng, 80, 8, 700.0)
    target[40], target[41] = True, False  # both classes in each half
    metric = M.AUROC()
    batch_value = metric(scores[40:], target[40:])
    assert torch.equal(batch_value, M.binary_auroc(scores[40:], target[40:]))
    metric(scores[:40], target[:40])
    assert torch.equal(metric.compute(), M.binary_auroc(scores, target))


def test_metric_merge_state_concatenates():
    rng = np.random.default_rng(2)
    maps, masks = random_maps(rng, n_images=4)
    a, b = M.PRO(max_fpr=0.3), M.PRO(max_fpr=0.3)
    a.update(maps[:2], masks[:2])
    b.update(maps[2:], masks[2:])
    a.merge_state(b)
    assert torch.equal(a.compute(), M.per_region_overlap(maps, masks, max_fpr=0.3))

    scores, target = random_case(rng, 100, 10, 50.0)
    a, b = M.AUROC(), M.AUROC()
    a.update(scores[:30], target[:30])
    b.update(scores[30:], target[30:])
    a.merge_state(b)
    assert torch.equal(a.compute(), M.binary_auroc(scores, target))


def test_metric_simulated_distributed_gather():
    """Two identical 'processes': states are gathered with cat; duplicating all data changes nothing."""

    def fake_all_gather(tensor, group=None):
        return [tensor, tensor.clone()]

    kwargs = {"dist_sync_fn": fake_all_gather, "distributed_available_fn": lambda: True}
    rng = np.random.default_rng(3)
    maps, masks = random_maps(rng)
    pro = M.PRO(max_fpr=0.3, **kwargs)
    pro.update(maps[:1], masks[:1])
    pro.update(maps[1:], masks[1:])
    assert pro.compute().item() == pytest.approx(M.per_region_overlap(maps, masks).item(), abs=1e-12)

    scores, target = random_case(rng, 50, 6, 9.0)
    auroc = M.AUROC(**kwargs)
    auroc.update(scores[:20], target[:20])
    auroc.update(scores[20:], target[20:])
    assert auroc.compute().item() == pytest.approx(ref_auroc(scores, target), abs=1e-12)


def test_metric_class_errors():
    with pytest.raises(ValueError, match="max_fpr"):
        M.PRO(max_fpr=0.0)
    with pytest.raises(ValueError, match="max_fpr"):
        M.PRO(max_fpr=2)
    auroc = M.AUROC()
    with pytest.raises(ValueError, match="same shape"):
        auroc.update(torch.rand(4), torch.zeros(5))
    with pytest.raises(ValueError, match="binary"):
        auroc.update(torch.rand(4), torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="NaN"):
        auroc.update(torch.tensor([float("nan")]), torch.tensor([1]))
    for empty in (auroc, M.PRO()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
            with pytest.raises(ValueError, match="without data"):
                empty.compute()
    auroc.update(torch.rand(3), torch.zeros(3))
    with pytest.raises(ValueError, match="no positive .* undefined"):
        auroc.compute()

    pro = M.PRO()
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        pro.update(torch.rand(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        pro.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 5))
    pro.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="same spatial size"):
        pro.update(torch.rand(2, 5, 5), torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="no anomalous .* undefined"):
        pro.compute()


# --------------------------------------------------------------------------- #
# Doctests
# --------------------------------------------------------------------------- #
def test_doctests():
    import importlib

    attempted = 0
    for name in ("roc", "f1", "pro", "classes"):
        module = importlib.import_module(f"{M.__name__}.{name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, name
        attempted += result.attempted
    assert attempted >= 10
