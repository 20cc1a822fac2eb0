"""Datasets and datamodules: MVTec AD layout, a user's folders, the embedded demo."""

from .datamodule import AnomalyDataModule
from .dataset import AnomalyDataset, Sample
from .demo import DemoDataModule
from .demo_install import make_demo_dataset
from .folder import FolderDataModule
from .mvtec import MVTecDataModule
from .transforms import Preprocess

__all__ = [
    "AnomalyDataModule",
    "AnomalyDataset",
    "Sample",
    "Preprocess",
    "MVTecDataModule",
    "FolderDataModule",
    "DemoDataModule",
    "make_demo_dataset",
]
