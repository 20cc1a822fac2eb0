"""The Trainer-free Detector: same numbers as ``trainer.predict``, any input kind and size, maps at the original size."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import fit_checkpoint, make_mvtec, require_real, write_image
from conftest import make_trainer as _trainer
from PIL import Image

from lightning_ad import FolderDataModule, MVTecDataModule, Spade
from lightning_ad.core.thresholds import normalize_scores
from lightning_ad.data.inputs import as_rgb_uint8
from lightning_ad.errors import CheckpointError, DataError, ImageDecodeError
from lightning_ad.inference.detection import Detection, overlay_for
from lightning_ad.inference.detector import Detector
from lightning_ad.lightning.results import ImageResults

#: The tiny set's contract: resize to 64, centre crop 48 (offset 8).
IMAGE_SIZE, CROP = 64, 48


def predict_records(ckpt: Path, datamodule: pl.LightningDataModule, root: Path) -> ImageResults:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = _trainer(root).predict(Spade.load_from_checkpoint(str(ckpt)), datamodule=datamodule)
    return ImageResults.cat(parts)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A fitted checkpoint of a tiny MVTec-layout set (contract 64 -> crop 48) and its test files."""
    base = tmp_path_factory.mktemp("detector")
    root = make_mvtec(base / "data", n_train=6, n_good=2, n_bad=2, size=64)
    test_dir = root / "widget" / "test"
    dm = MVTecDataModule(str(root), category="widget", image_size=IMAGE_SIZE, crop_size=CROP, batch_size=4,
                         num_workers=0, predict_dir=str(test_dir))
    ckpt = fit_checkpoint(base, dm)
    files = sorted(str(p) for p in test_dir.rglob("*.png"))
    return {"base": base, "ckpt": ckpt, "dm": dm, "files": files}


@pytest.fixture(scope="module")
def detector(tiny):
    return Detector.from_checkpoint(tiny["ckpt"], batch_size=3)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.nanmax(np.abs(a - b)) / max(np.nanmax(np.abs(b)), 1e-12))


def expected_valid(size, resized=IMAGE_SIZE, crop=CROP):
    """Independent statement of the rule: the resized pixel holding the pixel centre lies in the crop."""
    top = (resized - crop) // 2
    axes = []
    for n in size:
        source = np.floor((np.arange(n) + 0.5) * resized / n)
        axes.append((source >= top) & (source < top + crop))
    return axes[0][:, None] & axes[1][None, :]


# ---------------------------------------------------------------------- equality with predict


def test_detector_equals_predict(tiny, detector):
    records = predict_records(tiny["ckpt"], tiny["dm"], tiny["base"] / "predict")
    order = {p: i for i, p in enumerate(records.path)}
    found = detector(tiny["files"])
    assert [d.path for d in found] == tiny["files"]
    top = (IMAGE_SIZE - CROP) // 2
    for det in found:
        i = order[det.path]
        assert det.score == pytest.approx(float(records.score[i]), rel=1e-5)
        assert det.size == (64, 64) and det.anomaly_map.shape == (64, 64) and det.anomaly_map.dtype == np.float32
        inner = det.anomaly_map[top : top + CROP, top : top + CROP]
        assert np.isfinite(inner).all()
        assert rel(inner, records.anomaly_map[i].numpy()) < 1e-5
        assert np.isnan(det.anomaly_map).sum() == 64 * 64 - CROP * CROP
        # thresholds: the checkpoint's learned ones, as predict uses them
        assert det.image_threshold == pytest.approx(records.image_threshold)
        assert det.decision == bool(det.score >= det.image_threshold)
        assert det.normalized_score == pytest.approx(float(normalize_scores(torch.tensor([det.score]), det.image_threshold)[0]))
        assert np.array_equal(det.mask, np.nan_to_num(det.anomaly_map, nan=-1.0) >= det.pixel_threshold)
        assert not det.mask[~np.isfinite(det.anomaly_map)].any()


def test_batch_size_does_not_change_results(tiny, detector):
    one = Detector.from_checkpoint(tiny["ckpt"], batch_size=1)(tiny["files"])
    many = detector(tiny["files"])
    for a, b in zip(one, many):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert rel(a.anomaly_map, b.anomaly_map) < 1e-5


# ---------------------------------------------------------------------- inputs


