"""Deliberately naive reference computations, shared by the tests: the metrics, and the method itself."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lightning_ad.core.spade import SpadeModel


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


def neighbourhood_mean(fmap: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` float64 mean of each position's 3x3 neighbours inside the map, from shifted copies."""
    fmap = fmap.double()
    padded = F.pad(fmap, (1, 1, 1, 1))
    inside = F.pad(torch.ones_like(fmap[:, :1]), (1, 1, 1, 1))
    h, w = fmap.shape[-2:]
    total = sum(padded[..., dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    count = sum(inside[..., dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return total / count


def reference_spade(model: SpadeModel, train: torch.Tensor, test: torch.Tensor, image_k: int, gallery_k: int, kappa: int, sigma: float,
                    radius=None):
    """The method written out plainly: full float64 distance matrices, scipy smoothing; with ``radius``
    (input pixels) the gallery positions farther than ``ceil(radius / stride)`` cells in y or x are left out.
    The model's ``aggregate_levels`` (3x3 means), ``pixel_distance`` and level factors are followed."""
    with torch.no_grad():
        train_pyr, train_pool = model.backbone(train)
        test_pyr, test_pool = model.backbone(test)
    train_pyr = [neighbourhood_mean(f) if flag else f for f, flag in zip(train_pyr, model.aggregated)]
    test_pyr = [neighbourhood_mean(f) if flag else f for f, flag in zip(test_pyr, model.aggregated)]
    d_img = torch.cdist(test_pool.double(), train_pool.double()) ** 2
    sorted_d, order = d_img.sort(dim=1)
    scores = sorted_d[:, :image_k].mean(dim=1)
    maps = []
    for b in range(test.shape[0]):
        level_maps = []
        for tr, te in zip(train_pyr, test_pyr):
            c, h, w = te.shape[1:]
            gallery = tr[order[b, :gallery_k]].permute(0, 2, 3, 1).reshape(-1, c).double()
            queries = te[b].permute(1, 2, 0).reshape(-1, c).double()
            diff = queries[:, None, :] - gallery[None, :, :]
            dist = (diff * diff).sum(-1)
            if radius is not None:
                cells = int(np.ceil(radius / (test.shape[-1] // w)))
                ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                ys, xs = ys.flatten(), xs.flatten()
                near = ((ys[:, None] - ys[None, :]).abs() <= cells) & ((xs[:, None] - xs[None, :]).abs() <= cells)
                dist = dist.masked_fill(~near.repeat(1, gallery_k), float("inf"))
            nearest = dist.topk(kappa, dim=1, largest=False).values
            if model.pixel_distance == "euclidean":
                nearest = nearest.sqrt()
            level = nearest.mean(dim=1).reshape(1, 1, h, w)
            level_maps.append(F.interpolate(level, size=test.shape[-2:], mode="bilinear", align_corners=False)[0, 0])
        factors = model.level_factors()
        combined = (torch.stack(level_maps).mean(0) if factors is None else
                    sum(float(f) * m for f, m in zip(factors, level_maps))).numpy()
        maps.append(ndimage.gaussian_filter(combined, sigma) if sigma > 0 else combined)
    return scores, torch.from_numpy(np.stack(maps))
