"""Few good images and banks that grow: K adapts to the bank, thresholds are learned from one image, the bank
is ordered by content (an image already in it is skipped), and a grown bank equals a fresh fit on all its images."""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_mvtec, make_trainer, textured

from lightning_ad import Detector, MVTecDataModule, Spade
from lightning_ad.core.calibration import CalibrationSettings
from lightning_ad.core.spade import SpadeModel
from lightning_ad.core.thresholds import quantile_threshold
from lightning_ad.core.views import THRESHOLD_VIEWS, views_of
from lightning_ad.errors import ConfigurationError

SIZE = 48


def images(count: int, seed: int = 0) -> torch.Tensor:
    """``[count, 3, SIZE, SIZE]`` smooth random textures in [0, 1]."""
    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy(textured(rng, SIZE)).permute(2, 0, 1).float() / 255 for _ in range(count)])


def model(**kwargs) -> SpadeModel:
    """A SpadeModel with the same random backbone every time (seeded)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpadeModel(weights="random", **kwargs)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def test_k_larger_than_the_bank_uses_every_image_as_an_explicit_k_does():
    train, test = images(3), images(2, seed=1)
    lines = []
    large, small = model(image_k=50, gallery_k=50), model(image_k=3, gallery_k=3)
    large.fit_bank(train, say=lines.append)
    small.fit_bank(train)
    assert any("image_k=50 and gallery_k=50 with 3 training image(s): scoring uses 3 and 3 (2 leave-one-out)" in line
               for line in lines)
    assert torch.equal(large(test).image_scores, small(test).image_scores)
    # leave-one-out adapts too (K = 2 there): the thresholds match those of K = 3 clamped the same way
    assert float(large.image_threshold) == float(small.image_threshold)
    assert float(large.pixel_threshold) == float(small.pixel_threshold)


def test_one_image_learns_both_thresholds_from_its_views():
    one = images(1)
    spade, lines = model(image_k=50, gallery_k=50), []
    spade.fit_bank(one, say=lines.append)
    views = spade(views_of(one, THRESHOLD_VIEWS))
    assert float(spade.image_threshold) == pytest.approx(quantile_threshold(views.image_scores, 0.95), rel=1e-6)
    assert float(spade.pixel_threshold) == pytest.approx(quantile_threshold(views.anomaly_maps, 0.999), rel=1e-6)
    record = spade.calibration
    assert record["image"]["source"] == record["pixel"]["source"] == "learned"
    assert record["image"]["rule"].startswith(f"{len(THRESHOLD_VIEWS)} views of the one training image")
    assert any(line.startswith("thresholds: image ") and "views of the one training image" in line for line in lines)


def test_views_join_leave_one_out_below_few_shot_below_and_not_above():
    train = images(5)
    few, plain = model(), model()
    few.fit_bank(train)
    plain.fit_bank(train, settings=CalibrationSettings(few_shot_below=5))
    assert few.calibration["image"]["scores"] == 5 + 5 * len(THRESHOLD_VIEWS) and few.few_shot_images.shape[0] == 5
    assert plain.calibration["image"]["scores"] == 5 and plain.few_shot_images.shape[0] == 0
    loo = plain.score_bank()
    assert float(plain.image_threshold) == pytest.approx(quantile_threshold(loo.image_scores, 0.95), rel=1e-6)


def test_the_bank_is_ordered_by_content_and_repeated_content_is_skipped():
    x = images(4)
    first, second = model(), model()
    skipped = first.fit_bank(x[[0, 1, 2, 1]])
    assert skipped == [(3, 1)] and first.bank_size == 3
    assert second.fit_bank(x[[2, 0, 1]]) == []
    assert torch.equal(first.bank.index, second.bank.index)
    assert rel(float(first.image_threshold), float(second.image_threshold)) < 1e-6
    assert rel(float(first.pixel_threshold), float(second.pixel_threshold)) < 1e-6


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_a_grown_bank_equals_a_fresh_fit_on_all_its_images(tmp_path, storage):
    x, test = images(20), images(3, seed=1)
    options = dict(image_k=4, gallery_k=4, bank_storage=storage, bank_dir=str(tmp_path / "bank"))
    grown, fresh = model(**options), model(**options)
    limit = CalibrationSettings(few_shot_below=16)  # the bank crosses it: views below, plain leave-one-out above
    grown.fit_bank(x[:6], settings=limit)
    assert grown.few_shot_images.shape[0] == 6
    files = {p: p.read_bytes() for p in (tmp_path / "bank").rglob("*.bin")}
    skipped = grown.add_images(torch.cat([x[6:], x[:1]]), settings=limit)  # 14 new images, one already in the bank
    assert skipped == [(14, -1)]
    fresh.fit_bank(x[[5, 19, 0, 12, 3, 7, 1, 18, 2, 11, 4, 6, 8, 9, 10, 13, 14, 15, 16, 17]], settings=limit)  # another order
    assert grown.bank_size == fresh.bank_size == 20 and torch.equal(grown.bank.index, fresh.bank.index)
    assert grown.few_shot_images.shape[0] == 0  # 20 images: plain leave-one-out, images no longer kept
    for name in ("image_threshold", "pixel_threshold", "decided_radius"):
        assert rel(float(getattr(grown, name)), float(getattr(fresh, name))) < 1e-6, name
    a, b = grown(test), fresh(test)
    assert torch.allclose(a.image_scores, b.image_scores, rtol=1e-6, atol=0)
    assert torch.allclose(a.anomaly_maps, b.anomaly_maps, rtol=1e-5, atol=1e-6)
    if storage == "disk":  # the first fit's files are as they were; the new rows went to a folder of their own
        assert all(p.read_bytes() == data for p, data in files.items())
        shards = grown.bank.external_state()["shards"]
        assert len(shards) == 2 and len({Path(f["path"]).parent for shard in shards for f in shard["files"]}) == 2


@pytest.fixture(scope="module")
def few_shot_checkpoint(tmp_path_factory):
    """A checkpoint fitted by the Lightning module on 2 images of a tiny set (contract 64 -> 48), and the set."""
    base = tmp_path_factory.mktemp("few")
    root = make_mvtec(base / "data", n_train=8, n_good=2, n_bad=2, size=64)
    train = root / "widget" / "train" / "good"
    for extra in sorted(train.glob("*.png"))[2:]:
        extra.rename(base / extra.name)  # kept aside: added later
    dm = MVTecDataModule(str(root), category="widget", image_size=64, crop_size=48, batch_size=4, num_workers=0)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = Spade(weights="random")
        make_trainer(base / "run", enable_checkpointing=True).fit(module, datamodule=dm)
    ckpt = next((base / "run").rglob("*.ckpt"))
    return {"base": base, "ckpt": ckpt, "extra": sorted(base.glob("*.png")), "train": sorted(train.glob("*.png")),
            "test": sorted((root / "widget" / "test").rglob("*.png"))}


def test_a_two_image_fit_sets_both_thresholds_and_records_how(few_shot_checkpoint):
    checkpoint = torch.load(few_shot_checkpoint["ckpt"], weights_only=True, map_location="cpu")
    record = checkpoint["lightning_ad"]["thresholds"]
    assert record["image"]["source"] == record["pixel"]["source"] == "learned"
    assert "views of them" in record["image"]["rule"]
    state = checkpoint["state_dict"]
    assert math.isfinite(float(state["model.image_threshold"])) and math.isfinite(float(state["model.pixel_threshold"]))
    assert tuple(state["model.few_shot_images"].shape) == (2, 3, 48, 48)


def test_detector_add_normal_returns_a_grown_detector_and_keeps_the_old_one(few_shot_checkpoint, tmp_path):
    source = few_shot_checkpoint["ckpt"]
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    detector = Detector.from_checkpoint(source)
    lines = []
    grown = detector.add_normal([*map(str, few_shot_checkpoint["extra"]), str(few_shot_checkpoint["train"][0])],
                                save_to=tmp_path / "grown.ckpt", say=lines.append)
    assert detector.model.bank_size == 2 and grown.model.bank_size == 8
    assert any(line.startswith("skipped ") and line.endswith("its content is already in the bank.") for line in lines)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # the old checkpoint is as it was
    reloaded = Detector.from_checkpoint(tmp_path / "grown.ckpt")
    assert reloaded.model.bank_size == 8 and reloaded.info["bank_changed"]
    assert (reloaded.image_threshold, reloaded.pixel_threshold) == (grown.image_threshold, grown.pixel_threshold)
    files = [str(p) for p in few_shot_checkpoint["test"]]
    assert [d.score for d in reloaded(files)] == [d.score for d in grown(files)]
    assert [d.score for d in detector(files)] != [d.score for d in grown(files)]
    with pytest.raises(ConfigurationError, match="is the checkpoint this detector came from"):
        detector.add_normal(str(few_shot_checkpoint["extra"][0]), save_to=source)


def test_fit_from_a_checkpoint_grows_its_bank_as_a_fresh_fit_would(few_shot_checkpoint, tmp_path, caplog):
    from lightning_ad.command import main

    root = tmp_path / "data"
    make_mvtec(root, n_train=8, n_good=2, n_bad=2, size=64)  # the same images as the fixture's (same seed)
    common = ["--data", "lightning_ad.MVTecDataModule", "--data.root", str(root), "--data.category", "widget",
              "--data.image_size", "64", "--data.crop_size", "48", "--data.num_workers", "0", "--model.weights", "random",
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    before = hashlib.sha256(few_shot_checkpoint["ckpt"].read_bytes()).hexdigest()
    with warnings.catch_warnings(), caplog.at_level("INFO"):
        warnings.simplefilter("ignore")
        main(["fit", *common, "--ckpt_path", str(few_shot_checkpoint["ckpt"]), "--trainer.default_root_dir", str(tmp_path / "grown")])
        lines = caplog.text
        main(["fit", *common, "--trainer.default_root_dir", str(tmp_path / "fresh")])
    assert "its bank of 2 images grows by the training images" in lines
    assert "skipped 2 training image(s) already in the bank" in lines
    assert hashlib.sha256(few_shot_checkpoint["ckpt"].read_bytes()).hexdigest() == before
    grown, fresh = (torch.load(next((tmp_path / name).rglob("*.ckpt")), weights_only=True, map_location="cpu")["state_dict"]
                    for name in ("grown", "fresh"))
    # the fresh fit's random backbone is the fixture's (seed 0), so the two must agree on everything learned
    assert all(torch.equal(grown[k], fresh[k]) for k in grown if k.startswith("model.backbone."))
    assert torch.equal(grown["model.bank.index"], fresh["model.bank.index"]) and grown["model.bank.index"].numel() == 8
    for name in ("model.image_threshold", "model.pixel_threshold", "model.decided_radius"):
        assert rel(float(grown[name]), float(fresh[name])) < 1e-6, name


def test_growing_with_another_input_contract_is_refused(few_shot_checkpoint, tmp_path):
    root = few_shot_checkpoint["base"] / "data"
    module = Spade(weights="random")
    checkpoint = torch.load(few_shot_checkpoint["ckpt"], weights_only=True, map_location="cpu")
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    other = MVTecDataModule(str(root), category="widget", image_size=64, crop_size=None, batch_size=4, num_workers=0)
    with pytest.raises(ConfigurationError, match="the new good images cannot join this bank"):
        make_trainer(tmp_path).fit(module, datamodule=other)
    assert module.model.bank_size == 2  # nothing changed


@pytest.mark.parametrize("shots", [1, 2, 4])
def test_real_bottle_fit_on_a_few_images_sets_both_thresholds_and_says_how(tmp_path, caplog, shots):
    from conftest import require_real

    from lightning_ad.command import main

    good = sorted((require_real("mvtec_ad", "bottle") / "train" / "good").glob("*.png"))[:shots]
    folder = tmp_path / "good"
    folder.mkdir()
    for path in good:
        (folder / path.name).symlink_to(path.resolve())  # links: no data is copied
    with warnings.catch_warnings(), caplog.at_level("INFO"):
        warnings.simplefilter("ignore")
        main(["fit", "--data", "lightning_ad.FolderDataModule", "--data.normal_dir", str(folder),
              "--data.normal_test_split", "0", "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    checkpoint = torch.load(next((tmp_path / "run").rglob("*.ckpt")), weights_only=True, map_location="cpu")
    record, state = checkpoint["lightning_ad"]["thresholds"], checkpoint["state_dict"]
    assert all(math.isfinite(float(state[f"model.{level}_threshold"])) and float(state[f"model.{level}_threshold"]) > 0
               for level in ("image", "pixel"))
    rule = f"{len(THRESHOLD_VIEWS)} views of the one training image" if shots == 1 else f"leave-one-out scores of {shots} training images and"
    assert record["image"]["source"] == record["pixel"]["source"] == "learned" and record["image"]["rule"].startswith(rule)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("thresholds: "))
    assert f"from {record['image']['rule']}" in line
