"""Image scores (``image_score``): each against a plain reference, thresholds, scales in the checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import dm
from conftest import make_trainer as _trainer
from references import reference_spade

from lightning_ad import Spade
from lightning_ad.core.spade import IMAGE_SCORES, SpadeModel
from lightning_ad.core.spread import spread_indices
from lightning_ad.errors import ConfigurationError
from lightning_ad.inference import checkpoint as ckpt

K = 3


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(1)
    train = torch.rand(8, 3, 48, 48, generator=gen) * 0.3 + 0.35
    test = torch.rand(3, 3, 48, 48, generator=gen) * 0.3 + 0.35
    test[1, :, 16:26, 16:26] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return train, test


def reference_map_scores(maps: torch.Tensor, q: float):
    """Maximum and mean of the top ceil(q * H * W) pixels of each map, by sorting, in float64."""
    flat = maps.double().flatten(1)
    top = flat.sort(dim=1, descending=True).values[:, : math.ceil(q * flat.shape[1])]
    return flat.max(dim=1).values, top.mean(dim=1)


def reference_scales(model: SpadeModel, train: torch.Tensor):
    """Medians of DN2 and map maxima of each training image scored against a bank of the others."""
    dn2, peaks = [], []
    for i in range(len(train)):
        rest = torch.cat([train[:i], train[i + 1 :]])
        scores, maps = reference_spade(model, rest, train[i : i + 1], K, K, 1, 4.0, model.search_radius)
        dn2.append(float(scores[0]))
        peaks.append(float(maps[0].max()))
    return float(np.median(dn2)), float(np.median(peaks))


@pytest.mark.parametrize("image_score", IMAGE_SCORES)
def test_each_score_matches_a_plain_reference(images, image_score):
    train, test = images
    model = SpadeModel(image_k=K, gallery_k=K, image_score=image_score, image_score_q=0.05)
    model.fit_bank(train)
    out = model(test)
    ref_dn2, ref_maps = reference_spade(model, train, test, K, K, 1, 4.0, model.search_radius)
    ref_max, ref_topq = reference_map_scores(ref_maps, 0.05)
    if image_score == "combined":
        dn2_scale, map_scale = reference_scales(model, train)
        assert float(model.dn2_scale) == pytest.approx(dn2_scale, rel=1e-5)
        assert float(model.map_scale) == pytest.approx(map_scale, rel=1e-4)
        expected = ref_dn2 / dn2_scale + ref_max / map_scale
    else:
        expected = {"dn2": ref_dn2, "max": ref_max, "topq": ref_topq}[image_score]
        assert math.isnan(float(model.dn2_scale))  # learned only for the combined score
    assert torch.allclose(out.image_scores.double(), expected, rtol=1e-4)
    assert int(out.image_scores.argmax()) == 1  # the red patch
    # the pixel maps do not depend on the image score
    plain = SpadeModel(image_k=K, gallery_k=K, backbone_module=model.backbone)
    plain.fit_bank(train)
    assert torch.equal(plain(test).anomaly_maps, out.anomaly_maps)


def test_dn2_is_todays_score_bitwise(images):
    train, test = images
    model = SpadeModel(image_k=K, gallery_k=K, image_score="dn2")
    model.fit_bank(train)
    # today's path: the mean distance of the K nearest pooled vectors, nothing after it
    assert torch.equal(model(test).image_scores, model.nearest_images(model.extract(test).pooled)[0])
    rows = torch.arange(model.bank_size)
    today = model.nearest_images(model.bank.pooled.float(), exclude=rows)[0]
    assert torch.equal(model.leave_one_out_image_scores(), today)
    loo = model.leave_one_out(keep=torch.ones(model.bank_size, dtype=torch.bool))
    assert loo.map_part is None and torch.equal(loo.dn2, today)
    assert torch.equal(loo.maps, model.score_bank(rows).anomaly_maps)


def test_leave_one_out_of_map_scores_equals_scoring_the_bank(images):
    train, _ = images
    model = SpadeModel(image_k=K, gallery_k=K, image_score="topq")
    model.fit_bank(train)
    keep = torch.zeros(model.bank_size, dtype=torch.bool)
    keep[[1, 5]] = True
    done = []
    loo = model.leave_one_out(keep=keep, batch_size=3, progress=done.append)
    assert sum(done) == model.bank_size  # every image's map, for its statistic
    bank = model.score_bank()
    assert torch.allclose(loo.map_part, bank.image_scores) and torch.equal(model.leave_one_out_image_scores(), bank.image_scores)
    assert torch.allclose(loo.maps, bank.anomaly_maps[[1, 5]])


def test_settings_are_checked():
    for kwargs, pattern in [({"image_score": "mean"}, "image_score"), ({"image_score_q": 0.0}, "image_score_q"),
                            ({"image_score_q": 1.5}, "image_score_q")]:
        with pytest.raises(ConfigurationError, match=pattern):
            SpadeModel(weights="random", **kwargs)


@pytest.mark.parametrize("image_score", IMAGE_SCORES)
def test_thresholds_are_finite_for_each_score(tiny_mvtec, tmp_path, image_score):
    # few_shot_below=0: plain leave-one-out on these 9 images (the views of few-shot banks: test_few_shot.py)
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4, image_quantile=0.9, image_score=image_score, few_shot_below=0)
    data = dm(tiny_mvtec)
    _trainer(tmp_path).fit(model, datamodule=data)
    spade = model.model
    assert math.isfinite(model.image_threshold) and model.image_threshold > 0
    assert math.isfinite(model.pixel_threshold) and model.pixel_threshold > 0
    # the image threshold is the quantile of this score's leave-one-out scores of every training image
    loo = spade.score_bank()
    assert model.image_threshold == pytest.approx(float(np.quantile(loo.image_scores.double().numpy(), 0.9)), rel=1e-5)
    # the pixel threshold comes from the same threshold_samples maps whatever the score
    sampled = loo.anomaly_maps[spread_indices(spade.bank_size, 4)]
    assert model.pixel_threshold == pytest.approx(float(np.quantile(sampled.double().numpy(), 0.999)), rel=1e-5)
    results = _trainer(tmp_path).test(model, datamodule=data, verbose=False)[0]
    assert 0 <= results["test/image_f1"] <= 1


def test_combined_scales_are_in_the_checkpoint(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4, image_score="combined")
    data = dm(tiny_mvtec)
    _trainer(tmp_path).fit(model, datamodule=data)
    scales = float(model.model.dn2_scale), float(model.model.map_scale)
    assert all(math.isfinite(s) and s > 0 for s in scales)
    path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert (float(checkpoint["state_dict"]["model.dn2_scale"]), float(checkpoint["state_dict"]["model.map_scale"])) == scales
    assert checkpoint["hyper_parameters"]["image_score"] == "combined"
    loaded = Spade.load_from_checkpoint(path)
    assert (float(loaded.model.dn2_scale), float(loaded.model.map_scale)) == scales
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(images).image_scores, model(images).image_scores)


def test_a_checkpoint_from_before_image_score_was_fitted_with_dn2(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4, image_score="dn2")
    _trainer(tmp_path).fit(model, datamodule=dm(tiny_mvtec))
    path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model.dn2_scale", "model.map_scale"):
        del checkpoint["state_dict"][key]
    for key in ("image_score", "image_score_q"):
        del checkpoint["hyper_parameters"][key]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    saved = ckpt.saved_settings(checkpoint["hyper_parameters"])
    assert saved["image_score"] == "dn2"
    # loaded as dn2 (what the CLI does when --model.image_score is left unset): nothing to recompute
    same = Spade.load_from_checkpoint(old, image_score="dn2")
    assert same._stale_thresholds == [] and math.isnan(float(same.model.dn2_scale))
    # loaded with today's default, its dn2 thresholds are marked stale and recomputed at test time
    loaded = Spade.load_from_checkpoint(old)
    assert loaded.model.image_score == "topq"
    assert loaded._stale_thresholds == ["image_score 'dn2' -> 'topq'"]
