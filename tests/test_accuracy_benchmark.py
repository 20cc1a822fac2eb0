"""benchmarks/accuracy.py on the demo data: its table holds what a direct fit and test give."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytorch_lightning as pl
import pytest

from conftest import REPO, make_trainer
from lightning_ad import DemoDataModule, Spade


def load_benchmark():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", REPO / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_accuracy_table_on_the_demo_equals_a_direct_fit_and_test(tmp_path, capsys):
    accuracy = load_benchmark()
    small = ["image_k=3", "gallery_k=3", "threshold_samples=4", "data.image_size=72", "data.crop_size=64",
             "data.num_workers=0"]
    out = tmp_path / "table.json"
    results = accuracy.main(["--demo", "--demo-root", str(tmp_path / "demo"), "--set", *small,
                             "--variant", "dn2 image_score=dn2", "--variant", "topq image_score=topq", "--json", str(out)])
    printed = capsys.readouterr().out
    assert [r["variant"] for r in results] == ["dn2", "topq"] and json.loads(out.read_text()) == results
    assert printed.startswith("| data | variant | image AUROC | pixel AUROC | PRO | image F1 |")
    for result in results:
        pl.seed_everything(0, verbose=False)
        model = Spade(backbone="efficientnet_lite0", image_k=3, gallery_k=3, threshold_samples=4,
                      image_score=result["variant"])
        data = DemoDataModule(str(tmp_path / "demo"), image_size=72, crop_size=64, batch_size=16, num_workers=0)
        trainer = make_trainer(tmp_path / "direct", enable_checkpointing=False)
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
        for name in ("image_auroc", "pixel_auroc", "pro", "image_f1", "pixel_f1"):
            assert result[name] == pytest.approx(model.test_evaluation.metrics[name], abs=1e-12), name
            row = next(line for line in printed.splitlines() if f"| demo | {result['variant']} |" in line)
            assert f"{result[name]:.4f}" in row
        assert result["fit_seconds"] > 0 and result["test_seconds"] > 0 and result["train_images"] == 40


def test_every_category_of_an_mvtec_root_is_a_row(tmp_path):
    accuracy = load_benchmark()
    for name in ("b", "a"):
        (tmp_path / name / "train" / "good").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    args = accuracy.parser().parse_args(["--mvtec-root", str(tmp_path), "--set", "image_k=5",
                                         "--variant", "x layers=[2,3] data.crop_size=288"])
    rows = accuracy.build_rows(args)
    assert [r.data for r in rows] == ["mvtec/a", "mvtec/b"]
    assert rows[0].model["image_k"] == 5 and rows[0].model["layers"] == [2, 3] and rows[0].data_args["crop_size"] == 288
    assert rows[1].data_args["category"] == "b" and rows[1].datamodule == "lightning_ad.MVTecDataModule"


def test_misaligned_test_images_are_shifted_with_their_masks():
    import torch

    accuracy = load_benchmark()
    image = torch.arange(16.0).reshape(1, 4, 4).repeat(3, 1, 1)
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[0, 0] = 1
    shifted = accuracy.Misaligned([{"image": image, "mask": mask, "label": 1}], shift=0.25)[0]
    # one pixel down and right: the first row and column repeat the edge, the mask's pixel moves with the image
    assert torch.equal(shifted["image"][0, 1:, 1:], image[0, :3, :3])
    assert torch.equal(shifted["image"][0, 0, 1:], image[0, 0, :3]) and torch.equal(shifted["image"][0, 1:, 0], image[0, :3, 0])
    assert shifted["mask"].nonzero().tolist() == [[1, 1]] and shifted["label"] == 1
    rotated = accuracy.Misaligned([{"image": image, "mask": mask}], rotate=90)[0]
    assert torch.equal(rotated["mask"], torch.rot90(mask, 1, (0, 1))) or torch.equal(rotated["mask"], torch.rot90(mask, -1, (0, 1)))
    args = accuracy.parser().parse_args(["--demo", "--variant", "s search_radius=8 test.shift=0.1"])
    row = accuracy.build_rows(args)[0]
    assert row.test_settings == {"shift": 0.1} and "test.shift" not in row.model and row.model["search_radius"] == 8
