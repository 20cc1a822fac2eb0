"""search_radius as a scoring setting: recorded in the checkpoint, old checkpoints keep the global search,
a change at test time recomputes the thresholds, settings out of range are refused."""

from __future__ import annotations

import pytest
import torch
from conftest import dm, make_trainer, run

from lightning_ad import Detector, Spade
from lightning_ad.core.spade import SpadeModel
from lightning_ad.errors import ConfigurationError
from lightning_ad.inference import checkpoint as ckpt


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
    assert Spade.load_from_checkpoint(old)._stale_thresholds == ["search_radius None -> 'auto'"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        windowed = detector.model(images).anomaly_maps
        detector.model.search_radius = 4
        assert not torch.equal(detector.model(images).anomaly_maps, windowed)


def test_a_radius_given_at_test_time_recomputes_the_thresholds(fitted):  # noqa: F811
    base, config, path = fitted
    result = run(["test", "--config", str(config), "--ckpt_path", str(path), "--model.search_radius", "16"], base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scoring settings differ from fit time (search_radius 'auto' -> 16.0): thresholds learned again" in result.stdout + result.stderr


@pytest.mark.parametrize("value", [-1, float("nan"), "8px", True])
def test_bad_radius_is_refused(value):
    with pytest.raises(ConfigurationError, match="search_radius"):
        SpadeModel(search_radius=value)


def test_kappa_above_the_candidates_of_a_corner_is_refused():
    gen = torch.Generator().manual_seed(1)
    model = SpadeModel(image_k=1, gallery_k=1, kappa=5, search_radius=0)  # a corner has one candidate per image
    with pytest.raises(ConfigurationError, match=r"kappa=5 is larger than the 1 candidates"):
        model.fit_bank(torch.rand(3, 3, 64, 64, generator=gen))  # refused at the first scoring: fit's thresholds
    corner_ok = SpadeModel(image_k=1, gallery_k=1, kappa=4, search_radius=4)  # one cell each way: 4 at a corner
    corner_ok.fit_bank(torch.rand(3, 3, 64, 64, generator=gen))
    assert torch.isfinite(corner_ok(torch.rand(1, 3, 64, 64, generator=gen)).anomaly_maps).all()


# ---------------------------------------------------------------------- search_radius: auto


def _parts(count: int, move: int, seed: int = 0, size: int = 128) -> torch.Tensor:
    """``[count, 3, size, size]`` photos of one blocky part; each moved by up to ``move`` pixels (rolled, so
    the whole frame is real pixels), with faint noise."""
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.rand(3, size // 16, size // 16, generator=gen) * 0.8 + 0.1
    base = blocks.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    shifts = torch.randint(-move, move + 1, (count, 2), generator=gen) if move else torch.zeros(count, 2, dtype=torch.long)
    photos = [torch.roll(base, (int(dy), int(dx)), dims=(1, 2)) for dy, dx in shifts]
    return (torch.stack(photos) + 0.01 * torch.randn(count, 3, size, size, generator=gen)).clamp(0, 1)


@pytest.mark.parametrize("move, radius", [(0, 8.0), (24, None)])
def test_auto_keeps_the_window_for_parts_in_place_and_drops_it_for_parts_that_move(lite0, move, radius):
    model = SpadeModel(image_k=5, gallery_k=5, backbone_module=lite0)
    assert model.search_radius_setting == "auto"
    with pytest.raises(ConfigurationError, match="search_radius='auto' is decided when the bank is fitted"):
        model.search_radius
    model.fit_bank(_parts(12, move))
    choice = model.radius_choice
    assert model.search_radius == radius == choice.radius and choice.images == 12 and choice.level == 2
    assert choice.candidates == (8.0,)  # at 128 x 128 a 16 px window costs as much as every position
    assert all(v >= 1 for v in choice.inflation)  # a window never finds a nearer feature than every position
    if radius is None:
        assert min(choice.inflation) > 1.05
    else:
        assert choice.inflation[0] <= 1.05
    assert ("every position" if radius is None else "8 px") in choice.describe().split("(")[0]


def test_auto_decides_from_the_training_images_alone_and_in_any_row_order(lite0):
    photos = _parts(12, 24)
    model = SpadeModel(image_k=5, gallery_k=5, backbone_module=lite0)
    model.fit_bank(photos)
    evidence = model.radius_evidence(model.radius_rows())
    assert evidence.shape == (12, len(model.radius_candidates) + 1)
    assert bool((evidence[:, :-1] >= evidence[:, -1:] * (1 - 1e-6)).all())  # each row: a window is never nearer
    # split over two "processes" and gathered in row order: the same decision and evidence
    halves = torch.cat([model.radius_evidence(model.radius_rows()[1::2]), model.radius_evidence(model.radius_rows()[::2])])
    order = torch.cat([model.radius_rows()[1::2], model.radius_rows()[::2]]).argsort()
    assert model.set_search_radius(halves[order]) == model.radius_choice
    assert torch.equal(halves[order], evidence)


def test_auto_with_one_training_image_takes_the_smallest_window_and_says_why(lite0):
    model = SpadeModel(image_k=1, gallery_k=1, backbone_module=lite0)
    model.fit_bank(_parts(1, 0))
    assert model.search_radius == 8.0 and model.radius_choice.images == 0
    assert "one training image leaves nothing to compare with" in model.radius_choice.describe()


def test_auto_is_recorded_in_the_checkpoint_and_followed_by_the_detector(tiny_mvtec, tmp_path, caplog):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4)
    with caplog.at_level("INFO"):
        make_trainer(tmp_path).fit(model, datamodule=dm(tiny_mvtec))
    assert sum("search_radius auto: " in r.getMessage() for r in caplog.records) == 1
    path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    record = checkpoint["lightning_ad"]["search_radius"]
    assert record["setting"] == "auto" and record["radius"] == model.model.search_radius
    assert record["inflation"] == [round(v, 6) for v in model.model.radius_choice.inflation]
    detector = Detector.from_checkpoint(path)
    assert detector.model.search_radius == model.model.search_radius and detector.info["search_radius"] == record["radius"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(detector.model(images).anomaly_maps, model.model.eval()(images).anomaly_maps)
    # a number given later is honoured, and the thresholds made with the decided radius are recomputed
    assert Spade.load_from_checkpoint(path, search_radius=16)._stale_thresholds == ["search_radius 'auto' -> 16"]
