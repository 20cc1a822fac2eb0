"""Exact ROC curve and AUROC of raw anomaly scores (every distinct score a threshold)."""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np
import torch
from torch import Tensor

from .inputs import _check_both_classes, _prepare_binary, _sorted_counts

__all__ = ['binary_roc', 'binary_auroc']


def binary_roc(scores: Any, target: Any) -> Tuple[Tensor, Tensor, Tensor]:
    """Exact ROC curve of raw anomaly scores.

    Args:
        scores: real tensor of any shape (flattened), finite; higher = more anomalous.
        target: same shape, ``bool`` or values in ``{0, 1}`` (1 = anomalous).

    Returns:
        ``(fpr, tpr, thresholds)``, three ``float64`` tensors of length ``K + 1``
        where ``K`` is the number of distinct scores.  ``thresholds`` is strictly
        decreasing: ``thresholds[0] = +inf`` (nothing predicted anomalous, the
        point ``(0, 0)``, as in scikit-learn >= 1.3) followed by every distinct
        score; ``fpr[k]``/``tpr[k]`` are the rates for ``score >= thresholds[k]``.
        The last point is ``(1, 1)``.

    Raises:
        ValueError: on bad shapes/values, or if a class is missing.

    Example:
        >>> import torch
        >>> scores = torch.tensor([0.5, 4000.0, 35.0, 4000.0])
        >>> target = torch.tensor([0, 1, 0, 1])
        >>> fpr, tpr, thr = binary_roc(scores, target)
        >>> fpr.tolist(), tpr.tolist(), thr.tolist()
        ([0.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0], [inf, 4000.0, 35.0, 0.5])
    """
    scores, target = _prepare_binary(scores, target)
    n_pos = int(target.sum())
    _check_both_classes(n_pos, target.numel() - n_pos, "the ROC curve")
    thresholds, tps, fps = _sorted_counts(scores, target)
    fpr = np.concatenate([[0.0], fps / float(target.numel() - n_pos)])
    tpr = np.concatenate([[0.0], tps / float(n_pos)])
    thresholds = np.concatenate([[math.inf], thresholds.astype(np.float64)])
    return tuple(torch.from_numpy(a).to(scores.device) for a in (fpr, tpr, thresholds))  # type: ignore[return-value]


def binary_auroc(scores: Any, target: Any) -> Tensor:
    """Exact area under the ROC curve of raw anomaly scores.

    Equals the probability that a random anomalous sample scores higher than a
    random normal one, ties counting one half (identical to the trapezoidal area
    under :func:`binary_roc`).  Computed with integer counts, so the only
    rounding is the final division.

    Args:
        scores: real tensor of any shape (flattened), finite, any magnitude.
        target: same shape, ``bool`` or values in ``{0, 1}`` (1 = anomalous).

    Returns:
        ``float64`` scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: on bad shapes/values, or if a class is missing.

    Example:
        >>> import torch
        >>> scores = torch.tensor([1200.0, 4800.0, 3500.0, 4800.0])
        >>> target = torch.tensor([0, 0, 1, 1])
        >>> binary_auroc(scores, target)
        tensor(0.6250, dtype=torch.float64)
    """
    scores, target = _prepare_binary(scores, target)
    n_pos = int(target.sum())
    n_neg = target.numel() - n_pos
    _check_both_classes(n_pos, n_neg, "AUROC")
    _, tps, fps = _sorted_counts(scores, target)
    tps = np.concatenate([np.zeros(1, dtype=np.int64), tps])
    fps = np.concatenate([np.zeros(1, dtype=np.int64), fps])
    # twice the trapezoid area in units of (1 negative) x (1 positive): exact in int64
    twice_area = int(np.sum(np.diff(fps) * (tps[1:] + tps[:-1])))
    return torch.tensor(twice_area / (2.0 * n_pos * n_neg), dtype=torch.float64, device=scores.device)
