"""Compatibility imports of the image and mask functions, which live in one module per job.

:mod:`lightning_ad.data.folders` (which files are images), :mod:`lightning_ad.data.images`
(decoding to RGB) and :mod:`lightning_ad.data.masks` (decoding masks). Import from those;
this module remains only for ``inference/detector.py``, ``serve/payload.py`` and
``lightning/callbacks.py`` until they do, and then goes.
"""

from __future__ import annotations

from .folders import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, is_image_file, list_images, safe_relpath
from .images import (
    IMAGE_FORMATS,
    array_to_rgb,
    check_image,
    decode_image_bytes,
    image_size,
    load_image,
    pil_array,
    pil_to_rgb,
)
from .masks import load_mask, mask_problem

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNSUPPORTED_IMAGE_EXTENSIONS",
    "list_images",
    "is_image_file",
    "check_image",
    "image_size",
    "load_image",
    "decode_image_bytes",
    "pil_to_rgb",
    "pil_array",
    "array_to_rgb",
    "IMAGE_FORMATS",
    "load_mask",
    "mask_problem",
    "safe_relpath",
]
