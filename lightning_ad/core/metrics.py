"""Exact anomaly-detection metrics for raw (unbounded) anomaly scores.

Anomaly scores produced by SPADE are feature distances (squared or not): non-negative
numbers of arbitrary magnitude (``0.001`` as well as ``5000``).  The binary
metrics of torchmetrics squash any input outside ``[0, 1]`` with a sigmoid,
which maps all large distances to ``1.0`` and turns them into ties.  The
functions here never transform the scores: only their order matters, every
distinct score is a threshold (no binning), and counts are accumulated in
``int64``/``float64``.  All of them run in ``O(n log n)`` and are fully
vectorised (numpy on the CPU, dominated by one value sort of all scores;
tensors on an accelerator are copied to the host), so tens of millions of
pixels take a few seconds.

Conventions shared by every function:

* ``scores`` is a real tensor (any shape, flattened) of finite values; larger
  means more anomalous.  NaN or infinite scores raise ``ValueError``.
* ``target`` / ``masks`` has the same shape; it is ``bool`` or holds only the
  values ``0`` (normal) and ``1`` (anomalous).
* A pixel/sample is *predicted anomalous at threshold* ``t`` when
  ``score >= t``.
* Results are ``torch.float64`` tensors on the device of ``scores``.

Functional API: :func:`binary_auroc`, :func:`binary_roc`,
:func:`per_region_overlap`, :func:`f1_optimal_threshold`,
:func:`precision_recall_f1`.  Stateful metrics (``torchmetrics.Metric``):
:class:`AUROC`, :class:`PRO`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Tuple, Union

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "AUROC",
    "PRO",
    "binary_auroc",
    "binary_roc",
    "f1_optimal_threshold",
    "per_region_overlap",
    "precision_recall_f1",
]


# --------------------------------------------------------------------------- #
# Input validation helpers
# --------------------------------------------------------------------------- #
def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as err:  # pragma: no cover - depends on the input object
        raise ValueError(f"`{name}` must be a tensor or array-like, got {type(x).__name__}") from err


def _check_scores(scores: Any, name: str = "scores") -> Tensor:
    """Validate real finite scores; return them in a dtype that sorts exactly."""
    scores = _as_tensor(scores, name)
    if scores.dtype == torch.bool or scores.is_complex():
        raise ValueError(f"`{name}` must be a real floating point or integer tensor, got dtype {scores.dtype}")
    if scores.numel() == 0:
        raise ValueError(f"`{name}` is empty: the metric is undefined without samples")
    if scores.is_floating_point():
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()  # exact widening, keeps ties
        if not bool(torch.isfinite(scores).all()):
            n_nan = int(torch.isnan(scores).sum())
            n_inf = int(torch.isinf(scores).sum())
            raise ValueError(
                f"`{name}` must be finite, but contains {n_nan} NaN and {n_inf} infinite value(s)"
            )
    else:
        scores = scores.to(torch.float64)
    return scores


def _check_target(target: Any, name: str = "target") -> Tensor:
    """Validate a binary target (bool, or values in {0, 1}); return it as ``bool``."""
    target = _as_tensor(target, name)
    if target.dtype == torch.bool:
        return target
    if target.is_complex():
        raise ValueError(f"`{name}` must be binary (bool or values in {{0, 1}}), got dtype {target.dtype}")
    is_one = target == 1
    if not bool((is_one | (target == 0)).all()):
        bad = target[~(is_one | (target == 0))]
        raise ValueError(
            f"`{name}` must be binary (bool or values in {{0, 1}}), "
            f"but contains other values, e.g. {bad[:5].tolist()}"
        )
    return is_one


def _check_same_shape(scores: Tensor, target: Tensor, s_name: str = "scores", t_name: str = "target") -> None:
    if scores.shape != target.shape:
        raise ValueError(
            f"`{s_name}` and `{t_name}` must have the same shape, "
            f"got {tuple(scores.shape)} and {tuple(target.shape)}"
        )


def _check_both_classes(n_pos: int, n_neg: int, metric: str) -> None:
    if n_pos == 0:
        raise ValueError(
            f"`target` contains no positive (anomalous, 1) sample: {metric} is undefined "
            "when only the negative class is present"
        )
    if n_neg == 0:
        raise ValueError(
            f"`target` contains no negative (normal, 0) sample: {metric} is undefined "
            "when only the positive class is present"
        )


def _prepare_binary(scores: Any, target: Any) -> Tuple[Tensor, Tensor]:
    scores = _check_scores(scores)
    target = _check_target(target)
    _check_same_shape(scores, target)
    return scores.reshape(-1), target.reshape(-1).to(scores.device)


def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _distinct_sorted(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct values of a 1-D array in ascending order and where each starts.

    Returns ``(distinct, starts)``: ``values.size - starts[k]`` elements are
    ``>= distinct[k]``.  A value-only ``np.sort`` (SIMD accelerated, far faster
    than an argsort).
    """
    v = np.sort(values)
    is_new = np.empty(v.size, dtype=bool)
    is_new[0] = True
    np.not_equal(v[1:], v[:-1], out=is_new[1:])
    starts = np.flatnonzero(is_new)
    return v[starts], starts


