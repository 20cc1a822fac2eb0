"""benchmarks/accuracy.py on the demo data: its table holds what a direct fit and test give."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import pytorch_lightning as pl
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


def test_misaligned_test_images_are_shifted_with_their_masks(tmp_path, capsys):
    import math
    import re

    import numpy as np
    import torch
    import torchvision.transforms.v2.functional as TF
    from conftest import make_mvtec

    from lightning_ad.data import Preprocess
    from lightning_ad.data.images import load_image
    from lightning_ad.data.masks import load_mask

    accuracy = load_benchmark()
    # 64x64 photos resized to 47x56, cropped 40x44: the centre crop starts at row 4 (round(3.5)), column 6;
    # the margins are 4 up, 3 down, 6 left, 6 right
    root = make_mvtec(tmp_path / "mvtec", n_train=1, n_good=2, n_bad=3, size=64)
    size, crop = [47, 56], [40, 44]

    def test_set(**test):
        args = dict(root=str(root), category="widget", image_size=size, crop_size=crop, num_workers=0)
        data = accuracy.make_datamodule(accuracy.Row("mvtec/widget", "x", {}, "lightning_ad.MVTecDataModule", args,
                                                     test_settings=test))
        data.setup("test")
        return data.test_dataloader().dataset

    resize = Preprocess(size, None)
    aligned = test_set()
    for shift in (3, -4):
        moved = test_set(shift_px=shift)
        assert isinstance(moved.preprocess, accuracy.Misaligned) and moved.samples == aligned.samples
        masks = 0
        for i, sample in enumerate(moved.samples):
            item, reference = moved[i], aligned[i]
            array = load_image(sample.path)
            photo, top, left = resize.image(array), 4 + shift, 6 + shift
            # the shifted crop is the resized photo at the moved window; the aligned one at the centre crop's
            assert torch.equal(item["image"], photo[:, top:top + 40, left:left + 44])
            assert torch.equal(reference["image"], photo[:, 4:44, 6:50])
            if sample.mask is not None:
                photo_mask = resize.mask(load_mask(sample.mask, array.shape[:2], sample.path))
                assert torch.equal(item["mask"], photo_mask[top:top + 40, left:left + 44]) and item["mask"].any()
                assert torch.equal(reference["mask"], photo_mask[4:44, 6:50])
                masks += 1
            else:
                assert not item["mask"].any() and item["mask"].shape == (40, 44)
            for key in ("label", "has_mask", "path", "relpath", "index"):
                assert item[key] == reference[key], key
        assert masks == 3
    # no shift, no rotation: the library's preprocessing, bit for bit
    array, mask = load_image(aligned.samples[0].path), load_mask(aligned.samples[0].mask)
    still, library = accuracy.Misaligned(size, crop), Preprocess(size, crop)
    assert torch.equal(still.image(array), library.image(array)) and torch.equal(still.mask(mask), library.mask(mask))

    # refusals, naming the setting and its limits
    for shift in (4, -5):
        with pytest.raises(SystemExit, match=rf"test.shift_px={shift} .*-4 <= test.shift_px <= 3"):
            accuracy.Misaligned(size, crop, shift_px=shift)
    with pytest.raises(SystemExit, match="test.shift_px=1.5 must be a whole number"):
        accuracy.Misaligned(size, crop, shift_px=1.5)
    largest = math.degrees(math.asin(256 / (224 * math.sqrt(2)))) - 45  # c/2 (|cos t| + |sin t|) = W/2: 8.9129
    assert accuracy.Misaligned(256, 224).largest_angle() == pytest.approx(largest, abs=0.01)
    accuracy.Misaligned(256, 224, rotate=8.91), accuracy.Misaligned(256, 224, rotate=-8.91)
    for angle in (8.92, -9):
        with pytest.raises(SystemExit, match=rf"test.rotate={angle:g} .*largest angle allowed this way is {re.escape(f'{math.copysign(8.91, angle):+.2f}')} "):
            accuracy.Misaligned(256, 224, rotate=angle)
    with pytest.raises(SystemExit, match=r"test.rotate=1 .*test.shift_px=16\): the largest angle allowed this way is \+0.00"):
        accuracy.Misaligned(256, 224, shift_px=16, rotate=1)

    # the filled corners stay out of the crop at the limit angle, and would enter it beyond
    grey = np.full((300, 300, 3), 200, np.uint8)
    assert torch.allclose(accuracy.Misaligned(256, 224, rotate=8.91).image(grey), torch.tensor(200 / 255), atol=1e-6)
    beyond = TF.rotate(Preprocess(256, None).image(grey), 9.0, interpolation=TF.InterpolationMode.BILINEAR)
    assert beyond[:, 16:240, 16:240].min() < 0.99 * 200 / 255
    # a shifted window on a wider photo: the two directions have different limits, each tight
    wide = Preprocess([256, 300], None).image(np.full((300, 340, 3), 200, np.uint8))
    window = accuracy.Misaligned([256, 300], 224, shift_px=8)
    limits = {sign: window.largest_angle(sign) for sign in (1, -1)}
    assert limits[1] != limits[-1]
    for sign, limit in limits.items():
        clean, filled = (TF.rotate(wide, sign * t, interpolation=TF.InterpolationMode.BILINEAR)
                         [:, window.top:window.top + 224, window.left:window.left + 224] for t in (limit, limit + 0.3))
        assert clean.min() > (200 - 1e-3) / 255 and filled.min() < 0.99 * 200 / 255
        accuracy.Misaligned([256, 300], 224, shift_px=8, rotate=sign * limit)
        with pytest.raises(SystemExit, match="largest angle allowed this way"):
            accuracy.Misaligned([256, 300], 224, shift_px=8, rotate=sign * (limit + 0.01))

    # rotation (counter-clockwise about the photo's centre): a marked block and its mask turn together
    photo, block = np.full((256, 256, 3), 40, np.uint8), np.zeros((256, 256), bool)
    photo[124:133, 184:193], block[124:133, 184:193] = 240, True  # centre (row 128, column 188): 60.5 px right, 0.5 down
    for shift, angle in ((0, 8.0), (0, -8.0), (4, 3.0)):
        turned = accuracy.Misaligned(256, 224, shift_px=shift, rotate=angle)
        image, moved_mask = turned.image(photo), turned.mask(block)
        t = math.radians(angle)
        dx, dy = 60.5, 0.5
        x = 127.5 + dx * math.cos(t) + dy * math.sin(t) - 16 - shift
        y = 127.5 - dx * math.sin(t) + dy * math.cos(t) - 16 - shift
        rows, cols = moved_mask.nonzero(as_tuple=True)
        assert set(moved_mask.unique().tolist()) == {0, 1} and abs(len(rows) - 81) <= 6
        assert cols.float().mean().item() == pytest.approx(x, abs=0.5) and rows.float().mean().item() == pytest.approx(y, abs=0.5)
        weight = image[0] - 40 / 255
        grid_y, grid_x = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
        assert (weight * grid_x).sum() / weight.sum() == pytest.approx(x, abs=0.5)
        assert (weight * grid_y).sum() / weight.sum() == pytest.approx(y, abs=0.5)

    # settings: test.shift_px and test.rotate; the old test.shift is unknown; impossible ones stop before any row runs
    args = accuracy.parser().parse_args(["--demo", "--variant", "s search_radius=8 test.shift_px=8 test.rotate=2"])
    row = accuracy.build_rows(args)[0]
    assert row.test_settings == {"shift_px": 8, "rotate": 2} and row.model["search_radius"] == 8
    assert not any(k.startswith("test.") for k in row.model)
    with pytest.raises(SystemExit, match=r"unknown test setting\(s\) \['test.shift'\]; known: test.shift_px, test.rotate"):
        accuracy.build_rows(accuracy.parser().parse_args(["--demo", "--variant", "s test.shift=0.1"]))
    with pytest.raises(SystemExit, match="test.shift_px=17"):
        accuracy.main(["--mvtec-root", str(root), "--variant", "ok", "--variant", "far test.shift_px=17"])
    assert "[1/" not in capsys.readouterr().err