def test_every_input_kind_gives_the_same_score(tiny, detector, tmp_path):
    path = tiny["files"][0]
    rgb = as_rgb_uint8(path)
    grey = np.array(Image.fromarray(rgb).convert("L"))
    grey_file = write_image(tmp_path / "grey.png", grey)
    sixteen = write_image(tmp_path / "grey16.png", Image.fromarray(grey.astype(np.uint16) * 257))
    colour = [path, Path(path), Image.open(path), rgb, rgb.astype(np.uint16) * 257, rgb.astype(np.float32) / 255,
              torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255]
    greys = [str(grey_file), str(sixteen), grey, grey[:, :, None], np.repeat(grey[:, :, None], 3, axis=2),
             grey.astype(np.uint16) * 257, torch.from_numpy(grey), torch.from_numpy(grey)[None],
             Image.fromarray(grey)]
    colour_scores = [d.score for d in detector(colour)]
    grey_scores = [d.score for d in detector(greys)]
    assert colour_scores == pytest.approx([colour_scores[0]] * len(colour), rel=1e-6)
    assert grey_scores == pytest.approx([grey_scores[0]] * len(greys), rel=1e-6)
    assert grey_scores[0] != pytest.approx(colour_scores[0], rel=1e-6)  # a different picture scores differently
    # a single item gives a list of one; a 4-D tensor is a batch
    single = detector(rgb)
    assert isinstance(single, list) and len(single) == 1 and isinstance(single[0], Detection)
    batch = detector(torch.from_numpy(np.stack([rgb, rgb])).permute(0, 3, 1, 2))
    assert [d.score for d in batch] == pytest.approx([colour_scores[0]] * 2, rel=1e-6)


def test_exif_orientation_of_pil_images_is_applied(tiny, detector, tmp_path):
    rgb = as_rgb_uint8(tiny["files"][0])
    im = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # stored rotated ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... displayed rotated back (ROTATE_270)
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif.tobytes(), quality=100)
    from_file, from_pil = detector([str(path), Image.open(path)])
    assert from_file.score == pytest.approx(from_pil.score, rel=1e-6)
    assert from_file.size == (64, 64)


def _pil_case(mode: str, rgb: np.ndarray, tmp_path: Path):
    """``(PIL image, its equivalent numpy array, the RGB it must give or None when refused)``."""
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = (np.arange(grey.size).reshape(grey.shape) % 256).astype(np.uint8)
    grey_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "1":
        im = Image.fromarray(grey > 127)
        return im, np.asarray(im), np.repeat(np.where(grey > 127, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)
    if mode == "L":
        im = Image.fromarray(grey)
        return im, np.asarray(im), grey_rgb
    if mode == "LA":
        im = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
        return im, np.asarray(im)[:, :, :1], grey_rgb  # the mode says which channel is alpha
    if mode == "P":
        im = Image.fromarray(rgb).quantize(16)
        palette = np.array(im.getpalette(), np.uint8).reshape(-1, 3)
        return im, np.asarray(im.convert("RGB")), palette[np.asarray(im)]  # the indices are not brightness
    if mode == "RGB":
        im = Image.fromarray(rgb)
        return im, np.asarray(im), rgb
    if mode == "RGBA":
        im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        return im, np.asarray(im)[:, :, :3], rgb
    if mode == "I;16":
        im = Image.fromarray(grey.astype(np.uint16) * 257)
        return im, np.asarray(im), grey_rgb
    if mode == "I":  # 8-bit data converted: int32 has no brightness scale (it was read as 16-bit: nearly black)
        im = Image.fromarray(grey).convert("I")
        return im, np.asarray(im), None
    if mode == "I from a 16-bit PGM":  # Pillow opens 16-bit PGMs (and PNGs, in some versions) as I
        path = tmp_path / "grey16.pgm"
        path.write_bytes(f"P5 {grey.shape[1]} {grey.shape[0]} 65535\n".encode() + (grey.astype(">u2") * 257).tobytes())
        im = Image.open(path)
        return im, np.asarray(im).astype(np.uint16), grey_rgb
    if mode == "F":  # 0..255 floats (was read as 16-bit data)
        im = Image.fromarray(grey.astype(np.float32))
        return im, np.asarray(im), None
    if mode == "F in [0, 1]":
        im = Image.fromarray(grey.astype(np.float32) / 255)
        return im, np.asarray(im), grey_rgb
    if mode == "F from a TIFF of 0..255":
        path = write_image(tmp_path / "float.tif", Image.fromarray(grey.astype(np.float32)))
        im = Image.open(path)
        return im, np.asarray(im), None
    raise AssertionError(mode)


PIL_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "I from a 16-bit PGM", "F", "F in [0, 1]",
             "F from a TIFF of 0..255"]


