"""A user's own folders: normal images, one or more folders of defective images, masks by a name rule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from pytorch_lightning.utilities import rank_zero_info

from ..core.spread import interleaved_split
from ..errors import ConfigurationError, DataError, MaskError
from .datamodule import AnomalyDataModule
from .dataset import ANOMALOUS, NORMAL, Sample
from .folders import list_images, safe_relpath
from .mask_files import drop_conventional_masks

__all__ = ["FolderDataModule"]


class FolderDataModule(AnomalyDataModule):
    """Images in plain folders.

    * ``normal_dir``: defect-free images. Unless ``normal_test_dir`` is given, a
      deterministic share ``normal_test_split`` of them (sorted by name, evenly spread:
      0.2 takes the 1st, 6th, 11th ...) is held out as normal test images; the rest
      trains.
    * ``abnormal_dirs``: one or more folders of defective test images (each folder is
      a defect group).
    * Masks: the mask of image ``<stem>.<ext>`` is ``mask_pattern`` formatted with
      ``stem`` (``"{stem}_mask.png"``, ``"{stem}.png"`` ...), looked up in ``mask_dir``
      (mirroring each image folder's name below it) or, when ``mask_dir`` is None,
      beside the image.
    * Mask files are never images: neither those ``mask_pattern`` names, nor (whatever
      ``mask_pattern`` says) those the common conventions name
      (:mod:`~lightning_ad.data.mask_files`: ``<stem>_mask.<ext>`` beside
      ``<stem>.<ext2>``, a ``.png`` beside a ``.jpg``/``.jpeg``/``.bmp`` of the same
      stem). The latter are left out with a warning that names the folder, the count
      and the ``mask_pattern`` that would use them; one that is not a mask (a colour
      photo) is an error naming it. With
      ``mask_pattern=None``, or when no defective image has a mask, the set is served
      for image-level metrics only; when some have masks and others not, it is an error,
      and so it is when ``mask_dir`` is set but holds no mask of a defective image.
      A mask found for a normal test image must be empty. The other mask rules are
      those of :mod:`lightning_ad.data.masks`.
    * Every folder has one role: ``normal_dir``, ``normal_test_dir`` and the
      ``abnormal_dirs`` entries must be distinct folders (else an error).
    * Groups (and the first part of the defective images' ``relpath``) are the
      folders' paths below ``root``, or their names; folders of the same name
      (``cam1/defect``, ``cam2/defect``) are named by their paths below their common
      folder. With ``mask_dir`` such folders are an error (their masks would mix).

    Relative folders are taken from ``root`` when it is set.

    Args:
        normal_dir: folder of normal images.
        abnormal_dirs: folder or list of folders of anomalous images.
        normal_test_dir: folder of normal test images (then all of ``normal_dir`` trains).
        root: base of relative folders.
        mask_pattern: mask file name rule, or None for no masks.
        mask_dir: folder of masks (``<mask_dir>/<image folder name>/<mask name>``); None: beside the images.
        normal_test_split: share of ``normal_dir`` held out for testing, in [0, 1).
        **kwargs: see AnomalyDataModule.
    """

    def __init__(
        self,
        normal_dir: str,
        abnormal_dirs: Union[str, Sequence[str]] = (),
        normal_test_dir: Optional[str] = None,
        root: Optional[str] = None,
        mask_pattern: Optional[str] = "{stem}_mask.png",
        mask_dir: Optional[str] = None,
        normal_test_split: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root) if root is not None else None
        self.normal_dir = self._resolve(normal_dir)
        dirs = [abnormal_dirs] if isinstance(abnormal_dirs, (str, Path)) else list(abnormal_dirs)
        self.abnormal_dirs = [self._resolve(d) for d in dirs]
        self.normal_test_dir = self._resolve(normal_test_dir) if normal_test_dir is not None else None
        if mask_pattern is not None and "{stem}" not in mask_pattern:
            raise ConfigurationError(f"mask_pattern={mask_pattern!r} must contain '{{stem}}', e.g. '{{stem}}_mask.png'")
        self.mask_pattern = mask_pattern
        self.mask_dir = self._resolve(mask_dir) if mask_dir is not None else None
        if not isinstance(normal_test_split, (int, float)) or not 0 <= normal_test_split < 1:
            raise ConfigurationError(f"normal_test_split={normal_test_split!r} must lie in [0, 1)")
        self.normal_test_split = float(normal_test_split)
        self._listed: Dict[Path, List[Path]] = {}

    def _resolve(self, folder: Union[str, Path]) -> Path:
        path = Path(folder).expanduser()
        return path if path.is_absolute() or self.root is None else self.root / path

    def _group(self, folder: Path) -> str:
        """Name of a folder's group (and first part of its images' ``relpath``): below ``root``
        when it lies there, else its name; made unique among ``abnormal_dirs``."""
        groups = self._abnormal_groups()
        for other, name in zip(self.abnormal_dirs, groups):
            if other == folder:
                return name
        return safe_relpath(folder, self.root) if self.root is not None else folder.name

    def _abnormal_groups(self) -> List[str]:
        names = [safe_relpath(d, self.root) if self.root is not None else d.name for d in self.abnormal_dirs]
        if len(set(names)) < len(names):  # e.g. cam1/defect and cam2/defect: name them below their common folder
            base = os.path.commonpath([os.path.abspath(d) for d in self.abnormal_dirs])
            names = [safe_relpath(d, Path(base)) for d in self.abnormal_dirs]
        return names

    def _check_folders(self) -> None:
        """The folders are distinct (a normal image must never be tested as anomalous, nor trained on and tested)."""
        roles = [("normal_dir", self.normal_dir)]
        if self.normal_test_dir is not None:
            roles.append(("normal_test_dir", self.normal_test_dir))
        roles += [("abnormal_dirs entry", d) for d in self.abnormal_dirs]
        seen: Dict[str, tuple] = {}
        for role, folder in roles:
            key = os.path.normcase(os.path.realpath(folder))
            if key in seen:
                raise ConfigurationError(
                    f"{role} {str(folder)!r} is the same folder as {seen[key][0]} {str(seen[key][1])!r}: each folder "
                    "may have one role only (training on test images, or testing normal images as anomalous, "
                    "gives results that look valid but are not)."
                )
            seen[key] = (role, folder)
        if self.mask_dir is not None:
            if not self.mask_dir.is_dir():
                raise DataError(f"mask_dir {str(self.mask_dir)!r} does not exist or is not a folder.")
            names = [d.name for d in self.abnormal_dirs]
            clash = sorted({n for n in names if names.count(n) > 1})
            if clash:
                raise ConfigurationError(
                    f"abnormal_dirs has several folders named {clash}: their masks would all be looked up in "
                    f"{str(self.mask_dir / clash[0])!r}. Rename the folders, or keep the masks beside the images "
                    "(mask_dir: null)."
                )

    def _mask_of(self, image: Path) -> Optional[Path]:
        if self.mask_pattern is None:
            return None
        name = self.mask_pattern.format(stem=image.stem)
        folder = image.parent if self.mask_dir is None else self.mask_dir / image.parent.name
        return folder / name

    def _images(self, folder: Path, what: str) -> List[Path]:
        """Images of ``folder``: its image files less the masks (by ``mask_pattern`` and by
        the conventions of :mod:`~lightning_ad.data.mask_files`). Listed once per folder."""
        if folder in self._listed:
            return self._listed[folder]
        files = list_images(folder, what=what)
        # a file is a mask when it is the mask of ANOTHER file of the folder
        declared = {self._mask_of(f) for f in files if self._mask_of(f) not in (None, f)}
        if self.mask_pattern is None:
            why = "Masks are off (mask_pattern: null): to use them"
        elif self.mask_dir is not None:
            why = f"Masks are read from mask_dir {str(self.mask_dir)!r}: to use these instead, unset mask_dir and"
        else:
            why = f"mask_pattern={self.mask_pattern!r} names other files: to use them"
        images = drop_conventional_masks(
            files,
            what,
            declared=declared,
            advice=f"{why} set mask_pattern, e.g. --data.init_args.mask_pattern \"{{pattern}}\".",
            declare='set mask_pattern, e.g. --data.init_args.mask_pattern "{pattern}"',
        )
        if not images:
            raise DataError(f"{what} {str(folder)!r} holds only mask files (mask_pattern={self.mask_pattern!r}).")
        self._listed[folder] = images
        return images

    def _normal_split(self) -> tuple:
        self._check_folders()
        normals = self._images(self.normal_dir, "normal_dir")
        if self.normal_test_dir is not None:
            return normals, self._images(self.normal_test_dir, "normal_test_dir")
        held = set(interleaved_split(len(normals), self.normal_test_split))
        train = [p for i, p in enumerate(normals) if i not in held]
        test = [p for i, p in enumerate(normals) if i in held]
        if not train:
            raise DataError(f"normal_dir {str(self.normal_dir)!r}: no image left for training after the test split.")
        return train, test

    def collect_train(self) -> List[Sample]:
        train, _ = self._normal_split()
        return [Sample(p, NORMAL, None, self._group(p.parent), p.name) for p in train]

    def collect_test(self) -> List[Sample]:
        _, normal_test = self._normal_split()
        if not self.abnormal_dirs and not normal_test:
            raise DataError("no test images: set abnormal_dirs and/or normal_test_dir (or normal_test_split > 0).")
        samples = []
        for path in normal_test:
            mask = self._mask_of(path)
            samples.append(Sample(path, NORMAL, mask if mask is not None and mask.is_file() and mask != path else None, "good", path.name))
        for folder, group in zip(self.abnormal_dirs, self._abnormal_groups()):
            for path in self._images(folder, "abnormal_dirs entry"):
                mask = self._mask_of(path)
                found = mask if mask is not None and mask.is_file() and mask != path else None
                expected = mask if found is None and mask != path else None
                samples.append(Sample(path, ANOMALOUS, found, group, f"{group}/{path.name}", expected))
        anomalous = [s for s in samples if s.label == ANOMALOUS]
        if self.mask_pattern is not None and anomalous and not any(s.mask for s in anomalous):
            if self.mask_dir is not None:
                example = anomalous[0]
                raise MaskError(
                    f"mask_dir {str(self.mask_dir)!r} is set but holds no mask of an anomalous image: e.g. the mask "
                    f"of {str(example.path)!r} must be {str(example.expected_mask)!r} (mask_pattern="
                    f"{self.mask_pattern!r}, below mask_dir/<image folder name>/). Fix the names, or unset mask_dir."
                )
            rank_zero_info(f"no mask found with mask_pattern={self.mask_pattern!r}: image-level metrics only.")
        return samples
