"""Gaussian smoothing of anomaly maps, in torch on the maps' device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_kernel1d", "gaussian_blur"]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (as scipy.ndimage)."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma={sigma!r} must be a positive finite number (pixels)")
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def _symmetric_index(size: int, radius: int, device: torch.device) -> Tensor:
    """Indices that pad ``size`` samples by ``radius`` on each side, mirroring with the edge repeated."""
    idx = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(idx >= size, 2 * size - 1 - idx, idx)


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian filter of ``maps`` ``[B, H, W]`` (sigma in pixels).

    Borders are extended by mirror symmetry with the edge sample repeated, which is
    ``scipy.ndimage.gaussian_filter``'s default ``mode="reflect"``; the result equals
    that function's (float32 rounding aside). ``sigma == 0`` returns the maps unchanged.

    Example:
        >>> m = torch.zeros(1, 9, 9); m[0, 4, 4] = 1.0
        >>> out = gaussian_blur(m, 1.0)
        >>> round(float(out.sum()), 4), round(float(out[0, 4, 4]), 4)
        (1.0, 0.1592)
    """
    if maps.ndim != 3:
        raise ValueError(f"gaussian_blur: expected maps [B, H, W], got {tuple(maps.shape)}")
    if sigma == 0:
        return maps
    kernel = gaussian_kernel1d(sigma, truncate).to(device=maps.device, dtype=maps.dtype)
    radius = (kernel.numel() - 1) // 2
    _, height, width = maps.shape
    x = maps.unsqueeze(1)  # [B, 1, H, W]
    x = x.index_select(3, _symmetric_index(width, radius, maps.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = x.index_select(2, _symmetric_index(height, radius, maps.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)
