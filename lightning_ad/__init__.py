"""lightning_ad: training-free visual anomaly detection (SPADE) on PyTorch Lightning.

The public names are imported when first used, so that ``import lightning_ad.inference.detector`` (the Detector,
export, the server) never loads Lightning, and ``from lightning_ad import Spade`` loads what Spade needs.
"""

from typing import TYPE_CHECKING, Any, List

from .lightning.quiet import quiet_lightning
from .version import __version__

quiet_lightning()

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .core.spade import SpadeModel
    from .data import DemoDataModule, FolderDataModule, MVTecDataModule
    from .inference.detection import Detection
    from .inference.detector import Detector
    from .lightning.evaluation import Evaluation, evaluate
    from .lightning.module import Spade
    from .lightning.prediction_writer import PredictionWriter
    from .lightning.results import ImageResults
    from .lightning.test_report import TestReport

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


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported on first use (then kept as a module attribute)."""
    if name == "Spade":
        from .lightning.module import Spade as value
    elif name == "SpadeModel":
        from .core.spade import SpadeModel as value
    elif name == "ImageResults":
        from .lightning.results import ImageResults as value
    elif name == "Detector":
        from .inference.detector import Detector as value
    elif name == "Detection":
        from .inference.detection import Detection as value
    elif name == "Evaluation":
        from .lightning.evaluation import Evaluation as value
    elif name == "evaluate":
        from .lightning.evaluation import evaluate as value
    elif name in ("MVTecDataModule", "FolderDataModule", "DemoDataModule"):
        from . import data

        value = getattr(data, name)
    elif name == "PredictionWriter":
        from .lightning.prediction_writer import PredictionWriter as value
    elif name == "TestReport":
        from .lightning.test_report import TestReport as value
    else:
        raise AttributeError(f"module 'lightning_ad' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
