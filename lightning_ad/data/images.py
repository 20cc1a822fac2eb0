"""Decoding image files, encoded bytes, PIL images and arrays into 8-bit RGB ``[H, W, 3]``.

Images
======

* A file with an image extension that fails to decode (zero bytes, truncated,
  corrupt, not an image at all) raises :class:`~lightning_ad.errors.ImageDecodeError`
  naming it. The datamodules check every image in ``setup``, before any
  feature is extracted (:func:`check_image`): PNGs by the CRC of every chunk, JPEGs by
  decoding all their data at 1/8 scale, other types by a full decode (with the data
  option ``skip_broken=true`` every image is fully decoded, and broken ones
  are skipped and counted in a warning instead).
* The picture is taken as displayed: an EXIF orientation tag (cameras,
  phones) is applied, to images and masks alike.
* Every mode becomes 8-bit RGB ``[H, W, 3]`` by the rule of its pixel array
  (``np.asarray`` of the PIL image, the rule of numpy arrays given to the
  ``Detector``), so a file, its PIL image and its array score alike: ``1`` is
  0 / 255; ``L``, ``RGB`` as they are; ``P`` through its palette; ``CMYK``,
  ``YCbCr``, ``LAB`` ... through PIL; modes with alpha (``LA``, ``PA``,
  ``RGBA``, ``P`` with transparency) drop the alpha channel (the colour of
  transparent pixels is kept); 16-bit grayscale (``I;16*``) is scaled by
  255/65535 and rounded (65535 -> 255, 32768 -> 128, ``257 * v`` -> ``v``),
  never clipped; ``F`` (float) must hold finite values in [0, 1] (scaled by
  255 and rounded); ``I`` (32-bit integers) is 16-bit data when the file is
  16-bit (PNG, PGM/PPM, TIFF of 16 bits per sample: Pillow opens some of these
  as ``I``) and refused otherwise. Float values outside [0, 1] (0..255 floats
  included), 32-bit integer files, values outside 0..65535 and modes PIL cannot
  convert are refused (``ImageDecodeError`` naming the file, the mode and the
  rule): their brightness scale is unknown.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Optional, Tuple, Type

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, ImageDecodeError

__all__ = [
    "IMAGE_FORMATS",
    "check_image",
    "image_size",
    "load_image",
    "decode_image_bytes",
    "pil_to_rgb",
    "pil_array",
    "array_to_rgb",
    "open_oriented",
]

#: PIL decoders for image bytes (the formats of ``IMAGE_EXTENSIONS``; PPM reads PGM and PBM too).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM")

# EXIF orientation -> the transpose that shows the picture as displayed (as PIL's ImageOps.exif_transpose).
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode_message(path: Path, err: BaseException, mask_of: Optional[Path] = None, is_mask: bool = False) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    detail = "the file is empty (0 bytes)" if size == 0 else f"{type(err).__name__}: {err}"
    if is_mask or mask_of is not None:
        of = f" of image {str(mask_of)!r}" if mask_of is not None else ""
        return f"cannot decode mask {str(path)!r}{of}: {detail}. Replace the mask file."
    return (
        f"cannot decode image {str(path)!r}: {detail}. Replace or remove the file "
        "(or set the data option skip_broken=true to skip broken images with a warning)."
    )


def _open(path: Path, mask_of: Optional[Path] = None, is_mask: bool = False) -> Image.Image:
    is_mask = is_mask or mask_of is not None
    what = "mask" if is_mask else "image"
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{what} {str(path)!r} does not exist." + (f" (mask of image {str(mask_of)!r})" if mask_of else "")) from None
    except (IsADirectoryError, PermissionError) as err:
        raise DataError(f"{what} {str(path)!r} cannot be opened ({type(err).__name__}: {err}).") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault
        raise ImageDecodeError(_decode_message(path, err, mask_of, is_mask)) from None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1 when absent or unreadable), read from the header before any decoding."""
    try:
        if im.format == "PNG":  # PIL's PNG getexif() decodes the whole image: use what the header gave
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        value = int(exif.get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block does not make the picture unusable
        return 1
    return value if value in _TRANSPOSE else 1


def _oriented_hw(size: Tuple[int, int], orientation: int) -> Tuple[int, int]:
    width, height = size
    return (int(width), int(height)) if orientation in (5, 6, 7, 8) else (int(height), int(width))


def open_oriented(path: Path, mask_of: Optional[Path] = None, is_mask: bool = False) -> Image.Image:
    """Open, fully decode and orient ``path`` as displayed (EXIF orientation applied); errors name it.

    ``mask_of``: when ``path`` is the mask of that image; ``is_mask``: ``path`` is a mask (both
    named in errors). The caller closes the image.
    """
    im = _open(path, mask_of, is_mask)
    try:
        orientation = _orientation(im)
        if im.size[0] < 1 or im.size[1] < 1:
            raise ValueError(f"the image has no pixels ({im.size[0]}x{im.size[1]})")
        im.load()
        if orientation != 1:
            rotated = im.transpose(_TRANSPOSE[orientation])
            im.close()
            im = rotated
    except DataError:
        im.close()
        raise
    except Exception as err:  # noqa: BLE001
        im.close()
        raise ImageDecodeError(_decode_message(path, err, mask_of, is_mask)) from None
    return im


def check_image(path: Path, *, full: bool = False) -> Tuple[int, int]:
    """Check that ``path`` is a readable image and return its displayed ``(height, width)``.

    PNG: the structure and the CRC of every chunk (a file that fails this but still
    decodes is accepted); JPEG: all of its data decoded at 1/8 scale (catches truncated
    files); other types, or ``full=True``: a full decode and conversion (:func:`load_image`).
    """
    path = Path(path)
    if full:
        array = load_image(path)
        return int(array.shape[0]), int(array.shape[1])
    im = _open(path)
    try:
        orientation = _orientation(im)
        size, fmt = im.size, im.format
        if size[0] < 1 or size[1] < 1:
            raise ImageDecodeError(f"image {str(path)!r} has no pixels ({size[0]}x{size[1]}). Replace or remove it.")
        if fmt == "PNG":
            try:
                im.verify()
            except Exception:  # noqa: BLE001 - confirm by decoding (raises with the decoder's reason)
                array = load_image(path)
                return int(array.shape[0]), int(array.shape[1])
        elif fmt in ("JPEG", "MPO"):
            try:
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
            except Exception as err:  # noqa: BLE001
                raise ImageDecodeError(_decode_message(path, err)) from None
        else:
            array = load_image(path)
            return int(array.shape[0]), int(array.shape[1])
    finally:
        im.close()
    return _oriented_hw(size, orientation)


def image_size(path: Path, mask_of: Optional[Path] = None) -> Tuple[int, int]:
    """Displayed ``(height, width)`` from the header only (EXIF orientation applied).

    ``mask_of``: when ``path`` is the mask of that image (named in errors).
    """
    with _open(Path(path), mask_of) as im:
        return _oriented_hw(im.size, _orientation(im))


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    return np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def array_to_rgb(array: np.ndarray, what: str, *, error: Type[DataError] = DataError, rule: str = "") -> np.ndarray:
    """The array rule: ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` -> ``[H, W, 3]`` uint8 RGB.

    ``uint8`` as is; ``bool`` as 0 / 255 (PIL's mode ``1``); ``uint16`` scaled by 255/65535
    and rounded; float with finite values in [0, 1] as ``round(255 x)``. Other dtypes, float
    values outside [0, 1] or not finite, and other shapes raise ``error`` (a
    :class:`~lightning_ad.errors.DataError`) whose message starts with ``what`` and ends
    with ``rule`` (where the array came from, e.g. a PIL image's mode).
    """
    tail = f" {rule}" if rule else ""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        extra = (" Arrays carry no colour mode: drop the alpha channel yourself (array[..., :3]) or convert "
                 "to RGB." if array.ndim == 3 and array.shape[2] == 4 else "")
        raise error(f"{what}: an image array must be [H, W, 3] (RGB), [H, W, 1] or [H, W] (grey); this one is "
                    f"{list(array.shape)}.{extra}{tail}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise error(f"{what}: the image has no pixels.{tail}")
    if array.dtype.kind == "u" and array.dtype.itemsize == 2 and not array.dtype.isnative:
        array = array.astype(np.uint16)  # big-endian 16-bit data (PIL mode I;16B)
    if array.dtype == np.uint8:
        rgb = array
    elif array.dtype == np.bool_:
        rgb = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype == np.uint16:
        rgb = _sixteen_bit_to_uint8(array)
    elif array.dtype.kind == "f":
        values = array.astype(np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            finite = values[np.isfinite(values)]
            span = f"values {finite.min():.4g} .. {finite.max():.4g}" if finite.size else "no finite value"
            raise error(
                f"{what}: float images must hold finite values in [0, 1] (found {span}"
                f"{', with NaN or infinity' if finite.size < values.size else ''}): other ranges have no known "
                f"brightness scale. Divide 0..255 data by 255 (0..65535 data by 65535), or pass uint8 / uint16 "
                f"data.{tail}"
            )
        rgb = np.rint(values * 255.0).astype(np.uint8)
    else:
        raise error(
            f"{what}: arrays of dtype {array.dtype} have no known brightness scale: pass uint8 (0..255), "
            f"uint16 (0..65535), float in [0, 1] or bool.{tail}"
        )
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    rgb = np.ascontiguousarray(rgb)
    return rgb if rgb.flags.writeable else rgb.copy()  # torch.from_numpy warns on read-only arrays


def _sixteen_bit_file(im: Image.Image) -> bool:
    """Whether a mode ``I`` image was decoded from 16-bit samples: a PNG or PGM/PPM (no 32-bit samples;
    Pillow opens some 16-bit ones as ``I``) or a TIFF of 16 bits per sample."""
    if im.format in ("PNG", "PPM"):
        return True
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return bool(bits) and all(b == 16 for b in bits)
    return False


def pil_array(im: Image.Image, what: str, *, error: Type[DataError] = DataError) -> np.ndarray:
    """The numpy array whose rule (:func:`array_to_rgb`) a loaded PIL image follows.

    ``np.asarray(im)`` itself for ``1``, ``L``, ``RGB``, ``I;16*`` and ``F``; what only the mode
    says is applied first: the alpha channel dropped (``LA``, ``La``, ``PA``, ``RGBA``), the
    palette looked up (``P``), other colour spaces converted to RGB by PIL (``CMYK``, ``YCbCr``
    ...). ``I`` (32-bit integers) is 16-bit data when decoded from a 16-bit file (PNG, PGM/PPM,
    16-bit TIFF; values outside 0..65535 are refused), else it stays int32, which the array
    rule refuses.
    """
    mode = im.mode
    if mode in ("1", "L", "RGB", "F") or mode.startswith("I;16"):
        return np.asarray(im)
    if mode in ("LA", "RGBA"):
        return np.asarray(im)[:, :, :-1]
    if mode == "La":
        return np.asarray(im.convert("LA"))[:, :, 0]
    if mode == "PA" or (mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))[:, :, :3]
    if mode == "I":
        values = np.asarray(im)
        if not _sixteen_bit_file(im):
            return values
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise error(f"{what}: a 16-bit {im.format} file holds values from {values.min()} to {values.max()}, "
                        "outside 0..65535: its brightness scale is unknown. Save it as an 8- or 16-bit image.")
        return values.astype(np.uint16)
    return np.asarray(im.convert("RGB"))


def _pil_rule(im: Image.Image, array: np.ndarray) -> str:
    """The end of a refusal message: the array the image's mode gave, and the rule it follows."""
    extra = ""
    if im.mode == "I":
        extra = (" Mode I (32-bit integers) is 16-bit data only when decoded from a 16-bit file (PNG, PGM/PPM, "
                 "16-bit TIFF); convert 8-bit data with image.convert('L'), 16-bit data with "
                 "np.asarray(image).astype(np.uint16).")
    return (f"(An image of mode {im.mode} is read by the rule of its pixel array np.asarray(image), here "
            f"{array.dtype} {list(array.shape)}, as the same array would be.){extra}")


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """``rgb`` ``[H, W, 3]`` as displayed under EXIF ``orientation`` (the transposes of :data:`_TRANSPOSE`)."""
    out = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }[orientation](rgb)
    return np.ascontiguousarray(out)


def _decoded_rgb(im: Image.Image, what: str, error: Type[DataError], failure: Callable[[BaseException], str]) -> np.ndarray:
    """Orientation (read from the header first), full decode, the array rule, orientation applied.
    A decoder failure raises ``ImageDecodeError(failure(err))``."""
    try:
        orientation = _orientation(im)
        if im.size[0] < 1 or im.size[1] < 1:
            raise ValueError(f"the image has no pixels ({im.size[0]}x{im.size[1]})")
        im.load()
    except Exception as err:  # noqa: BLE001 - any decoder failure is the data's fault
        raise ImageDecodeError(failure(err)) from None
    named = f"{what} (mode {im.mode})"
    try:
        array = pil_array(im, named, error=error)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - broken palettes, modes PIL cannot convert ...
        raise ImageDecodeError(f"cannot convert {named} to RGB: {type(err).__name__}: {err}. Save it as an 8-bit RGB "
                               "or grayscale image.") from None
    return _orient(array_to_rgb(array, named, error=error, rule=_pil_rule(im, array)), orientation)


def pil_to_rgb(im: Image.Image, what: str, *, error: Type[DataError] = DataError) -> np.ndarray:
    """A PIL image -> ``[H, W, 3]`` uint8 RGB as displayed (EXIF orientation applied), by the rule of
    its pixel array (:func:`pil_array`, :func:`array_to_rgb`): refusals are ``error``, naming ``what``,
    the mode and the rule. Truncated data and modes PIL cannot convert raise
    :class:`~lightning_ad.errors.ImageDecodeError`."""
    return _decoded_rgb(im, what, error, lambda err: f"{what} (mode {im.mode}) cannot be decoded: {type(err).__name__}: {err}.")


def load_image(path: Path) -> np.ndarray:
    """Decode ``path`` into an ``[H, W, 3]`` uint8 RGB array, as displayed (see the module rules)."""
    path = Path(path)
    im = _open(path)
    try:
        return _decoded_rgb(im, f"image {str(path)!r}", ImageDecodeError, lambda err: _decode_message(path, err))
    finally:
        im.close()


def decode_image_bytes(data: bytes, what: str) -> np.ndarray:
    """Encoded image bytes (a file's content) -> ``[H, W, 3]`` uint8 RGB as displayed, by the file
    rules; formats: :data:`IMAGE_FORMATS`. Errors are :class:`~lightning_ad.errors.ImageDecodeError`
    starting with ``what``."""
    data = bytes(data)
    if not data:
        raise ImageDecodeError(f"{what}: no bytes (an empty file is not an image).")

    def failure(err: BaseException) -> str:
        detail = "" if isinstance(err, UnidentifiedImageError) else f": {type(err).__name__}: {err}"
        return (f"{what}: cannot decode {len(data)} bytes as an image in a supported format "
                f"({', '.join(IMAGE_FORMATS)}){detail}.")

    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the data's fault
        raise ImageDecodeError(failure(err)) from None
    try:
        return _decoded_rgb(im, what, ImageDecodeError, failure)
    finally:
        im.close()