@pytest.mark.parametrize("case", PIL_MODES)
def test_a_pil_image_follows_the_rule_of_its_numpy_array(tiny, detector, tmp_path, case):
    """Every mode: scored exactly as the equivalent numpy array (and as the RGB it stands for), or refused
    as that array is, with a message that names the mode and the rule."""
    rgb = as_rgb_uint8(tiny["files"][2])
    im, array, expected = _pil_case(case, rgb, tmp_path)
    assert im.mode == case.split()[0]
    if expected is None:
        with pytest.raises(DataError) as from_array:
            detector([array])
        with pytest.raises(DataError) as from_pil:
            detector([im])
        message = str(from_pil.value)
        assert f"(mode {im.mode})" in message and "rule of its pixel array np.asarray(image)" in message
        assert f"here {array.dtype} {list(array.shape)}" in message
        problem = str(from_array.value).split(": ", 1)[1]  # the array's refusal, after "input 0 (...)"
        assert problem in message
        return
    assert np.array_equal(as_rgb_uint8(im), expected)
    assert np.array_equal(as_rgb_uint8(array), expected)
    (from_pil,), (from_array,), (reference,) = detector([im]), detector([array]), detector([expected])
    assert from_pil.score == from_array.score == reference.score
    np.testing.assert_array_equal(from_pil.anomaly_map, from_array.anomaly_map)


def test_encoded_bytes_score_exactly_as_the_file(tiny, detector, tmp_path):
    png = Path(tiny["files"][1])
    rgb = as_rgb_uint8(str(png))
    jpeg = write_image(tmp_path / "part.jpg", rgb, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the bytes are oriented as the file is
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(rotated, exif=exif.tobytes(), quality=95)
    for path in (png, jpeg, rotated):
        data = path.read_bytes()
        (from_file,) = detector(str(path))
        for encoded_input in (data, bytearray(data), memoryview(data)):
            (found,) = detector(encoded_input)
            assert found.score == from_file.score and found.size == from_file.size and found.path is None
            np.testing.assert_array_equal(found.anomaly_map, from_file.anomaly_map)
    assert detector(rotated.read_bytes())[0].size == (64, 64)
    with pytest.raises(ImageDecodeError, match=r"input 0 \(bytes, 10 bytes\): cannot decode 10 bytes as an image"):
        detector(b"not a png!")
    with pytest.raises(ImageDecodeError, match=r"input 1 \(bytes, 0 bytes\): no bytes"):
        detector([png.read_bytes(), b""])
    truncated = png.read_bytes()[:200]
    with pytest.raises(ImageDecodeError, match=r"input 0 \(bytes, 200 bytes\)"):
        detector(truncated)


def test_inputs_of_other_types_are_refused_naming_the_type(detector):
    accepted = "a path (str or Path), encoded image bytes (bytes, bytearray or memoryview: a file's content), a PIL image"
    with pytest.raises(DataError, match=r"^images of type NoneType: unsupported; pass a path") as err:
        detector(None)
    assert accepted in str(err.value)
    with pytest.raises(DataError, match=r"^images of type int: unsupported; pass a path"):
        detector(42)
    with pytest.raises(DataError, match=r"^images of type dict: unsupported"):
        detector({"image": "a.png"})
    with pytest.raises(DataError, match=r"^input 1 \(NoneType\): unsupported image type; pass a path") as err:
        detector([np.zeros((8, 8), np.uint8), None])
    assert accepted in str(err.value)
    with pytest.raises(DataError, match=r"^input 0 \(int\): unsupported image type"):
        detector([3])


def test_maps_come_back_at_the_original_size_with_nan_borders(tiny, detector):
    rgb = as_rgb_uint8(tiny["files"][2])
    square = np.asarray(Image.fromarray(rgb).resize((512, 512), Image.BICUBIC))
    wide = np.asarray(Image.fromarray(rgb).resize((640, 480), Image.BICUBIC))
    small = np.asarray(Image.fromarray(rgb).resize((37, 50), Image.BICUBIC))
    found = detector([square, wide, small, rgb])
    for det, size in zip(found, [(512, 512), (480, 640), (50, 37), (64, 64)]):
        assert det.size == size and det.anomaly_map.shape == size and det.mask.shape == size
        valid = expected_valid(size)
        assert np.array_equal(np.isfinite(det.anomaly_map), valid)
        assert (det.anomaly_map[valid] >= 0).all()
    # 512: the resized 64x64 image keeps rows/columns 8..55, i.e. original 64..447
    rows = np.isfinite(found[0].anomaly_map).any(axis=1).nonzero()[0]
    assert (rows.min(), rows.max()) == (64, 447)
    # 640x480: rows 60..419, columns 80..559
    valid = np.isfinite(found[1].anomaly_map)
    assert (valid.any(axis=1).nonzero()[0][[0, -1]].tolist(), valid.any(axis=0).nonzero()[0][[0, -1]].tolist()) == ([60, 419], [80, 559])
    # the map inside is the model's map, resized: its range is that of the crop's map
    assert np.nanmax(found[0].anomaly_map) <= np.nanmax(found[3].anomaly_map) * 1.5


def test_bad_inputs_raise_documented_errors(detector, tmp_path, tiny):
    data = Path(tiny["files"][0]).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated.png"):
        detector([tiny["files"][0], str(truncated)])
    with pytest.raises(DataError, match="does not exist"):
        detector(str(tmp_path / "missing.png"))
    with pytest.raises(DataError, match=r"input 1 .*\[H, W, 3\].*alpha"):
        detector([np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 4), np.uint8)])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        detector(np.full((20, 20, 3), 2.0, np.float32))
    with pytest.raises(DataError, match="NaN"):
        detector(np.full((20, 20), np.nan, np.float64))
    with pytest.raises(DataError, match="dtype int32"):
        detector(np.zeros((20, 20, 3), np.int32))
    with pytest.raises(DataError, match="channels first"):
        detector(torch.zeros(5, 20, 20))
    with pytest.raises(DataError, match="unsupported image type"):
        detector([42])


