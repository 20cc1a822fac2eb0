"""Several processes (CPU, gloo) give the single-process answer: bank, metrics, checkpoints, predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import cli, make_mvtec, write_config

TOL = 1e-5  # of the largest value: convolutions round differently with other batch make-ups


def fit(config: Path, out: Path, processes: int) -> Path:
    cli(["fit", "--config", str(config), "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out)],
        out.parent, processes)
    (ckpt,) = sorted(out.rglob("*.ckpt"))
    return ckpt


def run_test(config: Path, ckpt: Path, out: Path, processes: int) -> dict:
    cli(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.logger", "CSVLogger",
         "--trainer.logger.save_dir", str(out)], out.parent, processes)
    (path,) = sorted(out.rglob("metrics.csv"))
    with open(path) as handle:
        row = list(csv.DictReader(handle))[-1]
    return {k: float(v) for k, v in row.items() if k.startswith("test/") and v}


def bank(ckpt: Path) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.bank") or k.endswith("_threshold")}


def assert_banks_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        if key.endswith(("bank.index", "bank.image_size")) or a[key].numel() == 0:
            assert torch.equal(a[key], b[key]), key
        else:
            scale = float(a[key].double().abs().max())
            assert float((a[key].double() - b[key].double()).abs().max()) <= TOL * scale, key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """7 training images (odd, not a multiple of 2 or 3), 5 test images (odd)."""
    base = tmp_path_factory.mktemp("dist")
    data = make_mvtec(base / "data", n_train=7, n_good=2, n_bad=3)
    config = write_config(base / "config.yaml", data)
    ckpts = {n: fit(config, base / f"fit{n}" / "logs", n) for n in (1, 2)}
    return base, config, ckpts


def test_bank_of_two_processes_equals_one(runs):
    _, _, ckpts = runs
    one, two = bank(ckpts[1]), bank(ckpts[2])
    index = one["model.bank.index"]  # every image once, ordered by content id (distinct ids, ascending)
    assert index.numel() == 7 and torch.equal(index, index.unique())
    assert_banks_equal(one, two)


def test_bank_of_three_processes_equals_one(runs):
    base, config, ckpts = runs
    three = fit(config, base / "fit3" / "logs", 3)
    assert_banks_equal(bank(ckpts[1]), bank(three))


def test_metrics_of_two_processes_equal_one(runs):
    """The checkpoint fitted on 2 processes, tested on 2, logs the metrics that 1 process logs with the checkpoint fitted
    on 1. (The two checkpoints hold the same bank: test_bank_of_two_processes_equals_one.)"""
    base, config, ckpts = runs
    reference = run_test(config, ckpts[1], base / "t11" / "logs", 1)
    assert {"test/image_auroc", "test/pixel_auroc", "test/pro"} <= reference.keys()
    got = run_test(config, ckpts[2], base / "t22" / "logs", 2)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert got[key] == pytest.approx(value, rel=TOL, abs=TOL), key


def test_a_rank_without_images_does_not_hang(runs, tmp_path):
    """One test image and one image to predict on 2 processes: one rank has nothing to do."""
    base, config, ckpts = runs
    data = make_mvtec(tmp_path / "one", n_train=4, n_good=0, n_bad=1)
    single = tmp_path / "single"
    single.mkdir()
    (single / "only.png").write_bytes((data / "widget" / "test" / "defect" / "000.png").read_bytes())
    args = ["--config", str(config), "--ckpt_path", str(ckpts[1]), "--data.root", str(data)]
    out = tmp_path / "pred"
    cli(["predict", *args, "--data.predict_dir", str(single), "--prediction_writer.output_dir", str(out)], tmp_path, 2)
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["only.png"]
    # the test set has a single (anomalous) image: the padded copy on the other rank counts once
    result = cli(["test", *args, "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "t")],
                 tmp_path, 2)
    assert "test set: 0 normal and 1 anomalous images" in result.stdout + result.stderr
    (metrics,) = sorted((tmp_path / "t").rglob("metrics.csv"))
    with open(metrics) as handle:
        row = list(csv.DictReader(handle))[-1]
    assert row["test/pixel_auroc"] and "test/image_auroc" not in row
