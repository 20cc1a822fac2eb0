"""The named backbones, their channels without weights, and :func:`build_backbone` (weights loaded, frozen)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .base import FeatureExtractor, validate_levels
from .lite import EFFICIENTNET_LITE, EfficientNetLite, lite_weights_file
from .resnet import TorchvisionResNet, torchvision_imagenet_state
from .timm_family import TIMM_PREFIX, TimmBackbone, timm_layout
from .weights import load_into, read_state_dict

__all__ = ["BACKBONES", "backbone_channels", "build_backbone"]

#: The named backbones; besides them, ``timm/<model>`` selects a timm model (:class:`TimmBackbone`).
BACKBONES: Dict[str, Callable[[Sequence[int]], FeatureExtractor]] = {
    "efficientnet_lite0": lambda levels: EfficientNetLite("efficientnet_lite0", levels),
    "efficientnet_lite1": lambda levels: EfficientNetLite("efficientnet_lite1", levels),
    "efficientnet_lite2": lambda levels: EfficientNetLite("efficientnet_lite2", levels),
    "resnet18": lambda levels: TorchvisionResNet("resnet18", levels),
    "resnet50": lambda levels: TorchvisionResNet("resnet50", levels),
    "wide_resnet50_2": lambda levels: TorchvisionResNet("wide_resnet50_2", levels),
    "wide_resnet101_2": lambda levels: TorchvisionResNet("wide_resnet101_2", levels),
}


def backbone_channels(name: str, levels: Sequence[int] = (1, 2, 3)) -> Tuple[List[int], int]:
    """Channels per requested level and pooled size of a backbone, without loading weights.

    For ``timm/<model>`` this builds the model with random weights to read its feature_info.
    """
    _check_name(name)
    levels = validate_levels(levels)
    if name.startswith(TIMM_PREFIX):
        _, _, channels, pooled = timm_layout(name[len(TIMM_PREFIX):])
    elif name in EFFICIENTNET_LITE:
        channels, pooled = EFFICIENTNET_LITE[name].channels, EFFICIENTNET_LITE[name].pooled_dim
    else:
        channels, pooled = TorchvisionResNet._specs[name]
    return [channels[level] for level in levels], pooled


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not (name in BACKBONES or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))):
        raise ValueError(
            f"backbone={name!r} is not known; choose one of {sorted(BACKBONES)}, or '{TIMM_PREFIX}<model>' for a "
            "timm model with features at stride 4, 8 and 16 (e.g. 'timm/resnet18')."
        )


def build_backbone(
    name: str = "efficientnet_lite0",
    levels: Sequence[int] = (1, 2, 3),
    weights: Optional[Union[str, os.PathLike]] = "imagenet",
) -> FeatureExtractor:
    """Build a frozen extractor.

    Args:
        name: one of :data:`BACKBONES`, or ``timm/<model>`` (:class:`TimmBackbone`).
        levels: pyramid levels among 1, 2, 3 (stride 4, 8, 16).
        weights: ``"imagenet"`` (the offline package file for ``efficientnet_lite0/1/2``,
            torchvision's download/cache for the ResNets, timm's for ``timm/<model>``),
            a path to a state-dict file (.pth/.pt/.safetensors), or ``"random"``
            (random initialisation, for tests and timing only: warns).
    """
    _check_name(name)
    random = weights is None or str(weights) == "random"
    # before building anything: a missing weights package is named at once
    lite_file = lite_weights_file(name) if name in EFFICIENTNET_LITE and str(weights) == "imagenet" else None
    if name.startswith(TIMM_PREFIX):  # timm loads the weights while building
        model: FeatureExtractor = TimmBackbone(name[len(TIMM_PREFIX):], levels, "random" if random else weights)
    else:
        model = BACKBONES[name](levels)
        if random:
            pass
        elif isinstance(model, EfficientNetLite):
            path = lite_file if lite_file is not None else Path(os.fspath(weights)).expanduser()
            load_into(model.net, model.timm_state(read_state_dict(path, name), str(path)), str(path), name)
        elif str(weights) == "imagenet":
            assert isinstance(model, TorchvisionResNet)
            load_into(model.net, torchvision_imagenet_state(name), "torchvision", name)
        else:
            path = Path(os.fspath(weights)).expanduser()
            load_into(model.net, read_state_dict(path, name), str(path), name)
    if random:
        warnings.warn(
            f"backbone {name!r} uses RANDOM weights: anomaly scores are meaningless except for tests "
            "and timing. Use weights='imagenet' or a weights file.",
            UserWarning,
            stacklevel=2,
        )
    model.freeze()
    return model