# ---------------------------------------------------------------------- checkpoints and facts


def test_checkpoint_errors(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="does not exist"):
        Detector.from_checkpoint(tmp_path / "none.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Detector.from_checkpoint(garbage)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not written by lightning_ad"):
        Detector.from_checkpoint(foreign)
    checkpoint = torch.load(tiny["ckpt"], weights_only=True, map_location="cpu")
    checkpoint["lightning_ad"]["bank_size"] = 0
    unfitted = tmp_path / "unfitted.ckpt"
    torch.save(checkpoint, unfitted)
    with pytest.raises(CheckpointError, match="no memory bank"):
        Detector.from_checkpoint(unfitted)


def test_threshold_overrides_and_info(tiny, detector, tmp_path):
    scores = sorted(d.score for d in detector(tiny["files"]))
    middle = (scores[1] + scores[2]) / 2
    checkpoint = torch.load(tiny["ckpt"], weights_only=True, map_location="cpu")
    # a threshold set by hand lives where the learned ones do: the model's buffers, with the record of its source
    checkpoint["state_dict"]["model.image_threshold"] = torch.tensor(middle, dtype=torch.float64)
    checkpoint["lightning_ad"]["thresholds"]["image"] = {"source": "set by hand", "value": middle}
    override = tmp_path / "override.ckpt"
    torch.save(checkpoint, override)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-weights warning: the checkpoint brings the weights
        other = Detector.from_checkpoint(override)
    found = other(tiny["files"])
    assert sorted(d.decision for d in found) == [False, False, True, True]
    assert all(d.decision == (d.score >= middle) for d in found)
    assert all(d.normalized_score > 0.5 for d in found if d.decision)
    info = json.loads(json.dumps(other.info))
    assert info["thresholds"]["image"] == pytest.approx(middle)
    assert info["thresholds"]["pixel"] == pytest.approx(float(checkpoint["state_dict"]["model.pixel_threshold"]))
    assert info["input"] == {"image_size": [IMAGE_SIZE, IMAGE_SIZE], "crop_size": [CROP, CROP]}
    assert info["backbone"] == "efficientnet_lite0" and info["layers"] == [1, 2, 3]
    assert (info["image_k"], info["gallery_k"], info["kappa"]) == (3, 3, 1)
    assert info["lightning_ad_version"]


def test_a_checkpoint_before_the_threshold_record_keeps_its_hand_set_threshold(tiny, detector, tmp_path):
    checkpoint = torch.load(tiny["ckpt"], weights_only=True, map_location="cpu")
    checkpoint["hyper_parameters"]["image_threshold"] = 1.5
    checkpoint["lightning_ad"]["thresholds"] = {"method": "quantile"}  # as versions before the record wrote it
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    assert Detector.from_checkpoint(older).image_threshold == 1.5
    checkpoint["lightning_ad"]["thresholds"]["image"] = {"source": "learned"}  # with the record, the buffer is in use
    torch.save(checkpoint, older)
    assert Detector.from_checkpoint(older).image_threshold == detector.image_threshold != 1.5


