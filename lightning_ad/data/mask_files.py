"""Which files of an image folder are masks: the common naming conventions, and what to do with them.

A mask is never an image. Besides a datamodule's own rule (``mask_pattern``, MVTec's
``ground_truth``), these conventions name a file the mask of another file of the same
folder:

* ``<stem>_mask.<ext>`` beside ``<stem>.<ext2>`` (MVTec's names, masks kept with the images);
* ``<stem>.png`` beside ``<stem>.jpg`` / ``.jpeg`` / ``.bmp`` (Magnetic Tile: a lossless
  mask beside a lossy photo).

Extensions compare case-insensitively, stems exactly. A file named a mask by a
convention only must look like one (:func:`~lightning_ad.data.masks.mask_problem`); a
colour photo there is an error naming it: the names cannot tell mask from picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Dict, List, Optional, Sequence, Tuple

from pytorch_lightning.utilities import rank_zero_warn

from ..errors import DataError
from .masks import mask_problem

__all__ = ["MASK_SUFFIX", "conventional_masks", "drop_conventional_masks", "is_mask_name"]

#: Stem suffix of MVTec mask files (``<stem>_mask.png``).
MASK_SUFFIX = "_mask"
# Lossy or uncompressed photo types whose same-stem ``.png`` partner is taken for their mask.
_PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".bmp"})


def is_mask_name(path: Path) -> bool:
    """True for ``<anything>_mask.<ext>`` (case-insensitive): MVTec's mask names."""
    stem = Path(path).stem
    return stem.lower().endswith(MASK_SUFFIX) and len(stem) > len(MASK_SUFFIX)


def conventional_masks(files: Sequence[Path]) -> Dict[Path, Tuple[Path, str]]:
    """Files of ``files`` that a convention names the mask of another of ``files``.

    Returns ``{mask: (image, pattern)}``; ``pattern`` is the ``mask_pattern`` that names
    this mask (``"{stem}_mask.png"``, ``"{stem}.png"`` ...). Only files of the same folder
    pair up.
    """
    by_stem: Dict[Tuple[Path, str], List[Path]] = {}
    for path in files:
        by_stem.setdefault((path.parent, path.stem), []).append(path)
    found: Dict[Path, Tuple[Path, str]] = {}
    for path in files:
        partners: List[Path] = []
        pattern = ""
        if is_mask_name(path):
            stem = path.stem[: -len(MASK_SUFFIX)]
            partners = [p for p in by_stem.get((path.parent, stem), []) if p != path]
            pattern = "{stem}" + path.stem[len(stem):] + path.suffix
        if not partners and path.suffix.lower() == ".png":
            partners = [p for p in by_stem[(path.parent, path.stem)] if p.suffix.lower() in _PHOTO_EXTENSIONS]
            pattern = "{stem}" + path.suffix
        if partners:
            found[path] = (sorted(partners)[0], pattern)
    return found


def drop_conventional_masks(
    files: Sequence[Path], what: str, *, declared: Collection[Path] = (), advice: str, declare: Optional[str] = None
) -> List[Path]:
    """``files`` without the masks: those in ``declared`` (named by the datamodule's own rule)
    and those a convention names (see the module rules), with one warning per folder.

    Args:
        files: image files, sorted.
        what: the setting the files come from (``normal_dir`` ...), named in messages.
        declared: files the datamodule already takes for masks (no check, no warning).
        advice: the end of the warning: what the conventional masks are taken for and how
            to use them; ``{pattern}`` is replaced by the ``mask_pattern`` that names them.
        declare: how to declare a mask rule, for the error (``{pattern}`` replaced); None: none.

    Raises:
        DataError: a file named a mask by a convention only does not look like a mask.
    """
    declared = set(declared)
    candidates = [f for f in files if f not in declared]
    found = conventional_masks(candidates)
    for mask, (image, pattern) in found.items():
        problem = mask_problem(mask)
        if problem is not None:
            declare_hint = ", or, if it is a mask, " + declare.replace("{pattern}", pattern) if declare else ""
            raise DataError(
                f"{what}: {str(mask)!r} {problem}, but its name makes it the mask of {str(image)!r} "
                f"(the convention {pattern!r}), so it is neither clearly an image nor clearly a mask. "
                f"If both files are pictures, rename one of them{declare_hint}."
            )
    folders: Dict[Path, List[Path]] = {}
    for mask in found:
        folders.setdefault(mask.parent, []).append(mask)
    for folder, masks in folders.items():
        image, pattern = found[masks[0]]
        rank_zero_warn(
            f"{what} {str(folder)!r}: {len(masks)} file(s) are the masks of images beside them by their names "
            f"(e.g. {masks[0].name!r} of {image.name!r}); they are not used as images. "
            + advice.replace("{pattern}", pattern)
        )
    return [f for f in candidates if f not in found]
