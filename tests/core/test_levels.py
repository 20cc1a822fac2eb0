"""The levels' part of the map: local aggregation, the pixel distance, the learned level balance and weights
(``lightning_ad.core.levels``), as SpadeModel, the checkpoint and the exported graph use them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import dm, make_trainer

from lightning_ad import Detector, Spade
from lightning_ad.core.filters import gaussian_blur
from lightning_ad.core.levels import aggregate_pyramid, balance_scales, level_factors, level_moments, local_mean, position_scores
from lightning_ad.core.spade import LEVEL_BALANCE_IMAGES, SpadeModel
from lightning_ad.errors import CheckpointError, ConfigurationError
from lightning_ad.inference import checkpoint as ckpt


def naive_local_mean(fmap: torch.Tensor) -> torch.Tensor:
    """Mean of each position's 3x3 neighbours that lie inside the map, by loops."""
    out = torch.empty_like(fmap)
    height, width = fmap.shape[-2:]
    for y in range(height):
        for x in range(width):
            out[..., y, x] = fmap[..., max(0, y - 1): y + 2, max(0, x - 1): x + 2].mean(dim=(-2, -1))
    return out


def test_local_mean_is_the_mean_of_the_neighbours_inside_the_map():
    fmap = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(local_mean(fmap), naive_local_mean(fmap))
    out = aggregate_pyramid([fmap, fmap], [False, True])
    assert out[0] is fmap and torch.allclose(out[1], naive_local_mean(fmap))


def test_position_scores_average_squared_or_plain_distances():
    squared = torch.tensor([[[4.0, 16.0], [9.0, 0.0]]])  # [1, P=2, kappa=2]
    assert position_scores(squared, "squared").tolist() == [[10.0, 4.5]]
    assert position_scores(squared, "euclidean").tolist() == [[3.0, 1.5]]
    assert position_scores(torch.tensor([[[-1e-7]]]), "euclidean").tolist() == [[0.0]]  # rounding below 0


def test_moments_add_up_over_batches_and_give_mean_and_std():
    gen = torch.Generator().manual_seed(1)
    first = [torch.rand(3, 4, 4, generator=gen) * 5, torch.rand(3, 2, 2, generator=gen)]
    second = [torch.rand(2, 4, 4, generator=gen) * 5, torch.rand(2, 2, 2, generator=gen)]
    moments = level_moments(first) + level_moments(second)
    values = [torch.cat([a.flatten(), b.flatten()]).double() for a, b in zip(first, second)]
    torch.testing.assert_close(balance_scales(moments, "mean"), torch.stack([v.mean() for v in values]))
    torch.testing.assert_close(balance_scales(moments, "std"), torch.stack([v.std(correction=0) for v in values]))
    assert balance_scales(moments, "none").tolist() == [1.0, 1.0]
    assert balance_scales(level_moments([torch.zeros(1, 2, 2)]), "std").tolist() == [1.0]  # no spread: 1
    factors = level_factors([1.0, 3.0], torch.tensor([2.0, 0.5], dtype=torch.float64))
    assert factors.tolist() == [1 / 8, 3 / 2]


def _pair(**kwargs):
    """A fitted model with ``kwargs`` and the same backbone and images fitted without aggregation or balance."""
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(9, 3, 64, 64, generator=gen)
    plain = SpadeModel(weights="random", image_k=2, gallery_k=3, aggregate_levels=[], pixel_distance="squared")
    other = SpadeModel(weights="random", image_k=2, gallery_k=3, backbone_module=plain.backbone, **kwargs)
    for model in (plain, other):
        model.fit_bank(images[:7])
    return plain, other, images[7:]


def test_aggregated_levels_are_3x3_means_in_the_bank_and_the_queries():
    plain, aggregated, queries = _pair(aggregate_levels=[1, 3], pixel_distance="squared")
    assert aggregated.aggregated == [True, False, True]
    raw = plain.extract(queries).pyramid
    mine = aggregated.extract(queries).pyramid
    torch.testing.assert_close(mine[0], naive_local_mean(raw[0]))
    assert torch.equal(mine[1], raw[1])
    torch.testing.assert_close(mine[2], naive_local_mean(raw[2]))
    torch.testing.assert_close(aggregated.bank.pyramid_of(torch.arange(2))[0], naive_local_mean(plain.bank.pyramid_of(torch.arange(2))[0]))
    assert not torch.allclose(aggregated(queries).anomaly_maps, plain(queries).anomaly_maps)


def test_euclidean_pixel_distance_is_the_root_of_the_squared_one():
    plain, euclidean, queries = _pair(aggregate_levels=[], pixel_distance="euclidean")
    features = plain.extract(queries)
    neighbours = plain.nearest_images(features.pooled)[1]
    for squared, root in zip(plain.level_maps(features.pyramid, neighbours), euclidean.level_maps(features.pyramid, neighbours)):
        torch.testing.assert_close(root, squared.clamp_min(0).sqrt())


