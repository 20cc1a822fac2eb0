"""Torchvision ResNets and their ImageNet weights (torchvision's download, cached under ``$TORCH_HOME``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor

__all__ = ["TorchvisionResNet", "torchvision_imagenet_state"]


class TorchvisionResNet(FeatureExtractor):
    """A torchvision ResNet: taps ``layer1``-``layer3``, pooled ``layer4``; ImageNet mean/std input."""

    _specs = {
        "resnet18": ({1: 64, 2: 128, 3: 256}, 512),
        "resnet50": ({1: 256, 2: 512, 3: 1024}, 2048),
        "wide_resnet50_2": ({1: 256, 2: 512, 3: 1024}, 2048),
        "wide_resnet101_2": ({1: 256, 2: 512, 3: 1024}, 2048),
    }

    folds_batchnorm = True  # conv -> bn pairs in registration order, the downsample's too

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

    def _features(self, x: Tensor, net: nn.Module) -> Tuple[Dict[int, Tensor], Tensor]:
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        f1 = net.layer1(x)
        f2 = net.layer2(f1)
        f3 = net.layer3(f2)
        pooled = net.layer4(f3).mean(dim=(2, 3))
        return {1: f1, 2: f2, 3: f3}, pooled

    def classify(self, images: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` for images in [0, 1] (to check the weights)."""
        _, pooled = self._features(self.normalize(images), self.net)
        return self.net.fc(pooled)


def torchvision_imagenet_state(arch: str) -> Dict[str, Tensor]:
    """The ImageNet state dict of torchvision's ``arch``, from its cache or downloaded; a RuntimeError
    says how to get it offline."""
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
