"""Per-region overlap (PRO): the mean overlap of each defect region, integrated up to a false positive rate."""

from __future__ import annotations

import numbers
from typing import Any, Tuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .inputs import _check_same_shape, _check_scores, _check_target, _distinct_sorted, _to_numpy

__all__ = ['per_region_overlap']


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
