"""Decision thresholds on raw scores, and scores normalised around them.

* :func:`quantile_threshold`: the threshold at a quantile of scores of normal
  images (leave-one-out scores of the training images: no anomaly needed).
* :func:`normalize_scores`: a strictly increasing map of raw distances (>= 0) into
  [0, 1) that sends the threshold to 0.5, so rankings (and AUROC) are unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["quantile_threshold", "normalize_scores"]


def quantile_threshold(normal_scores: Tensor, quantile: float) -> float:
    """The ``quantile`` (in (0, 1]) of ``normal_scores`` (any shape), linear interpolation, float64.

    Example:
        >>> quantile_threshold(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.75)
        4.0
    """
    if not (isinstance(quantile, (int, float)) and 0 < quantile <= 1):
        raise ValueError(f"quantile={quantile!r} must lie in (0, 1]")
    values = normal_scores.detach().flatten().double().cpu().numpy()
    if values.size == 0:
        raise ValueError("quantile_threshold needs at least one normal score")
    if not np.isfinite(values).all():
        raise ValueError("normal scores contain NaN or infinite values")
    return float(np.quantile(values, quantile))


def normalize_scores(scores: Tensor, threshold: float) -> Tensor:
    """Map raw scores (>= 0) to [0, 1) with ``threshold`` at 0.5, strictly increasing.

    ``s / (2 t)`` below the threshold ``t``, ``1 - t / (2 s)`` above it (computed in
    float64, so distinct float32 scores stay distinct up to ``s / t`` of about 1e8).
    NaN where the threshold is unknown (NaN) or not positive.

    Example:
        >>> normalize_scores(torch.tensor([0.0, 1.0, 2.0, 4.0]), 2.0)
        tensor([0.0000, 0.2500, 0.5000, 0.7500], dtype=torch.float64)
    """
    raw = scores.double()
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        return torch.full_like(raw, float("nan"))
    raw = raw.clamp_min(0.0)
    below = raw / (2.0 * threshold)
    above = 1.0 - threshold / (2.0 * torch.where(raw > 0, raw, torch.ones_like(raw)))
    return torch.where(raw <= threshold, below, above)
