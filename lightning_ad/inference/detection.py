"""The result of one image at its own size (:class:`Detection`), and its picture (:func:`overlay_for`).

The :class:`~lightning_ad.inference.detector.Detector` makes one per image; the prediction writer
(:mod:`lightning_ad.lightning.prediction_writer`) makes them from gathered records to draw its overlays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..data.inputs import ImageInput, as_rgb_uint8
from ..errors import DataError

__all__ = ["Detection", "overlay_for"]

#: Hatch period (pixels) and grey of the uninspected border in overlays.
_HATCH_PERIOD = 8
_BORDER_GREY = 128


@dataclass(frozen=True)
class Detection:
    """The result of one image.

    Attributes:
        score: raw image score (the checkpoint's ``image_score``: a statistic of the map, or DN2).
        normalized_score: ``score`` mapped to [0, 1) with the image threshold at 0.5 (NaN when unknown).
        decision: ``score >= image_threshold`` (None when the threshold is unknown).
        anomaly_map: float32 ``[H0, W0]`` raw map at the image's original size; NaN where the
            centre crop removed the pixel (not inspected).
        mask: bool ``[H0, W0]``, ``anomaly_map >= pixel_threshold`` (False where not inspected);
            None when the pixel threshold is unknown.
        size: ``(H0, W0)``.
        path: the file, for path inputs (else None).
        image_threshold, pixel_threshold: the thresholds used (raw; NaN: unknown).
    """

    score: float
    normalized_score: float
    decision: Optional[bool]
    anomaly_map: np.ndarray = field(repr=False)
    mask: Optional[np.ndarray] = field(repr=False)
    size: Tuple[int, int]
    path: Optional[str] = None
    image_threshold: float = math.nan
    pixel_threshold: float = math.nan

    @property
    def inspected(self) -> np.ndarray:
        """bool ``[H0, W0]``: the pixels the model saw (not removed by the crop)."""
        return np.isfinite(self.anomaly_map)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {"score": self.score, "normalized_score": None if math.isnan(self.normalized_score) else self.normalized_score,
                "decision": self.decision, "size": list(self.size), "path": self.path}

    def overlay(self, image: ImageInput, alpha: float = 0.5) -> np.ndarray:
        """See :func:`overlay_for`."""
        return overlay_for(self, image, alpha=alpha)


def overlay_for(detection: Detection, image: ImageInput, alpha: float = 0.5) -> np.ndarray:
    """The heatmap of ``detection`` over ``image`` (any input form, at its original size): ``[H0, W0, 3]`` uint8.

    Colours follow :mod:`lightning_ad.inference.visualize` (fixed scale, pixel threshold at the middle
    colour), with the predicted mask outlined. Pixels the model did not inspect (NaN in the
    map) are shown greyed out with diagonal hatching.
    """
    from . import visualize

    rgb = as_rgb_uint8(image)
    if tuple(rgb.shape[:2]) != tuple(detection.size):
        raise DataError(f"overlay: the image is {rgb.shape[0]}x{rgb.shape[1]} but the detection is "
                        f"{detection.size[0]}x{detection.size[1]}: pass the image that was scored.")
    inspected = detection.inspected
    values = np.where(inspected, detection.anomaly_map, 0.0)
    out = visualize.overlay(rgb, values, detection.pixel_threshold, pred_mask=detection.mask, alpha=alpha)
    if not inspected.all():
        yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
        hatch = ((yy + xx) % _HATCH_PERIOD) < 2
        grey = (rgb.astype(np.float32).mean(axis=2, keepdims=True) * 0.5 + _BORDER_GREY * 0.5).astype(np.uint8)
        border = np.repeat(grey, 3, axis=2)
        border[hatch] = 64
        out = np.where(inspected[:, :, None], out, border)
    return np.ascontiguousarray(out)
