"""Reading a mask file into a boolean ``[H, W]`` array, and whether a file can be a mask.

Which files are masks by their names is :mod:`lightning_ad.data.mask_files`.

Masks
=====

* The mask of an image is looked up by the datamodule's name rule (MVTec:
  ``ground_truth/<defect>/<stem>_mask.png``; folders: ``mask_pattern``). Its
  errors (:class:`~lightning_ad.errors.MaskError`, or ``ImageDecodeError``
  when the mask file does not decode) name the mask and its image.
* A mask is decoded and oriented as an image (:mod:`lightning_ad.data.images`), then
  becomes one channel: the maximum over the colour channels (so a
  red-on-black mask counts), shown over black (a transparent pixel counts 0,
  semi-transparent pixels are scaled by their alpha).
* Binarisation at half range: >= 128 for 8-bit, >= 32768 for 16-bit, >= 0.5
  for float. Label-map masks whose values are only 0 and 1 count every 1. A
  mask with positive values none of which reaches half range is ambiguous and
  refused. A mask in which more than half of the pixels are neither 0 nor the
  mask's largest value (a photograph saved as a mask) is refused.
* A mask of another size but the same aspect ratio (within 1 %) as its image is
  resized to the image by nearest neighbour; another aspect ratio is refused
  with an error naming both files.
* Anomalous test images: either every one has a mask (an all-zero mask is
  allowed: an anomaly without visible extent) or none has (then only
  image-level metrics are computed, with a warning); some with and some
  without is refused, naming the images and the mask files looked for.
* A mask found for a normal image must mark no pixel (an all-zero mask is
  fine); one that marks pixels is refused, naming both files.
* Files that are masks are never images, whatever ``mask_pattern`` says. Besides the
  datamodule's own rule, the common conventions (:mod:`lightning_ad.data.mask_files`)
  name masks: ``<stem>_mask.<ext>`` beside ``<stem>.<ext2>``, and a ``.png`` beside a
  ``.jpg``/``.jpeg``/``.bmp`` of the same stem (Magnetic Tile). With masks off
  (``mask_pattern: null``), such files are left out with a warning that names the folder
  and the count and says how to use them (``--data.init_args.mask_pattern "{stem}.png"``).
  Such a file must look like a mask (:func:`mask_problem`: one channel or grey, and
  accepted by the rules above); one that does not (a colour photo ``a.png`` beside
  ``a.jpg``) is an error naming both files, not a guess: rename one of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from ..errors import MaskError
from .images import open_oriented

__all__ = ["load_mask", "mask_problem"]

# A mask with more than this share of pixels neither 0 nor its maximum is not a mask.
_MAX_INTERMEDIATE_SHARE = 0.5


def _q(path: Optional[os.PathLike]) -> str:
    return repr(str(path)) if path is not None else "'?'"


def _over_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """8-bit colour shown over black with 8-bit alpha, rounded."""
    return ((colour.astype(np.uint32) * alpha.astype(np.uint32) + 127) // 255).astype(np.uint8)


def _mask_array(im: Image.Image) -> Tuple[np.ndarray, float]:
    """One-channel array and the value of half range."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.uint8), 0.5
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(im.convert("RGBA"))
        return _over_black(rgba[:, :, :3].max(axis=2), rgba[:, :, 3]), 128
    if mode == "La":  # alpha already applied to the colour
        return np.asarray(im.convert("LA"))[:, :, 0], 128
    if mode == "L":
        return np.asarray(im), 128
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(im).astype(np.int64), 32768
    if mode == "F":
        return np.asarray(im, dtype=np.float64), 0.5
    rgb = np.asarray(im.convert("RGB"))  # RGB, RGBa (premultiplied), CMYK, YCbCr, LAB, HSV ...
    return rgb.max(axis=2), 128


def load_mask(path: Path, image_hw: Optional[Tuple[int, int]] = None, image_path: Optional[Path] = None) -> np.ndarray:
    """Decode a mask into a boolean ``[H, W]`` array, as displayed (see the module rules).

    Args:
        path: the mask file.
        image_hw: displayed ``(height, width)`` of its image: the mask is checked against
            it and resized to it (nearest neighbour) when only the resolution differs.
        image_path: the image, named in errors.
    """
    path = Path(path)
    of = f" of image {str(image_path)!r}" if image_path is not None else ""
    im = open_oriented(path, mask_of=image_path, is_mask=True)
    try:
        values, half = _mask_array(im)
    except Exception as err:  # noqa: BLE001
        raise MaskError(f"mask {str(path)!r}{of} (mode {im.mode}) cannot be read as a mask: {type(err).__name__}: {err}.") from None
    finally:
        im.close()
    if values.ndim != 2:
        raise MaskError(f"mask {str(path)!r}{of} is not a 2-D image (shape {values.shape}).")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise MaskError(f"mask {str(path)!r}{of} holds NaN or infinite values. Save masks as 0 / 255 images.")
    maximum = float(values.max()) if values.size else 0.0
    if maximum <= 1 and half > 1:
        mask = values > 0  # label-map masks: {0, 1}
    else:
        mask = values >= half
        if maximum > 0 and not mask.any():
            raise MaskError(
                f"mask {str(path)!r}{of} has positive values up to {maximum:g} but none reaches half range "
                f"({half:g}): it is ambiguous. Save masks as 0 for normal and the maximum value (255 for "
                "8-bit) for anomalous pixels."
            )
        if maximum > 0:
            intermediate = float(((values > 0) & (values < maximum)).mean())
            if intermediate > _MAX_INTERMEDIATE_SHARE:
                raise MaskError(
                    f"mask {str(path)!r}{of}: {intermediate:.0%} of its pixels are neither 0 nor its maximum "
                    f"{maximum:g}: it does not look like a mask (a photograph?). Masks are 0 for normal and the "
                    "maximum value for anomalous pixels (soft edges are allowed)."
                )
    if image_hw is not None and tuple(mask.shape) != tuple(image_hw):
        mh, mw = mask.shape
        ih, iw = image_hw
        if abs((mw / mh) / (iw / ih) - 1.0) > 0.01:
            raise MaskError(
                f"mask {str(path)!r} is {mw}x{mh} pixels but its image {_q(image_path)} is {iw}x{ih}: the "
                "aspect ratios differ, so the mask cannot be aligned. Provide a mask of the image's size."
            )
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((iw, ih), Image.Resampling.NEAREST)
        mask = np.asarray(resized) > 127
    return mask


def mask_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a mask (``None`` when it can): a mask is one channel, or grey
    (equal colour channels), and is accepted by :func:`load_mask` (few values: not a photo).

    Used to tell a mask from a picture when only a naming convention says which it is.
    A file that does not decode raises :class:`~lightning_ad.errors.ImageDecodeError`.
    """
    path = Path(path)
    with open_oriented(path, is_mask=True) as im:
        mode = im.mode
        flat = im.convert("RGBA" if "transparency" in im.info else "RGB") if mode == "P" else im
        if flat.mode not in ("1", "L", "LA", "La", "I", "F") and not flat.mode.startswith("I;16"):
            rgb = np.asarray(flat.convert("RGB"))
            if not ((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all()):
                return f"is a colour picture (mode {mode}), not a mask (masks are one channel or grey)"
    try:
        load_mask(path)
    except MaskError as err:
        return f"is not accepted as a mask ({err})"
    return None
