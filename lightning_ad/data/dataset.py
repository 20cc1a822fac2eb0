"""A dataset of image files with labels and optional masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .images import load_image
from .masks import load_mask
from .transforms import Preprocess

__all__ = ["Sample", "AnomalyDataset", "NORMAL", "ANOMALOUS", "UNLABELLED"]

NORMAL, ANOMALOUS, UNLABELLED = 0, 1, -1


@dataclass(frozen=True)
class Sample:
    """One image file.

    ``label``: 0 normal, 1 anomalous, -1 unknown (prediction). ``mask``: its mask file,
    or None (normal image, or no annotation). ``group``: defect type or folder name.
    ``relpath``: path relative to the data set's folder (used to name outputs; see
    :func:`~lightning_ad.data.folders.safe_relpath`). ``expected_mask``: where the mask was
    looked for when none was found (named in errors).
    """

    path: Path
    label: int = NORMAL
    mask: Optional[Path] = None
    group: str = "good"
    relpath: Optional[str] = None
    expected_mask: Optional[Path] = None


class AnomalyDataset(Dataset):
    """Decodes and preprocesses samples.

    Each item is a dict:

    * ``image``: ``[3, h, w]`` float32 in [0, 1];
    * ``label``: int64 scalar (0, 1, or -1 when unknown);
    * ``mask``: ``[h, w]`` uint8 in {0, 1} (zeros when the image has no mask);
    * ``has_mask``: bool, whether ``mask`` comes from an annotation;
    * ``path``: str, the image file; ``relpath``: str, its path relative to the data
      set's folder (names outputs); ``index``: int64, the item's position in the dataset
      (used to deduplicate and order results across processes).
    """

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess) -> None:
        self.samples: List[Sample] = list(samples)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_masks(self) -> bool:
        """True when every anomalous sample has a mask (pixel metrics are meaningful)."""
        anomalous = [s for s in self.samples if s.label == ANOMALOUS]
        return bool(anomalous) and all(s.mask is not None for s in anomalous)

    def __getitem__(self, index: int) -> Dict[str, Union[torch.Tensor, str, bool]]:
        sample = self.samples[index]
        array = load_image(sample.path)
        image = self.preprocess.image(array)
        if sample.mask is not None:
            mask = self.preprocess.mask(load_mask(sample.mask, array.shape[:2], sample.path))
        else:
            mask = torch.zeros(self.preprocess.output_size, dtype=torch.uint8)
        return {
            "image": image,
            "label": torch.tensor(sample.label, dtype=torch.long),
            "mask": mask,
            "has_mask": sample.mask is not None,
            "path": str(sample.path),
            "relpath": sample.relpath if sample.relpath is not None else sample.path.name,
            "index": torch.tensor(index, dtype=torch.long),
        }
