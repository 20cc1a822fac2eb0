"""The folder, image and mask rules of ``lightning_ad.data.folders``, ``.images`` and ``.masks``, one test each, on small generated files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import encoded, noise_image, write_image
from PIL import Image

from lightning_ad.data.folders import is_image_file, list_images, safe_relpath
from lightning_ad.data.images import check_image, image_size, load_image
from lightning_ad.data.mask_files import conventional_masks
from lightning_ad.data.masks import load_mask, mask_problem
from lightning_ad.errors import DataError, ImageDecodeError, MaskError

# ---------------------------------------------------------------------- folders


def test_non_images_hidden_files_and_subfolders_are_ignored(tmp_path):
    write_image(tmp_path / "b.png", noise_image(0, 12, 16))
    write_image(tmp_path / "A.JPG", noise_image(0, 12, 16))
    for name in ("notes.txt", ".DS_Store", "Thumbs.db", "desktop.ini", "labels.json"):
        (tmp_path / name).write_bytes(b"\x00\x01 not an image")
    write_image(tmp_path / "._b.png", noise_image(0, 12, 16))  # macOS resource fork
    (tmp_path / "sub.png").mkdir()  # a folder with an image name
    write_image(tmp_path / "sub.png" / "inner.png", noise_image(0, 12, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ignoring them is silent
        found = list_images(tmp_path)
    assert [p.name for p in found] == ["A.JPG", "b.png"]
    assert not is_image_file(tmp_path / "Thumbs.db")


def test_folder_with_only_unsupported_images_is_an_error_naming_it(tmp_path):
    (tmp_path / "IMG_0001.heic").write_bytes(b"ftypheic")
    (tmp_path / "IMG_0002.HEIC").write_bytes(b"ftypheic")
    with pytest.raises(DataError, match=r"(?s)'" + str(tmp_path) + r"'.*\.heic.*cannot be read.*no readable image"):
        list_images(tmp_path)


def test_unsupported_images_beside_readable_ones_are_skipped_with_a_warning(tmp_path):
    write_image(tmp_path / "a.png", noise_image(0, 12, 16))
    (tmp_path / "b.heic").write_bytes(b"ftypheic")
    with pytest.warns(UserWarning, match=r"1 file\(s\) of unsupported image type\(s\) \['\.heic'\].*skipped"):
        assert [p.name for p in list_images(tmp_path)] == ["a.png"]


def test_images_only_in_a_subfolder_are_named_in_the_error(tmp_path):
    nested = write_image(tmp_path / "good" / "copy" / "000.png", noise_image(0, 12, 16))
    with pytest.raises(DataError, match=rf"'{tmp_path / 'good'}' holds no image.*Subfolders are not searched, and '{nested}' lies in one"):
        list_images(tmp_path / "good")
    assert list_images(tmp_path / "good", recursive=True) == [nested]


@pytest.mark.parametrize("case", ["missing", "empty", "file", "only_text"])
def test_missing_or_empty_folder_is_an_error_naming_it(tmp_path, case):
    folder = tmp_path / "images"
    if case == "empty":
        folder.mkdir()
    elif case == "file":
        folder.write_bytes(b"x")
    elif case == "only_text":
        folder.mkdir()
        (folder / "readme.txt").write_text("hello")
    expected = {"missing": "does not exist", "empty": "holds no image", "file": "is not a folder", "only_text": "holds no image"}
    with pytest.raises(DataError, match=f"'{folder}' {expected[case]}"):
        list_images(folder, what="image folder")


# ---------------------------------------------------------------------- broken files


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif"), ("BMP", "bmp"), ("WEBP", "webp")])
def test_truncated_image_fails_the_setup_check_naming_it(tmp_path, fmt, ext):
    array = noise_image(0, 40, 48)
    array[:20] = 90  # some structure, so that the file is not tiny
    data = encoded(array, fmt)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2])
    pattern = rf"cannot decode image '{path}'.*skip_broken"
    with pytest.raises(ImageDecodeError, match=pattern):
        check_image(path)  # the cheap check of setup, not only the full decode
    with pytest.raises(ImageDecodeError, match=pattern):
        check_image(path, full=True)
    with pytest.raises(ImageDecodeError, match=pattern):
        load_image(path)


def test_zero_byte_and_non_image_content_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=rf"'{empty}': the file is empty \(0 bytes\)"):
        check_image(empty)
    text = tmp_path / "fake.jpg"
    text.write_text("this is not a JPEG")
    with pytest.raises(ImageDecodeError, match=rf"cannot decode image '{text}'"):
        load_image(text)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_valid_files_pass_the_check_with_their_size(tmp_path):
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tiff"), ("BMP", "bmp")):
        path = tmp_path / f"ok.{ext}"
        path.write_bytes(encoded(noise_image(0, 12, 16), fmt))
        assert check_image(path) == (12, 16) == image_size(path) == load_image(path).shape[:2]


# ---------------------------------------------------------------------- modes


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1, 128, 129, 257, 32767, 32768, 65278, 65534, 65535]], dtype=np.uint16)
    values = np.repeat(values, 3, axis=0)
    for ext in ("png", "tif"):
        path = tmp_path / f"gray16.{ext}"
        Image.fromarray(values).save(path)
        assert Image.open(path).mode.startswith("I")
        out = load_image(path)
        assert out.shape == (3, 10, 3) and out.dtype == np.uint8
        expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
        assert np.array_equal(out[..., 0], expected)
        assert out[0].tolist() == [[v] * 3 for v in (0, 0, 0, 1, 1, 127, 128, 254, 255, 255)]
        assert np.array_equal(out[..., 0], out[..., 2])


def test_32_bit_integer_files_are_16_bit_only_when_the_file_is(tmp_path):
    """Mode I: a 16-bit PGM (Pillow opens it as I) is 16-bit data; a 32-bit TIFF has no brightness scale,
    as an int32 array has none, even when its values lie in 0..65535 (0..255 data would read nearly black)."""
    pgm = tmp_path / "gray16.pgm"
    pgm.write_bytes(b"P5 3 1 65535\n" + np.array([0, 65535, 257], ">u2").tobytes())
    assert Image.open(pgm).mode == "I"
    assert load_image(pgm)[0, :, 0].tolist() == [0, 255, 1]
    for name, values in (("i32.tif", [0, 65535, 257]), ("i32_8bit.tif", [0, 255, 128]), ("i32_big.tif", [0, 70000])):
        path = tmp_path / name
        Image.fromarray(np.array([values], dtype=np.int32)).save(path)
        assert Image.open(path).mode == "I"
        for load in (load_image, check_image):  # TIFF: fully decoded by the setup check
            with pytest.raises(ImageDecodeError, match=rf"'{path}' \(mode I\).*dtype int32 have no known brightness "
                                                       r"scale.*16-bit data only when decoded from a 16-bit file"):
                load(path)


def test_float_images_hold_values_in_0_1(tmp_path):
    unit = tmp_path / "unit.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(unit)
    assert load_image(unit)[0, :, 1].tolist() == [0, 128, 255]
    # 0..255 or 0..65535 floats: no known scale (they were read as 16-bit data, 0..255 nearly black)
    for name, values, span in (("byte.tif", [0.0, 255.0, 128.0], "0 .. 255"), ("wide.tif", [0.0, 65535.0, 32768.0], "0 .. 6.554e\\+04")):
        path = tmp_path / name
        Image.fromarray(np.array([values], dtype=np.float32)).save(path)
        with pytest.raises(ImageDecodeError, match=rf"'{path}' \(mode F\): float images must hold finite values "
                                                   rf"in \[0, 1\] \(found values {span}\).*rule of its pixel array"):
            load_image(path)
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(nan)
    with pytest.raises(ImageDecodeError, match=rf"'{nan}'.*NaN"):
        load_image(nan)


def test_every_8_bit_mode_becomes_rgb(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [40, 80, 120]]], dtype=np.uint8)
    gray = np.array([[0, 100, 200, 255]], dtype=np.uint8)
    cases = {
        "L.png": (Image.fromarray(gray, "L"), np.repeat(gray[..., None], 3, 2)),
        "1.png": (Image.fromarray(gray > 127), np.repeat(np.where(gray > 127, 255, 0)[..., None], 3, 2)),
        "LA.png": (Image.merge("LA", [Image.fromarray(gray), Image.fromarray(np.zeros_like(gray))]), np.repeat(gray[..., None], 3, 2)),
        "RGB.png": (Image.fromarray(rgb), rgb),
        "RGBA.png": (Image.fromarray(np.concatenate([rgb, np.zeros_like(rgb[..., :1])], 2), "RGBA"), rgb),
        "P.png": (Image.fromarray(rgb).quantize(4), rgb),
        "CMYK.tif": (Image.fromarray(rgb).convert("CMYK"), rgb),
        "CMYK.jpg": (Image.fromarray(rgb).convert("CMYK"), None),  # lossy: compared loosely below
    }
    for name, (im, expected) in cases.items():
        path = tmp_path / name
        im.save(path, **({"quality": 100} if name.endswith("jpg") else {}))
        assert Image.open(path).mode == name.split(".")[0]
        out = load_image(path)
        assert out.shape == (1, 4, 3) and out.dtype == np.uint8, name
        if expected is not None:
            assert np.array_equal(out, expected), name
        else:
            assert np.abs(out.astype(int) - rgb.astype(int)).max() < 60, name


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putdata([0, 1, 0])
    im.info["transparency"] = 0
    path = write_image(tmp_path / "pt.png", im, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    out = load_image(path)
    assert out[0].tolist() == [[10, 20, 30], [200, 100, 50], [10, 20, 30]]  # alpha dropped, colour kept


def test_exif_orientation_is_applied_to_size_and_pixels(tmp_path):
    array = np.zeros((10, 30, 3), np.uint8)
    array[:, :5] = 255  # a white band on the left of the stored pixels
    im = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed after a 90 degree clockwise turn
    path = write_image(tmp_path / "rot.jpg", im, exif=exif.tobytes(), quality=100)
    assert image_size(path) == (30, 10) == check_image(path) == check_image(path, full=True)
    out = load_image(path)
    assert out.shape == (30, 10, 3)
    assert out[:5].mean() > 200 and out[-10:].mean() < 30  # the band is now on top
    mask = np.zeros((10, 30), np.uint8)
    mask[:, :5] = 255
    mask_path = write_image(tmp_path / "rot_mask.png", mask, exif=exif.tobytes())
    loaded = load_mask(mask_path, (30, 10), path)
    assert loaded.shape == (30, 10) and loaded[:5].all() and not loaded[5:].any()


# ---------------------------------------------------------------------- masks


def test_mask_binary_label_map_soft_and_sixteen_bit(tmp_path):
    binary = np.array([[0, 255, 0, 255]], np.uint8)
    assert load_mask(write_image(tmp_path / "b.png", binary)).tolist() == [[False, True, False, True]]
    label = np.array([[0, 1, 1, 0]], np.uint8)
    assert load_mask(write_image(tmp_path / "l.png", label)).tolist() == [[False, True, True, False]]
    soft = np.array([[0, 127, 128, 255]], np.uint8)
    assert load_mask(write_image(tmp_path / "s.png", soft)).tolist() == [[False, False, True, True]]
    sixteen = np.array([[0, 32767, 32768, 65535]], np.uint16)
    path = write_image(tmp_path / "16.png", sixteen)
    assert Image.open(path).mode.startswith("I;16")
    assert load_mask(path).tolist() == [[False, False, True, True]]
    label16 = np.array([[0, 1, 0, 1]], np.uint16)
    assert load_mask(write_image(tmp_path / "l16.png", label16)).tolist() == [[False, True, False, True]]
    bilevel = Image.fromarray(np.array([[0, 255, 255, 0]], np.uint8)).convert("1")
    assert load_mask(write_image(tmp_path / "one.png", bilevel)).tolist() == [[False, True, True, False]]


def test_colour_and_transparent_masks(tmp_path):
    red = np.zeros((1, 3, 3), np.uint8)
    red[0, 1] = [255, 0, 0]
    assert load_mask(write_image(tmp_path / "red.png", red)).tolist() == [[False, True, False]]
    # constant colour, the mask in the alpha channel: shown over black
    rgba = np.full((1, 3, 4), 255, np.uint8)
    rgba[0, :, 3] = [0, 255, 100]
    assert load_mask(write_image(tmp_path / "alpha.png", rgba, "RGBA")).tolist() == [[False, True, False]]
    la = np.stack([np.full((1, 3), 255, np.uint8), np.array([[255, 0, 200]], np.uint8)], axis=2)
    assert load_mask(write_image(tmp_path / "la.png", la, "LA")).tolist() == [[True, False, True]]


def test_ambiguous_mask_is_refused_naming_mask_and_image(tmp_path):
    path = write_image(tmp_path / "faint_mask.png", np.array([[0, 40, 100, 0]], np.uint8))
    image = tmp_path / "faint.png"
    with pytest.raises(MaskError, match=rf"mask '{path}' of image '{image}' has positive values up to 100 but none reaches"):
        load_mask(path, None, image)
    multi = write_image(tmp_path / "classes.png", np.array([[0, 2, 3, 0]], np.uint8))
    with pytest.raises(MaskError, match="ambiguous"):
        load_mask(multi)


def test_photograph_saved_as_mask_is_refused(tmp_path):
    photo = np.random.default_rng(1).integers(1, 250, (20, 20), dtype=np.uint8)
    photo[0, 0] = 255
    path = write_image(tmp_path / "photo.png", photo)
    with pytest.raises(MaskError, match=rf"'{path}'.*does not look like a mask"):
        load_mask(path)


def test_mask_of_other_size_same_aspect_is_resized_by_nearest_neighbour(tmp_path):
    small = np.zeros((4, 6), np.uint8)
    small[1, 2] = 255
    out = load_mask(write_image(tmp_path / "m.png", small), (8, 12), tmp_path / "img.png")
    assert out.shape == (8, 12)
    expected = np.zeros((8, 12), bool)
    expected[2:4, 4:6] = True
    assert np.array_equal(out, expected)


def test_mask_of_other_aspect_is_refused_naming_both_files(tmp_path):
    path = write_image(tmp_path / "m.png", np.zeros((10, 10), np.uint8))
    image = tmp_path / "img.png"
    with pytest.raises(MaskError, match=rf"mask '{path}' is 10x10 pixels but its image '{image}' is 20x10"):
        load_mask(path, (10, 20), image)


def test_broken_mask_names_mask_and_image(tmp_path):
    path = tmp_path / "000_mask.png"
    path.write_bytes(encoded(np.zeros((30, 30), np.uint8), "PNG")[:40])
    image = tmp_path / "000.png"
    with pytest.raises(ImageDecodeError, match=rf"cannot decode mask '{path}' of image '{image}'"):
        load_mask(path, (30, 30), image)


def test_mask_problem_tells_masks_from_pictures(tmp_path):
    binary = np.zeros((20, 20), np.uint8)
    binary[5:9, 5:9] = 255
    soft = binary.copy()
    soft[4, 5:9] = 100  # a soft edge
    grey_rgb = np.repeat(binary[..., None], 3, axis=2)
    for name, array in (("l.png", binary), ("soft.png", soft), ("zero.png", binary * 0), ("grey_rgb.png", grey_rgb)):
        assert mask_problem(write_image(tmp_path / name, array)) is None, name
    colour = write_image(tmp_path / "colour.png", noise_image(1, 20, 20))
    assert mask_problem(colour) == "is a colour picture (mode RGB), not a mask (masks are one channel or grey)"
    red = np.zeros((20, 20, 3), np.uint8)
    red[5:9, 5:9, 0] = 255  # accepted by load_mask, but a colour picture to a naming convention
    assert "colour picture" in mask_problem(write_image(tmp_path / "red.png", red))
    photo = write_image(tmp_path / "photo.png", noise_image(2, 20, 20)[:, :, 0])
    assert mask_problem(photo).startswith(f"is not accepted as a mask (mask {str(photo)!r}")
    assert "does not look like a mask" in mask_problem(photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageDecodeError, match=rf"cannot decode mask '{broken}'"):
        mask_problem(broken)


def test_conventional_mask_names(tmp_path):
    names = ["a.jpg", "a.png", "b.png", "c.png", "c_mask.png", "d.JPEG", "d.PNG", "e_mask.tif", "f.bmp", "f.png",
             "g_mask.png", "g.tif", "h.png", "h.webp", "sub/a.png", "_mask.png"]
    files = [tmp_path / n for n in names]
    found = {m.relative_to(tmp_path).as_posix(): (i.name, pattern) for m, (i, pattern) in conventional_masks(files).items()}
    assert found == {
        "a.png": ("a.jpg", "{stem}.png"),
        "c_mask.png": ("c.png", "{stem}_mask.png"),
        "d.PNG": ("d.JPEG", "{stem}.PNG"),
        "f.png": ("f.bmp", "{stem}.png"),
        "g_mask.png": ("g.tif", "{stem}_mask.png"),
    }


# ---------------------------------------------------------------------- output names


@pytest.mark.parametrize(
    "path,root,expected",
    [
        ("/data/a/b/c.png", "/data/a", "b/c.png"),
        ("/data/a/./b/../c.png", "/data/a", "c.png"),
        ("/data/x/c.png", "/data/a", "c.png"),  # outside root: the name only
        ("/data/a/../x/c.png", "/data/a", "c.png"),
        ("/elsewhere/c.png", None, "c.png"),
    ],
)
def test_safe_relpath_never_leaves_the_folder(path, root, expected):
    out = safe_relpath(Path(path), Path(root) if root else None)
    assert out == expected
    assert ".." not in out.split("/") and not out.startswith("/")
