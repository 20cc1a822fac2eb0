"""lightning_ad: training-free visual anomaly detection (SPADE) on PyTorch Lightning."""

from .data import DemoDataModule, FolderDataModule, MVTecDataModule
from .module import Spade
from .spade import SpadeModel

__version__ = "0.1.0"

__all__ = ["Spade", "SpadeModel", "MVTecDataModule", "FolderDataModule", "DemoDataModule", "__version__"]
