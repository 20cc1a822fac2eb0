"""Datamodule checks in ``setup``: folders, categories, broken images, mask rules, output names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_ad.data import FolderDataModule, MVTecDataModule
from lightning_ad.data.datamodule import AnomalyDataModule
from lightning_ad.data.dataset import ANOMALOUS, NORMAL, Sample
from lightning_ad.errors import ConfigurationError, DataError, ImageDecodeError, MaskError

SIZE = 40


def _write(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _image(seed: int, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _square_mask(h: int = SIZE, w: int = SIZE) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 255
    return mask


def make_category(root: Path, name: str = "widget", n_train: int = 4, n_good: int = 2, n_bad: int = 2) -> Path:
    base = root / name
    for i in range(n_train):
        _write(base / "train" / "good" / f"{i:03d}.png", _image(i))
    for i in range(n_good):
        _write(base / "test" / "good" / f"{i:03d}.png", _image(100 + i))
    for i in range(n_bad):
        _write(base / "test" / "crack" / f"{i:03d}.png", _image(200 + i))
        _write(base / "ground_truth" / "crack" / f"{i:03d}_mask.png", _square_mask())
    return base


def mvtec(root: Path, **kwargs) -> MVTecDataModule:
    kwargs.setdefault("category", "widget")
    return MVTecDataModule(root=str(root), image_size=32, crop_size=32, batch_size=2, num_workers=0, **kwargs)


def q(path: Path) -> str:
    """``'path'`` as in the messages, escaped for a regular expression."""
    return re.escape(repr(str(path)))


# ---------------------------------------------------------------------- folders and settings


def test_unknown_category_lists_those_present(tmp_path):
    make_category(tmp_path, "bottle")
    make_category(tmp_path, "cable")
    (tmp_path / "notes").mkdir()  # not a category
    with pytest.raises(DataError, match=r"category 'botle' not found.*Categories present: \['bottle', 'cable'\]"):
        mvtec(tmp_path, category="botle").setup("fit")


def test_root_missing_or_pointing_at_a_category(tmp_path):
    with pytest.raises(DataError, match=rf"MVTec root {q(tmp_path / 'nope')} does not exist"):
        mvtec(tmp_path / "nope").setup("fit")
    base = make_category(tmp_path, "widget")
    with pytest.raises(DataError, match=rf"looks like a category folder itself.*set root to {q(tmp_path)} and category to 'widget'"):
        mvtec(base, category="widget").setup("fit")


def test_half_copied_category_and_empty_folders(tmp_path):
    base = make_category(tmp_path, "widget")
    (tmp_path / "half" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"{q(tmp_path / 'half')} has no train/good folder.*present: \['widget'\]"):
        mvtec(tmp_path, category="half").setup("fit")
    for p in (base / "train" / "good").iterdir():
        p.unlink()
    (base / "train" / "good" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match=rf"MVTec training folder {q(base / 'train' / 'good')} holds no image"):
        mvtec(tmp_path).setup("fit")


def test_empty_test_defect_folder_names_it(tmp_path):
    base = make_category(tmp_path)
    (base / "test" / "scratch").mkdir()
    with pytest.raises(DataError, match=rf"MVTec test folder {q(base / 'test' / 'scratch')} holds no image"):
        mvtec(tmp_path).setup("test")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"crop_size": 16, "image_size": 16}, "at least 32 pixels"),
        ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"val_split": 1.5}, r"val_split=1.5 must lie in \[0, 1\)"),
        ({"image_size": 32, "crop_size": 64}, "larger than image_size"),
    ],
)
def test_bad_data_settings_are_refused_at_construction(tmp_path, kwargs, match):
    args = {"image_size": 32, "crop_size": 32, "batch_size": 2, "num_workers": 0}
    args.update(kwargs)
    with pytest.raises(ConfigurationError, match=match):
        MVTecDataModule(root=str(tmp_path), category="widget", **args)


# ---------------------------------------------------------------------- broken images


def test_truncated_training_image_stops_setup_naming_it(tmp_path):
    base = make_category(tmp_path)
    bad = base / "train" / "good" / "002.jpg"
    data = (base / "train" / "good" / "002.png")
    Image.open(data).save(bad, quality=90)
    bad.write_bytes(bad.read_bytes()[:-200])
    dm = mvtec(tmp_path)
    with pytest.raises(ImageDecodeError, match=rf"cannot decode image {q(bad)}.*skip_broken=true"):
        dm.setup("fit")


def test_skip_broken_skips_and_counts_in_a_warning(tmp_path):
    base = make_category(tmp_path, n_train=5)
    (base / "train" / "good" / "003.png").write_bytes(b"")
    (base / "train" / "good" / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dm = mvtec(tmp_path, skip_broken=True)
    with pytest.warns(UserWarning, match=r"skip_broken: skipped 2 broken image\(s\) of the training set: .*003\.png.*004\.png"):
        dm.setup("fit")
    assert [s.path.name for s in dm.train_dataset.samples] == ["000.png", "001.png", "002.png"]


def test_skip_broken_with_no_readable_image_is_an_error(tmp_path):
    base = make_category(tmp_path, n_train=1)
    (base / "train" / "good" / "000.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 1"):
        with pytest.raises(DataError, match="the training set has no readable image"):
            mvtec(tmp_path, skip_broken=True).setup("fit")


# ---------------------------------------------------------------------- masks


def test_missing_mask_for_one_anomalous_image_names_image_and_expected_mask(tmp_path):
    base = make_category(tmp_path, n_bad=3)
    (base / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(
        MaskError,
        match=rf"1 of 3 anomalous test images have no mask.*{q(base / 'test' / 'crack' / '001.png')} "
        rf"\(no mask {q(base / 'ground_truth' / 'crack' / '001_mask.png')}\)",
    ):
        mvtec(tmp_path).setup("test")


def test_ground_truth_with_misnamed_masks_is_refused(tmp_path):
    base = make_category(tmp_path)
    for p in (base / "ground_truth" / "crack").iterdir():
        p.rename(p.with_name(p.name.replace("_mask", "")))  # 000.png instead of 000_mask.png
    with pytest.raises(MaskError, match=rf"none is the mask of an anomalous test image.*must be {q(base / 'ground_truth' / 'crack' / '000_mask.png')}"):
        mvtec(tmp_path).setup("test")


def test_no_ground_truth_serves_image_level_only_with_a_warning(tmp_path):
    base = make_category(tmp_path)
    for p in (base / "ground_truth" / "crack").iterdir():
        p.unlink()
    dm = mvtec(tmp_path)
    with pytest.warns(UserWarning, match="no masks"):
        dm.setup("test")
    assert not dm.test_dataset.has_masks


def test_mask_of_other_aspect_is_refused_in_setup_naming_both(tmp_path):
    base = make_category(tmp_path)
    mask = base / "ground_truth" / "crack" / "001_mask.png"
    _write(mask, _square_mask(SIZE, SIZE * 2))
    image = base / "test" / "crack" / "001.png"
    with pytest.raises(MaskError, match=rf"mask {q(mask)} is 80x40 pixels but its image {q(image)} is 40x40"):
        mvtec(tmp_path).setup("test")


def test_mask_of_other_size_same_aspect_is_resized(tmp_path):
    base = make_category(tmp_path)
    mask = np.zeros((SIZE // 2, SIZE // 2), np.uint8)
    mask[5:10, 5:10] = 255  # pixels 10..19 at full size
    _write(base / "ground_truth" / "crack" / "000_mask.png", mask)
    dm = MVTecDataModule(root=str(tmp_path), category="widget", image_size=SIZE, crop_size=SIZE, num_workers=0)
    dm.setup("test")
    item = next(dm.test_dataset[i] for i in range(len(dm.test_dataset)) if dm.test_dataset[i]["path"].endswith("crack/000.png"))
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[10:20, 10:20] = 1
    assert np.array_equal(item["mask"].numpy(), expected)


def test_mask_of_normal_image_that_marks_pixels_is_refused_naming_both(tmp_path):
    base = make_category(tmp_path)
    good_mask = base / "ground_truth" / "good" / "001_mask.png"
    _write(good_mask, np.zeros((SIZE, SIZE), np.uint8))
    mvtec(tmp_path).setup("test")  # an empty mask for a normal image is fine
    _write(good_mask, _square_mask())
    with pytest.raises(MaskError, match=rf"mask {q(good_mask)} marks 100 anomalous pixel\(s\) but its image {q(base / 'test' / 'good' / '001.png')} is labelled normal"):
        mvtec(tmp_path).setup("test")


def test_ambiguous_mask_stops_setup_not_the_test_epoch(tmp_path):
    base = make_category(tmp_path)
    faint = _square_mask() // 4  # values 0 and 63
    mask = _write(base / "ground_truth" / "crack" / "000_mask.png", faint)
    with pytest.raises(MaskError, match=rf"mask {q(mask)} of image {q(base / 'test' / 'crack' / '000.png')} has positive values up to 63"):
        mvtec(tmp_path).setup("test")


def test_broken_mask_file_stops_setup_naming_both(tmp_path):
    base = make_category(tmp_path)
    mask = base / "ground_truth" / "crack" / "001_mask.png"
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(ImageDecodeError, match=rf"cannot decode mask {q(mask)} of image {q(base / 'test' / 'crack' / '001.png')}"):
        mvtec(tmp_path).setup("test")


# ---------------------------------------------------------------------- folder layout


def _folders(root: Path) -> None:
    for i in range(5):
        _write(root / "ok" / f"{i:03d}.jpg", _image(i))
    for cam in ("cam1", "cam2"):
        for i in range(2):
            _write(root / cam / "defect" / f"{i:03d}.jpg", _image(50 + i))
            soft = _square_mask().astype(np.float64)
            soft[SIZE // 4 - 1, :] = 100  # a soft edge
            _write(root / cam / "defect" / f"{i:03d}.png", soft.astype(np.uint8))


def folder_dm(root, **kwargs) -> FolderDataModule:
    args = dict(root=None if root is None else str(root), normal_dir="ok", abnormal_dirs=["cam1/defect", "cam2/defect"], mask_pattern="{stem}.png",
                image_size=32, crop_size=32, num_workers=0)
    args.update(kwargs)
    return FolderDataModule(**args)


def test_folder_layout_masks_beside_images_and_unique_output_names(tmp_path):
    _folders(tmp_path)
    dm = folder_dm(tmp_path)
    dm.setup()
    test = dm.test_dataset.samples
    assert sorted(s.relpath for s in test if s.label == ANOMALOUS) == [
        "cam1/defect/000.jpg", "cam1/defect/001.jpg", "cam2/defect/000.jpg", "cam2/defect/001.jpg"
    ]
    assert all(s.mask is not None and s.mask.suffix == ".png" for s in test if s.label == ANOMALOUS)
    assert len({s.group for s in test if s.label == ANOMALOUS}) == 2


def test_folders_of_the_same_name_outside_root_get_distinct_groups(tmp_path):
    _folders(tmp_path)
    dm = folder_dm(None, normal_dir=str(tmp_path / "ok"),
                   abnormal_dirs=[str(tmp_path / "cam1" / "defect"), str(tmp_path / "cam2" / "defect")])
    dm.setup("test")
    assert {s.group for s in dm.test_dataset.samples if s.label == ANOMALOUS} == {"cam1/defect", "cam2/defect"}


def test_folder_outside_root_never_gives_an_escaping_output_name(tmp_path):
    _folders(tmp_path / "data")
    _write(tmp_path / "elsewhere" / "bad" / "000.jpg", _image(9))
    dm = folder_dm(tmp_path / "data", abnormal_dirs=["../elsewhere/bad"], mask_pattern=None)
    dm.setup("test")
    names = [s.relpath for s in dm.test_dataset.samples]
    assert "bad/000.jpg" in names
    assert all(".." not in n.split("/") and not n.startswith("/") for n in names)


def test_a_folder_with_two_roles_is_refused(tmp_path):
    _folders(tmp_path)
    with pytest.raises(ConfigurationError, match=rf"abnormal_dirs entry {q(tmp_path / 'ok')} is the same folder as normal_dir"):
        folder_dm(tmp_path, abnormal_dirs=["ok"]).setup("fit")
    with pytest.raises(ConfigurationError, match="normal_test_dir .* is the same folder as normal_dir"):
        folder_dm(tmp_path, normal_test_dir="./ok").setup("fit")


def test_mask_dir_without_any_mask_is_refused(tmp_path):
    _folders(tmp_path)
    (tmp_path / "masks").mkdir()
    with pytest.raises(ConfigurationError, match=r"several folders named \['defect'\]"):
        folder_dm(tmp_path, mask_dir="masks").setup("test")
    with pytest.raises(MaskError, match=rf"mask_dir {q(tmp_path / 'masks')} is set but holds no mask.*must be {q(tmp_path / 'masks' / 'defect' / '000.png')}"):
        folder_dm(tmp_path, abnormal_dirs=["cam1/defect"], mask_dir="masks").setup("test")


def test_folder_normal_test_image_with_marking_mask_is_refused(tmp_path):
    _folders(tmp_path)
    bad_mask = _write(tmp_path / "ok" / "000.png", _square_mask())  # the mask of ok/000.jpg (held out for test)
    with pytest.raises(MaskError, match=rf"mask {q(bad_mask)} marks .* its image {q(tmp_path / 'ok' / '000.jpg')} is labelled normal"):
        folder_dm(tmp_path).setup("test")


def test_two_samples_with_one_output_name_are_refused(tmp_path):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    samples = [Sample(a, NORMAL, None, "good", "x.png"), Sample(b, ANOMALOUS, None, "d", "x.png")]
    with pytest.raises(DataError, match=rf"same output 'x.png': {q(a)} and {q(b)}"):
        AnomalyDataModule._check_relpaths(samples, "test set")


def test_predict_dir_relpaths_are_inside_it(tmp_path):
    make_category(tmp_path)
    _write(tmp_path / "incoming" / "line1" / "a.png", _image(1))
    _write(tmp_path / "incoming" / "a.png", _image(2))
    (tmp_path / "incoming" / "notes.txt").write_text("x")
    dm = mvtec(tmp_path, predict_dir=str(tmp_path / "incoming"))
    dm.setup("predict")
    assert [s.relpath for s in dm.predict_dataset.samples] == ["a.png", "line1/a.png"]
    with pytest.raises(ConfigurationError, match="predict needs a folder of images"):
        mvtec(tmp_path).setup("predict")
