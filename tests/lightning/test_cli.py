"""The command line as a user runs it: the README's main command, configs, checkpoint rules."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_mvtec, run, run_process

from lightning_ad.command import main


def test_readme_main_command_on_the_embedded_demo(tmp_path):
    """`lightning-ad fit --config configs/spade_lite0_demo.yaml`: generates data, fits, tests, writes pictures."""
    result = run_process(["fit", "--config", str(REPO / "configs" / "spade_lite0_demo.yaml"),
                  "--trainer.enable_progress_bar", "false"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for name in ("test/image_auroc", "test/pixel_auroc", "test/pro"):
        assert name in out
    # a clean console: no advertising tips, no deprecation noise from Lightning's internals
    assert "💡" not in out and "Tip:" not in out and "LeafSpec" not in out, out[-3000:]
    values = {line.split()[0]: float(line.split()[1]) for line in result.stdout.splitlines()
              if line.strip().startswith("test/") and len(line.split()) == 2}
    assert values["test/pixel_auroc"] > 0.95 and values["test/image_auroc"] > 0.85
    reports = list((tmp_path / "outputs" / "demo").rglob("test_report"))
    assert len(reports) == 1
    assert (reports[0] / "roc_image.png").stat().st_size > 0
    assert len(list(reports[0].rglob("overlays/**/*.png"))) == 36  # every test image
    assert len(list((tmp_path / "outputs" / "demo").rglob("*.ckpt"))) == 1


def test_every_shipped_config_parses(capsys):
    """Each config of configs/ parses into the method's settings (the command in this process: --print_config
    prints and exits)."""
    for config in sorted((REPO / "configs").glob("*.yaml")):
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(config), "--print_config"])
        printed = capsys.readouterr()
        assert done.value.code in (0, None), (config.name, printed.err[-2000:])
        parsed = yaml.safe_load(printed.out)
        assert parsed["model"]["layers"] == [1, 2, 3] and parsed["model"]["kappa"] == 1
        assert parsed["model"]["sigma"] == 4.0


def _metrics(folder: Path) -> dict:
    (path,) = sorted(folder.rglob("metrics.csv"))
    with open(path) as handle:
        return {k: float(v) for k, v in list(csv.DictReader(handle))[-1].items() if k.startswith("test/") and v}


def test_configuration_given_at_test_time_wins_and_is_reported(fitted):
    base, config, ckpt = fitted
    logs = base / "k2"
    result = run(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--model.image_k", "2",
                  "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(logs)], base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scoring settings differ from fit time (image_k 3 -> 2): thresholds learned again" in result.stdout + result.stderr
    assert "dirpath has changed" not in result.stdout + result.stderr
    same = run(["test", "--config", str(config), "--ckpt_path", str(ckpt),
                "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(base / "k3")], base)
    assert same.returncode == 0 and "differ from fit time" not in same.stdout + same.stderr
    # the image score really changed with K (pixel maps depend on gallery_k only), and so did its threshold:
    # thresholds learned at K=3 are never applied to scores made at K=2
    k2, k3 = _metrics(logs), _metrics(base / "k3")
    assert k2["test/pixel_auroc"] == k3["test/pixel_auroc"]
    assert k2["test/image_threshold"] != k3["test/image_threshold"]
    assert k2["test/pixel_threshold"] == k3["test/pixel_threshold"]


def test_input_size_given_differently_is_refused_with_both_values(fitted):
    base, config, ckpt = fitted
    result = run(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--data.init_args.image_size", "80"], base)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "image_size=[80, 80], crop_size=[64, 64]" in result.stderr
    assert "fitted with image_size=[64, 64], crop_size=None" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_needs_only_the_checkpoint_and_a_folder(fitted, tmp_path):
    base, _, ckpt = fitted
    inputs = base / "data" / "widget" / "test" / "defect"
    result = run(["predict", "--ckpt_path", str(ckpt), "--data.predict_dir", str(inputs),
                  "--trainer.default_root_dir", str(tmp_path / "out")], base)
    assert result.returncode == 0, result.stderr[-3000:]
    (csv_path,) = (tmp_path / "out" / "predictions").rglob("predictions.csv")
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == len(list(inputs.iterdir())) and all(r["label"] in ("0", "1") for r in rows)
    assert "MVTecDataModule as configured at fit time" in result.stdout + result.stderr
    assert not (tmp_path / "out" / "lightning_logs").exists(), "predict created a log folder"


def test_k_larger_than_the_bank_uses_every_image_and_says_so(fitted, tmp_path):
    base, _, ckpt = fitted
    inputs = base / "data" / "widget" / "test" / "defect"
    result = run(["predict", "--ckpt_path", str(ckpt), "--data.predict_dir", str(inputs), "--model.image_k", "40",
                  "--trainer.default_root_dir", str(tmp_path / "out")], base)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout + result.stderr
    assert "scoring settings differ from fit time (image_k 3 -> 40)" in printed
    assert "image_k=40 and gallery_k=3 with 9 training image(s): scoring uses 9 and 3" in printed
    assert len(list((tmp_path / "out").rglob("*.csv"))) == 1


def test_checkpoint_of_another_backbone_is_refused_by_name(fitted):
    base, config, ckpt = fitted
    result = run(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--model.backbone", "resnet18",
                  "--model.weights", "random"], base)
    assert result.returncode == 2
    assert "fitted with backbone 'efficientnet_lite0' (configured: 'resnet18')" in result.stderr
    assert "Traceback" not in result.stderr


def test_fit_from_a_checkpoint_adds_to_its_bank_and_leaves_it_as_it_was(fitted, tmp_path):
    base, config, ckpt = fitted
    before = ckpt.read_bytes()
    result = run(["fit", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path)], base)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert "its bank of 9 images grows by the training images" in printed
    assert "skipped 9 training image(s) already in the bank" in printed  # the same images: nothing to add
    assert ckpt.read_bytes() == before and len(list(tmp_path.rglob("*.ckpt"))) == 1


def test_validate_with_f1_thresholds_writes_a_calibrated_checkpoint(fitted):
    base, config, ckpt = fitted
    before = ckpt.read_bytes()
    result = run(["validate", "--config", str(config), "--ckpt_path", str(ckpt), "--model.threshold_method", "f1",
                  "--data.val_split", "0.5"], base)
    assert result.returncode == 0, result.stderr[-3000:]
    calibrated = ckpt.with_name(ckpt.stem + "-f1.ckpt")
    assert "checkpoint with F1-optimal thresholds" in result.stdout + result.stderr and calibrated.is_file()
    assert ckpt.read_bytes() == before  # the given checkpoint is untouched
    import torch

    old = torch.load(ckpt, weights_only=True)["state_dict"]
    new = torch.load(calibrated, weights_only=True)["state_dict"]
    assert torch.equal(old["model.bank.pooled"], new["model.bank.pooled"])
    assert float(new["model.image_threshold"]) != float(old["model.image_threshold"])
    assert "weights_only" not in result.stdout + result.stderr
    # the calibrated checkpoint remembers its validation images: testing on them warns with the count,
    # holding them out (the same split) does not
    reused = run(["test", "--config", str(config), "--ckpt_path", str(calibrated)], base)
    assert reused.returncode == 0, reused.stderr[-3000:]
    assert "of the 7 test images set this checkpoint's F1 thresholds" in reused.stdout + reused.stderr
    held_out = run(["test", "--config", str(config), "--ckpt_path", str(calibrated), "--data.val_split", "0.5"], base)
    assert held_out.returncode == 0 and "set this checkpoint's F1 thresholds" not in held_out.stdout + held_out.stderr
    assert "threshold_method" not in reused.stdout + reused.stderr  # the user changed nothing: nothing to report


#: ``lightning-ad`` as a user without tensorboard runs it (Lightning then warns when it builds its default logger).
WITHOUT_TENSORBOARD = """
import pytorch_lightning.trainer.connectors.logger_connector.logger_connector as connector
connector._TENSORBOARD_AVAILABLE = connector._TENSORBOARDX_AVAILABLE = False
from lightning_ad.command import main
main()
"""


def test_the_console_shows_only_what_the_user_should_act_on(tmp_path):
    """No seed warning, no tensorboard packaging notice, no site-packages paths, and fit's model summary
    claims no trainable parameter (step_anchor requires a gradient only for DDP and manual optimisation)."""
    data = make_mvtec(tmp_path / "data", n_train=6, n_good=2, n_bad=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({  # no seed_everything: the default applies
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "runs")},
        "model": {"image_k": 3, "gallery_k": 3, "threshold_samples": 2},
        "data": {"class_path": "lightning_ad.MVTecDataModule",
                 "init_args": {"root": str(data), "category": "widget", "image_size": 64, "crop_size": 64,
                               "batch_size": 4, "num_workers": 0}},
    }))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LIGHTNING_AD_DEBUG", None)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORBOARD, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    fit = cli("fit", "--config", str(config))
    (ckpt,) = sorted((tmp_path / "runs").rglob("*.ckpt"))
    # predict builds no logger (tensorboard plays no part): the command in this process, its console as a process's
    done = run(["predict", "--ckpt_path", str(ckpt), "--data.predict_dir", str(data / "widget" / "test"),
                "--trainer.enable_progress_bar", "false"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    predict = done.stdout + done.stderr
    for name, out in (("fit", fit), ("predict", predict)):
        for noise in ("No seed found", "tensorboardX", "site-packages", "Warning", "configure_callbacks"):
            assert noise not in out, f"{name} printed {noise!r}:\n{out}"
    assert "predictions of 4 images written" in predict
    summary = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in fit.splitlines() if line.rstrip().endswith(" params")]
    assert {label: count for count, label in summary} == {
        "Trainable params": "0", "Non-trainable params": "4.7 M", "Total params": "4.7 M"}, fit
    assert "other params" not in fit and "| model | SpadeModel | 4.7 M" in fit
    assert not (tmp_path / "lightning_logs").exists(), "predict built a logger"
