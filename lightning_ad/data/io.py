"""Finding, decoding and converting images and masks.

Rules (documented in the README, one test each):

Images
    * Files are images by extension (:data:`IMAGE_EXTENSIONS`, case-insensitive).
      Hidden files (``.DS_Store``, ``._x.png``), ``Thumbs.db``, ``desktop.ini`` and
      files of other types in an image folder are ignored. Files of image types that
      cannot be read here (:data:`UNSUPPORTED_IMAGE_EXTENSIONS`, e.g. ``.heic``) are
      skipped with a warning; a folder with no readable image is an error.
    * A file that fails to decode (zero bytes, truncated, corrupt) raises
      :class:`~lightning_ad.errors.ImageDecodeError` naming it.
    * Every PIL mode becomes 8-bit RGB: ``L``, ``LA``, ``P``, ``RGBA``, ``CMYK``,
      ``YCbCr`` ... through PIL (alpha is dropped); 16-bit grayscale (``I;16*``, and
      ``I``, taken as 16-bit data) is scaled by 255/65535, never clipped; ``F``
      (float) is taken as [0, 1] when its maximum is at most 1, else as 16-bit data.

Masks
    * A mask becomes one channel: the maximum over colour channels (alpha ignored),
      so a red-on-black mask counts.
    * Binarisation at half range: >= 128 for 8-bit, >= 32768 for 16-bit, >= 0.5 for
      float. Label-map masks whose values are only 0 and 1 count every 1. A mask
      with positive values none of which reaches half range is ambiguous and refused.
    * A mask of another size but the same aspect ratio (within 1 %) as its image is
      resized to the image by nearest neighbour; another aspect ratio is refused
      with an error naming both files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, ImageDecodeError, MaskError

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNSUPPORTED_IMAGE_EXTENSIONS",
    "list_images",
    "is_image_file",
    "check_image",
    "image_size",
    "load_image",
    "load_mask",
]

#: Extensions read as images.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"})
#: Image types that are recognised but not read (skipped with a warning).
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".heic", ".heif", ".avif", ".gif", ".raw", ".dng", ".cr2", ".nef", ".arw", ".jp2", ".exr", ".svg", ".psd"}
)
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an image extension."""
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and path.name.lower() not in _IGNORED_NAMES
        and path.is_file()
    )


