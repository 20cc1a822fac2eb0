"""The datamodule base: checks, splits and loaders shared by the MVTec, folder and demo layouts.

The rules for files (folders, images, masks) are those of :mod:`lightning_ad.data.folders`,
:mod:`lightning_ad.data.images` and :mod:`lightning_ad.data.masks`; those of the data sets as a whole follow.

Data sets (checked in ``setup``, before any feature is extracted)
=================================================================

* MVTec layout: a missing root, an unknown category (the error lists the
  categories present), a category without ``train/good`` (an incomplete copy),
  or a root that is itself a category folder are errors that say what to set.
  A ``ground_truth`` folder that holds files none of which is
  ``<defect>/<stem>_mask.png`` of an anomalous test image is an error (masks
  named by another rule would otherwise be ignored); a missing or empty one
  means image-level metrics only, with a warning. ``ground_truth/good`` masks,
  when present, must be empty.
* Folder layout: ``normal_dir``, ``normal_test_dir`` and the ``abnormal_dirs``
  entries must be distinct folders (training on test images, or testing normal
  images as anomalous, gives results that look valid but are not); a
  ``mask_dir`` that is set must exist and hold the mask of at least one
  anomalous image.
* The model refuses, when fit starts and before any feature is extracted, an
  ``image_k`` or ``gallery_k`` larger than the number of training images left
  after skipping broken ones; an unknown backbone or pyramid level is refused
  when the model is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler

from .. import checks
from ..core.spread import interleaved_split, spread_indices
from ..errors import ConfigurationError, DataError, ImageDecodeError, MaskError
from .dataset import ANOMALOUS, NORMAL, UNLABELLED, AnomalyDataset, Sample
from .folders import list_images, safe_relpath
from .images import check_image, image_size
from .mask_files import drop_conventional_masks
from .masks import load_mask
from .transforms import Preprocess, Size, aspect_advice

__all__ = ["AnomalyDataModule", "default_num_workers", "OwnerSampler"]


def default_num_workers() -> int:
    """Loader workers when ``num_workers`` is not set: one per CPU core, at most 4."""
    return max(0, min(4, os.cpu_count() or 1))


class OwnerSampler(DistributedSampler):
    """Rank ``r`` of ``w`` reads items ``r, r + w, r + 2w, ...`` (each item has one owner), no shuffling.

    A rank that owns nothing (fewer items than ranks) reads item ``r % n`` so that every
    rank runs the loop and reaches the collectives; consumers keep only the items they own
    (``index % world_size == rank``). Lightning keeps a ``DistributedSampler`` it is given.
    """

    def __init__(self, dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        count = len(dataset)
        self.owned = list(range(rank, count, num_replicas)) or ([rank % count] if count else [])
        self.num_samples = len(self.owned)

    def __iter__(self):
        return iter(self.owned)

    def __len__(self) -> int:
        return self.num_samples


class AnomalyDataModule(pl.LightningDataModule):
    """Normal training images, labelled test images with masks, optional validation and predict sets.

    Subclasses implement :meth:`collect_train` and :meth:`collect_test`.

    Args:
        image_size: resize to this (int: square, or [height, width]) before cropping.
        crop_size: centre crop (int or [height, width]); ``None``: no crop.
        batch_size: images per batch, for every stage.
        num_workers: loader worker processes (decode images while features are
            extracted); default: one per CPU core, at most 4.
        predict_dir: folder of unlabelled images (searched recursively) for ``predict``;
            files that are masks of images beside them by their names are left out.
        val_split: fraction of the labelled test images (per defect type, evenly spread)
            served as a validation set instead (for F1-optimal thresholds); 0: none.
        skip_broken: skip images that fail to decode (counted in a warning) instead of
            stopping with an error. Every image is then fully decoded once in ``setup``.
    """

    def __init__(
        self,
        image_size: Size = 256,
        crop_size: Optional[Size] = 224,
        batch_size: int = 32,
        num_workers: Optional[int] = None,
        predict_dir: Optional[str] = None,
        val_split: float = 0.0,
        skip_broken: bool = False,
    ) -> None:
        super().__init__()
        self.preprocess = Preprocess(image_size, crop_size)
        checks.positive_int("data batch_size", batch_size)
        checks.non_negative_int("data num_workers", num_workers, optional=True)
        if not isinstance(val_split, (int, float)) or not 0 <= val_split < 1:
            raise ConfigurationError(f"data val_split={val_split!r} must lie in [0, 1)")
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.predict_dir = predict_dir
        self.val_split = float(val_split)
        self.skip_broken = bool(skip_broken)
        self.train_dataset: Optional[AnomalyDataset] = None
        self.val_dataset: Optional[AnomalyDataset] = None
        self.test_dataset: Optional[AnomalyDataset] = None
        self.predict_dataset: Optional[AnomalyDataset] = None
        self._labelled: Optional[List[Sample]] = None

    # ------------------------------------------------------------------ to implement

    def collect_train(self) -> List[Sample]:  # pragma: no cover - abstract
        """Normal training samples, sorted (deterministic)."""
        raise NotImplementedError

    def collect_test(self) -> List[Sample]:  # pragma: no cover - abstract
        """Labelled test samples (with masks where annotated), sorted."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks

    def _check_images(self, samples: List[Sample], what: str) -> List[Sample]:
        """Every image readable (or, with skip_broken, the readable ones, with a warning)."""
        kept, broken = [], []
        for sample in samples:
            try:
                check_image(sample.path, full=self.skip_broken)
            except ImageDecodeError as err:
                if not self.skip_broken:
                    raise
                broken.append((sample.path, err))
                continue
            kept.append(sample)
        if broken:
            names = ", ".join(repr(str(p)) for p, _ in broken[:5]) + (" ..." if len(broken) > 5 else "")
            rank_zero_warn(f"skip_broken: skipped {len(broken)} broken image(s) of the {what}: {names}")
        if not kept:
            raise DataError(f"the {what} has no readable image.")
        return kept

    @staticmethod
    def _check_masks(samples: List[Sample]) -> None:
        """Every mask decodes and aligns with its image; normal images' masks mark nothing;
        annotation is all or none (see the rules in :mod:`lightning_ad.data.masks`)."""
        anomalous = [s for s in samples if s.label == ANOMALOUS]
        with_mask = [s for s in anomalous if s.mask is not None]
        if with_mask and len(with_mask) != len(anomalous):
            missing = [s for s in anomalous if s.mask is None]
            names = ", ".join(
                repr(str(s.path)) + (f" (no mask {str(s.expected_mask)!r})" if s.expected_mask is not None else "")
                for s in missing[:5]
            ) + (" ..." if len(missing) > 5 else "")
            raise MaskError(
                f"{len(missing)} of {len(anomalous)} anomalous test images have no mask while the others do: "
                f"{names}. Add their masks (an all-zero mask is allowed) or remove the images."
            )
        for sample in samples:
            if sample.mask is None:
                continue
            # the full mask is read here (not only its header): a mask that does not decode,
            # is ambiguous or does not fit stops setup, not the test epoch
            mask = load_mask(sample.mask, image_size(sample.path), sample.path)
            if sample.label == NORMAL and mask.any():
                raise MaskError(
                    f"mask {str(sample.mask)!r} marks {int(mask.sum())} anomalous pixel(s) but its image "
                    f"{str(sample.path)!r} is labelled normal. Move the image to a defect folder, or clear the mask."
                )

    @staticmethod
    def _check_relpaths(samples: Sequence[Sample], what: str) -> None:
        """Outputs are named after ``relpath``: two samples of a set must not share one."""
        seen: Dict[str, Sample] = {}
        for sample in samples:
            key = sample.relpath if sample.relpath is not None else sample.path.name
            other = seen.setdefault(key, sample)
            if other is not sample:
                raise DataError(
                    f"the {what} holds two images that would name the same output {key!r}: {str(other.path)!r} and "
                    f"{str(sample.path)!r}. Rename one of them (or give their folders different names)."
                )

    @staticmethod
    def _typical_size(samples: Sequence[Sample]) -> Tuple[int, int]:
        """The median ``(height, width)`` of up to 32 evenly spread samples (read from their headers)."""
        sizes = [image_size(samples[i].path) for i in spread_indices(len(samples), 32)]
        return (sorted(h for h, _ in sizes)[len(sizes) // 2], sorted(w for _, w in sizes)[len(sizes) // 2])

    # ------------------------------------------------------------------ setup

    def _labelled_samples(self) -> List[Sample]:
        if self._labelled is None:
            samples = self._check_images(self.collect_test(), "test set")
            self._check_relpaths(samples, "test set")
            self._check_masks(samples)
            if not any(s.label == ANOMALOUS for s in samples) or not any(s.label == NORMAL for s in samples):
                present = "anomalous" if any(s.label == ANOMALOUS for s in samples) else "normal"
                rank_zero_warn(
                    f"the test set holds only {present} images: image AUROC is undefined and will not be logged."
                )
            self._labelled = samples
        return self._labelled

    def _split_val(self, samples: List[Sample]) -> Tuple[List[Sample], List[Sample]]:
        if self.val_split == 0:
            return [], samples
        groups: Dict[str, List[int]] = {}
        for i, sample in enumerate(samples):
            groups.setdefault(sample.group, []).append(i)
        val_positions = set()
        for positions in groups.values():
            val_positions.update(positions[j] for j in interleaved_split(len(positions), self.val_split))
        val = [s for i, s in enumerate(samples) if i in val_positions]
        test = [s for i, s in enumerate(samples) if i not in val_positions]
        if not test:
            raise ConfigurationError(f"val_split={self.val_split} leaves no test image")
        return val, test

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            train = self._check_images(self.collect_train(), "training set")
            self.train_dataset = AnomalyDataset(train, self.preprocess)
            rank_zero_info(f"training set: {len(train)} normal images")
            if advice := aspect_advice(self._typical_size(train), self.preprocess):
                rank_zero_info(advice)
        if stage in (None, "fit", "validate") and self.val_split > 0 and self.val_dataset is None:
            val, _ = self._split_val(self._labelled_samples())
            self.val_dataset = AnomalyDataset(val, self.preprocess)
        if stage in (None, "test") and self.test_dataset is None:
            _, test = self._split_val(self._labelled_samples())
            self.test_dataset = AnomalyDataset(test, self.preprocess)
            anomalous = sum(s.label == ANOMALOUS for s in test)
            rank_zero_info(f"test set: {len(test) - anomalous} normal and {anomalous} anomalous images")
            if anomalous and not self.test_dataset.has_masks:
                rank_zero_warn(
                    "the anomalous test images have no masks: only image-level metrics can be computed; "
                    "pixel AUROC and PRO will be skipped."
                )
        if stage in (None, "predict") and self.predict_dataset is None:
            if self.predict_dir is None:
                if stage == "predict":
                    raise ConfigurationError(
                        "predict needs a folder of images: set data predict_dir (--data.predict_dir DIR)."
                    )
            else:
                root = Path(self.predict_dir)
                files = drop_conventional_masks(
                    list_images(root, recursive=True, what="predict_dir"),
                    "predict_dir",
                    advice="They are not predicted (move them out of predict_dir to silence this warning).",
                )
                samples = [Sample(p, UNLABELLED, None, "predict", safe_relpath(p, root)) for p in files]
                self._check_relpaths(samples, "predict set")
                self.predict_dataset = AnomalyDataset(self._check_images(samples, "predict set"), self.preprocess)

    # ------------------------------------------------------------------ loaders

    def _loader(self, dataset: Optional[AnomalyDataset], stage: str) -> DataLoader:
        if dataset is None:
            raise DataError(f"no {stage} data: call setup('{stage}') first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=False,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "fit")

    def val_dataloader(self):  # type: ignore[override]
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        loader = self._loader(self.predict_dataset, "predict")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Lightning's unrepeated sampler refuses fewer images than processes; this one does not.
            sampler = OwnerSampler(loader.dataset, dist.get_world_size(), dist.get_rank())
            loader = DataLoader(loader.dataset, batch_size=self.batch_size, sampler=sampler,
                                num_workers=self.num_workers, drop_last=False)
        return loader
