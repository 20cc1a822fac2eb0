"""Decision thresholds on raw scores, and scores normalised around them.

* :func:`quantile_threshold`: the threshold at a quantile of scores of normal
  images (leave-one-out scores of the training images: no anomaly needed).
* :func:`quantile_thresholds`: both thresholds from leave-one-out image scores and
  maps of normal images.
* :func:`f1_thresholds`: both thresholds at the F1-optimal points of a labelled
  (validation) set.
* :func:`normalize_scores`: a strictly increasing map of raw distances (>= 0) into
  [0, 1) that sends the threshold to 0.5, so rankings (and AUROC) are unchanged.

Thresholds are raw feature distances; NaN stands for "unknown".
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import checks
from .metrics import f1_optimal_threshold

__all__ = ["Thresholds", "check_threshold_settings", "calibration_overlap", "quantile_threshold", "quantile_thresholds", "f1_thresholds", "normalize_scores",
           "decide"]


class Thresholds(NamedTuple):
    """``image`` and ``pixel`` thresholds (raw feature distances; NaN: unknown)."""

    image: float = math.nan
    pixel: float = math.nan


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


def quantile_thresholds(
    image_scores: Tensor, maps: Tensor, image_quantile: float, pixel_quantile: float
) -> Thresholds:
    """Thresholds at quantiles of normal images' scores ``[N]`` and maps ``[M, H, W]`` (M may be < N).

    Example:
        >>> quantile_thresholds(torch.tensor([1.0, 2.0, 3.0]), torch.arange(8.0).reshape(2, 2, 2), 0.5, 1.0)
        Thresholds(image=2.0, pixel=7.0)
    """
    return Thresholds(quantile_threshold(image_scores, image_quantile), quantile_threshold(maps, pixel_quantile))


def f1_thresholds(
    scores: Tensor, labels: Tensor, maps: Tensor, masks: Tensor, has_mask: Tensor
) -> Tuple[Thresholds, List[str]]:
    """Thresholds at the F1-optimal points of a labelled set, and a line per level saying what was done.

    Args:
        scores: ``[N]`` raw image scores; ``labels``: ``[N]`` 1 anomalous, 0 normal.
        maps: ``[N, H, W]`` raw maps; ``masks``: ``[N, H, W]`` ground truth;
            ``has_mask``: ``[N]`` whether each mask is an annotation.

    A level whose threshold cannot be set (one class only, no masks) is NaN.

    Example:
        >>> maps = torch.zeros(2, 2, 2); maps[1, 0, 0] = 5.0
        >>> masks = (maps > 0).to(torch.uint8)
        >>> f1_thresholds(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]), maps, masks, torch.tensor([True, True]))[0]
        Thresholds(image=3.0, pixel=5.0)
    """
    notes: List[str] = []
    image: Optional[float] = None
    pixel: Optional[float] = None
    anomalous = labels == 1
    if anomalous.any() and (labels == 0).any():
        threshold, f1, _, _ = f1_optimal_threshold(scores, labels)
        image = float(threshold)
        notes.append(f"image threshold at the F1-optimal point of the validation set: {image:.6g} (F1 {float(f1):.4f})")
    else:
        notes.append("threshold_method='f1' needs normal and anomalous validation images: image threshold not set.")
    if anomalous.any() and bool(has_mask[anomalous].all()) and bool(masks.any()):
        threshold, f1, _, _ = f1_optimal_threshold(maps, masks)
        pixel = float(threshold)
        notes.append(f"pixel threshold at the F1-optimal point of the validation set: {pixel:.6g} (F1 {float(f1):.4f})")
    else:
        notes.append("threshold_method='f1' needs validation masks: pixel threshold not set.")
    return Thresholds(math.nan if image is None else image, math.nan if pixel is None else pixel), notes


def decide(values: Tensor, threshold: float) -> Tensor:
    """The decision rule: ``values >= threshold`` in float64 (bool, same shape); all False where the
    threshold is unknown (NaN), and False at NaN values (pixels outside the inspected crop).

    Example:
        >>> decide(torch.tensor([1.0, 2.0, float("nan")]), 2.0), decide(torch.tensor([5.0]), float("nan"))
        (tensor([False,  True, False]), tensor([False]))
    """
    if not math.isfinite(threshold):
        return torch.zeros_like(values, dtype=torch.bool)
    return values.double() >= threshold


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


def calibration_overlap(source: Dict[str, Any], paths: Iterable[str]) -> Optional[str]:
    """A warning when test images ``paths`` include the images that set F1 thresholds (``source``
    is a checkpoint's threshold record, with ``calibration_paths``); None when they do not.

    >>> calibration_overlap({"calibration_paths": ["a.png", "b.png"]}, ["a.png", "c.png"])[:33]
    '1 of the 2 test images set this c'
    """
    calibrated = set(source.get("calibration_paths") or ())
    paths = list(paths)
    reused = sum(path in calibrated for path in paths)
    if not reused:
        return None
    return (f"{reused} of the {len(paths)} test images set this checkpoint's F1 thresholds (its validation split): "
            "the test F1 is optimistic. Test with the same --data.val_split to hold them out.")


def check_threshold_settings(method: Any, image_quantile: Any, pixel_quantile: Any, samples: Any, image_threshold: Any,
                       pixel_threshold: Any, pro_max_fpr: Any, image_samples: Any = None) -> None:
    """The threshold and evaluation settings of :class:`~lightning_ad.lightning.module.Spade`
    (``samples``: threshold_samples, ``image_samples``: image_threshold_samples)."""
    checks.one_of("threshold_method", method, ("quantile", "f1"))
    checks.fraction("image_quantile", image_quantile)
    checks.fraction("pixel_quantile", pixel_quantile)
    checks.positive_int("threshold_samples", samples, optional=True)
    checks.positive_int("image_threshold_samples", image_samples, optional=True)
    checks.positive_number("image_threshold", image_threshold, optional=True, unit="a raw score")
    checks.positive_number("pixel_threshold", pixel_threshold, optional=True, unit="a raw map value")
    checks.fraction("pro_max_fpr", pro_max_fpr)
