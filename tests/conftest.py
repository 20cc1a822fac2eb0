"""Shared fixtures: the real data folder (one setting), tiny generated data sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: The one setting that locates the real data (MVTec AD bottle, Magnetic Tile).
DATA_ENV = "LIGHTNING_AD_DATA"


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


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def textured(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random texture, RGB uint8 [size, size, 3]."""
    base = rng.normal(128, 20, (size // 8, size // 8, 3))
    image = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_mvtec(root: Path, category: str = "widget", n_train: int = 9, n_good: int = 3, n_bad: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A tiny MVTec-layout category: bright square defects with exact masks."""
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
        write_image(base / "test" / "defect" / f"{i:03d}.png", image)
        write_image(base / "ground_truth" / "defect" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """Root folder of a tiny MVTec-layout data set with category ``widget``."""
    return make_mvtec(tmp_path / "mvtec")
