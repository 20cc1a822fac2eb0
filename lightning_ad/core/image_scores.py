"""Image scores from the parts scoring computes: DN2 (pooled-vector distances) and a statistic of the anomaly map.

``image_score`` of :class:`~lightning_ad.core.spade.SpadeModel` picks one: ``dn2`` (the paper's), ``max`` or
``topq`` of the map, or ``combined`` (both parts over their learned scales). Eager scoring and the exported graph
both call :func:`image_score_from_parts`.
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["IMAGE_SCORES", "map_score", "map_part_of", "image_score_from_parts"]

#: Accepted values of ``image_score`` (see the module docstring).
IMAGE_SCORES = ("dn2", "max", "topq", "combined")


def map_score(maps: Tensor, kind: str, q: float = 0.01) -> Tensor:
    """``[B]`` image score of maps ``[B, H, W]``: their maximum (``max``) or the mean of their top ``q``
    fraction of pixels (``topq``; at least one pixel, ``ceil(q * H * W)``).

    Example:
        >>> import torch
        >>> maps = torch.arange(8.0).reshape(1, 2, 4)
        >>> map_score(maps, "max"), map_score(maps, "topq", 0.25)
        (tensor([7.]), tensor([6.5000]))
    """
    flat = maps.flatten(1)
    if kind == "max":
        return flat.amax(dim=1)
    count = max(1, math.ceil(q * flat.shape[1] - 1e-9))
    return flat.topk(count, dim=1).values.mean(dim=1)


def map_part_of(kind: str, maps: Tensor, q: float) -> Tensor:
    """``[B]`` the map statistic of image score ``kind`` from maps ``[B, H, W]``: ``topq`` for ``topq``, else ``max``."""
    return map_score(maps, "topq" if kind == "topq" else "max", q)


def image_score_from_parts(kind: str, dn2: Tensor, map_part: Optional[Tensor], dn2_scale: float, map_scale: float) -> Tensor:
    """``[B]`` image score ``kind`` from DN2 ``[B]`` and the map statistic ``[B]`` (:func:`map_part_of`);
    ``combined`` divides each part by its scale (learned at fit)."""
    if kind == "dn2":
        return dn2
    if map_part is None:
        raise ValueError(f"image_score={kind!r} needs the map statistic")
    if kind != "combined":
        return map_part
    if not all(math.isfinite(s) and s > 0 for s in (dn2_scale, map_scale)):
        raise ConfigurationError(
            "image_score='combined' needs the scales of its parts, learned from leave-one-out scores of the "
            "training images when the bank is fitted (at least max(image_k, gallery_k) + 1 images): fit again."
        )
    return dn2 / dn2_scale + map_part / map_scale
