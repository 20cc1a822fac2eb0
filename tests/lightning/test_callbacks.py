"""PredictionWriter and TestReport on a tiny generated data set, and the pictures of lightning_ad.inference.visualize
(overlays with their legend strip)."""

from __future__ import annotations

import csv
import hashlib
import math
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import make_trainer
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_ad import MVTecDataModule, Spade
from lightning_ad.core.metrics import binary_auroc
from lightning_ad.core.thresholds import normalize_scores
from lightning_ad.errors import ConfigurationError
from lightning_ad.inference import visualize as V
from lightning_ad.lightning.outputs import sanitize_relpath
from lightning_ad.lightning.prediction_writer import CSV_COLUMNS, PredictionWriter
from lightning_ad.lightning.test_report import TEST_CSV, TEST_CSV_COLUMNS, TestReport

SIZE = 64
CATEGORY = "widget"


# ---------------------------------------------------------------------- data


def _texture(rng: np.random.Generator) -> np.ndarray:
    base = rng.normal(128, 20, (SIZE // 8, SIZE // 8, 3))
    image = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 6, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_data(root: Path) -> None:
    """MVTec layout: 8 normal training images, 4 normal and 3 defective test images with masks."""
    rng = np.random.default_rng(0)
    base = root / CATEGORY
    for i in range(8):
        _save(base / "train" / "good" / f"{i:03d}.png", _texture(rng))
    for i in range(4):
        _save(base / "test" / "good" / f"{i:03d}.png", _texture(rng))
    for i in range(3):
        image, mask = _texture(rng), np.zeros((SIZE, SIZE), np.uint8)
        y, x = 10 + 12 * i, 30 - 8 * i
        image[y : y + 14, x : x + 14] = [250, 30, 30]
        mask[y : y + 14, x : x + 14] = 255
        _save(base / "test" / "defect" / f"{i:03d}.png", image)
        _save(base / "ground_truth" / "defect" / f"{i:03d}_mask.png", mask)


def _make_predict_folder(folder: Path) -> List[Path]:
    rng = np.random.default_rng(1)
    files = [folder / "a.png", folder / "b.jpg", folder / "sub" / "c.png", folder / "sub" / "deeper" / "a.png", folder / "z.png"]
    for i, path in enumerate(files):
        image = _texture(rng)
        if i % 2:
            image[20:36, 20:36] = [240, 240, 20]
        _save(path, image)
    return files


def _digest(folder: Path) -> Dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _datamodule(root: Path, predict_dir=None) -> MVTecDataModule:
    return MVTecDataModule(
        root=str(root), category=CATEGORY, image_size=SIZE, crop_size=SIZE, batch_size=3, num_workers=0,
        predict_dir=None if predict_dir is None else str(predict_dir),
    )


def _trainer(root: Path, callbacks=(), logger=False) -> pl.Trainer:
    return make_trainer(root, logger=logger, enable_checkpointing=False, callbacks=list(callbacks))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(model, data root, work folder): a Spade fitted on the tiny data set (real offline backbone).

    The fitted checkpoint is ``<work>/fitted.ckpt``.
    """
    work = tmp_path_factory.mktemp("callbacks")
    data = work / "data"
    _make_data(data)
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4)
    report = TestReport(output_dir=str(work / "fit_report"))
    trainer = _trainer(work / "fit_run", [report])
    trainer.fit(model, _datamodule(data))
    trainer.save_checkpoint(str(work / "fitted.ckpt"))
    assert math.isfinite(model.image_threshold) and math.isfinite(model.pixel_threshold)
    assert not (work / "fit_report").exists(), "TestReport wrote during fit"
    assert not (work / "fit_run" / "test_report").exists()
    return model, data, work


def _read_csv(path: Path, columns=CSV_COLUMNS) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == columns
        return list(reader)


def _legend_height(width: int, score: float, tau: float, theta: float) -> int:
    return V.legend_strip(max(width, V.LEGEND_MIN_WIDTH), theta, score, tau).shape[0]


# ---------------------------------------------------------------------- PredictionWriter


def test_prediction_writer_matches_predict_outputs(fitted, tmp_path):
    model, data, _ = fitted
    inputs = tmp_path / "inputs"
    files = _make_predict_folder(inputs)
    before = _digest(inputs)
    root = tmp_path / "run"
    writer = PredictionWriter()
    datamodule = _datamodule(data, inputs)
    outputs = _trainer(root, [writer]).predict(model, datamodule=datamodule)

    out = root / "predictions" / "version_0"
    assert writer.output_path == out
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == len(files)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert {Path(r["path"]).resolve() for r in rows} == {f.resolve() for f in files}

    tau, theta = model.image_threshold, model.pixel_threshold
    returned = {}
    for batch in outputs:
        for i, path in enumerate(batch.path):
            returned[path] = {
                "image_scores": batch.score[i], "normalized_scores": batch.normalized_score[i],
                "pred_labels": batch.decision[i], "anomaly_maps": batch.anomaly_map[i], "pred_masks": batch.pred_mask[i],
                "relpath": batch.relpath[i], "index": int(batch.index[i]),
            }
    assert set(returned) == {r["path"] for r in rows}
    labels_seen = set()
    for row in rows:
        expected = returned[row["path"]]
        assert row["relpath"] == expected["relpath"]
        assert float(row["image_score"]) == float(expected["image_scores"])  # exact round trip
        assert float(row["normalized_score"]) == float(expected["normalized_scores"])
        assert float(row["normalized_score"]) == pytest.approx(float(normalize_scores(expected["image_scores"].reshape(1), tau)[0]))
        assert int(row["label"]) == int(bool(expected["pred_labels"])) == int(float(row["image_score"]) >= tau)
        labels_seen.add(int(row["label"]))
        # names keep the sub folders and the stem; the output extension replaces the original one
        stem = row["relpath"].rsplit(".", 1)[0]
        assert row["map_file"] == f"maps/{stem}.tiff"
        assert row["overlay_file"] == f"overlays/{stem}.png"
        with Image.open(out / row["map_file"]) as im:
            assert im.mode == "F"
            stored = np.asarray(im)
        assert stored.dtype == np.float32
        assert np.array_equal(stored, expected["anomaly_maps"].numpy())
        score = float(expected["image_scores"])
        with Image.open(out / row["overlay_file"]) as im:
            assert im.size == (V.LEGEND_MIN_WIDTH, SIZE + _legend_height(SIZE, score, tau, theta)) and im.mode == "RGB"
            drawn = np.asarray(im)
        item = datamodule.predict_dataset[expected["index"]]
        reference = V.overlay(item["image"], expected["anomaly_maps"], theta, pred_mask=expected["pred_masks"])
        assert np.array_equal(drawn[:SIZE, :SIZE], reference)  # the picture itself, untouched by the legend
        assert np.array_equal(drawn, V.with_legend(reference, theta, score, tau))
    assert (out / "maps" / "sub" / "deeper" / "a.tiff").is_file()
    assert (out / "maps" / "b.tiff").is_file()
    assert not list(out.glob(".*")), "temporary or part files left behind"
    assert _digest(inputs) == before, "the input images changed"

    # a second run never reuses the folder
    _trainer(root, [writer]).predict(model, datamodule=_datamodule(data, inputs))
    assert writer.output_path == root / "predictions" / "version_1"
    assert len(_read_csv(writer.output_path / "predictions.csv")) == len(files)
    assert _read_csv(out / "predictions.csv") == rows
    assert _digest(inputs) == before


def test_prediction_writer_refuses_unsafe_folders(fitted, tmp_path):
    model, data, _ = fitted
    inputs = tmp_path / "inputs"
    _make_predict_folder(inputs)
    before = _digest(inputs)

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="taken.*not empty"):
        _trainer(tmp_path / "r1", [PredictionWriter(output_dir=str(taken))]).predict(
            model, datamodule=_datamodule(data, inputs), return_predictions=False
        )
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]

    for kwargs, root in (({"output_dir": str(inputs / "out")}, tmp_path / "r2"), ({}, inputs / "nested")):
        with pytest.raises(ConfigurationError, match="folder of the input images"):
            _trainer(root, [PredictionWriter(**kwargs)]).predict(
                model, datamodule=_datamodule(data, inputs), return_predictions=False
            )
    assert _digest(inputs) == before
    assert not (inputs / "out").exists() and not (inputs / "nested" / "predictions").exists()

    # an empty existing folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    _trainer(tmp_path / "r3", [PredictionWriter(output_dir=str(empty), write_maps=False)]).predict(
        model, datamodule=_datamodule(data, inputs), return_predictions=False
    )
    rows = _read_csv(empty / "predictions.csv")
    assert len(rows) == 5 and all(r["map_file"] == "" and r["overlay_file"] for r in rows)
    assert not (empty / "maps").exists()


class _Nasty(Dataset):
    """Images whose relpaths try to escape the output folder."""

    RELPATHS = ["../../x.png", "/abs/evil.png", "..\\..\\win.png", "a/../../b.png", "x.png", "", "./.", "C:\\d\\e.png"]

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        rng = np.random.default_rng(3)
        self.images = [torch.from_numpy(_texture(rng)).permute(2, 0, 1).float() / 255 for _ in self.RELPATHS]

    def __len__(self) -> int:
        return len(self.RELPATHS)

    def __getitem__(self, i: int):
        return {"image": self.images[i], "path": str(self.folder / f"img{i}.png"), "relpath": self.RELPATHS[i], "index": i}


def test_prediction_writer_names_stay_inside(fitted, tmp_path):
    model, _, _ = fitted
    run = tmp_path / "deep" / "er" / "run"
    out = run / "out"
    outside_before = sorted(str(p) for p in tmp_path.rglob("*"))
    _trainer(run, [PredictionWriter(output_dir=str(out))]).predict(
        model, dataloaders=DataLoader(_Nasty(tmp_path / "src"), batch_size=3), return_predictions=False
    )
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == len(_Nasty.RELPATHS)
    names = [r["map_file"] for r in rows] + [r["overlay_file"] for r in rows]
    assert len(set(names)) == len(names), "two images share an output file"
    real_out = os.path.realpath(out)
    for name in names:
        assert not name.startswith("/") and ".." not in Path(name).parts and "\\" not in name
        target = os.path.realpath(out / name)
        assert os.path.commonpath([target, real_out]) == real_out
        assert os.path.isfile(target)
    written = {str(p) for p in tmp_path.rglob("*")} - set(outside_before)
    assert all(p == str(run) or p.startswith(str(run) + os.sep) or str(run).startswith(p + os.sep) for p in written), written
    assert not (tmp_path / "x.png").exists() and not Path("/abs").exists()


def test_sanitize_relpath():
    assert str(sanitize_relpath("sub/a.jpg")) == "sub/a.jpg"
    assert str(sanitize_relpath("../../x.png")) == "x.png"
    assert str(sanitize_relpath("/etc/passwd")) == "etc/passwd"
    assert str(sanitize_relpath("a\\..\\..\\b.png")) == "a/b.png"
    assert str(sanitize_relpath("C:\\Users\\x.png")) == "Users/x.png"
    assert str(sanitize_relpath("..")) == "image"
    assert str(sanitize_relpath("a\x00b.png")) == "a_b.png"


def test_prediction_writer_disabled_writes_nothing(fitted, tmp_path):
    model, data, _ = fitted
    inputs = tmp_path / "inputs"
    _make_predict_folder(inputs)
    outputs = _trainer(tmp_path / "run", [PredictionWriter(enabled=False)]).predict(
        model, datamodule=_datamodule(data, inputs)
    )
    assert sum(len(b) for b in outputs) == 5
    assert not (tmp_path / "run").exists()


def test_prediction_writer_keeps_extensions_only_where_stems_collide(fitted, tmp_path):
    model, data, _ = fitted
    inputs = tmp_path / "inputs"
    rng = np.random.default_rng(3)
    for name in ("a.jpg", "a.bmp", "b.jpg"):
        _save(inputs / name, _texture(rng))
    _trainer(tmp_path / "run", [PredictionWriter()]).predict(model, datamodule=_datamodule(data, inputs))
    rows = {r["relpath"]: r for r in _read_csv(tmp_path / "run" / "predictions" / "version_0" / "predictions.csv")}
    assert rows["a.jpg"]["overlay_file"] == "overlays/a.jpg.png"
    assert rows["a.bmp"]["overlay_file"] == "overlays/a.bmp.png"
    assert rows["b.jpg"]["overlay_file"] == "overlays/b.png"
    assert rows["a.jpg"]["map_file"] != rows["a.bmp"]["map_file"]


# ---------------------------------------------------------------------- TestReport


def test_test_report_writes_pictures(fitted, tmp_path):
    model, data, _ = fitted
    report = TestReport()
    logger = pl.loggers.TensorBoardLogger(str(tmp_path / "tb"), name="", version="v")
    datamodule = _datamodule(data)
    _trainer(tmp_path / "run", [report], logger=logger).test(model, datamodule=datamodule)
    folder = tmp_path / "tb" / "v" / "test_report"
    assert report.output_path == folder
    results = model.test_results
    assert results is not None and len(results.path) == 7

    for name in ("roc_image", "roc_pixel", "score_histogram"):
        with Image.open(folder / f"{name}.png") as im:
            array = np.asarray(im.convert("RGB"))
        assert min(array.shape[:2]) > 200 and array.std() > 10, f"{name}.png looks blank"

    overlays = sorted(p.relative_to(folder / "overlays").as_posix() for p in (folder / "overlays").rglob("*.png"))
    assert overlays == sorted(f"{s.relpath.rsplit('.', 1)[0]}.png" for s in datamodule.test_dataset.samples)
    theta, tau = model.pixel_threshold, model.image_threshold
    for position, index in enumerate(results.index.tolist()):
        sample = datamodule.test_dataset.samples[index]
        item = datamodule.test_dataset[index]
        score = float(results.score[position])
        with Image.open(folder / "overlays" / f"{sample.relpath.rsplit('.', 1)[0]}.png") as im:
            assert im.size == (V.LEGEND_MIN_WIDTH, SIZE + _legend_height(SIZE, score, tau, theta))
            drawn = np.asarray(im)
        result_map = results.anomaly_map[position]
        reference = V.overlay(item["image"], result_map, theta, gt_mask=results.mask[position], pred_mask=result_map >= theta)
        assert np.array_equal(drawn[:SIZE, :SIZE], reference)
        assert np.array_equal(drawn, V.with_legend(reference, theta, score, tau))
        if results.mask[position].any():
            assert (drawn == np.array(V.GT_COLOR, np.uint8)).all(-1).any(), "no ground-truth outline"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "v"), size_guidance={"images": 0})
    events.Reload()
    assert {"test_report/roc_image", "test_report/roc_pixel", "test_report/score_histogram"} <= set(events.Tags()["images"])


def test_test_report_max_overlays_and_disabled(fitted, tmp_path):
    model, data, _ = fitted
    _trainer(tmp_path / "run", [TestReport(max_overlays=2)]).test(model, datamodule=_datamodule(data))
    folder = tmp_path / "run" / "test_report"
    overlays = sorted(p.relative_to(folder / "overlays").as_posix() for p in (folder / "overlays").rglob("*.png"))
    # evenly spread over the 7 test images (indices 0 and 3; defect/ sorts first): one defective, one normal
    assert overlays == ["test/defect/000.png", "test/good/000.png"]
    assert (folder / "score_histogram.png").is_file()

    _trainer(tmp_path / "off", [TestReport(enabled=False)]).test(model, datamodule=_datamodule(data))
    assert not (tmp_path / "off").exists()


def _check_test_table(rows: List[Dict[str, str]], model: Spade, samples) -> None:
    """Each row of test_images.csv is the test run's record of that image (``model.test_results``), exactly."""
    results = model.test_results
    tau, theta = model.image_threshold, model.pixel_threshold
    assert len(rows) == len(results) == len(samples) == 7
    decisions = results.decision.tolist()
    for position, row in enumerate(rows):
        index = int(results.index[position])
        label = int(results.label[position])
        score = float(results.score[position])
        assert row["path"] == results.path[position] == str(samples[index].path)
        assert row["relpath"] == samples[index].relpath
        assert int(row["label"]) == label == int(Path(row["path"]).parent.name == "defect")
        assert float(row["image_score"]) == score  # exact round trip
        assert float(row["normalized_score"]) == float(results.normalized_score[position])
        assert float(row["normalized_score"]) == pytest.approx(score / (2 * tau) if score <= tau else 1 - tau / (2 * score))
        assert int(row["decision"]) == int(decisions[position]) == int(score >= tau)
        assert float(row["image_threshold"]) == tau and float(row["pixel_threshold"]) == theta
        assert int(row["has_mask"]) == label  # the defective images have masks, the good ones none


def test_test_report_csv_equals_test_results(fitted, tmp_path):
    """test_images.csv: one row per test image, its scores and decisions those of the test run, exactly."""
    model, data, work = fitted
    datamodule = _datamodule(data)
    metrics = _trainer(tmp_path / "run", [TestReport(max_overlays=2)]).test(model, datamodule=datamodule, verbose=False)[0]
    folder = tmp_path / "run" / "test_report"
    rows = _read_csv(folder / TEST_CSV, TEST_CSV_COLUMNS)
    _check_test_table(rows, model, datamodule.test_dataset.samples)
    # overlays: only the two drawn (max_overlays=2) are named, and they exist
    named = [r["overlay_file"] for r in rows if r["overlay_file"]]
    assert named == ["overlays/test/defect/000.png", "overlays/test/good/000.png"]
    assert all((folder / name).is_file() for name in named)
    # the logged metrics follow from the table alone
    scores = torch.tensor([float(r["image_score"]) for r in rows], dtype=torch.float64)
    labels = torch.tensor([int(r["label"]) for r in rows])
    assert float(binary_auroc(scores, labels)) == pytest.approx(metrics["test/image_auroc"], abs=1e-6)
    assert not list(folder.glob(".*")), "temporary files left behind"

    # an image threshold set by hand between the scores: both decisions occur, and F1 follows from the table
    middle = float(np.median(scores.numpy()))
    split = Spade.load_from_checkpoint(str(work / "fitted.ckpt"), image_threshold=middle)
    metrics = _trainer(tmp_path / "split", [TestReport(max_overlays=0)]).test(split, datamodule=datamodule, verbose=False)[0]
    rows = _read_csv(tmp_path / "split" / "test_report" / TEST_CSV, TEST_CSV_COLUMNS)
    assert split.image_threshold == middle and all(float(r["image_threshold"]) == middle for r in rows)
    _check_test_table(rows, split, datamodule.test_dataset.samples)
    decided = torch.tensor([int(r["decision"]) for r in rows])
    assert 0 < int(decided.sum()) < len(rows)
    assert all(r["overlay_file"] == "" for r in rows)  # none drawn
    tp, fp = int(((decided == 1) & (labels == 1)).sum()), int(((decided == 1) & (labels == 0)).sum())
    fn = int(((decided == 0) & (labels == 1)).sum())
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(metrics["test/image_f1"], abs=1e-6)


def test_former_callbacks_module_names_the_same_classes():
    """Configs and code that name lightning_ad.lightning.callbacks.PredictionWriter keep working."""
    import lightning_ad
    from lightning_ad.lightning import callbacks

    assert callbacks.PredictionWriter is PredictionWriter is lightning_ad.PredictionWriter
    assert callbacks.TestReport is TestReport is lightning_ad.TestReport
    assert callbacks.CSV_COLUMNS == CSV_COLUMNS and callbacks.sanitize_relpath is sanitize_relpath


# ---------------------------------------------------------------------- two processes

_CHILD = """
import sys
import pytorch_lightning as pl
from lightning_ad import MVTecDataModule, PredictionWriter, Spade, TestReport

ckpt, data, inputs, root = sys.argv[1:5]
model = Spade.load_from_checkpoint(ckpt)
trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", default_root_dir=root, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    callbacks=[PredictionWriter(), TestReport()],
)
datamodule = MVTecDataModule(
    root=data, category="widget", image_size=64, crop_size=64, batch_size=2, num_workers=0, predict_dir=inputs
)
trainer.predict(model, datamodule=datamodule, return_predictions=False)
trainer.test(model, datamodule=datamodule)
"""


def test_two_processes_write_each_image_once(fitted, tmp_path):
    """Two DDP ranks (processes launched here, as a cluster would): one CSV, each image once, same scores."""
    import socket
    import subprocess
    import sys

    model, data, work = fitted
    inputs = tmp_path / "inputs"
    files = _make_predict_folder(inputs)  # 5 images: the ranks get 3 and 2
    root = tmp_path / "run"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                   RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(work / "fitted.ckpt"), str(data), str(inputs), str(root)],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]

    rows = _read_csv(root / "predictions" / "version_0" / "predictions.csv")
    assert sorted(Path(r["path"]).resolve() for r in rows) == sorted(f.resolve() for f in files)
    assert not list((root / "predictions").glob("version_1")), "the ranks chose different folders"
    single = _trainer(tmp_path / "single").predict(model, datamodule=_datamodule(data, inputs))
    expected = {p: float(s) for b in single for p, s in zip(b.path, b.score)}
    for row in rows:
        assert float(row["image_score"]) == pytest.approx(expected[row["path"]], rel=1e-5)
        with Image.open(root / "predictions" / "version_0" / row["map_file"]) as im:
            assert im.size == (SIZE, SIZE)

    report = root / "test_report"
    overlays = sorted(p.relative_to(report / "overlays").as_posix() for p in (report / "overlays").rglob("*"))
    expected_overlays = sorted(
        [f"test/good/{i:03d}.png" for i in range(4)] + [f"test/defect/{i:03d}.png" for i in range(3)]
    )
    assert [o for o in overlays if o.endswith(".png")] == expected_overlays
    assert not [o for o in overlays if Path(o).name.startswith(".")], "temporary files left behind"
    for name in ("roc_image.png", "roc_pixel.png", "score_histogram.png"):
        assert (report / name).is_file()
    # the test table: every image once, in the test set's order, each naming the overlay another rank may have drawn
    table = _read_csv(report / TEST_CSV, TEST_CSV_COLUMNS)
    assert sorted(r["overlay_file"] for r in table) == [f"overlays/{o}" for o in expected_overlays]
    single_test = _trainer(tmp_path / "single_test").test(model, datamodule=_datamodule(data), verbose=False)
    assert single_test and [r["relpath"] for r in table] == model.test_results.relpath
    for row, score in zip(table, model.test_results.score.tolist()):
        assert float(row["image_score"]) == pytest.approx(score, rel=1e-5)


