"""Datasets and datamodules: MVTec AD layout, a user's folders, the embedded demo.

The datamodules (LightningDataModules) are imported when first used: the image, mask and folder rules of this
subpackage serve the Detector and the server without loading Lightning.
"""

from typing import TYPE_CHECKING, Any, List

if TYPE_CHECKING:  # what the names are, for type checkers and editors
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


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported on first use (then kept as a module attribute)."""
    if name == "AnomalyDataModule":
        from .datamodule import AnomalyDataModule as value
    elif name in ("AnomalyDataset", "Sample"):
        from . import dataset

        value = getattr(dataset, name)
    elif name == "DemoDataModule":
        from .demo import DemoDataModule as value
    elif name == "make_demo_dataset":
        from .demo_install import make_demo_dataset as value
    elif name == "FolderDataModule":
        from .folder import FolderDataModule as value
    elif name == "MVTecDataModule":
        from .mvtec import MVTecDataModule as value
    elif name == "Preprocess":
        from .transforms import Preprocess as value
    else:
        raise AttributeError(f"module 'lightning_ad.data' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
