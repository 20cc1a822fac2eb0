"""Which files of a folder are images, and the relative path that names each in outputs.

Folders
=======

* Files are images by extension (:data:`IMAGE_EXTENSIONS`, case-insensitive).
  Hidden files (``.DS_Store``, ``._x.png``), ``Thumbs.db``, ``desktop.ini``,
  sub-folders and files of other types (``.txt``, ``.json`` ...) in an image
  folder are ignored. Files of image types that cannot be read here
  (:data:`UNSUPPORTED_IMAGE_EXTENSIONS`, e.g. ``.heic``) are skipped with a
  warning that names the types; a folder with no readable image (missing,
  empty, or holding only such files) is an error naming the folder. Image
  folders are not searched recursively (except ``predict_dir``): images found
  only in subfolders are named in that error.
* Files that are masks are never images (:mod:`lightning_ad.data.mask_files`).

Outputs
=======

* Each sample carries ``relpath``, its path relative to its data set folder,
  used to name output files. It is always relative, uses ``/``, and never
  contains ``..`` (see :func:`safe_relpath`), so outputs derived from it stay
  inside the output folder. Two samples of the test (or predict) set that would
  share one is an error naming both images.
* Output files drop the image's extension (``a.jpg`` gives ``overlays/a.png``); images of
  one set that share a stem (``a.jpg`` beside ``a.bmp``) keep theirs (``a.jpg.png``,
  ``a.bmp.png``) so that no output collides.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePosixPath
from typing import List, Optional

from ..errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "UNSUPPORTED_IMAGE_EXTENSIONS", "is_image_file", "list_images", "safe_relpath"]

#: Extensions read as images.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"})
#: Image types that are recognised but not read (skipped with a warning).
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".heic", ".heif", ".avif", ".gif", ".raw", ".dng", ".cr2", ".nef", ".arw", ".jp2", ".exr", ".svg", ".psd"}
)
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an image extension."""
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and path.name.lower() not in _IGNORED_NAMES
        and path.is_file()
    )


def list_images(folder: Path, *, recursive: bool = False, what: str = "image folder") -> List[Path]:
    """Sorted image files of ``folder`` (see the module rules); errors name the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{what} {str(folder)!r} does not exist. Check the path (relative paths start from {str(Path.cwd())!r}).")
    if not folder.is_dir():
        raise DataError(f"{what} {str(folder)!r} is not a folder.")
    try:
        entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
    except OSError as err:
        raise DataError(f"{what} {str(folder)!r} cannot be listed ({type(err).__name__}: {err}).") from None
    images = [p for p in entries if is_image_file(p)]
    unsupported_files = [
        p for p in entries if p.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    unsupported = sorted({p.suffix.lower() for p in unsupported_files})
    if unsupported:
        message = (
            f"{what} {str(folder)!r}: {len(unsupported_files)} file(s) of unsupported image type(s) {unsupported} "
            f"(e.g. {str(unsupported_files[0])!r}) are skipped; convert them to one of {sorted(IMAGE_EXTENSIONS)}."
        )
        if not images:
            raise DataError(message.replace("are skipped", "cannot be read") + " The folder has no readable image.")
        warnings.warn(message, UserWarning, stacklevel=2)
    if not images:
        nested = [] if recursive else [p for p in sorted(folder.rglob("*")) if is_image_file(p)][:1]
        raise DataError(
            f"{what} {str(folder)!r} holds no image file (extensions {sorted(IMAGE_EXTENSIONS)})"
            + (" in it or its subfolders" if recursive else "")
            + "."
            + (f" Subfolders are not searched, and {str(nested[0])!r} lies in one: move the images up." if nested else "")
        )
    return images


def safe_relpath(path: Path, root: Optional[Path]) -> str:
    """``path`` relative to ``root`` as a POSIX string that never leaves it.

    The result has no ``..``, no ``.`` and no drive or leading ``/``, so that an output
    named after it stays inside any output folder. When ``path`` is not below ``root``
    (or ``root`` is None) the file name alone is used.
    """
    name = Path(path).name
    if root is not None:
        rel = os.path.relpath(os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(root)))
        parts = [p for p in PurePosixPath(rel.replace(os.sep, "/")).parts if p not in ("", ".")]
        if parts and ".." not in parts and not os.path.isabs(rel):
            return "/".join(parts)
    return name