# ---------------------------------------------------------------------- visualize


def test_heatmap_scale_and_outlines():
    theta = 2.0
    scaled = V.scale_map(np.array([[0.0, 1.0], [2.0, 6.0]]), theta)
    assert scaled.tolist() == [[0.0, 0.25], [0.5, 1 - 2.0 / 12.0]]
    assert V.scale_map(np.array([[1.0, 4.0]]), math.nan).tolist() == [[0.25, 1.0]]

    mask = np.zeros((10, 10), bool)
    mask[2:7, 3:9] = True
    ring = V.mask_outline(mask)
    assert ring.sum() == 2 * (5 + 6) - 4 and not ring[3:6, 4:8].any() and ring[2, 3] and ring[6, 8]
    assert V.mask_outline(np.ones((4, 4))).sum() == 12  # a region cut by the border is closed

    image = np.zeros((3, 10, 10), np.float32)
    out = V.overlay(image, np.zeros((10, 10)), theta, gt_mask=mask, pred_mask=np.zeros((10, 10)))
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[ring] == V.GT_COLOR).all() and not (out[~ring] == V.GT_COLOR).all(-1).any()
    pred = V.overlay(image, np.full((10, 10), 5.0), theta, pred_mask=mask)
    assert (pred[ring] == V.PRED_COLOR).all()
    # above the threshold is warmer (red channel) than below
    hot, cold = V.heatmap(np.full((2, 2), 10.0), theta), V.heatmap(np.full((2, 2), 0.5), theta)
    assert hot[0, 0, 0] > 150 > cold[0, 0, 0] and cold[0, 0, 2] > hot[0, 0, 2]


