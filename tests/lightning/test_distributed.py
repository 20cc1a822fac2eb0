"""Several processes (CPU, gloo) give the single-process answer: bank, metrics, checkpoints, predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import cli, make_mvtec, write_config

TOL = 1e-5  # of the largest value: convolutions round differently with other batch make-ups


def fit(config: Path, out: Path, processes: int, *extra: str, launch: str = "lightning") -> Path:
    """``fit --test_after_fit true`` on ``processes`` processes (``launch``: :func:`conftest.cli`), logged below
    ``out``: its checkpoint (its console output in ``out/console.txt``)."""
    # (no test report: the report of two processes is test_callbacks' two-process test)
    result = cli(["fit", "--config", str(config), "--test_after_fit", "true", "--test_report.enabled", "false",
                  "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out), *extra],
                 out.parent, processes, launch=launch)
    (out / "console.txt").write_text(result.stdout + result.stderr)
    (ckpt,) = sorted(out.rglob("*.ckpt"))
    return ckpt


def logged_test_metrics(out: Path) -> dict:
    """The test metrics a run logged below ``out``."""
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
    """7 training images (odd, not a multiple of 2 or 3), fitted and tested (5 test images, odd) on 1 and on 2
    processes (Lightning starting the second); and fitted on 3 processes started as a cluster starts them, with a
    single test image, so that two of its ranks test nothing."""
    base = tmp_path_factory.mktemp("dist")
    data = make_mvtec(base / "data", n_train=7, n_good=2, n_bad=3)
    config = write_config(base / "config.yaml", data)
    ckpts = {n: fit(config, base / f"fit{n}" / "logs", n) for n in (1, 2)}
    single = make_mvtec(base / "single", n_train=7, n_good=0, n_bad=1)  # the same 7 training images
    ckpts[3] = fit(config, base / "fit3" / "logs", 3, "--data.root", str(single), launch="cluster")
    return base, config, ckpts


def test_bank_of_two_processes_equals_one(runs):
    _, _, ckpts = runs
    one, two = bank(ckpts[1]), bank(ckpts[2])
    index = one["model.bank.index"]  # every image once, ordered by content id (distinct ids, ascending)
    assert index.numel() == 7 and torch.equal(index, index.unique())
    assert_banks_equal(one, two)


def test_bank_of_three_processes_equals_one(runs):
    _, _, ckpts = runs
    assert_banks_equal(bank(ckpts[1]), bank(ckpts[3]))


def test_metrics_of_two_processes_equal_one(runs):
    """Fit and test on 2 processes log the metrics that fit and test on 1 process log. (The two checkpoints hold the
    same bank: test_bank_of_two_processes_equals_one; a checkpoint loaded on several processes:
    test_a_rank_without_images_does_not_hang and the sharded banks' tests.)"""
    base, _, _ = runs
    reference = logged_test_metrics(base / "fit1" / "logs")
    assert {"test/image_auroc", "test/pixel_auroc", "test/pro"} <= reference.keys()
    got = logged_test_metrics(base / "fit2" / "logs")
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert got[key] == pytest.approx(value, rel=TOL, abs=TOL), key


def test_a_rank_without_images_does_not_hang(runs, tmp_path):
    """One test image on 3 processes (the fit's test) and one image to predict on 2: ranks with nothing to do."""
    base, config, ckpts = runs
    # the test set has a single (anomalous) image: the padded copies on the other ranks count once
    assert "test set: 0 normal and 1 anomalous images" in (base / "fit3" / "logs" / "console.txt").read_text()
    row = logged_test_metrics(base / "fit3" / "logs")
    assert "test/pixel_auroc" in row and "test/image_auroc" not in row
    single = tmp_path / "single"
    single.mkdir()
    (single / "only.png").write_bytes((base / "single" / "widget" / "test" / "defect" / "000.png").read_bytes())
    out = tmp_path / "pred"
    cli(["predict", "--config", str(config), "--ckpt_path", str(ckpts[1]), "--data.predict_dir", str(single),
         "--prediction_writer.output_dir", str(out)], tmp_path, 2, launch="cluster")
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["only.png"]
