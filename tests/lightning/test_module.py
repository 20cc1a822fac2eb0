"""The LightningModule in a real Trainer: fit builds the bank (no training), checkpoints, test metrics, predict."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_trainer as trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_ad import MVTecDataModule, Spade
from lightning_ad.bank.content import content_ids
from lightning_ad.core.metrics import binary_auroc, per_region_overlap, precision_recall_f1
from lightning_ad.errors import ConfigurationError


def datamodule(root: Path, **kwargs) -> MVTecDataModule:
    options = dict(category="widget", image_size=64, crop_size=64, batch_size=4, num_workers=0)
    options.update(kwargs)
    return MVTecDataModule(str(root), **options)


@pytest.fixture
def fitted(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4)
    dm = datamodule(tiny_mvtec)
    t = trainer(tmp_path / "run")
    t.fit(model, datamodule=dm)
    return model, dm, t


def test_fit_builds_bank_without_training(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4)
    weights_before = {k: v.clone() for k, v in model.model.backbone.state_dict().items()}
    dm = datamodule(tiny_mvtec)
    t = trainer(tmp_path / "run")
    t.fit(model, datamodule=dm)
    assert model.model.bank_size == 9
    for key, value in model.model.backbone.state_dict().items():
        assert torch.equal(value, weights_before[key]), key
    assert float(model.step_anchor.detach()) == 0.0 and all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert t.global_step == 3  # one (no-op) step per batch: 9 images, batch 4
    # the bank equals a direct extraction of the training images, ordered by their content ids
    dm.setup("fit")
    images = torch.stack([dm.train_dataset[i]["image"] for i in range(9)])
    ids = content_ids(images)
    assert torch.equal(model.model.bank.index, ids.sort().values)
    feats = model.model.extract(images[ids.argsort()])
    assert torch.allclose(model.model.bank.pooled, feats.pooled, rtol=1e-4, atol=1e-4)
    assert torch.allclose(model.model.bank.level1, feats.pyramid[0].permute(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    # thresholds were learned from normal images alone
    assert 0 < model.image_threshold and 0 < model.pixel_threshold


def test_fit_writes_a_checkpoint_with_the_bank(fitted, tmp_path):
    model, _, t = fitted
    files = list((tmp_path / "run").rglob("*.ckpt"))
    assert len(files) == 1 and files[0].parent.name == "checkpoints"
    checkpoint = torch.load(files[0], map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert state["model.bank.pooled"].shape == (9, 1280)
    assert torch.equal(state["model.bank.level2"], model.model.bank.level2)
    assert checkpoint["lightning_ad"]["backbone"] == "efficientnet_lite0"


def test_a_second_fit_adds_to_the_bank_and_skips_what_it_holds(fitted, tmp_path, caplog):
    model, dm, _ = fitted
    bank, thresholds = model.model.bank.pooled.clone(), (model.image_threshold, model.pixel_threshold)
    with caplog.at_level("INFO"):
        trainer(tmp_path / "again").fit(model, datamodule=dm)
    assert "adding the training images to the bank of 9 images" in caplog.text
    assert "skipped 9 training image(s) already in the bank" in caplog.text
    assert model.model.bank_size == 9 and torch.equal(model.model.bank.pooled, bank)
    assert (model.image_threshold, model.pixel_threshold) == pytest.approx(thresholds, rel=1e-6)


def test_test_metrics_equal_direct_computation(fitted):
    model, dm, t = fitted
    logged = t.test(model, datamodule=dm, verbose=False)[0]
    dm.setup("test")
    items = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["label"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    with torch.no_grad():
        out = model.model(images)
    assert logged["test/image_auroc"] == pytest.approx(float(binary_auroc(out.image_scores, labels)), abs=1e-6)
    assert logged["test/pixel_auroc"] == pytest.approx(float(binary_auroc(out.anomaly_maps, masks)), abs=1e-6)
    assert logged["test/pro"] == pytest.approx(float(per_region_overlap(out.anomaly_maps, masks, 0.3)), abs=1e-6)
    _, _, f1 = precision_recall_f1(out.image_scores, labels, model.image_threshold)
    assert logged["test/image_f1"] == pytest.approx(float(f1), abs=1e-6)
    assert logged["test/pixel_auroc"] > 0.9  # the red squares are found
    assert torch.equal(model.test_results.index, torch.arange(len(items)))


def test_checkpoint_alone_is_enough_to_test(fitted, tmp_path):
    model, dm, t = fitted
    expected = t.test(model, datamodule=dm, verbose=False)[0]
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    fresh = Spade(image_k=3, gallery_k=3)
    assert not fresh.model.is_fitted
    got = trainer(tmp_path / "test").test(fresh, datamodule=dm, ckpt_path=str(ckpt), verbose=False)[0]
    assert got == pytest.approx(expected, abs=1e-7)
    loaded = Spade.load_from_checkpoint(ckpt)
    assert loaded.model.bank_size == 9 and loaded.image_threshold == pytest.approx(model.image_threshold)


def test_one_class_test_set_logs_what_it_can(tiny_mvtec, tmp_path):
    import shutil

    shutil.rmtree(tiny_mvtec / "widget" / "test" / "defect")
    shutil.rmtree(tiny_mvtec / "widget" / "ground_truth")
    model = Spade(image_k=3, gallery_k=3, threshold_samples=2)
    dm = datamodule(tiny_mvtec)
    t = trainer(tmp_path)
    t.fit(model, datamodule=dm)
    with pytest.warns(UserWarning, match="image AUROC .*1? ?.*both are needed"):
        logged = t.test(model, datamodule=dm, verbose=False)[0]
    assert "test/image_auroc" not in logged and "test/pixel_auroc" not in logged
    assert logged["test/image_threshold"] == pytest.approx(model.image_threshold)


def test_k_larger_than_the_training_set_uses_every_image_with_one_line(tiny_mvtec, tmp_path, caplog):
    model = Spade(image_k=50, gallery_k=3, few_shot_below=0)
    with caplog.at_level("INFO"):
        trainer(tmp_path).fit(model, datamodule=datamodule(tiny_mvtec))
    lines = [r.getMessage() for r in caplog.records if "image_k=" in r.getMessage()]
    assert lines == ["image_k=50 and gallery_k=3 with 9 training image(s): scoring uses 9 and 3 (8 leave-one-out)."]
    assert model.model.ks_in_use() == (9, 3) and model.model.ks_in_use(left_out=True) == (8, 3)


def test_predict_returns_paths_scores_maps(fitted):
    model, _, t = fitted
    dm = datamodule(Path(fitted[1].root), predict_dir=str(Path(fitted[1].root) / "widget" / "test"))
    batches = t.predict(model, datamodule=dm)
    paths = [p for b in batches for p in b.path]
    assert len(paths) == 7 and all(Path(p).exists() for p in paths)
    scores = torch.cat([b.score for b in batches])
    maps = torch.cat([b.anomaly_map for b in batches])
    assert maps.shape == (7, 64, 64)
    normalized = torch.cat([b.normalized_score for b in batches])
    assert ((normalized > 0.5) == (scores > model.image_threshold)).all()
    assert torch.equal(torch.argsort(normalized), torch.argsort(scores.double()))


def test_plain_tensor_batches_from_a_users_own_loader(tmp_path):
    """Drop-in: a user's own loader of (images, labels) tuples works for fit and test."""
    gen = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.rand(6, 3, 64, 64, generator=gen) * 0.2 + 0.4, torch.zeros(6, dtype=torch.long))
    test_images = torch.rand(4, 3, 64, 64, generator=gen) * 0.2 + 0.4
    test_images[2:, :, 10:30, 10:30] = 1.0
    test = TensorDataset(test_images, torch.tensor([0, 0, 1, 1]))
    model = Spade(image_k=2, gallery_k=2, threshold_samples=2)
    t = trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(model, train_dataloaders=DataLoader(train, batch_size=4))
        logged = t.test(model, dataloaders=DataLoader(test, batch_size=3), verbose=False)[0]
    assert model.model.bank_size == 6
    assert logged["test/image_auroc"] == 1.0


