"""Resize then centre-crop, for images and their masks alike."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["Preprocess", "as_hw"]

Size = Union[int, Sequence[int]]


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
