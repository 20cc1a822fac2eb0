"""Records passed between scoring and calibration (kept apart from both, so that neither imports the other)."""

from __future__ import annotations

from typing import List, NamedTuple, Optional

from torch import Tensor

__all__ = ["Features", "SpadeOutput", "LeaveOneOut"]


class Features(NamedTuple):
    """Backbone output: ``pyramid`` (one ``[B, C_l, H_l, W_l]`` per level) and ``pooled`` ``[B, D]``."""

    pyramid: List[Tensor]
    pooled: Tensor


class SpadeOutput(NamedTuple):
    """``image_scores`` ``[B]`` and ``anomaly_maps`` ``[B, H, W]``: raw feature distances."""

    image_scores: Tensor
    anomaly_maps: Tensor


class LeaveOneOut(NamedTuple):
    """Leave-one-out scores of bank rows: ``rows`` ``[R]``, ``dn2`` ``[R]``, ``map_part`` ``[R]`` (the map
    statistic of the image score; None for ``dn2``), ``maps`` ``[M, H, W]`` of the rows asked to be kept."""

    rows: Tensor
    dn2: Tensor
    map_part: Optional[Tensor]
    maps: Tensor
