"""Metrics of a scored, labelled image set: a pure function of the gathered records.

:func:`evaluate` is the one place that decides which metric is defined:

* image AUROC: normal and anomalous images are both present;
* pixel AUROC and PRO: every anomalous image has an annotated mask, and the masks
  mark anomalous and normal pixels;
* F1 (with precision and recall) at a threshold: the threshold is known and, for the
  image level, an anomalous image is present; for the pixel level, as pixel AUROC.

The test report reads the same answer (:attr:`Evaluation.image_defined`,
:attr:`Evaluation.pixel_defined`) to decide which ROC curves it can draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List

from ..core.metrics import binary_auroc, per_region_overlap, precision_recall_f1
from .results import ImageResults

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """``metrics`` by name (``image_auroc``, ``pixel_auroc``, ``pro``, ``image_f1`` ...; floats), which
    levels are defined, and a sentence per metric that is not."""

    metrics: Dict[str, float]
    image_defined: bool
    pixel_defined: bool
    skipped: List[str] = field(default_factory=list)


def evaluate(results: ImageResults, pro_max_fpr: float = 0.3) -> Evaluation:
    """Every defined metric of ``results`` (one record per image, de-duplicated), at its thresholds.

    Example:
        >>> import torch
        >>> maps = torch.zeros(4, 8, 8); maps[2:, :4] = 1.0
        >>> masks = (maps > 0).to(torch.uint8)
        >>> results = ImageResults(torch.arange(4), [""] * 4, ["a", "b", "c", "d"], torch.tensor([0, 0, 1, 1]),
        ...     torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), maps, masks, torch.ones(4, dtype=torch.bool),
        ...     image_threshold=0.25, pixel_threshold=0.5)
        >>> out = evaluate(results)
        >>> out.metrics["image_auroc"], out.metrics["pixel_auroc"], out.metrics["image_f1"]
        (1.0, 1.0, 1.0)
    """
    labels, scores = results.label, results.score
    anomalous_rows = labels == 1
    anomalous, normal = int(anomalous_rows.sum()), int((labels == 0).sum())
    values: Dict[str, float] = {}
    skipped: List[str] = []
    image_defined = anomalous > 0 and normal > 0
    if image_defined:
        known = labels >= 0
        values["image_auroc"] = float(binary_auroc(scores[known], labels[known]))
    else:
        skipped.append(f"image AUROC (the set has {anomalous} anomalous and {normal} normal images; both are needed)")
    annotated = anomalous > 0 and bool(results.has_mask[anomalous_rows].all())
    positives = int(results.mask.sum()) if annotated else 0
    pixel_defined = annotated and 0 < positives < results.mask.numel()
    if pixel_defined:
        values["pixel_auroc"] = float(binary_auroc(results.anomaly_map, results.mask))
        values["pro"] = float(per_region_overlap(results.anomaly_map, results.mask, max_fpr=pro_max_fpr))
    else:
        reason = (
            "no anomalous image" if anomalous == 0
            else "anomalous images without masks" if not annotated
            else "masks mark no anomalous pixel" if positives == 0 else "no normal pixel"
        )
        skipped.append(f"pixel AUROC and PRO ({reason})")
    tau, theta = results.image_threshold, results.pixel_threshold
    if anomalous and math.isfinite(tau):
        precision, recall, f1 = precision_recall_f1(scores, labels.clamp_min(0), tau)
        values.update(image_f1=float(f1), image_precision=float(precision), image_recall=float(recall))
    if pixel_defined and math.isfinite(theta):
        _, _, f1 = precision_recall_f1(results.anomaly_map, results.mask, theta)
        values["pixel_f1"] = float(f1)
    if math.isfinite(tau):
        values["image_threshold"] = tau
    if math.isfinite(theta):
        values["pixel_threshold"] = theta
    return Evaluation(values, image_defined, pixel_defined, skipped)