def _count_per_value(distinct: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """How many elements of ``subset`` equal each entry of ``distinct`` (``subset`` ⊆ ``distinct``)."""
    # sorting the queries first makes the binary searches cache friendly
    return np.bincount(np.searchsorted(distinct, np.sort(subset)), minlength=distinct.size)


def _sorted_counts(scores: Tensor, target: Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positive counts at every distinct score, descending.

    Returns numpy arrays ``(thresholds, tps, fps)``: ``thresholds[k]`` is the
    ``k``-th largest distinct score, ``tps[k]``/``fps[k]`` (``int64``) count the
    positives/negatives with ``score >= thresholds[k]``.  Cost: one sort of all
    scores plus a sort and search of the smaller class.
    """
    s = _to_numpy(scores)
    t = _to_numpy(target)
    distinct, starts = _distinct_sorted(s)
    n_at_least = s.size - starts[::-1]  # samples with score >= threshold, descending thresholds
    if 2 * int(t.sum()) <= t.size:  # search the smaller class
        tps = np.cumsum(_count_per_value(distinct, s[t])[::-1])
        fps = n_at_least - tps
    else:
        fps = np.cumsum(_count_per_value(distinct, s[~t])[::-1])
        tps = n_at_least - fps
    return distinct[::-1], tps, fps


# --------------------------------------------------------------------------- #
# ROC / AUROC
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Thresholded metrics
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Per-region overlap (PRO)
# --------------------------------------------------------------------------- #
def _check_max_fpr(max_fpr: Any) -> float:
    if isinstance(max_fpr, bool) or not isinstance(max_fpr, numbers.Real):
        raise ValueError(f"`max_fpr` must be a float in (0, 1], got {max_fpr!r}")
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:  # also rejects NaN
        raise ValueError(f"`max_fpr` must be in (0, 1], got {max_fpr}")
    return max_fpr


def _to_nhw(x: Tensor, name: str) -> Tensor:
    """Accept ``[N, H, W]`` or ``[N, 1, H, W]``; return ``[N, H, W]``."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"`{name}` must have shape [N, H, W] or [N, 1, H, W], got {tuple(x.shape)}")
    return x


def _label_regions(masks: np.ndarray) -> Tuple[np.ndarray, int]:
    """8-connected components of each image of a boolean ``[N, H, W]`` stack.

    One ``scipy.ndimage.label`` call on the whole stack; the structuring element
    only connects pixels inside one image, so regions never span images.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 3x3 ones within the image, nothing along N
    labels, n_regions = ndimage.label(masks, structure=structure)
    return labels, int(n_regions)


def per_region_overlap(maps: Any, masks: Any, max_fpr: float = 0.3) -> Tensor:
    """Normalised area under the PRO curve up to ``max_fpr`` (MVTec AD).

    The per-region-overlap score of Bergmann et al. (CVPR 2019 / IJCV 2021).
    Regions are the 8-connected components of each image's ground-truth mask.
    For a threshold ``t``:

    * ``PRO(t)`` = mean over all regions (of all images) of the fraction of the
      region's pixels with ``score >= t``;
    * ``FPR(t)`` = fraction of all normal pixels (``mask == 0``, in all images,
      anomaly-free images included) with ``score >= t``.

    The curve through ``(0, 0)`` and the points of every distinct score is
    integrated with the trapezoid rule from ``FPR = 0`` to ``FPR = max_fpr``
    (linearly interpolated at ``max_fpr``) and divided by ``max_fpr``, so a
    perfect detector scores 1.  Exact: no threshold binning.

    Args:
        maps: anomaly maps ``[N, H, W]`` or ``[N, 1, H, W]``, finite, any magnitude.
        masks: ground truth, same shape, ``bool`` or values in ``{0, 1}``.
        max_fpr: upper integration limit, in ``(0, 1]``.

    Returns:
        ``float64`` scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: on bad shapes/values, ``max_fpr`` outside ``(0, 1]``, no
            anomalous region, or no normal pixel.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[900.0, 5.0, 1.0], [3.0, 2.0, 4.0]]])
        >>> masks = torch.tensor([[[1, 0, 0], [0, 0, 0]]])
        >>> per_region_overlap(maps, masks, max_fpr=0.3)
        tensor(1., dtype=torch.float64)
        >>> maps = torch.tensor([[[1.0, 5.0, 900.0], [3.0, 2.0, 4.0]]])
        >>> per_region_overlap(maps, masks, max_fpr=1.0)
        tensor(0., dtype=torch.float64)
    """
    max_fpr = _check_max_fpr(max_fpr)
    maps = _check_scores(maps, "maps")
    masks = _check_target(masks, "masks")
    _check_same_shape(maps, masks, "maps", "masks")
    maps = _to_nhw(maps, "maps")
    masks = _to_nhw(masks, "masks")

    labels_np, n_regions = _label_regions(masks.cpu().numpy())
    n_normal = int(masks.numel() - masks.sum())
    if n_regions == 0:
        raise ValueError(
            "`masks` contains no anomalous pixel (no positive class / anomalous region): PRO is undefined"
        )
    if n_normal == 0:
        raise ValueError("`masks` contains no normal pixel (no negative class): PRO is undefined (no FPR)")

    flat_maps = _to_numpy(maps).reshape(-1)
    labels = labels_np.reshape(-1)
    # weight of a pixel inside region r: 1 / |r|  (divided by R at the end)
    region_weight = np.zeros(n_regions + 1, dtype=np.float64)
    region_weight[1:] = 1.0 / np.bincount(labels, minlength=n_regions + 1)[1:]

    distinct, starts = _distinct_sorted(flat_maps)
    anomalous = labels > 0
    a_scores = flat_maps[anomalous]
    order = np.argsort(a_scores)  # only the anomalous pixels need their identity
    group = np.searchsorted(distinct, a_scores[order])
    a_weight = region_weight[labels[anomalous][order]]
    del order, anomalous, a_scores
    region_mass = np.bincount(group, weights=a_weight, minlength=distinct.size)[::-1]
    anomalous_at_least = np.cumsum(np.bincount(group, minlength=distinct.size)[::-1])
    del group, a_weight
    # curve points for descending thresholds, starting at (0, 0)
    normal_at_least = flat_maps.size - starts[::-1] - anomalous_at_least
    pro = np.concatenate([[0.0], np.cumsum(region_mass) / n_regions])
    fpr = np.concatenate([[0.0], normal_at_least / float(n_normal)])
    np.minimum(pro, 1.0, out=pro)  # guard against cumulative rounding above 1

    # integrate over fpr in [0, max_fpr], interpolating at max_fpr
    n_in = int(np.searchsorted(fpr, max_fpr, side="right"))
    x, y = fpr[:n_in], pro[:n_in]  # all points with fpr <= max_fpr (n_in >= 1: fpr[0] = 0)
    if x[-1] < max_fpr:  # the final point has fpr == 1 >= max_fpr, so n_in < len(fpr)
        x0, x1, y0, y1 = fpr[n_in - 1], fpr[n_in], pro[n_in - 1], pro[n_in]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        x = np.append(x, max_fpr)
        y = np.append(y, y_end)
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]))) / 2.0
    return torch.tensor(min(max(area / max_fpr, 0.0), 1.0), dtype=torch.float64, device=maps.device)


# --------------------------------------------------------------------------- #
# torchmetrics wrappers
# --------------------------------------------------------------------------- #
class _KeepAllMetric(Metric):
    """Keeps every score and target (``dist_reduce_fx="cat"``); :meth:`compute` applies the exact
    functional form once, over everything seen (subclasses set ``_compute_exact``)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    scores: List[Tensor]
    target: List[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def _compute_exact(self, scores: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> Tensor:
        """The metric over everything seen so far (``float64`` scalar)."""
        if isinstance(self.scores, list) and len(self.scores) == 0:
            raise ValueError(f"{type(self).__name__}.compute() called without data: call update() first")
        return self._compute_exact(dim_zero_cat(self.scores), dim_zero_cat(self.target))


class AUROC(_KeepAllMetric):
    """Exact image- or pixel-level AUROC of raw anomaly scores (see :func:`binary_auroc`).

    All scores and targets are kept (``dist_reduce_fx="cat"``) and the exact
    area is computed once in :meth:`compute`.

    Args:
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = AUROC()
        >>> metric.update(torch.tensor([1200.0, 4800.0]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([3500.0, 4800.0]), torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.6250, dtype=torch.float64)
    """

    def update(self, scores: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add a batch: ``scores`` of any shape (flattened) and ``target`` of the same shape."""
        scores = _check_scores(scores)
        target = _check_target(target)
        _check_same_shape(scores, target)
        self.scores.append(scores.detach().reshape(-1))
        self.target.append(target.reshape(-1).to(scores.device))

    def _compute_exact(self, scores: Tensor, target: Tensor) -> Tensor:
        return binary_auroc(scores, target)


class PRO(_KeepAllMetric):
    """Per-region overlap up to ``max_fpr`` over a stream of maps (see :func:`per_region_overlap`).

    Args:
        max_fpr: upper FPR integration limit, in ``(0, 1]``.
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    ``update`` takes anomaly maps ``[B, H, W]`` or ``[B, 1, H, W]`` and masks of
    the same shape; all batches must share ``H`` and ``W``.

    Example:
        >>> import torch
        >>> metric = PRO(max_fpr=0.3)
        >>> metric.update(torch.tensor([[[900.0, 5.0], [3.0, 2.0]]]), torch.tensor([[[1, 0], [0, 0]]]))
        >>> metric.update(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.zeros(1, 2, 2))
        >>> metric.compute()
        tensor(1., dtype=torch.float64)
    """

    def __init__(self, max_fpr: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_fpr = _check_max_fpr(max_fpr)

    def update(self, maps: Tensor, masks: Tensor) -> None:  # type: ignore[override]
        """Add a batch of anomaly maps ``[B, H, W]``/``[B, 1, H, W]`` and masks (same shape)."""
        maps = _check_scores(maps, "maps")
        masks = _check_target(masks, "masks")
        _check_same_shape(maps, masks, "maps", "masks")
        maps = _to_nhw(maps, "maps")
        masks = _to_nhw(masks, "masks")
        hw = (int(maps.shape[1]), int(maps.shape[2]))
        if len(self.scores) > 0 and tuple(self.scores[0].shape[1:]) != hw:
            raise ValueError(
                f"all batches must have the same spatial size: got {hw}, "
                f"expected {tuple(self.scores[0].shape[1:])}"
            )
        self.scores.append(maps.detach())
        self.target.append(masks.to(maps.device))

    def _compute_exact(self, scores: Tensor, target: Tensor) -> Tensor:
        return per_region_overlap(scores, target, max_fpr=self.max_fpr)
