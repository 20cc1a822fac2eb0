"""What scoring takes: float images ``[B, 3, H, W]`` in [0, 1] (the backbone applies its own normalisation)."""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["check_image_range"]

#: Tolerance on the [0, 1] input range (interpolation may overshoot by rounding).
_RANGE_SLACK = 1e-3


def check_image_range(images: Tensor) -> Tensor:
    """Refuse images that are not float ``[B, 3, H, W]`` in [0, 1] (e.g. 0..255), naming what to pass."""
    if not images.is_floating_point():
        raise ConfigurationError(
            f"images are {images.dtype}: SpadeModel takes float images in [0, 1], [B, 3, H, W]. Convert with "
            "images.float() / 255, or score files and arrays of any type with lightning_ad.Detector."
        )
    if images.numel():
        low, high = float(images.min()), float(images.max())
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ConfigurationError(
                f"image values span [{low:.4g}, {high:.4g}]: SpadeModel takes images in [0, 1] (the backbone "
                "applies its own normalisation). Divide 0..255 images by 255 and do not normalise them yourself."
            )
    return images
