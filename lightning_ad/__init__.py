"""lightning_ad: training-free visual anomaly detection (SPADE) on PyTorch Lightning."""

from .console import quiet_lightning

quiet_lightning()

from .callbacks import PredictionWriter, TestReport  # noqa: E402
from .data import DemoDataModule, FolderDataModule, MVTecDataModule  # noqa: E402
from .detector import Detection, Detector  # noqa: E402
from .evaluation import Evaluation, evaluate  # noqa: E402
from .module import Spade  # noqa: E402
from .results import ImageResults  # noqa: E402
from .spade import SpadeModel  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Spade",
    "SpadeModel",
    "ImageResults",
    "Detector",
    "Detection",
    "Evaluation",
    "evaluate",
    "MVTecDataModule",
    "FolderDataModule",
    "DemoDataModule",
    "PredictionWriter",
    "TestReport",
    "__version__",
]
