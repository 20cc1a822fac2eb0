"""Shared fixtures and data builders: the real data folder (one setting), tiny generated data sets.

Builders write small image files in the layouts the datamodules read:

* :func:`make_mvtec`: an MVTec AD category (``train/good``, ``test/<defect>``,
  ``ground_truth/<defect>/<stem>_mask.png``);
* :func:`make_image_folder` / :func:`make_magnetic_tile`: plain folders of ``<stem>.jpg``
  with, optionally, the mask ``<stem>.png`` beside each (the Magnetic Tile layout).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import numpy as np
import pytest
import pytorch_lightning as pl
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: The one setting that locates the real data (MVTec AD bottle, Magnetic Tile).
DATA_ENV = "LIGHTNING_AD_DATA"
#: Side of the images of :func:`noise_image` and :func:`square_mask` by default, pixels.
SIZE = 40


def real_data_root() -> Path:
    return Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data")).expanduser()


def require_real(*parts: str) -> Path:
    """The real-data folder ``parts`` below the data root, or skip with the reason."""
    path = real_data_root().joinpath(*parts)
    if not path.is_dir():
        pytest.skip(
            f"real data not found at {path}: set {DATA_ENV} to the folder holding mvtec_ad/ and "
            "magnetic_tile/ (default ../shared/data from the repository root)"
        )
    return path


# ---------------------------------------------------------------------- pictures


def write_image(path: Path, image: Union[np.ndarray, Image.Image], mode: Optional[str] = None, **save_kwargs) -> Path:
    """Save an array (``[H, W]`` or ``[H, W, C]``, read as PIL ``mode`` when given) or a PIL
    image to ``path`` (format from the extension; ``save_kwargs`` go to ``Image.save``),
    creating the folders. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, mode) if mode else Image.fromarray(image)
    image.save(path, **save_kwargs)
    return path


def encoded(image: Union[np.ndarray, Image.Image], fmt: str) -> bytes:
    """The bytes of ``image`` saved in format ``fmt`` (``"PNG"``, ``"JPEG"`` ...)."""
    buffer = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer, fmt)
    return buffer.getvalue()


def noise_image(seed: int = 0, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """Uniform random RGB pixels, uint8 ``[h, w, 3]``, a function of ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def textured(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random texture, RGB uint8 [size, size, 3]."""
    base = rng.normal(128, 20, (size // 8, size // 8, 3))
    image = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def square_mask(h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """uint8 ``[h, w]``: 255 on rows ``h//4 .. h//2 - 1`` x columns ``w//4 .. w//2 - 1``, else 0."""
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 255
    return mask


def file_bytes(folder: Path) -> Dict[str, bytes]:
    """Relative path (``/``-separated) -> bytes of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_array(path: Path) -> np.ndarray:
    """The pixels of an image file as stored (no conversion)."""
    with Image.open(path) as im:
        return np.asarray(im)


# ---------------------------------------------------------------------- layouts


def make_mvtec(
    root: Path,
    category: str = "widget",
    n_train: int = 9,
    n_good: int = 3,
    n_bad: int = 4,
    size: int = 64,
    seed: int = 0,
    defect: str = "defect",
) -> Path:
    """A tiny MVTec-layout category below ``root``: textured images, bright square defects
    (14 x 14 pixels) in ``test/<defect>`` with exact masks. Returns ``root``."""
    rng = np.random.default_rng(seed)
    base = root / category
    for i in range(n_train):
        write_image(base / "train" / "good" / f"{i:03d}.png", textured(rng, size))
    for i in range(n_good):
        write_image(base / "test" / "good" / f"{i:03d}.png", textured(rng, size))
    for i in range(n_bad):
        image = textured(rng, size)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(8, size - 24, 2)
        image[y : y + 14, x : x + 14] = [250, 30, 30]
        mask[y : y + 14, x : x + 14] = 255
        write_image(base / "test" / defect / f"{i:03d}.png", image)
        write_image(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


def make_image_folder(
    folder: Path, count: int, *, seed: int = 0, masks: Optional[str] = None, defect: bool = False, size: int = SIZE
) -> List[Path]:
    """``count`` images ``folder/NNN.jpg`` (:func:`noise_image` of ``seed + i``); with
    ``masks`` (a ``mask_pattern`` such as ``"{stem}.png"``) each gets its mask beside it:
    all zero, or with ``defect`` the :func:`square_mask` with a soft edge (one row of 100
    above it). Returns the image paths."""
    images = []
    for i in range(count):
        path = write_image(folder / f"{i:03d}.jpg", noise_image(seed + i, size, size))
        images.append(path)
        if masks is not None:
            mask = np.zeros((size, size), np.uint8)
            if defect:
                mask = square_mask(size, size)
                mask[size // 4 - 1, :] = 100  # a soft edge
            write_image(folder / masks.format(stem=path.stem), mask)
    return images


def make_magnetic_tile(root: Path, n_free: int = 10, defects: Optional[Mapping[str, int]] = None, size: int = SIZE) -> Path:
    """The Magnetic Tile layout below ``root``: ``MT_<class>/Imgs/NNN.jpg`` with the mask
    ``NNN.png`` beside each; ``MT_Free`` (``n_free`` images, empty masks) and the defect
    classes ``defects`` (name -> count; default Blowhole 3, Crack 2). Returns ``root``."""
    defects = {"MT_Blowhole": 3, "MT_Crack": 2} if defects is None else defects
    make_image_folder(root / "MT_Free" / "Imgs", n_free, seed=0, masks="{stem}.png", size=size)
    for k, (name, count) in enumerate(defects.items()):
        make_image_folder(root / name / "Imgs", count, seed=1000 * (k + 1), masks="{stem}.png", defect=True, size=size)
    return root


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """Root folder of a tiny MVTec-layout data set with category ``widget``."""
    return make_mvtec(tmp_path / "mvtec")


def make_trainer(root: Path, **kwargs) -> pl.Trainer:
    """A quiet one-pass CPU Trainer writing below ``root`` (keyword arguments override the defaults)."""
    options = dict(default_root_dir=str(root), max_epochs=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(**options)
