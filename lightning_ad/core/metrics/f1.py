"""Precision, recall and F1 at a threshold, and the threshold of the best F1, on raw anomaly scores."""

from __future__ import annotations

import math
from typing import Any, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .inputs import _prepare_binary, _sorted_counts

__all__ = ['precision_recall_f1', 'f1_optimal_threshold']


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def precision_recall_f1(scores: Any, target: Any, threshold: Union[float, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """Precision, recall and F1 of the prediction ``scores >= threshold``.

    Undefined ratios are reported as ``0`` instead of NaN: precision is 0 when
    nothing is predicted anomalous, recall is 0 when ``target`` has no anomalous
    sample, and F1 ``= 2 TP / (2 TP + FP + FN)`` is 0 when ``TP == 0``.

    Args:
        scores: real tensor of any shape (flattened), finite.
        target: same shape, ``bool`` or values in ``{0, 1}`` (1 = anomalous).
        threshold: number or 0-dim tensor (``±inf`` allowed, NaN is not).

    Returns:
        ``(precision, recall, f1)``, ``float64`` scalar tensors in ``[0, 1]``.

    Example:
        >>> import torch
        >>> scores = torch.tensor([10.0, 250.0, 40.0, 900.0, 300.0])
        >>> target = torch.tensor([0, 1, 0, 1, 0])
        >>> p, r, f1 = precision_recall_f1(scores, target, threshold=250.0)
        >>> round(p.item(), 4), round(r.item(), 4), round(f1.item(), 4)
        (0.6667, 1.0, 0.8)
    """
    scores, target = _prepare_binary(scores, target)
    threshold = torch.as_tensor(threshold)
    if threshold.numel() != 1 or threshold.is_complex() or threshold.dtype == torch.bool:
        raise ValueError(f"`threshold` must be a real scalar, got {threshold!r}")
    thr = float(threshold.reshape(()).item())
    if math.isnan(thr):
        raise ValueError("`threshold` must not be NaN")
    # compare in float64 so that e.g. a float64 threshold is not rounded to float32
    pred = scores.to(torch.float64) >= thr
    tp = (pred & target).sum().to(torch.float64)
    n_pred = pred.sum().to(torch.float64)
    n_pos = target.sum().to(torch.float64)
    precision = _safe_div(tp, n_pred)
    recall = _safe_div(tp, n_pos)
    f1 = _safe_div(2 * tp, n_pred + n_pos)
    return precision, recall, f1


def f1_optimal_threshold(scores: Any, target: Any) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Threshold maximising F1, exact over every distinct score.

    Every distinct score value ``t`` is tried as a threshold (prediction
    ``scores >= t``); F1 ``= 2 TP / (2 TP + FP + FN)``.  Among equally good
    thresholds the largest one is returned.  Needs at least one anomalous sample
    (F1 is 0 for every threshold otherwise); normal samples may be absent.

    Args:
        scores: real tensor of any shape (flattened), finite.
        target: same shape, ``bool`` or values in ``{0, 1}`` (1 = anomalous).

    Returns:
        ``(threshold, f1, precision, recall)``, ``float64`` scalar tensors;
        ``threshold`` is one of the score values (exactly representable in the
        scores' dtype).

    Example:
        >>> import torch
        >>> scores = torch.tensor([10.0, 250.0, 40.0, 900.0, 300.0])
        >>> target = torch.tensor([0, 1, 0, 1, 0])
        >>> thr, f1, p, r = f1_optimal_threshold(scores, target)
        >>> thr.item(), round(f1.item(), 4), round(p.item(), 4), r.item()
        (250.0, 0.8, 0.6667, 1.0)
    """
    scores, target = _prepare_binary(scores, target)
    n_pos = int(target.sum())
    if n_pos == 0:
        raise ValueError(
            "`target` contains no positive (anomalous, 1) sample: the F1-optimal threshold is undefined "
            "when only the negative class is present"
        )
    thresholds, tps, fps = _sorted_counts(scores, target)
    n_pred = tps + fps
    f1 = 2.0 * tps / (n_pred + n_pos)
    best = int(np.argmax(f1))  # first maximum = largest threshold
    out = (float(thresholds[best]), float(f1[best]), tps[best] / n_pred[best], tps[best] / n_pos)
    return tuple(torch.tensor(v, dtype=torch.float64, device=scores.device) for v in out)  # type: ignore[return-value]
