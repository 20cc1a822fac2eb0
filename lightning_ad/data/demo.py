"""The embedded demo data set as a datamodule (generated on first use; no download)."""

from __future__ import annotations

from typing import Any, Optional

from .demo_install import DEMO_CATEGORY, make_demo_dataset
from .mvtec import MVTecDataModule

__all__ = ["DemoDataModule"]


class DemoDataModule(MVTecDataModule):
    """The embedded demo data set (generated on first use; no download).

    ``prepare_data`` writes it with :func:`make_demo_dataset` under ``root`` unless a
    complete copy is there; it is then served like an MVTec AD category.

    Args:
        root: folder that receives the generated category (relative to the working directory).
        seed: seed of the generator.
        **kwargs: see AnomalyDataModule.
    """

    def __init__(self, root: str = "datasets/demo", seed: int = 0, **kwargs: Any) -> None:
        super().__init__(root=root, category=DEMO_CATEGORY, **kwargs)
        self.seed = seed

    def prepare_data(self) -> None:
        make_demo_dataset(self.root, DEMO_CATEGORY, seed=self.seed)

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_data()  # idempotent; covers use without a Trainer
        super().setup(stage)
