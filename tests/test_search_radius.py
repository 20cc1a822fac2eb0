"""search_radius as a scoring setting: recorded in the checkpoint, old checkpoints keep the global search,
a change at test time recomputes the thresholds, settings out of range are refused."""

from __future__ import annotations

import pytest
import torch
from test_cli import fitted, run  # noqa: F401 - the fitted CLI checkpoint fixture
from test_thresholds import dm

from conftest import make_trainer
from lightning_ad import Detector, Spade
from lightning_ad.inference import checkpoint as ckpt
from lightning_ad.errors import ConfigurationError
from lightning_ad.core.spade import SpadeModel


def test_checkpoints_record_it_and_older_ones_search_every_position(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4, search_radius=4)
    make_trainer(tmp_path).fit(model, datamodule=dm(tiny_mvtec))
    path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["search_radius"] == 4
    assert Detector.from_checkpoint(path).model.search_radius == 4
    del checkpoint["hyper_parameters"]["search_radius"]  # a checkpoint from before the option
    del checkpoint["lightning_ad"]["scoring"]  # ... and before the record of its scoring settings
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    assert ckpt.saved_settings(checkpoint["hyper_parameters"])["search_radius"] is None
    detector = Detector.from_checkpoint(old)
    assert detector.model.search_radius is None and detector.info["search_radius"] is None
    # loaded with today's default, its thresholds (made by the global search) are stale and recomputed at test time
    assert Spade.load_from_checkpoint(old, search_radius=None)._stale_thresholds == []
    assert Spade.load_from_checkpoint(old)._stale_thresholds == ["search_radius None -> 8.0"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        windowed = detector.model(images).anomaly_maps
        detector.model.search_radius = 4
        assert not torch.equal(detector.model(images).anomaly_maps, windowed)


def test_a_radius_given_at_test_time_recomputes_the_thresholds(fitted):  # noqa: F811
    base, config, path = fitted
    result = run(["test", "--config", str(config), "--ckpt_path", str(path), "--model.search_radius", "16"], base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scoring settings differ from fit time (search_radius 8.0 -> 16.0): thresholds recomputed" in result.stdout + result.stderr


@pytest.mark.parametrize("value", [-1, float("nan"), "8px", True])
def test_bad_radius_is_refused(value):
    with pytest.raises(ConfigurationError, match="search_radius"):
        SpadeModel(search_radius=value)


def test_kappa_above_the_candidates_of_a_corner_is_refused():
    gen = torch.Generator().manual_seed(1)
    model = SpadeModel(image_k=1, gallery_k=1, kappa=5, search_radius=0)  # a corner has one candidate per image
    model.fit_bank(torch.rand(3, 3, 64, 64, generator=gen))
    with pytest.raises(ConfigurationError, match=r"kappa=5 is larger than the 1 candidates"):
        model(torch.rand(1, 3, 64, 64, generator=gen))
    corner_ok = SpadeModel(image_k=1, gallery_k=1, kappa=4, search_radius=4)  # one cell each way: 4 at a corner
    corner_ok.fit_bank(torch.rand(3, 3, 64, 64, generator=gen))
    assert torch.isfinite(corner_ok(torch.rand(1, 3, 64, 64, generator=gen)).anomaly_maps).all()
