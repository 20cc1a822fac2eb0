"""Installing the demo data set into a folder, in the MVTec AD layout.

:func:`make_demo_dataset` writes the pictures of :mod:`lightning_ad.data.demo_render` so that
the library's main command can run on a fresh machine without any download. The set is
written into a temporary sibling folder and renamed into place when complete, with its
arguments as JSON (a stamp written first: "this folder is ours"; a marker written last: "it
is complete"). A folder it did not make is never touched; one it made with other arguments,
or left incomplete, is replaced only when asked; leftovers of interrupted runs of this
machine are removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Dict, Union

import numpy as np
from PIL import Image

from ..errors import LightningADError
from .demo_render import DEMO_DEFECT_TYPES, DEMO_FORMAT_VERSION, render_sample

__all__ = ["DEMO_CATEGORY", "DemoDatasetError", "make_demo_dataset"]

#: Name of the category folder written by :func:`make_demo_dataset`.
DEMO_CATEGORY = "demo_parts"

# Recorded in the marker files; kept from before the renderer had its own module, so that
# folders made earlier are still recognised (and the files stay byte-identical).
_GENERATOR = "lightning_ad.data.demo"
_MARKER = ".complete"  # written last; holds the arguments as JSON
_STAMP = ".lightning_ad_demo.json"  # written first; "this folder is ours"
_TMP_TAG = ".partial-"
_OLD_TAG = ".replaced-"

PathLike = Union[str, "os.PathLike[str]"]


class DemoDatasetError(LightningADError, RuntimeError):
    """The target folder exists and cannot be used or replaced."""


def make_demo_dataset(
    root: PathLike,
    category: str = DEMO_CATEGORY,
    *,
    n_train: int = 40,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    image_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate (or reuse) the demo inspection data set and return its folder.

    Layout (MVTec AD), with ``NNN`` counting from ``000``::

        <root>/<category>/train/good/NNN.png
        <root>/<category>/test/good/NNN.png
        <root>/<category>/test/<defect>/NNN.png
        <root>/<category>/ground_truth/<defect>/NNN_mask.png

    for ``<defect>`` in :data:`DEMO_DEFECT_TYPES` (``scratch``, ``stain``,
    ``hole``).  Images are RGB PNGs of ``image_size`` x ``image_size``
    pixels; masks are single-channel (``L``) PNGs of the same size holding
    255 exactly on the pixels the defect changed and 0 elsewhere.  Good
    images have no mask.  Each defect covers a fraction of the image inside
    :data:`DEMO_MASK_FRACTION` and lies inside the central 224/256 crop with
    a margin.

    Args:
        root: folder that receives the category folder (created if missing).
        category: name of the category folder (a plain folder name).
        n_train: number of defect-free training images.
        n_test_good: number of defect-free test images.
        n_test_per_defect: number of test images (and masks) per defect type.
        image_size: side of the square images in pixels (at least 64).
        seed: seed of the generator.  The same arguments give byte-identical
            files (with the same numpy, scipy and Pillow versions on the same
            platform); every image has its own random stream, so image ``k``
            does not depend on how many images are requested.
        overwrite: replace an existing folder that this function made with
            other arguments, or that it left incomplete.  A folder it did not
            make is never deleted, not even with ``overwrite=True``.

    Returns:
        ``Path(root) / category``.

    Behaviour with existing files: when the folder already holds a complete
    data set made with the same arguments (its ``.complete`` marker, written
    last, records them) it is returned untouched.  A new data set is written
    into a temporary sibling folder which is renamed into place only when
    complete, so an interrupted run never leaves a folder that looks
    complete; leftovers of interrupted runs of this machine are removed on
    the next generation.  An empty folder is simply filled.  Any other
    existing folder raises :class:`DemoDatasetError` naming it, unless
    ``overwrite=True`` and it is a data set made by this function.

    Licence: the content is generated procedurally from the seed; it contains
    no third-party images or data.
    """
    params = _check_args(
        category, n_train, n_test_good, n_test_per_defect, image_size, seed
    )
    root = Path(os.fspath(root))
    target = root / category

    state = _inspect(target, params)
    if state == "complete":
        return target
    if state in ("mismatch", "incomplete") and not overwrite:
        raise DemoDatasetError(_refusal(target, state, params))
    if state == "foreign":
        raise DemoDatasetError(
            f"{target} exists and was not made by make_demo_dataset (no "
            f"{_STAMP} inside); refusing to touch it, even with "
            "overwrite=True. Move or delete it yourself, or choose another "
            "root/category."
        )

    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root, category)
    tmp = _new_sibling(root, f".{category}{_TMP_TAG}{os.getpid()}-")
    try:
        _write_json(tmp / _STAMP, {**params, "host": socket.gethostname(), "pid": os.getpid()})
        _generate_into(tmp, params)
        _write_json(tmp / _MARKER, params)  # last file: the set is complete
        _install(tmp, target, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------
# folder bookkeeping
# --------------------------------------------------------------------------
def _check_args(category, n_train, n_test_good, n_test_per_defect, image_size, seed) -> Dict:
    if not isinstance(category, str) or category in ("", ".", "..") or any(
        sep in category for sep in ("/", "\\", os.sep)
    ) or category.startswith("."):
        raise ValueError(f"category must be a plain folder name, got {category!r}")
    for name, value, low in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_per_defect", n_test_per_defect, 0),
        ("image_size", image_size, 64),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    return {
        "generator": _GENERATOR,
        "format_version": DEMO_FORMAT_VERSION,
        "category": category,
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "image_size": int(image_size),
        "seed": int(seed),
        "defect_types": list(DEMO_DEFECT_TYPES),
    }


def _read_json(path: Path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _inspect(target: Path, params: Dict) -> str:
    """One of: missing, empty, complete, mismatch, incomplete, foreign."""
    if not os.path.lexists(target):
        return "missing"
    if target.is_symlink() or not target.is_dir():
        return "foreign"
    if not any(target.iterdir()):
        return "empty"
    marker = _read_json(target / _MARKER)
    if isinstance(marker, dict) and marker.get("generator") == _GENERATOR:
        return "complete" if marker == params else "mismatch"
    stamp = _read_json(target / _STAMP)
    if isinstance(stamp, dict) and stamp.get("generator") == _GENERATOR:
        return "incomplete"
    return "foreign"


def _refusal(target: Path, state: str, params: Dict) -> str:
    if state == "mismatch":
        old = _read_json(target / _MARKER) or {}
        diff = ", ".join(
            f"{k}={old.get(k)!r} (requested {params[k]!r})"
            for k in sorted(params)
            if old.get(k) != params[k]
        )
        return (
            f"{target} holds a demo data set made with other arguments: {diff}. "
            "Pass overwrite=True to replace it, or choose another root/category."
        )
    return (
        f"{target} holds an incomplete demo data set (no {_MARKER} marker; an "
        "earlier run was probably interrupted). Pass overwrite=True to replace it."
    )


def _new_sibling(parent: Path, prefix: str) -> Path:
    """Create a new empty folder ``parent/prefix<random>`` (umask permissions)."""
    while True:
        path = parent / (prefix + secrets.token_hex(4))
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_partials(root: Path, category: str) -> None:
    """Delete temporary folders of dead generator processes of this host."""
    host = socket.gethostname()
    for prefix in (f".{category}{_TMP_TAG}", f".{category}{_OLD_TAG}"):
        for path in root.glob(prefix + "*"):
            if path.is_symlink() or not path.is_dir():
                continue
            stamp = _read_json(path / _STAMP)
            if not (isinstance(stamp, dict) and stamp.get("generator") == _GENERATOR):
                continue  # not ours (or the stamp is not yet written): leave it
            if prefix.endswith(_TMP_TAG):
                pid = stamp.get("pid")
                if stamp.get("host") != host or not isinstance(pid, int) or _pid_alive(pid):
                    continue
            shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, target: Path, params: Dict) -> None:
    """Atomically move the finished folder ``tmp`` to ``target``."""
    old = None
    state = _inspect(target, params)
    if state in ("mismatch", "incomplete"):  # ours and overwrite=True
        old = _new_sibling(target.parent, f".{target.name}{_OLD_TAG}")
        os.rmdir(old)  # only reserved the name
        os.replace(target, old)
    elif state == "empty":
        try:
            os.rmdir(target)
        except OSError:
            pass
    try:
        os.replace(tmp, target)
    except OSError:
        # Someone else finished first: accept their result if it is ours too.
        if _inspect(target, params) == "complete":
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return
        if old is not None and not os.path.lexists(target):
            os.replace(old, target)
        raise DemoDatasetError(f"could not move the generated data set into {target}")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _generate_into(folder: Path, params: Dict) -> None:
    size, seed = params["image_size"], params["seed"]
    jobs = [("train", "good", params["n_train"]), ("test", "good", params["n_test_good"])]
    jobs += [("test", d, params["n_test_per_defect"]) for d in DEMO_DEFECT_TYPES]
    for split, kind, count in jobs:
        img_dir = folder / split / kind
        img_dir.mkdir(parents=True)
        mask_dir = None
        if kind != "good":
            mask_dir = folder / "ground_truth" / kind
            mask_dir.mkdir(parents=True)
        width = max(3, len(str(count - 1)))
        for i in range(count):
            image, mask = render_sample(seed, split, kind, i, size)
            name = f"{i:0{width}d}"
            _save_png(Image.fromarray(image, "RGB"), img_dir / f"{name}.png")
            if mask_dir is not None:
                _save_png(Image.fromarray(mask.astype(np.uint8) * 255, "L"),
                          mask_dir / f"{name}_mask.png")


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", compress_level=1)

