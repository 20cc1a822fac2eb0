"""Images as callers give them (paths, bytes, arrays, PIL images, tensors) -> 8-bit RGB ``[H0, W0, 3]`` arrays.

What the :class:`~lightning_ad.inference.detector.Detector` takes, and what the server decodes a request
with (:mod:`lightning_ad.serve.payload`); the decoding itself is :mod:`lightning_ad.data.images`'.

Inputs (a single item or a list; sizes may differ)
    * a path (``str`` / ``Path``): decoded by :func:`lightning_ad.data.images.load_image`, with its
      rules (EXIF orientation, the modes' rules below, grey -> RGB, alpha dropped) and its errors
      (:class:`~lightning_ad.errors.ImageDecodeError` naming the file);
    * encoded image bytes (``bytes``, ``bytearray``, ``memoryview``: a file's content, PNG, JPEG,
      BMP, TIFF, WebP or PNM): decoded by the same rules as a file
      (:func:`lightning_ad.data.images.decode_image_bytes`), so they score exactly as the file;
    * a numpy array ``[H, W, 3]``, ``[H, W, 1]`` or ``[H, W]`` (the array rule): ``uint8`` as is,
      ``bool`` as 0 / 255, ``uint16`` scaled by 255/65535 and rounded (as 16-bit files), float in
      [0, 1] quantised to 8 bits (``round(255 x)``); other integer types, float values outside
      [0, 1] or not finite, and any other shape (4 channels included: an array has no mode that
      says whether it is RGBA, BGRA or CMYK) are refused with a
      :class:`~lightning_ad.errors.DataError` naming the input;
    * a PIL image: oriented by its EXIF tag, then read by the rule of its pixel array
      ``np.asarray(image)``, so it scores exactly as that array or is refused with an error that
      names its mode and this rule. Only what the mode says is applied first: the alpha channel
      dropped (``LA``, ``RGBA``, ``PA``), the palette looked up (``P``), other colour spaces
      converted by PIL (``CMYK``, ``YCbCr`` ...). So ``1`` is 0 / 255, ``L``, ``RGB`` and ``I;16``
      are read as uint8 / uint16 arrays, ``F`` must hold values in [0, 1], and ``I`` (int32) is
      refused (e.g. ``image.convert("I")``), except when it was decoded from a 16-bit file (PNG,
      PGM/PPM, 16-bit TIFF: Pillow opens some as ``I``), which is 16-bit data as the file is;
    * a torch tensor ``[3, H, W]``, ``[1, H, W]`` or ``[H, W]`` (channels first), ``uint8``,
      ``uint16``, ``bool`` or float in [0, 1], converted as the arrays; a 4-D tensor
      ``[B, 3, H, W]`` (or array ``[B, H, W, 3]``) is taken as ``B`` images.

    Anything else (``None``, a number, a dict ...) is refused with a
    :class:`~lightning_ad.errors.DataError` naming its type and what is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import DataError
from .images import array_to_rgb, decode_image_bytes, load_image, pil_to_rgb

__all__ = ["ImageInput", "ACCEPTED", "as_rgb_uint8", "image_list", "read_images"]

#: One image as a caller may give it (see the module rules).
ImageInput = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray, Tensor]

#: What is accepted, for messages.
ACCEPTED = ("a path (str or Path), encoded image bytes (bytes, bytearray or memoryview: a file's content), a PIL "
            "image, a numpy array or a torch tensor")
_ENCODED = (bytes, bytearray, memoryview)


def _describe(item: Any, position: int) -> str:
    if isinstance(item, (np.ndarray, Tensor)):
        return f"input {position} ({type(item).__name__} of shape {tuple(item.shape)}, dtype {item.dtype})"
    if isinstance(item, Image.Image):
        return f"input {position} (PIL image {item.size[0]}x{item.size[1]})"
    if isinstance(item, _ENCODED):
        return f"input {position} ({type(item).__name__}, {memoryview(item).nbytes} bytes)"
    return f"input {position} ({type(item).__name__})"


def as_rgb_uint8(item: ImageInput, position: int = 0) -> np.ndarray:
    """One input (see the module rules) as an ``[H0, W0, 3]`` uint8 RGB array."""
    what = _describe(item, position)
    if isinstance(item, (str, Path)):
        return load_image(Path(item))
    if isinstance(item, _ENCODED):
        return decode_image_bytes(item, what)
    if isinstance(item, Image.Image):
        return pil_to_rgb(item, what)
    if isinstance(item, Tensor):
        tensor = item.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3):
            tensor = tensor.permute(1, 2, 0)
        elif tensor.ndim != 2:
            raise DataError(f"{what}: an image tensor must be [3, H, W], [1, H, W] or [H, W] (channels first).")
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        if tensor.dtype == torch.uint16:
            tensor = tensor.to(torch.int32)
            return array_to_rgb(tensor.numpy().astype(np.uint16), what)
        return array_to_rgb(tensor.numpy(), what)
    if isinstance(item, np.ndarray):
        return array_to_rgb(item, what)
    raise DataError(f"{what}: unsupported image type; pass {ACCEPTED}.")


def image_list(images: Union[ImageInput, Iterable[ImageInput]]) -> List[ImageInput]:
    """One input or several as a list of single images (4-D arrays and tensors split along their first axis)."""
    if isinstance(images, (str, Path, Image.Image) + _ENCODED):
        return [images]
    if isinstance(images, Tensor):
        return list(images.unbind(0)) if images.ndim == 4 else [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (Mapping, set, frozenset)) or not isinstance(images, Iterable):
        raise DataError(f"images of type {type(images).__name__}: unsupported; pass {ACCEPTED}, or a list of them.")
    items: List[ImageInput] = []
    for item in images:
        if isinstance(item, (Tensor, np.ndarray)) and item.ndim == 4:
            items.extend(item.unbind(0) if isinstance(item, Tensor) else list(item))
        else:
            items.append(item)
    return items


def read_images(images: Union[ImageInput, Iterable[ImageInput]]) -> List[Tuple[np.ndarray, Optional[str]]]:
    """Inputs -> ``[(rgb uint8 [H0, W0, 3], path or None)]`` (decoding and checks only), in order."""
    out = []
    for position, item in enumerate(image_list(images)):
        path = str(item) if isinstance(item, (str, Path)) else None
        out.append((as_rgb_uint8(item, position), path))
    return out
