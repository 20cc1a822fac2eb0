"""Detections in, JSON pieces out: the regions of a mask, the inspected box, pictures as base64 PNG. No server code here.

The API (:mod:`lightning_ad.serve.api`) assembles its answers from these.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

__all__ = ["regions", "inspected_box", "png_base64", "finite_or_none"]


def regions(mask: Optional[np.ndarray], anomaly_map: np.ndarray) -> List[Dict[str, Any]]:
    """Bounding boxes of the 8-connected regions of ``mask`` in the image's own pixels, largest first.

    Each is ``{"x", "y", "width", "height", "area", "peak"}``: the top-left corner, the size
    (``x + width`` is one past the last column), the region's pixel count and its largest raw
    map value.

    >>> m = np.zeros((6, 8), bool); m[1:3, 2:5] = True; m[4, 7] = True
    >>> [(r["x"], r["y"], r["width"], r["height"], r["area"]) for r in regions(m, m.astype(np.float32))]
    [(2, 1, 3, 2, 6), (7, 4, 1, 1, 1)]
    """
    if mask is None or not mask.any():
        return []
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    peaks = ndimage.maximum(np.nan_to_num(anomaly_map, nan=-np.inf), labels, index)
    out = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = box
        out.append({"x": int(cols.start), "y": int(rows.start), "width": int(cols.stop - cols.start),
                    "height": int(rows.stop - rows.start), "area": int(areas[label - 1]), "peak": float(peaks[label - 1])})
    out.sort(key=lambda r: (-r["area"], r["y"], r["x"]))
    return out


def inspected_box(anomaly_map: np.ndarray) -> Optional[Dict[str, int]]:
    """The box of the pixels the model inspected (finite map values; the crop removed the rest)."""
    finite = np.isfinite(anomaly_map)
    rows, cols = finite.any(axis=1).nonzero()[0], finite.any(axis=0).nonzero()[0]
    if rows.size == 0:
        return None
    return {"x": int(cols[0]), "y": int(rows[0]), "width": int(cols[-1] - cols[0] + 1), "height": int(rows[-1] - rows[0] + 1)}


def png_base64(rgb: np.ndarray) -> str:
    """``[H, W, 3]`` uint8 -> base64 of a PNG (fast compression)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def finite_or_none(value: float) -> Optional[float]:
    """``value`` as a float, or None when it is None or not finite (JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None