def test_settings_that_cannot_work_are_refused(tiny_mvtec, tmp_path):
    with pytest.raises(ConfigurationError, match="min_epochs"):
        trainer(tmp_path, min_epochs=3).fit(Spade(image_k=2, gallery_k=2), datamodule=datamodule(tiny_mvtec))
    with pytest.raises(ConfigurationError, match="no memory bank"):
        trainer(tmp_path).test(Spade(image_k=2, gallery_k=2), datamodule=datamodule(tiny_mvtec), verbose=False)
    with pytest.raises(ConfigurationError, match="threshold_method"):
        Spade(threshold_method="otsu")
    with pytest.raises(ConfigurationError, match="kappa"):
        Spade(kappa=0)


def test_a_partial_bank_says_so_with_both_counts(tiny_mvtec, tmp_path):
    model = Spade(image_k=2, gallery_k=2, threshold_samples=2)
    with pytest.warns(UserWarning, match=r"the bank holds 4 of the 9 training images"):
        trainer(tmp_path / "run", limit_train_batches=1).fit(model, datamodule=datamodule(tiny_mvtec))
    assert model.model.bank_size == 4
    assert model.threshold_source["partial_bank"] is True and model.threshold_source["train_images"] == 9
    (path,) = (tmp_path / "run").rglob("*.ckpt")
    saved = torch.load(path, weights_only=True, map_location="cpu")["lightning_ad"]["thresholds"]
    assert saved["partial_bank"] is True and saved["bank_images"] == 4
    complete = Spade(image_k=2, gallery_k=2, threshold_samples=2)
    trainer(tmp_path / "full").fit(complete, datamodule=datamodule(tiny_mvtec))
    assert complete.threshold_source["partial_bank"] is False


def test_f1_thresholds_tested_on_their_own_validation_images_warn(tiny_mvtec, tmp_path):
    model = Spade(image_k=3, gallery_k=3, threshold_method="f1")
    calibration = datamodule(tiny_mvtec, val_split=0.5)
    trainer(tmp_path / "run").fit(model, datamodule=calibration)
    calibrated = model.threshold_source["calibration_paths"]
    assert len(calibrated) == len(calibration.val_dataset) > 0
    with pytest.warns(UserWarning, match=rf"{len(calibrated)} of the 7 test images set this checkpoint's F1 thresholds"):
        trainer(tmp_path / "test").test(model, datamodule=datamodule(tiny_mvtec))
    # holding them out (the same split) gives no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=r"(?!.*F1 thresholds)")
        trainer(tmp_path / "held").test(model, datamodule=datamodule(tiny_mvtec, val_split=0.5))


def test_images_outside_zero_one_are_refused(fitted):
    model, _, _ = fitted
    with pytest.raises(ConfigurationError, match=r"images in \[0, 1\].*Divide 0\.\.255 images by 255"):
        model.model(torch.full((1, 3, 64, 64), 200.0))
    with pytest.raises(ConfigurationError, match="torch.uint8"):
        model.model(torch.zeros((1, 3, 64, 64), dtype=torch.uint8))
