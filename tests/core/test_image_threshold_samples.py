"""``image_threshold_samples``: a map-based image score maps only that many training images at fit.

The image threshold (and the combined score's scales) come from the leave-one-out scores of
those evenly spread images; the pixel threshold keeps ``threshold_samples``; banks no larger
than the cap are unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import dm, make_mvtec, make_trainer

from lightning_ad import Spade
from lightning_ad.core.spread import spread_indices
from lightning_ad.errors import ConfigurationError
from lightning_ad.inference import checkpoint as ckpt
from lightning_ad.lightning import module as module_mod

N_TRAIN = 9


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data"), n_train=N_TRAIN, n_good=1, n_bad=1)


def fit(root, tmp_path, monkeypatch=None, **kwargs):
    """A fitted Spade on the 9 training images, the log lines of fit, and the rows mapped ``[M]``."""
    options = dict(image_k=2, gallery_k=2, threshold_samples=2, image_quantile=0.9, pixel_quantile=0.99, few_shot_below=0)
    model = Spade(**{**options, **kwargs})
    lines, mapped = [], []
    if monkeypatch is not None:
        monkeypatch.setattr(module_mod, "rank_zero_info", lines.append)
        original = model.model.level_maps

        def spy(pyramid, neighbours):
            mapped.append(int(neighbours.shape[0]))
            return original(pyramid, neighbours)

        monkeypatch.setattr(model.model, "level_maps", spy)
    data = dm(root)
    make_trainer(tmp_path).fit(model, datamodule=data)
    return model, lines, sum(mapped)


@pytest.mark.parametrize("image_score", ["topq", "combined"])
def test_capped_fit_maps_n_images_and_its_thresholds_come_from_them(root, tmp_path, monkeypatch, image_score):
    model, lines, mapped = fit(root, tmp_path, monkeypatch, image_score=image_score, image_threshold_samples=4)
    rows = torch.tensor(spread_indices(N_TRAIN, 4))  # 0, 2, 4, 6; the pixel rows 0, 4 are among them
    assert mapped == 4
    assert any("image " in line and "quantile 0.9 of 4 scores" in line for line in lines)
    spade = model.model
    dn2 = spade.nearest_images(spade.bank.pooled[rows].float(), exclude=rows)[0]
    maps = spade.score_bank(rows).anomaly_maps
    if image_score == "combined":
        assert float(spade.dn2_scale) == float(dn2.double().quantile(0.5))
        assert float(spade.map_scale) == float(maps.flatten(1).amax(1).double().quantile(0.5))
    scores = spade.image_scores(dn2, spade.map_part(maps))
    assert model.image_threshold == float(np.quantile(scores.double().numpy(), 0.9))
    pixel_rows = [spread_indices(N_TRAIN, 4).index(r) for r in spread_indices(N_TRAIN, 2)]
    assert model.pixel_threshold == float(np.quantile(maps[pixel_rows].double().numpy(), 0.99))


def test_a_cap_at_or_above_the_bank_changes_nothing_and_a_lower_one_does(root, tmp_path):
    def learned(**kwargs):
        model = fit(root, tmp_path / str(kwargs), image_score="combined", **kwargs)[0]
        return model.image_threshold, model.pixel_threshold, float(model.model.dn2_scale), float(model.model.map_scale)

    every = learned(image_threshold_samples=None)
    assert all(math.isfinite(v) for v in every)
    assert learned() == every  # the default, 1000
    assert learned(image_threshold_samples=N_TRAIN) == every
    capped = learned(image_threshold_samples=4)
    assert capped[1] == every[1]  # the pixel threshold keeps threshold_samples
    assert capped[0] != every[0] and capped[2:] != every[2:]


def test_dn2_scores_every_image_whatever_the_cap(root, tmp_path, monkeypatch):
    model, _, mapped = fit(root, tmp_path, monkeypatch, image_score="dn2", image_threshold_samples=3)
    assert mapped == 2  # the threshold_samples maps only
    every = fit(root, tmp_path / "every", image_score="dn2", image_threshold_samples=None)[0]
    assert (model.image_threshold, model.pixel_threshold) == (every.image_threshold, every.pixel_threshold)


@pytest.mark.parametrize("value", [0, -5, 2.5, True])
def test_the_setting_is_checked(value):
    with pytest.raises(ConfigurationError, match="image_threshold_samples"):
        Spade(weights="random", image_threshold_samples=value)


def test_a_changed_cap_counts_only_where_it_selects_other_images():
    saved = {"image_score": "topq", "image_threshold_samples": None}  # a checkpoint from before the setting
    now = {"image_score": "topq", "image_threshold_samples": 1000}
    assert ckpt.saved_settings({})["image_threshold_samples"] is None
    assert ckpt.scoring_changes(saved, now, bank_size=209) == []
    assert ckpt.scoring_changes(saved, now, bank_size=2000) == ["image_threshold_samples None -> 1000"]
    assert ckpt.scoring_changes(saved, {**now, "image_score": "dn2"}, bank_size=2000) == ["image_score 'topq' -> 'dn2'"]
    assert ckpt.scoring_changes({**now, "image_threshold_samples": 500}, now, bank_size=800) == [
        "image_threshold_samples 500 -> 1000"]
