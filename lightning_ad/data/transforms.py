"""Resize then centre-crop, for images and their masks alike."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["Preprocess", "as_hw", "aspect_advice", "ASPECT_LIMIT"]

Size = Union[int, Sequence[int]]

#: Largest factor by which the resize may stretch the photos' aspect ratio before fit says what to set.
ASPECT_LIMIT = 1.5


def as_hw(size: Size, name: str) -> Tuple[int, int]:
    """``256`` -> ``(256, 256)``; ``[h, w]`` -> ``(h, w)``; positive integers only."""
    if isinstance(size, bool):
        raise ConfigurationError(f"{name}={size!r} must be a positive integer or [height, width]")
    if isinstance(size, int):
        size = (size, size)
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={size!r} must be a positive integer or [height, width]") from None
    if height < 1 or width < 1 or [height, width] != [s for s in size]:
        raise ConfigurationError(f"{name}={list(size)!r} must be positive integers")
    return height, width


class Preprocess:
    """Resize to ``image_size`` (bilinear with antialiasing; masks: nearest), then centre-crop.

    Args:
        image_size: ``int`` (square) or ``[height, width]`` after resizing.
        crop_size: ``int`` (square), ``[height, width]``, or ``None`` for no crop; at most
            ``image_size``.

    Images come in as ``[H, W, 3]`` uint8 arrays and leave as ``[3, h, w]`` float32 in
    [0, 1]; masks come in as ``[H, W]`` bool and leave as ``[h, w]`` uint8 in {0, 1}.
    """

    def __init__(self, image_size: Size = 256, crop_size: Optional[Size] = 224) -> None:
        self.image_size = as_hw(image_size, "image_size")
        self.crop_size = as_hw(crop_size, "crop_size") if crop_size is not None else self.image_size
        if self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]:
            raise ConfigurationError(
                f"crop_size={list(self.crop_size)} is larger than image_size={list(self.image_size)}; "
                "the crop is taken from the resized image."
            )
        if min(self.crop_size) < 32:
            raise ConfigurationError(f"crop_size={list(self.crop_size)}: at least 32 pixels are needed for the pyramid")

    @property
    def output_size(self) -> Tuple[int, int]:
        return self.crop_size

    def image(self, array: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # [3, H, W] uint8
        tensor = TF.resize(tensor, list(self.image_size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        tensor = TF.center_crop(tensor, list(self.crop_size))
        return tensor.float().div_(255.0)

    def mask(self, mask: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(mask.astype(np.uint8))).unsqueeze(0)  # [1, H, W]
        tensor = TF.resize(tensor, list(self.image_size), interpolation=TF.InterpolationMode.NEAREST_EXACT)
        return TF.center_crop(tensor, list(self.crop_size))[0]

    def __repr__(self) -> str:
        return f"Preprocess(image_size={list(self.image_size)}, crop_size={list(self.crop_size)})"


def aspect_advice(photo_hw: Tuple[int, int], preprocess: Preprocess) -> Optional[str]:
    """A line saying what to set when ``preprocess`` stretches photos of ``(height, width)`` by more than
    :data:`ASPECT_LIMIT` (tall or wide inspection images squashed into a square), else None. The advice keeps
    the photos' aspect ratio: the shorter side at the shorter side of ``image_size``, the longer a multiple of
    32 pixels, and no crop (a crop would cut the ends off).

    >>> print(aspect_advice((1260, 500), Preprocess(256, 224)))  # doctest: +NORMALIZE_WHITESPACE
    the training photos are about 1260 x 500 pixels (height x width, 2.52:1) but image_size [256, 256] stretches
    them 2.5 times and crop_size [224, 224] cuts their ends: to keep their shape, set --data.image_size [640, 256]
    --data.crop_size null
    >>> aspect_advice((512, 512), Preprocess(256, 224)) is None
    True
    """
    height, width = photo_hw
    target_h, target_w = preprocess.image_size
    stretch = (height / width) / (target_h / target_w)
    if max(stretch, 1 / stretch) <= ASPECT_LIMIT:
        return None
    short = min(target_h, target_w)
    if height >= width:
        size = [max(short, int(round(short * height / width / 32)) * 32), short]
    else:
        size = [short, max(short, int(round(short * width / height / 32)) * 32)]
    cropped = preprocess.crop_size != preprocess.image_size
    return (f"the training photos are about {height} x {width} pixels (height x width, {max(height, width) / min(height, width):.2f}:1) "
            f"but image_size {list(preprocess.image_size)} stretches them {max(stretch, 1 / stretch):.1f} times"
            + (f" and crop_size {list(preprocess.crop_size)} cuts their ends" if cropped else "")
            + f": to keep their shape, set --data.image_size [{size[0]}, {size[1]}]" + (" --data.crop_size null" if cropped else ""))
