"""Deliberately naive reference computations of the metrics, shared by the metric tests."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import ndimage


def ref_auroc(scores, target) -> float:
    """Mann-Whitney count over all (positive, negative) pairs, ties count 1/2."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(target).astype(bool).ravel()
    pos, neg = s[t], s[~t]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float(Fraction(2 * int(greater) + int(ties), 2 * pos.size * neg.size))


def ref_pro(maps, masks, max_fpr) -> float:
    """Loop over every distinct threshold, binarise, measure every region and the FPR."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    regions = []
    for i in range(masks.shape[0]):
        labels, n = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        regions += [(i, labels == k) for k in range(1, n + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for thr in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= thr
        fpr = pred[normal].sum() / normal.sum()
        pro = np.mean([pred[i][region].mean() for i, region in regions])
        points.append((float(fpr), float(pro)))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                y_cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + y_cut) / 2
            break
    return area / max_fpr
