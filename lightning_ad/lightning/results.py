"""The per-image result record: what scoring one image produces, in one type.

``test_step`` and ``predict_step`` return :class:`ImageResults` (the records of a
batch); the shell gathers them across processes; the evaluation, the test report and
the prediction writer read them. Nobody re-derives a field from the raw batch.

Fields are columns (``N`` images); ``results[i]`` is the record of image ``i`` (a
length-1 :class:`ImageResults`), ``results[mask_or_indices]`` a selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, List, Optional, Sequence

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from ..core.thresholds import decide, normalize_scores
from ..distributed import first_occurrences, gather_objects, gather_rows
from ..errors import ConfigurationError

__all__ = ["ImageResults", "UNLABELLED", "as_batch_dict"]

#: ``label`` of an image whose class is unknown (prediction).
UNLABELLED = -1


@dataclass
class ImageResults:
    """Scores, maps and decisions of ``N`` images (thresholds: raw feature distances).

    Attributes:
        index: ``[N]`` int64, the image's position in its data set (orders and
            de-duplicates results across processes).
        path: image files (``""`` when unknown).
        relpath: each image's path relative to its data set's folder (names outputs).
        label: ``[N]`` int64, 1 anomalous, 0 normal, -1 unknown.
        score: ``[N]`` float64 raw image score.
        anomaly_map: ``[N, H, W]`` float32 raw map at the served image size.
        mask: ``[N, H, W]`` uint8 ground truth in {0, 1} (zeros without annotation).
        has_mask: ``[N]`` bool, whether ``mask`` comes from an annotation.
        image_threshold: threshold of the decisions on ``score`` (NaN: unknown).
        pixel_threshold: threshold of the predicted masks on ``anomaly_map`` (NaN: unknown).
        image: ``[N, 3, H, W]`` float in [0, 1], the served images (for overlays; not
            gathered across processes), or None.
    """

    index: Tensor
    path: List[str]
    relpath: List[str]
    label: Tensor
    score: Tensor
    anomaly_map: Tensor
    mask: Tensor
    has_mask: Tensor
    image_threshold: float = math.nan
    pixel_threshold: float = math.nan
    image: Optional[Tensor] = None

    def __len__(self) -> int:
        return int(self.index.numel())

    # ------------------------------------------------------------------ derived columns

    @property
    def normalized_score(self) -> Tensor:
        """``[N]`` float64 in [0, 1), 0.5 at the image threshold (NaN when it is unknown)."""
        return normalize_scores(self.score, self.image_threshold)

    @property
    def decision(self) -> Optional[Tensor]:
        """``[N]`` bool, anomalous when ``score >= image_threshold``; None when the threshold is unknown."""
        return decide(self.score, self.image_threshold) if math.isfinite(self.image_threshold) else None

    @property
    def pred_mask(self) -> Optional[Tensor]:
        """``[N, H, W]`` bool, ``anomaly_map >= pixel_threshold``; None when the threshold is unknown."""
        return decide(self.anomaly_map, self.pixel_threshold) if math.isfinite(self.pixel_threshold) else None

    # ------------------------------------------------------------------ building

    @classmethod
    def from_batch(
        cls, batch: dict, score: Tensor, anomaly_map: Tensor, image_threshold: float, pixel_threshold: float
    ) -> "ImageResults":
        """The records of one batch (a dict of :class:`~lightning_ad.data.AnomalyDataset` items, collated)."""
        images = batch["image"]
        size = images.shape[0]
        hw = tuple(anomaly_map.shape[-2:])
        path = [str(p) for p in batch.get("path", [""] * size)]
        relpath = [str(r) if r else (p.replace("\\", "/").rsplit("/", 1)[-1] or f"{int(i)}.png")
                   for r, p, i in zip(batch.get("relpath", [""] * size), path, batch["index"].tolist())]
        mask = batch.get("mask")
        has_mask = batch.get("has_mask")
        return cls(
            index=batch["index"].detach().cpu().long(),
            path=path,
            relpath=relpath,
            label=torch.as_tensor(batch.get("label", torch.full((size,), UNLABELLED))).detach().cpu().long(),
            score=score.detach().cpu().double(),
            anomaly_map=anomaly_map.detach().cpu().float(),
            mask=(mask.detach().cpu().to(torch.uint8).reshape(size, *hw) if mask is not None
                  else torch.zeros((size, *hw), dtype=torch.uint8)),
            has_mask=(torch.as_tensor(has_mask, dtype=torch.bool).cpu() if has_mask is not None
                      else torch.zeros(size, dtype=torch.bool)),
            image_threshold=float(image_threshold),
            pixel_threshold=float(pixel_threshold),
            image=images.detach(),
        )

    @classmethod
    def empty(cls, image_size: Sequence[int], image_threshold: float = math.nan, pixel_threshold: float = math.nan) -> "ImageResults":
        """No image (a process that scored none still joins the gathering)."""
        h, w = int(image_size[0]), int(image_size[1])
        return cls(
            index=torch.zeros(0, dtype=torch.long), path=[], relpath=[], label=torch.zeros(0, dtype=torch.long),
            score=torch.zeros(0, dtype=torch.float64), anomaly_map=torch.zeros(0, h, w),
            mask=torch.zeros(0, h, w, dtype=torch.uint8), has_mask=torch.zeros(0, dtype=torch.bool),
            image_threshold=image_threshold, pixel_threshold=pixel_threshold,
        )

    @classmethod
    def cat(cls, parts: Sequence["ImageResults"]) -> "ImageResults":
        """Concatenate records (same thresholds and map size); images are dropped."""
        if not parts:
            raise ValueError("ImageResults.cat needs at least one part")
        first = parts[0]
        return cls(
            index=torch.cat([p.index for p in parts]),
            path=[x for p in parts for x in p.path],
            relpath=[x for p in parts for x in p.relpath],
            label=torch.cat([p.label for p in parts]),
            score=torch.cat([p.score for p in parts]),
            anomaly_map=torch.cat([p.anomaly_map for p in parts]),
            mask=torch.cat([p.mask for p in parts]),
            has_mask=torch.cat([p.has_mask for p in parts]),
            image_threshold=first.image_threshold,
            pixel_threshold=first.pixel_threshold,
        )

    def __getitem__(self, key: Any) -> "ImageResults":
        if isinstance(key, int):
            key = [key]
        rows = torch.arange(len(self))[key] if not isinstance(key, Tensor) else (
            key.nonzero().flatten() if key.dtype == torch.bool else key.long())
        rows = rows.reshape(-1)
        picked = rows.tolist()
        return replace(
            self,
            index=self.index[rows], path=[self.path[i] for i in picked], relpath=[self.relpath[i] for i in picked],
            label=self.label[rows], score=self.score[rows], anomaly_map=self.anomaly_map[rows],
            mask=self.mask[rows], has_mask=self.has_mask[rows],
            image=self.image[rows.to(self.image.device)] if self.image is not None else None,
        )

    def gather(self) -> "ImageResults":
        """Every process's records, one per distinct ``index``, ordered by it (sampler repeats dropped).

        Collective: every process calls it (with an empty record if it scored nothing).
        Images are not gathered.
        """
        tensors = {name: gather_rows(getattr(self, name))
                   for name in ("index", "label", "score", "anomaly_map", "mask", "has_mask")}
        names = gather_objects((self.path, self.relpath))
        path = [p for rank_path, _ in names for p in rank_path]
        relpath = [r for _, rank_rel in names for r in rank_rel]
        keep = first_occurrences(tensors["index"])
        picked = keep.tolist()
        return ImageResults(
            index=tensors["index"][keep], path=[path[i] for i in picked], relpath=[relpath[i] for i in picked],
            label=tensors["label"][keep], score=tensors["score"][keep], anomaly_map=tensors["anomaly_map"][keep],
            mask=tensors["mask"][keep], has_mask=tensors["has_mask"][keep].bool(),
            image_threshold=self.image_threshold, pixel_threshold=self.pixel_threshold,
        )


def as_batch_dict(batch: Any, first_id: int = 0, processes: int = 1) -> dict:
    """Our dict batches, ``(images, labels, ...)`` tuples or bare image tensors, as a dict with ``image``.

    A batch without ``index`` gets ids ``first_id, first_id + 1, ...`` (under several
    processes sampler repeats then cannot be removed: a warning says so).
    """
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ConfigurationError("a batch dict must hold the images under the key 'image'")
        out = dict(batch)
    elif isinstance(batch, (list, tuple)):
        out = {"image": batch[0]}
        if len(batch) > 1 and isinstance(batch[1], Tensor):
            out["label"] = batch[1]
    elif isinstance(batch, Tensor):
        out = {"image": batch}
    else:
        raise ConfigurationError(f"unsupported batch type {type(batch).__name__}: give a dict with 'image'")
    if "index" not in out:
        if processes > 1 and first_id % 10**12 == 0:
            rank_zero_warn("batches carry no 'index': under several processes, samples repeated by the distributed "
                           "sampler cannot be removed. Put each sample's dataset index under 'index'.")
        out["index"] = torch.arange(first_id, first_id + out["image"].shape[0])
    return out
