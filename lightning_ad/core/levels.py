"""How the pyramid's levels become one map: local aggregation of the features, the distance a position
scores, and the balance of the levels in the mean.

* **Local aggregation** (``aggregate_levels``): each feature of the chosen levels is replaced by the mean
  of its 3x3 neighbourhood (positions outside the image left out of the mean), in the bank and in every
  query alike: PatchCore's local aggregation, a position then describes a slightly larger patch.
* **Pixel distance** (``pixel_distance``): a position scores the mean over its kappa nearest gallery
  features of the ``squared`` Euclidean distance (the paper's) or of the ``euclidean`` distance itself.
  The square lets the level with the largest distances (stride 16) dominate the mean of the levels.
* **Level balance** (``level_balance``, ``level_weights``): the combined map is
  ``sum_l f_l * up(map_l)`` with ``f_l = w_l / (sum(w) * s_l)``, where ``w`` are the level weights
  (default equal) and ``s_l`` a scale of level ``l`` learned at fit from leave-one-out maps of training
  images: their ``mean`` or their standard deviation (``std``); ``none`` is ``s_l = 1``.

Example:
    >>> maps = [torch.full((1, 2, 2), 4.0), torch.full((1, 1, 1), 1.0)]
    >>> moments = level_moments(maps)
    >>> scales = balance_scales(moments, "mean")
    >>> scales.tolist(), level_factors(None, scales).tolist()
    ([4.0, 1.0], [0.125, 0.5])
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .filters import gaussian_blur

__all__ = ["combine_levels", "PIXEL_DISTANCES", "LEVEL_BALANCES", "local_mean", "aggregate_pyramid", "position_scores", "level_moments",
           "balance_scales", "level_factors"]

#: Accepted values of ``pixel_distance``.
PIXEL_DISTANCES = ("squared", "euclidean")
#: Accepted values of ``level_balance``.
LEVEL_BALANCES = ("none", "mean", "std")


def local_mean(fmap: Tensor) -> Tensor:
    """``[B, C, H, W]`` the mean of each position's 3x3 neighbourhood within the map (same shape and layout)."""
    return F.avg_pool2d(fmap, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def aggregate_pyramid(pyramid: Sequence[Tensor], aggregated: Sequence[bool]) -> List[Tensor]:
    """The pyramid with :func:`local_mean` applied to the levels flagged in ``aggregated`` (one flag per level)."""
    return [local_mean(fmap) if flag else fmap for fmap, flag in zip(pyramid, aggregated)]


def position_scores(distances: Tensor, pixel_distance: str) -> Tensor:
    """``[..., P]`` scores of positions from squared distances ``[..., P, kappa]`` to their nearest gallery
    features: the mean of the squared distances or of the distances (``pixel_distance``)."""
    if pixel_distance == "euclidean":
        distances = distances.clamp_min(0).sqrt()
    return distances.mean(dim=-1)


def level_moments(level_maps: Sequence[Tensor]) -> Tensor:
    """``[L, 3]`` float64 count, sum and sum of squares of each level's map values (``[B, H_l, W_l]`` each);
    moments of several batches (or processes) add up."""
    rows = []
    for fmap in level_maps:
        values = fmap.double().flatten()
        rows.append(torch.stack([values.new_tensor(float(values.numel())), values.sum(), values.square().sum()]))
    return torch.stack(rows)


def balance_scales(moments: Tensor, balance: str) -> Tensor:
    """``[L]`` float64 scale of each level from :func:`level_moments` (summed over the images seen): their
    mean or standard deviation (``balance``), 1 for ``none`` and where a statistic is not positive."""
    count, total, squares = moments.double().unbind(dim=1)
    if balance == "none":
        return torch.ones_like(count)
    mean = total / count.clamp_min(1)
    scale = mean if balance == "mean" else (squares / count.clamp_min(1) - mean.square()).clamp_min(0).sqrt()
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))


def level_factors(weights: Optional[Sequence[float]], scales: Tensor) -> Tensor:
    """``[L]`` float64 factors of the levels in the combined map: ``w_l / (sum(w) * s_l)`` (``weights`` None:
    equal)."""
    w = torch.ones_like(scales) if weights is None else torch.tensor([float(v) for v in weights], dtype=torch.float64)
    return w / (w.sum() * scales.double())


def combine_levels(level_maps: Sequence[Tensor], size: Tuple[int, int], sigma: float,
                   factors: Optional[Sequence[float]] = None) -> Tensor:
    """The anomaly map from per-level maps ``[B, H_l, W_l]``: each upsampled to ``size`` (bilinear), their mean
    (or their sum weighted by ``factors``, one per level: :func:`~lightning_ad.core.levels.level_factors`),
    smoothed by a Gaussian of ``sigma`` pixels (none for 0): ``[B, H, W]``. Eager scoring and the exported graph
    both call it."""
    up = [F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False) for m in level_maps]
    if factors is None:
        combined = torch.stack(up).mean(dim=0).squeeze(1)
    else:
        combined = sum(float(f) * m for f, m in zip(factors, up)).squeeze(1)
    return gaussian_blur(combined, sigma) if sigma > 0 else combined
