"""lightning_ad: training-free visual anomaly detection (SPADE) on PyTorch Lightning."""

from .lightning.console import quiet_lightning

quiet_lightning()

from .core.spade import SpadeModel  # noqa: E402
from .data import DemoDataModule, FolderDataModule, MVTecDataModule  # noqa: E402
from .inference.detection import Detection  # noqa: E402
from .inference.detector import Detector  # noqa: E402
from .lightning.evaluation import Evaluation, evaluate  # noqa: E402
from .lightning.module import Spade  # noqa: E402
from .lightning.prediction_writer import PredictionWriter  # noqa: E402
from .lightning.results import ImageResults  # noqa: E402
from .lightning.test_report import TestReport  # noqa: E402
from .version import __version__  # noqa: E402

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
