"""Batch normalization folded into the convolution before it: the same frozen network, fewer passes over memory.

A frozen backbone's BatchNorm is an affine map per channel, ``y = a x + b``; when it reads the
output of a convolution and nothing else does, the map can move into the convolution's
weights and bias (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`). The result equals the
original network to float32 rounding (measured on EfficientNet-Lite0: 4e-6 relative at most)
and skips one pass over every activation: Lite0 runs 17.6 -> 10.7 ms per image at 224 x 224 on
a 2-core CPU.

Only networks whose registration order is their data flow (each BatchNorm registered right
after the convolution whose output it alone reads) may be folded: the EfficientNet-Lite and
torchvision ResNet backbones of :mod:`lightning_ad.core.backbones`, which opt in.
"""

from __future__ import annotations

import copy
from typing import Optional, Tuple

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What remains of a norm layer once its affine map is folded: timm's activation (and dropout), or nothing."""
    parts = [part for part in (getattr(norm, "drop", None), getattr(norm, "act", None)) if isinstance(part, nn.Module)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode with every ``BatchNorm2d`` registered right after a ``Conv2d`` of as many
    output channels folded into it; ``net`` itself is unchanged.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> _ = net[1].running_mean.uniform_(), net[1].running_var.uniform_(0.5, 2)
    >>> folded = fold_batchnorm(net)
    >>> [type(m).__name__ for m in folded], torch.allclose(folded(x := torch.rand(1, 3, 8, 8)), net(x), atol=1e-6)
    (['Conv2d', 'Identity', 'ReLU'], True)
    """
    folded = copy.deepcopy(net).eval()
    conv: Optional[Tuple[str, nn.Conv2d]] = None
    for name, module in list(folded.named_modules()):
        if isinstance(module, nn.Conv2d):
            conv = (name, module)
        elif isinstance(module, nn.BatchNorm2d) and conv is not None and conv[1].out_channels == module.num_features:
            _replace(folded, conv[0], fuse_conv_bn_eval(conv[1], module))
            _replace(folded, name, _after_norm(module))
            conv = None
        elif not list(module.children()):  # any other leaf breaks the chain
            conv = None
    return folded