def _bar_rows(strip: np.ndarray) -> List[int]:
    """Rows of the colour bar: many distinct colours (text rows hold a few greys)."""
    rows = [r for r in range(strip.shape[0]) if len({tuple(c) for c in strip[r]}) > 100]
    assert rows and rows == list(range(rows[0], rows[-1] + 1)), rows
    return rows


def test_overlay_legend_shows_score_threshold_and_colour_bar():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    tau, theta = 10.0, 2.0
    out = V.with_legend(picture, theta, 12.5, tau)
    width = V.LEGEND_MIN_WIDTH
    assert out.dtype == np.uint8 and out.shape[1] == width > 40 and out.shape[0] > 48 + 20
    assert np.array_equal(out[:48, :40], picture)  # the picture at the top left, untouched
    assert (out[:48, 40:] == V.LEGEND_BACKGROUND).all()  # a small picture is padded, not scaled
    strip = out[48:]
    assert np.array_equal(strip, V.legend_strip(width, theta, 12.5, tau))
    assert strip.std() > 20, "the legend strip is uniform"

    # the colour bar: every colour from the heatmap's ramp, dark blue (0) on the left to dark red on the right
    bar = _bar_rows(strip)
    assert len(bar) >= 8
    ramp = {tuple(c) for c in V.colorize(np.linspace(0, 1, 4096)[None])[0]}
    row = strip[bar[len(bar) // 2]]
    inside = [x for x in range(width) if tuple(row[x]) in ramp]
    assert len(inside) > 0.9 * width
    first, last = row[inside[0]].astype(int), row[inside[-1]].astype(int)
    assert first[2] > 100 > first[0] and last[0] > 100 > last[2]
    # the pixel threshold marked across the bar at its middle, where the ramp passes 0.5
    marks = [x for x in range(width) if (strip[bar, x] == V.LEGEND_TEXT).all()]
    assert len(marks) == 1 and abs(marks[0] - (inside[0] + inside[-1]) / 2) <= 1
    assert tuple(V.colorize(np.array([[0.5]]))[0, 0]) in {tuple(c) for c in row[marks[0] - 2 : marks[0] + 3]}

    # the score is drawn: white text above the bar, and another score changes only the text
    assert (strip[: bar[0]].min(-1) > 200).any(), "no text above the bar"
    other = V.legend_strip(width, theta, 8.0, tau)  # below tau: 'normal'
    other_bar = _bar_rows(other)
    assert np.array_equal(strip[bar[0]:], other[other_bar[0]:])
    text, other_text = strip[: bar[0]], other[: other_bar[0]]
    assert text.shape != other_text.shape or not np.array_equal(text, other_text)
    # the threshold's labels under the bar: another theta changes them, not the bar
    moved = V.legend_strip(width, 3.0, 12.5, tau)
    assert np.array_equal(moved[bar], strip[bar])
    assert not np.array_equal(moved[bar[-1] + 1 :], strip[bar[-1] + 1 :])
    # no score: no text lines; no pixel threshold: no mark, the bar is relative
    assert V.legend_strip(width, theta).shape[0] < strip.shape[0]
    relative = V.legend_strip(width, math.nan, 12.5, math.nan)
    relative_bar = _bar_rows(relative)
    assert not any((relative[relative_bar, x] == V.LEGEND_TEXT).all() for x in range(width))
    # a larger picture gets a larger font (a taller strip), so the legend stays readable at any size
    assert V.legend_strip(1024, theta, 12.5, tau).shape[0] > strip.shape[0]


@pytest.mark.parametrize("theta", [30.0, 7.5, 1e-3, 1e6])
def test_scale_map_equals_normalize_scores_bitwise(theta):
    """The overlays' numpy scaling is normalize_scores, value for value (NaN, inf and negatives included)."""
    gen = torch.Generator().manual_seed(0)
    raw = torch.rand(64, 64, generator=gen, dtype=torch.float64) * 4 * theta
    raw[0, :6] = torch.tensor([0.0, theta, float("nan"), float("inf"), -1.0, 1e-300], dtype=torch.float64)
    assert np.array_equal(V.scale_map(raw.float(), theta), normalize_scores(raw.float().double(), theta).numpy(),
                          equal_nan=True)


def test_figures_show_threshold_and_auroc():
    scores = np.array([1.0, 2.0, 3.0, 8.0, 9.0, 2.5])
    labels = np.array([0, 0, 0, 1, 1, 1])
    figure = V.score_histogram_figure(scores, labels, 4.0)
    ax = figure.axes[0]
    assert any(list(line.get_xdata()) == [4.0, 4.0] for line in ax.get_lines())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "normal (3)" in legend and "anomalous (3)" in legend

    figure = V.roc_figure(scores, labels, 4.0)
    auroc = float(binary_auroc(torch.tensor(scores), torch.tensor(labels)))
    texts = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert f"AUROC = {auroc:.4f}" in texts
    assert any("FPR 0.000, TPR 0.667" in t for t in texts)
    png = V.figure_to_png(figure)
    assert V.png_to_array(png).shape[2] == 3

    # many distinct scores: the drawn curve is thinned but keeps its shape
    rng = np.random.default_rng(0)
    many = np.concatenate([rng.normal(0, 1, 50000), rng.normal(3, 1, 50000)])
    target = np.r_[np.zeros(50000), np.ones(50000)]
    x, y = V.roc_figure(many, target).axes[0].get_lines()[0].get_data()
    assert len(x) < 10000 and x[0] == 0 and y[0] == 0 and x[-1] == 1 and y[-1] == 1
    assert abs(float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)) - float(binary_auroc(torch.tensor(many), torch.tensor(target)))) < 2e-3


