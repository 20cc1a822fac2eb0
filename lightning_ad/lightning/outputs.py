"""Output files of ``test`` and ``predict``: safe names, and atomic writes of maps, pictures and CSV files.

Every file is written atomically (:func:`lightning_ad.files.atomic_write`: a temporary file in the
target folder, then ``os.replace``), so a reader never sees half a file and two processes writing
the same file leave one complete copy. File names come from each sample's ``relpath`` (its path
relative to the data set's folder) made safe by :func:`sanitize_relpath`: they always stay inside
the output folder.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image
from torch import Tensor

from ..files import atomic_write
from ..inference import visualize as V

__all__ = [
    "sanitize_relpath",
    "is_within",
    "output_stems",
    "OutputNames",
    "atomic_write",
    "save_map_tiff",
    "save_png",
    "save_csv",
    "batch_image",
    "dataloaders",
    "dataset_relpaths",
]


# ---------------------------------------------------------------------- names


def sanitize_relpath(relpath: Any, fallback: str = "image") -> PurePosixPath:
    """A relative POSIX path that cannot leave the folder it is joined to.

    Backslashes count as separators; a drive (``C:``), the root, empty, ``.`` and
    ``..`` components are dropped, as are control characters. ``"sub/a.png"`` stays
    ``sub/a.png``; ``"../../x.png"`` and ``"/etc/x.png"`` become ``x.png`` and
    ``etc/x.png``. An empty result becomes ``fallback``.
    """
    text = str(relpath if relpath is not None else "").replace("\\", "/")
    text = re.sub(r"^[A-Za-z]:", "", text)
    text = re.sub(r"[\x00-\x1f\x7f]", "_", text)
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    return PurePosixPath(*parts) if parts else PurePosixPath(fallback)


def is_within(child: Path, parent: Path) -> bool:
    """Whether ``child`` is ``parent`` or lies below it (after resolving links and ``..``)."""
    child_r, parent_r = os.path.realpath(child), os.path.realpath(parent)
    try:
        return os.path.commonpath([child_r, parent_r]) == parent_r
    except ValueError:  # different drives
        return False


def output_stems(relpaths: List[str]) -> Dict[str, PurePosixPath]:
    """Output base names (no extension) of a set's images: ``a.jpg`` gives ``a``, unless another
    image of the set shares that stem (``a.jpg`` beside ``a.png``): both then keep their
    extension (``a.jpg``, ``a.png``), so that no two outputs collide.

    >>> output_stems(["x/a.jpg", "x/a.png", "b.bmp"])
    {'x/a.jpg': PurePosixPath('x/a.jpg'), 'x/a.png': PurePosixPath('x/a.png'), 'b.bmp': PurePosixPath('b')}
    """
    safe = {r: sanitize_relpath(r) for r in relpaths}
    stems = [str(p.with_suffix("")) for p in safe.values()]
    return {r: (p if stems.count(str(p.with_suffix(""))) > 1 else p.with_suffix("")) for r, p in safe.items()}


class OutputNames:
    """Unique output base names per image: its stem (see :func:`output_stems`), ``<stem>~<index>`` on a clash.

    ``relpaths`` are the set's images (their stems decide which keep an extension). With
    ``indices`` (each image's dataset index, in the set's order) the names are fixed up front, a
    pure function of the set: :meth:`name` then gives every process the same name for an image,
    whichever process draws it.
    """

    def __init__(self, relpaths: Optional[Sequence[str]] = None, indices: Optional[Iterable[int]] = None) -> None:
        self.stems = output_stems(list(relpaths or []))
        self.used: Set[str] = set()
        self.fixed: Dict[int, PurePosixPath] = {}
        if indices is not None:
            for relpath, index in zip(relpaths or [], indices):
                self.fixed[int(index)] = self.claim(relpath, int(index), lambda b: False)

    def claim(self, relpath: str, index: int, exists: Callable[[PurePosixPath], bool]) -> PurePosixPath:
        """A new name for image ``index``: its stem, or ``<stem>~<index>`` when taken or ``exists(stem)``."""
        base = self.stems.get(relpath) or output_stems([relpath])[relpath]
        if str(base) in self.used or exists(base):
            base = base.with_name(f"{base.name}~{index}")
        self.used.add(str(base))
        return base

    def name(self, relpath: str, index: int) -> PurePosixPath:
        """The fixed name of image ``index`` (see the class), or a new one for an image the set did not list."""
        if int(index) in self.fixed:
            return self.fixed[int(index)]
        base = self.claim(relpath, int(index), lambda b: False)
        self.fixed[int(index)] = base
        return base


# ---------------------------------------------------------------------- files


def save_map_tiff(path: Path, anomaly_map: Any) -> None:
    """Raw map ``[H, W]`` as a float32 TIFF (PIL mode ``F``, uncompressed: lossless), atomically."""
    array = np.ascontiguousarray(V.to_numpy(anomaly_map), dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a map [H, W], got shape {tuple(array.shape)}")
    image = Image.fromarray(array)
    assert image.mode == "F"
    atomic_write(path, lambda handle: image.save(handle, format="TIFF"))


def save_png(path: Path, rgb: np.ndarray) -> None:
    """``[H, W, 3]`` uint8 as PNG, atomically."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def save_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A UTF-8 CSV file (``csv`` module defaults: commas, ``\\r\\n`` line ends), atomically."""

    def write(handle: BinaryIO) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(header)
        writer.writerows(rows)
        text.flush()
        text.detach()

    atomic_write(path, write)


# ---------------------------------------------------------------------- batches and data sets


def batch_image(images: Optional[Tensor], i: int, hw: Tuple[int, int]) -> np.ndarray:
    """Image ``i`` of the batch as ``[H, W, 3]`` uint8 at the map's size (grey when unavailable)."""
    if images is None:
        return np.full((*hw, 3), 128, np.uint8)
    rgb = V.image_to_uint8(images[i].detach().float().cpu())
    if rgb.shape[:2] != tuple(hw):
        rgb = np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR))
    return rgb


def dataloaders(loaders: Any) -> List[Any]:
    """The trainer's dataloaders of a stage (one, a list, a dict, or None) as a list."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def dataset_relpaths(loaders: Any) -> List[str]:
    """``relpath`` of every sample of the loaders' data sets, in order (empty when they do not say)."""
    relpaths: List[str] = []
    for loader in dataloaders(loaders):
        for sample in getattr(getattr(loader, "dataset", None), "samples", None) or ():
            path = getattr(sample, "path", None)
            relpaths.append(str(getattr(sample, "relpath", None) or (Path(path).name if path else "")))
    return relpaths