def test_checkpoint_without_input_contract_serves_the_bank_size(tiny, tmp_path):
    checkpoint = torch.load(tiny["ckpt"], weights_only=True, map_location="cpu")
    checkpoint["lightning_ad"].pop("input", None)
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    det = Detector.from_checkpoint(old)
    assert det.contract == {"image_size": [CROP, CROP], "crop_size": None}
    found = det(np.zeros((30, 50, 3), np.uint8))[0]
    assert found.anomaly_map.shape == (30, 50) and np.isfinite(found.anomaly_map).all()


def test_overlay_greys_out_the_uninspected_border(tiny, detector):
    rgb = as_rgb_uint8(tiny["files"][2])
    wide = np.asarray(Image.fromarray(rgb).resize((80, 60), Image.BICUBIC))
    det = detector(wide)[0]
    picture = det.overlay(wide)
    assert picture.shape == (60, 80, 3) and picture.dtype == np.uint8
    border = ~np.isfinite(det.anomaly_map)
    assert border.any()
    grey = picture[border]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    assert np.array_equal(overlay_for(det, wide), picture)
    with pytest.raises(DataError, match="pass the image that was scored"):
        det.overlay(rgb)


# ---------------------------------------------------------------------- real data


def test_real_bottle_detector_equals_predict(tmp_path):
    bottle = require_real("mvtec_ad", "bottle")
    train = sorted((bottle / "train" / "good").glob("*.png"))[:20]
    tests = [sorted((bottle / "test" / group).glob("*.png"))[0] for group in ("good", "broken_large", "contamination")]
    tests.append(sorted((bottle / "test" / "good").glob("*.png"))[1])
    folders = {name: tmp_path / name for name in ("train", "good", "bad", "predict")}
    for folder in folders.values():
        folder.mkdir()
    for path in train:
        (folders["train"] / path.name).symlink_to(path.resolve())
    for i, path in enumerate(tests):  # symlinks only: the data is never copied
        (folders["good" if "good" in path.parts else "bad"] / f"{i}_{path.name}").symlink_to(path.resolve())
        (folders["predict"] / f"{i}_{path.name}").symlink_to(path.resolve())
    dm = FolderDataModule(normal_dir=str(folders["train"]), abnormal_dirs=[str(folders["bad"])],
                          normal_test_dir=str(folders["good"]), mask_pattern=None, image_size=256, crop_size=224,
                          batch_size=10, num_workers=0, predict_dir=str(folders["predict"]))
    ckpt = fit_checkpoint(tmp_path, dm, image_k=5, gallery_k=5)
    detector = Detector.from_checkpoint(ckpt, batch_size=4)
    records = predict_records(ckpt, dm, tmp_path / "predict_run")
    by_name = {Path(p).name: i for i, p in enumerate(records.path)}
    found = detector(sorted(str(p) for p in folders["predict"].iterdir()))
    for det in found:
        i = by_name[Path(det.path).name]
        assert det.score == pytest.approx(float(records.score[i]), rel=1e-5)
        assert det.size == (512, 512) and det.anomaly_map.shape == (512, 512)
        valid = expected_valid((512, 512), 256, 224)
        assert np.array_equal(np.isfinite(det.anomaly_map), valid)
        # 512 -> 256 is exactly 2: the inspected region is the model's map upsampled by 2
        small = torch.from_numpy(det.anomaly_map[32:480, 32:480]).float()
        back = torch.nn.functional.avg_pool2d(small[None, None], 2)[0, 0]
        assert rel(back.numpy(), records.anomaly_map[i].numpy()) < 0.05
    # an MVTec-original-sized 900x900 input, made in memory, gives a 900x900 map
    big = np.asarray(Image.open(tests[1]).convert("RGB").resize((900, 900), Image.BICUBIC))
    det = detector(big)[0]
    assert det.anomaly_map.shape == (900, 900)
    assert np.array_equal(np.isfinite(det.anomaly_map), expected_valid((900, 900), 256, 224))
    good = [d.score for d in found if Path(d.path).name.startswith(("0_", "3_"))]  # tests[0], tests[3]: test/good
    assert len(good) == 2 and det.score > min(good)  # a broken bottle scores above a good one