def test_predicted_maps_and_overlays_are_at_each_images_own_size(fitted, tmp_path):
    """A 96x64 and a 40x72 photo give maps of exactly those sizes; with a centre crop the removed
    border is NaN (never 'normal') and hatched in the overlay."""
    _, data, _ = fitted
    model = Spade(image_k=3, gallery_k=3, threshold_samples=4)
    cropped = MVTecDataModule(root=str(data), category=CATEGORY, image_size=SIZE, crop_size=48, batch_size=3, num_workers=0)
    _trainer(tmp_path / "fit").fit(model, datamodule=cropped)
    assert model.input_contract == {"image_size": [SIZE, SIZE], "crop_size": [48, 48]}
    inputs = tmp_path / "inputs"
    rng = np.random.default_rng(7)
    _save(inputs / "tall.png", np.asarray(Image.fromarray(_texture(rng)).resize((64, 96))))
    _save(inputs / "wide.png", np.asarray(Image.fromarray(_texture(rng)).resize((72, 40))))
    predict = MVTecDataModule(root=str(data), category=CATEGORY, image_size=SIZE, crop_size=48, batch_size=3,
                              num_workers=0, predict_dir=str(inputs))
    outputs = _trainer(tmp_path / "run", [PredictionWriter()]).predict(model, datamodule=predict)
    served = {Path(p).name: m for b in outputs for p, m in zip(b.path, b.anomaly_map)}
    out = tmp_path / "run" / "predictions" / "version_0"
    for name, (height, width) in (("tall", (96, 64)), ("wide", (40, 72))):
        with Image.open(out / "maps" / f"{name}.tiff") as im:
            stored = np.asarray(im)
        assert stored.shape == (height, width)
        # the crop keeps the middle 48 of 64 resized rows/columns: 1/8 of each side is not inspected
        rows, cols = np.isfinite(stored).any(axis=1), np.isfinite(stored).any(axis=0)
        assert not rows[: height // 8].any() and not rows[-(height // 8):].any() and rows[height // 4 : -height // 4].all()
        assert not cols[: width // 8].any() and not cols[-(width // 8):].any() and cols[width // 4 : -width // 4].all()
        # inside, the map is the served map resized: its extremes are the served map's (bilinear never overshoots)
        inside = stored[np.isfinite(stored)]
        assert inside.max() <= float(served[f"{name}.png"].max()) + 1e-4 and inside.min() >= float(served[f"{name}.png"].min()) - 1e-4
        with Image.open(out / "overlays" / f"{name}.png") as im:
            score = float(next(float(s) for batch in outputs for p, s in zip(batch.path, batch.score) if Path(p).stem == name))
            legend = _legend_height(width, score, model.image_threshold, model.pixel_threshold)
            assert im.size == (max(width, V.LEGEND_MIN_WIDTH), height + legend)  # the photo's size, the legend under it
            drawn = np.asarray(im.convert("RGB"))
        corner = drawn[: height // 8, : width // 8]
        assert (corner == 64).all(axis=-1).any(), "the uninspected border is not hatched"
