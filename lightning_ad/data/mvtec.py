"""MVTec AD layout: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from pytorch_lightning.utilities import rank_zero_warn

from ..errors import DataError
from .datamodule import AnomalyDataModule
from .dataset import ANOMALOUS, NORMAL, Sample
from .io import list_images
from .transforms import Size

__all__ = ["MVTecDataModule", "mvtec_categories"]


def mvtec_categories(root: Path) -> List[str]:
    """Categories present under ``root`` (folders holding ``train/good``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


class MVTecDataModule(AnomalyDataModule):
    """One category of MVTec AD (or any data set laid out the same way).

    ``train/good`` gives the normal training images; every folder of ``test`` is a
    test group (``good`` normal, the others anomalous), and the mask of
    ``test/<defect>/<stem>.<ext>`` is ``ground_truth/<defect>/<stem>_mask.png``.
    Without a ``ground_truth`` folder the category is served for image-level metrics
    only.

    Args:
        root: folder holding the categories.
        category: the category (a subfolder of ``root``).
        **kwargs: see :class:`~lightning_ad.data.datamodule.AnomalyDataModule`.
    """

    def __init__(
        self,
        root: str = "../shared/data/mvtec_ad",
        category: str = "bottle",
        image_size: Size = 256,
        crop_size: Optional[Size] = 224,
        batch_size: int = 32,
        num_workers: Optional[int] = None,
        predict_dir: Optional[str] = None,
        val_split: float = 0.0,
        skip_broken: bool = False,
    ) -> None:
        super().__init__(image_size, crop_size, batch_size, num_workers, predict_dir, val_split, skip_broken)
        self.root = Path(root)
        self.category = category

    @property
    def category_dir(self) -> Path:
        folder = self.root / self.category
        if not (folder / "train" / "good").is_dir():
            if not self.root.is_dir():
                raise DataError(
                    f"MVTec root {str(self.root)!r} does not exist (set --data.root; relative paths start "
                    f"from {str(Path.cwd())!r})."
                )
            present = mvtec_categories(self.root)
            raise DataError(
                f"MVTec category {self.category!r} not found under {str(self.root)!r} "
                f"(no folder {str(folder / 'train' / 'good')!r}). Categories present: "
                f"{present if present else 'none'}."
            )
        return folder

    def collect_train(self) -> List[Sample]:
        folder = self.category_dir / "train" / "good"
        return [Sample(p, NORMAL, None, "good", str(p.relative_to(self.category_dir))) for p in list_images(folder, what="MVTec training folder")]

    def collect_test(self) -> List[Sample]:
        base = self.category_dir
        test_dir = base / "test"
        if not test_dir.is_dir():
            raise DataError(f"MVTec category {str(base)!r} has no test folder {str(test_dir)!r}.")
        groups = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not groups:
            raise DataError(f"MVTec test folder {str(test_dir)!r} has no subfolder (expected good/ and defect folders).")
        truth = base / "ground_truth"
        annotated = truth.is_dir()
        if not annotated:
            rank_zero_warn(f"{str(truth)!r} does not exist: test images have no masks (image-level metrics only).")
        samples: List[Sample] = []
        for group in groups:
            label = NORMAL if group.name == "good" else ANOMALOUS
            for path in list_images(group, what="MVTec test folder"):
                mask = None
                if label == ANOMALOUS and annotated:
                    candidate = truth / group.name / f"{path.stem}_mask.png"
                    mask = candidate if candidate.is_file() else None
                samples.append(Sample(path, label, mask, group.name, str(path.relative_to(base))))
        return samples
