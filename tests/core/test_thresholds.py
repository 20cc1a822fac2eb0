"""Thresholds from normal images (leave-one-out), F1-optimal thresholds on a validation split, normalised scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dm
from conftest import make_trainer as trainer
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_ad import Spade
from lightning_ad.core.metrics import binary_auroc, f1_optimal_threshold
from lightning_ad.core.spread import spread_indices
from lightning_ad.core.thresholds import normalize_scores, quantile_threshold


@given(st.lists(st.floats(0, 1e4, allow_nan=False, width=32), min_size=2, max_size=50), st.floats(1e-3, 1e4))
@settings(max_examples=60, deadline=None)
def test_normalized_scores_are_monotone_with_threshold_at_half(values, threshold):
    # scores are float32 (as the model produces them): every distinct one stays distinct
    raw = torch.tensor(sorted(values), dtype=torch.float32)
    norm = normalize_scores(raw, threshold)
    assert ((norm >= 0) & (norm < 1)).all()
    assert (torch.diff(norm) >= 0).all()
    exact = raw.double()
    above, below = exact > threshold, exact < threshold
    # the threshold sits at 0.5 (a score within float64 rounding of it may map to exactly 0.5)
    assert (above <= (norm >= 0.5)).all() and ((norm > 0.5) <= above).all()
    assert (below <= (norm <= 0.5)).all() and ((norm < 0.5) <= below).all()
    strictly = torch.diff(raw) > 0
    assert (torch.diff(norm)[strictly] > 0).all()


def test_normalization_keeps_auroc():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(200, generator=gen) * 5000
    labels = (torch.rand(200, generator=gen) < 0.3).long()
    assert float(binary_auroc(normalize_scores(scores, 1234.5), labels)) == float(binary_auroc(scores, labels))
    assert normalize_scores(torch.tensor([2.0]), 2.0).item() == 0.5
    assert torch.isnan(normalize_scores(torch.tensor([1.0]), float("nan"))).all()


def test_quantile_matches_numpy():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(1)) * 100
    for q in (0.5, 0.95, 0.999, 1.0):
        assert quantile_threshold(values, q) == pytest.approx(float(np.quantile(values.double().numpy(), q)))
    with pytest.raises(ValueError, match="quantile"):
        quantile_threshold(values, 0.0)


def test_fit_sets_thresholds_from_leave_one_out_scores(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, image_quantile=0.9, pixel_quantile=0.99, threshold_samples=4, image_score="dn2",
                  few_shot_below=0)
    trainer(tmp_path).fit(model, datamodule=dm(tiny_mvtec))
    spade = model.model
    rows = torch.arange(spade.bank_size)
    loo_image, _ = spade.nearest_images(spade.bank.pooled.float(), exclude=rows)
    loo_maps = spade.score_bank(rows[spread_indices(spade.bank_size, 4)]).anomaly_maps
    assert model.image_threshold == pytest.approx(float(np.quantile(loo_image.double().numpy(), 0.9)), rel=1e-6)
    assert model.pixel_threshold == pytest.approx(float(np.quantile(loo_maps.double().numpy(), 0.99)), rel=1e-5)


def test_user_thresholds_override_and_are_logged(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=2, image_threshold=123.0, pixel_threshold=456.0)
    t = trainer(tmp_path)
    data = dm(tiny_mvtec)
    t.fit(model, datamodule=data)
    logged = t.test(model, datamodule=data, verbose=False)[0]
    assert logged["test/image_threshold"] == 123.0 and logged["test/pixel_threshold"] == 456.0
    # the thresholds in use live in one place, the model's buffers, and the record says where they come from
    assert (float(model.model.image_threshold), float(model.model.pixel_threshold)) == (123.0, 456.0)
    assert model.threshold_source["image"] == {"source": "set by hand", "value": 123.0}
    assert model.threshold_source["pixel"] == {"source": "set by hand", "value": 456.0}


def test_f1_thresholds_from_a_validation_split(tiny_mvtec, tmp_path):
    data = dm(tiny_mvtec, val_split=0.5)
    model = Spade(image_k=3, gallery_k=3, threshold_method="f1")
    t = trainer(tmp_path)
    t.fit(model, datamodule=data)
    results = model.val_results
    assert results is not None and len(results.label) == len(data.val_dataset)
    expected_image = float(f1_optimal_threshold(results.score, results.label)[0])
    expected_pixel = float(f1_optimal_threshold(results.anomaly_map, results.mask)[0])
    assert model.image_threshold == pytest.approx(expected_image)
    assert model.pixel_threshold == pytest.approx(expected_pixel)
    # the validation images are not in the test set
    val_paths = {s.path for s in data.val_dataset.samples}
    data.setup("test")
    assert val_paths.isdisjoint({s.path for s in data.test_dataset.samples})
    # the thresholds are in the checkpoint
    ckpt = next(tmp_path.rglob("*.ckpt"))
    loaded = Spade.load_from_checkpoint(ckpt)
    assert loaded.image_threshold == pytest.approx(expected_image)