def test_level_balance_divides_each_level_by_its_leave_one_out_statistic():
    plain, balanced, queries = _pair(aggregate_levels=[], pixel_distance="squared", level_balance="std", level_weights=[1, 0, 2])
    rows = balanced.balance_rows()
    assert rows.tolist() == list(range(7)) and LEVEL_BALANCE_IMAGES >= 7  # a small bank: every image
    # the statistic by hand: each row's level maps against the rest of the bank
    values = [[] for _ in range(3)]
    for row in rows.tolist():
        pooled = plain.bank.pooled[row: row + 1].float()
        _, neighbours = plain.nearest_images(pooled, exclude=torch.tensor([row]))
        for level, fmap in enumerate(plain.level_maps(plain.bank.pyramid_of(torch.tensor([row])), neighbours)):
            values[level].append(fmap.flatten().double())
    expected = torch.stack([torch.cat(v).std(correction=0) for v in values])
    torch.testing.assert_close(balanced.level_scales, expected)
    # the map: sum of w_l / (sum(w) s_l) * upsampled level maps, smoothed
    features = plain.extract(queries)
    neighbours = plain.nearest_images(features.pooled)[1]
    up = [F.interpolate(m.unsqueeze(1), size=(64, 64), mode="bilinear", align_corners=False).squeeze(1)
          for m in plain.level_maps(features.pyramid, neighbours)]
    weights = [1.0, 0.0, 2.0]
    combined = sum(w / (3.0 * float(s)) * m for w, s, m in zip(weights, expected, up))
    torch.testing.assert_close(balanced(queries).anomaly_maps, gaussian_blur(combined, 4.0), rtol=1e-5, atol=1e-6)


def test_unlearned_level_scales_are_refused():
    model = SpadeModel(weights="random", image_k=1, gallery_k=1, level_balance="mean")
    model.fit_bank(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    assert torch.isfinite(model.level_scales).all()
    model.level_scales.fill_(float("nan"))  # e.g. a bank set without fit_bank
    with pytest.raises(ConfigurationError, match="level_balance='mean' needs the scales"):
        model(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("settings, name", [
    ({"aggregate_levels": [4]}, "aggregate_levels"), ({"aggregate_levels": [1, 1]}, "aggregate_levels"),
    ({"aggregate_levels": "1"}, "aggregate_levels"), ({"pixel_distance": "l1"}, "pixel_distance"),
    ({"level_balance": "median"}, "level_balance"), ({"level_weights": [1, 1]}, "level_weights"),
    ({"level_weights": [1, -1, 1]}, "level_weights"), ({"level_weights": [0, 0, 0]}, "level_weights"),
])
def test_bad_settings_are_refused(settings, name):
    with pytest.raises(ConfigurationError, match=name):
        SpadeModel(weights="random", **settings)


def test_checkpoints_record_the_settings_and_older_ones_keep_the_papers(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4, aggregate_levels=[2], level_balance="mean")
    make_trainer(tmp_path).fit(model, datamodule=dm(tiny_mvtec))
    path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["lightning_ad"]["aggregate_levels"] == [2]
    detector = Detector.from_checkpoint(path)
    assert detector.model.aggregate_levels == (2,) and detector.info["level_balance"] == "mean"
    torch.testing.assert_close(detector.model.level_scales, model.model.level_scales)
    assert torch.isfinite(detector.model.level_scales).all()
    with pytest.raises(CheckpointError, match=r"aggregate_levels \[2\] \(configured: \[1, 2\]\)"):
        Spade.load_from_checkpoint(path, aggregate_levels=[1, 2])
    # a checkpoint from before the options: its bank is not aggregated, its distances squared
    for name in ("aggregate_levels", "pixel_distance", "level_balance", "level_weights"):
        del checkpoint["hyper_parameters"][name]
    del checkpoint["lightning_ad"]["aggregate_levels"]
    del checkpoint["lightning_ad"]["scoring"]
    del checkpoint["state_dict"]["model.level_scales"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    legacy = Detector.from_checkpoint(old).model
    assert legacy.aggregate_levels == () and legacy.pixel_distance == "squared" and legacy.level_balance == "none"
    with pytest.raises(CheckpointError, match=r"aggregate_levels \[\] \(configured: \[1, 2\]\)"):
        Spade.load_from_checkpoint(old)  # today's default would search an unaggregated bank with aggregated queries
    stale = Spade.load_from_checkpoint(old, aggregate_levels=[])._stale_thresholds
    assert stale == ["pixel_distance 'squared' -> 'euclidean'"]
    ckpt.check_compatible({"backbone": "b", "layers": [1]}, "b", [1], [])  # no key: none aggregated


def test_a_balance_chosen_at_test_time_is_learned_with_the_thresholds(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4)
    make_trainer(tmp_path / "fit").fit(model, datamodule=dm(tiny_mvtec))
    path = next((tmp_path / "fit").rglob("*.ckpt"))
    # an override of load_from_checkpoint (Lightning writes it into the checkpoint's hyper-parameters) is seen
    loaded = Spade.load_from_checkpoint(path, level_balance="std")
    assert loaded._stale_thresholds == ["level_balance 'none' -> 'std'"]
    assert not torch.isfinite(loaded.model.level_scales).any()
    make_trainer(tmp_path / "test").test(loaded, datamodule=dm(tiny_mvtec))
    assert torch.isfinite(loaded.model.level_scales).all() and loaded.threshold_source["method"] == "quantile"
    expected = balance_scales(loaded.model.level_moments(loaded.model.balance_rows()), "std")
    torch.testing.assert_close(loaded.model.level_scales, expected)


def test_f1_thresholds_with_a_level_balance_learn_the_scales_at_fit(tiny_mvtec, tmp_path):
    """With thresholds from a validation split, fit still learns the level scales (the maps need them), from the
    balance rows alone, before validating."""
    model = Spade(image_k=3, gallery_k=3, threshold_method="f1", level_balance="mean")
    make_trainer(tmp_path).fit(model, datamodule=dm(tiny_mvtec, val_split=0.5))
    expected = balance_scales(model.model.level_moments(model.model.balance_rows()), "mean")
    torch.testing.assert_close(model.model.level_scales, expected)
    assert model.threshold_source["method"] == "f1" and model.val_results is not None
