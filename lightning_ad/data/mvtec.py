"""MVTec AD layout: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

from pytorch_lightning.utilities import rank_zero_warn

from ..errors import DataError, MaskError
from .datamodule import AnomalyDataModule
from .dataset import ANOMALOUS, NORMAL, Sample
from .folders import list_images, safe_relpath
from .mask_files import is_mask_name

__all__ = ["MVTecDataModule", "mvtec_categories"]


def mvtec_categories(root: Path) -> List[str]:
    """Categories present under ``root`` (folders holding ``train/good``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


def _images(folder: Path, what: str) -> List[Path]:
    """Image files of ``folder`` less those named like masks (``*_mask.*``), with a warning."""
    files = list_images(folder, what=what)
    masks = [f for f in files if is_mask_name(f)]
    if masks:
        rank_zero_warn(
            f"{what} {str(folder)!r}: {len(masks)} file(s) named like masks (e.g. {masks[0].name!r}) are not "
            "images and are left out; MVTec masks are read from ground_truth/<defect>/<stem>_mask.png."
        )
    images = [f for f in files if not is_mask_name(f)]
    if not images:
        raise DataError(
            f"{what} {str(folder)!r} holds only files named like masks (*_mask.*), no image. MVTec masks "
            "belong in ground_truth/<defect>/<stem>_mask.png."
        )
    return images


class MVTecDataModule(AnomalyDataModule):
    """One category of MVTec AD (or any data set laid out the same way).

    ``train/good`` gives the normal training images; every folder of ``test`` is a
    test group (``good`` normal, the others anomalous), and the mask of
    ``test/<defect>/<stem>.<ext>`` is ``ground_truth/<defect>/<stem>_mask.png``.
    Files named like masks (``<stem>_mask.<ext>``) in the image folders are never
    images: they are left out with a warning.
    Without a ``ground_truth`` folder (or with an empty one) the category is served
    for image-level metrics only, with a warning. A ``ground_truth`` folder that
    holds files none of which is the mask of an anomalous test image is an error
    (masks named by another rule would otherwise be silently ignored). A mask found
    for a ``test/good`` image (``ground_truth/good/<stem>_mask.png``) must be empty.
    The other mask rules are those of :mod:`lightning_ad.data.masks`.

    Args:
        root: folder holding the categories.
        category: the category (a subfolder of ``root``).
        **kwargs: see AnomalyDataModule.
    """

    def __init__(self, root: str = "../shared/data/mvtec_ad", category: str = "bottle", **kwargs: Any) -> None:
        super().__init__(**kwargs)
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
            if folder.is_dir() and self.category:
                raise DataError(
                    f"MVTec category folder {str(folder)!r} has no train/good folder (incomplete copy?). "
                    f"Categories present: {present if present else 'none'}."
                )
            if (self.root / "train" / "good").is_dir():
                raise DataError(
                    f"MVTec category {self.category!r} not found under {str(self.root)!r}, which looks like a "
                    f"category folder itself (it holds train/good): set root to {str(self.root.parent)!r} and "
                    f"category to {self.root.name!r}."
                )
            raise DataError(
                f"MVTec category {self.category!r} not found under {str(self.root)!r} "
                f"(no folder {str(folder / 'train' / 'good')!r}). Categories present: "
                f"{present if present else 'none'}."
            )
        return folder

    def collect_train(self) -> List[Sample]:
        folder = self.category_dir / "train" / "good"
        base = self.category_dir
        return [Sample(p, NORMAL, None, "good", safe_relpath(p, base)) for p in _images(folder, "MVTec training folder")]

    def collect_test(self) -> List[Sample]:
        base = self.category_dir
        test_dir = base / "test"
        if not test_dir.is_dir():
            raise DataError(f"MVTec category {str(base)!r} has no test folder {str(test_dir)!r}.")
        groups = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not groups:
            raise DataError(f"MVTec test folder {str(test_dir)!r} has no subfolder (expected good/ and defect folders).")
        truth = base / "ground_truth"
        annotated = truth.is_dir() and any(p.is_file() for p in truth.rglob("*") if not p.name.startswith("."))
        if not annotated:
            rank_zero_warn(
                f"{str(truth)!r} does not exist or holds no file: test images have no masks (image-level metrics only)."
            )
        samples: List[Sample] = []
        for group in groups:
            label = NORMAL if group.name == "good" else ANOMALOUS
            for path in _images(group, "MVTec test folder"):
                mask, expected = None, None
                if annotated:
                    candidate = truth / group.name / f"{path.stem}_mask.png"
                    if candidate.is_file():
                        mask = candidate
                    elif label == ANOMALOUS:
                        expected = candidate
                samples.append(Sample(path, label, mask, group.name, safe_relpath(path, base), expected))
        anomalous = [s for s in samples if s.label == ANOMALOUS]
        if annotated and anomalous and not any(s.mask is not None for s in anomalous):
            example = anomalous[0]
            raise MaskError(
                f"{str(truth)!r} holds files but none is the mask of an anomalous test image: e.g. the mask of "
                f"{str(example.path)!r} must be {str(example.expected_mask)!r} (MVTec rule "
                "ground_truth/<defect>/<stem>_mask.png). Rename the masks, or remove the ground_truth folder "
                "for image-level metrics only."
            )
        return samples
