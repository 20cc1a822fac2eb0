"""A scored image's map at its photo's own size, with its predicted mask: what the
:class:`~lightning_ad.inference.detector.Detector` and the prediction writer report for a photo.

One function, built from the one resize rule (:func:`~lightning_ad.inference.geometry.restore_map`)
and the one decision rule (:func:`~lightning_ad.core.thresholds.decide`).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

from torch import Tensor

from ..core.thresholds import decide
from .geometry import restore_map

__all__ = ["restore_map_and_mask"]


def restore_map_and_mask(
    anomaly_map: Tensor, original: Sequence[int], contract: Any, pixel_threshold: float
) -> Tuple[Tensor, Optional[Tensor]]:
    """One image's map ``[h, w]`` at the photo's size ``original`` ``(H0, W0)``, and its predicted mask.

    Returns float32 ``[H0, W0]`` (:func:`~lightning_ad.inference.geometry.restore_map`: NaN where
    the centre crop removed the pixel) and bool ``[H0, W0]`` ``map >= pixel_threshold`` (False where
    not inspected), or None for the mask when the pixel threshold is unknown (NaN).

    Example:
        >>> import torch
        >>> full, mask = restore_map_and_mask(torch.tensor([[0.0, 4.0]]), (2, 4), {"image_size": [1, 2], "crop_size": None}, 2.0)
        >>> full.tolist(), mask.tolist()
        ([[0.0, 1.0, 3.0, 4.0], [0.0, 1.0, 3.0, 4.0]], [[False, False, True, True], [False, False, True, True]])
    """
    full = restore_map(anomaly_map, original, contract)
    threshold = float(pixel_threshold)
    return full, (decide(full, threshold) if math.isfinite(threshold) else None)