def list_images(folder: Path, *, recursive: bool = False, what: str = "image folder") -> List[Path]:
    """Sorted image files of ``folder`` (see the module rules); errors name the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{what} {str(folder)!r} does not exist. Check the path (relative paths start from {str(Path.cwd())!r}).")
    if not folder.is_dir():
        raise DataError(f"{what} {str(folder)!r} is not a folder.")
    entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
    images = [p for p in entries if is_image_file(p)]
    unsupported = sorted({p.suffix.lower() for p in entries if p.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS})
    if unsupported:
        count = sum(p.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS for p in entries)
        message = (
            f"{what} {str(folder)!r}: {count} file(s) of unsupported image type(s) {unsupported} are skipped; "
            f"convert them to one of {sorted(IMAGE_EXTENSIONS)}."
        )
        if not images:
            raise DataError(message.replace("are skipped", "cannot be read") + " The folder has no readable image.")
        warnings.warn(message, UserWarning, stacklevel=2)
    if not images:
        raise DataError(
            f"{what} {str(folder)!r} holds no image file (extensions {sorted(IMAGE_EXTENSIONS)})"
            + (" in it or its subfolders" if recursive else "")
            + "."
        )
    return images


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"image {str(path)!r} does not exist.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(_decode_message(path, err)) from None


def _decode_message(path: Path, err: BaseException) -> str:
    size = path.stat().st_size if path.exists() else -1
    detail = "the file is empty (0 bytes)" if size == 0 else f"{type(err).__name__}: {err}"
    return (
        f"cannot decode image {str(path)!r}: {detail}. Replace or remove the file "
        "(or set the data option skip_broken=true to skip broken images with a warning)."
    )


def check_image(path: Path, *, full: bool = False) -> Tuple[int, int]:
    """Check that ``path`` is a readable image and return its ``(height, width)``.

    Reads the header and verifies the file's structure (for PNG, every chunk's CRC);
    ``full=True`` decodes all pixels, which also catches truncated JPEGs.
    """
    if full:
        array = load_image(path)
        return int(array.shape[0]), int(array.shape[1])
    im = _open(path)
    try:
        size = im.size
        im.verify()
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault
        raise ImageDecodeError(_decode_message(path, err)) from None
    finally:
        im.close()
    if size[0] < 1 or size[1] < 1:
        raise ImageDecodeError(f"image {str(path)!r} has no pixels ({size[0]}x{size[1]}).")
    return int(size[1]), int(size[0])


def image_size(path: Path) -> Tuple[int, int]:
    """``(height, width)`` from the header only."""
    with _open(path) as im:
        return int(im.size[1]), int(im.size[0])


def _decode(path: Path) -> Image.Image:
    im = _open(path)
    try:
        im.load()
    except Exception as err:  # noqa: BLE001
        im.close()
        raise ImageDecodeError(_decode_message(path, err)) from None
    return im


def _sixteen_bit_to_uint8(array: np.ndarray) -> np.ndarray:
    scaled = np.clip(array.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
    return np.rint(scaled).astype(np.uint8)


def load_image(path: Path) -> np.ndarray:
    """Decode ``path`` into an ``[H, W, 3]`` uint8 RGB array (see the module rules)."""
    path = Path(path)
    with _decode(path) as im:
        mode = im.mode
        if mode.startswith("I;16") or mode == "I":
            gray = _sixteen_bit_to_uint8(np.asarray(im))
            return np.repeat(gray[:, :, None], 3, axis=2)
        if mode == "F":
            values = np.asarray(im, dtype=np.float64)
            finite = values[np.isfinite(values)]
            if finite.size and finite.max() <= 1.0:
                gray = np.rint(np.clip(np.nan_to_num(values), 0, 1) * 255).astype(np.uint8)
            else:
                gray = _sixteen_bit_to_uint8(np.nan_to_num(values))
            return np.repeat(gray[:, :, None], 3, axis=2)
        if mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        rgb = im.convert("RGB")
        return np.array(rgb, dtype=np.uint8)


def _mask_array(im: Image.Image) -> Tuple[np.ndarray, float]:
    """One-channel array and the value of half range."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.uint8), 0.5
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(im.convert("RGB"))
        return rgb.max(axis=2), 128
    if mode in ("LA", "La", "PA"):
        return np.asarray(im.getchannel(0)), 128
    if mode == "L":
        return np.asarray(im), 128
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(im).astype(np.int64), 32768
    if mode == "F":
        return np.asarray(im, dtype=np.float64), 0.5
    return np.asarray(im.convert("L")), 128


def load_mask(path: Path, image_hw: Optional[Tuple[int, int]] = None, image_path: Optional[Path] = None) -> np.ndarray:
    """Decode a mask into a boolean ``[H, W]`` array (see the module rules).

    Args:
        path: the mask file.
        image_hw: ``(height, width)`` of its image: the mask is checked against it and
            resized to it (nearest neighbour) when only the resolution differs.
        image_path: the image, named in errors.
    """
    path = Path(path)
    with _decode(path) as im:
        values, half = _mask_array(im)
    if values.ndim != 2:
        raise MaskError(f"mask {str(path)!r} is not a 2-D image (shape {values.shape}).")
    maximum = float(np.nanmax(values)) if values.size else 0.0
    if maximum <= 1 and half > 1:
        mask = values > 0  # label-map masks: {0, 1}
    else:
        mask = values >= half
        if maximum > 0 and not mask.any():
            raise MaskError(
                f"mask {str(path)!r} has positive values up to {maximum:g} but none reaches half range "
                f"({half:g}): it is ambiguous. Save masks as 0 for normal and the maximum value (255 for "
                "8-bit) for anomalous pixels."
            )
    if image_hw is not None and tuple(mask.shape) != tuple(image_hw):
        mh, mw = mask.shape
        ih, iw = image_hw
        if abs((mw / mh) / (iw / ih) - 1.0) > 0.01:
            raise MaskError(
                f"mask {str(path)!r} is {mw}x{mh} pixels but its image "
                f"{str(image_path) if image_path else '?'!r} is {iw}x{ih}: the aspect ratios differ, so the "
                "mask cannot be aligned. Provide a mask of the image's size."
            )
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((iw, ih), Image.NEAREST)
        mask = np.asarray(resized) > 127
    return mask


def existing(paths: Iterable[Optional[Path]]) -> List[Path]:
    """The paths that are not None and exist."""
    return [p for p in paths if p is not None and Path(p).exists()]


def common_root(paths: Sequence[Path]) -> Path:
    """Deepest folder that contains every path."""
    parts = [Path(p).resolve().parts for p in paths]
    prefix = []
    for level in zip(*parts):
        if all(x == level[0] for x in level):
            prefix.append(level[0])
        else:
            break
    return Path(*prefix) if prefix else Path("/")
