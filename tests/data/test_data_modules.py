"""Datamodule checks in ``setup``: folders, categories, broken images, mask rules, output names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, make_image_folder, make_magnetic_tile, make_mvtec, noise_image, square_mask, write_image
from PIL import Image

from lightning_ad.data import FolderDataModule, MVTecDataModule
from lightning_ad.data.datamodule import AnomalyDataModule
from lightning_ad.data.dataset import ANOMALOUS, NORMAL, Sample
from lightning_ad.errors import ConfigurationError, DataError, ImageDecodeError, MaskError


def make_category(root: Path, name: str = "widget", n_train: int = 4, n_good: int = 2, n_bad: int = 2) -> Path:
    """A tiny MVTec category ``root/name`` (defect group ``crack``, SIZE x SIZE images); returns its folder."""
    return make_mvtec(root, name, n_train=n_train, n_good=n_good, n_bad=n_bad, size=SIZE, defect="crack") / name


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
    write_image(mask, square_mask(SIZE, SIZE * 2))
    image = base / "test" / "crack" / "001.png"
    with pytest.raises(MaskError, match=rf"mask {q(mask)} is 80x40 pixels but its image {q(image)} is 40x40"):
        mvtec(tmp_path).setup("test")


def test_mask_of_other_size_same_aspect_is_resized(tmp_path):
    base = make_category(tmp_path)
    mask = np.zeros((SIZE // 2, SIZE // 2), np.uint8)
    mask[5:10, 5:10] = 255  # pixels 10..19 at full size
    write_image(base / "ground_truth" / "crack" / "000_mask.png", mask)
    dm = MVTecDataModule(root=str(tmp_path), category="widget", image_size=SIZE, crop_size=SIZE, num_workers=0)
    dm.setup("test")
    item = next(dm.test_dataset[i] for i in range(len(dm.test_dataset)) if dm.test_dataset[i]["path"].endswith("crack/000.png"))
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[10:20, 10:20] = 1
    assert np.array_equal(item["mask"].numpy(), expected)


def test_mask_of_normal_image_that_marks_pixels_is_refused_naming_both(tmp_path):
    base = make_category(tmp_path)
    good_mask = base / "ground_truth" / "good" / "001_mask.png"
    write_image(good_mask, np.zeros((SIZE, SIZE), np.uint8))
    mvtec(tmp_path).setup("test")  # an empty mask for a normal image is fine
    write_image(good_mask, square_mask())
    with pytest.raises(MaskError, match=rf"mask {q(good_mask)} marks 100 anomalous pixel\(s\) but its image {q(base / 'test' / 'good' / '001.png')} is labelled normal"):
        mvtec(tmp_path).setup("test")


def test_ambiguous_mask_stops_setup_not_the_test_epoch(tmp_path):
    base = make_category(tmp_path)
    faint = square_mask() // 4  # values 0 and 63
    mask = write_image(base / "ground_truth" / "crack" / "000_mask.png", faint)
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
    make_image_folder(root / "ok", 5)
    for cam in ("cam1", "cam2"):
        make_image_folder(root / cam / "defect", 2, seed=50, masks="{stem}.png", defect=True)


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
    write_image(tmp_path / "elsewhere" / "bad" / "000.jpg", noise_image(9))
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
    bad_mask = write_image(tmp_path / "ok" / "000.png", square_mask())  # the mask of ok/000.jpg (held out for test)
    with pytest.raises(MaskError, match=rf"mask {q(bad_mask)} marks .* its image {q(tmp_path / 'ok' / '000.jpg')} is labelled normal"):
        folder_dm(tmp_path).setup("test")


def test_two_samples_with_one_output_name_are_refused(tmp_path):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    samples = [Sample(a, NORMAL, None, "good", "x.png"), Sample(b, ANOMALOUS, None, "d", "x.png")]
    with pytest.raises(DataError, match=rf"same output 'x.png': {q(a)} and {q(b)}"):
        AnomalyDataModule._check_relpaths(samples, "test set")


def test_predict_dir_relpaths_are_inside_it(tmp_path):
    make_category(tmp_path)
    write_image(tmp_path / "incoming" / "line1" / "a.png", noise_image(1))
    write_image(tmp_path / "incoming" / "a.png", noise_image(2))
    (tmp_path / "incoming" / "notes.txt").write_text("x")
    dm = mvtec(tmp_path, predict_dir=str(tmp_path / "incoming"))
    dm.setup("predict")
    assert [s.relpath for s in dm.predict_dataset.samples] == ["a.png", "line1/a.png"]
    with pytest.raises(ConfigurationError, match="predict needs a folder of images"):
        mvtec(tmp_path).setup("predict")


# ---------------------------------------------------------------------- mask files are never images


def tile_dm(root: Path, **kwargs) -> FolderDataModule:
    args = dict(root=str(root), normal_dir="MT_Free/Imgs", abnormal_dirs=["MT_Blowhole/Imgs", "MT_Crack/Imgs"],
                normal_test_split=0.2, image_size=32, crop_size=32, num_workers=0)
    args.update(kwargs)
    return FolderDataModule(**args)


def _names(samples) -> list:
    return [s.path.name for s in samples]


@pytest.mark.parametrize("mask_pattern,why", [(None, r"Masks are off \(mask_pattern: null\)"),
                                              ("{stem}_mask.png", r"mask_pattern='\{stem\}_mask.png' names other files")])
def test_magnetic_tile_masks_are_not_images_when_masks_are_not_configured(tmp_path, mask_pattern, why):
    make_magnetic_tile(tmp_path, n_free=10, defects={"MT_Blowhole": 3, "MT_Crack": 2})
    dm = tile_dm(tmp_path, mask_pattern=mask_pattern)
    with pytest.warns(UserWarning) as record:
        dm.setup()
    train, test = dm.train_dataset.samples, dm.test_dataset.samples
    # 10 normal images: 2 held out (positions 0 and 5), 8 train; the 10 masks beside them are no images
    assert _names(train) == ["001.jpg", "002.jpg", "003.jpg", "004.jpg", "006.jpg", "007.jpg", "008.jpg", "009.jpg"]
    assert _names(s for s in test if s.label == NORMAL) == ["000.jpg", "005.jpg"]
    assert sorted(s.relpath for s in test if s.label == ANOMALOUS) == [
        "MT_Blowhole/Imgs/000.jpg", "MT_Blowhole/Imgs/001.jpg", "MT_Blowhole/Imgs/002.jpg",
        "MT_Crack/Imgs/000.jpg", "MT_Crack/Imgs/001.jpg",
    ]
    assert all(s.mask is None for s in test)
    messages = [str(w.message) for w in record if "masks of images beside them" in str(w.message)]
    expected = {"normal_dir": ("MT_Free", 10), "abnormal_dirs entry": ("MT_Blowhole", 3)}
    for what, (folder, count) in expected.items():
        pattern = (rf"{what} {q(tmp_path / folder / 'Imgs')}: {count} file\(s\) are the masks of images beside them "
                   rf"by their names \(e.g. '000.png' of '000.jpg'\); they are not used as images. {why}: to use them set mask_pattern, "
                   r'e.g. --data.init_args.mask_pattern "\{stem\}.png"')
        assert sum(bool(re.search(pattern, m)) for m in messages) == 1, (pattern, messages)
    assert sum(f"abnormal_dirs entry {str(tmp_path / 'MT_Crack' / 'Imgs')!r}: 2 file(s)" in m for m in messages) == 1
    assert len(messages) == 3  # one per folder, listed once though two stages read normal_dir


def test_magnetic_tile_with_its_mask_pattern_uses_the_masks(tmp_path, recwarn):
    make_magnetic_tile(tmp_path, n_free=10, defects={"MT_Blowhole": 3, "MT_Crack": 2})
    dm = tile_dm(tmp_path, mask_pattern="{stem}.png")
    dm.setup()
    assert len(dm.train_dataset) == 8 and all(s.path.suffix == ".jpg" for s in dm.train_dataset.samples)
    anomalous = [s for s in dm.test_dataset.samples if s.label == ANOMALOUS]
    assert len(anomalous) == 5
    assert all(s.mask == s.path.with_suffix(".png") for s in anomalous)
    assert dm.test_dataset.has_masks
    item = dm.test_dataset[[s.label for s in dm.test_dataset.samples].index(ANOMALOUS)]
    assert item["has_mask"] and int(item["mask"].sum()) > 0
    assert not [w for w in recwarn if "masks of images beside them" in str(w.message)]


def test_mask_suffix_convention_beside_images_is_not_an_image(tmp_path):
    make_image_folder(tmp_path / "ok", 5)
    make_image_folder(tmp_path / "bad", 3, seed=20, masks="{stem}_mask.png", defect=True)
    dm = FolderDataModule(root=str(tmp_path), normal_dir="ok", abnormal_dirs="bad", mask_pattern=None,
                          image_size=32, crop_size=32, num_workers=0)
    with pytest.warns(UserWarning, match=rf"abnormal_dirs entry {q(tmp_path / 'bad')}: 3 file\(s\).*'000_mask.png' of "
                      r"'000.jpg'.*mask_pattern \"\{stem\}_mask.png\""):
        dm.setup("test")
    assert _names(s for s in dm.test_dataset.samples if s.label == ANOMALOUS) == ["000.jpg", "001.jpg", "002.jpg"]


@pytest.mark.parametrize("picture,problem", [("colour", r"is a colour picture \(mode RGB\), not a mask"),
                                             ("grey", r"is not accepted as a mask \(.*does not look like a mask")])
def test_a_photo_named_like_a_mask_is_an_error_naming_it(tmp_path, picture, problem):
    images = make_image_folder(tmp_path / "ok", 5)
    photo = noise_image(7) if picture == "colour" else noise_image(7)[:, :, 0]
    png = write_image(tmp_path / "ok" / "002.png", photo)  # a second picture, not a mask of 002.jpg
    dm = FolderDataModule(root=str(tmp_path), normal_dir="ok", normal_test_split=0.2, mask_pattern=None,
                          image_size=32, crop_size=32, num_workers=0)
    with pytest.raises(DataError, match=rf"normal_dir: {q(png)} {problem}.*the mask of {q(images[2])}.*rename one of them, "
                       r'or, if it is a mask, set mask_pattern, e.g. --data.init_args.mask_pattern "\{stem\}.png"'):
        dm.setup("fit")


def test_mvtec_files_named_like_masks_are_not_images(tmp_path):
    base = make_category(tmp_path, n_bad=2)
    write_image(base / "test" / "crack" / "000_mask.png", square_mask())  # a copy of the mask beside the image
    write_image(base / "test" / "crack" / "x_mask.png", square_mask())  # a stray mask
    write_image(base / "train" / "good" / "001_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    dm = mvtec(tmp_path)
    with pytest.warns(UserWarning) as record:
        dm.setup()
    assert _names(dm.train_dataset.samples) == ["000.png", "001.png", "002.png", "003.png"]
    anomalous = [s for s in dm.test_dataset.samples if s.label == ANOMALOUS]
    assert _names(anomalous) == ["000.png", "001.png"]
    assert [s.mask for s in anomalous] == [base / "ground_truth" / "crack" / f"00{i}_mask.png" for i in range(2)]
    messages = [str(w.message) for w in record]
    assert any(re.search(rf"MVTec test folder {q(base / 'test' / 'crack')}: 2 file\(s\) named like masks", m) for m in messages)
    assert any(re.search(rf"MVTec training folder {q(base / 'train' / 'good')}: 1 file\(s\) named like masks", m) for m in messages)


def test_predict_dir_leaves_out_the_masks_beside_images(tmp_path):
    make_category(tmp_path)
    make_image_folder(tmp_path / "incoming" / "line1", 2, masks="{stem}.png")
    write_image(tmp_path / "incoming" / "a.png", noise_image(3))
    dm = mvtec(tmp_path, predict_dir=str(tmp_path / "incoming"))
    with pytest.warns(UserWarning, match=rf"predict_dir {q(tmp_path / 'incoming' / 'line1')}: 2 file\(s\).*not predicted"):
        dm.setup("predict")
    assert [s.relpath for s in dm.predict_dataset.samples] == ["a.png", "line1/000.jpg", "line1/001.jpg"]


def test_fit_says_what_to_set_for_tall_photos_and_stays_quiet_for_square_ones(tmp_path, caplog):
    for i in range(5):
        write_image(tmp_path / "tall" / "good" / f"{i:03d}.png", noise_image(i, 252, 100))
        write_image(tmp_path / "square" / "good" / f"{i:03d}.png", noise_image(i, 100, 100))
    with caplog.at_level("INFO"):
        FolderDataModule(str(tmp_path / "tall" / "good"), normal_test_split=0.2, num_workers=0).setup("fit")
    advice = [r.getMessage() for r in caplog.records if "to keep their shape" in r.getMessage()]
    assert len(advice) == 1 and "about 252 x 100 pixels" in advice[0]
    assert advice[0].endswith("set --data.image_size [640, 256] --data.crop_size null")
    caplog.clear()
    with caplog.at_level("INFO"):
        FolderDataModule(str(tmp_path / "tall" / "good"), image_size=[640, 256], crop_size=None, normal_test_split=0.2,
                         num_workers=0).setup("fit")
        FolderDataModule(str(tmp_path / "square" / "good"), normal_test_split=0.2, num_workers=0).setup("fit")
    assert not [r for r in caplog.records if "to keep their shape" in r.getMessage()]
